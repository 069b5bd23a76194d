//! Framework tests: config (secrets, paths, redaction), the normalised request view,
//! the OpenAI output builders, and the OpenAI-compatible and Azure rewrites.

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::dialect::doc::Doc;

fn route(cfg: &str) -> std::rc::Rc<crate::config::RouteSettings> {
    Config::parse(cfg.as_bytes()).unwrap().route(Some("r"))
}

fn err(cfg: &str) -> crate::config::ConfigError {
    Config::parse(cfg.as_bytes()).unwrap_err()
}

#[test]
fn provider_accepts_the_old_label_and_the_object_form() {
    let r = route(r#"{"routes":{"r":{"provider":"groq"}}}"#);
    assert_eq!(r.provider, "groq");
    assert!(r.upstream.is_none());
    let r = route(
        r#"{"routes":{"r":{"provider":{"kind":"anthropic","api_key":{"inline":"sk-1"},
            "model_map":{"fast":"claude-haiku-4-5"}}}}}"#,
    );
    assert_eq!(r.provider, "anthropic");
    let p = r.upstream.as_ref().unwrap();
    assert_eq!(p.kind, ProviderKind::Anthropic);
    assert_eq!(p.api_key.as_ref().unwrap().value(), "sk-1");
    assert_eq!(p.map_model("fast"), "claude-haiku-4-5");
    assert_eq!(p.map_model("claude-opus-4-1"), "claude-opus-4-1");
    let r = route(
        r#"{"routes":{"r":{"provider":{"kind":"openai_compatible","name":"mistral",
            "endpoint":{"authority":"api.mistral.ai"}}}}}"#,
    );
    assert_eq!(r.provider, "mistral");
}

#[test]
fn secrets_come_from_the_environment_and_never_print() {
    std::env::set_var("TOLLGATE_TEST_KEY_7781", "sk-from-env");
    let r = route(
        r#"{"routes":{"r":{"provider":{"kind":"anthropic","api_key":{"env":"TOLLGATE_TEST_KEY_7781"}}}}}"#,
    );
    let p = r.upstream.as_ref().unwrap();
    assert_eq!(p.api_key.as_ref().unwrap().value(), "sk-from-env");
    let dbg = format!("{r:?}");
    assert!(!dbg.contains("sk-from-env"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
    let r = route(
        r#"{"routes":{"r":{"provider":{"kind":"anthropic","api_key":{"inline":"sk-inline-9"}}}}}"#,
    );
    assert!(!format!("{r:?}").contains("sk-inline-9"));
}

#[test]
fn provider_config_errors_name_the_exact_path() {
    for (cfg, path) in [
        (
            r#"{"routes":{"r":{"provider":{"kind":"claude"}}}}"#,
            "routes.r.provider.kind",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","endpont":{}}}}}"#,
            "routes.r.provider.endpont",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","api_key":{"env":"TOLLGATE_SURELY_UNSET_1"}}}}}"#,
            "routes.r.provider.api_key.env",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","api_key":{}}}}}"#,
            "routes.r.provider.api_key",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","api_key":{"inline":"a\n"}}}}}"#,
            "routes.r.provider.api_key",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","anthropic":{"max_tokens_default":0}}}}}"#,
            "routes.r.provider.anthropic.max_tokens_default",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"openai_compatible"}}}}"#,
            "routes.r.provider.endpoint.authority",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"azure_openai","endpoint":{"authority":"x"},"azure":{"api_version":"a b"}}}}}"#,
            "routes.r.provider.azure.api_version",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","endpoint":{"authority":"https://x"}}}}}"#,
            "routes.r.provider.endpoint.authority",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","endpoint":{"base_path":"v1/"}}}}}"#,
            "routes.r.provider.endpoint.base_path",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","name":"a b"}}}}"#,
            "routes.r.provider.name",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"bedrock"}}}}"#,
            "routes.r.provider.aws.region",
        ),
        (
            r#"{"defaults":{"provider":{"kind":"anthropic","model_map":{"x":""}}}}"#,
            "defaults.provider.model_map",
        ),
        (r#"{"routes":{"r":{"provider":7}}}"#, "routes.r.provider"),
    ] {
        let e = err(cfg);
        assert_eq!(e.path, path, "{cfg}: {}", e.message);
    }
    // A secret's value never appears in an error either.
    let e = err(
        r#"{"routes":{"r":{"provider":{"kind":"anthropic","api_key":{"inline":"sk-x","env":"Y"}}}}}"#,
    );
    assert!(!e.to_string().contains("sk-x"));
}

#[test]
fn chat_request_normalises_content_shapes() {
    let v = json!({"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": "https://x/y.png"}]},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
        "stop": ["x", "y"], "max_tokens": 5, "max_completion_tokens": 7,
        "stream": true, "stream_options": {"include_usage": true}, "tool_choice": "auto"});
    let bytes = serde_json::to_vec(&v).unwrap();
    let r = ChatRequest::from_node(Doc::parse(&bytes).unwrap().root()).unwrap();
    assert_eq!(r.system, vec!["a\nb".to_string()]);
    assert_eq!(r.messages.len(), 3);
    assert_eq!(
        r.messages[0].content,
        vec![
            Part::Text("hi".into()),
            Part::Image(Image::Url("https://x/y.png".into()))
        ]
    );
    assert_eq!(r.messages[1].tool_calls[0].arguments, "{\"a\":1}");
    assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!(r.stop, vec!["x", "y"]);
    assert!(r.stream && r.include_usage);
    assert_eq!(r.tool_choice, ToolChoice::Auto);
    assert!(ChatRequest::from_node(
        Doc::parse(br#"{"messages": [{"role": "wizard"}]}"#)
            .unwrap()
            .root()
    )
    .unwrap_err()
    .message
    .contains("messages[0].role"));
}

#[test]
fn chunk_writer_emits_valid_openai_chunks_with_escaping() {
    let w = ChunkWriter::new("id\"1", "m\\x", 7);
    let mut out = Vec::new();
    w.role(&mut out);
    w.content(&mut out, "line\n\"quoted\"\u{1} é");
    w.tool_call_start(&mut out, 2, "call_1", "f");
    w.tool_call_args(&mut out, 2, "{\"a\":");
    w.finish(&mut out, FinishReason::Length);
    w.usage(
        &mut out,
        &Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_tokens: 1,
            ..Usage::default()
        },
    );
    ChunkWriter::done(&mut out);
    let text = String::from_utf8(out).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 7);
    assert_eq!(events[6], "data: [DONE]");
    let parsed: Vec<Value> = events[..6]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    for p in &parsed {
        assert_eq!(p["id"], "id\"1");
        assert_eq!(p["model"], "m\\x");
        assert_eq!(p["created"], 7);
        assert_eq!(p["object"], "chat.completion.chunk");
    }
    assert_eq!(
        parsed[1]["choices"][0]["delta"]["content"],
        "line\n\"quoted\"\u{1} é"
    );
    assert_eq!(
        parsed[2]["choices"][0]["delta"]["tool_calls"][0]["index"],
        2
    );
    assert_eq!(
        parsed[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":"
    );
    assert_eq!(parsed[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(parsed[5]["usage"]["total_tokens"], 7);
    assert_eq!(
        parsed[5]["usage"]["prompt_tokens_details"]["cached_tokens"],
        1
    );
}

fn ctx<'a>(p: &'a ProviderConfig, model: &'a str, path: &'a str) -> RequestContext<'a> {
    RequestContext {
        provider: p,
        model,
        streaming: false,
        now_unix_ms: 0,
        client_path: path,
    }
}

#[test]
fn openai_compatible_rewrites_path_auth_and_splices_the_model() {
    let mut p = ProviderConfig::new(ProviderKind::OpenAiCompatible);
    p.endpoint.authority = Some("api.groq.com".into());
    p.endpoint.base_path = Some("/openai/v1".into());
    p.api_key = Some(Secret::inline("gsk_1"));
    let body = br#"{ "model" : "fast", "messages":[{"role":"user","content":"hi \"model\""}]}"#;
    let r = openai_compat::OpenAiCompat
        .translate_request(
            &ctx(&p, "llama-3.1-8b-instant", "/gw/v1/chat/completions?x=1"),
            &RequestBody {
                bytes: body,
                root: Doc::parse(body).unwrap().root(),
            },
        )
        .unwrap();
    assert_eq!(r.path, "/openai/v1/chat/completions?x=1");
    assert_eq!(r.authority.as_deref(), Some("api.groq.com"));
    assert_eq!(
        r.set_headers,
        vec![("authorization".to_string(), "Bearer gsk_1".to_string())]
    );
    let out = r.body.unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{ "model" : "llama-3.1-8b-instant", "messages":[{"role":"user","content":"hi \"model\""}]}"#
    );
    // Same model: no new body.
    let r = openai_compat::OpenAiCompat
        .translate_request(
            &ctx(&p, "fast", "/v1/embeddings"),
            &RequestBody {
                bytes: body,
                root: Doc::parse(body).unwrap().root(),
            },
        )
        .unwrap();
    assert!(r.body.is_none());
    assert_eq!(r.path, "/openai/v1/embeddings");
}

#[test]
fn azure_puts_deployment_and_api_version_in_the_path() {
    let mut p = ProviderConfig::new(ProviderKind::AzureOpenAi);
    p.endpoint.authority = Some("res.openai.azure.com".into());
    p.api_key = Some(Secret::inline("k"));
    let r = azure::AzureOpenAi
        .translate_request(
            &ctx(&p, "gpt-4o-prod", "/v1/chat/completions"),
            &RequestBody {
                bytes: b"{}",
                root: Doc::parse(b"{}").unwrap().root(),
            },
        )
        .unwrap();
    assert_eq!(
        r.path,
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(
        r.set_headers,
        vec![("api-key".to_string(), "k".to_string())]
    );
    assert_eq!(r.remove_headers, vec!["authorization".to_string()]);
    let e = azure::AzureOpenAi
        .translate_request(
            &ctx(&p, "../x", "/v1/chat/completions"),
            &RequestBody {
                bytes: b"{}",
                root: Doc::parse(b"{}").unwrap().root(),
            },
        )
        .unwrap_err();
    assert_eq!(e.status, 400);
}

#[test]
fn generic_errors_keep_the_message() {
    let v: Value = serde_json::from_slice(&generic_error(
        429,
        br#"{"error":{"message":"Rate limit reached for model","type":"tokens"}}"#,
    ))
    .unwrap();
    assert_eq!(v["error"]["message"], "Rate limit reached for model");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let v: Value = serde_json::from_slice(&generic_error(503, b"")).unwrap();
    assert_eq!(v["error"]["message"], "upstream provider returned HTTP 503");
}

// ---------------------------------------------------------------------------
// The provider stage inside the sans-IO exchange: what the adapter is told.
// ---------------------------------------------------------------------------

use crate::metering::{BodyDecision, Exchange, HeadersDecision, ResponseMode};
use crate::usage::stream::Rewrite;

const CLAUDE: &str = r#"{"routes":{"claude":{"provider":{"kind":"anthropic",
    "api_key":{"inline":"sk-ant-x"},"endpoint":{"authority":"api.anthropic.com","cluster":"anthropic"},
    "model_map":{"fast":"claude-haiku-4-5"}}}}}"#;

fn claude_exchange(body: &[u8]) -> (Exchange, BodyDecision) {
    let c = Config::parse(CLAUDE.as_bytes()).unwrap();
    let mut ex = Exchange::new(c.route(Some("claude")), std::rc::Rc::from("claude"));
    assert_eq!(
        ex.on_request_headers("POST", "/claude/v1/chat/completions", None, false),
        HeadersDecision::WaitForBody
    );
    ex.set_clock(1_700_000_000_000);
    let d = ex.on_request_body(body);
    // The adapter runs admission and the clamp in between (none configured here).
    let d = ex.provider_stage(d, body);
    (ex, d)
}

#[test]
fn exchange_translates_request_headers_response_and_reports_openai_usage() {
    let (mut ex, d) = claude_exchange(
        br#"{"model":"fast","messages":[{"role":"system","content":"S"},{"role":"user","content":"Hi"}]}"#,
    );
    let BodyDecision::Replace(body) = d else {
        panic!("expected a translated body, got {d:?}")
    };
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["model"], "claude-haiku-4-5");
    assert_eq!(sent["system"], "S");
    let h = ex.take_upstream_headers().unwrap();
    assert_eq!(h.path, "/v1/messages");
    assert_eq!(h.authority.as_deref(), Some("api.anthropic.com"));
    assert!(h
        .set_headers
        .contains(&("x-tollgate-cluster".to_string(), "anthropic".to_string())));
    assert!(ex.take_upstream_headers().is_none(), "taken once");
    assert_eq!(
        ex.on_response_headers(200, Some("application/json"), Some(300)),
        ResponseMode::Translate
    );
    let (out, report) = ex.on_translated_response(
        br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001",
            "content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn",
            "usage":{"input_tokens":10,"cache_read_input_tokens":4,"cache_creation_input_tokens":1,"output_tokens":3}}"#,
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(v["created"], 1_700_000_000u64);
    let r = report.unwrap();
    assert_eq!(r.provider, "anthropic");
    assert_eq!(r.request_model.as_deref(), Some("claude-haiku-4-5"));
    assert_eq!(
        r.response_model.as_deref(),
        Some("claude-haiku-4-5-20251001")
    );
    assert_eq!(
        (
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
            r.usage.cached_tokens
        ),
        (15, 3, 4)
    );
}

#[test]
fn exchange_translates_errors_and_refuses_untranslatable_requests() {
    let (mut ex, _) =
        claude_exchange(br#"{"model":"fast","messages":[{"role":"user","content":"Hi"}]}"#);
    assert_eq!(
        ex.on_response_headers(429, Some("application/json"), None),
        ResponseMode::Translate
    );
    let (out, report) = ex.on_translated_response(
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["error"]["message"], "slow down");
    assert_eq!(
        report.unwrap().usage.prompt_tokens,
        0,
        "a refused request bills nothing"
    );

    let (_, d) = claude_exchange(
        br#"{"model":"fast","messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#,
    );
    let BodyDecision::Respond(r) = d else {
        panic!("expected a local reply")
    };
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("messages[0].content[0].type"));

    let c = Config::parse(CLAUDE.as_bytes()).unwrap();
    let mut ex = Exchange::new(c.route(Some("claude")), std::rc::Rc::from("claude"));
    assert!(matches!(
        ex.on_request_headers("POST", "/v1/embeddings", None, false),
        HeadersDecision::Respond(_)
    ));
}

#[test]
fn exchange_stream_is_translated_and_usage_hidden_unless_asked() {
    let sse = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hey\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    );
    for asked in [false, true] {
        let body = format!(
            r#"{{"model":"fast","stream":true,"stream_options":{{"include_usage":{asked}}},"messages":[{{"role":"user","content":"Hi"}}]}}"#
        );
        let (mut ex, _) = claude_exchange(body.as_bytes());
        assert_eq!(
            ex.on_response_headers(200, Some("text/event-stream"), None),
            ResponseMode::Stream
        );
        let mut client = Vec::new();
        for (i, piece) in sse.as_bytes().chunks(7).enumerate() {
            let last = (i + 1) * 7 >= sse.len();
            match ex.on_stream_chunk(piece, last) {
                Rewrite::Replace(b) => client.extend_from_slice(&b),
                Rewrite::Unchanged => panic!("translated streams are always rewritten"),
            }
        }
        let text = String::from_utf8(client).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains("\"content\":\"Hey\""));
        assert_eq!(text.contains("\"usage\":{"), asked, "{text}");
        let r = ex.finish().unwrap();
        assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (7, 2));
    }
}

#[test]
fn a_limit_refusal_is_not_translated_as_a_provider_error() {
    let cfg = r#"{"routes":{"claude":{"provider":{"kind":"anthropic"},
        "limits":{"rules":[{"name":"tiny","window":"1h","tokens":5}]}}}}"#;
    let c = Config::parse(cfg.as_bytes()).unwrap();
    let mut ex = Exchange::new(c.route(Some("claude")), std::rc::Rc::from("claude"));
    ex.on_request_headers("POST", "/v1/chat/completions", None, false);
    let d = ex
        .on_request_body(br#"{"model":"m","messages":[{"role":"user","content":"Hello there"}]}"#);
    // Translation is the last request stage: it has not run before admission.
    assert!(matches!(d, BodyDecision::Forward));
    let mut store = crate::limits::MemoryStore::default();
    let reply = ex.admit(&mut store, 1_000).expect("refused");
    assert_eq!(reply.status, 429);
    // The host runs the local reply through the response callbacks too.
    assert_ne!(
        ex.on_response_headers(429, Some("application/json"), None),
        ResponseMode::Translate
    );
}

#[test]
fn provider_routes_translate_with_metering_off_and_refuse_unreadable_bodies() {
    let cfg =
        r#"{"routes":{"claude":{"metering":{"enabled":false},"provider":{"kind":"anthropic"}}}}"#;
    let c = Config::parse(cfg.as_bytes()).unwrap();
    let mut ex = Exchange::new(c.route(Some("claude")), std::rc::Rc::from("claude"));
    assert_eq!(
        ex.on_request_headers("POST", "/v1/chat/completions", None, false),
        HeadersDecision::WaitForBody
    );
    let body = br#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#;
    let d = ex.on_request_body(body);
    let d = ex.provider_stage(d, body);
    assert!(matches!(d, BodyDecision::Replace(_)), "{d:?}");
    assert_eq!(ex.take_upstream_headers().unwrap().path, "/v1/messages");

    // invalid_body `pass` (the default) cannot forward an untranslatable body.
    let (_, d) = claude_exchange(b"{not json");
    let BodyDecision::Respond(r) = d else {
        panic!("expected a 400, got {d:?}")
    };
    assert_eq!(r.status, 400);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[test]
fn the_model_in_the_body_picks_the_provider() {
    let cfg = r#"{"routes":{"mixed":{
        "provider":{"kind":"openai_compatible","name":"groq","endpoint":{"authority":"api.groq.com","base_path":"/openai/v1"}},
        "providers":[
          {"kind":"anthropic","models":["claude-*","fast"],"model_map":{"fast":"claude-haiku-4-5"},
           "endpoint":{"authority":"api.anthropic.com","cluster":"anthropic"}}]}}}"#;
    let c = Config::parse(cfg.as_bytes()).unwrap();
    let run = |model: &str| {
        let mut ex = Exchange::new(c.route(Some("mixed")), std::rc::Rc::from("mixed"));
        assert_eq!(
            ex.on_request_headers("POST", "/v1/chat/completions", None, false),
            HeadersDecision::WaitForBody
        );
        assert!(ex.has_provider(), "the adapter must fetch the clock");
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Hi"}}]}}"#);
        let d = ex.on_request_body(body.as_bytes());
        ex.provider_stage(d, body.as_bytes());
        let h = ex.take_upstream_headers().unwrap();
        ex.on_response_headers(200, Some("application/json"), None);
        (h, ex)
    };
    let (h, _) = run("fast");
    assert_eq!(h.path, "/v1/messages");
    assert_eq!(h.authority.as_deref(), Some("api.anthropic.com"));
    let (h, _) = run("claude-opus-4-1");
    assert_eq!(h.path, "/v1/messages");
    let (h, mut ex) = run("llama-3.1-8b-instant");
    assert_eq!(h.path, "/openai/v1/chat/completions");
    assert_eq!(h.authority.as_deref(), Some("api.groq.com"));
    let r = ex
        .on_response_complete(Some(
            br#"{"model":"llama","usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        ))
        .unwrap();
    assert_eq!(r.provider, "groq");

    let e = err(r#"{"routes":{"r":{"providers":[{"kind":"anthropic"}]}}}"#);
    assert_eq!(e.path, "routes.r.providers[0].models");
    let e = err(r#"{"routes":{"r":{"providers":[{"kind":"anthropic","models":["a*b*"]}]}}}"#);
    assert_eq!(e.path, "routes.r.providers[0].models[0]");
    let e = err(r#"{"routes":{"r":{"providers":[{"kind":"nope","models":["x"]}]}}}"#);
    assert_eq!(e.path, "routes.r.providers[0].kind");
}

#[test]
fn json_strings_are_written_as_serde_json_reads_them() {
    // Every escape-needing byte at every offset, beside multi-byte text: what
    // push_json_str writes parses back to the same string.
    let specials = [
        "\"", "\\", "\n", "\r", "\t", "\u{1}", "\u{1f}", "é", "😀", "\u{7f}",
    ];
    for len in 0..20 {
        for k in 0..len {
            for sp in specials {
                let s: String = (0..len).map(|i| if i == k { sp } else { "a" }).collect();
                let mut out = String::new();
                push_json_str(&mut out, &s);
                let back: String = serde_json::from_str(&out).unwrap();
                assert_eq!(back, s, "{out}");
            }
        }
    }
}

#[test]
fn node_value_is_the_tree_serde_json_reads() {
    for body in [
        r#"{"type":"object","properties":{"q":{"type":"string","enum":["a","b\"c"]}},"required":["q"]}"#,
        r#"{"n":[0,-0,1.50,1e3,-2.5E-3,18446744073709551615,-9223372036854775808,12345678901234567890123]}"#,
        r#"{"k\u0065y":"v\u00e9\n","dup":1,"dup":2,"nested":[[[]],{},null,true,false]}"#,
        r#"["top", "level", {"array": 1}]"#,
    ] {
        let doc = Doc::parse(body.as_bytes()).unwrap();
        let want: Value = serde_json::from_str(body).unwrap();
        assert_eq!(node_value(doc.root()), want, "{body}");
    }
}
