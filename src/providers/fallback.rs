//! Fallback through calls tollgate makes itself (Kong).
//!
//! Kong's ngx_wasm_module has no retry mechanism a filter can steer, and cannot
//! call out from response phases, so a route whose provider has a `fallback`
//! sends non-streaming requests itself from the request body phase: the request,
//! translated for the first provider, goes out with `dispatch_http_call`; a 429 or
//! 5xx answer (or none) sends it again, translated for the fallback; whichever
//! answer is final is translated back and sent to the client as a local response.
//! Envoy keeps its own mechanism (the route's `retry_policy`, docs/providers.md).
//!
//! This module is sans-IO: it builds the calls and the client's answer; the
//! adapter dispatches and relays.

use super::config::Endpoint;
use super::stage::CLUSTER_HEADER;
use super::UpstreamRequest;

/// True when an answer with this status goes to the fallback: 429, any 5xx, and 0
/// (no answer: the call failed or timed out).
pub fn retryable(status: u32) -> bool {
    status == 0 || status == 429 || status >= 500
}

/// Request headers a call never copies from the client: hop-by-hop headers, the
/// ones the call sets itself, `accept-encoding` (the answer must come back
/// readable) and tollgate's own cluster header (an Envoy routing hint).
const NOT_COPIED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
    "accept-encoding",
    CLUSTER_HEADER,
];

/// A provider call for the adapter to dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// `host:port` to dial.
    pub address: String,
    /// Headers, pseudo-headers first (`:method`, `:path`, `:authority`, `:scheme`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Timeout in ms.
    pub timeout_ms: u32,
    /// The provider's label, for logs and the fallback header.
    pub provider: String,
}

/// The call for one provider: the translated request (`req`, its `body`) with the
/// client's headers (lower-case names; pseudo-headers are ignored) minus hop-by-hop
/// ones and those the translation removes, plus those it sets. `None` when the
/// endpoint has no address to dial (configure refuses that for fallback routes).
pub fn call(
    endpoint: &Endpoint,
    provider: &str,
    req: &UpstreamRequest,
    body: Vec<u8>,
    client_headers: &[(&str, &str)],
) -> Option<Call> {
    let address = endpoint.dial_address()?;
    let authority = req
        .authority
        .clone()
        .or_else(|| endpoint.authority.clone())
        .unwrap_or_else(|| address.clone());
    let scheme = if endpoint.uses_tls() { "https" } else { "http" };
    let mut headers: Vec<(String, String)> = vec![
        (":method".into(), "POST".into()),
        (":path".into(), req.path.clone()),
        (":authority".into(), authority),
        (":scheme".into(), scheme.into()),
    ];
    let replaced = |k: &str| {
        NOT_COPIED.contains(&k)
            || req.remove_headers.iter().any(|r| r == k)
            || req.set_headers.iter().any(|(s, _)| s == k)
    };
    for (k, v) in client_headers {
        if !k.starts_with(':') && !replaced(k) {
            headers.push(((*k).to_string(), (*v).to_string()));
        }
    }
    for (k, v) in &req.set_headers {
        if k != CLUSTER_HEADER {
            headers.push((k.clone(), v.clone()));
        }
    }
    if !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    Some(Call {
        address,
        headers,
        body,
        timeout_ms: endpoint.call_timeout_ms(),
        provider: provider.to_string(),
    })
}

/// Provider answer headers passed on to the client with a relayed answer: the
/// ones an SDK acts on (`retry-after`) or a user quotes to the provider's support.
pub const RELAYED_HEADERS: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "request-id",
    "x-request-id",
    "openai-processing-ms",
];

/// Response header naming the provider that failed and its status, on answers
/// that came from the fallback (`anthropic 429`).
pub const FALLBACK_HEADER: &str = "x-tollgate-fallback";

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(authority: Option<&str>, address: Option<&str>) -> Endpoint {
        Endpoint {
            authority: authority.map(str::to_string),
            address: address.map(str::to_string),
            ..Endpoint::default()
        }
    }

    #[test]
    fn retryable_statuses() {
        for s in [0, 429, 500, 502, 503, 504, 529] {
            assert!(retryable(s), "{s}");
        }
        for s in [200, 201, 400, 401, 403, 404, 408, 413, 422] {
            assert!(!retryable(s), "{s}");
        }
    }

    #[test]
    fn call_carries_the_translation_and_the_clients_headers() {
        let req = UpstreamRequest {
            path: "/v1/messages".into(),
            authority: Some("api.anthropic.com".into()),
            set_headers: vec![
                ("anthropic-version".into(), "2023-06-01".into()),
                ("x-api-key".into(), "sk-ant".into()),
                (CLUSTER_HEADER.into(), "anthropic".into()),
            ],
            remove_headers: vec!["authorization".into()],
            body: None,
        };
        let client = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "llm.internal"),
            ("authorization", "Bearer client"),
            ("content-type", "application/json"),
            ("content-length", "99"),
            ("accept-encoding", "gzip"),
            ("connection", "keep-alive"),
            ("x-consumer-id", "team-a"),
            ("user-agent", "OpenAI/Python 1.99"),
            ("x-api-key", "client-sent"),
        ];
        let c = call(
            &endpoint(Some("api.anthropic.com"), None),
            "anthropic",
            &req,
            b"{}".to_vec(),
            &client,
        )
        .unwrap();
        assert_eq!(c.address, "api.anthropic.com:443");
        assert_eq!(c.timeout_ms, 300_000);
        let h: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            h,
            vec![
                (":method", "POST"),
                (":path", "/v1/messages"),
                (":authority", "api.anthropic.com"),
                (":scheme", "https"),
                ("content-type", "application/json"),
                ("x-consumer-id", "team-a"),
                ("user-agent", "OpenAI/Python 1.99"),
                ("anthropic-version", "2023-06-01"),
                ("x-api-key", "sk-ant"),
            ]
        );
    }

    #[test]
    fn dial_address_defaults_from_the_authority() {
        let e = endpoint(Some("api.openai.com"), None);
        assert_eq!(e.dial_address().as_deref(), Some("api.openai.com:443"));
        let mut e = endpoint(Some("vllm.internal"), None);
        e.tls = Some(false);
        assert_eq!(e.dial_address().as_deref(), Some("vllm.internal:80"));
        let e = endpoint(Some("127.0.0.1:8081"), None);
        assert_eq!(e.dial_address().as_deref(), Some("127.0.0.1:8081"));
        let e = endpoint(Some("api.openai.com"), Some("10.0.0.7:8443"));
        assert_eq!(e.dial_address().as_deref(), Some("10.0.0.7:8443"));
        assert_eq!(endpoint(None, None).dial_address(), None);
        // No authority anywhere: the address stands in for it.
        let req = UpstreamRequest {
            path: "/v1/chat/completions".into(),
            ..UpstreamRequest::default()
        };
        let mut e = endpoint(None, Some("10.0.0.7:8000"));
        e.tls = Some(false);
        e.timeout_ms = Some(5000);
        let c = call(&e, "vllm", &req, Vec::new(), &[]).unwrap();
        assert_eq!(c.headers[2], (":authority".into(), "10.0.0.7:8000".into()));
        assert_eq!(c.headers[3], (":scheme".into(), "http".into()));
        assert_eq!(c.timeout_ms, 5000);
    }
}
