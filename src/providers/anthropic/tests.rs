//! Anthropic translation on payloads written from Anthropic's API reference
//! ("Messages", "Streaming Messages", "Tool use", "Vision", "Errors").

use serde_json::{json, Value};

use super::*;
use crate::providers::{ProviderConfig, ProviderKind, Secret};

fn provider() -> ProviderConfig {
    let mut p = ProviderConfig::new(ProviderKind::Anthropic);
    p.api_key = Some(Secret::inline("sk-ant-test"));
    p.endpoint.authority = Some("api.anthropic.com".into());
    p
}

fn translate(p: &ProviderConfig, body: &Value, model: &str) -> UpstreamRequest {
    let bytes = serde_json::to_vec(body).unwrap();
    let ctx = RequestContext {
        provider: p,
        model,
        streaming: false,
        now_unix_ms: 0,
        client_path: "/v1/chat/completions",
    };
    Anthropic
        .translate_request(
            &ctx,
            &RequestBody {
                bytes: &bytes,
                root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
            },
        )
        .unwrap()
}

fn body_of(r: &UpstreamRequest) -> Value {
    serde_json::from_slice(r.body.as_ref().unwrap()).unwrap()
}

#[test]
fn request_lifts_system_defaults_max_tokens_and_sets_auth() {
    let p = provider();
    let r = translate(
        &p,
        &json!({"model": "fast", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello, Claude"}],
            "stop": "END", "temperature": 1.5, "top_p": 0.9, "user": "u-42"}),
        "claude-haiku-4-5",
    );
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.authority.as_deref(), Some("api.anthropic.com"));
    assert!(r
        .set_headers
        .contains(&("x-api-key".to_string(), "sk-ant-test".to_string())));
    assert!(r
        .set_headers
        .contains(&("anthropic-version".to_string(), "2023-06-01".to_string())));
    assert_eq!(r.remove_headers, vec!["authorization".to_string()]);
    assert_eq!(
        body_of(&r),
        json!({"model": "claude-haiku-4-5", "max_tokens": 4096, "system": "You are terse.",
            "messages": [{"role": "user", "content": "Hello, Claude"}],
            "stop_sequences": ["END"], "temperature": 1.0, "top_p": 0.9,
            "metadata": {"user_id": "u-42"}})
    );
}

#[test]
fn request_tools_tool_calls_and_results_map_both_ways() {
    let p = provider();
    let r = translate(
        &p,
        &json!({"model": "claude-sonnet-4-5", "max_completion_tokens": 300, "stream": true,
          "stream_options": {"include_usage": true},
          "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": "Weather in SF and NYC?"},
            {"role": "assistant", "content": null, "tool_calls": [
              {"id": "toolu_01A", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"location\": \"San Francisco, CA\"}"}},
              {"id": "toolu_01B", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"location\": \"New York, NY\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
            {"role": "tool", "tool_call_id": "toolu_01B", "content": [{"type": "text", "text": "22 degrees"}]},
            {"role": "user", "content": "Thanks"}],
          "tools": [{"type": "function", "function": {"name": "get_weather",
             "description": "Get the current weather in a given location",
             "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]}}}],
          "tool_choice": "required", "parallel_tool_calls": false}),
        "claude-sonnet-4-5",
    );
    assert_eq!(
        body_of(&r),
        json!({"model": "claude-sonnet-4-5", "max_tokens": 300, "stream": true,
          "system": [{"type": "text", "text": "Use tools."}, {"type": "text", "text": "Be exact."}],
          "messages": [
            {"role": "user", "content": "Weather in SF and NYC?"},
            {"role": "assistant", "content": [
              {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
               "input": {"location": "San Francisco, CA"}},
              {"type": "tool_use", "id": "toolu_01B", "name": "get_weather",
               "input": {"location": "New York, NY"}}]},
            {"role": "user", "content": [
              {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
              {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "22 degrees"},
              {"type": "text", "text": "Thanks"}]}],
          "tools": [{"name": "get_weather", "description": "Get the current weather in a given location",
             "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                              "required": ["location"]}}],
          "tool_choice": {"type": "any", "disable_parallel_tool_use": true}})
    );
}

#[test]
fn request_images_become_base64_and_url_sources() {
    let p = provider();
    let r = translate(
        &p,
        &json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
            {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg", "detail": "low"}},
            {"type": "text", "text": "Compare these images."}]}],
          "tools": [{"type": "function", "function": {"name": "t"}}], "tool_choice": {"type": "function", "function": {"name": "t"}}}),
        "m",
    );
    let b = body_of(&r);
    assert_eq!(
        b["messages"][0]["content"],
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}},
            {"type": "text", "text": "Compare these images."}])
    );
    assert_eq!(b["tool_choice"], json!({"type": "tool", "name": "t"}));
    assert_eq!(
        b["tools"][0]["input_schema"],
        json!({"type": "object", "properties": {}})
    );
}

#[test]
fn request_errors_name_the_field() {
    let p = provider();
    let ctx = RequestContext {
        provider: &p,
        model: "m",
        streaming: false,
        now_unix_ms: 0,
        client_path: "/v1/chat/completions",
    };
    for (body, needle) in [
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{oops"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (json!({"messages": "hi"}), "`messages`"),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
    ] {
        let bytes = serde_json::to_vec(&body).unwrap();
        let e = Anthropic
            .translate_request(
                &ctx,
                &RequestBody {
                    bytes: &bytes,
                    root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
                },
            )
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains(needle), "{} / {needle}", e.message);
        let eb: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(eb["error"]["type"], "invalid_request_error");
    }
}

fn rctx(p: &ProviderConfig) -> ResponseContext<'_> {
    ResponseContext {
        provider: p,
        model: "claude-sonnet-4-5",
        created: 1_700_000_000,
        id: "chatcmpl-fallback",
    }
}

#[test]
fn response_text_tool_use_and_cache_usage() {
    let p = provider();
    // The reference's tool-use answer, with prompt-caching usage.
    let body = br#"{"id":"msg_01Aq9w938a90dw8q","type":"message","role":"assistant",
      "model":"claude-sonnet-4-5-20250929",
      "content":[{"type":"text","text":"I'll check the weather."},
        {"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather",
         "input":{"location":"San Francisco, CA","unit":"celsius"}}],
      "stop_reason":"tool_use","stop_sequence":null,
      "usage":{"input_tokens":2095,"cache_creation_input_tokens":100,"cache_read_input_tokens":1500,
               "output_tokens":503,"service_tier":"standard"}}"#;
    let answer = Anthropic.answer(&rctx(&p), body).unwrap();
    let out: Value = serde_json::from_slice(&crate::providers::written_as_read(&answer)).unwrap();
    // Anthropic bills cache writes apart; OpenAI's usage has no field for them.
    let written = answer.written.and_then(|(u, _)| u).unwrap();
    assert_eq!(
        (
            written.prompt_tokens,
            written.cached_tokens,
            written.cache_creation_tokens
        ),
        (2095 + 100 + 1500, 1500, 0)
    );
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["id"], "msg_01Aq9w938a90dw8q");
    assert_eq!(out["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(out["created"], 1_700_000_000u64);
    let c = &out["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(c["message"]["content"], "I'll check the weather.");
    let call = &c["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 3695, "completion_tokens": 503, "total_tokens": 4198,
               "prompt_tokens_details": {"cached_tokens": 1500},
               "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    // And the metering core reads the translated answer as OpenAI usage.
    let u = crate::usage::from_response_json(
        crate::dialect::Api::ChatCompletions,
        &Anthropic.translate_response(&rctx(&p), body).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
        (3695, 503, 1500)
    );
}

#[test]
fn response_stop_reasons_map() {
    for (stop, want) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        let p = provider();
        let body = format!(
            r#"{{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{{"type":"thinking","thinking":"hm","signature":"x"}},{{"type":"text","text":"Hi"}}],"stop_reason":"{stop}","usage":{{"input_tokens":1,"output_tokens":2}}}}"#
        );
        let out: Value = serde_json::from_slice(
            &Anthropic
                .translate_response(&rctx(&p), body.as_bytes())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], want, "{stop}");
        assert_eq!(out["choices"][0]["message"]["content"], "Hi");
    }
}

#[test]
fn response_not_a_message_is_a_502() {
    let p = provider();
    let e = Anthropic
        .translate_response(&rctx(&p), b"<html>bad gateway</html>")
        .unwrap_err();
    assert_eq!(e.status, 502);
}

#[test]
fn errors_keep_the_providers_message() {
    for (status, body, ty) in [
        (
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"},"request_id":"req_011"}"#,
            "invalid_request_error",
        ),
        (
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            "authentication_error",
        ),
        (
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
            "rate_limit_error",
        ),
        (
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            "overloaded_error",
        ),
    ] {
        let out: Value =
            serde_json::from_slice(&Anthropic.translate_error(status, body.as_bytes())).unwrap();
        let src: Value = serde_json::from_str(body).unwrap();
        assert_eq!(out["error"]["message"], src["error"]["message"]);
        assert_eq!(out["error"]["type"], ty);
        assert_eq!(out["error"]["code"], src["error"]["type"]);
    }
    let out: Value =
        serde_json::from_slice(&Anthropic.translate_error(502, b"upstream connect error")).unwrap();
    assert_eq!(out["error"]["message"], "upstream connect error");
    assert_eq!(out["error"]["type"], "server_error");
}

/// The reference's streaming example with text, then a tool call ("Streaming
/// Messages" → "Streaming request with tool use"), plus pings and cache usage.
const TOOL_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-6\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":128,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\
\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\
\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", let's check \\\"é\\\" 🌤\\n\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\
\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\
\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\
\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\
\n";

fn run_stream(input: &[u8], splits: &[usize]) -> Vec<u8> {
    let p = provider();
    let mut s = Anthropic.stream_translator(&rctx(&p));
    let mut out = Vec::new();
    let mut last = 0;
    for &at in splits {
        s.on_chunk(&input[last..at], false, &mut out);
        last = at;
    }
    s.on_chunk(&input[last..], true, &mut out);
    out
}

/// The OpenAI chunks of a translated stream, and whether it ended with `[DONE]`.
fn chunks(out: &[u8]) -> (Vec<Value>, bool) {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.ends_with("\n\n") || text.is_empty(), "{text}");
    let mut v = Vec::new();
    let mut done = false;
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev.strip_prefix("data: ").expect(ev);
        assert!(!done, "event after [DONE]");
        if data == "[DONE]" {
            done = true;
        } else {
            v.push(serde_json::from_str(data).unwrap());
        }
    }
    (v, done)
}

#[test]
fn stream_translates_text_tool_call_usage_and_done() {
    let out = run_stream(TOOL_STREAM.as_bytes(), &[]);
    let (cs, done) = chunks(&out);
    assert!(done);
    for c in &cs {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
        assert_eq!(c["model"], "claude-opus-4-6");
    }
    assert_eq!(cs[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Okay, let's check \"é\" 🌤\n");
    let start = cs
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
        .unwrap();
    let tc = &start["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(tc["index"], 0);
    assert_eq!(tc["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(tc["function"]["name"], "get_weather");
    let args: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "San Francisco, CA"})
    );
    let fin: Vec<_> = cs
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(fin, vec!["tool_calls"]);
    let last = cs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 600, "completion_tokens": 89, "total_tokens": 689,
               "prompt_tokens_details": {"cached_tokens": 128},
               "completion_tokens_details": {"reasoning_tokens": 0}})
    );
}

#[test]
fn stream_output_is_the_same_at_every_split() {
    let input = TOOL_STREAM.as_bytes();
    let whole = run_stream(input, &[]);
    for at in 0..=input.len() {
        assert_eq!(run_stream(input, &[at]), whole, "split at {at}");
    }
    // And byte by byte.
    let all: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run_stream(input, &all), whole);
}

#[test]
fn stream_meter_reads_translated_usage() {
    let out = run_stream(TOOL_STREAM.as_bytes(), &[]);
    let mut m = crate::usage::stream::StreamMeter::new(
        crate::dialect::Api::ChatCompletions,
        true,
        1 << 20,
        1 << 16,
    );
    let r = m.on_chunk(&out, true);
    let s = m.finish();
    let u = s.usage.unwrap();
    assert!(s.usage_final);
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
        (600, 89, 128)
    );
    // A client that did not ask for usage does not see the usage chunk.
    let crate::usage::stream::Rewrite::Replace(client) = r else {
        panic!("usage chunk should be stripped")
    };
    let (cs, done) = chunks(&client);
    assert!(done);
    assert!(cs.iter().all(|c| c.get("usage").is_none_or(Value::is_null)));
}

#[test]
fn stream_error_event_becomes_openai_error_and_no_done() {
    let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
    for at in 0..=input.len() {
        let out = run_stream(input.as_bytes(), &[at]);
        let (cs, done) = chunks(&out);
        assert!(!done);
        let last = cs.last().unwrap();
        assert_eq!(last["error"]["message"], "Overloaded");
        assert_eq!(last["error"]["type"], "overloaded_error");
    }
}

#[test]
fn stream_cut_short_ends_without_done() {
    let cut = &TOOL_STREAM[..TOOL_STREAM.find("event: message_delta").unwrap()];
    let (cs, done) = chunks(&run_stream(cut.as_bytes(), &[]));
    assert!(!done);
    assert!(cs
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
}

#[test]
fn stream_crlf_framing_is_accepted() {
    let crlf = TOOL_STREAM.replace('\n', "\r\n");
    assert_eq!(
        run_stream(crlf.as_bytes(), &[]),
        run_stream(TOOL_STREAM.as_bytes(), &[])
    );
}

#[test]
fn hostile_streams_and_bodies_never_panic_and_stay_valid_sse() {
    let mut rng = crate::testing::XorShift(0x5eed_1234);
    let p = provider();
    let base = TOOL_STREAM.as_bytes();
    for round in 0..300 {
        // Mutate a real stream: flip, drop and duplicate bytes.
        let mut input = base.to_vec();
        for _ in 0..(round % 12) {
            let n = input.len() as u64;
            let i = (rng.next_u64() % n) as usize;
            match rng.next_u64() % 3 {
                0 => input[i] = (rng.next_u64() & 0xff) as u8,
                1 => {
                    input.remove(i);
                }
                _ => {
                    let b = input[i];
                    input.insert(i, b);
                }
            }
        }
        let mut s = Anthropic.stream_translator(&rctx(&p));
        let mut out = Vec::new();
        for piece in input.chunks(1 + (rng.next_u64() % 97) as usize) {
            s.on_chunk(piece, false, &mut out);
        }
        s.on_chunk(&[], true, &mut out);
        // Whatever came in, what goes out is well-formed OpenAI SSE.
        let text = String::from_utf8(out).expect("utf-8 out");
        for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
            let data = ev.strip_prefix("data: ").expect("data event");
            if data != "[DONE]" {
                serde_json::from_str::<Value>(data).expect("JSON chunk");
            }
        }
        // Truncated and mutated non-streaming bodies: an error or a valid completion.
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"t","name":"f","input":{"a":[1,2]}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":2}}"#;
        let cut = (rng.next_u64() % body.len() as u64) as usize;
        for b in [&body[..cut], &input[..cut.min(input.len())]] {
            if let Ok(out) = Anthropic.translate_response(&rctx(&p), b) {
                serde_json::from_slice::<Value>(&out).expect("valid completion");
            }
            serde_json::from_slice::<Value>(&Anthropic.translate_error(500, b))
                .expect("valid error");
        }
    }
}

// ---------------------------------------------------------------------------
// Extended thinking, citations, logprobs ("Extended thinking", "Citations",
// "Web search tool" in Anthropic's reference)
// ---------------------------------------------------------------------------

fn translate_err(p: &ProviderConfig, body: &Value) -> TranslateError {
    let bytes = serde_json::to_vec(body).unwrap();
    let ctx = RequestContext {
        provider: p,
        model: "claude-sonnet-4-5",
        streaming: false,
        now_unix_ms: 0,
        client_path: "/v1/chat/completions",
    };
    Anthropic
        .translate_request(
            &ctx,
            &RequestBody {
                bytes: &bytes,
                root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
            },
        )
        .unwrap_err()
}

#[test]
fn reasoning_effort_maps_to_a_thinking_budget() {
    let p = provider();
    let user = json!([{"role": "user", "content": "Are there infinitely many primes p with p mod 4 == 3?"}]);
    for (effort, budget) in [
        ("minimal", 1024),
        ("low", 1024),
        ("medium", 2048),
        ("high", 4096),
        ("xhigh", 8192),
    ] {
        let b = body_of(&translate(
            &p,
            &json!({"model": "m", "messages": user, "reasoning_effort": effort, "max_completion_tokens": 16000}),
            "claude-sonnet-4-5",
        ));
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": budget}),
            "{effort}"
        );
        assert_eq!(b["max_tokens"], 16000);
    }
    // No client cap: the default leaves the visible answer its usual room.
    let b = body_of(&translate(
        &p,
        &json!({"model": "m", "messages": user, "reasoning_effort": "high"}),
        "m",
    ));
    assert_eq!(b["max_tokens"], 4096 + 4096);
    // "none" turns thinking off: no `thinking` at all.
    let b = body_of(&translate(
        &p,
        &json!({"model": "m", "messages": user, "reasoning_effort": "none"}),
        "m",
    ));
    assert!(b.get("thinking").is_none());
    assert_eq!(b["max_tokens"], 4096);
    // The route's budgets apply.
    let mut p2 = provider();
    p2.anthropic.thinking_budgets.medium = 10_000;
    let b = body_of(&translate(
        &p2,
        &json!({"model": "m", "messages": user, "reasoning_effort": "medium", "max_tokens": 12000}),
        "m",
    ));
    assert_eq!(b["thinking"]["budget_tokens"], 10_000);
}

#[test]
fn explicit_thinking_object_passes_through_and_wins() {
    let p = provider();
    let b = body_of(&translate(
        &p,
        &json!({"model": "m", "max_tokens": 20000, "reasoning_effort": "low",
                "thinking": {"type": "enabled", "budget_tokens": 10000},
                "messages": [{"role": "user", "content": "hi"}]}),
        "m",
    ));
    assert_eq!(
        b["thinking"],
        json!({"type": "enabled", "budget_tokens": 10000})
    );
    let b = body_of(&translate(
        &p,
        &json!({"model": "m", "thinking": {"type": "disabled"},
                "messages": [{"role": "user", "content": "hi"}]}),
        "m",
    ));
    assert_eq!(b["thinking"], json!({"type": "disabled"}));
    assert_eq!(b["max_tokens"], 4096);
}

#[test]
fn thinking_and_logprobs_mistakes_are_400s_naming_the_field() {
    let p = provider();
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (body, needle) in [
        (
            json!({"messages": msgs, "reasoning_effort": "extreme"}),
            "reasoning_effort: \"extreme\"",
        ),
        (
            json!({"messages": msgs, "reasoning_effort": 3}),
            "reasoning_effort",
        ),
        (json!({"messages": msgs, "thinking": true}), "thinking:"),
        (
            json!({"messages": msgs, "reasoning_effort": "high", "max_completion_tokens": 4096}),
            "max_completion_tokens: 4096 must be greater than the thinking budget of 4096",
        ),
        (
            json!({"messages": msgs, "thinking": {"type": "enabled", "budget_tokens": 2000}, "max_tokens": 1500}),
            "thinking budget of 2000",
        ),
        (json!({"messages": msgs, "logprobs": true}), "logprobs:"),
        (
            json!({"messages": msgs, "logprobs": false, "top_logprobs": 5}),
            "top_logprobs:",
        ),
        (json!({"messages": msgs, "n": 2}), "n:"),
        (
            json!({"messages": [{"role": "user", "content": "q"},
              {"role": "assistant", "content": "a", "thinking_blocks": [{"type": "thinking", "thinking": "x"}]}]}),
            "messages[1].thinking_blocks[0]",
        ),
    ] {
        let e = translate_err(&p, &body);
        assert_eq!(e.status, 400, "{body}");
        assert!(e.message.contains(needle), "{} / {needle}", e.message);
        let eb: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(eb["error"]["type"], "invalid_request_error");
    }
    // Asking for nothing passes.
    let b = body_of(&translate(
        &p,
        &json!({"model": "m", "messages": msgs, "logprobs": false, "top_logprobs": 0, "n": 1}),
        "m",
    ));
    assert!(b.get("logprobs").is_none());
}

#[test]
fn thinking_blocks_sent_back_lead_the_assistant_turn() {
    // The reference's tool-use-with-thinking continuation: the assistant turn that
    // called the tool carries its thinking block (with signature) back.
    let p = provider();
    let b = body_of(&translate(
        &p,
        &json!({"model": "m", "max_tokens": 16000, "reasoning_effort": "low",
          "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": null,
             "thinking_blocks": [
               {"type": "thinking", "thinking": "The user wants to know the current weather in Paris. I have access to a function `get_weather`...", "signature": "BDaL4VrbR2Oj0hO4XpJxT28J5TILnCrrUXoKiiNBZW9P+nr8XSj1zuZzAl4egiCCpQNvfyUuFFJP5CncdYZEQPPmLxYsNrcs...."},
               {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP..."}],
             "tool_calls": [{"id": "toolu_01CswdEQBMshySk6Y9DFKrfq", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_01CswdEQBMshySk6Y9DFKrfq", "content": "Current temperature: 88°F"}],
          "tools": [{"type": "function", "function": {"name": "get_weather",
             "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]}),
        "m",
    ));
    assert_eq!(
        b["messages"][1]["content"],
        json!([
          {"type": "thinking", "thinking": "The user wants to know the current weather in Paris. I have access to a function `get_weather`...",
           "signature": "BDaL4VrbR2Oj0hO4XpJxT28J5TILnCrrUXoKiiNBZW9P+nr8XSj1zuZzAl4egiCCpQNvfyUuFFJP5CncdYZEQPPmLxYsNrcs...."},
          {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP..."},
          {"type": "tool_use", "id": "toolu_01CswdEQBMshySk6Y9DFKrfq", "name": "get_weather",
           "input": {"location": "Paris"}}])
    );
    assert_eq!(
        b["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
}

#[test]
fn response_thinking_and_redacted_thinking_become_reasoning_fields() {
    let p = provider();
    let body = r#"{"id":"msg_01Thk","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
      "content":[
        {"type":"thinking","thinking":"To approach this, let's think about what we know about prime numbers...","signature":"zbbJhbGciOiJFU8zI1NiIsImtakcjsu38219c0.eyJoYXNoIjoiYWJjMTIzIiwiaWF0IjoxNjE0NTM0NTY3fQ...."},
        {"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP..."},
        {"type":"text","text":"Yes, there are infinitely many prime numbers such that p mod 4 = 3."}],
      "stop_reason":"end_turn","stop_sequence":null,
      "usage":{"input_tokens":48,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1303}}"#;
    let out: Value = serde_json::from_slice(
        &Anthropic
            .translate_response(&rctx(&p), body.as_bytes())
            .unwrap(),
    )
    .unwrap();
    let m = &out["choices"][0]["message"];
    assert_eq!(
        m["content"],
        "Yes, there are infinitely many prime numbers such that p mod 4 = 3."
    );
    assert_eq!(
        m["reasoning_content"],
        "To approach this, let's think about what we know about prime numbers..."
    );
    assert_eq!(
        m["thinking_blocks"],
        json!([
          {"type": "thinking", "thinking": "To approach this, let's think about what we know about prime numbers...",
           "signature": "zbbJhbGciOiJFU8zI1NiIsImtakcjsu38219c0.eyJoYXNoIjoiYWJjMTIzIiwiaWF0IjoxNjE0NTM0NTY3fQ...."},
          {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP..."}])
    );
    assert!(m.get("annotations").is_none());
    // Thinking is billed inside output_tokens; Anthropic reports no split.
    assert_eq!(out["usage"]["completion_tokens"], 1303);
    assert_eq!(
        out["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );
    // A thinking block sent back on the next turn round-trips unchanged.
    let again = body_of(&translate(
        &p,
        &json!({"model": "m", "max_tokens": 9000, "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": m["content"], "thinking_blocks": m["thinking_blocks"]},
            {"role": "user", "content": "and p mod 4 == 1?"}]}),
        "m",
    ));
    assert_eq!(
        again["messages"][1]["content"].as_array().unwrap()[0..2],
        m["thinking_blocks"].as_array().unwrap()[..]
    );
}

#[test]
fn response_citations_go_to_provider_fields_and_web_ones_to_annotations() {
    let p = provider();
    // "Citations" (document, char_location) and "Web search tool"
    // (server_tool_use, web_search_tool_result, web_search_result_location).
    let body = r#"{"id":"msg_01Cit","type":"message","role":"assistant","model":"claude-sonnet-4-5",
      "content":[
        {"type":"text","text":"According to the document, "},
        {"type":"text","text":"the grass is green","citations":[{"type":"char_location","cited_text":"The grass is green.","document_index":0,"document_title":"Example Document","start_char_index":0,"end_char_index":20}]},
        {"type":"text","text":" and "},
        {"type":"server_tool_use","id":"srvtoolu_01WYG3ziw53XMcoyKL4XcZmE","name":"web_search","input":{"query":"claude shannon birth date"}},
        {"type":"web_search_tool_result","tool_use_id":"srvtoolu_01WYG3ziw53XMcoyKL4XcZmE","content":[{"type":"web_search_result","url":"https://en.wikipedia.org/wiki/Claude_Shannon","title":"Claude Shannon - Wikipedia","encrypted_content":"EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5LTQ1NGUtODgxNC1kNjNjNTk1ZWI3Y...","page_age":"April 30, 2025"}]},
        {"type":"text","text":"Shannon, né le 30 avril 1916","citations":[{"type":"web_search_result_location","url":"https://en.wikipedia.org/wiki/Claude_Shannon","title":"Claude Shannon - Wikipedia","encrypted_index":"Eo8BCioIAhgBIiQyYjQ0OWJmZi1lNm..","cited_text":"Claude Elwood Shannon (April 30, 1916 – February 24, 2001) was an American mathematician..."}]}],
      "stop_reason":"end_turn","usage":{"input_tokens":6039,"output_tokens":931,"server_tool_use":{"web_search_requests":1}}}"#;
    let out: Value = serde_json::from_slice(
        &Anthropic
            .translate_response(&rctx(&p), body.as_bytes())
            .unwrap(),
    )
    .unwrap();
    let m = &out["choices"][0]["message"];
    let content = m["content"].as_str().unwrap();
    assert_eq!(
        content,
        "According to the document, the grass is green and Shannon, né le 30 avril 1916"
    );
    let cites = &m["provider_specific_fields"]["citations"];
    assert_eq!(cites.as_array().unwrap().len(), 2);
    assert_eq!(cites[0][0]["type"], "char_location");
    assert_eq!(cites[0][0]["cited_text"], "The grass is green.");
    assert_eq!(cites[1][0]["type"], "web_search_result_location");
    let a = &m["annotations"];
    assert_eq!(a.as_array().unwrap().len(), 1);
    assert_eq!(a[0]["type"], "url_citation");
    let u = &a[0]["url_citation"];
    assert_eq!(u["url"], "https://en.wikipedia.org/wiki/Claude_Shannon");
    assert_eq!(u["title"], "Claude Shannon - Wikipedia");
    // Character offsets into `content` (the é counts once).
    let (s, e) = (
        u["start_index"].as_u64().unwrap() as usize,
        u["end_index"].as_u64().unwrap() as usize,
    );
    let cited: String = content.chars().skip(s).take(e - s).collect();
    assert_eq!(cited, "Shannon, né le 30 avril 1916");
    assert!(m.get("reasoning_content").is_none());
}

/// "Extended thinking" → "Streaming thinking", with usage and a redacted block
/// added as the API sends them, and a cited answer ("Citations" → streaming).
const THINKING_STREAM: &str = "event: message_start\n\
data: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_01Thk\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-sonnet-4-5-20250929\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 52, \"output_tokens\": 3}}}\n\
\n\
event: content_block_start\n\
data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"thinking\", \"thinking\": \"\", \"signature\": \"\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"thinking_delta\", \"thinking\": \"Let me solve this step by step:\\n\\n1. First break down 27 * 453\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"thinking_delta\", \"thinking\": \"\\n2. 453 = 400 + 50 + 3 — “é”\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"signature_delta\", \"signature\": \"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds...\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\": \"content_block_stop\", \"index\": 0}\n\
\n\
event: content_block_start\n\
data: {\"type\": \"content_block_start\", \"index\": 1, \"content_block\": {\"type\": \"redacted_thinking\", \"data\": \"EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP...\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\": \"content_block_stop\", \"index\": 1}\n\
\n\
event: content_block_start\n\
data: {\"type\": \"content_block_start\", \"index\": 2, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 2, \"delta\": {\"type\": \"citations_delta\", \"citation\": {\"type\": \"char_location\", \"cited_text\": \"27 * 453 = 12231.\", \"document_index\": 0, \"document_title\": \"Tables\", \"start_char_index\": 0, \"end_char_index\": 17}}}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 2, \"delta\": {\"type\": \"text_delta\", \"text\": \"27 * 453 = 12,231\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\": \"content_block_stop\", \"index\": 2}\n\
\n\
event: message_delta\n\
data: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\", \"stop_sequence\": null}, \"usage\": {\"output_tokens\": 1440}}\n\
\n\
event: message_stop\n\
data: {\"type\": \"message_stop\"}\n\
\n";

#[test]
fn stream_thinking_signature_redacted_and_citations_become_deltas() {
    let out = run_stream(THINKING_STREAM.as_bytes(), &[]);
    let (cs, done) = chunks(&out);
    assert!(done);
    let delta = |c: &Value| c["choices"][0]["delta"].clone();
    let reasoning: String = cs
        .iter()
        .filter_map(|c| delta(c)["reasoning_content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        reasoning,
        "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3 — “é”"
    );
    // Concatenating the thinking_blocks fragments (LiteLLM's stream shape) gives
    // the blocks to send back.
    let frags: Vec<Value> = cs
        .iter()
        .filter_map(|c| delta(c)["thinking_blocks"].as_array().cloned())
        .flatten()
        .collect();
    let thought: String = frags
        .iter()
        .filter(|b| b["type"] == "thinking")
        .filter_map(|b| b["thinking"].as_str())
        .collect();
    assert_eq!(thought, reasoning);
    let sigs: Vec<&str> = frags
        .iter()
        .filter_map(|b| b["signature"].as_str())
        .collect();
    assert_eq!(
        sigs,
        vec!["EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."]
    );
    let redacted: Vec<&Value> = frags
        .iter()
        .filter(|b| b["type"] == "redacted_thinking")
        .collect();
    assert_eq!(
        redacted[0]["data"],
        "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP..."
    );
    let citation = cs
        .iter()
        .find_map(|c| {
            delta(c)["provider_specific_fields"]["citation"]
                .as_object()
                .cloned()
        })
        .unwrap();
    assert_eq!(citation["cited_text"], "27 * 453 = 12231.");
    let text: String = cs
        .iter()
        .filter_map(|c| delta(c)["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "27 * 453 = 12,231");
    // Reasoning never leaks into content, content never into reasoning.
    assert!(
        cs.iter()
            .all(|c| delta(c)["content"].as_str().is_none()
                || delta(c)["reasoning_content"].is_null())
    );
    let last = cs.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 1440);
    assert_eq!(last["usage"]["prompt_tokens"], 52);
}

#[test]
fn thinking_stream_is_the_same_at_every_split() {
    let input = THINKING_STREAM.as_bytes();
    let whole = run_stream(input, &[]);
    for at in 0..=input.len() {
        assert_eq!(run_stream(input, &[at]), whole, "split at {at}");
    }
    let all: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run_stream(input, &all), whole);
}

#[test]
fn stream_meter_counts_translated_thinking_stream_usage() {
    let out = run_stream(THINKING_STREAM.as_bytes(), &[]);
    let mut m = crate::usage::stream::StreamMeter::new(
        crate::dialect::Api::ChatCompletions,
        false,
        1 << 20,
        1 << 16,
    );
    let _ = m.on_chunk(&out, true);
    let s = m.finish();
    let u = s.usage.unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (52, 1440));
    // Without provider usage, the fallback text counts thinking too (it is billed).
    assert!(s.fallback_text.contains("Let me solve this"));
    assert!(s.fallback_text.contains("12,231"));
}
