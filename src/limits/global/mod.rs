//! Token limits shared across gateway replicas, on the host's distributed rate
//! limiting (sans-IO: the adapter does the calls, this decides what to send and what
//! an answer means). Three ways, per route (`limits.global.mode`):
//!
//! * `hits_addend` (Envoy): tollgate sets the filter state
//!   `envoy.ratelimit.hits_addend` and Envoy's own `envoy.filters.http.ratelimit`,
//!   placed after tollgate, sends it to the platform's rate-limit service: prompt +
//!   reservation when the request is forwarded, then the overrun (real − charged, never
//!   negative) from an `apply_on_stream_done` action when the exchange ends.
//! * `rls_grpc` (Envoy): tollgate itself calls
//!   `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` with
//!   `hits_addend` = prompt + reservation, holds the request until the answer, and
//!   charges the overrun in a second call after the response.
//! * `http` (Kong, also Envoy): the same through `dispatch_http_call` to an HTTP
//!   endpoint in Limitador's `check_and_report` shape. Kong cannot call out in
//!   response phases: its true-up waits in [`queue`] for the next timer tick.
//!
//! RLS counters only go up (`hits_addend` is unsigned), so a reservation larger than
//! the real usage is not refunded: the budget errs on the safe side by at most one
//! reservation per request. When the service is unreachable, slow or answers
//! nonsense, `failure_mode` decides (open: forward; closed: refuse), after at most
//! `timeout_ms`.

pub mod http_api;
pub mod proto;
pub mod queue;

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, LimitCount, LimitKeyPart};
use crate::limits::{RateState, Subject, Unit, MAX_KEY_VALUE_BYTES};

/// Filter-state key Envoy's rate-limit filter reads its `hits_addend` from.
pub const HITS_ADDEND_KEY: &str = "envoy.ratelimit.hits_addend";
/// gRPC service and method of Envoy's rate-limit service API.
pub const RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// See [`RLS_SERVICE`].
pub const RLS_METHOD: &str = "ShouldRateLimit";

/// Where a route's shared limits are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GlobalMode {
    /// No shared limits.
    #[default]
    Off,
    /// Envoy's rate-limit filter charges what tollgate puts in `envoy.ratelimit.hits_addend`.
    HitsAddend,
    /// tollgate calls an Envoy RLS over gRPC.
    RlsGrpc,
    /// tollgate calls a Limitador-style HTTP `check_and_report` endpoint.
    Http,
}

/// What happens when the rate-limit service cannot answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Forward the request unlimited (availability first).
    #[default]
    Open,
    /// Refuse it with a 429 in the client's dialect (budget first).
    Closed,
}

/// One entry of the descriptor sent to the service: a fixed `key`, and a value that
/// is either one of tollgate's key parts (`from`) or a literal (`value`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntry {
    /// Descriptor key, as the service's limits name it.
    pub key: String,
    /// Take the value from this key part (consumer, route, model, provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<LimitKeyPart>,
    /// A literal value instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A route's shared (cross-replica) limits: `limits.global`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalLimits {
    /// Which mechanism, or `off`.
    pub mode: GlobalMode,
    /// Envoy cluster of the service (`rls_grpc`, and `http` on Envoy); on Kong, the
    /// `host:port` `dispatch_http_call` connects to.
    pub cluster: String,
    /// `:authority` of the HTTP call (`http` mode).
    pub authority: String,
    /// Path of the HTTP endpoint (`http` mode).
    pub path: String,
    /// RLS `domain` / Limitador `namespace`.
    pub domain: String,
    /// Descriptor entries (`rls_grpc`, `http`); with `hits_addend`, Envoy's own
    /// `rate_limits` actions build the descriptors instead.
    pub descriptors: Vec<DescriptorEntry>,
    /// Longest wait for the service before `failure_mode` applies.
    pub timeout_ms: u32,
    /// Forward (`open`) or refuse (`closed`) when the service fails.
    pub failure_mode: FailureMode,
    /// Which tokens are charged.
    pub count: LimitCount,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        GlobalLimits {
            mode: GlobalMode::Off,
            cluster: "rate_limit_service".to_string(),
            authority: String::new(),
            path: "/check_and_report".to_string(),
            domain: "tollgate".to_string(),
            descriptors: vec![DescriptorEntry {
                key: "consumer".to_string(),
                from: Some(LimitKeyPart::Consumer),
                value: None,
            }],
            timeout_ms: 200,
            failure_mode: FailureMode::Open,
            count: LimitCount::Total,
        }
    }
}

/// Longest allowed `timeout_ms`: a request must never wait long on its limiter.
pub const MAX_TIMEOUT_MS: u32 = 10_000;

impl GlobalLimits {
    /// True when the route has shared limits.
    pub fn active(&self) -> bool {
        self.mode != GlobalMode::Off
    }

    /// Check the section; `path` is its dotted config path (`routes.x.limits.global`).
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let at = |f: &str| format!("{path}.{f}");
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(cfg_err(
                at("timeout_ms"),
                format!("expected 1 to {MAX_TIMEOUT_MS} milliseconds"),
            ));
        }
        if self.domain.is_empty() || self.domain.len() > 128 {
            return Err(cfg_err(at("domain"), "must be 1 to 128 characters"));
        }
        for (i, d) in self.descriptors.iter().enumerate() {
            let at = |f: &str| format!("{path}.descriptors[{i}].{f}");
            if d.key.is_empty() || d.key.len() > 128 {
                return Err(cfg_err(at("key"), "must be 1 to 128 characters"));
            }
            if d.from.is_some() == d.value.is_some() {
                return Err(cfg_err(
                    at("from"),
                    "give exactly one of `from` (consumer, route, model, provider) or `value`",
                ));
            }
        }
        let needs_cluster = matches!(self.mode, GlobalMode::RlsGrpc | GlobalMode::Http);
        if needs_cluster
            && (self.cluster.is_empty()
                || self.cluster.len() > 255
                || self.cluster.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return Err(cfg_err(
                at("cluster"),
                "this mode calls the service: give its Envoy cluster name (Kong: host:port), printable ASCII without spaces",
            ));
        }
        if needs_cluster && self.descriptors.is_empty() {
            return Err(cfg_err(
                at("descriptors"),
                "this mode sends a descriptor: give at least one entry (e.g. {\"key\": \"consumer\", \"from\": \"consumer\"})",
            ));
        }
        if self.mode == GlobalMode::Http {
            if !self.path.starts_with('/') || self.path.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(cfg_err(
                    at("path"),
                    "expected an absolute path such as /check_and_report",
                ));
            }
            if self.authority.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(cfg_err(
                    at("authority"),
                    "expected a host[:port] without spaces",
                ));
            }
        }
        Ok(())
    }
}

fn cfg_err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Tokens charged for an input/output split under `count`.
pub fn hits(count: LimitCount, input: u64, output: u64) -> u64 {
    match count {
        LimitCount::Input => input,
        LimitCount::Output => output,
        LimitCount::Total => input.saturating_add(output),
    }
}

/// A token count as the protocol's `uint32` (`hits_addend`), saturating.
pub fn hits_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn cut(v: &str) -> &str {
    let mut end = v.len().min(MAX_KEY_VALUE_BYTES);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v.get(..end).unwrap_or("")
}

/// The descriptor entries for this request, in configured order. A request without
/// a consumer is the `anonymous` consumer, as with local limits.
pub fn descriptor<'a>(cfg: &'a GlobalLimits, s: &'a Subject) -> Vec<(&'a str, &'a str)> {
    cfg.descriptors
        .iter()
        .map(|d| {
            let v = match (&d.value, d.from) {
                (Some(v), _) => v.as_str(),
                (None, Some(LimitKeyPart::Consumer)) => s.consumer.unwrap_or("anonymous"),
                (None, Some(LimitKeyPart::Route)) => s.route,
                (None, Some(LimitKeyPart::Model)) => s.model,
                (None, Some(LimitKeyPart::Provider)) => s.provider,
                (None, None) => "",
            };
            (d.key.as_str(), cut(v))
        })
        .collect()
}

/// Tokens charged at admission: prompt plus reservation, under `count`.
pub fn admission_hits(cfg: &GlobalLimits, s: &Subject) -> u64 {
    hits(cfg.count, s.prompt_tokens, s.reserve_tokens)
}

/// The overrun to charge after the exchange: real use minus what admission charged,
/// `None` when nothing is owed (RLS counters cannot be decremented).
pub fn true_up_hits(cfg: &GlobalLimits, charged: u64, input: u64, output: u64) -> Option<u64> {
    let real = hits(cfg.count, input, output);
    (real > charged).then(|| real - charged)
}

/// How a call to the service ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit; the state for the `x-ratelimit-*` headers when the service sent one.
    Allow(Option<RateState>),
    /// Over the limit.
    Refuse(Option<RateState>),
    /// No usable answer: the reason, for the log line.
    Failed(String),
}

/// What tollgate does with a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Under the limit.
    Allowed,
    /// Over the limit: refused.
    Refused,
    /// Over the limit but the route is `report_only`.
    WouldRefuse,
    /// Service failed, `failure_mode: open`: forwarded.
    FailedOpen,
    /// Service failed, `failure_mode: closed`: refused.
    FailedClosed,
}

impl Decision {
    /// Metric label / log value.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused => "refused",
            Decision::WouldRefuse => "would_refuse",
            Decision::FailedOpen => "failed_open",
            Decision::FailedClosed => "failed_closed",
        }
    }

    /// True when the request must be answered with a 429.
    pub fn refuses(self) -> bool {
        matches!(self, Decision::Refused | Decision::FailedClosed)
    }
}

/// Turn a verdict into a decision under the route's settings. `report_only` never
/// refuses over a limit; a failed service follows `failure_mode` either way.
pub fn decide(cfg: &GlobalLimits, v: &Verdict, report_only: bool) -> Decision {
    match v {
        Verdict::Allow(_) => Decision::Allowed,
        Verdict::Refuse(_) if report_only => Decision::WouldRefuse,
        Verdict::Refuse(_) => Decision::Refused,
        Verdict::Failed(_) => match cfg.failure_mode {
            FailureMode::Open => Decision::FailedOpen,
            FailureMode::Closed => Decision::FailedClosed,
        },
    }
}

/// gRPC status names for log lines.
fn grpc_status_name(code: u32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        4 => "DEADLINE_EXCEEDED (timeout)",
        5 => "NOT_FOUND",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        _ => "error",
    }
}

/// The verdict of a `ShouldRateLimit` call: its gRPC status and response message.
pub fn rls_verdict(domain: &str, grpc_status: u32, body: &[u8]) -> Verdict {
    if grpc_status != 0 {
        return Verdict::Failed(format!(
            "gRPC status {grpc_status} {}",
            grpc_status_name(grpc_status)
        ));
    }
    let r = match proto::decode_rate_limit_response(body) {
        Ok(r) => r,
        Err(e) => return Verdict::Failed(format!("undecodable RateLimitResponse: {e:?}")),
    };
    // The status with the least remaining speaks for the request (strictest wins).
    let state = r
        .statuses
        .iter()
        .filter(|s| s.limit.is_some())
        .min_by_key(|s| s.remaining)
        .map(|s| RateState {
            unit: Unit::Tokens,
            rule: if s.name.is_empty() {
                Rc::from(domain)
            } else {
                Rc::from(s.name.as_str())
            },
            limit: s.limit.unwrap_or(0),
            remaining: s.remaining,
            reset_ms: s
                .reset_ms
                .or_else(|| s.unit_secs.map(|u| u.saturating_mul(1000)))
                .unwrap_or(1000),
        });
    match r.overall_code {
        Some(proto::Code::Ok) => Verdict::Allow(state),
        Some(proto::Code::OverLimit) => Verdict::Refuse(state),
        _ => Verdict::Failed("RateLimitResponse without overall_code".to_string()),
    }
}

#[cfg(test)]
mod tests;

/// Per-request shared-limit state, kept in the exchange between admission and true-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ticket {
    /// Tokens charged at admission (the true-up charges real use beyond it).
    pub charged: u64,
    /// The service's last word on the limit, for the `x-ratelimit-*` headers.
    pub state: Option<RateState>,
    /// Admission's decision; the true-up runs only after `Allowed`/`WouldRefuse` (a
    /// failed-open admission may or may not have been counted: not charged again).
    pub decision: Option<Decision>,
    /// The true-up was done (it runs once).
    pub settled: bool,
}

impl Ticket {
    /// Record an admission outcome.
    pub fn admitted(&mut self, charged: u64, decision: Decision, v: Verdict) {
        self.charged = charged;
        self.decision = Some(decision);
        if let Verdict::Allow(st) | Verdict::Refuse(st) = v {
            self.state = st;
        }
    }

    /// The overrun to charge now, once: `None` when nothing is owed or admission did
    /// not count this request.
    pub fn settle(&mut self, cfg: &GlobalLimits, input: u64, output: u64) -> Option<u64> {
        if self.settled {
            return None;
        }
        self.settled = true;
        match self.decision {
            Some(Decision::Allowed | Decision::WouldRefuse) => {
                true_up_hits(cfg, self.charged, input, output)
            }
            _ => None,
        }
    }
}

/// The rate state with less room left (headers show the limit closest to refusing).
pub fn tighter<'a>(a: Option<&'a RateState>, b: Option<&'a RateState>) -> Option<&'a RateState> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.remaining < x.remaining { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The 429 reply for a shared-limit refusal, with `x-ratelimit-*-tokens` and
/// `retry-after` when the service said when the window resets. A failed-closed
/// service is a 429 too (not a 503): both SDKs back off and retry on 429 honouring
/// `retry-after`, and the budget cannot be checked, which is what a limit refusal means
/// to a client; operators tell the two apart by the metric, log line and
/// `x-tollgate-ratelimit` header.
pub fn refusal(
    family: crate::dialect::Family,
    decision: Decision,
    t: &Ticket,
) -> crate::metering::LocalReply {
    use crate::dialect::{error_body, ErrorKind};
    let msg = match (decision, &t.state) {
        (Decision::FailedClosed, _) => {
            "Rate limit could not be checked (the shared rate-limit service is unavailable) and this route fails closed. Please try again shortly.".to_string()
        }
        (_, Some(s)) => format!(
            "Rate limit reached for tokens (shared limit '{}'): limit {}, remaining {}, requested {} tokens. Please try again in {}.",
            s.rule,
            s.limit,
            s.remaining,
            t.charged,
            crate::limits::format_duration(s.reset_ms)
        ),
        (_, None) => format!(
            "Rate limit reached for tokens (shared limit): requested {} tokens.",
            t.charged
        ),
    };
    let mut headers: Vec<(&'static str, String)> = match (&t.state, decision) {
        (Some(s), Decision::Refused) => {
            let mut h = crate::host::HeaderList::with_capacity(3);
            s.push_headers(&mut h);
            h.to_vec()
        }
        _ => Vec::new(),
    };
    let secs = match (&t.state, decision) {
        (Some(s), Decision::Refused) => s.reset_ms.div_ceil(1000).max(1),
        _ => 1,
    };
    headers.push(("retry-after", secs.to_string()));
    headers.push(("retry-after-ms", secs.saturating_mul(1000).to_string()));
    headers.push(("x-tollgate-ratelimit", decision.label().to_string()));
    crate::metering::LocalReply {
        status: ErrorKind::RateLimited.status(),
        body: error_body(family, ErrorKind::RateLimited, &msg),
        headers,
    }
}
