//! Gemini translation on payloads written from the Gemini API reference
//! (`tests/fixtures/providers/gemini/`, each file names its source).

use serde_json::{json, Value};

use super::*;
use crate::providers::{translator, ProviderConfig, ProviderKind, Secret};

const FIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/providers/gemini/"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}{name}")).unwrap()
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

fn provider() -> ProviderConfig {
    let mut p = ProviderConfig::new(ProviderKind::Gemini);
    p.api_key = Some(Secret::inline("AIzaSyTEST-key"));
    p
}

fn translate(
    openai: &Value,
    model: &str,
    streaming: bool,
    p: &ProviderConfig,
) -> Result<UpstreamRequest, TranslateError> {
    let bytes = serde_json::to_vec(openai).unwrap();
    translator(ProviderKind::Gemini).translate_request(
        &RequestContext {
            provider: p,
            model,
            streaming,
            now_unix_ms: 0,
            client_path: "/v1/chat/completions",
        },
        &RequestBody {
            bytes: &bytes,
            root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
        },
    )
}

fn header<'a>(r: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    r.set_headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn request_with_system_image_tools_and_history() {
    let f = fixture_json("request-tools.json");
    let model = f["model"].as_str().unwrap();
    let p = provider();
    let r = translate(&f["openai"], model, false, &p).unwrap();
    assert_eq!(r.path, f["path"].as_str().unwrap());
    assert_eq!(
        r.authority.as_deref(),
        Some("generativelanguage.googleapis.com")
    );
    assert_eq!(header(&r, "x-goog-api-key"), Some("AIzaSyTEST-key"));
    assert!(r.remove_headers.iter().any(|h| h == "authorization"));
    let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(body, f["gemini"]);
    let r = translate(&f["openai"], model, true, &p).unwrap();
    assert_eq!(r.path, f["stream_path"].as_str().unwrap());
}

#[test]
fn endpoint_override_and_no_key_keeps_client_auth() {
    let mut p = ProviderConfig::new(ProviderKind::Gemini);
    p.endpoint.authority = Some("127.0.0.1:8081".into());
    p.endpoint.base_path = Some("/gemini/v1beta".into());
    let r = translate(
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
        "gemini-2.0-flash",
        false,
        &p,
    )
    .unwrap();
    assert_eq!(
        r.path,
        "/gemini/v1beta/models/gemini-2.0-flash:generateContent"
    );
    assert_eq!(r.authority.as_deref(), Some("127.0.0.1:8081"));
    assert!(header(&r, "x-goog-api-key").is_none());
    assert!(!r.remove_headers.iter().any(|h| h == "authorization"));
    let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    );
}

#[test]
fn tool_choice_and_tool_results() {
    let p = provider();
    let base = json!({
        "messages": [{"role": "user", "content": "go"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    });
    let cfg = |c: Value| {
        let mut b = base.clone();
        b["tool_choice"] = c;
        let r = translate(&b, "gemini-2.0-flash", false, &p).unwrap();
        serde_json::from_slice::<Value>(r.body.as_deref().unwrap()).unwrap()["toolConfig"].clone()
    };
    assert_eq!(
        cfg(json!("auto")),
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        cfg(json!("none")),
        json!({"functionCallingConfig": {"mode": "NONE"}})
    );
    assert_eq!(
        cfg(json!({"type": "function", "function": {"name": "f"}})),
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}})
    );
    assert_eq!(cfg(Value::Null), Value::Null);

    // Non-object tool results are wrapped; two results merge into one user turn.
    let body = json!({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": ""}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "42"},
        {"role": "tool", "tool_call_id": "b", "content": "plain text"},
    ]});
    let r = translate(&body, "gemini-2.0-flash", false, &p).unwrap();
    let v: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        v["contents"],
        json!([
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "f", "args": {}}},
                {"functionCall": {"name": "g", "args": {}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "f", "response": {"result": 42}}},
                {"functionResponse": {"name": "g", "response": {"result": "plain text"}}}]}
        ])
    );
}

#[test]
fn untranslatable_requests_are_400s_naming_the_field() {
    let p = provider();
    let e = translate(
        &json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
        "gemini-2.0-flash",
        false,
        &p,
    )
    .unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message.contains("\"nope\""), "{}", e.message);
    assert!(
        e.message.starts_with("messages (non-system #0): "),
        "{}",
        e.message
    );
    let e = translate(
        &json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
        "gemini-2.0-flash",
        false,
        &p,
    )
    .unwrap_err();
    assert!(e.message.contains("data:image"), "{}", e.message);
    assert!(
        e.message.starts_with("messages (non-system #0): "),
        "{}",
        e.message
    );
    let e = translate(&json!({"messages": []}), "../admin", false, &p).unwrap_err();
    assert!(e.message.contains("model"), "{}", e.message);
    let e = translate(&json!({"messages": []}), "", false, &p).unwrap_err();
    assert!(e.message.contains("model"), "{}", e.message);
}

fn rctx<'a>(p: &'a ProviderConfig, model: &'a str) -> ResponseContext<'a> {
    ResponseContext {
        provider: p,
        model,
        created: 1_795_434_485,
        id: "chatcmpl-test",
    }
}

#[test]
fn responses_text_thoughts_cache_tools_and_blocked() {
    let p = provider();
    for name in [
        "response-text.json",
        "response-tool.json",
        "response-blocked.json",
    ] {
        let f = fixture_json(name);
        let body = serde_json::to_vec(&f["gemini"]).unwrap();
        let out = crate::providers::written_as_read(
            &translator(ProviderKind::Gemini)
                .answer(&rctx(&p, "gemini-2.5-flash"), &body)
                .unwrap(),
        );
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, f["openai"], "{name}");
    }
    let e = translator(ProviderKind::Gemini)
        .translate_response(&rctx(&p, "m"), b"{}")
        .unwrap_err();
    assert_eq!(e.status, 502);
}

#[test]
fn finish_reasons() {
    for (r, tools, want) in [
        ("STOP", false, "stop"),
        ("STOP", true, "tool_calls"),
        ("MAX_TOKENS", false, "length"),
        ("MAX_TOKENS", true, "length"),
        ("SAFETY", false, "content_filter"),
        ("RECITATION", false, "content_filter"),
        ("PROHIBITED_CONTENT", false, "content_filter"),
        ("OTHER", false, "stop"),
    ] {
        assert_eq!(finish_reason(r, tools).as_str(), want, "{r} {tools}");
    }
}

#[test]
fn errors_keep_the_provider_message() {
    let f = fixture_json("errors.json");
    for c in f["cases"].as_array().unwrap() {
        let body = match &c["body"] {
            Value::String(s) => s.clone().into_bytes(),
            v => serde_json::to_vec(v).unwrap(),
        };
        let status = c["status"].as_u64().unwrap() as u32;
        let out = translator(ProviderKind::Gemini).translate_error(status, &body);
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, c["openai"], "status {status}");
    }
}

fn run_stream(p: &ProviderConfig, parts: &[&[u8]]) -> Vec<u8> {
    let mut st = translator(ProviderKind::Gemini).stream_translator(&rctx(p, "gemini-2.5-flash"));
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        st.on_chunk(part, i + 1 == parts.len(), &mut out);
    }
    out
}

fn sse_events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let d = e.strip_prefix("data: ").unwrap();
            if d == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(d).unwrap()
            }
        })
        .collect()
}

fn expected(name: &str) -> Vec<Value> {
    fixture(name)
        .lines()
        .map(|l| {
            if l == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(l).unwrap()
            }
        })
        .collect()
}

#[test]
fn streams_translate_identically_at_every_split() {
    let p = provider();
    for name in ["stream-text", "stream-tool", "stream-error"] {
        let wire = fixture(&format!("{name}.sse")).into_bytes();
        assert!(wire.windows(4).any(|w| w == b"\r\n\r\n"), "CRLF framing");
        let want = expected(&format!("{name}.expected.jsonl"));
        let whole = run_stream(&p, &[&wire]);
        assert_eq!(sse_events(&whole), want, "{name}");
        for i in 0..=wire.len() {
            let (a, b) = wire.split_at(i);
            assert_eq!(run_stream(&p, &[a, b]), whole, "{name} split at {i}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(run_stream(&p, &bytes), whole, "{name} byte by byte");
        // LF-only framing gives the same answer.
        let lf = fixture(&format!("{name}.sse")).replace("\r\n", "\n");
        assert_eq!(run_stream(&p, &[lf.as_bytes()]), whole, "{name} LF");
    }
}

#[test]
fn cut_streams_never_claim_done() {
    let p = provider();
    let wire = fixture("stream-text.sse").into_bytes();
    // The finishReason rides on the last event: a stream cut before that event's
    // JSON is whole never claims [DONE]; once it is whole (even without its CRLF
    // CRLF terminator) the answer is complete.
    let json_end = wire.len() - 4;
    for cut in 0..=wire.len() {
        let ev = sse_events(&run_stream(&p, &[&wire[..cut]]));
        let done = ev.contains(&Value::String("[DONE]".into()));
        assert_eq!(done, cut >= json_end, "cut at {cut}");
        assert!(ev.iter().all(|e| e.get("error").is_none()), "cut at {cut}");
    }
    let ev = sse_events(&run_stream(&p, &[b"data: {not json}\r\n\r\n"]));
    assert_eq!(ev.len(), 1);
    assert!(ev[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not JSON"));
}

#[test]
fn seed_penalties_and_response_format_reach_generation_config() {
    let p = provider();
    let body = json!({
        "messages": [{"role": "user", "content": "json please"}],
        "max_tokens": 10, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.25,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
    });
    let r = translate(&body, "gemini-2.0-flash", false, &p).unwrap();
    let v: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        v["generationConfig"],
        json!({"maxOutputTokens": 10, "seed": 7, "presencePenalty": 0.5, "frequencyPenalty": -0.25,
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
    );
    let r = translate(
        &json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
        "gemini-2.0-flash",
        false,
        &p,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        v["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
    let e = translate(
        &json!({"messages": [{"role": "user", "content": "x"}], "n": 3}),
        "gemini-2.0-flash",
        false,
        &p,
    )
    .unwrap_err();
    assert!(e.message.starts_with("n: "), "{}", e.message);
}

#[test]
fn hostile_streams_never_panic_and_stay_well_formed() {
    let p = provider();
    let mut rng = crate::testing::XorShift(0x2545_f491_4f6c_dd1d);
    let good = fixture("stream-tool.sse").into_bytes();
    for round in 0..300 {
        let mut wire = good.clone();
        for _ in 0..(rng.next_u64() % 4) {
            let i = (rng.next_u64() % wire.len() as u64) as usize;
            wire[i] = rng.next_u64() as u8;
        }
        if round % 3 == 0 {
            wire.truncate((rng.next_u64() % wire.len() as u64) as usize);
        }
        let mut parts = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = 1 + (rng.next_u64() % 61) as usize;
            let (a, b) = rest.split_at(n.min(rest.len()));
            parts.push(a);
            rest = b;
        }
        let out = run_stream(&p, &parts);
        // Output must stay UTF-8 SSE with JSON events and one terminal event at most.
        let text = std::str::from_utf8(&out).unwrap();
        let ev: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        let mut terminal = false;
        for e in ev {
            assert!(!terminal, "round {round}: event after the terminal one");
            let d = e.strip_prefix("data: ").unwrap();
            if d == "[DONE]" {
                terminal = true;
            } else {
                let v: Value = serde_json::from_str(d).unwrap();
                terminal = v.get("error").is_some();
            }
        }
    }
    for data in [
        "null",
        "[]",
        "{\"candidates\":7}",
        "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":9},{\"text\":5}]},\"finishReason\":3}]}",
        "{\"error\":\"flat\"}",
        "{\"usageMetadata\":{\"promptTokenCount\":-4}}",
    ] {
        let wire = format!("data: {data}\r\n\r\n");
        let _ = run_stream(&p, &[wire.as_bytes()]);
    }
}

#[test]
fn thought_signatures_ride_in_tool_call_ids_and_go_back() {
    // Gemini 3 returns `thoughtSignature` beside the first functionCall of a turn
    // (https://ai.google.dev/gemini-api/docs/thought-signatures) and rejects the
    // next turn without it.
    let p = provider();
    let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
         "thoughtSignature": "CiQBjz1rX+sig/A=="},
        {"functionCall": {"name": "check_flight", "args": {"flight": "UA200"}}}]},
        "finishReason": "STOP"}]});
    let out = translator(ProviderKind::Gemini)
        .translate_response(
            &rctx(&p, "gemini-3-pro-preview"),
            &serde_json::to_vec(&answer).unwrap(),
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls[0]["id"], "call_0.thought.CiQBjz1rX+sig/A==");
    assert_eq!(calls[1]["id"], "call_1");
    // The client echoes the ids; the signature goes back on the functionCall part.
    let next = json!({"messages": [
        {"role": "user", "content": "Check AA100 and UA200"},
        {"role": "assistant", "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "{\"status\":\"delayed\"}"},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\":\"on time\"}"}]});
    let r = translate(&next, "gemini-3-pro-preview", false, &p).unwrap();
    let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body["contents"][1]["parts"],
        json!([
            {"functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
             "thoughtSignature": "CiQBjz1rX+sig/A=="},
            {"functionCall": {"name": "check_flight", "args": {"flight": "UA200"}}}])
    );
    assert_eq!(
        body["contents"][2]["parts"][0]["functionResponse"]["name"],
        "check_flight"
    );
    // Streams carry it the same way.
    let wire = format!("data: {answer}\r\n\r\n");
    let ev = sse_events(&run_stream(&p, &[wire.as_bytes()]));
    let ids: Vec<&str> = ev
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/tool_calls/0/id")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(ids, ["call_0.thought.CiQBjz1rX+sig/A==", "call_1"]);
}
