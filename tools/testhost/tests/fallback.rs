//! Provider fallback on Kong, where tollgate makes the provider calls itself
//! (`dispatch_http_call` from the request body phase, the next call or a local
//! response from the call's answer), and on Envoy, where it leaves retries to the
//! host's route `retry_policy` (docs/providers.md "Fallback").
//!
//! Provider answers are written from the providers' API references: Anthropic's
//! Messages answer and `rate_limit_error`/`api_error`, and an OpenAI-compatible
//! (Groq) `chat.completion`.

use serde_json::json;
use testhost::{CallAnswer, Gateway, Mode, Outcome, Request, Response};

const CHAT: &str = "/v1/chat/completions";

const FALLBACK: &str = r#"{
  "defaults": {"provider": "openai"},
  "routes": {
    "claude": {"provider": {
      "kind": "anthropic", "api_key": {"inline": "sk-ant-primary"},
      "endpoint": {"authority": "api.anthropic.com"},
      "model_map": {"smart": "claude-sonnet-4-5"},
      "fallback": {
        "kind": "openai_compatible", "name": "groq", "api_key": {"inline": "gsk-fallback"},
        "endpoint": {"authority": "api.groq.com", "base_path": "/openai/v1", "timeout_ms": 60000},
        "model_map": {"smart": "llama-3.3-70b-versatile"}
      }
    }}
  }
}"#;

fn body(extra: serde_json::Value) -> String {
    let mut v = json!({"model": "smart", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Explain the importance of fast language models"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

fn request(extra: serde_json::Value) -> Request {
    Request::post_json(CHAT, &body(extra))
        .header("authorization", "Bearer client-key")
        .header("user-agent", "OpenAI/Python 1.99.9")
        .header("x-consumer-id", "team-a")
}

fn anthropic_429() -> CallAnswer {
    CallAnswer::json(
        429,
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage."},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
    )
    .header("retry-after", "17")
    .header("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy")
}

fn anthropic_message() -> &'static str {
    r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
        "content":[{"type":"thinking","thinking":"The user wants a short answer.","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
                   {"type":"text","text":"Fast models keep interactive apps responsive."}],
        "stop_reason":"end_turn","stop_sequence":null,
        "usage":{"input_tokens":21,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":37}}"#
}

const GROQ_COMPLETION: &str = r#"{"id":"chatcmpl-f51b2cd2-bef7-417e-964e-a08f0b513c22","object":"chat.completion","created":1730241104,"model":"llama-3.3-70b-versatile","choices":[{"index":0,"message":{"role":"assistant","content":"Fast language models matter because latency shapes every interaction."},"logprobs":null,"finish_reason":"stop"}],"usage":{"queue_time":0.037493756,"prompt_tokens":18,"prompt_time":0.000680594,"completion_tokens":556,"completion_time":0.463333333,"total_tokens":574,"total_time":0.464013927},"system_fingerprint":"fp_179b0f92c9","x_groq":{"id":"req_01jbd6g2qdfw2adyrt2az8hz4w"}}"#;

/// What the route's upstream (the Kong service) would answer: never reached when
/// tollgate relays, so it is a marker that must not show up.
fn upstream_never() -> Response {
    Response::json(599, r#"{"marker":"the host's own upstream"}"#)
}

fn clean(o: &Outcome) {
    assert!(o.violations.is_empty(), "{:#?}", o.violations);
}

/// A token counter, after the workers' tick wrote the batched counts.
fn tokens(gw: &mut Gateway, dir: &str, provider: &str) -> i64 {
    gw.tick();
    gw.shared.metric_sum(&[
        &format!("gen_ai_token_type.{dir}."),
        "route.claude.",
        &format!("gen_ai_provider_name.{provider}"),
    ])
}

#[test]
fn kong_429_goes_to_the_fallback_translated_for_it_and_its_answer_is_relayed() {
    let mut gw = Gateway::tollgate(Mode::Kong, FALLBACK, 1);
    assert!(gw.vms[0].configured, "{:?}", gw.vms[0].logs());
    gw.vms[0].queue_http_call_answers(vec![
        anthropic_429(),
        CallAnswer::json(200, GROQ_COMPLETION).header("x-request-id", "req_01jbd6g2"),
    ]);
    let o = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&o);
    assert!(
        o.local_reply && o.upstream_request.is_none(),
        "relayed by tollgate"
    );
    assert_eq!(o.status, 200);
    assert_eq!(o.http_calls.len(), 2, "{:#?}", o.http_calls);

    // First call: translated for Anthropic, its key, from the request body phase.
    let a = &o.http_calls[0];
    assert_eq!(a.phase, "RequestBody");
    assert_eq!(a.upstream, "api.anthropic.com:443");
    assert_eq!(a.header(":method"), Some("POST"));
    assert_eq!(a.header(":path"), Some("/v1/messages"));
    assert_eq!(a.header(":authority"), Some("api.anthropic.com"));
    assert_eq!(a.header(":scheme"), Some("https"));
    assert_eq!(a.header("x-api-key"), Some("sk-ant-primary"));
    assert_eq!(a.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        a.header("authorization"),
        None,
        "the client's key stays home"
    );
    assert_eq!(
        a.header("accept-encoding"),
        None,
        "answers must come back readable"
    );
    assert_eq!(a.header("x-consumer-id"), Some("team-a"));
    assert_eq!(a.timeout_ms, 300_000);
    assert_eq!(a.json()["model"], "claude-sonnet-4-5");
    assert_eq!(a.json()["system"], "Be brief.");

    // Second call: translated again, from the client's body, for the fallback.
    let g = &o.http_calls[1];
    assert_eq!(g.upstream, "api.groq.com:443");
    assert_eq!(g.header(":path"), Some("/openai/v1/chat/completions"));
    assert_eq!(g.header(":authority"), Some("api.groq.com"));
    assert_eq!(g.header("authorization"), Some("Bearer gsk-fallback"));
    assert_eq!(
        g.header("x-api-key"),
        None,
        "the first provider's key is not sent on"
    );
    assert_eq!(g.header("anthropic-version"), None);
    assert_eq!(g.timeout_ms, 60_000);
    let sent = g.json();
    assert_eq!(sent["model"], "llama-3.3-70b-versatile");
    assert_eq!(
        sent["messages"][1]["content"],
        "Explain the importance of fast language models"
    );

    // The client gets the fallback's answer (already OpenAI's shape), with
    // metering's headers, which Kong otherwise cannot add.
    let v = o.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Fast language models matter because latency shapes every interaction."
    );
    assert_eq!(o.header("content-type"), Some("application/json"));
    assert_eq!(o.header("x-tollgate-fallback"), Some("anthropic 429"));
    assert_eq!(o.header("x-request-id"), Some("req_01jbd6g2"));
    assert_eq!(o.header("x-llm-prompt-tokens"), Some("18"));
    assert_eq!(o.header("x-llm-completion-tokens"), Some("556"));
    assert_eq!(o.header("x-llm-model"), Some("llama-3.3-70b-versatile"));
    assert_eq!(tokens(&mut gw, "input", "groq"), 18);
    assert_eq!(tokens(&mut gw, "output", "groq"), 556);
    assert_eq!(tokens(&mut gw, "output", "anthropic"), 0);
    assert!(gw.vms[0]
        .logs()
        .iter()
        .any(|(_, l)| l.contains("tollgate.fallback") && l.contains("\"to\":\"groq\"")));
}

#[test]
fn kong_first_answer_is_translated_and_relayed_without_fallback() {
    let mut gw = Gateway::tollgate(Mode::Kong, FALLBACK, 1);
    gw.vms[0].queue_http_call_answers(vec![CallAnswer::json(200, anthropic_message())]);
    let o = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&o);
    assert_eq!(o.status, 200);
    assert_eq!(o.http_calls.len(), 1);
    let v = o.json();
    assert_eq!(v["object"], "chat.completion");
    let m = &v["choices"][0]["message"];
    assert_eq!(
        m["content"],
        "Fast models keep interactive apps responsive."
    );
    assert_eq!(m["reasoning_content"], "The user wants a short answer.");
    assert_eq!(v["usage"]["prompt_tokens"], 21);
    assert_eq!(o.header("x-tollgate-fallback"), None);
    assert_eq!(o.header("x-llm-total-tokens"), Some("58"));
    assert_eq!(tokens(&mut gw, "output", "anthropic"), 37);
    assert_eq!(tokens(&mut gw, "output", "groq"), 0);
}

#[test]
fn kong_both_failing_relays_the_fallbacks_error_and_client_errors_are_not_retried() {
    let mut gw = Gateway::tollgate(Mode::Kong, FALLBACK, 1);
    gw.vms[0].queue_http_call_answers(vec![
        CallAnswer::json(
            500,
            r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
        ),
        CallAnswer::json(
            503,
            r#"{"error":{"message":"Service Unavailable","type":"internal_server_error"}}"#,
        )
        .header("retry-after", "4"),
    ]);
    let o = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&o);
    assert_eq!(o.status, 503);
    assert_eq!(o.http_calls.len(), 2, "one retry, no more");
    assert_eq!(o.json()["error"]["message"], "Service Unavailable");
    assert_eq!(o.header("retry-after"), Some("4"));
    assert_eq!(o.header("x-tollgate-fallback"), Some("anthropic 500"));

    // A 400 is the client's mistake: the same request would fail anywhere.
    gw.vms[0].queue_http_call_answers(vec![CallAnswer::json(
        400,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#,
    )]);
    let o = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&o);
    assert_eq!(o.status, 400);
    assert_eq!(o.http_calls.len(), 1);
    let e = o.json();
    assert_eq!(e["error"]["message"], "messages: roles must alternate");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(o.header("x-tollgate-fallback"), None);
}

#[test]
fn kong_streaming_requests_go_the_normal_way_without_fallback() {
    let mut gw = Gateway::tollgate(Mode::Kong, FALLBACK, 1);
    gw.vms[0].queue_http_call_answers(vec![anthropic_429()]);
    let sse = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":21,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let o = gw.send(
        0,
        "claude",
        &request(json!({"stream": true})),
        &Response::sse(&[sse]),
    );
    clean(&o);
    assert!(o.http_calls.is_empty(), "{:?}", o.http_calls);
    assert_eq!(o.upstream_header(":path"), Some("/v1/messages"));
    assert_eq!(o.upstream_header("x-api-key"), Some("sk-ant-primary"));
    let text = String::from_utf8(o.body.clone()).unwrap();
    assert!(text.contains("\"content\":\"Hi\"") && text.ends_with("data: [DONE]\n\n"));
    assert_eq!(tokens(&mut gw, "output", "anthropic"), 2);
}

#[test]
fn kong_call_failing_without_an_answer_leaves_the_request_to_the_host() {
    // ngx_wasm_module: "dispatch failed", no callback, the request resumes as it
    // stands: rewritten for the first provider, to the Kong service.
    let mut gw = Gateway::tollgate(Mode::Kong, FALLBACK, 1);
    gw.vms[0].queue_http_call_answers(vec![CallAnswer::failed()]);
    let o = gw.send(
        0,
        "claude",
        &request(json!({})),
        &Response::json(200, anthropic_message()),
    );
    clean(&o);
    assert_eq!(o.http_calls.len(), 1);
    assert!(!o.local_reply);
    assert_eq!(o.upstream_header(":path"), Some("/v1/messages"));
    assert_eq!(o.upstream_header("x-api-key"), Some("sk-ant-primary"));
    assert_eq!(
        o.json()["choices"][0]["message"]["content"],
        "Fast models keep interactive apps responsive.",
        "translated the usual way"
    );
    assert_eq!(tokens(&mut gw, "output", "anthropic"), 37);
    assert!(gw.vms[0]
        .logs()
        .iter()
        .any(|(_, l)| l.contains("no fallback for it")));
}

#[test]
fn envoy_leaves_fallback_to_the_hosts_retry_policy() {
    let mut gw = Gateway::tollgate(Mode::Envoy, FALLBACK, 1);
    gw.vms[0].queue_http_call_answers(vec![anthropic_429()]);
    for _ in 0..2 {
        let o = gw.send(
            0,
            "claude",
            &request(json!({})),
            &Response::json(200, anthropic_message()),
        );
        clean(&o);
        assert!(o.http_calls.is_empty());
        assert_eq!(o.upstream_header(":path"), Some("/v1/messages"));
        assert_eq!(
            o.json()["choices"][0]["message"]["content"],
            "Fast models keep interactive apps responsive."
        );
    }
    let warned = gw.vms[0]
        .logs()
        .iter()
        .filter(|(_, l)| l.contains("carried out on Kong only"))
        .count();
    assert_eq!(warned, 1, "said once per VM");
}

const FALLBACK_LIMITS: &str = r#"{
  "defaults": {"provider": "openai"},
  "routes": {
    "claude": {
      "limits": {
        "mode": "enforce", "consumer": {"header": "x-consumer-id"},
        "reserve_max_tokens_default": 16,
        "rules": [{"name": "per-consumer", "key": ["consumer"], "window": "1m", "tokens": 5000, "count": "total"}]
      },
      "provider": {
        "kind": "anthropic", "api_key": {"inline": "sk-ant-primary"},
        "endpoint": {"address": "10.0.0.5:8443", "authority": "api.anthropic.com"},
        "fallback": {"kind": "openai_compatible", "name": "groq",
                     "endpoint": {"address": "10.0.0.6:8080", "authority": "api.groq.com", "tls": false}}
      }
    }
  }
}"#;

#[test]
fn kong_relayed_answers_settle_the_local_limits_with_the_real_usage() {
    let mut gw = Gateway::tollgate(Mode::Kong, FALLBACK_LIMITS, 1);
    assert!(gw.vms[0].configured, "{:?}", gw.vms[0].logs());
    gw.vms[0].queue_http_call_answers(vec![
        anthropic_429(),
        CallAnswer::json(200, GROQ_COMPLETION),
        CallAnswer::json(200, anthropic_message()),
    ]);
    let first = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&first);
    assert_eq!(first.http_calls[0].upstream, "10.0.0.5:8443");
    assert_eq!(first.http_calls[1].upstream, "10.0.0.6:8080");
    assert_eq!(first.http_calls[1].header(":scheme"), Some("http"));
    assert_eq!(
        first.http_calls[1].header("authorization"),
        Some("Bearer client-key"),
        "no api_key on the fallback: the client's own goes through"
    );
    let left = |o: &Outcome| -> u64 {
        o.header("x-ratelimit-remaining-tokens")
            .unwrap_or_else(|| panic!("{:?}", o.headers))
            .parse()
            .unwrap()
    };
    let second = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&second);
    assert_eq!(second.http_calls.len(), 1);
    // Each admission charges the same estimate; between the two, the first
    // exchange was trued up to what the fallback billed: 18 + 556.
    assert_eq!(left(&first) - left(&second), 18 + 556);
}

const FALLBACK_GLOBAL: &str = r#"{
  "defaults": {"provider": "openai"},
  "routes": {
    "claude": {
      "limits": {
        "consumer": {"header": "x-consumer-id"},
        "reserve_max_tokens_default": 16,
        "global": {"mode": "http", "cluster": "127.0.0.1:8080", "path": "/check_and_report",
                   "domain": "llm", "timeout_ms": 150,
                   "descriptors": [{"key": "consumer", "from": "consumer"}]}
      },
      "provider": {
        "kind": "anthropic", "api_key": {"inline": "sk-ant-primary"},
        "endpoint": {"authority": "api.anthropic.com"},
        "fallback": {"kind": "openai_compatible", "name": "groq", "api_key": {"inline": "gsk-fallback"},
                     "endpoint": {"authority": "api.groq.com", "base_path": "/openai/v1"}}
      }
    }
  }
}"#;

#[test]
fn kong_shared_limit_admission_comes_before_the_provider_calls() {
    let mut gw = Gateway::tollgate(Mode::Kong, FALLBACK_GLOBAL, 1);
    assert!(gw.vms[0].configured, "{:?}", gw.vms[0].logs());
    gw.vms[0].queue_http_call_answers(vec![
        CallAnswer::status(200)
            .header("x-ratelimit-limit", "5000, 5000;w=60")
            .header("x-ratelimit-remaining", "4000")
            .header("x-ratelimit-reset", "30"),
        anthropic_429(),
        CallAnswer::json(200, GROQ_COMPLETION),
    ]);
    let o = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&o);
    let to: Vec<&str> = o.http_calls.iter().map(|c| c.upstream.as_str()).collect();
    assert_eq!(
        to,
        vec![
            "127.0.0.1:8080",
            "api.anthropic.com:443",
            "api.groq.com:443"
        ]
    );
    assert_eq!(o.status, 200);
    assert_eq!(o.header("x-tollgate-fallback"), Some("anthropic 429"));
    assert_eq!(o.header("x-ratelimit-remaining-tokens"), Some("4000"));
    // The true-up for what the fallback billed leaves on the tick.
    gw.vms[0].answer_http_calls(Some(CallAnswer::status(200)));
    gw.vms[0].tick().unwrap();
    let ups = gw.vms[0].take_http_calls();
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert_eq!(ups[0].phase, "Tick");
    let admitted = o.http_calls[0].json()["delta"].as_u64().unwrap();
    assert_eq!(
        ups[0].json()["delta"].as_u64().unwrap(),
        18 + 556 - admitted,
        "charged up to the fallback's bill"
    );

    // Refused by the shared limit: no provider is called at all.
    gw.vms[0].queue_http_call_answers(vec![CallAnswer::status(429)
        .header("x-ratelimit-limit", "5000, 5000;w=60")
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", "30")]);
    let o = gw.send(0, "claude", &request(json!({})), &upstream_never());
    clean(&o);
    assert_eq!(o.status, 429);
    assert_eq!(o.http_calls.len(), 1);
}

#[test]
fn fallback_config_mistakes_are_refused_at_configure() {
    for (cfg, _why) in [
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","fallback":{"kind":"openai","endpoint":{"authority":"api.openai.com"}}}}}}"#,
            "the first provider has nothing to dial",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","endpoint":{"authority":"a"},"fallback":{"kind":"openai","endpoint":{"authority":"b"},"fallback":{"kind":"openai","endpoint":{"authority":"c"}}}}}}}"#,
            "one fallback only",
        ),
        (
            r#"{"routes":{"r":{"provider":{"kind":"anthropic","endpoint":{"address":"no-port"}}}}}"#,
            "address without a port",
        ),
    ] {
        let gw = Gateway::tollgate(Mode::Kong, cfg, 1);
        assert!(!gw.vms[0].configured, "{cfg}");
    }
}
