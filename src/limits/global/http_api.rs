//! Limitador's HTTP API, `POST /check_and_report`, for hosts without gRPC (Kong).
//!
//! Request: `{"namespace": <domain>, "values": {<descriptor entries>}, "delta": <hits>,
//! "response_headers": "DraftVersion03"}`. Answer: 200 under the limit, 429 over it,
//! with `X-RateLimit-Limit` (`<limit>, <limit>;w=<window secs>...`),
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds) when asked for them.

use crate::limits::{RateState, Unit};

use super::Verdict;

/// The JSON body of a `check_and_report` call.
pub fn request_body(namespace: &str, entries: &[(&str, &str)], delta: u64) -> Vec<u8> {
    let values: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "namespace": namespace,
        "values": values,
        "delta": delta,
        "response_headers": "DraftVersion03",
    })
    .to_string()
    .into_bytes()
}

/// Headers of the call (`:authority` falls back to the cluster / host:port).
pub fn request_headers<'a>(path: &'a str, authority: &'a str) -> [(&'static str, &'a str); 4] {
    [
        (":method", "POST"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/json"),
    ]
}

fn header<'a>(headers: &'a [(&[u8], &[u8])], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::trim)
}

/// The draft-03 headers as a [`RateState`]: the first `X-RateLimit-Limit` item is the
/// most restrictive limit (Limitador sorts them so), `;w=` its window.
fn state(headers: &[(&[u8], &[u8])], namespace: &str) -> Option<RateState> {
    let limit_h = header(headers, "x-ratelimit-limit")?;
    let first = limit_h.split(',').next()?.trim();
    let limit: u64 = first.split(';').next()?.trim().parse().ok()?;
    let remaining = header(headers, "x-ratelimit-remaining")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let window_secs = limit_h
        .split(',')
        .nth(1)
        .and_then(|item| item.split(';').find_map(|p| p.trim().strip_prefix("w=")))
        .and_then(|w| w.trim().parse::<u64>().ok());
    let reset_ms = header(headers, "x-ratelimit-reset")
        .and_then(|v| v.parse::<u64>().ok())
        .or(window_secs)
        .map_or(1000, |s| s.saturating_mul(1000));
    Some(RateState {
        rule: std::rc::Rc::from(namespace),
        unit: Unit::Tokens,
        limit,
        remaining,
        reset_ms,
    })
}

/// The verdict of a `check_and_report` call from its response headers (`None`:
/// the call failed or timed out, no response).
pub fn verdict(namespace: &str, headers: Option<&[(&[u8], &[u8])]>) -> Verdict {
    let Some(headers) = headers.filter(|h| !h.is_empty()) else {
        return Verdict::Failed("no response (unreachable or timed out)".to_string());
    };
    match header(headers, ":status") {
        Some("200") => Verdict::Allow(state(headers, namespace)),
        Some("429") => Verdict::Refuse(state(headers, namespace)),
        Some(s) => Verdict::Failed(format!("HTTP status {s}")),
        None => Verdict::Failed("response without :status".to_string()),
    }
}
