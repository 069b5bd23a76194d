//! The whole request stage (`Exchange::on_request_body`: parse, count, inject)
//! on hostile and typical bodies, natively and as a wasm32-wasip1 command under V8.
//!
//! `cargo build --release -p tokbench --bin reqbench --target wasm32-wasip1` then
//! `node tools/tokbench/run.mjs target/wasm32-wasip1/release/reqbench.wasm`.
//! Natively: `cargo run --release -p tokbench --bin reqbench`.
//!
//! Prints the median time per call, split into the JSON parse alone and the whole
//! stage, so the cost of a hostile shape (20k tiny messages) is visible.

use std::rc::Rc;
use std::time::Instant;

use tollgate::config::Config;
use tollgate::metering::{Exchange, HeadersDecision};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() {
    let config = Config::parse(br#"{"defaults":{"metering":{"tokenize_byte_budget":65536}}}"#)
        .unwrap_or_else(|e| panic!("config: {e}"));
    let settings = config.route(Some("bench"));
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
    for (name, body, runs) in [
        ("20k tiny messages", tiny.as_bytes(), 15),
        ("1 KB chat", one_k.as_bytes(), 2001),
    ] {
        let parse = time(runs, || {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            std::hint::black_box(v);
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
        println!("{name:>18} ({:>7} B): serde_json::Value parse {parse:8.3} ms; on_request_body {stage:8.3} ms", body.len());
    }
}
