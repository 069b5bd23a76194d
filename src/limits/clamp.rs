//! Clamping a request's completion cap to the budget that remains.
//!
//! When `limits.clamp_max_tokens` is on and admission lowered the reservation
//! ([`super::Admission::clamped_to`]), the request body must say so too, or the
//! provider would still generate up to the old cap. The number is spliced into the
//! JSON text (the body was already parsed once; it is not re-serialised), so
//! everything else the client sent reaches the provider byte for byte.
//!
//! Which members: every top-level `max_completion_tokens`, `max_tokens` and
//! `max_output_tokens` the body has whose value is a number above the clamp. When
//! the body has none (the reservation came from `reserve_max_tokens_default`), the
//! API's own cap is added, because only then does the provider stop at the
//! clamp: `max_completion_tokens` for chat completions (the one OpenAI's
//! reasoning models accept), `max_tokens` for legacy completions and Anthropic
//! Messages, `max_output_tokens` for Responses.

use crate::dialect::inject::find_member;
use crate::dialect::Api;

/// The completion-cap members a body may carry, in every API tollgate handles.
pub const CAP_FIELDS: [&str; 3] = ["max_completion_tokens", "max_tokens", "max_output_tokens"];

/// The member this API uses to cap a completion (`None`: the API has none).
pub fn cap_field(api: Api) -> Option<&'static str> {
    match api {
        Api::ChatCompletions => Some("max_completion_tokens"),
        Api::Completions | Api::AnthropicMessages => Some("max_tokens"),
        Api::Responses => Some("max_output_tokens"),
        Api::Embeddings => None,
    }
}

/// The body with its completion cap lowered to `to`, or `None` when nothing
/// needs to change (or the text is not a JSON object).
pub fn clamp_body(api: Api, body: &[u8], to: u64) -> Option<Vec<u8>> {
    let mut edits: Vec<(std::ops::Range<usize>, Vec<u8>)> = Vec::new();
    let mut present = false;
    for f in CAP_FIELDS {
        let Some(m) = find_member(body, f.as_bytes()) else {
            continue;
        };
        let value = body.get(m.value.clone())?;
        // A cap that is not a plain number is left for the provider to refuse.
        let Some(n) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        present = true;
        if n > to as f64 {
            edits.push((m.value, to.to_string().into_bytes()));
        }
    }
    if !present {
        let field = cap_field(api)?;
        let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body.get(open) != Some(&b'{') {
            return None;
        }
        let rest = body.get(open + 1..)?;
        let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
        let ins = format!("\"{field}\":{to}{}", if empty { "" } else { "," });
        edits.push((open + 1..open + 1, ins.into_bytes()));
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(body.len() + 32);
    let mut at = 0;
    for (r, with) in edits {
        out.extend_from_slice(body.get(at..r.start)?);
        out.extend_from_slice(&with);
        at = r.end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn clamp(api: Api, body: &str, to: u64) -> Option<Value> {
        clamp_body(api, body.as_bytes(), to).map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn lowers_present_caps_and_keeps_the_rest_byte_for_byte() {
        let body = r#"{"model":"gpt-4o", "max_tokens" : 500 ,"messages":[{"role":"user","content":"max_tokens 9"}]}"#;
        let out = clamp_body(Api::ChatCompletions, body.as_bytes(), 42).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"gpt-4o", "max_tokens" : 42 ,"messages":[{"role":"user","content":"max_tokens 9"}]}"#
        );
        let v = clamp(
            Api::ChatCompletions,
            r#"{"max_completion_tokens":900,"max_tokens":800}"#,
            7,
        )
        .unwrap();
        assert_eq!(v["max_completion_tokens"], 7);
        assert_eq!(v["max_tokens"], 7);
        // Already below: nothing to do.
        assert!(clamp(Api::ChatCompletions, r#"{"max_tokens":5}"#, 7).is_none());
    }

    #[test]
    fn adds_the_apis_own_cap_when_absent() {
        let v = clamp(Api::ChatCompletions, r#"{"model":"m","messages":[]}"#, 10).unwrap();
        assert_eq!(v["max_completion_tokens"], 10);
        assert_eq!(v["model"], "m");
        let v = clamp(Api::AnthropicMessages, " {}", 3).unwrap();
        assert_eq!(v, serde_json::json!({"max_tokens": 3}));
        let v = clamp(Api::Responses, r#"{"input":"x"}"#, 3).unwrap();
        assert_eq!(v["max_output_tokens"], 3);
        assert!(clamp_body(Api::Embeddings, br#"{"input":"x"}"#, 3).is_none());
        assert!(clamp_body(Api::ChatCompletions, b"[1]", 3).is_none());
        // A non-numeric cap is left alone (the provider refuses it); the API's own cap is added.
        assert!(clamp(Api::ChatCompletions, r#"{"max_tokens":"x"}"#, 3).is_some());
    }
}
