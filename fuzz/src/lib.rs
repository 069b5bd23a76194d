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
//!   the request only in that member;
//! - PII redaction keeps a valid JSON body valid, a redact-then-restore round trip
//!   gives the text back, and a PII-rewritten stream does not depend on chunking;
//! - the request-path JSON document accepts exactly what serde_json accepts and
//!   reads the same values;
//! - Bedrock eventstream decoding and ConverseStream translation do not depend on
//!   chunking, and the decoder holds at most its frame cap.

pub mod mutate;

use std::rc::Rc;

use serde_json::Value;
use tollgate::config::Config;
use tollgate::dialect::doc::Doc;
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
    ("pii", pii),
    ("eventstream", eventstream),
    ("json", json),
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
    let Ok(doc) = Doc::parse(data) else {
        return;
    };
    if !doc.root().is_object() {
        return;
    }
    let inj = inject::ensure_stream_usage(data, doc.root());
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
    let Ok(doc) = Doc::parse(body) else {
        return;
    };
    let parsed = doc.root();
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
        let exact = count_prompt(api, parsed, &profile, &mut full, &opts);
        let mut none = BudgetedCounter::new(tok, 0, opts.bytes_per_token);
        let guessed = count_prompt(api, parsed, &profile, &mut none, &opts);
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

/// PII configs the `pii` target picks from: every detector restoring (with
/// response scanning off, so the answer changes only where a placeholder is put
/// back; built from `Detectors::NAMES` in [`pii_config`]), the defaults, hashing
/// and masking, and detect mode.
const PII_CONFIGS: &[&str] = &[
    "restore-all",
    r#"{"enabled":true}"#,
    r#"{"enabled":true,"hash_key":"0123456789abcdef-fuzz","detectors":{"email":"hash",
        "phone":"mask","credit_card":"hash","ip_address":"mask"}}"#,
    r#"{"enabled":true,"mode":"detect","max_stream_hold_bytes":256}"#,
];

/// Index of the all-`restore` config, where a round trip must give the text back.
const PII_RESTORE: usize = 0;

/// The `pii` section for one of [`PII_CONFIGS`].
fn pii_config(i: usize) -> String {
    if i != PII_RESTORE {
        return PII_CONFIGS[i].to_string();
    }
    let detectors: serde_json::Map<String, Value> = tollgate::pii::config::Detectors::NAMES
        .iter()
        .map(|n| (n.to_string(), Value::from("restore")))
        .collect();
    serde_json::json!({"enabled": true, "scan_responses": false, "detectors": detectors})
        .to_string()
}

thread_local! {
    /// The compiled engines of [`PII_CONFIGS`], built once per thread.
    static PII_ENGINES: Vec<Rc<tollgate::pii::engine::Engine>> = (0..PII_CONFIGS.len())
        .map(|i| {
            let cfg = format!(r#"{{"defaults":{{"pii":{}}}}}"#, pii_config(i));
            let c = Config::parse(cfg.as_bytes()).expect("fuzz PII configs are valid");
            c.route(None).pii.engine().expect("PII is enabled").clone()
        })
        .collect();
}

const PII_APIS: &[Api] = &[
    Api::ChatCompletions,
    Api::AnthropicMessages,
    Api::Responses,
    Api::Completions,
];

/// A chat stream whose deltas carry `text` cut into pieces by `split`.
fn pii_chat_stream(text: &str, split: &mut Split) -> Vec<u8> {
    let mut s = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut n = (1 + split.draw() % 24) as usize;
        n = n.min(rest.len());
        while !rest.is_char_boundary(n) {
            n += 1;
        }
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let ev = serde_json::json!({"id":"c1","object":"chat.completion.chunk","created":1,
            "model":"m","choices":[{"index":0,"delta":{"content":piece},"finish_reason":null}]});
        s.extend_from_slice(format!("data: {ev}\n\n").as_bytes());
    }
    s.extend_from_slice(br#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
    s.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    s
}

/// The chat content a client reads from a stream; every data event must be JSON.
fn pii_chat_text(stream: &[u8]) -> String {
    let mut text = String::new();
    let s = std::str::from_utf8(stream).expect("a rewritten chat stream is UTF-8");
    for block in s.split("\n\n") {
        let Some(d) = block.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("event {d:?}: {e}"));
        if let Some(c) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(c);
        }
    }
    text
}

/// Run a stream through a PII exchange in `chunks`.
fn pii_run_stream(ex: &mut tollgate::pii::PiiExchange, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let last = chunks.len().saturating_sub(1);
    for (i, c) in chunks.iter().enumerate() {
        match ex.on_stream_chunk(c, i == last) {
            Rewrite::Unchanged => out.extend_from_slice(c),
            Rewrite::Replace(b) => out.extend_from_slice(&b),
        }
    }
    if chunks.is_empty() {
        if let Rewrite::Replace(b) = ex.on_stream_chunk(&[], true) {
            out.extend_from_slice(&b);
        }
    }
    out
}

/// A PII exchange after `body` went through its request stage; the checked outcome.
fn pii_request(
    engine: &Rc<tollgate::pii::engine::Engine>,
    api: Api,
    body: &[u8],
) -> (tollgate::pii::PiiExchange, Option<Vec<u8>>) {
    use tollgate::pii::{PiiExchange, RequestOutcome};
    let mut ex = PiiExchange::new(engine.clone(), api);
    let valid = serde_json::from_slice::<Value>(body).is_ok();
    let out = match ex.on_request(body) {
        RequestOutcome::Unchanged => None,
        RequestOutcome::Replace(b) => {
            if valid {
                if let Err(e) = serde_json::from_slice::<Value>(&b) {
                    panic!(
                        "redaction broke the JSON: {e}\nbefore: {}\nafter:  {}",
                        String::from_utf8_lossy(body),
                        String::from_utf8_lossy(&b)
                    );
                }
            }
            Some(b)
        }
        RequestOutcome::Block(b) => {
            let v: Value = serde_json::from_slice(&b).expect("block replies are JSON");
            assert!(v.is_object());
            None
        }
    };
    (ex, out)
}

/// PII scanning on arbitrary input: `[config|api, chunk seed, input..]`.
/// - the input as a request body of the picked API, and as the text of a chat
///   message: no panic, a redacted valid body stays valid JSON;
/// - with every detector restoring, redact-then-restore gives the text back, in a
///   whole JSON answer and in a stream cut anywhere;
/// - the input as an SSE answer: the output does not depend on the chunking;
/// - the input as a non-streaming answer rewritten as it passes: neither, and a
///   JSON document comes out as the whole-answer rewrite.
pub fn pii(data: &[u8]) {
    let [sel, seed, input @ ..] = data else {
        return;
    };
    let cfg = usize::from(*sel) % PII_CONFIGS.len();
    let api = PII_APIS[usize::from(*sel / 4) % PII_APIS.len()];
    let engine = PII_ENGINES.with(|e| e[cfg].clone());
    let mut split = Split::new(*seed);

    // The raw input as a request body.
    pii_request(&engine, api, input);

    // The input as the text of a chat message.
    let text = String::from_utf8_lossy(input);
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": &*text}]
    }))
    .expect("serialisable");
    let (mut ex, redacted) = pii_request(&engine, Api::ChatCompletions, &body);
    // A text that already looks like a placeholder would be "restored" too: the
    // round trip only holds for text without one.
    if cfg == PII_RESTORE && !text.contains('<') {
        let sent = match &redacted {
            Some(b) => {
                let v: Value = serde_json::from_slice(b).expect("checked above");
                v.pointer("/messages/0/content")
                    .and_then(Value::as_str)
                    .expect("content stays a string")
                    .to_string()
            }
            None => text.to_string(),
        };
        // Whole answer.
        let answer = serde_json::to_vec(&serde_json::json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": &sent}}]
        }))
        .expect("serialisable");
        let back = ex.on_response_json(&answer).unwrap_or(answer);
        let v: Value = serde_json::from_slice(&back).expect("restored answers are JSON");
        assert_eq!(
            v.pointer("/choices/0/message/content")
                .and_then(Value::as_str),
            Some(&*text),
            "round trip lost text (sent {sent:?})"
        );
        // Streamed answer, cut anywhere.
        let (mut ex, _) = pii_request(&engine, Api::ChatCompletions, &body);
        let stream = pii_chat_stream(&sent, &mut split);
        let chunks = split.chunks(&stream, 1 + u64::from(*seed % 53));
        let out = pii_run_stream(&mut ex, &chunks);
        assert_eq!(
            pii_chat_text(&out),
            text,
            "streamed round trip lost text (sent {sent:?})"
        );
    }

    // The input as an SSE answer of the picked API, after a request that issued
    // placeholders: chunking must not change the output.
    let run = |chunks: &[&[u8]]| {
        let (mut ex, _) = pii_request(&engine, api, &body);
        pii_run_stream(&mut ex, chunks)
    };
    let chunks = split.chunks(input, 1 + u64::from(*seed % 31));
    assert_eq!(
        run(&chunks),
        run(&[input]),
        "PII stream output depends on the chunking"
    );

    // The input as a non-streaming answer too big to hold, rewritten as it
    // passes: the output does not depend on the chunking and, for a JSON
    // document, is the whole-answer rewrite byte for byte.
    let scan = |chunks: &[&[u8]]| {
        let (mut ex, _) = pii_request(&engine, api, &body);
        ex.start_json_scan();
        let mut out = Vec::new();
        let last = chunks.len().saturating_sub(1);
        for (i, c) in chunks.iter().enumerate() {
            match ex.on_response_json_chunk(c, i == last) {
                Rewrite::Unchanged => out.extend_from_slice(c),
                Rewrite::Replace(b) => out.extend_from_slice(&b),
            }
        }
        out
    };
    let whole_scan = scan(&[input]);
    assert_eq!(
        scan(&chunks),
        whole_scan,
        "PII answer output depends on the chunking"
    );
    if serde_json::from_slice::<Value>(input).is_ok() {
        let (mut ex, _) = pii_request(&engine, api, &body);
        let whole = ex.on_response_json(input).unwrap_or_else(|| input.to_vec());
        assert_eq!(
            whole_scan, whole,
            "an answer rewritten as it passes differs from the whole rewrite"
        );
    }
}

/// Bedrock event types the `eventstream` target frames payloads as.
const BEDROCK_EVENTS: &[&str] = &[
    "messageStart",
    "contentBlockStart",
    "contentBlockDelta",
    "contentBlockStop",
    "messageStop",
    "metadata",
    "unknownEvent",
];

/// Run the ConverseStream translator over `chunks`.
fn converse(chunks: &[&[u8]]) -> Vec<u8> {
    use tollgate::providers::bedrock::stream::ConverseStream;
    use tollgate::providers::{ProviderConfig, ProviderKind, ResponseContext, StreamTranslator};
    let p = ProviderConfig::new(ProviderKind::Bedrock);
    let ctx = ResponseContext {
        provider: &p,
        model: "anthropic.claude-x",
        created: 1_795_434_485,
        id: "chatcmpl-fuzz",
    };
    let mut t = ConverseStream::new(&ctx);
    let mut out = Vec::new();
    let last = chunks.len().saturating_sub(1);
    for (i, c) in chunks.iter().enumerate() {
        t.on_chunk(c, i == last, &mut out);
    }
    if chunks.is_empty() {
        t.on_chunk(&[], true, &mut out);
    }
    out
}

/// The Bedrock eventstream decoder and the ConverseStream translator on arbitrary
/// bytes: `[mode, chunk seed, max frame, input..]`. With `mode & 1` the input is
/// split at zero bytes into `[event type, JSON payload..]` pieces that are framed
/// with valid CRCs first, so mutations reach the translator rather than only the
/// CRC check. Frames, errors and the translated stream do not depend on the
/// chunking; the decoder never holds more than its frame cap; every translated
/// event is `[DONE]` or JSON.
pub fn eventstream(data: &[u8]) {
    use tollgate::providers::bedrock::eventstream::{event_frame, Decoder};
    let [mode, seed, cap, input @ ..] = data else {
        return;
    };
    let framed;
    let stream: &[u8] = if mode & 1 == 1 {
        let mut s = Vec::new();
        for piece in input.split(|&b| b == 0) {
            let [ty, payload @ ..] = piece else { continue };
            let ty = BEDROCK_EVENTS[usize::from(*ty) % BEDROCK_EVENTS.len()];
            s.extend_from_slice(&event_frame(ty, payload));
        }
        framed = s;
        &framed
    } else {
        input
    };
    let mut split = Split::new(*seed);
    let chunks = split.chunks(stream, 1 + u64::from(*seed % 67));
    let max_frame = 16 + usize::from(*cap) * 16;

    let decode = |chunks: &[&[u8]]| {
        let mut d = Decoder::new(max_frame);
        let mut frames = Vec::new();
        let mut err = None;
        for c in chunks {
            let r = d.feed(c, |f| frames.push(f));
            assert!(d.buffered() <= max_frame, "decoder holds more than its cap");
            if let Err(e) = r {
                err = Some(e);
                break;
            }
        }
        (frames, err, d.finish())
    };
    let (frames_a, err_a, end_a) = decode(&chunks);
    let (frames_b, err_b, end_b) = decode(&[stream]);
    assert_eq!(frames_a, frames_b, "frames depend on the chunking");
    assert_eq!(err_a, err_b, "decode errors depend on the chunking");
    assert_eq!(end_a, end_b, "end-of-stream state depends on the chunking");

    let out = converse(&chunks);
    assert_eq!(
        out,
        converse(&[stream]),
        "translated stream depends on the chunking"
    );
    let text = std::str::from_utf8(&out).expect("translated streams are UTF-8");
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let d = block
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {block:?}"));
        if d != "[DONE]" {
            let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{d:?}: {e}"));
            assert!(v.is_object());
        }
    }
}

/// The request-path JSON document against serde_json (what the provider stage and
/// every provider parse with): same verdict on every input, same values.
pub fn json(data: &[u8]) {
    let ours = Doc::parse(data);
    let theirs = serde_json::from_slice::<Value>(data);
    match (&ours, &theirs) {
        (Ok(doc), Ok(v)) => assert_eq!(
            &tollgate::testing::json_value(doc.root()),
            v,
            "values differ"
        ),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("accepted what serde_json refuses ({e})"),
        (Err(e), Ok(_)) => panic!("refused what serde_json accepts ({e})"),
    }
}
