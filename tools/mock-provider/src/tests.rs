//! Handler tests: wire shapes, usage arithmetic, bad input.

use super::*;

fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
    Request {
        method: method.into(),
        target: path.into(),
        version: "HTTP/1.1".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

fn full(r: Reply) -> (u16, Value) {
    match r {
        Reply::Full { status, body, .. } => {
            (status, serde_json::from_str(&body).expect("json body"))
        }
        Reply::Stream { .. } => panic!("expected a full reply"),
    }
}

fn stream(r: Reply) -> Vec<String> {
    match r {
        Reply::Stream { events, .. } => events,
        Reply::Full { status, body, .. } => panic!("expected a stream, got {status} {body}"),
    }
}

fn datas(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str(&d).unwrap())
        .collect()
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello, how are you?"}]}"#;

#[test]
fn chat_non_stream_shape_and_usage() {
    let (s, v) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-reply-words", "10")],
        CHAT,
    )));
    assert_eq!(s, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split_whitespace().count(), 10);
    let u = &v["usage"];
    // 3 + (3 + system + "Be brief.") + (3 + user + "Hello, how are you?")
    let expect = 3
        + 3
        + text::count("gpt-4o", "system")
        + text::count("gpt-4o", "Be brief.")
        + 3
        + text::count("gpt-4o", "user")
        + text::count("gpt-4o", "Hello, how are you?");
    assert_eq!(u["prompt_tokens"], expect);
    assert_eq!(u["completion_tokens"], text::count("gpt-4o", content));
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 0);
    // Deterministic.
    let (_, v2) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-reply-words", "10")],
        CHAT,
    )));
    assert_eq!(v2["choices"][0]["message"]["content"], content);
}

#[test]
fn chat_stream_with_and_without_usage() {
    let body = CHAT.replace(
        "\"gpt-4o\",",
        "\"gpt-4o\",\"stream\":true,\"stream_options\":{\"include_usage\":true},",
    );
    let ev = stream(dispatch(&req("POST", "/v1/chat/completions", &[], &body)));
    assert_eq!(ev.last().unwrap(), "data: [DONE]\n\n");
    let d = datas(&ev);
    assert!(d[..d.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    let last = d.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    let text: String = d
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        last["usage"]["completion_tokens"],
        text::count("gpt-4o", &text)
    );
    assert_eq!(d[d.len() - 2]["choices"][0]["finish_reason"], "stop");

    let body = CHAT.replace("\"gpt-4o\",", "\"gpt-4o\",\"stream\":true,");
    let d = datas(&stream(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[],
        &body,
    ))));
    assert!(d.iter().all(|c| c.get("usage").is_none()));
    // Same reply text whether streamed or not.
    let (_, nv) = full(dispatch(&req("POST", "/v1/chat/completions", &[], CHAT)));
    let streamed: String = d
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(nv["choices"][0]["message"]["content"], streamed.as_str());
}

#[test]
fn chat_tools_stream_and_non_stream() {
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"weather?"}],
      "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]}"#;
    let (_, v) = full(dispatch(&req("POST", "/v1/chat/completions", &[], body)));
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());

    let sbody = body.replacen(
        '{',
        "{\"stream\":true,\"stream_options\":{\"include_usage\":true},",
        1,
    );
    let d = datas(&stream(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[],
        &sbody,
    ))));
    let joined: String = d
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let a2: Value = serde_json::from_str(&joined).unwrap();
    assert!(a2["city"].is_string());
    assert!(d.len() > 4);
    assert!(
        d.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn controls_no_usage_cached_reasoning_status() {
    let (_, v) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-no-usage", "1")],
        CHAT,
    )));
    assert!(v.get("usage").is_none());
    let (_, v) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[
            ("x-mock-cached-tokens", "5"),
            ("x-mock-reasoning-tokens", "7"),
        ],
        CHAT,
    )));
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        7
    );
    let (s, v) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-status", "429")],
        CHAT,
    )));
    assert_eq!(s, 429);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let (s, v) = full(dispatch(&req(
        "POST",
        "/v1/messages",
        &[("x-mock-status", "500")],
        "{}",
    )));
    assert_eq!(s, 500);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let (s, _) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-status", "200")],
        CHAT,
    )));
    assert_eq!(s, 400);
}

#[test]
fn bad_input_gives_provider_shaped_400() {
    for (path, body) in [
        ("/v1/chat/completions", "not json"),
        ("/v1/chat/completions", "[]"),
        ("/v1/chat/completions", r#"{"model":"gpt-4o"}"#),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[1,2]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
        ),
        ("/v1/completions", r#"{"model":"m","prompt":{}}"#),
        (
            "/v1/embeddings",
            r#"{"model":"m","input":"x","dimensions":-1}"#,
        ),
        (
            "/v1/embeddings",
            r#"{"model":"m","input":"x","encoding_format":"nope"}"#,
        ),
        ("/v1/responses", r#"{"model":"m"}"#),
    ] {
        let (s, v) = full(dispatch(&req("POST", path, &[], body)));
        assert_eq!(s, 400, "{path} {body}");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    for body in [
        "{",
        r#"{"model":"claude"}"#,
        r#"{"model":"claude","max_tokens":10}"#,
        r#"{"model":"claude","max_tokens":10,"messages":[{"role":"system","content":"x"}]}"#,
        r#"{"model":"claude","max_tokens":"x","messages":[]}"#,
    ] {
        let (s, v) = full(dispatch(&req("POST", "/v1/messages", &[], body)));
        assert_eq!(s, 400, "{body}");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let (s, _) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-reply-words", "lots")],
        CHAT,
    )));
    assert_eq!(s, 400);
    let (s, _) = full(dispatch(&req("POST", "/v1/nope", &[], "{}")));
    assert_eq!(s, 404);
    let (s, _) = full(dispatch(&req("GET", "/v1/chat/completions", &[], "")));
    assert_eq!(s, 405);
}

#[test]
fn completions_and_embeddings() {
    let body = r#"{"model":"babbage-002","prompt":"def fib(n):","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#;
    let d = datas(&stream(dispatch(&req(
        "POST",
        "/v1/completions",
        &[],
        body,
    ))));
    let last = d.last().unwrap();
    assert_eq!(
        last["usage"]["prompt_tokens"],
        text::count("babbage-002", "def fib(n):")
    );
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() <= 5);
    assert_eq!(d[d.len() - 2]["choices"][0]["finish_reason"], "length");

    let (_, v) = full(dispatch(&req(
        "POST",
        "/v1/embeddings",
        &[],
        r#"{"model":"text-embedding-3-small","input":["a b","c"],"dimensions":4}"#,
    )));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let (_, v) = full(dispatch(&req(
        "POST",
        "/v1/embeddings",
        &[],
        r#"{"model":"text-embedding-3-small","input":[1,2,3],"encoding_format":"base64"}"#,
    )));
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 44); // 8 f32 = 32 bytes
}

#[test]
fn responses_stream_and_non_stream() {
    let body = r#"{"model":"gpt-4o","instructions":"Be nice.","input":"Tell me a joke"}"#;
    let (_, v) = full(dispatch(&req("POST", "/v1/responses", &[], body)));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(v["usage"]["output_tokens"], text::count("gpt-4o", text));
    let sb = body.replacen('{', "{\"stream\":true,", 1);
    let ev = stream(dispatch(&req("POST", "/v1/responses", &[], &sb)));
    assert!(ev[0].starts_with("event: response.created\ndata: "));
    let d = datas(&ev);
    let done = d.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["usage"], v["usage"]);
    let seqs: Vec<u64> = d
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..d.len() as u64).collect::<Vec<_>>());
}

#[test]
fn anthropic_messages() {
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"system":"Be brief.","messages":[{"role":"user","content":"Hi"}]}"#;
    let (_, v) = full(dispatch(&req(
        "POST",
        "/v1/messages",
        &[("x-mock-cached-tokens", "2")],
        body,
    )));
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "end_turn");
    let prompt =
        anthropic::prompt_tokens("claude-sonnet-4-5", &serde_json::from_str(body).unwrap());
    assert_eq!(v["usage"]["input_tokens"].as_u64().unwrap() + 2, prompt);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 2);
    let text = v["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        v["usage"]["output_tokens"],
        text::count("claude-sonnet-4-5", text)
    );

    let sb = body.replacen('{', "{\"stream\":true,", 1);
    let ev = stream(dispatch(&req("POST", "/v1/messages", &[], &sb)));
    let kinds: Vec<&str> = ev.iter().map(|e| e.lines().next().unwrap()).collect();
    assert_eq!(
        kinds[..3],
        [
            "event: message_start",
            "event: content_block_start",
            "event: ping"
        ]
    );
    assert_eq!(
        kinds[kinds.len() - 3..],
        [
            "event: content_block_stop",
            "event: message_delta",
            "event: message_stop"
        ]
    );
    let d = datas(&ev);
    assert_eq!(d[0]["message"]["usage"]["input_tokens"], prompt);
    let streamed: String = d
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(
        d[d.len() - 2]["usage"]["output_tokens"],
        v["usage"]["output_tokens"]
    );

    let ev = stream(dispatch(&req(
        "POST",
        "/v1/messages",
        &[("x-mock-no-usage", "1")],
        &sb,
    )));
    assert!(datas(&ev)
        .iter()
        .all(|e| e.get("usage").is_none() && e["message"].get("usage").is_none()));

    let tb = r#"{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"w"}],
       "tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}]}"#;
    let d = datas(&stream(dispatch(&req("POST", "/v1/messages", &[], tb))));
    assert_eq!(d[1]["content_block"]["type"], "tool_use");
    let json: String = d
        .iter()
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert!(serde_json::from_str::<Value>(&json).unwrap()["city"].is_string());
    assert_eq!(d[d.len() - 2]["delta"]["stop_reason"], "tool_use");
}

#[test]
fn anthropic_extended_thinking() {
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":3000,"thinking":{"type":"enabled","budget_tokens":2048},"messages":[{"role":"user","content":"27 * 453?"}]}"#;
    let (s, v) = full(dispatch(&req(
        "POST",
        "/v1/messages",
        &[("x-mock-redacted-thinking", "1")],
        body,
    )));
    assert_eq!(s, 200);
    let c = v["content"].as_array().unwrap();
    assert_eq!(c[0]["type"], "thinking");
    assert!(c[0]["signature"].as_str().unwrap().starts_with("EqQB"));
    assert_eq!(c[1]["type"], "redacted_thinking");
    assert_eq!(c[2]["type"], "text");
    let billed = text::count("claude-sonnet-4-5", c[0]["thinking"].as_str().unwrap())
        + text::count("claude-sonnet-4-5", c[2]["text"].as_str().unwrap());
    assert_eq!(v["usage"]["output_tokens"], billed);

    let sb = body.replacen('{', "{\"stream\":true,", 1);
    let d = datas(&stream(dispatch(&req("POST", "/v1/messages", &[], &sb))));
    assert_eq!(d[1]["content_block"]["type"], "thinking");
    let thought: String = d
        .iter()
        .filter_map(|e| e["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thought, c[0]["thinking"].as_str().unwrap());
    assert!(d
        .iter()
        .any(|e| e["delta"]["type"] == "signature_delta" && e["index"] == 0));
    assert!(d
        .iter()
        .any(|e| e["delta"]["type"] == "text_delta" && e["index"] == 1));

    // The API's checks: budget floor, budget below max_tokens, no forced tools.
    for (b, needle) in [
        (
            r#"{"model":"m","max_tokens":3000,"thinking":{"type":"enabled","budget_tokens":512},"messages":[{"role":"user","content":"x"}]}"#,
            "greater than or equal to 1024",
        ),
        (
            r#"{"model":"m","max_tokens":2048,"thinking":{"type":"enabled","budget_tokens":2048},"messages":[{"role":"user","content":"x"}]}"#,
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            r#"{"model":"m","max_tokens":3000,"thinking":{"type":"enabled","budget_tokens":1024},"tool_choice":{"type":"any"},"tools":[{"name":"t","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"x"}]}"#,
            "forces tool use",
        ),
    ] {
        let (s, v) = full(dispatch(&req("POST", "/v1/messages", &[], b)));
        assert_eq!(s, 400);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
}

#[test]
fn last_request_is_recorded() {
    let _ = dispatch(&req(
        "POST",
        "/v1/chat/completions?x=1",
        &[("x-test-marker", "abc")],
        CHAT,
    ));
    let (s, v) = full(dispatch(&req("GET", "/_mock/requests", &[], "")));
    assert_eq!(s, 200);
    let found = v.as_array().unwrap().iter().any(|r| {
        r["headers"]["x-test-marker"] == "abc"
            && r["path"] == "/v1/chat/completions?x=1"
            && r["body"] == CHAT
    });
    assert!(found);
}

#[test]
fn echo_and_scripted_replies_for_chat_and_responses() {
    // Chat: scripted text, repeated one per line.
    let (_, v) = full(dispatch(&req(
        "POST",
        "/v1/chat/completions",
        &[
            ("x-mock-reply-text", "mail a@b.example"),
            ("x-mock-reply-repeat", "3"),
        ],
        CHAT,
    )));
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mail a@b.example\nmail a@b.example\nmail a@b.example"
    );
    // Responses: echo of the last user input, streamed 4 characters per delta.
    let body = r#"{"model":"gpt-4o","stream":true,"input":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},{"role":"user","content":[{"type":"input_text","text":"Hi <EMAIL_1>!"}]}]}"#;
    let events = stream(dispatch(&req(
        "POST",
        "/v1/responses",
        &[("x-mock-echo", "1")],
        body,
    )));
    let deltas: Vec<String> = datas(&events)
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, ["Hi <", "EMAI", "L_1>", "!"]);
    let (_, v) = full(dispatch(&req(
        "POST",
        "/v1/responses",
        &[("x-mock-echo", "1"), ("x-mock-reply-repeat", "2")],
        r#"{"model":"gpt-4o","input":"echo me"}"#,
    )));
    assert_eq!(v["output"][0]["content"][0]["text"], "echo me\necho me");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() >= 4);
}
