//! Native cost of one metered exchange through the sans-IO core (no host):
//! `cargo run --release --example flowbench`.
use std::rc::Rc;
use std::time::Instant;
use tollgate::config::Config;
use tollgate::metering::{Exchange, ResponseMode};

fn main() {
    let words = "The quick brown fox jumps over the lazy dog while the gateway counts tokens. ";
    let mk = |n: usize| {
        serde_json::to_vec(&serde_json::json!({"model":"gpt-4o","messages":[
            {"role":"system","content":"You are a helpful assistant."},
            {"role":"user","content": words.repeat(n)}]}))
        .unwrap()
    };
    let resp = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, this is a reply of moderate length for benchmarking."},"finish_reason":"stop"}],"usage":{"prompt_tokens":250,"completion_tokens":14,"total_tokens":264,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
    let config = Config::parse(b"{}").unwrap();
    for (label, body) in [("1KB", mk(12)), ("32KB", mk(420))] {
        let route: Rc<str> = Rc::from("openai");
        let n = 20000 / if body.len() > 4096 { 20 } else { 1 };
        let t = Instant::now();
        for _ in 0..n {
            let mut ex = Exchange::new(config.route(Some("openai")), route.clone());
            ex.on_request_headers(
                "POST",
                "/v1/chat/completions",
                Some(body.len() as u64),
                false,
            );
            ex.on_request_body(&body);
            assert_eq!(
                ex.on_response_headers(200, Some("application/json"), Some(resp.len() as u64)),
                ResponseMode::Buffer
            );
            let r = ex.on_response_complete(Some(resp)).unwrap();
            std::hint::black_box((
                r.headers(),
                r.filter_state(&tollgate::config::FilterStateKey::ALL),
            ));
        }
        let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
        println!("{label} ({} bytes): {per:.1} µs per exchange", body.len());
    }
}
