//! Fuzz target bodies for tollgate's parsers, as plain functions.
//!
//! Each `fuzz_targets/<name>.rs` binary (cargo-fuzz, nightly, `make fuzz`) calls
//! the function of the same name here, and `tests/smoke.rs` replays the committed
//! seeds in `seeds/<name>/` plus deterministic mutations of them on stable, so
//! `make test` exercises the same code without libFuzzer.
//!
//! A target fails by panicking: either tollgate itself panicked on the input (on the
//! request path that would kill a worker's VM), or an invariant checked here did
//! not hold. Invariants are only ones that are true by design:
//! - SSE framing is independent of how the stream is chunked (while no event
//!   outgrows `max_event_bytes`), and the events' raw bytes rebuild the stream;
//! - a metered stream's output and report do not depend on the chunking either, and
//!   a stream nothing is stripped from reaches the client byte for byte;
//! - prompt counting (every dialect, on any JSON) labels what it estimated;
//! - the tokenizer equals tiktoken (`encode_ordinary`) on any UTF-8;
//! - `stream_options.include_usage` injection yields valid JSON that differs from
//!   the request only in that member.

pub mod mutate;

use std::rc::Rc;

use serde_json::Value;
use tollgate::config::Config;
use tollgate::dialect::sse::SseFramer;
use tollgate::dialect::{inject, Api};
use tollgate::limits::MemoryStore;
use tollgate::metering::{BodyDecision, Exchange, HeadersDecision, ResponseMode};
use tollgate::tokens::{bpe, Encoding};
use tollgate::usage::stream::Rewrite;

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// An SSE event as owned data: raw bytes, offset, complete, `event:`, `data:`.
type OwnedEvent = (Vec<u8>, u64, bool, Option<String>, Option<Vec<u8>>);

/// The targets by name, for the smoke runner and `make fuzz`.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("exchange", exchange),
    ("sse", sse),
    ("tokenizer", tokenizer),
    ("inject", inject),
    ("prompt", prompt),
];

/// A small deterministic PRNG for chunk boundaries drawn from the input itself.
struct Split(u64);

impl Split {
    fn new(seed: u8) -> Split {
        Split(u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn draw(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// `data` cut into pieces of 1..=max bytes.
    fn chunks<'a>(&mut self, data: &'a [u8], max: u64) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = (1 + self.draw() % max.max(1)) as usize;
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push(a);
            rest = b;
        }
        out
    }
}

/// `Config::parse` on arbitrary bytes: an error or a config, never a panic; a
/// parsed config resolves every route it names.
pub fn config(data: &[u8]) {
    if let Ok(c) = Config::parse(data) {
        for name in c.route_names().chain(["", "unknown"]) {
            let _ = c.route(Some(name)).limits.active();
        }
        let _ = c.route(None).limits.active();
    }
}

const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/openai/deployments/x/chat/completions",
    "/v1/models",
];

const CONFIGS: &[&str] = &[
    "{}",
    r#"{"defaults":{"limits":{"mode":"enforce","reserve_max_tokens_default":64,
        "rules":[{"name":"m","key":["consumer"],"window":"1m","tokens":5000,"count":"total"},
                 {"name":"o","key":["model"],"window":"1h","tokens":900,"count":"output"}]}}}"#,
    r#"{"defaults":{"invalid_body":"reject","max_request_bytes":4096,
        "metering":{"tokenize_byte_budget":64,"max_event_bytes":1024,"estimate_bytes_per_token":3.5}}}"#,
    r#"{"defaults":{"metering":{"inject_stream_usage":false,"response_headers":false}}}"#,
];

/// Index of the config with a small `max_event_bytes`.
const SMALL_EVENTS: usize = 2;

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("text/event-stream; charset=utf-8"),
    Some("application/json"),
    None,
    Some("text/plain"),
];

/// One whole exchange, as the adapter drives it, from a structured input:
/// `[path, config, content-type|status, chunk seed, body_len lo, body_len hi, body.., response..]`.
/// The response is fed twice, in random chunks and in one piece, and both runs
/// must give the client the same bytes and produce the same report.
pub fn exchange(data: &[u8]) {
    let [p, c, t, seed, lo, hi, rest @ ..] = data else {
        return;
    };
    let body_len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
    let (body, response) = rest.split_at(body_len);
    let path = PATHS[usize::from(*p) % PATHS.len()];
    let cfg_index = usize::from(*c) % CONFIGS.len();
    let cfg = CONFIGS[cfg_index];
    let ct = CONTENT_TYPES[usize::from(*t) % CONTENT_TYPES.len()];
    let status = if t & 0x10 != 0 { 500 } else { 200 };
    let config = Config::parse(cfg.as_bytes()).expect("fuzz configs are valid");

    let mut split = Split::new(*seed);
    let chunked = split.chunks(response, 1 + u64::from(*seed % 97));
    let a = run_exchange(&config, path, body, ct, status, &chunked);
    let b = run_exchange(&config, path, body, ct, status, &[response]);
    // With the small event bound (config 2) giving up depends on where chunks end,
    // by design; everywhere else the chunking must not matter.
    if cfg_index != SMALL_EVENTS {
        assert_eq!(a.0, b.0, "client bytes depend on the chunking");
        assert_eq!(a.1, b.1, "report depends on the chunking");
    }
}

/// Drive one exchange; returns what the client received and the report.
fn run_exchange(
    config: &Config,
    path: &str,
    body: &[u8],
    ct: Option<&str>,
    status: u32,
    chunks: &[&[u8]],
) -> (Vec<u8>, Option<String>) {
    let route = "openai";
    let mut ex = Exchange::new(config.route(Some(route)), Rc::from(route));
    let mut store = MemoryStore::default();
    let response: Vec<u8> = chunks.concat();
    match ex.on_request_headers("POST", path, Some(body.len() as u64), false) {
        HeadersDecision::WaitForBody => {}
        HeadersDecision::PassThrough | HeadersDecision::Respond(_) => return (response, None),
    }
    if ex.check_body_size(body.len() as u64).is_some() {
        return (response, None);
    }
    match ex.on_request_body(body) {
        BodyDecision::Forward => {}
        BodyDecision::Replace(new) => check_injected(body, &new),
        BodyDecision::Respond(reply) => {
            let v: Value = serde_json::from_slice(&reply.body).expect("local replies are JSON");
            assert!(v.is_object());
            return (response, None);
        }
    }
    ex.set_consumer(Some("fuzz".into()));
    if let Some(reply) = ex.admit(&mut store, 1_000) {
        assert_eq!(reply.status, 429);
        return (response, None);
    }
    let mode = ex.on_response_headers(status, ct, Some(response.len() as u64));
    let mut out = Vec::new();
    let report = match mode {
        ResponseMode::PassThrough => {
            out = response.clone();
            ex.finish()
        }
        ResponseMode::Buffer => {
            out = response.clone();
            ex.on_response_complete(Some(&response))
        }
        ResponseMode::Translate => {
            let (translated, report) = ex.on_translated_response(&response);
            let v: Value =
                serde_json::from_slice(&translated).expect("translated answers are JSON");
            assert!(v.is_object());
            out = translated;
            report
        }
        ResponseMode::Copy => {
            for c in chunks {
                ex.on_copied_chunk(c);
                out.extend_from_slice(c);
            }
            ex.on_response_complete(None)
        }
        ResponseMode::Stream => {
            let mut changed = false;
            let last = chunks.len().saturating_sub(1);
            for (i, c) in chunks.iter().enumerate() {
                match ex.on_stream_chunk(c, i == last) {
                    Rewrite::Unchanged => out.extend_from_slice(c),
                    Rewrite::Replace(b) => {
                        changed = true;
                        out.extend_from_slice(&b);
                    }
                }
            }
            if chunks.is_empty() {
                if let Rewrite::Replace(b) = ex.on_stream_chunk(&[], true) {
                    out.extend_from_slice(&b);
                }
            }
            if !changed {
                assert_eq!(out, response, "an unchanged stream must pass byte for byte");
            }
            ex.finish()
        }
    };
    if let Some(r) = report.as_ref() {
        ex.settle(&mut store, r);
        // A second report would double-bill.
        assert!(ex.finish().is_none(), "reported twice");
    }
    (out, report.map(|r| format!("{r:?}")))
}

/// The injected body must be valid JSON equal to the original with
/// `stream_options.include_usage` set to true.
fn check_injected(original: &[u8], new: &[u8]) {
    let before: Value = serde_json::from_slice(original).expect("only parsed bodies are edited");
    let after: Value = match serde_json::from_slice(new) {
        Ok(v) => v,
        Err(e) => panic!(
            "injection broke the JSON: {e}\nbefore: {}\nafter:  {}",
            String::from_utf8_lossy(original),
            String::from_utf8_lossy(new)
        ),
    };
    assert_eq!(
        after.pointer("/stream_options/include_usage"),
        Some(&Value::Bool(true)),
        "include_usage not on in {}",
        String::from_utf8_lossy(new)
    );
    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            if let Some(Value::Object(so)) = o.get_mut("stream_options") {
                so.remove("include_usage");
                if so.is_empty() {
                    o.remove("stream_options");
                }
            } else {
                o.remove("stream_options");
            }
        }
        v
    };
    assert_eq!(
        strip(before),
        strip(after),
        "injection changed more than include_usage: {}",
        String::from_utf8_lossy(new)
    );
}

/// `ensure_stream_usage` on any JSON object body (the exchange only calls it on
/// bodies that parsed as one).
pub fn inject(data: &[u8]) {
    let Ok(parsed @ Value::Object(_)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let inj = inject::ensure_stream_usage(data, &parsed);
    if let Some(new) = inj.body {
        check_injected(data, &new);
    }
}

/// The SSE framer and the stream meter under arbitrary chunking:
/// `[api, chunk seed, stream..]`.
pub fn sse(data: &[u8]) {
    let [a, seed, stream @ ..] = data else {
        return;
    };
    let mut split = Split::new(*seed);
    let chunks = split.chunks(stream, 1 + u64::from(*seed % 61));

    // Framer: events and their offsets do not depend on the chunking, and their raw
    // bytes rebuild the stream exactly.
    let frame = |chunks: &[&[u8]]| {
        let mut f = SseFramer::new(usize::MAX);
        let mut evs: Vec<OwnedEvent> = Vec::new();
        let mut keep = |e: tollgate::dialect::sse::SseEvent<'_>| {
            evs.push((
                e.raw().to_vec(),
                e.offset(),
                e.is_complete(),
                e.event().map(str::to_string),
                e.data().map(<[u8]>::to_vec),
            ))
        };
        for c in chunks {
            f.push(c, &mut keep);
        }
        f.finish(&mut keep);
        assert!(!f.gave_up());
        evs
    };
    let whole = frame(&[stream]);
    assert_eq!(frame(&chunks), whole, "framing depends on the chunking");
    let rebuilt: Vec<u8> = whole.iter().flat_map(|e| e.0.iter().copied()).collect();
    assert_eq!(rebuilt, stream, "events do not rebuild the stream");

    // A small event bound: giving up must not lose or duplicate bytes either.
    let mut small = SseFramer::new(1 + usize::from(*a) % 64);
    let mut seen = Vec::new();
    for c in &chunks {
        small.push(c, |e| seen.extend_from_slice(e.raw()));
        if small.gave_up() {
            seen.extend_from_slice(&small.take_held());
        }
    }
    small.finish(|e| seen.extend_from_slice(e.raw()));
    if !small.gave_up() {
        assert_eq!(seen, stream);
    }

    // Stream meter, stripping and not, for each streaming API.
    let apis = [
        Api::ChatCompletions,
        Api::Completions,
        Api::Responses,
        Api::AnthropicMessages,
    ];
    let api = apis[usize::from(*a) % apis.len()];
    for strip in [false, true] {
        let meter = |chunks: &[&[u8]]| {
            let mut m = tollgate::usage::stream::StreamMeter::new(api, strip, 1 << 20, 4096);
            let mut out = Vec::new();
            let last = chunks.len().saturating_sub(1);
            for (i, c) in chunks.iter().enumerate() {
                match m.on_chunk(c, i == last) {
                    Rewrite::Unchanged => out.extend_from_slice(c),
                    Rewrite::Replace(b) => out.extend_from_slice(&b),
                }
            }
            (out, m.finish())
        };
        let (out_a, sum_a) = meter(&chunks);
        let (out_b, sum_b) = meter(&[stream]);
        assert_eq!(out_a, out_b, "meter output depends on the chunking");
        assert_eq!(sum_a, sum_b, "meter summary depends on the chunking");
        if !strip {
            assert_eq!(
                out_a, stream,
                "a meter that strips nothing changed the stream"
            );
        }
    }
}

/// Longest input compared against tiktoken (whose regex is slow on long runs).
const TOKENIZER_MAX: usize = 4096;

/// tollgate's tokenizer equals tiktoken's `encode_ordinary` on any UTF-8 (invalid
/// UTF-8 is replaced first, as a request body's text would already be a `str`).
pub fn tokenizer(data: &[u8]) {
    let data = data.get(..TOKENIZER_MAX).unwrap_or(data);
    let text = String::from_utf8_lossy(data);
    for (enc, reference) in [
        (Encoding::O200kBase, tiktoken_rs::o200k_base_singleton()),
        (Encoding::Cl100kBase, tiktoken_rs::cl100k_base_singleton()),
    ] {
        let tok = bpe::tokenizer(enc);
        let want = reference.encode_ordinary(&text);
        let got = tok.encode(&text);
        assert_eq!(got, want, "{enc:?} differs from tiktoken on {text:?}");
        assert_eq!(tok.count(&text), want.len(), "{enc:?} count != encode");
    }
}

const MODELS: &[&str] = &[
    "gpt-4o",
    "gpt-4",
    "o3-mini",
    "claude-sonnet-4-5",
    "text-embedding-3-small",
    "",
];

/// Prompt counting of every request dialect on one arbitrary JSON body:
/// `[model, body..]` (the body's own `model` is ignored for the profile). With a
/// zero byte budget any text counted must be labelled an estimate.
pub fn prompt(data: &[u8]) {
    use tollgate::tokens::prompt::{count_prompt, PromptOptions};
    use tollgate::tokens::{models, BudgetedCounter, TextCounter};
    let [m, body @ ..] = data else {
        return;
    };
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let profile = models::profile(MODELS[usize::from(*m) % MODELS.len()]);
    let opts = PromptOptions::default();
    let tok = profile.encoding.map(bpe::tokenizer);
    for api in [
        Api::ChatCompletions,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::AnthropicMessages,
    ] {
        let mut full = BudgetedCounter::new(tok, 1 << 20, opts.bytes_per_token);
        let exact = count_prompt(api, &parsed, &profile, &mut full, &opts);
        let mut none = BudgetedCounter::new(tok, 0, opts.bytes_per_token);
        let guessed = count_prompt(api, &parsed, &profile, &mut none, &opts);
        if none.estimated() {
            assert!(guessed.estimated, "{api:?}: estimated text not labelled");
        }
        if !full.estimated() && !exact.estimated {
            // Nothing was estimated with the full budget, so nothing was over it:
            // the same text under a zero budget is either absent or labelled.
            assert!(
                guessed.estimated || guessed.tokens == exact.tokens,
                "{api:?}"
            );
        }
    }
}
