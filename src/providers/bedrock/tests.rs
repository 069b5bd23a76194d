//! Bedrock Converse translation on payloads written from the Converse API reference
//! (`tests/fixtures/providers/bedrock/`, each file names its source).

use serde_json::{json, Value};

use super::eventstream::{encode, event_frame, HeaderValue};
use super::*;
use crate::providers::{translator, ProviderConfig, ProviderKind, Secret};

const FIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/providers/bedrock/"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}{name}")).unwrap()
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

fn provider() -> ProviderConfig {
    let mut p = ProviderConfig::new(ProviderKind::Bedrock);
    p.aws.region = "us-east-1".into();
    p.aws.access_key_id = Some(Secret::inline("AKIAIOSFODNN7EXAMPLE"));
    p.aws.secret_access_key = Some(Secret::inline("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"));
    p
}

fn translate(openai: &Value, model: &str, streaming: bool, p: &ProviderConfig) -> UpstreamRequest {
    let bytes = serde_json::to_vec(openai).unwrap();
    let ctx = RequestContext {
        provider: p,
        model,
        streaming,
        now_unix_ms: 1_795_434_485_123,
        client_path: "/v1/chat/completions",
    };
    translator(ProviderKind::Bedrock)
        .translate_request(
            &ctx,
            &RequestBody {
                bytes: &bytes,
                root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
            },
        )
        .unwrap()
}

fn header<'a>(r: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    r.set_headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn request_with_system_image_tools_and_history() {
    let f = fixture_json("converse-tools.request.json");
    let model = f["model"].as_str().unwrap();
    let p = provider();
    let r = translate(&f["openai"], model, false, &p);
    assert_eq!(r.path, f["path"].as_str().unwrap());
    assert_eq!(
        r.authority.as_deref(),
        Some("bedrock-runtime.us-east-1.amazonaws.com")
    );
    let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(body, f["converse"]);
    // The signature covers exactly the body and path sent: re-sign independently.
    let auth = header(&r, "authorization").unwrap();
    let signed = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            host: "bedrock-runtime.us-east-1.amazonaws.com",
            path: &r.path,
            query: &[],
            headers: &[("content-type", "application/json")],
            payload: r.body.as_deref().unwrap(),
            sign_content_sha256: true,
        },
        &sigv4::Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            session_token: None,
        },
        &sigv4::Scope {
            region: "us-east-1",
            service: "bedrock",
            unix_secs: 1_795_434_485,
        },
    );
    assert_eq!(auth, signed.authorization);
    assert!(auth.starts_with(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261123/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, Signature="
    ));
    assert_eq!(header(&r, "x-amz-date"), Some("20261123T114805Z"));
    assert_eq!(
        header(&r, "x-amz-content-sha256").map(str::to_string),
        Some(crate::crypto::hex(&crate::crypto::sha256(
            r.body.as_deref().unwrap()
        )))
    );
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert!(header(&r, "x-amz-security-token").is_none());
}

#[test]
fn streaming_path_arn_model_session_token_and_endpoint_override() {
    let mut p = provider();
    p.aws.session_token = Some(Secret::inline("IQoJb3JpZ2luX2VjEXAMPLE"));
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20241022-v2:0";
    let r = translate(
        &json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
        arn,
        true,
        &p,
    );
    assert_eq!(
        r.path,
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
    );
    assert_eq!(
        header(&r, "x-amz-security-token"),
        Some("IQoJb3JpZ2luX2VjEXAMPLE")
    );
    assert!(header(&r, "authorization").unwrap().contains(
        "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
    ));
    let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    );

    p.endpoint.authority = Some("127.0.0.1:8081".into());
    p.endpoint.base_path = Some("/bedrock".into());
    let r = translate(
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
        "amazon.nova-lite-v1:0",
        false,
        &p,
    );
    assert_eq!(r.path, "/bedrock/model/amazon.nova-lite-v1%3A0/converse");
    assert_eq!(r.authority.as_deref(), Some("127.0.0.1:8081"));
}

#[test]
fn tool_choice_variants_and_none() {
    let p = provider();
    let base = json!({
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
    });
    let choice = |c: Value| {
        let mut b = base.clone();
        b["tool_choice"] = c;
        let r = translate(&b, "m", false, &p);
        serde_json::from_slice::<Value>(r.body.as_deref().unwrap()).unwrap()
    };
    assert_eq!(
        choice(json!("auto"))["toolConfig"]["toolChoice"],
        json!({"auto": {}})
    );
    assert_eq!(
        choice(json!("required"))["toolConfig"]["toolChoice"],
        json!({"any": {}})
    );
    let unset = choice(Value::Null);
    assert_eq!(
        unset["toolConfig"]["tools"][0]["toolSpec"],
        json!({"name": "get_weather", "inputSchema": {"json": {"type": "object", "properties": {}}}})
    );
    assert!(unset["toolConfig"].get("toolChoice").is_none());
    assert!(choice(json!("none")).get("toolConfig").is_none());
}

#[test]
fn untranslatable_requests_are_400s_naming_the_field() {
    let p = provider();
    let ctx = RequestContext {
        provider: &p,
        model: "m",
        streaming: false,
        now_unix_ms: 1_795_434_485_000,
        client_path: "/v1/chat/completions",
    };
    let t = translator(ProviderKind::Bedrock);
    let err = |body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        t.translate_request(
            &ctx,
            &RequestBody {
                bytes: &bytes,
                root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
            },
        )
        .unwrap_err()
    };
    let e = err(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}));
    assert_eq!(e.status, 400);
    assert!(e.message.contains("data:image"), "{}", e.message);
    let e = err(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]}));
    assert!(e.message.contains("image/bmp"), "{}", e.message);
    let e = err(json!({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}));
    assert!(e.message.contains("\"c1\""), "{}", e.message);
    let e = err(json!({"messages": [{"role": "user", "content": "x"}], "n": 2}));
    assert!(e.message.starts_with("n: "), "{}", e.message);
    let e = err(json!({"messages": "nope"}));
    assert!(e.message.contains("messages"), "{}", e.message);
    // No model at all.
    let body = json!({"messages": []});
    let bytes = serde_json::to_vec(&body).unwrap();
    let no_model = RequestContext { model: "", ..ctx };
    let e = t
        .translate_request(
            &no_model,
            &RequestBody {
                bytes: &bytes,
                root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
            },
        )
        .unwrap_err();
    assert!(e.message.contains("model"), "{}", e.message);
    // No host clock: refuse rather than sign for 1970.
    let no_clock = RequestContext {
        now_unix_ms: 0,
        ..no_model
    };
    let no_clock = RequestContext {
        model: "m",
        ..no_clock
    };
    let e = t
        .translate_request(
            &no_clock,
            &RequestBody {
                bytes: &bytes,
                root: crate::dialect::doc::Doc::parse(&bytes).unwrap().root(),
            },
        )
        .unwrap_err();
    assert_eq!(e.status, 500);
    assert!(e.message.contains("clock"), "{}", e.message);
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
fn responses_text_with_cache_usage_and_tool_calls() {
    let p = provider();
    for name in ["converse-text.response.json", "converse-tool.response.json"] {
        let f = fixture_json(name);
        let body = serde_json::to_vec(&f["converse"]).unwrap();
        let out = crate::providers::written_as_read(
            &translator(ProviderKind::Bedrock)
                .answer(
                    &rctx(&p, "anthropic.claude-3-5-sonnet-20240620-v1:0"),
                    &body,
                )
                .unwrap(),
        );
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, f["openai"], "{name}");
    }
    let e = translator(ProviderKind::Bedrock)
        .translate_response(&rctx(&p, "m"), br#"{"unexpected": true}"#)
        .unwrap_err();
    assert_eq!(e.status, 502);
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (s, f) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        assert_eq!(finish_reason(s).as_str(), f, "{s}");
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
        let out = translator(ProviderKind::Bedrock).translate_error(status, &body);
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, c["openai"], "status {status}");
    }
}

/// The fixture's events as eventstream frames, the way Bedrock sends them.
fn frames(events: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events.as_array().unwrap() {
        let ty = e[0].as_str().unwrap();
        let payload = serde_json::to_vec(&e[1]).unwrap();
        if let Some(kind) = ty.strip_prefix("!exception:") {
            out.extend(encode(
                &[
                    (":exception-type", HeaderValue::String(kind.into())),
                    (
                        ":content-type",
                        HeaderValue::String("application/json".into()),
                    ),
                    (":message-type", HeaderValue::String("exception".into())),
                ],
                &payload,
            ));
        } else {
            out.extend(event_frame(ty, &payload));
        }
    }
    out
}

fn run_stream(p: &ProviderConfig, parts: &[&[u8]]) -> Vec<u8> {
    let mut st = translator(ProviderKind::Bedrock)
        .stream_translator(&rctx(p, "anthropic.claude-3-haiku-20240307-v1:0"));
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        st.on_chunk(part, i + 1 == parts.len(), &mut out);
    }
    out
}

/// SSE bytes → one JSON value (or `"[DONE]"`) per `data:` event, checking framing.
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
    for name in [
        "converse-stream-text",
        "converse-stream-tool",
        "converse-stream-exception",
    ] {
        let wire = frames(&fixture_json(&format!("{name}.events.json"))["events"]);
        let want = expected(&format!("{name}.expected.jsonl"));
        let whole = run_stream(&p, &[&wire]);
        assert_eq!(sse_events(&whole), want, "{name}");
        for i in 0..=wire.len() {
            let (a, b) = wire.split_at(i);
            assert_eq!(run_stream(&p, &[a, b]), whole, "{name} split at {i}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(run_stream(&p, &bytes), whole, "{name} byte by byte");
    }
}

#[test]
fn broken_or_cut_streams_never_claim_done() {
    let p = provider();
    let wire = frames(&fixture_json("converse-stream-text.events.json")["events"]);
    // A corrupted byte anywhere: an error event, never [DONE].
    for i in (0..wire.len()).step_by(7) {
        let mut bad = wire.clone();
        bad[i] ^= 0x20;
        let ev = sse_events(&run_stream(&p, &[&bad]));
        assert!(!ev.contains(&Value::String("[DONE]".into())), "byte {i}");
    }
    let mut bad = wire.clone();
    bad[20] ^= 1;
    let ev = sse_events(&run_stream(&p, &[&bad]));
    let msg = ev.last().unwrap()["error"]["message"].as_str().unwrap();
    assert!(msg.contains("CRC"), "{msg}");
    // Cut before messageStop: no [DONE]; cut after messageStop: [DONE] without usage.
    let events = fixture_json("converse-stream-text.events.json")["events"].clone();
    let arr = events.as_array().unwrap();
    let before_stop = frames(&Value::Array(arr[..4].to_vec()));
    let ev = sse_events(&run_stream(&p, &[&before_stop]));
    assert!(!ev.contains(&Value::String("[DONE]".into())));
    let after_stop = frames(&Value::Array(arr[..5].to_vec()));
    let ev = sse_events(&run_stream(&p, &[&after_stop]));
    assert_eq!(ev.last(), Some(&Value::String("[DONE]".into())));
    assert!(ev.iter().all(|e| e.get("usage").is_none()));
    // Cut in the middle of a frame: no [DONE].
    let ev = sse_events(&run_stream(&p, &[&wire[..wire.len() - 3]]));
    assert!(!ev.contains(&Value::String("[DONE]".into())));
}

#[test]
fn error_message_frames_become_openai_errors() {
    let p = provider();
    let frame = encode(
        &[
            (":message-type", HeaderValue::String("error".into())),
            (":error-code", HeaderValue::String("InternalFailure".into())),
            (
                ":error-message",
                HeaderValue::String("An internal error occurred".into()),
            ),
        ],
        b"",
    );
    let ev = sse_events(&run_stream(&p, &[&frame]));
    assert_eq!(
        ev,
        vec![
            json!({"error": {"message": "InternalFailure: An internal error occurred",
            "type": "server_error", "param": null, "code": null}})
        ]
    );
}

/// Output rules that hold for any input: every event is JSON or `[DONE]`, at most
/// one terminal event (`[DONE]` or an error), and nothing after it.
pub(crate) fn assert_well_formed(out: &[u8], what: &str) {
    let ev = sse_events(out);
    let terminal = ev
        .iter()
        .position(|e| e == &Value::String("[DONE]".into()) || e.get("error").is_some());
    if let Some(t) = terminal {
        assert_eq!(t + 1, ev.len(), "{what}: events after the terminal one");
    }
}

#[test]
fn hostile_streams_never_panic_and_stay_well_formed() {
    let p = provider();
    let mut rng = crate::testing::XorShift(0x9e37_79b9_7f4a_7c15);
    let good = frames(&fixture_json("converse-stream-tool.events.json")["events"]);
    for round in 0..300 {
        let mut wire = good.clone();
        // Flip a few bytes, and sometimes recompute nothing (CRC errors) or
        // truncate, or append garbage.
        for _ in 0..(rng.next_u64() % 4) {
            let i = (rng.next_u64() % wire.len() as u64) as usize;
            wire[i] = rng.next_u64() as u8;
        }
        if round % 3 == 0 {
            wire.truncate((rng.next_u64() % wire.len() as u64) as usize);
        }
        if round % 5 == 0 {
            wire.extend((0..(rng.next_u64() % 64)).map(|_| rng.next_u64() as u8));
        }
        // Random chunking.
        let mut parts = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = 1 + (rng.next_u64() % 97) as usize;
            let (a, b) = rest.split_at(n.min(rest.len()));
            parts.push(a);
            rest = b;
        }
        let out = run_stream(&p, &parts);
        assert_well_formed(&out, &format!("round {round}"));
    }
    // Valid frames with hostile JSON payloads.
    for payload in [
        &b"null"[..],
        b"[]",
        b"{\"delta\":{\"toolUse\":{\"input\":\"x\"}}}",
        b"{\"start\":{\"toolUse\":7}}",
        b"{\"contentBlockIndex\":-1,\"delta\":{\"text\":42}}",
        b"{\"usage\":\"lots\"}",
        b"\xff\xfe",
    ] {
        let mut wire = Vec::new();
        for ty in [
            "messageStart",
            "contentBlockStart",
            "contentBlockDelta",
            "messageStop",
            "metadata",
        ] {
            wire.extend(event_frame(ty, payload));
        }
        assert_well_formed(&run_stream(&p, &[&wire]), "hostile payload");
    }
}
