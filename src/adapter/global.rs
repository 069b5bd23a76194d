//! Host side of the shared (cross-replica) limits: the calls to the rate-limit
//! service and the `envoy.ratelimit.hits_addend` filter state. What to send and what
//! an answer means is decided in [`crate::limits::global`]; this only does the I/O.
//!
//! Every path ends: a call is dispatched with the route's `timeout_ms`, which the host
//! enforces (Envoy answers a timed-out gRPC call with DEADLINE_EXCEEDED and a timed-out
//! HTTP call with no headers), and a dispatch the host refuses is a failure at once.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use log::{debug, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType, Status, StreamType};

use super::ffi;
use super::Http;
use crate::config::RouteSettings;
use crate::host::{parse_header_map, HostKind};
use crate::limits::global::queue::{PendingTrueUp, Pushed, TrueUpQueue, MAX_CALLS_PER_TICK};
use crate::limits::global::{
    self, decide, descriptor, http_api, proto, Decision, GlobalMode, Verdict, HITS_ADDEND_KEY,
    RLS_METHOD, RLS_SERVICE,
};
use crate::metering::labels;
use crate::metering::Report;

extern "C" {
    fn proxy_continue_stream(stream_type: StreamType) -> Status;
    fn proxy_set_effective_context(context_id: u32) -> Status;
}

thread_local! {
    /// The root context's id: true-up calls are made on its behalf so they outlive the
    /// request (the host cancels a request context's calls when its stream ends).
    static ROOT_ID: Cell<u32> = const { Cell::new(0) };
}

/// Remember the root context id (called when the host creates it).
pub(super) fn set_root_id(id: u32) {
    ROOT_ID.with(|r| r.set(id));
}

/// Kong's true-ups, waiting in the VM for the root context's tick.
///
/// ngx_wasm_module accepts `dispatch_http_call` only in `on_request_headers`,
/// `on_request_body`, `on_tick` and a dispatch response: its host function checks the
/// step and otherwise traps with "can only send HTTP dispatch during
/// "on_request_headers", "on_request_body", "on_dispatch_response", "on_tick""
/// (Kong/ngx_wasm_module `src/common/proxy_wasm/ngx_proxy_wasm_host.c`,
/// `ngx_proxy_wasm_hfuncs_dispatch_http_call`; `t/03-proxy_wasm/hfuncs/contexts/
/// 130-proxy_dispatch_http.t` TEST 3 dispatches from `on_tick`; background-tick
/// dispatch landed in PR #196, before the 0.1.0 release Kong 3.4 ships). A response
/// phase is where the true-up becomes known, so it waits here and the tick sends it.
/// Kong builds filter chains with isolation `none` (`src/common/lua/
/// ngx_wasm_lua_ffi.c`), so requests and the root context share this VM state.
pub(super) type TrueUps = TrueUpQueue<RouteSettings>;

/// Send the queued true-ups (Kong; called from the root context's `on_tick`). An
/// empty queue costs one borrow.
pub(super) fn send_true_ups(queue: &RefCell<TrueUps>) {
    let batch = {
        let Ok(mut q) = queue.try_borrow_mut() else {
            return;
        };
        let (dropped, tokens) = q.take_dropped();
        if dropped > 0 {
            warn!(
                "tollgate: {dropped} shared-limit true-up(s) ({tokens} tokens) dropped since the last tick: more than {} were waiting; those tokens are not charged",
                global::queue::MAX_QUEUED
            );
        }
        if q.is_empty() {
            return;
        }
        q.take_batch(MAX_CALLS_PER_TICK)
    };
    for p in batch {
        let cfg = &p.target.limits.global;
        match dispatch(cfg, &p.entry_refs(), p.hits) {
            Ok(_) => debug!(
                "tollgate: shared-limit true-up from the tick: {} more tokens",
                p.hits
            ),
            Err(s) => warn!(
                "tollgate: shared-limit true-up of {} tokens not sent to {:?}: {s:?}",
                p.hits, cfg.cluster
            ),
        }
    }
}

/// Per-request call state.
#[derive(Default)]
pub(super) struct Calls {
    /// This HTTP context's id (to switch back after a call made for the root).
    pub(super) id: u32,
    /// Token of the admission call the request waits for.
    pending: Option<u32>,
}

impl Calls {
    pub(super) fn new(id: u32) -> Self {
        Calls { id, pending: None }
    }
}

/// Set `envoy.ratelimit.hits_addend` for Envoy's rate-limit filter.
fn set_hits_addend(n: u64) -> Result<(), Status> {
    let args = proto::encode_set_filter_state(HITS_ADDEND_KEY, &global::hits_u32(n).to_string(), 0);
    hostcalls::call_foreign_function("set_envoy_filter_state", Some(&args)).map(|_| ())
}

fn dispatch(
    cfg: &global::GlobalLimits,
    entries: &[(&str, &str)],
    hits: u64,
) -> Result<u32, Status> {
    let timeout = Duration::from_millis(u64::from(cfg.timeout_ms));
    match cfg.mode {
        GlobalMode::RlsGrpc => {
            let msg =
                proto::encode_rate_limit_request(&cfg.domain, entries, global::hits_u32(hits));
            hostcalls::dispatch_grpc_call(
                &cfg.cluster,
                RLS_SERVICE,
                RLS_METHOD,
                Vec::new(),
                Some(&msg),
                timeout,
            )
        }
        GlobalMode::Http => {
            let body = http_api::request_body(&cfg.domain, entries, hits);
            let authority = if cfg.authority.is_empty() {
                cfg.cluster.as_str()
            } else {
                cfg.authority.as_str()
            };
            let headers = http_api::request_headers(&cfg.path, authority).to_vec();
            hostcalls::dispatch_http_call(&cfg.cluster, headers, Some(&body), Vec::new(), timeout)
        }
        GlobalMode::Off | GlobalMode::HitsAddend => Err(Status::BadArgument),
    }
}

impl Http {
    /// Shared-limit admission, after local limits admitted the request and its body
    /// edits are applied. `Some(action)` to return from the body callback (paused for
    /// the service's answer, or a 429 sent); `None` to forward now.
    pub(super) fn global_admit(&mut self) -> Option<Action> {
        let host = self.host;
        let ex = self.exchange.as_mut()?;
        let settings = ex.settings_rc();
        let cfg = &settings.limits.global;
        let subject = ex.global_subject()?;
        let hits = global::admission_hits(cfg, &subject);
        match cfg.mode {
            GlobalMode::Off => None,
            GlobalMode::HitsAddend => {
                if host == HostKind::Kong {
                    warn!("tollgate: limits.global.mode hits_addend needs Envoy's rate-limit filter; ignored on Kong (use mode http)");
                    return None;
                }
                let decision = match set_hits_addend(hits) {
                    Ok(()) => Decision::Allowed,
                    Err(s) => {
                        warn!("tollgate: cannot set {HITS_ADDEND_KEY}: {s:?}; shared limit not charged");
                        Decision::FailedOpen
                    }
                };
                ex.global_ticket()
                    .admitted(hits, decision, Verdict::Allow(None));
                None
            }
            GlobalMode::RlsGrpc | GlobalMode::Http => {
                let entries = descriptor(cfg, &subject);
                if cfg.mode == GlobalMode::RlsGrpc && host == HostKind::Kong {
                    let v = Verdict::Failed(
                        "gRPC calls are not available on Kong (use mode http)".into(),
                    );
                    return self.global_conclude(v, hits);
                }
                match dispatch(cfg, &entries, hits) {
                    Ok(token) => {
                        ex.global_ticket().charged = hits;
                        self.calls.pending = Some(token);
                        Some(Action::Pause)
                    }
                    Err(s) => {
                        let v = Verdict::Failed(format!(
                            "host refused the call to {:?}: {s:?} (unknown cluster?)",
                            cfg.cluster
                        ));
                        self.global_conclude(v, hits)
                    }
                }
            }
        }
    }

    /// Apply a verdict: metric, log line, headers state; the 429 when refused.
    fn global_conclude(&mut self, v: Verdict, hits: u64) -> Option<Action> {
        let ex = self.exchange.as_mut()?;
        let settings = ex.settings_rc();
        let cfg = &settings.limits.global;
        let report_only = ex.limits_report_only();
        let decision = decide(cfg, &v, report_only);
        let mode = serde_json::to_value(cfg.mode).ok();
        let mode = mode.as_ref().and_then(|m| m.as_str()).unwrap_or("global");
        let name = labels::rate_limit(ex.route(), mode, decision.label());
        let why = match &v {
            Verdict::Failed(why) => Some(why.clone()),
            _ => None,
        };
        let remaining = match &v {
            Verdict::Allow(Some(s)) | Verdict::Refuse(Some(s)) => Some(s.remaining),
            _ => None,
        };
        ex.global_ticket().admitted(hits, decision, v);
        if decision != Decision::Allowed {
            info!(
                "{{\"event\":\"tollgate.global_rate_limit\",\"mode\":\"{mode}\",\"decision\":\"{}\",\"route\":{},\"hits\":{hits},\"remaining\":{},\"reason\":{}}}",
                decision.label(),
                serde_json::Value::from(ex.route()),
                remaining.map_or("null".to_string(), |r| r.to_string()),
                serde_json::Value::from(why.unwrap_or_default()),
            );
        }
        let reply = decision.refuses().then(|| ex.global_refusal(decision));
        self.metrics.borrow_mut().add(name, 1);
        reply.map(|r| self.reply(&r))
    }

    /// The admission call's answer: forward or refuse the held request.
    fn global_answer(&mut self, token: u32, v: impl FnOnce(&str) -> Verdict) {
        if self.calls.pending != Some(token) {
            return; // a true-up answer, or one for a request already answered
        }
        self.calls.pending = None;
        let (domain, hits) = match self.exchange.as_mut() {
            Some(ex) => {
                let d = ex.settings().limits.global.domain.clone();
                (d, ex.global_ticket().charged)
            }
            None => return,
        };
        if self.global_conclude(v(&domain), hits).is_none() {
            // Admitted: a Kong fallback route now makes its provider call.
            if self.fallback_start().is_some() {
                return;
            }
            // SAFETY: plain value; resumes the request this context paused.
            let s = unsafe { proxy_continue_stream(StreamType::HttpRequest) };
            if s != Status::Ok {
                warn!("tollgate: cannot resume request after the rate-limit answer: {s:?}");
            }
        }
    }

    /// `on_grpc_call_response` of the admission call.
    pub(super) fn global_grpc_answer(&mut self, token: u32, status: u32, size: usize) {
        self.global_answer(token, |domain| {
            let body = if status == 0 {
                ffi::buffer(BufferType::GrpcReceiveBuffer, 0, size).unwrap_or_default()
            } else {
                Vec::new()
            };
            global::rls_verdict(domain, status, &body)
        });
    }

    /// `on_http_call_response` of the admission call.
    pub(super) fn global_http_answer(&mut self, token: u32) {
        self.global_answer(token, |domain| {
            let raw = ffi::header_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
            let headers = parse_header_map(&raw);
            http_api::verdict(domain, Some(&headers))
        });
    }

    /// After the exchange: charge what was used beyond the admission charge.
    pub(super) fn global_settle(&mut self, report: &Report) {
        let host = self.host;
        let id = self.calls.id;
        let Some(ex) = self.exchange.as_mut() else {
            return;
        };
        let settings = ex.settings_rc();
        let cfg = &settings.limits.global;
        if !cfg.active() {
            return;
        }
        let extra = ex.global_ticket().settle(
            cfg,
            report.usage.prompt_tokens,
            report.usage.completion_tokens,
        );
        let Some(subject) = ex.global_subject() else {
            return;
        };
        match cfg.mode {
            GlobalMode::HitsAddend => {
                if host == HostKind::Kong {
                    return;
                }
                // Always overwritten: the stream-done action must not re-charge the
                // admission amount still in the filter state.
                if let Err(s) = set_hits_addend(extra.unwrap_or(0)) {
                    debug!("tollgate: cannot set {HITS_ADDEND_KEY} for the true-up: {s:?}");
                }
            }
            GlobalMode::RlsGrpc | GlobalMode::Http => {
                let Some(extra) = extra else {
                    return;
                };
                let entries = descriptor(cfg, &subject);
                if host == HostKind::Kong {
                    // No dispatch_http_call in response phases: the tick sends it.
                    let pending = PendingTrueUp {
                        target: settings.clone(),
                        entries: entries
                            .iter()
                            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                            .collect(),
                        hits: extra,
                    };
                    let pushed = match self.true_ups.try_borrow_mut() {
                        Ok(mut q) => q.push(pending),
                        Err(_) => Pushed::Disabled,
                    };
                    self.true_up_queued(pushed, extra);
                    return;
                }
                let root = ROOT_ID.with(Cell::get);
                // SAFETY: plain values. The call is made for the root context so the
                // host does not cancel it when this request's stream ends.
                let switched =
                    root != 0 && unsafe { proxy_set_effective_context(root) } == Status::Ok;
                let r = dispatch(cfg, &entries, extra);
                if switched {
                    // SAFETY: plain value; back to this request for the rest of the callback.
                    unsafe { proxy_set_effective_context(id) };
                }
                match r {
                    Ok(_) => debug!("tollgate: shared-limit true-up: {extra} more tokens"),
                    Err(s) => {
                        warn!("tollgate: shared-limit true-up of {extra} tokens not sent: {s:?}")
                    }
                }
            }
            GlobalMode::Off => {}
        }
    }

    /// Log (and count) what queueing a Kong true-up did.
    fn true_up_queued(&self, pushed: Pushed, extra: u64) {
        match pushed {
            Pushed::Queued => {
                debug!("tollgate: shared-limit true-up of {extra} tokens queued for the tick")
            }
            Pushed::DroppedOldest { hits, first } => {
                self.metrics
                    .borrow_mut()
                    .add(labels::global_true_ups_dropped(), 1);
                // One line per tick at most: later drops are summed in the tick's line.
                if first {
                    warn!("tollgate: shared-limit true-up queue full ({} waiting for the tick); dropped the oldest ({hits} tokens, not charged)", global::queue::MAX_QUEUED);
                }
            }
            Pushed::Disabled => {
                debug!("tollgate: shared-limit true-up of {extra} tokens not sent: Kong cannot call out after the response and no timer runs")
            }
            Pushed::Nothing => {}
        }
    }
}
