//! The whole request stage (`Exchange::on_request_body`: parse, count, inject)
//! on hostile and typical bodies, natively and as a wasm32-wasip1 command under V8.
//!
//! `cargo build --release -p tokbench --bin reqbench --target wasm32-wasip1` then
//! `node tools/tokbench/run.mjs target/wasm32-wasip1/release/reqbench.wasm`.
//! Natively: `cargo run --release -p tokbench --bin reqbench`.
//!
//! Prints the median time per call, split into the JSON parse alone and the whole
//! stage, so the cost of a hostile shape (20k tiny messages) is visible.
//!
//! For a profiler: `REQBENCH_ONLY=pii` (or `metering`, `translate`) runs just that
//! route's whole exchange, 100 times longer.

use std::rc::Rc;
use std::time::Instant;

use tollgate::config::Config;
use tollgate::metering::{BodyDecision, Exchange, HeadersDecision};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median over `runs` samples of the time of one call (ms); each sample times a
/// batch of calls so sub-microsecond calls are not lost in the clock's overhead.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    let batch = if runs > 100 { 50 } else { 1 };
    median(
        (0..runs / batch.min(runs).max(1) + 1)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..batch {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e3 / batch as f64
            })
            .collect(),
    )
}

fn main() {
    let config = Config::parse(br#"{"defaults":{"metering":{"tokenize_byte_budget":65536}}}"#)
        .unwrap_or_else(|e| panic!("config: {e}"));
    let settings = config.route(Some("bench"));
    let no_budget = Config::parse(br#"{"defaults":{"metering":{"tokenize_byte_budget":0}}}"#)
        .unwrap_or_else(|e| panic!("config: {e}"))
        .route(Some("bench"));
    let mut tiny = String::from(r#"{"model":"gpt-4o","messages":["#);
    for i in 0..20_000 {
        if i > 0 {
            tiny.push(',');
        }
        tiny.push_str(r#"{"role":"user","content":"m"}"#);
    }
    tiny.push_str("]}");
    let mut one_k = String::from(
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#,
    );
    while one_k.len() < 950 {
        one_k.push_str("the quick brown fox jumps over the lazy dog ");
    }
    one_k.push_str(r#""}],"max_tokens":64}"#);
    let mut long = String::from(r#"{"model":"gpt-4o","messages":[{"role":"user","content":""#);
    while long.len() < 32 * 1024 {
        long.push_str(
            "The quick brown fox jumps over the lazy dog while the gateway counts tokens. ",
        );
    }
    long.push_str(r#""}]}"#);
    let only = std::env::var("REQBENCH_ONLY").ok();
    let sections = if only.is_some() { 0 } else { 3 };
    for (name, body, runs) in [
        ("20k tiny messages", tiny.as_bytes(), 15),
        ("32 KB one text", long.as_bytes(), 501),
        ("1 KB chat", one_k.as_bytes(), 2001),
    ]
    .into_iter()
    .take(sections)
    {
        let parse = time(runs, || {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            std::hint::black_box(v);
        });
        let doc = time(runs, || {
            let d = tollgate::dialect::doc::Doc::parse(body).map(|d| d.root().is_object());
            std::hint::black_box(d.ok());
        });
        let stage = time(runs, || {
            let mut ex = Exchange::new(settings.clone(), Rc::from("bench"));
            let d = ex.on_request_headers(
                "POST",
                "/v1/chat/completions",
                Some(body.len() as u64),
                false,
            );
            assert!(matches!(d, HeadersDecision::WaitForBody));
            std::hint::black_box(ex.on_request_body(body));
        });
        let estimated = time(runs, || {
            let mut ex = Exchange::new(no_budget.clone(), Rc::from("bench"));
            ex.on_request_headers(
                "POST",
                "/v1/chat/completions",
                Some(body.len() as u64),
                false,
            );
            std::hint::black_box(ex.on_request_body(body));
        });
        println!(
            "{name:>18} ({:>7} B): serde_json::Value parse {:9.2} µs; Doc parse {:9.2} µs; \
             on_request_body {:9.2} µs (with a zero tokenize budget {:9.2} µs)",
            body.len(),
            parse * 1e3,
            doc * 1e3,
            stage * 1e3,
            estimated * 1e3
        );
    }

    // The whole exchange of a 1 KB chat on each bench route, core only (no host):
    // what tollgate's own code costs per request before any hostcall.
    let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog. Mail me at jane@example.com."},"finish_reason":"stop"}],"usage":{"prompt_tokens":230,"completion_tokens":18,"total_tokens":248}}"#;
    let anthropic = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"The quick brown fox jumps over the lazy dog."}],"stop_reason":"end_turn","usage":{"input_tokens":230,"output_tokens":12}}"#;
    for (route, cfg) in [
        ("metering", r#"{}"#),
        ("pii", r#"{"defaults":{"pii":{"enabled":true}}}"#),
        (
            "translate",
            r#"{"defaults":{"provider":{"kind":"anthropic","api_key":{"inline":"k"}}}}"#,
        ),
    ] {
        if only.as_deref().is_some_and(|o| o != route) {
            continue;
        }
        let runs = if only.is_some() { 500_001 } else { 5001 };
        let settings = Config::parse(cfg.as_bytes())
            .unwrap_or_else(|e| panic!("config: {e}"))
            .route(Some("bench"));
        let body = one_k.as_bytes();
        let us = time(runs, || {
            let mut ex = Exchange::new(settings.clone(), Rc::from("bench"));
            ex.on_request_headers(
                "POST",
                "/v1/chat/completions",
                Some(body.len() as u64),
                false,
            );
            ex.set_clock(1_700_000_000_000);
            let d = ex.on_request_body(body);
            let d = ex.clamp_request(d, body);
            let d = ex.provider_stage(d, body);
            assert!(!matches!(d, BodyDecision::Respond(_)));
            std::hint::black_box((d, ex.take_upstream_headers()));
            ex.on_response_headers(200, Some("application/json"), None);
            if ex.translates_response() {
                std::hint::black_box(ex.on_translated_response(anthropic));
            } else {
                let restored = ex.pii_response(answer);
                std::hint::black_box(
                    ex.on_response_complete(Some(restored.as_deref().unwrap_or(answer))),
                );
            }
        }) * 1000.0;
        println!("{route:>18}: whole exchange of a 1 KB chat {us:7.2} µs");
    }
}
