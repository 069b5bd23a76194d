use super::*;
use crate::config::Config;

fn engine(pii: serde_json::Value) -> Rc<Engine> {
    let cfg = serde_json::json!({"defaults": {"pii": pii}});
    let c = Config::parse(cfg.to_string().as_bytes()).expect("config");
    let engine = c.route(None).pii.engine().expect("engine").clone();
    engine
}

fn exchange(pii: serde_json::Value, api: Api) -> PiiExchange {
    PiiExchange::new(engine(pii), api)
}

fn all(action: &str) -> serde_json::Value {
    let mut d = serde_json::Map::new();
    for n in config::Detectors::NAMES {
        d.insert(n.to_string(), action.into());
    }
    serde_json::json!({"enabled": true, "detectors": d, "hash_key": "0123456789abcdef-test-key"})
}

/// (detector, value) pairs every detector must find in running text.
const POSITIVES: &[(&str, &str)] = &[
    ("email", "jane.doe+tag@mail.example.co.uk"),
    ("phone", "+1 415-555-2671"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "(415) 555-2671"),
    ("phone", "030 12345678"),
    ("phone", "+49 (0)30 1234567"),
    ("phone", "(0117)4960211"),
    ("credit_card", "4111 1111 1111 1111"),
    ("credit_card", "378282246310005"),
    ("credit_card", "5555-5555-5555-4444"),
    ("iban", "DE89370400440532013000"),
    ("iban", "GB82 WEST 1234 5698 7654 32"),
    ("us_ssn", "123-45-6789"),
    ("ca_sin", "046 454 286"),
    ("es_nif", "12345678Z"),
    ("es_nif", "X1234567L"),
    ("ip_address", "192.168.10.254"),
    ("ip_address", "2001:db8:85a3:0:0:8a2e:370:7334"),
    ("ip_address", "fe80::1ff:fe23:4567:890a"),
    ("mac_address", "00:1A:2b:3C:4d:5E"),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
    ("openai_api_key", "sk-proj-Ab3dEfGh1jKlMnOpQrStUvWxYz0123456789"),
    ("anthropic_api_key", "sk-ant-api03-Ab3dEfGh1jKlMnOpQrStUvWxYz0123456789_-AA"),
    ("github_token", "ghp_Ab3dEfGh1jKlMnOpQrStUvWxYz0123456789"),
    ("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----"),
];

/// Text that must not be flagged at all.
const NEGATIVES: &[&str] = &[
    "Order #100045623 shipped on 2024-05-01 12:30:45 (v1.24.3, build 10.0.19045.3570).",
    "Tracking id 550e8400-e29b-41d4-a716-446655440000, invoice INV-2024-000123.",
    "Python 3.11.4 and Node 20.11.1 at 14:05:09; ratio 3.14159; total 1,234,567.89 EUR.",
    "Call the function std::vec::Vec::new() in a::b, then sk-this-is-not-a-key.",
    "Card ending 1111 expires 12/27; number 4111111111111112 fails Luhn.",
    "SSN-like 000-12-3456 and 666-45-6789 and 123-00-6789 are invalid.",
    "The password field is required.",
    "Solve f(01)=2345678 and g(0)12345678; see section (0.5)1234567.",
];

fn found(ex: &mut PiiExchange, text: &str) -> Vec<(String, String)> {
    let mut hits = Vec::new();
    ex.engine.scan(text.as_bytes(), 0, false, &mut hits);
    hits.iter()
        .map(|h| {
            (
                ex.engine.dets[h.det].name.to_string(),
                text[h.start..h.end].to_string(),
            )
        })
        .collect()
}

#[test]
fn each_detector_finds_its_values_in_prose() {
    let mut ex = exchange(all("redact"), Api::ChatCompletions);
    for (det, value) in POSITIVES {
        let text = format!("Please note: {value}. Thanks!");
        let got = found(&mut ex, &text);
        assert_eq!(
            got,
            vec![(det.to_string(), value.to_string())],
            "in {text:?}"
        );
    }
    let got = found(&mut ex, "password = hunter2!x and api_key: 'Zz9_abc'");
    assert_eq!(
        got,
        vec![
            ("secret_assignment".into(), "hunter2!x".into()),
            ("secret_assignment".into(), "Zz9_abc".into())
        ]
    );
}

#[test]
fn hard_negatives_are_left_alone() {
    let mut ex = exchange(all("redact"), Api::ChatCompletions);
    for text in NEGATIVES {
        assert_eq!(found(&mut ex, text), vec![], "{text}");
    }
}

#[test]
fn one_automaton_each_side() {
    let ex = exchange(all("restore"), Api::ChatCompletions);
    // The request side is one regex with one alternative per detector.
    let n = ex.engine.dets.iter().filter(|d| !d.placeholder).count();
    assert_eq!(n, config::Detectors::NAMES.len());
    assert!(ex.engine.scans_responses());
}

/// A chat exchange whose request had `prompt` redacted, so the answer's
/// placeholders (`<EMAIL_1>`, ...) are its to restore.
fn redacted(e: &Rc<Engine>, prompt: &str) -> PiiExchange {
    let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
    let RequestOutcome::Replace(_) = ex.on_request(&chat(prompt)) else {
        panic!("nothing redacted in {prompt:?}")
    };
    ex
}

fn chat(content: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Mail ops@corp.example if stuck."},
            {"role": "user", "content": [
                {"type": "text", "text": content},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUtJQUlPU0ZPRE5ON0VYQU1QTEU="}}
            ]},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
              "function": {"name": "lookup", "arguments": "{\"email\":\"bob@example.org\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "card 4111 1111 1111 1111"}
        ],
        "metadata": {"contact": "keys@example.org"}
    }))
    .unwrap()
}

#[test]
fn request_bodies_stay_valid_json_and_only_text_changes() {
    let mut ex = exchange(all("redact"), Api::ChatCompletions);
    let body = chat("Reach me at jane@example.com or +1 415-555-2671. Again: jane@example.com");
    let RequestOutcome::Replace(out) = ex.on_request(&body) else {
        panic!("expected a rewrite")
    };
    let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(v["messages"][0]["content"], "Mail <EMAIL_1> if stuck.");
    assert_eq!(
        v["messages"][1]["content"][0]["text"],
        "Reach me at <EMAIL_2> or <PHONE_1>. Again: <EMAIL_2>"
    );
    assert_eq!(
        v["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"email\":\"<EMAIL_3>\"}"
    );
    assert_eq!(v["messages"][3]["content"], "card <CREDIT_CARD_1>");
    // Not model text: image data, ids, metadata.
    assert_eq!(
        v["messages"][1]["content"][1]["image_url"]["url"],
        "data:image/png;base64,QUtJQUlPU0ZPRE5ON0VYQU1QTEU="
    );
    assert_eq!(v["metadata"]["contact"], "keys@example.org");
    // Byte-identical outside the replaced spans.
    let s = String::from_utf8(out).unwrap();
    let orig = String::from_utf8(body).unwrap();
    let tail = &orig[orig.find(r#""role":"tool""#).unwrap() - 1..];
    assert!(s.ends_with(&tail.replace("4111 1111 1111 1111", "<CREDIT_CARD_1>")));
    assert_eq!(
        ex.filter_state().unwrap(),
        "mode=enforce;found=email:4/0,credit_card:1/0,phone:1/0;restored=0"
    );
}

#[test]
fn escaped_values_are_caught_and_spliced_as_json() {
    let mut ex = exchange(all("mask"), Api::ChatCompletions);
    let body =
        br#"{"messages":[{"role":"user","content":"mail jane\u0040example.com\n\"ok\" \u00e9"}]}"#;
    let RequestOutcome::Replace(out) = ex.on_request(body) else {
        panic!("expected a rewrite")
    };
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["messages"][0]["content"],
        "mail ************.com\n\"ok\" é"
    );
    // The untouched escapes keep their original spelling.
    assert!(String::from_utf8_lossy(&out).contains(r#"\n\"ok\" \u00e9"#));
}

#[test]
fn block_names_categories_never_values() {
    let mut p = all("redact");
    p["detectors"]["credit_card"] = "block".into();
    p["detectors"]["us_ssn"] = "block".into();
    let mut ex = exchange(p, Api::AnthropicMessages);
    let body = br#"{"model":"claude","max_tokens":5,"system":"x","messages":[{"role":"user","content":[{"type":"text","text":"card 4111111111111111 ssn 123-45-6789"}]}]}"#;
    let RequestOutcome::Block(err) = ex.on_request(body) else {
        panic!("expected a block")
    };
    let v: serde_json::Value = serde_json::from_slice(&err).unwrap();
    assert_eq!(v["type"], "error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("credit_card") && msg.contains("us_ssn"),
        "{msg}"
    );
    assert!(!msg.contains("4111") && !msg.contains("6789"), "{msg}");
}

#[test]
fn detect_mode_reports_but_changes_nothing() {
    let mut p = all("block");
    p["mode"] = "detect".into();
    let mut ex = exchange(p, Api::ChatCompletions);
    let body = chat("jane@example.com");
    assert_eq!(ex.on_request(&body), RequestOutcome::Unchanged);
    assert!(ex
        .filter_state()
        .unwrap()
        .starts_with("mode=detect;found=email:"));
}

#[test]
fn hash_is_keyed_and_stable() {
    let pseudonym = |key: &str| {
        let mut p = all("hash");
        p["hash_key"] = key.into();
        let mut ex = exchange(p, Api::ChatCompletions);
        let RequestOutcome::Replace(out) = ex.on_request(&chat("jane@example.com")) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v["messages"][1]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = pseudonym("0123456789abcdef-key-one");
    assert!(
        a.starts_with("<EMAIL:") && a.len() == "<EMAIL:>".len() + 12,
        "{a}"
    );
    assert_eq!(a, pseudonym("0123456789abcdef-key-one"));
    assert_ne!(a, pseudonym("0123456789abcdef-key-two"));
    let e = Config::parse(br#"{"defaults":{"pii":{"enabled":true,"detectors":{"email":"hash"}}}}"#)
        .unwrap_err();
    assert_eq!(e.path, "defaults.pii.hash_key");
}

#[test]
fn restore_non_streaming_answers() {
    let mut ex = exchange(all("restore"), Api::ChatCompletions);
    let RequestOutcome::Replace(_) = ex.on_request(&chat("I am jane@example.com")) else {
        panic!()
    };
    let answer = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi <EMAIL_2>, not <EMAIL_9>; call +1 415-555-2671"}}]}"#;
    let out = ex.on_response_json(answer).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hi jane@example.com, not <EMAIL_9>; call <PHONE_1>"
    );
    assert_eq!(ex.restored(), 1);
}

#[test]
fn routes_with_the_same_pii_section_share_one_engine() {
    let c = Config::parse(
        br#"{"defaults":{"pii":{"enabled":true}},"routes":{"a":{},"b":{"max_request_bytes":9},
             "c":{"pii":{"detectors":{"email":"mask"}}}}}"#,
    )
    .unwrap();
    let e = |r: &str| c.route(Some(r)).pii.engine().unwrap().clone();
    assert!(Rc::ptr_eq(&e("a"), &e("b")));
    assert!(Rc::ptr_eq(&e("a"), c.route(None).pii.engine().unwrap()));
    assert!(!Rc::ptr_eq(&e("a"), &e("c")));
}

#[test]
fn custom_detectors_and_config_errors() {
    let p = serde_json::json!({"enabled": true, "custom": [
        {"name": "employee_id", "pattern": "EMP-[0-9]{6}", "action": "redact"}]});
    let mut ex = exchange(p, Api::ChatCompletions);
    let RequestOutcome::Replace(out) = ex.on_request(&chat("badge EMP-123456")) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&out).contains("badge <EMPLOYEE_ID_1>"));
    for (bad, path) in [
        (
            r#"{"custom":[{"name":"x","pattern":"("}]}"#,
            "custom[0].pattern",
        ),
        (
            r#"{"custom":[{"name":"x","pattern":"a*"}]}"#,
            "custom[0].pattern",
        ),
        (
            r#"{"custom":[{"name":"Bad Name","pattern":"a"}]}"#,
            "custom[0].name",
        ),
        (
            r#"{"custom":[{"name":"email","pattern":"a"}]}"#,
            "custom[0].name",
        ),
        (r#"{"detectors":{"emial":"redact"}}"#, "detectors.emial"),
        (r#"{"detectors":{"email":"shred"}}"#, "detectors.email"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(bad).unwrap();
        v["enabled"] = true.into();
        let cfg = serde_json::json!({"routes": {"r": {"pii": v}}});
        let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            e.path,
            format!("routes.r.pii.{path}"),
            "{bad}: {}",
            e.message
        );
    }
}

/// A plain chat request with `text` as its last user turn (no other PII).
fn plain_chat(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o", "temperature": 0.2, "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text}
        ]
    }))
    .unwrap()
}

#[test]
fn the_whole_body_check_never_skips_what_the_full_scan_finds() {
    let e = engine(all("redact"));
    // Every value, alone, at each edge of the text and inside it, in prose and in
    // tool arguments: where the full scan finds it, the whole-body check must too.
    let mut bodies = Vec::new();
    for (_, v) in POSITIVES {
        for text in [
            v.to_string(),
            format!("x {v}"),
            format!("{v}."),
            format!("a:{v}:b"),
        ] {
            bodies.push(plain_chat(&text));
            bodies.push(chat(&text));
        }
    }
    for n in NEGATIVES {
        bodies.push(plain_chat(n));
    }
    let mut checked = 0;
    for b in &bodies {
        let mut full = PiiExchange::new(e.clone(), Api::ChatCompletions);
        let found = full.rewrite_json(b, Direction::Request).is_some();
        if found {
            checked += 1;
            assert!(e.may_find_in_request(b), "{}", String::from_utf8_lossy(b));
        }
    }
    assert!(checked >= POSITIVES.len() * 4);
    // A clean prompt is settled by the one pass, and a hard negative changes nothing.
    assert!(!e.may_find_in_request(&plain_chat(
        "How high should a mirror hang above a dresser?"
    )));
    for n in NEGATIVES {
        let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
        assert_eq!(ex.on_request(&plain_chat(n)), RequestOutcome::Unchanged);
    }
    // An escape can hide a value from the raw bytes: such a body takes the full scan.
    let hidden = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"mail jane\u0040example.com"}]}"#;
    assert!(e.may_find_in_request(hidden));
    let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
    assert!(matches!(ex.on_request(hidden), RequestOutcome::Replace(_)));
}

#[test]
fn the_whole_body_check_of_answers_never_skips_what_the_full_scan_finds() {
    let mut cfg = all("restore");
    cfg["scan_responses"] = true.into();
    let e = engine(cfg);
    let answer = |text: &str| {
        serde_json::to_vec(&serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1733600000, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 180, "completion_tokens": 12, "total_tokens": 192}
        }))
        .unwrap()
    };
    let mut texts: Vec<String> = POSITIVES
        .iter()
        .map(|(_, v)| format!("It is {v}."))
        .collect();
    texts.push("Mail <EMAIL_1> today.".into());
    for t in &texts {
        let b = answer(t);
        let mut full = PiiExchange::new(e.clone(), Api::ChatCompletions);
        full.vault
            .restore
            .insert(b"<EMAIL_1>".to_vec(), b"jane@example.com".to_vec());
        if full.rewrite_json(&b, Direction::Response).is_some() {
            assert!(e.may_find_in_answer(&b), "{t}");
        } else {
            panic!("the full scan found nothing in {t}");
        }
    }
    assert!(!e.may_find_in_answer(&answer("About 8 to 10 inches above it.")));
}

#[test]
fn an_anchored_custom_pattern_keeps_the_per_text_scan() {
    // `^...$` matches a whole text, which a search over the whole body never sees.
    let p = serde_json::json!({"enabled": true, "custom": [
        {"name": "employee_id", "pattern": "^EMP-[0-9]{6}$", "action": "redact"}]});
    let mut ex = exchange(p, Api::ChatCompletions);
    let RequestOutcome::Replace(out) = ex.on_request(&plain_chat("EMP-123456")) else {
        panic!("the anchored value was not redacted")
    };
    assert!(String::from_utf8_lossy(&out).contains(r#""content":"<EMPLOYEE_ID_1>""#));
}

/// Chat chunks carrying `pieces` as content deltas, then finish and [DONE].
fn chat_stream(pieces: &[&str]) -> Vec<u8> {
    let mut s = Vec::new();
    for p in pieces {
        let ev = serde_json::json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"content":p},"finish_reason":null}]});
        s.extend_from_slice(format!("data: {ev}\n\n").as_bytes());
    }
    s.extend_from_slice(br#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
    s.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    s
}

/// The concatenated content the client sees, checking every event is valid JSON.
fn chat_text(stream: &[u8]) -> String {
    let mut text = String::new();
    for block in String::from_utf8(stream.to_vec()).unwrap().split("\n\n") {
        let Some(d) = block.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(d).expect("event JSON");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    text
}

fn run_stream(ex: &mut PiiExchange, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        match ex.on_stream_chunk(c, i + 1 == chunks.len()) {
            Rewrite::Replace(b) => out.extend_from_slice(&b),
            Rewrite::Unchanged => out.extend_from_slice(c),
        }
    }
    out
}

#[test]
fn streamed_values_split_at_every_byte_never_leak() {
    let e = engine(all("redact"));
    for (det, value) in POSITIVES {
        let text = format!("Hello, here it is: {value} and more text after it.");
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let (a, b) = text.split_at(cut);
            let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
            let wire = chat_stream(&[a, b]);
            let out = run_stream(&mut ex, &[&wire]);
            let got = chat_text(&out);
            assert!(!got.contains(value), "{det} leaked at cut {cut}: {got:?}");
            assert!(
                got.starts_with("Hello, here it is: <")
                    && got.ends_with("> and more text after it."),
                "{det} cut {cut}: {got:?}"
            );
            // And split across network chunks at every byte of the wire too.
            if cut % 7 == 0 {
                for w in (0..wire.len()).step_by(13) {
                    let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
                    let out = run_stream(&mut ex, &[&wire[..w], &wire[w..]]);
                    assert_eq!(chat_text(&out), got, "{det} wire cut {w}");
                }
            }
        }
    }
}

#[test]
fn streamed_assignments_and_tool_arguments_never_leak() {
    let e = engine(all("redact"));
    let text = r#"config: password = "hunter2!x", then api_key: Zz9_abcdef done"#;
    for cut in 0..=text.len() {
        let (a, b) = text.split_at(cut);
        let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
        let got = chat_text(&run_stream(&mut ex, &[&chat_stream(&[a, b])]));
        assert_eq!(
            got, r#"config: password = "<SECRET_1>", then api_key: <SECRET_2> done"#,
            "cut {cut}"
        );
    }
    // Tool-call arguments: one text stream per tool call, flushed when the next starts.
    let args = [r#"{"to":"jane@exa"#, r#"mple.com"}"#];
    let mut wire = Vec::new();
    for (t, piece) in [(0, args[0]), (0, args[1]), (1, r#"{"ip":"10.1.2.3"}"#)] {
        let ev = serde_json::json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"tool_calls":[{"index":t,"function":{"arguments":piece}}]},"finish_reason":null}]});
        wire.extend_from_slice(format!("data: {ev}\n\n").as_bytes());
    }
    wire.extend_from_slice(b"data: [DONE]\n\n");
    let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
    let out = String::from_utf8(run_stream(&mut ex, &[&wire])).unwrap();
    let mut per_tool = [String::new(), String::new()];
    for block in out.split("\n\n") {
        let Some(d) = block.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(d) else {
            continue;
        };
        for tc in v["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            per_tool[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(per_tool[0], r#"{"to":"<EMAIL_1>"}"#);
    assert_eq!(per_tool[1], r#"{"ip":"<IP_ADDRESS_1>"}"#);
}

#[test]
fn an_oversized_event_is_scanned_as_it_passes_and_framing_resumes_after_it() {
    let e = engine(all("restore"));
    let head = |content: &str| {
        let ev = serde_json::json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]});
        format!("data: {ev}\n\n")
    };
    // A 1.2 MB delta (over the 1 MiB an event is framed up to), between normal ones.
    let filler = "lorem ipsum ".repeat(100_000);
    let big = head(&format!(
        "{filler} mail ann@example.net or <EMAIL_2>. {filler}"
    ));
    for eol in ["\n", "\r\n"] {
        let wire = format!(
            "{}{}{}data: [DONE]\n\n",
            head("mail bob@corp.example no"),
            big,
            head("w <EMAIL_2> then ann@example.net!")
        )
        .replace("\n", eol);
        for size in [1000, 64 * 1024, 1 << 20, wire.len()] {
            let mut ex = restoring_exchange(&e, Api::ChatCompletions);
            let chunks: Vec<&[u8]> = wire.as_bytes().chunks(size).collect();
            let out = String::from_utf8(run_stream(&mut ex, &chunks)).unwrap();
            assert!(
                !out.contains("ann@example.net") && !out.contains("bob@corp"),
                "{eol:?} {size}"
            );
            let text = chat_text(out.replace("\r\n", "\n").as_bytes());
            assert_eq!(
                text,
                format!(
                    "mail <EMAIL_4> no{filler} mail <EMAIL_5> or jane@example.com. {filler}w jane@example.com then <EMAIL_5>!"
                ),
                "{eol:?} {size}"
            );
            assert!(out.ends_with(&format!("data: [DONE]{eol}{eol}")));
        }
    }
}

#[test]
fn an_oversized_responses_completed_event_is_restored_and_scanned() {
    let e = engine(all("restore"));
    let long = format!(
        "{} write to <EMAIL_2> or ann@example.net.",
        "word ".repeat(250_000)
    );
    let want = format!(
        "{} write to jane@example.com or <EMAIL_4>.",
        "word ".repeat(250_000)
    );
    let audio = format!(
        "event: response.audio.delta\ndata: {}\n\n",
        serde_json::json!({"type": "response.audio.delta", "delta": format!("{}/AKIAIOSFODNN7EXAMPLE", "QUFB".repeat(300_000))})
    );
    let wire = String::from_utf8(responses_stream(&["Hi ", "<EMAIL_2>"])).unwrap();
    // Make the closing events carry the long text, and add a big audio delta.
    let wire = wire.replace("Hi <EMAIL_2>", &long);
    let wire = wire.replacen(
        "event: response.output_text.done",
        &format!("{audio}event: response.output_text.done"),
        1,
    );
    // Were audio read as text, the key in it would be caught.
    assert_eq!(
        found(
            &mut restoring_exchange(&e, Api::Responses),
            "QUFB/AKIAIOSFODNN7EXAMPLE"
        )
        .len(),
        1
    );
    for size in [4096, 1 << 20] {
        let mut ex = restoring_exchange(&e, Api::Responses);
        let chunks: Vec<&[u8]> = wire.as_bytes().chunks(size).collect();
        let out = String::from_utf8(run_stream(&mut ex, &chunks)).unwrap();
        let mut done = 0;
        for block in out.split("\n\n").filter(|b| !b.is_empty()) {
            let d = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(d).expect("event JSON");
            match v["type"].as_str().unwrap() {
                "response.output_text.done" => {
                    assert!(v["text"] == want.as_str());
                    done += 1;
                }
                "response.completed" => {
                    assert!(v["response"]["output"][0]["content"][0]["text"] == want.as_str());
                    done += 1;
                }
                "response.audio.delta" => {
                    // The big one (the helper's own small one is checked elsewhere).
                    let d = v["delta"].as_str().unwrap();
                    if d.len() > 1000 {
                        assert!(d.ends_with("QUFB/AKIAIOSFODNN7EXAMPLE"), "audio untouched");
                        done += 1;
                    }
                }
                _ => {}
            }
        }
        assert_eq!(done, 3, "{size}");
        assert_eq!(out.matches("ann@example.net").count(), 0);
    }
}

#[test]
fn placeholders_split_across_chunks_are_restored() {
    let text = "Dear <EMAIL_1>, your card <CREDIT_CARD_1> is fine.";
    let e = engine(all("restore"));
    for cut in 0..=text.len() {
        let mut ex = redacted(&e, "jane@example.com 4111 1111 1111 1111");
        let (a, b) = text.split_at(cut);
        let out = run_stream(&mut ex, &[&chat_stream(&[a, b])]);
        assert_eq!(
            chat_text(&out),
            "Dear ops@corp.example, your card 4111 1111 1111 1111 is fine.",
            "cut {cut}"
        );
    }
}

#[test]
fn anthropic_tool_input_stream_is_restored() {
    let mut ex = exchange(all("restore"), Api::AnthropicMessages);
    let body = br#"{"model":"c","max_tokens":9,"messages":[{"role":"user","content":"mail jane@example.com"}]}"#;
    let RequestOutcome::Replace(_) = ex.on_request(body) else {
        panic!()
    };
    let json = r#"{"to": "<EMAIL_1>"}"#;
    let mut wire =
        String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n");
    for piece in json.as_bytes().chunks(3) {
        let p = std::str::from_utf8(piece).unwrap();
        let ev = serde_json::json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":p}});
        wire.push_str(&format!("event: content_block_delta\ndata: {ev}\n\n"));
    }
    wire.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    );
    let out = run_stream(&mut ex, &[wire.as_bytes()]);
    let mut args = String::new();
    for block in String::from_utf8(out).unwrap().split("\n\n") {
        if let Some(d) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            if let Some(p) = v["delta"]["partial_json"].as_str() {
                args.push_str(p);
            }
        }
    }
    assert_eq!(args, r#"{"to": "jane@example.com"}"#);
}

/// A non-streaming answer fed to the incremental scanner in `chunks`.
fn run_json_chunks(ex: &mut PiiExchange, body: &[u8], cuts: &[usize]) -> Vec<u8> {
    ex.start_json_scan();
    let mut out = Vec::new();
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= body.len()).collect();
    bounds.push(body.len());
    for (n, &b) in bounds.iter().enumerate() {
        let b = b.max(at);
        let chunk = &body[at..b];
        match ex.on_response_json_chunk(chunk, n + 1 == bounds.len()) {
            Rewrite::Replace(o) => out.extend_from_slice(&o),
            Rewrite::Unchanged => out.extend_from_slice(chunk),
        }
        at = b;
    }
    out
}

/// An exchange that restored `jane@example.com` as `<EMAIL_2>` ([`chat`] has
/// `<EMAIL_1>` and `<EMAIL_3>` too: a new address in the answer is `<EMAIL_4>`).
fn restoring_exchange(e: &Rc<Engine>, api: Api) -> PiiExchange {
    let mut ex = PiiExchange::new(e.clone(), api);
    let three = "ops@corp.example jane@example.com bob@example.org";
    let body = match api {
        Api::Responses => serde_json::to_vec(&serde_json::json!({"input": three})).unwrap(),
        Api::AnthropicMessages => serde_json::to_vec(
            &serde_json::json!({"messages": [{"role": "user", "content": three}]}),
        )
        .unwrap(),
        Api::Completions => serde_json::to_vec(&serde_json::json!({"prompt": three})).unwrap(),
        _ => chat("I am jane@example.com"),
    };
    let RequestOutcome::Replace(_) = ex.on_request(&body) else {
        panic!()
    };
    ex
}

/// Chat answers with values, placeholders, escapes and non-text fields.
fn big_answers() -> Vec<Vec<u8>> {
    let content = "Hi <EMAIL_2>! Card 4111 1111 1111 1111, mail bob\\u0040corp.example,\\n\
        key AKIAIOSFODNN7EXAMPLE; password = \\\"hunter2!x\\\" caf\\u00e9 \\ud83d\\ude00 ip 10.1.2.3";
    vec![
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"send","arguments":"{{\"to\":\"<EMAIL_2>\",\"cc\":\"ann@example.net\"}}"}}}}]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}},"system_fingerprint":"jane@example.com"}}"#
        )
        .into_bytes(),
        // Whitespace, nesting, numbers and literals everywhere.
        format!(
            "{{ \"choices\" : [ {{ \"index\" : 0 , \"message\" : {{ \"content\" : \"{content}\" , \"x\" : [ 1.5e3 , true , null , {{ }} , [ ] ] }} }} ] , \"n\" : -2 }}\n"
        )
        .into_bytes(),
    ]
}

#[test]
fn big_answers_scanned_chunk_by_chunk_equal_the_whole_rewrite() {
    let e = engine(all("restore"));
    for body in big_answers() {
        let mut whole = restoring_exchange(&e, Api::ChatCompletions);
        let expect = whole.on_response_json(&body).expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&expect).expect("valid JSON");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            text.starts_with("Hi jane@example.com! Card <CREDIT_CARD_1>, mail <EMAIL_4>,\n"),
            "{text}"
        );
        // Every split into two chunks, and into three around each byte.
        for cut in 0..=body.len() {
            let mut ex = restoring_exchange(&e, Api::ChatCompletions);
            let got = run_json_chunks(&mut ex, &body, &[cut]);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expect),
                "cut {cut}"
            );
            assert_eq!(ex.filter_state(), whole.filter_state(), "cut {cut}");
            let mut ex = restoring_exchange(&e, Api::ChatCompletions);
            let got = run_json_chunks(&mut ex, &body, &[cut.saturating_sub(1), cut, cut + 1]);
            assert_eq!(got, expect, "cuts around {cut}");
        }
        // One byte at a time.
        let mut ex = restoring_exchange(&e, Api::ChatCompletions);
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert_eq!(run_json_chunks(&mut ex, &body, &cuts), expect);
    }
}

#[test]
fn a_big_answer_never_leaks_and_holds_back_a_bounded_tail() {
    let e = engine(all("redact"));
    // ~1.5 MB of content with a value every ~300 bytes, cut in 16 KiB chunks.
    let mut content = String::new();
    let mut n = 0;
    while content.len() < 1_500_000 {
        content.push_str(&format!(
            "Line {n}: write to user{n}@example.com or call +1 415-555-{:04}, card 4111 1111 1111 1111, \
             token ghp_Ab3dEfGh1jKlMnOpQrStUvWxYz01234567{:02}. Lorem ipsum dolor sit amet, consectetur. ",
            n % 10000,
            n % 100
        ));
        n += 1;
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "id": "chatcmpl-big", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    }))
    .unwrap();
    let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
    ex.start_json_scan();
    let mut out = Vec::new();
    let mut chunks = body.chunks(16 * 1024).peekable();
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        let piece = match ex.on_response_json_chunk(c, last) {
            Rewrite::Replace(o) => o,
            Rewrite::Unchanged => c.to_vec(),
        };
        // What is held back per chunk stays bounded (hold-back + a token run).
        if !last {
            assert!(
                piece.len() + 8192 + 256 >= c.len(),
                "held too much: {} of {}",
                piece.len(),
                c.len()
            );
        }
        out.extend_from_slice(&piece);
    }
    let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    let got = v["choices"][0]["message"]["content"].as_str().unwrap();
    for leak in ["@example.com", "415-555-", "4111 1111", "ghp_"] {
        assert!(!got.contains(leak), "{leak} leaked");
    }
    assert_eq!(got.matches("<CREDIT_CARD_1>").count(), n);
    assert_eq!(v["usage"]["total_tokens"], 3);
    let counts: Vec<(String, u64, u64)> =
        ex.counts().map(|(a, b, c)| (a.to_string(), b, c)).collect();
    assert!(
        counts.contains(&("email".to_string(), 0, n as u64)),
        "{counts:?}"
    );
}

#[test]
fn big_answers_of_every_api_and_broken_json() {
    let e = engine(all("restore"));
    let cases: Vec<(Api, &str, &str)> = vec![
        (
            Api::Responses,
            r#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"to <EMAIL_2> and ann@example.net","annotations":[]}]},{"type":"function_call","arguments":"{\"to\":\"<EMAIL_2>\"}","name":"send"}],"text":{"format":{"type":"text"}},"user":"ann@example.net"}"#,
            r#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"to jane@example.com and <EMAIL_4>","annotations":[]}]},{"type":"function_call","arguments":"{\"to\":\"jane@example.com\"}","name":"send"}],"text":{"format":{"type":"text"}},"user":"ann@example.net"}"#,
        ),
        (
            Api::AnthropicMessages,
            r#"{"type":"message","content":[{"type":"text","text":"hi <EMAIL_2>"},{"type":"tool_use","id":"t","name":"n","input":{"deep":{"to":["ann@example.net","<EMAIL_2>"]}}}],"stop_reason":"end_turn"}"#,
            r#"{"type":"message","content":[{"type":"text","text":"hi jane@example.com"},{"type":"tool_use","id":"t","name":"n","input":{"deep":{"to":["<EMAIL_4>","jane@example.com"]}}}],"stop_reason":"end_turn"}"#,
        ),
        (
            Api::Completions,
            r#"{"choices":[{"text":"mail ann@example.net","index":0}],"model":"ann@example.net"}"#,
            r#"{"choices":[{"text":"mail <EMAIL_4>","index":0}],"model":"ann@example.net"}"#,
        ),
    ];
    for (api, body, want) in cases {
        for cut in 0..=body.len() {
            let mut ex = restoring_exchange(&e, api);
            let got = run_json_chunks(&mut ex, body.as_bytes(), &[cut]);
            assert_eq!(String::from_utf8_lossy(&got), want, "{api:?} cut {cut}");
        }
    }
    // Not JSON as expected: text before the break is scanned, the rest passes as is.
    let broken = r#"{"choices":[{"message":{"content":"a ann@example.net"}}]] "content":"b ann@example.net"}"#;
    for cut in 0..=broken.len() {
        let mut ex = restoring_exchange(&e, Api::ChatCompletions);
        let got = String::from_utf8(run_json_chunks(&mut ex, broken.as_bytes(), &[cut])).unwrap();
        assert_eq!(
            got,
            broken.replacen("ann@example.net", "<EMAIL_4>", 1),
            "cut {cut}"
        );
    }
    // Truncated inside a text string: what arrived is still scanned.
    let cut_short = r#"{"choices":[{"message":{"content":"write to ann@example.net"#;
    let mut ex = restoring_exchange(&e, Api::ChatCompletions);
    let got = String::from_utf8(run_json_chunks(&mut ex, cut_short.as_bytes(), &[40])).unwrap();
    assert_eq!(got, cut_short.replace("ann@example.net", "<EMAIL_4>"));
    // Embeddings answers are never read.
    let mut ex = PiiExchange::new(e.clone(), Api::Embeddings);
    ex.start_json_scan();
    assert!(!ex.scans_json_chunks());
    assert_eq!(
        ex.on_response_json_chunk(b"{\"data\":[]}", true),
        Rewrite::Unchanged
    );
}

#[test]
fn every_value_split_at_every_byte_of_a_big_answer_is_caught() {
    let e = engine(all("redact"));
    for (det, value) in POSITIVES {
        let body = serde_json::to_vec(&serde_json::json!({"choices": [{"index": 0,
            "message": {"role": "assistant", "content": format!("Here: {value}. Done \u{e9}\"")}}]}))
        .unwrap();
        let mut whole = PiiExchange::new(e.clone(), Api::ChatCompletions);
        let expect = whole.on_response_json(&body).expect("caught whole");
        for cut in 0..=body.len() {
            let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
            let got = run_json_chunks(&mut ex, &body, &[cut]);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expect),
                "{det} cut {cut}"
            );
        }
    }
}

/// A Responses stream of `pieces` as `response.output_text.delta` events, then
/// the `.done` events and `response.completed` repeating the whole text.
fn responses_stream(pieces: &[&str]) -> Vec<u8> {
    let full: String = pieces.concat();
    let mut seq = 0;
    let mut s = String::new();
    let mut ev = |ty: &str, mut v: serde_json::Value| {
        v["type"] = ty.into();
        v["sequence_number"] = seq.into();
        seq += 1;
        s.push_str(&format!("event: {ty}\ndata: {v}\n\n"));
    };
    ev(
        "response.created",
        serde_json::json!({"response": {"id": "resp_1", "output": []}}),
    );
    for p in pieces {
        ev(
            "response.output_text.delta",
            serde_json::json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": p, "logprobs": []}),
        );
    }
    ev(
        "response.audio.delta",
        serde_json::json!({"response_id": "resp_1", "delta": "QUtJQUlPU0ZPRE5ON0VYQU1QTEUgamFuZUBleGFtcGxlLmNvbQ=="}),
    );
    ev(
        "response.output_text.done",
        serde_json::json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": full}),
    );
    ev(
        "response.content_part.done",
        serde_json::json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": full}}),
    );
    ev(
        "response.completed",
        serde_json::json!({"response": {"id": "resp_1", "output": [{"type": "message", "content": [{"type": "output_text", "text": full}]}]}}),
    );
    s.into_bytes()
}

#[test]
fn responses_streams_restore_placeholders_split_across_events() {
    let e = engine(all("restore"));
    let text = "Dear <EMAIL_2>, write to ann@example.net; <EMAIL_9> stays.";
    let want = "Dear jane@example.com, write to <EMAIL_4>; <EMAIL_9> stays.";
    for cut in 0..=text.len() {
        let mut ex = restoring_exchange(&e, Api::Responses);
        let (a, b) = text.split_at(cut);
        let wire = responses_stream(&[a, b]);
        let out = String::from_utf8(run_stream(&mut ex, &[&wire])).unwrap();
        let (mut deltas, mut seqs) = (String::new(), Vec::new());
        for block in out.split("\n\n").filter(|b| !b.is_empty()) {
            let d = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(d).expect("event JSON");
            seqs.push(v["sequence_number"].as_u64().unwrap());
            match v["type"].as_str().unwrap() {
                "response.output_text.delta" => deltas.push_str(v["delta"].as_str().unwrap()),
                "response.audio.delta" => assert_eq!(
                    v["delta"], "QUtJQUlPU0ZPRE5ON0VYQU1QTEUgamFuZUBleGFtcGxlLmNvbQ==",
                    "audio is never scanned"
                ),
                "response.output_text.done" => assert_eq!(v["text"], want),
                "response.content_part.done" => assert_eq!(v["part"]["text"], want),
                "response.completed" => {
                    assert_eq!(v["response"]["output"][0]["content"][0]["text"], want)
                }
                _ => {}
            }
        }
        assert_eq!(deltas, want, "cut {cut}");
        // A synthesised flush event repeats the number of the event before it:
        // the provider's numbering is kept for every event it sent.
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
            "{seqs:?}"
        );
        assert_eq!(*seqs.last().unwrap(), 6, "cut {cut}");
    }
}

/// A chat stream whose deltas carry `reasoning_content` (DeepSeek, and tollgate's
/// translation of Anthropic thinking) before the answer's `content`.
fn reasoning_stream(reasoning: &[&str], content: &str) -> Vec<u8> {
    let mut s = Vec::new();
    for p in reasoning {
        let ev = serde_json::json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"reasoning_content":p},"finish_reason":null}]});
        s.extend_from_slice(format!("data: {ev}\n\n").as_bytes());
    }
    s.extend_from_slice(&chat_stream(&[content]));
    s
}

#[test]
fn reasoning_text_is_restored_and_scanned_like_content() {
    let e = engine(all("restore"));
    let text = "The user <EMAIL_1> asked; card <CREDIT_CARD_1>. Also bob@evil.example";
    for cut in 0..=text.len() {
        let mut ex = redacted(&e, "jane@example.com 4111 1111 1111 1111");
        let (a, b) = text.split_at(cut);
        let out = run_stream(&mut ex, &[&reasoning_stream(&[a, b], "Done, <EMAIL_1>.")]);
        let mut reasoning = String::new();
        for block in String::from_utf8(out.clone()).unwrap().split("\n\n") {
            let Some(d) = block.strip_prefix("data: ").filter(|d| *d != "[DONE]") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(d).expect("event JSON");
            if let Some(r) = v["choices"][0]["delta"]["reasoning_content"].as_str() {
                reasoning.push_str(r);
            }
        }
        // Placeholders restored; the new address in the answer redacted.
        assert!(
            reasoning.starts_with(
                "The user ops@corp.example asked; card 4111 1111 1111 1111. Also <EMAIL_"
            ) && reasoning.ends_with('>')
                && !reasoning.contains("evil"),
            "cut {cut}: {reasoning}"
        );
        assert_eq!(chat_text(&out), "Done, ops@corp.example.", "cut {cut}");
    }
    // Non-streaming: the message's reasoning_content too.
    let mut ex = redacted(&e, "jane@example.com");
    let answer = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok","reasoning_content":"Mail <EMAIL_2> or eve@evil.example"}}]}"#;
    let v: serde_json::Value =
        serde_json::from_slice(&ex.on_response_json(answer).unwrap()).unwrap();
    let r = v["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap();
    assert!(
        r.starts_with("Mail jane@example.com or <EMAIL_") && !r.contains("evil"),
        "{r}"
    );
}

#[test]
fn keys_written_with_escapes_do_not_hide_text_from_the_scan() {
    // `"m\u0065ssages"` is `messages` to the provider: the text under it is scanned.
    let body = br#"{"model":"m","m\u0065ssages":[{"role":"user","c\u006fntent":"mail jane.doe@example.com now"}]}"#;
    let mut ex = exchange(all("redact"), Api::ChatCompletions);
    let RequestOutcome::Replace(out) = ex.on_request(body) else {
        panic!("the e-mail under escaped keys was not redacted");
    };
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("jane.doe@example.com"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["messages"][0]["content"], "mail <EMAIL_1> now");
    // And `block` refuses it.
    let mut ex = exchange(all("block"), Api::ChatCompletions);
    assert!(matches!(ex.on_request(body), RequestOutcome::Block(_)));
}

#[test]
fn answers_with_escaped_keys_are_scanned_whole_and_in_chunks() {
    let e = engine(all("redact"));
    let body = br#"{"id":"c","choices":[{"index":0,"m\u0065ssage":{"role":"assistant","c\u006fntent":"write to jane.doe@example.com"},"finish_reason":"stop"}]}"#;
    // Whole.
    let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
    let out = ex.on_response_json(body).expect("the e-mail is redacted");
    assert!(!String::from_utf8_lossy(&out).contains("@example.com"));
    // In chunks cut at every offset (the key split too).
    for cut in 1..body.len() {
        let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
        ex.start_json_scan();
        let mut out = Vec::new();
        for (c, last) in [(&body[..cut], false), (&body[cut..], true)] {
            match ex.on_response_json_chunk(c, last) {
                Rewrite::Replace(o) => out.extend_from_slice(&o),
                Rewrite::Unchanged => out.extend_from_slice(c),
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        let got = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(!got.contains("@example.com"), "cut {cut}: {got}");
    }
}

#[test]
fn a_value_cut_off_inside_a_multibyte_character_is_widened_to_whole_characters() {
    // The assignment value is at most 128 bytes: 126 ASCII bytes then `é` (2 bytes)
    // or `€` (3 bytes) put that bound inside a character.
    for (action, tail) in [
        ("redact", "é"),
        ("redact", "€"),
        ("mask", "€"),
        ("hash", "é"),
    ] {
        let value = format!("{}{}", "a".repeat(126), tail.repeat(4));
        let text = format!("password = {value} end");
        let mut ex = exchange(all(action), Api::ChatCompletions);
        let body = serde_json::to_vec(&serde_json::json!({
            "messages": [{"role": "user", "content": &text}]
        }))
        .unwrap();
        let RequestOutcome::Replace(out) = ex.on_request(&body) else {
            panic!("{action} {tail}: nothing redacted")
        };
        let v: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{action} {tail}: {e}: {}", String::from_utf8_lossy(&out)));
        let got = v["messages"][0]["content"].as_str().unwrap();
        // The character that held the 128th byte went with the value.
        assert!(
            got.starts_with("password = ") && got.ends_with(&format!("{} end", tail.repeat(3))),
            "{action} {tail}: {got:?}"
        );
        assert!(!got.contains("aaaa"), "{action} {tail}: {got:?}");
        // In a stream, cut anywhere, the output stays valid UTF-8 and the same.
        let e = engine(all(action));
        let whole = {
            let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
            chat_text(&run_stream(&mut ex, &[&chat_stream(&[&text])]))
        };
        assert!(!whole.contains("aaaa"), "{action} {tail}: {whole:?}");
        let wire = chat_stream(&[&text]);
        for w in (0..wire.len()).step_by(5) {
            let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
            let out = run_stream(&mut ex, &[&wire[..w], &wire[w..]]);
            assert_eq!(chat_text(&out), whole, "{action} {tail} wire cut {w}");
        }
    }
}
