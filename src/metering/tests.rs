//! The whole exchange flow on recorded OpenAI traffic and documented Anthropic
//! payloads, natively: what the adapter would be told to do at each step.

use std::rc::Rc;

use serde_json::Value;

use super::*;
use crate::config::Config;
use crate::usage::stream::Rewrite;

struct Recording {
    request: Vec<u8>,
    response: Vec<u8>,
    path: String,
}

fn recording(name: &str) -> Recording {
    let dir = std::env::var("TOLLGATE_FIXTURES").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/openai-recorded"
        )
        .to_string()
    });
    let text = std::fs::read_to_string(format!("{dir}/{name}.yaml")).expect("fixture");
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("yaml");
    let i = &doc["interactions"][0];
    let url = i["request"]["url"].as_str().unwrap_or("");
    Recording {
        request: i["request"]["body"]
            .as_str()
            .unwrap_or("")
            .as_bytes()
            .to_vec(),
        response: i["response"]["body"]
            .as_str()
            .unwrap_or("")
            .as_bytes()
            .to_vec(),
        path: url.trim_start_matches("https://api.openai.com").to_string(),
    }
}

fn exchange(config: &str, route: &str) -> Exchange {
    let c = Config::parse(config.as_bytes()).unwrap();
    Exchange::new(c.route(Some(route)), Rc::from(route))
}

fn start(ex: &mut Exchange, path: &str, body: &[u8]) -> BodyDecision {
    assert_eq!(
        ex.on_request_headers("POST", path, Some(body.len() as u64), false),
        HeadersDecision::WaitForBody
    );
    ex.on_request_body(body)
}

/// Feed a stream in chunks of `size` bytes and return what the client receives.
fn stream_through(ex: &mut Exchange, body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = body.chunks(size).collect();
    for (i, c) in chunks.iter().enumerate() {
        match ex.on_stream_chunk(c, i + 1 == chunks.len()) {
            Rewrite::Unchanged => out.extend_from_slice(c),
            Rewrite::Replace(b) => out.extend_from_slice(&b),
        }
    }
    out
}

fn billed_prompt(r: &Recording) -> u64 {
    let v: Value = serde_json::from_slice(&r.response).unwrap();
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[test]
fn non_streaming_chat_reports_billed_usage_and_headers() {
    let r = recording("chat-basic");
    let mut ex = exchange("{}", "openai");
    assert_eq!(start(&mut ex, &r.path, &r.request), BodyDecision::Forward);
    let mode = ex.on_response_headers(200, Some("application/json"), Some(r.response.len() as u64));
    assert_eq!(mode, ResponseMode::Buffer);
    let rep = ex.on_response_complete(Some(&r.response)).expect("report");
    assert_eq!(rep.source, UsageSource::Provider);
    assert_eq!(rep.usage.prompt_tokens, billed_prompt(&r));
    // tollgate's own pre-forward count reproduces the bill.
    assert_eq!(rep.counted_prompt_tokens, billed_prompt(&r));
    let h: std::collections::HashMap<_, _> = rep.headers().into_iter().collect();
    assert_eq!(
        h["x-llm-prompt-tokens"],
        rep.usage.prompt_tokens.to_string()
    );
    assert_eq!(h["x-llm-total-tokens"], rep.usage.total().to_string());
    assert_eq!(h["x-llm-model"], "gpt-5-nano");
    assert!(!h.contains_key("x-llm-tokens-estimated"));
    assert!(ex.finish().is_none(), "reported exactly once");
}

#[test]
fn large_or_unsized_json_responses_are_copied_not_held() {
    let r = recording("chat-basic");
    let mut ex = exchange("{}", "openai");
    start(&mut ex, &r.path, &r.request);
    assert_eq!(
        ex.on_response_headers(200, Some("application/json"), None),
        ResponseMode::Copy
    );
    for c in r.response.chunks(7) {
        ex.on_copied_chunk(c);
    }
    let rep = ex.on_response_complete(None).unwrap();
    assert_eq!(rep.usage.prompt_tokens, billed_prompt(&r));
}

#[test]
fn stream_without_usage_gets_it_injected_and_stripped_again() {
    let r = recording("chat-streaming");
    let mut ex = exchange("{}", "openai");
    let BodyDecision::Replace(forwarded) = start(&mut ex, &r.path, &r.request) else {
        panic!("stream_options should be injected")
    };
    let fwd: Value = serde_json::from_slice(&forwarded).unwrap();
    assert_eq!(fwd["stream_options"]["include_usage"], true);
    let orig: Value = serde_json::from_slice(&r.request).unwrap();
    let mut fwd_minus = fwd.clone();
    fwd_minus.as_object_mut().unwrap().remove("stream_options");
    assert_eq!(fwd_minus, orig, "nothing else changed");
    assert_eq!(
        ex.on_response_headers(200, Some("text/event-stream; charset=utf-8"), None),
        ResponseMode::Stream
    );
    // This recording has no usage chunk (it was made without include_usage), so the
    // client output is byte-identical and the count falls back to the deltas.
    let out = stream_through(&mut ex, &r.response, 97);
    assert_eq!(out, r.response);
    let rep = ex.finish().unwrap();
    assert_eq!(rep.source, UsageSource::Counted);
    assert!(rep.estimated);
    assert!(rep.usage.completion_tokens > 0);
    assert_eq!(rep.usage.prompt_tokens, rep.counted_prompt_tokens);
}

#[test]
fn stream_with_client_requested_usage_passes_untouched_and_reports_it() {
    let r = recording("chat-streaming-detailed-usage");
    let req: Value = serde_json::from_slice(&r.request).unwrap();
    assert_eq!(
        req["stream_options"]["include_usage"], true,
        "fixture asks for usage"
    );
    let mut ex = exchange("{}", "openai");
    assert_eq!(start(&mut ex, &r.path, &r.request), BodyDecision::Forward);
    ex.on_response_headers(200, Some("text/event-stream"), None);
    for size in [1, 13, 4096] {
        let mut ex2 = exchange("{}", "openai");
        start(&mut ex2, &r.path, &r.request);
        ex2.on_response_headers(200, Some("text/event-stream"), None);
        assert_eq!(
            stream_through(&mut ex2, &r.response, size),
            r.response,
            "chunk size {size}"
        );
        let rep = ex2.finish().unwrap();
        assert_eq!(rep.source, UsageSource::Provider);
        // The last data event before [DONE] carries the billed usage.
        let text = String::from_utf8_lossy(&r.response);
        let usage_line = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|v| v["usage"].is_object())
            .unwrap();
        assert_eq!(
            rep.usage.prompt_tokens,
            usage_line["usage"]["prompt_tokens"].as_u64().unwrap()
        );
        assert_eq!(
            rep.usage.completion_tokens,
            usage_line["usage"]["completion_tokens"].as_u64().unwrap()
        );
        assert_eq!(
            rep.usage.prompt_tokens, rep.counted_prompt_tokens,
            "pre-count matches the bill"
        );
    }
}

#[test]
fn injected_usage_chunk_is_removed_for_the_client() {
    // What a provider sends once include_usage was injected: `"usage":null` on every
    // chunk and a final usage-only chunk. The client must see neither.
    let req = br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
    let with_usage = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n\n",
        "data: [DONE]\n\n"
    );
    let expected = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    for size in [1, 5, 64, 1000] {
        let mut ex = exchange("{}", "openai");
        assert!(matches!(
            start(&mut ex, "/v1/chat/completions", req),
            BodyDecision::Replace(_)
        ));
        ex.on_response_headers(200, Some("text/event-stream"), None);
        let out = stream_through(&mut ex, with_usage.as_bytes(), size);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            expected,
            "chunk size {size}"
        );
        let rep = ex.finish().unwrap();
        assert_eq!(
            (rep.usage.prompt_tokens, rep.usage.completion_tokens),
            (8, 2)
        );
        assert_eq!(rep.source, UsageSource::Provider);
        assert_eq!(
            rep.counted_prompt_tokens, 8,
            "gpt-4o: 3 per message + 3 priming + 'Hi'"
        );
    }
}

#[test]
fn anthropic_stream_usage_is_mapped() {
    let req = br#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hello there"}]}"#;
    let sse = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3,\"cache_creation_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi!\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    );
    let mut ex = exchange("{}", "anthropic");
    assert_eq!(
        start(&mut ex, "/v1/messages", req),
        BodyDecision::Forward,
        "never injected into Anthropic"
    );
    ex.on_response_headers(200, Some("text/event-stream"), None);
    assert_eq!(stream_through(&mut ex, sse.as_bytes(), 11), sse.as_bytes());
    let rep = ex.finish().unwrap();
    assert_eq!(rep.usage.prompt_tokens, 15);
    assert_eq!(rep.usage.cached_tokens, 3);
    assert_eq!(rep.usage.completion_tokens, 5);
    assert!(
        rep.counted_prompt_estimated,
        "Claude has no public tokenizer"
    );
    assert!(!rep.estimated, "but the provider's usage is exact");
}

#[test]
fn oversized_bodies_get_413_in_the_clients_dialect() {
    let mut ex = exchange(r#"{"defaults":{"max_request_bytes":100}}"#, "r");
    match ex.on_request_headers("POST", "/v1/messages", Some(101), false) {
        HeadersDecision::Respond(r) => {
            assert_eq!(r.status, 413);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "request_too_large");
        }
        other => panic!("{other:?}"),
    }
    // No content-length (chunked upload): refused as the body grows.
    let mut ex = exchange(r#"{"defaults":{"max_request_bytes":100}}"#, "r");
    assert_eq!(
        ex.on_request_headers("POST", "/v1/chat/completions", None, false),
        HeadersDecision::WaitForBody
    );
    assert!(ex.check_body_size(100).is_none());
    let r = ex.check_body_size(101).expect("413");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
}

#[test]
fn invalid_bodies_pass_or_are_rejected_by_config() {
    for body in [&b"not json"[..], b"[1,2]", b"{\"model\":", b"\xff\xfe"] {
        let mut ex = exchange("{}", "r");
        assert_eq!(
            start(&mut ex, "/v1/chat/completions", body),
            BodyDecision::Forward
        );
        assert_eq!(
            ex.on_response_headers(200, Some("application/json"), Some(10)),
            ResponseMode::PassThrough
        );
        assert!(ex.finish().is_none(), "unmetered");

        let mut ex = exchange(r#"{"defaults":{"invalid_body":"reject"}}"#, "r");
        match start(&mut ex, "/v1/chat/completions", body) {
            BodyDecision::Respond(r) => {
                assert_eq!(r.status, 400);
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["error"]["type"], "invalid_request_error");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn non_llm_traffic_and_disabled_routes_pass_through() {
    let mut ex = exchange("{}", "r");
    assert_eq!(
        ex.on_request_headers("GET", "/v1/models", None, true),
        HeadersDecision::PassThrough
    );
    let mut ex = exchange("{}", "r");
    assert_eq!(
        ex.on_request_headers("POST", "/upload", Some(5), false),
        HeadersDecision::PassThrough
    );
    let mut ex = exchange("{}", "r");
    assert_eq!(
        ex.on_request_headers("POST", "/v1/chat/completions", None, true),
        HeadersDecision::PassThrough
    );
    let cfg = r#"{"routes":{"off":{"metering":{"enabled":false}},"dark":{"enabled":false}}}"#;
    for route in ["off", "dark"] {
        let mut ex = exchange(cfg, route);
        assert_eq!(
            ex.on_request_headers("POST", "/v1/chat/completions", Some(5), false),
            HeadersDecision::PassThrough
        );
    }
}

#[test]
fn provider_errors_are_not_billed() {
    let r = recording("chat-basic");
    let mut ex = exchange("{}", "openai");
    start(&mut ex, &r.path, &r.request);
    assert_eq!(
        ex.on_response_headers(429, Some("application/json"), Some(50)),
        ResponseMode::PassThrough
    );
    let rep = ex.finish().unwrap();
    assert_eq!(rep.status, 429);
    assert_eq!(rep.usage.total(), 0);
}

#[test]
fn tokenize_budget_turns_counts_into_labelled_estimates() {
    let text = "word ".repeat(2000);
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o", "messages": [{"role": "user", "content": text}]
    }))
    .unwrap();
    let mut exact = exchange("{}", "r");
    start(&mut exact, "/v1/chat/completions", &body);
    exact.on_response_headers(200, Some("application/json"), Some(2));
    let exact = exact.on_response_complete(Some(b"{}")).unwrap();
    assert!(!exact.counted_prompt_estimated);
    let mut capped = exchange(
        r#"{"defaults":{"metering":{"tokenize_byte_budget":1000}}}"#,
        "r",
    );
    start(&mut capped, "/v1/chat/completions", &body);
    capped.on_response_headers(200, Some("application/json"), Some(2));
    let capped = capped.on_response_complete(Some(b"{}")).unwrap();
    assert!(capped.counted_prompt_estimated);
    assert!(
        capped.estimated,
        "no provider usage: the report is an estimate"
    );
    // 10000 bytes at 4 bytes/token ≈ 2500; exact is ~2000 + overheads. Same ballpark.
    let (a, b) = (
        exact.counted_prompt_tokens as f64,
        capped.counted_prompt_tokens as f64,
    );
    assert!((b / a - 1.0).abs() < 0.35, "exact {a} vs estimate {b}");
}

#[test]
fn limits_refuse_in_dialect_and_true_up_after_the_response() {
    use crate::limits::{init_store, MemoryStore};
    let cfg = r#"{"defaults":{"limits":{"rules":[
        {"name":"m","key":["consumer"],"window":"1h","tokens":100}]}}}"#;
    let mut store = MemoryStore::default();
    init_store(&mut store);
    let now = 3_600_000 * 500_000;
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"max_tokens":50}"#;
    let header = |h: &[(&'static str, String)], k: &str| {
        h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    };

    let mut ex = exchange(cfg, "chat");
    ex.set_consumer(Some("alice".into()));
    assert_eq!(
        start(&mut ex, "/v1/chat/completions", body),
        BodyDecision::Forward
    );
    assert!(ex.limits_active());
    assert_eq!(ex.admit(&mut store, now), None);
    let h = ex.rate_limit_headers();
    assert_eq!(header(&h, "x-ratelimit-reset-tokens").unwrap(), "1h0m0s");
    ex.on_response_headers(200, Some("application/json"), Some(100));
    let resp = br#"{"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2,"total_tokens":10}}"#;
    let report = ex.on_response_complete(Some(resp)).unwrap();
    let p = report.counted_prompt_tokens;
    assert!(p > 0 && p < 40);
    assert_eq!(
        header(&h, "x-ratelimit-remaining-tokens").unwrap(),
        (100 - p - 50).to_string()
    );
    ex.settle(&mut store, &report);
    ex.settle(&mut store, &report); // once only

    // The true-up replaced prompt + 50 reserved by the 10 really used.
    let mut ex = exchange(cfg, "chat");
    ex.set_consumer(Some("alice".into()));
    start(&mut ex, "/v1/chat/completions", body);
    assert_eq!(ex.admit(&mut store, now + 1), None);
    assert_eq!(
        header(&ex.rate_limit_headers(), "x-ratelimit-remaining-tokens").unwrap(),
        (100 - 10 - p - 50).to_string()
    );

    // An Anthropic client gets its own error shape, and the exchange reports nothing.
    let mut ex = exchange(cfg, "chat");
    ex.set_consumer(Some("alice".into()));
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":90,"messages":[{"role":"user","content":"Hi"}]}"#;
    start(&mut ex, "/v1/messages", body);
    let reply = ex.admit(&mut store, now + 2).expect("refused");
    assert_eq!(reply.status, 429);
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(header(&reply.headers, "retry-after").unwrap(), "3600");
    assert_eq!(
        header(&reply.headers, "x-ratelimit-limit-tokens").unwrap(),
        "100"
    );
    assert_eq!(ex.finish(), None);

    // No limits configured: nothing to do, the store is not touched.
    let mut ex = exchange("{}", "chat");
    start(&mut ex, "/v1/chat/completions", body);
    assert!(!ex.limits_active());
    let mut empty = MemoryStore::default();
    assert_eq!(ex.admit(&mut empty, now), None);
    assert!(ex.rate_limit_headers().is_empty());
    assert!(empty.get("x").unwrap().is_none());
}

#[test]
fn anthropic_stream_cut_before_its_closing_usage_counts_what_was_streamed() {
    let req = br#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
    let text = "The upstream connection dropped halfway through this fairly long answer.";
    let sse = format!(
        concat!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"claude-sonnet-4-5\",\"usage\":{{\"input_tokens\":9,\"output_tokens\":1}}}}}}\n\n",
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n"
        ),
        text
    );
    let mut ex = exchange("{}", "anthropic");
    start(&mut ex, "/v1/messages", req);
    ex.on_response_headers(200, Some("text/event-stream"), None);
    stream_through(&mut ex, sse.as_bytes(), 17);
    let rep = ex.finish().unwrap();
    assert_eq!(
        rep.usage.prompt_tokens, 9,
        "the provider's input count is kept"
    );
    assert!(
        rep.usage.completion_tokens > 1,
        "not the start-of-message placeholder"
    );
    assert_eq!(rep.source, UsageSource::Counted);
    assert!(rep.estimated);
}

#[test]
fn compressed_responses_pass_through_and_report_the_prompt_count_as_an_estimate() {
    assert!(identity_encoding(None));
    assert!(identity_encoding(Some(" Identity ")));
    assert!(!identity_encoding(Some("gzip")));
    let body = br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
    let mut ex = exchange("{}", "openai");
    assert!(matches!(
        start(&mut ex, "/v1/chat/completions", body),
        BodyDecision::Replace(_)
    ));
    assert_eq!(
        ex.on_encoded_response_headers(200),
        ResponseMode::PassThrough
    );
    // Nothing is framed or stripped: the stream meter is gone.
    assert_eq!(
        ex.on_stream_chunk(b"data: {}\n\n", true),
        Rewrite::Unchanged
    );
    let rep = ex.finish().unwrap();
    assert_eq!(rep.source, UsageSource::Counted);
    assert_eq!(rep.usage.prompt_tokens, rep.counted_prompt_tokens);
    assert!(rep.estimated, "the completion is unknown");
}

#[test]
fn n_choices_reserve_the_cap_once_per_choice() {
    use crate::limits::{init_store, MemoryStore};
    let cfg = r#"{"defaults":{"limits":{"reserve_max_tokens_default":10,"rules":[
        {"name":"m","key":["consumer"],"window":"1h","tokens":1000}]}}}"#;
    let now = 3_600_000 * 500_000;
    let remaining_after = |body: &[u8], path: &str| {
        let mut store = MemoryStore::default();
        init_store(&mut store);
        let mut ex = exchange(cfg, "chat");
        ex.set_consumer(Some("n".into()));
        start(&mut ex, path, body);
        let refused = ex.admit(&mut store, now).is_some();
        let prompt = ex.prompt.map_or(0, |p| p.tokens);
        let remaining = ex
            .rate_limit_headers()
            .iter()
            .find(|(k, _)| *k == "x-ratelimit-remaining-tokens")
            .map(|(_, v)| v.parse::<u64>().unwrap());
        (
            refused,
            remaining.filter(|_| !refused).map(|r| 1000 - prompt - r),
        )
    };
    let chat = |extra: &str| {
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"Hi"}}]{extra}}}"#)
    };
    let path = "/v1/chat/completions";
    assert_eq!(
        remaining_after(chat(r#","max_tokens":100"#).as_bytes(), path),
        (false, Some(100))
    );
    assert_eq!(
        remaining_after(chat(r#","max_tokens":100,"n":3"#).as_bytes(), path),
        (false, Some(300))
    );
    assert_eq!(
        remaining_after(chat(r#","n":4"#).as_bytes(), path),
        (false, Some(40))
    );
    assert!(
        remaining_after(chat(r#","max_tokens":300,"n":4"#).as_bytes(), path).0,
        "1200 > 1000"
    );
    // Nonsense n is one choice, never zero.
    assert_eq!(
        remaining_after(chat(r#","max_tokens":100,"n":0"#).as_bytes(), path),
        (false, Some(100))
    );
    assert_eq!(
        remaining_after(chat(r#","max_tokens":100,"n":"9""#).as_bytes(), path),
        (false, Some(100))
    );
    // Legacy completions: best_of is generated (and billed) in full.
    let c =
        br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Hi","max_tokens":100,"n":2,"best_of":5}"#;
    assert_eq!(remaining_after(c, "/v1/completions"), (false, Some(500)));
    // A huge n saturates: refused, never wrapped around.
    let huge = chat(r#","max_tokens":100,"n":18446744073709551615"#);
    assert!(remaining_after(huge.as_bytes(), path).0);
}

#[test]
fn clamp_with_n_choices_caps_each_choice_at_its_share_of_the_room() {
    use crate::limits::{init_store, MemoryStore};
    let cfg = r#"{"defaults":{"limits":{"clamp_max_tokens":true,"rules":[
        {"name":"m","key":["consumer"],"window":"1h","tokens":1000}]}}}"#;
    let now = 3_600_000 * 500_000;
    let clamp = |n: &str| {
        let mut store = MemoryStore::default();
        init_store(&mut store);
        let mut ex = exchange(cfg, "chat");
        ex.set_consumer(Some("n".into()));
        let body = format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":4000{n}}}"#
        );
        let d = start(&mut ex, "/v1/chat/completions", body.as_bytes());
        assert!(ex.admit(&mut store, now).is_none(), "clamped, not refused");
        let room = 1000 - ex.prompt.map_or(0, |p| p.tokens);
        let header = |name: &str| {
            ex.rate_limit_headers()
                .into_iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.parse::<u64>().unwrap())
        };
        let (clamped, remaining) = (
            header("x-tollgate-max-tokens-clamped"),
            header("x-ratelimit-remaining-tokens"),
        );
        let sent: Value = match ex.clamp_request(d, body.as_bytes()) {
            BodyDecision::Replace(b) => serde_json::from_slice(&b).unwrap(),
            other => panic!("not clamped: {other:?}"),
        };
        (
            room,
            sent["max_tokens"].as_u64().unwrap(),
            clamped,
            remaining,
        )
    };
    // One choice: the whole room.
    let (room, sent, clamped, remaining) = clamp("");
    assert_eq!((sent, clamped, remaining), (room, Some(room), Some(0)));
    // Three choices each up to max_tokens: a third of the room each, so three
    // full-length choices still fit; the rounding remainder stays unspent.
    let (room, sent, clamped, remaining) = clamp(r#","n":3"#);
    assert_eq!(sent, room / 3);
    assert_eq!(clamped, Some(room / 3));
    assert_eq!(remaining, Some(room % 3));
}

#[test]
fn pii_answers_are_held_when_declared_small_and_scanned_as_they_pass_otherwise() {
    let config = r#"{"defaults":{"pii":{"enabled":true,"detectors":{"email":"restore"}}}}"#;
    let request =
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"I am jane@example.com"}]}"#;
    let answer = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi <EMAIL_1>, ann@example.net"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#;
    let big = MAX_BUFFERED_RESPONSE + 1;
    for (declared, mode) in [
        (Some(answer.len() as u64), ResponseMode::Buffer),
        (Some(big), ResponseMode::Copy),
        (None, ResponseMode::Copy),
    ] {
        let mut ex = exchange(config, "r");
        assert!(matches!(
            start(&mut ex, "/v1/chat/completions", request),
            BodyDecision::Replace(_)
        ));
        assert_eq!(
            ex.on_response_headers(200, Some("application/json"), declared),
            mode,
            "{declared:?}"
        );
        let out = if mode == ResponseMode::Buffer {
            assert!(!ex.rewrites_copied_response());
            ex.pii_response(answer).expect("rewritten")
        } else {
            assert!(ex.rewrites_copied_response(), "{declared:?}");
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = answer.chunks(5).collect();
            for (i, c) in chunks.iter().enumerate() {
                let piece = match ex.pii_response_chunk(c, i + 1 == chunks.len()) {
                    Rewrite::Replace(b) => b,
                    Rewrite::Unchanged => c.to_vec(),
                };
                ex.on_copied_chunk(&piece);
                out.extend_from_slice(&piece);
            }
            out
        };
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"], "Hi jane@example.com, <EMAIL_2>",
            "{declared:?}"
        );
        if mode == ResponseMode::Copy {
            let rep = ex.on_response_complete(None).unwrap();
            assert_eq!(rep.usage.completion_tokens, 4, "usage still read");
        }
    }
    // Without PII, nothing is rewritten.
    let mut ex = exchange("{}", "r");
    start(&mut ex, "/v1/chat/completions", request);
    ex.on_response_headers(200, Some("application/json"), None);
    assert!(!ex.rewrites_copied_response());
    assert_eq!(ex.pii_response_chunk(answer, true), Rewrite::Unchanged);
}

#[test]
fn limits_count_on_a_route_with_metering_off() {
    // Metering off and nothing else: tollgate has nothing to do.
    let r = recording("chat-basic");
    let mut ex = exchange(
        r#"{"defaults": {"metering": {"enabled": false}}}"#,
        "openai",
    );
    assert!(!ex.counts_tokens());
    assert_eq!(
        ex.on_request_headers("POST", &r.path, Some(r.request.len() as u64), false),
        HeadersDecision::PassThrough
    );
    // A limit on the same route needs the exact count (and used to be skipped).
    let limited = r#"{"defaults": {"metering": {"enabled": false}, "limits": {"rules": [
        {"name": "m", "key": ["consumer"], "window": "1h", "tokens": 1000000}]}}}"#;
    let mut ex = exchange(limited, "openai");
    assert!(ex.counts_tokens());
    start(&mut ex, &r.path, &r.request);
    assert!(ex.limits_active());
    let counted = ex.prompt.unwrap();
    assert_eq!(counted.tokens, billed_prompt(&r));
    assert!(!counted.estimated);
}

#[test]
fn a_redacting_route_without_counts_still_scans_answers() {
    let cfg = r#"{"defaults": {"metering": {"enabled": false},
        "pii": {"enabled": true, "detectors": {"email": "restore"}}}}"#;
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Mail jane.doe@example.com"}],"stream":true}"#;
    let mut ex = exchange(cfg, "openai");
    let BodyDecision::Replace(sent) = start(&mut ex, "/v1/chat/completions", body) else {
        panic!("redacted body expected")
    };
    let sent: Value = serde_json::from_slice(&sent).unwrap();
    assert!(sent.get("stream_options").is_none(), "nothing injected");
    assert_eq!(ex.prompt, Some(PromptCount::UNCOUNTED), "nothing tokenized");
    assert_eq!(
        ex.on_response_headers(200, Some("text/event-stream"), None),
        ResponseMode::Stream
    );
    let answer = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"To <EMAIL_1>.\"}}]}\n\ndata: [DONE]\n\n";
    let out = String::from_utf8(stream_through(&mut ex, answer, 5)).unwrap();
    assert!(out.contains("To jane.doe@example.com."), "{out}");
}

#[test]
fn translation_from_the_first_parse_sends_what_the_provider_stage_would() {
    // Without limits the request is translated from the body's first parse;
    // with a limit (admission and the clamp run first) in the provider stage.
    // Both must send the same bytes.
    let provider = r#""provider": {"kind": "anthropic", "api_key": {"inline": "sk-ant"},
        "model_map": {"fast": "claude-haiku-4-5"}}"#;
    let plain = format!(r#"{{"defaults": {{{provider}}}}}"#);
    let limited = format!(
        r#"{{"defaults": {{{provider}, "limits": {{"rules": [
        {{"name": "m", "key": ["consumer"], "window": "1h", "tokens": 1000000}}]}}}}}}"#
    );
    for body in [
        &br#"{"model":"fast","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":64}"#[..],
        br#"{"model":"fast","messages":[{"role":"user","content":"Hi"}],"stream":true,"temperature":0.3}"#,
    ] {
        let mut early = exchange(&plain, "claude");
        let d = start(&mut early, "/v1/chat/completions", body);
        let d = early.provider_stage(d, body);
        let mut late = exchange(&limited, "claude");
        let l = start(&mut late, "/v1/chat/completions", body);
        assert_eq!(l, BodyDecision::Forward, "translated after admission");
        let l = late.provider_stage(l, body);
        let (BodyDecision::Replace(a), BodyDecision::Replace(b)) = (&d, &l) else {
            panic!("translated bodies expected: {d:?} {l:?}")
        };
        assert_eq!(a, b);
        assert_eq!(early.model.as_deref(), Some("claude-haiku-4-5"));
        assert_eq!(late.model.as_deref(), Some("claude-haiku-4-5"));
        assert_eq!(
            early.take_upstream_headers().map(|u| format!("{u:?}")),
            late.take_upstream_headers().map(|u| format!("{u:?}"))
        );
    }
}

#[test]
fn a_translated_prompt_is_counted_for_the_providers_model() {
    // gpt-4o-mini mapped to Claude: Anthropic's tokenizer is not public, so the
    // prompt is estimated from its size, not counted with OpenAI's o200k.
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"How high should a mirror hang above a dresser?"}]}"#;
    let count = |cfg: &str| {
        let mut ex = exchange(cfg, "r");
        start(&mut ex, "/v1/chat/completions", body);
        ex.prompt.unwrap()
    };
    let openai = count("{}");
    assert!(!openai.estimated);
    let claude = count(
        r#"{"defaults": {"provider": {"kind": "anthropic", "api_key": {"inline": "k"},
        "model_map": {"gpt-4o-mini": "claude-haiku-4-5"}}}}"#,
    );
    assert!(claude.estimated);
    assert_ne!(claude.tokens, openai.tokens);
    // Azure maps models to deployment names, which are not models: the client's
    // model still picks the tokenizer.
    let azure = count(
        r#"{"defaults": {"provider": {"kind": "azure_openai", "api_key": {"inline": "k"},
        "endpoint": {"authority": "res.openai.azure.com"}, "azure": {"api_version": "2024-10-21"},
        "model_map": {"gpt-4o-mini": "prod-small"}}}}"#,
    );
    assert_eq!(azure, openai);
    // An OpenAI-compatible server bills by its own model's tokenizer.
    let mistral = count(
        r#"{"defaults": {"provider": {"kind": "openai_compatible", "name": "mistral",
        "endpoint": {"authority": "api.mistral.ai"}, "model_map": {"gpt-4o-mini": "mistral-small-latest"}}}}"#,
    );
    assert!(mistral.estimated);
}

// ---------------------------------------------------------------------------
// Fallback through tollgate's own provider calls (Kong)
// ---------------------------------------------------------------------------

const FALLBACK: &str = r#"{"routes": {"claude": {
  "pii": {"enabled": true, "hash_key": "k-0123456789abcdef0123456789abcdef", "detectors": {"email": "restore"}},
  "provider": {"kind": "anthropic", "api_key": {"inline": "sk-ant"},
    "endpoint": {"authority": "api.anthropic.com"},
    "model_map": {"smart": "claude-sonnet-4-5"},
    "fallback": {"kind": "openai", "name": "openai-backup", "api_key": {"inline": "sk-oai"},
      "endpoint": {"authority": "api.openai.com"}, "model_map": {"smart": "gpt-4o"}}}}}}"#;

const ASK: &str = r#"{"model":"smart","messages":[{"role":"user","content":"Mail jane.doe@example.com a summary."}]}"#;

/// The first call of a Kong fallback exchange, after the request stages.
fn fallback_exchange(body: &str) -> (Exchange, crate::providers::fallback::Call) {
    let mut ex = exchange(FALLBACK, "claude");
    ex.enable_provider_calls();
    let d = start(&mut ex, "/v1/chat/completions", body.as_bytes());
    let d = ex.provider_stage(d, body.as_bytes());
    let BodyDecision::Replace(sent) = d else {
        panic!("translated body expected: {d:?}")
    };
    assert!(ex.calls_provider());
    let up = ex.take_upstream_headers().unwrap();
    let call = ex
        .provider_call(&up, sent, &[("authorization", "Bearer client")])
        .unwrap();
    (ex, call)
}

#[test]
fn fallback_retries_a_429_translated_for_the_second_provider_from_the_redacted_body() {
    let (mut ex, first) = fallback_exchange(ASK);
    assert_eq!(first.address, "api.anthropic.com:443");
    let sent: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    let text = sent["messages"][0]["content"].as_str().unwrap();
    assert!(!text.contains("jane.doe@example.com"), "PII left: {text}");
    let step = ex.on_call_answer(
        429,
        &[("retry-after", "9")],
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        &[("authorization", "Bearer client")],
    );
    let CallStep::Retry(second) = step else {
        panic!("{step:?}")
    };
    assert_eq!(second.address, "api.openai.com:443");
    assert_eq!(second.provider, "openai-backup");
    let h = |k: &str| {
        second
            .headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h(":path"), Some("/v1/chat/completions"));
    assert_eq!(h("authorization"), Some("Bearer sk-oai"));
    assert_eq!(h("x-api-key"), None);
    let sent: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(sent["model"], "gpt-4o");
    let text = sent["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        text,
        serde_json::from_slice::<Value>(&first.body).unwrap()["messages"][0]["content"]
            .as_str()
            .unwrap(),
        "the same redacted text"
    );
    // The fallback answers, echoing the placeholder: restored for the client.
    let answer = serde_json::json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 1,
        "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": format!("Sent to {text}")}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}});
    let step = ex.on_call_answer(
        200,
        &[("content-type", "application/json"), ("x-request-id", "r1")],
        answer.to_string().as_bytes(),
        &[],
    );
    let CallStep::Relay(r) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.status, 200);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("jane.doe@example.com"));
    let hv = |k: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(hv("x-tollgate-fallback"), Some("anthropic 429"));
    assert_eq!(hv("x-request-id"), Some("r1"));
    assert_eq!(hv("x-llm-total-tokens"), Some("37"));
    let rep = r.report.unwrap();
    assert_eq!(rep.provider, "openai-backup");
    assert_eq!(rep.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        (rep.usage.prompt_tokens, rep.usage.completion_tokens),
        (30, 7)
    );
    assert!(ex.finish().is_none(), "reported once");
    assert!(!ex.calls_provider());
}

#[test]
fn fallback_relays_success_client_errors_and_the_second_failure_as_they_are() {
    // 2xx from the first provider: translated, no retry.
    let (mut ex, _) = fallback_exchange(ASK);
    let msg = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Done."}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#;
    let CallStep::Relay(r) = ex.on_call_answer(200, &[], msg, &[]) else {
        panic!()
    };
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Done.");
    assert!(!r.headers.iter().any(|(k, _)| k == "x-tollgate-fallback"));
    assert_eq!(r.report.unwrap().provider, "anthropic");

    // A 400 is not retried: the client's mistake would fail anywhere.
    let (mut ex, _) = fallback_exchange(ASK);
    let CallStep::Relay(r) = ex.on_call_answer(
        400,
        &[],
        br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
        &[],
    ) else {
        panic!()
    };
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["message"], "bad");

    // No answer at all, twice: one retry, then a 502 naming the fallback.
    let (mut ex, _) = fallback_exchange(ASK);
    assert!(matches!(
        ex.on_call_answer(0, &[], &[], &[]),
        CallStep::Retry(_)
    ));
    let CallStep::Relay(r) = ex.on_call_answer(0, &[], &[], &[]) else {
        panic!()
    };
    assert_eq!(r.status, 502);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("openai-backup did not answer"));
    let rep = r.report.unwrap();
    assert_eq!(rep.status, 502);
    assert_eq!(rep.usage.prompt_tokens, 0, "nothing billed");
}

#[test]
fn fallback_is_not_used_for_streams_or_without_provider_calls() {
    let stream = ASK.replacen('{', r#"{"stream":true,"#, 1);
    let mut ex = exchange(FALLBACK, "claude");
    ex.enable_provider_calls();
    let d = start(&mut ex, "/v1/chat/completions", stream.as_bytes());
    let _ = ex.provider_stage(d, stream.as_bytes());
    assert!(!ex.calls_provider(), "streams go the normal way");

    // Envoy: the host's retry policy, not tollgate's calls.
    let mut ex = exchange(FALLBACK, "claude");
    let d = start(&mut ex, "/v1/chat/completions", ASK.as_bytes());
    let _ = ex.provider_stage(d, ASK.as_bytes());
    assert!(!ex.calls_provider());
}
