//! rls-limitador: a test-only rate-limit engine for tollgate's global-limit e2e tests.
//!
//! limitador-server is not on crates.io, so this embeds the published `limitador` library
//! (its Redis storage, so counters are shared by every process pointing at one Redis) and
//! serves the two APIs tollgate and Envoy talk to:
//!
//! * Envoy RLS v3 gRPC: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//!   (h2c). Namespace = `domain`; each descriptor's entries are bound for the limits' CEL as
//!   `descriptors[i].<key>`, like limitador-server. `hits_addend` is the delta (0 = check only).
//! * Limitador's HTTP API: `POST /check_and_report` with
//!   `{"namespace", "values", "delta", "response_headers"}` → 200 or 429, plus
//!   `GET /counters/{namespace}` and `GET /status`.
//!
//! `--over-limit refuse` (default) is Limitador's behaviour: a hit that does not fit is
//! refused and not counted. `--over-limit count` is envoyproxy/ratelimit's: every hit is
//! counted and the answer is OVER_LIMIT once the counter is past the limit — what a charge
//! made after the fact (Envoy's `apply_on_stream_done`) needs so it is never dropped.
//!
//! Usage: rls-limitador --limits FILE [--grpc 127.0.0.1:8081] [--http 127.0.0.1:8080]
//!        [--redis redis://127.0.0.1:6379] [--over-limit refuse|count]

mod proto;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, CheckResult};
use serde::Deserialize;
use tonic::codegen::{empty_body, http, Body, BoxFuture, Service, StdError};

use proto::{Code, DescriptorStatus, HeaderValue, RateLimitRequest, RateLimitResponse};

/// One limit, in the fields of Limitador's limits file (JSON here).
#[derive(Deserialize)]
struct LimitSpec {
    namespace: String,
    max_value: u64,
    seconds: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    conditions: Vec<String>,
    #[serde(default)]
    variables: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum OverLimit {
    Refuse,
    Count,
}

struct Engine {
    limiter: AsyncRateLimiter,
    over_limit: OverLimit,
}

impl Engine {
    async fn check(&self, ns: &str, ctx: &Context<'_>, delta: u64) -> Result<CheckResult, String> {
        let ns = Namespace::from(ns);
        let r = match self.over_limit {
            OverLimit::Refuse => {
                self.limiter
                    .check_rate_limited_and_update(&ns, ctx, delta)
                    .await
            }
            OverLimit::Count => {
                if delta > 0 {
                    self.limiter
                        .update_counters(&ns, ctx, delta)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                self.limiter.is_rate_limited(&ns, ctx, 0).await
            }
        };
        r.map_err(|e| e.to_string())
    }

    async fn should_rate_limit(
        &self,
        req: RateLimitRequest,
    ) -> Result<RateLimitResponse, tonic::Status> {
        let maps: Vec<HashMap<String, String>> = req
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        let mut ctx = Context::from(HashMap::new());
        ctx.list_binding("descriptors".to_string(), maps);
        let mut result = self
            .check(&req.domain, &ctx, u64::from(req.hits_addend))
            .await
            .map_err(tonic::Status::unavailable)?;
        let code = if result.limited {
            Code::OverLimit
        } else {
            Code::Ok
        };
        // The most restrictive counter describes every descriptor (Limitador matches limits
        // against the whole request, not descriptor by descriptor).
        let tightest = result
            .counters
            .iter()
            .min_by_key(|c| c.remaining().unwrap_or(c.max_value()))
            .map(|c| DescriptorStatus {
                code: code as i32,
                current_limit: Some(proto::RateLimit {
                    requests_per_unit: u32::try_from(c.max_value()).unwrap_or(u32::MAX),
                    unit: proto::unit_for(c.window().as_secs()),
                    name: c.limit().name().unwrap_or_default().to_string(),
                }),
                limit_remaining: u32::try_from(c.remaining().unwrap_or(c.max_value()))
                    .unwrap_or(u32::MAX),
                duration_until_reset: Some(proto::Duration {
                    seconds: i64::try_from(c.expires_in().unwrap_or(c.window()).as_secs())
                        .unwrap_or(i64::MAX),
                    nanos: 0,
                }),
            });
        let statuses = match tightest {
            Some(s) => vec![s; req.descriptors.len().max(1)],
            None => Vec::new(),
        };
        let mut headers: Vec<HeaderValue> = result
            .response_header()
            .into_iter()
            .map(|(key, value)| HeaderValue { key, value })
            .collect();
        headers.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(RateLimitResponse {
            overall_code: code as i32,
            statuses,
            response_headers_to_add: headers,
        })
    }
}

/// The RLS service, routed by hand (what tonic-build would generate, without protoc).
#[derive(Clone)]
struct RlsService(Arc<Engine>);

impl tonic::server::NamedService for RlsService {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

struct ShouldRateLimit(Arc<Engine>);

impl tonic::server::UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<tonic::Response<RateLimitResponse>, tonic::Status>;
    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        let engine = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            engine
                .should_rate_limit(req)
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for RlsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let engine = self.0.clone();
        match req.uri().path() {
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" => {
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic::codec::ProstCodec::default());
                    Ok(grpc.unary(ShouldRateLimit(engine), req).await)
                })
            }
            _ => Box::pin(async move {
                let mut resp = http::Response::new(empty_body());
                resp.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("12"));
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/grpc"),
                );
                Ok(resp)
            }),
        }
    }
}

/// Limitador's `CheckAndReportInfo`.
#[derive(Deserialize)]
struct CheckAndReportInfo {
    namespace: String,
    #[serde(default)]
    values: HashMap<String, String>,
    delta: u64,
    #[serde(default)]
    response_headers: Option<String>,
}

async fn check_and_report(
    AxumState(engine): AxumState<Arc<Engine>>,
    Json(info): Json<CheckAndReportInfo>,
) -> Response {
    // Bound both ways: as top-level variables (Limitador's HTTP API) and as
    // `descriptors[0]` (its RLS API), so one limits file serves both front ends.
    let mut ctx = Context::from(info.values.clone());
    ctx.list_binding("descriptors".to_string(), vec![info.values]);
    match engine.check(&info.namespace, &ctx, info.delta).await {
        Ok(mut result) => {
            let status = if result.limited {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            let mut resp = status.into_response();
            if info.response_headers.as_deref() == Some("DraftVersion03") {
                for (k, v) in result.response_header() {
                    if let (Ok(k), Ok(v)) = (
                        axum::http::HeaderName::try_from(k.to_ascii_lowercase()),
                        axum::http::HeaderValue::try_from(v),
                    ) {
                        resp.headers_mut().insert(k, v);
                    }
                }
            }
            resp
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

async fn counters(AxumState(engine): AxumState<Arc<Engine>>, Path(ns): Path<String>) -> Response {
    match engine
        .limiter
        .get_counters(&Namespace::from(ns.as_str()))
        .await
    {
        Ok(cs) => {
            let out: Vec<serde_json::Value> = cs
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "max_value": c.max_value(),
                        "seconds": c.window().as_secs(),
                        "remaining": c.remaining(),
                        "expires_in_seconds": c.expires_in().map(|d| d.as_secs()),
                        "set_variables": c.set_variables(),
                    })
                })
                .collect();
            Json(out).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("rls-limitador: {msg}\nusage: rls-limitador --limits FILE [--grpc ADDR] [--http ADDR] [--redis URL] [--over-limit refuse|count]");
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut grpc: Option<SocketAddr> = None;
    let mut http_addr: Option<SocketAddr> = None;
    let mut redis = "redis://127.0.0.1:6379".to_string();
    let mut limits_file: Option<String> = None;
    let mut over_limit = OverLimit::Refuse;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--grpc" => grpc = Some(val().parse().unwrap_or_else(|_| usage("bad --grpc"))),
            "--http" => http_addr = Some(val().parse().unwrap_or_else(|_| usage("bad --http"))),
            "--redis" => redis = val(),
            "--limits" => limits_file = Some(val()),
            "--over-limit" => {
                over_limit = match val().as_str() {
                    "refuse" => OverLimit::Refuse,
                    "count" => OverLimit::Count,
                    _ => usage("--over-limit is refuse or count"),
                }
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let limits_file = limits_file.unwrap_or_else(|| usage("--limits is required"));
    if grpc.is_none() && http_addr.is_none() {
        usage("give --grpc, --http or both");
    }
    let text = std::fs::read_to_string(&limits_file)
        .unwrap_or_else(|e| usage(&format!("cannot read {limits_file}: {e}")));
    let specs: Vec<LimitSpec> =
        serde_json::from_str(&text).unwrap_or_else(|e| usage(&format!("{limits_file}: {e}")));

    let storage = AsyncRedisStorage::new(&redis)
        .await
        .unwrap_or_else(|e| usage(&format!("redis {redis}: {e}")));
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    for s in specs {
        let conditions: Vec<Predicate> = s
            .conditions
            .iter()
            .map(|c| {
                Predicate::parse(c).unwrap_or_else(|e| usage(&format!("condition {c}: {e:?}")))
            })
            .collect();
        let variables: Vec<Expression> = s
            .variables
            .iter()
            .map(|v| {
                Expression::parse(v).unwrap_or_else(|e| usage(&format!("variable {v}: {e:?}")))
            })
            .collect();
        let mut limit = Limit::new(
            s.namespace.as_str(),
            s.max_value,
            s.seconds,
            conditions,
            variables,
        );
        if let Some(n) = s.name {
            limit.set_name(n);
        }
        limiter.add_limit(limit);
    }
    let engine = Arc::new(Engine {
        limiter,
        over_limit,
    });

    let mut tasks = Vec::new();
    if let Some(addr) = grpc {
        let svc = RlsService(engine.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve(addr)
                .await
            {
                eprintln!("rls-limitador: gRPC {addr}: {e}");
                std::process::exit(1);
            }
        }));
        eprintln!("rls-limitador: RLS gRPC on {addr}");
    }
    if let Some(addr) = http_addr {
        let app = Router::new()
            .route("/check_and_report", post(check_and_report))
            .route("/counters/:namespace", get(counters))
            .route("/status", get(|| async { "ok" }))
            .with_state(engine.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| usage(&format!("bind {addr}: {e}")));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("rls-limitador: HTTP {addr}: {e}");
                std::process::exit(1);
            }
        }));
        eprintln!("rls-limitador: HTTP on {addr}");
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = futures_all(tasks) => {}
    }
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
