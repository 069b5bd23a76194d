//! Shared pieces: test-control headers, reply type, ids, body helpers.

use crate::http::Request;
use crate::json::J;
use crate::text::{self, Rng};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_REPLY_WORDS: usize = 24;
pub const MAX_REPLY_WORDS: usize = 200_000;
pub const MAX_DELAY_MS: u64 = 10_000;
/// Largest scripted reply (`x-mock-reply-text` × `x-mock-reply-repeat`).
pub const MAX_SCRIPTED_BYTES: usize = 64 << 20;

/// Test controls read from `x-mock-*` request headers.
#[derive(Debug, Clone, Default)]
pub struct Ctl {
    pub reply_words: usize,
    pub no_usage: bool,
    pub status: Option<u16>,
    pub delay: Duration,
    /// `x-mock-cached-tokens`: prompt tokens reported as served from cache.
    pub cached: u64,
    /// `x-mock-cache-creation-tokens` (Anthropic `cache_creation_input_tokens`).
    pub cache_creation: u64,
    /// `x-mock-reasoning-tokens`: hidden reasoning tokens added to the output.
    pub reasoning: u64,
    /// `x-mock-echo: 1`: chat replies repeat the last user message's text
    /// (streamed 4 characters per chunk), so tests can see what the provider got.
    pub echo: bool,
    /// `x-mock-reply-text: T`: chat and Responses replies are `T` (overrides echo).
    pub reply_text: Option<String>,
    /// `x-mock-reply-repeat: N`: the echoed or scripted reply N times, one per
    /// line (a big answer on demand).
    pub reply_repeat: usize,
    /// `x-mock-redacted-thinking: 1`: with thinking enabled, a `redacted_thinking`
    /// block follows the `thinking` block (Anthropic).
    pub redacted_thinking: bool,
}

fn num_header(req: &Request, name: &str) -> Result<Option<u64>, String> {
    match req.header(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("header {name} must be a non-negative integer, got {v:?}")),
    }
}

impl Ctl {
    pub fn from_request(req: &Request) -> Result<Ctl, String> {
        let reply_words = num_header(req, "x-mock-reply-words")?
            .map(|n| n.min(MAX_REPLY_WORDS as u64) as usize)
            .unwrap_or(DEFAULT_REPLY_WORDS);
        let no_usage = req.header("x-mock-no-usage").is_some_and(|v| {
            matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
        });
        let status = match num_header(req, "x-mock-status")? {
            None => None,
            Some(s) if (400..=599).contains(&s) => Some(s as u16),
            Some(s) => return Err(format!("x-mock-status must be within 400..=599, got {s}")),
        };
        let delay = Duration::from_millis(
            num_header(req, "x-mock-chunk-delay-ms")?
                .unwrap_or(0)
                .min(MAX_DELAY_MS),
        );
        Ok(Ctl {
            reply_words,
            no_usage,
            status,
            delay,
            cached: num_header(req, "x-mock-cached-tokens")?.unwrap_or(0),
            cache_creation: num_header(req, "x-mock-cache-creation-tokens")?.unwrap_or(0),
            reasoning: num_header(req, "x-mock-reasoning-tokens")?.unwrap_or(0),
            echo: req.header("x-mock-echo").is_some_and(|v| v.trim() == "1"),
            reply_text: req.header("x-mock-reply-text").map(str::to_string),
            reply_repeat: num_header(req, "x-mock-reply-repeat")?
                .map_or(1, |n| n.clamp(1, MAX_SCRIPTED_BYTES as u64) as usize),
            redacted_thinking: req
                .header("x-mock-redacted-thinking")
                .is_some_and(|v| v.trim() == "1"),
        })
    }

    /// The reply text when the test scripts it: `x-mock-reply-text`, else the
    /// echo (`echo()` gives the text to repeat), repeated `x-mock-reply-repeat`
    /// times on separate lines, at most [`MAX_SCRIPTED_BYTES`].
    pub fn scripted_reply(&self, echo: impl FnOnce() -> String) -> Option<String> {
        let one = match &self.reply_text {
            Some(t) => t.clone(),
            None if self.echo => echo(),
            None => return None,
        };
        let n = self
            .reply_repeat
            .min(MAX_SCRIPTED_BYTES / (one.len() + 1).max(1))
            .max(1);
        Some(vec![one; n].join("\n"))
    }
}

#[derive(Debug)]
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    Stream {
        headers: Vec<(String, String)>,
        events: Vec<String>,
    },
}

impl Reply {
    pub fn json(status: u16, body: &J, extra: Vec<(String, String)>) -> Reply {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.extend(extra);
        Reply::Full {
            status,
            headers,
            body: body.to_json(),
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// `prefix` + 24 base62 characters, unique per process.
pub fn new_id(prefix: &str) -> String {
    let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng::new(text::fnv1a(&n.to_le_bytes()) ^ 0x9e37_79b9_7f4a_7c15);
    const ALPHA: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    for _ in 0..24 {
        s.push(ALPHA[rng.below(ALPHA.len())] as char);
    }
    s
}

/// Seed for the reply: same request content, same reply.
pub fn seed_of(model: &str, v: Option<&Value>) -> u64 {
    let mut s = model.to_string();
    if let Some(v) = v {
        s.push_str(&v.to_string());
    }
    text::fnv1a(s.as_bytes())
}

/// Splits `s` into pieces of about `n` characters on char boundaries.
pub fn split_chars(s: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        cur.push(c);
        if cur.chars().count() >= n.max(1) {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Truncates `pieces` to the longest prefix whose token count fits `limit`.
/// Returns whether it cut anything.
pub fn truncate_to_tokens(model: &str, pieces: &mut Vec<String>, limit: Option<u64>) -> bool {
    let Some(limit) = limit else { return false };
    if text::count(model, &pieces.concat()) <= limit {
        return false;
    }
    let (mut lo, mut hi) = (0usize, pieces.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if text::count(model, &pieces[..mid].concat()) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    pieces.truncate(lo);
    true
}

/// Arguments for a tool call, generated from its JSON schema: required
/// properties (all when none are required), strings from the reply words,
/// the first value of an `enum`.
pub fn tool_arguments(schema: Option<&Value>, rng: &mut Rng) -> String {
    let mut args = J::Obj(Vec::new());
    let props = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    if let Some(props) = props {
        let required: Vec<&str> = schema
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, p) in props {
            if !required.is_empty() && !required.contains(&name.as_str()) {
                continue;
            }
            let value = if let Some(first) = p
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                J::Value(first.clone())
            } else {
                match p.get("type").and_then(Value::as_str).unwrap_or("string") {
                    "integer" => J::Int(42),
                    "number" => J::F64(3.5),
                    "boolean" => J::Bool(true),
                    "array" => J::Arr(Vec::new()),
                    "object" => J::Obj(Vec::new()),
                    "null" => J::Null,
                    _ => J::Str(
                        text::reply_text(rng.next(), 2)
                            .trim_end_matches(['.', '!'])
                            .to_string(),
                    ),
                }
            };
            args.push(name, value);
        }
    }
    args.to_json()
}

/// Text of a content value: a string, or the `text` of each part of an
/// array of parts. Returns (text, number of image parts).
pub fn content_text(v: Option<&Value>) -> (String, u64) {
    match v {
        Some(Value::String(s)) => (s.clone(), 0),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            let mut images = 0;
            for p in parts {
                match p {
                    Value::String(s) => text.push_str(s),
                    Value::Object(o) => {
                        let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
                        if ty.contains("image") {
                            images += 1;
                        }
                        if let Some(t) = o.get("text").and_then(Value::as_str) {
                            text.push_str(t);
                        }
                        // Anthropic tool_result content and Responses outputs.
                        if let Some(c) = o.get("content") {
                            let (t, i) = content_text(Some(c));
                            text.push_str(&t);
                            images += i;
                        }
                        if let Some(t) = o.get("output").and_then(Value::as_str) {
                            text.push_str(t);
                        }
                    }
                    _ => {}
                }
            }
            (text, images)
        }
        _ => (String::new(), 0),
    }
}

/// Tokens charged per image part (OpenAI's low-detail price).
pub const IMAGE_TOKENS: u64 = 85;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_on_char_boundaries() {
        assert_eq!(split_chars("日本語🚀ab", 2), vec!["日本", "語🚀", "ab"]);
        assert!(split_chars("", 3).is_empty());
    }

    #[test]
    fn truncation_fits_limit() {
        let mut p = text::reply_pieces(3, 100);
        assert!(truncate_to_tokens("gpt-4o", &mut p, Some(10)));
        assert!(text::count("gpt-4o", &p.concat()) <= 10);
        assert!(!p.is_empty());
        let mut q = text::reply_pieces(3, 5);
        assert!(!truncate_to_tokens("gpt-4o", &mut q, Some(1000)));
        assert_eq!(q.len(), 5);
    }

    #[test]
    fn tool_args_from_schema() {
        let schema: Value = serde_json::from_str(
            r#"{"type":"object","properties":{"location":{"type":"string"},"unit":{"type":"string","enum":["celsius","fahrenheit"]},"days":{"type":"integer"}},"required":["location","unit"]}"#,
        )
        .unwrap();
        let args: Value =
            serde_json::from_str(&tool_arguments(Some(&schema), &mut Rng::new(1))).unwrap();
        assert_eq!(args["unit"], "celsius");
        assert!(args["location"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(args.get("days").is_none());
        assert_eq!(tool_arguments(None, &mut Rng::new(1)), "{}");
    }
}
