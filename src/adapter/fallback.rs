//! Host side of the Kong fallback: tollgate's own provider calls. What to send and
//! what an answer means is decided in [`crate::metering::Exchange`] and
//! [`crate::providers::fallback`]; this only does the I/O.
//!
//! ngx_wasm_module dispatches HTTP calls from `on_request_body` and from a call's
//! answer, and keeps the request waiting while a call is out; a filter may answer
//! the client with a local response from the call's answer. When a call fails
//! without an answer (connection refused, timeout), ngx_wasm_module logs "dispatch
//! failed" and resumes the request itself: it then goes to the Kong service as
//! rewritten for the first provider, and tollgate reads that response as usual.

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};

use super::{ffi, Http};
use crate::host::parse_header_map;
use crate::metering::{BodyDecision, CallStep, Relay};
use crate::providers::fallback::Call;
use crate::providers::UpstreamRequest;

/// Per-request state of tollgate's own provider calls.
#[derive(Default)]
pub(super) struct ProviderCalls {
    /// The client's request headers, before the provider rewrite: every call is
    /// built from these (never from a rewrite carrying another provider's key).
    client_headers: Vec<(String, String)>,
    /// The first call, built and waiting for the shared limits' admission.
    ready: Option<Call>,
    /// Token of the call in flight.
    pending: Option<u32>,
    /// The answer went to the client as a local response; ngx_wasm_module still
    /// runs the response callbacks on it, and they leave it alone.
    relayed: bool,
}

fn dispatch(call: &Call) -> Result<u32, proxy_wasm::types::Status> {
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    hostcalls::dispatch_http_call(
        &call.address,
        headers,
        Some(&call.body),
        Vec::new(),
        Duration::from_millis(u64::from(call.timeout_ms)),
    )
}

impl Http {
    /// After the provider stage, before the host request is rewritten: when this
    /// request goes through tollgate's calls, keep the client's headers and build
    /// the first call from the rewrite (`upstream`) and the body `decision` sends.
    pub(super) fn fallback_prepare(
        &mut self,
        decision: &BodyDecision,
        original: &[u8],
        upstream: Option<&UpstreamRequest>,
    ) {
        let Some(ex) = self.exchange.as_ref().filter(|ex| ex.calls_provider()) else {
            return;
        };
        let (Some(upstream), body) = (
            upstream,
            match decision {
                BodyDecision::Forward => original.to_vec(),
                BodyDecision::Replace(b) => b.clone(),
                BodyDecision::Respond(_) => return,
            },
        ) else {
            return;
        };
        let raw = ffi::header_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let client: Vec<(String, String)> = parse_header_map(&raw)
            .into_iter()
            .filter_map(|(k, v)| {
                let k = std::str::from_utf8(k).ok()?.to_ascii_lowercase();
                Some((k, std::str::from_utf8(v).ok()?.to_string()))
            })
            .collect();
        let pairs: Vec<(&str, &str)> = client
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let call = ex.provider_call(upstream, body, &pairs);
        self.provider_calls.ready = call;
        self.provider_calls.client_headers = client;
    }

    /// Send the prepared first call: `Some(Pause)` while it is out. `None` when
    /// nothing is prepared, or the host refused the call (the request then goes
    /// the normal way, to the first provider).
    pub(super) fn fallback_start(&mut self) -> Option<Action> {
        let call = self.provider_calls.ready.take()?;
        match dispatch(&call) {
            Ok(token) => {
                self.provider_calls.pending = Some(token);
                Some(Action::Pause)
            }
            Err(s) => {
                warn!(
                    "tollgate: cannot call {} at {} ({s:?}); the request goes the normal way, without fallback",
                    call.provider, call.address
                );
                if let Some(ex) = self.exchange.as_mut() {
                    ex.forget_provider_call();
                }
                None
            }
        }
    }

    /// `on_http_call_response`: true when the answer was one of our provider calls.
    pub(super) fn fallback_answer(&mut self, token: u32, body_size: usize) -> bool {
        if self.provider_calls.pending != Some(token) {
            return false;
        }
        self.provider_calls.pending = None;
        let raw = ffi::header_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let parsed = parse_header_map(&raw);
        let headers: Vec<(&str, &str)> = parsed
            .iter()
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?)))
            .collect();
        let status = headers
            .iter()
            .find(|(k, _)| *k == ":status")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let body = if body_size > 0 {
            ffi::buffer(BufferType::HttpCallResponseBody, 0, body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let client: Vec<(&str, &str)> = self
            .provider_calls
            .client_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let Some(ex) = self.exchange.as_mut() else {
            return true;
        };
        let step = ex.on_call_answer(status, &headers, &body, &client);
        let relay = match step {
            CallStep::Relay(r) => r,
            CallStep::Retry(call) => match dispatch(&call) {
                Ok(t) => {
                    info!(
                        "{{\"event\":\"tollgate.fallback\",\"route\":{},\"status\":{status},\"to\":{}}}",
                        serde_json::Value::from(ex.route()),
                        serde_json::Value::from(call.provider.as_str())
                    );
                    self.provider_calls.pending = Some(t);
                    return true;
                }
                Err(s) => {
                    warn!(
                        "tollgate: cannot call the fallback {} at {} ({s:?})",
                        call.provider, call.address
                    );
                    match ex.on_call_answer(0, &[], &[], &client) {
                        CallStep::Relay(r) => r,
                        CallStep::Retry(_) => return true,
                    }
                }
            },
        };
        self.fallback_relay(relay);
        true
    }

    fn fallback_relay(&mut self, r: Relay) {
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Err(s) = ffi::send_response(r.status, &headers, &r.body) {
            warn!("tollgate: cannot send the provider's answer: {s:?}");
        }
        self.provider_calls.relayed = true;
        if let Some(report) = r.report {
            self.emit(&report, false);
        }
    }

    /// Response callbacks: true when they must leave the response alone (it is the
    /// answer tollgate relayed). A response arriving while a call is still out
    /// means the host sent the request on by itself: read as usual.
    pub(super) fn provider_calls_relayed(&self) -> bool {
        self.provider_calls.relayed
    }

    /// Response headers: see [`Http::provider_calls_relayed`]; also notices a
    /// response the host fetched by itself while a call was out.
    pub(super) fn fallback_relayed(&mut self) -> bool {
        if self.provider_calls.relayed {
            return true;
        }
        if self.provider_calls.pending.take().is_some() {
            warn!("tollgate: the provider call got no answer and the host sent the request on itself; no fallback for it");
            if let Some(ex) = self.exchange.as_mut() {
                ex.forget_provider_call();
            }
        }
        false
    }
}
