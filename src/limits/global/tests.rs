use super::*;
use crate::config::Config;

fn cfg(json: &str) -> GlobalLimits {
    let c = Config::parse(format!(r#"{{"defaults":{{"limits":{{"global":{json}}}}}}}"#).as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    c.route(None).limits.global.clone()
}

fn err(json: &str) -> crate::config::ConfigError {
    match Config::parse(
        format!(r#"{{"routes":{{"r":{{"limits":{{"global":{json}}}}}}}}}"#).as_bytes(),
    ) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => e,
    }
}

fn subject<'a>(consumer: Option<&'a str>) -> Subject<'a> {
    Subject {
        consumer,
        route: "chat",
        model: "gpt-4o-mini",
        provider: "openai",
        prompt_tokens: 120,
        reserve_tokens: 50,
        choices: 1,
    }
}

#[test]
fn config_defaults_to_off_and_validates_with_exact_paths() {
    assert!(!cfg("{}").active());
    let g = cfg(
        r#"{"mode":"rls_grpc","cluster":"rls","descriptors":[{"key":"user","from":"consumer"}]}"#,
    );
    assert!(g.active());
    assert_eq!(g.timeout_ms, 200);
    assert_eq!(g.failure_mode, FailureMode::Open);
    // Defaults: the cluster of envoy/global-ratelimit and one `consumer` entry.
    let d = cfg(r#"{"mode":"rls_grpc"}"#);
    assert_eq!(d.cluster, "rate_limit_service");
    assert_eq!(
        descriptor(&d, &subject(Some("bob"))),
        vec![("consumer", "bob")]
    );
    let e =
        err(r#"{"mode":"rls_grpc","cluster":"","descriptors":[{"key":"u","from":"consumer"}]}"#);
    assert_eq!(e.path, "routes.r.limits.global.cluster");
    let e = err(r#"{"mode":"http","cluster":"rls","descriptors":[]}"#);
    assert_eq!(e.path, "routes.r.limits.global.descriptors");
    let e = err(r#"{"descriptors":[{"key":"u","from":"consumer","value":"x"}]}"#);
    assert_eq!(e.path, "routes.r.limits.global.descriptors[0].from");
    let e = err(r#"{"descriptors":[{"key":"u"}]}"#);
    assert_eq!(e.path, "routes.r.limits.global.descriptors[0].from");
    let e = err(r#"{"descriptors":[{"key":"u","from":"user"}]}"#);
    assert_eq!(e.path, "routes.r.limits.global.descriptors[0].from");
    let e = err(r#"{"timeout_ms":0}"#);
    assert_eq!(e.path, "routes.r.limits.global.timeout_ms");
    let e = err(r#"{"failure_mode":"maybe"}"#);
    assert_eq!(e.path, "routes.r.limits.global.failure_mode");
    let e = err(
        r#"{"mode":"http","cluster":"rls","path":"x","descriptors":[{"key":"u","value":"v"}]}"#,
    );
    assert_eq!(e.path, "routes.r.limits.global.path");
    let e = err(r#"{"modes":"http"}"#);
    assert_eq!(e.path, "routes.r.limits.global.modes");
}

#[test]
fn descriptor_maps_key_parts_and_literals() {
    let g = cfg(
        r#"{"descriptors":[{"key":"tenant","value":"acme"},{"key":"user","from":"consumer"},{"key":"m","from":"model"},{"key":"r","from":"route"},{"key":"p","from":"provider"}]}"#,
    );
    let s = subject(Some("alice"));
    assert_eq!(
        descriptor(&g, &s),
        vec![
            ("tenant", "acme"),
            ("user", "alice"),
            ("m", "gpt-4o-mini"),
            ("r", "chat"),
            ("p", "openai")
        ]
    );
    let s = subject(None);
    assert_eq!(descriptor(&g, &s)[1], ("user", "anonymous"));
    // Long host-set ids are cut on a char boundary, as local keys are.
    let long = "é".repeat(200);
    let s = subject(Some(&long));
    let d = descriptor(&g, &s);
    assert!(d[1].1.len() <= MAX_KEY_VALUE_BYTES && d[1].1.chars().all(|c| c == 'é'));
}

#[test]
fn hits_follow_count_and_true_up_never_refunds() {
    let s = subject(None);
    let mut g = cfg("{}");
    assert_eq!(admission_hits(&g, &s), 170);
    assert_eq!(true_up_hits(&g, 170, 120, 80), Some(30));
    assert_eq!(true_up_hits(&g, 170, 120, 50), None);
    assert_eq!(true_up_hits(&g, 170, 100, 10), None);
    g.count = LimitCount::Output;
    assert_eq!(admission_hits(&g, &s), 50);
    assert_eq!(true_up_hits(&g, 50, 999, 60), Some(10));
    g.count = LimitCount::Input;
    assert_eq!(admission_hits(&g, &s), 120);
    assert_eq!(hits_u32(u64::MAX), u32::MAX);
    assert_eq!(hits_u32(7), 7);
}

#[test]
fn rls_answers_become_verdicts_and_decisions() {
    let over = include_str!("vectors.txt")
        .lines()
        .find_map(|l| l.strip_prefix("response_over_limit "))
        .unwrap();
    let bytes: Vec<u8> = (0..over.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&over[i..i + 2], 16).unwrap())
        .collect();
    let v = rls_verdict("tollgate", 0, &bytes);
    assert_eq!(
        v,
        Verdict::Refuse(Some(RateState {
            unit: crate::limits::Unit::Tokens,
            rule: "tpm".into(),
            limit: 1000,
            remaining: 7,
            reset_ms: 42_500
        }))
    );
    let closed = cfg(r#"{"failure_mode":"closed"}"#);
    let open = cfg("{}");
    assert_eq!(decide(&open, &v, false), Decision::Refused);
    assert_eq!(decide(&open, &v, true), Decision::WouldRefuse);
    // Transport failures and garbage follow failure_mode, report_only or not.
    for f in [
        rls_verdict("d", 14, &[]),
        rls_verdict("d", 4, &[]),
        rls_verdict("d", 0, &[0xff, 0xff]),
        rls_verdict("d", 0, b""),
    ] {
        assert!(matches!(f, Verdict::Failed(_)), "{f:?}");
        assert_eq!(decide(&open, &f, false), Decision::FailedOpen);
        assert_eq!(decide(&closed, &f, true), Decision::FailedClosed);
        assert!(decide(&closed, &f, false).refuses());
    }
    assert!(matches!(rls_verdict("d", 4, &[]), Verdict::Failed(m) if m.contains("timeout")));
    let ok = proto::encode_set_filter_state("", "", 0); // empty message == no overall_code
    assert!(matches!(rls_verdict("d", 0, &ok), Verdict::Failed(_)));
}

#[test]
fn http_check_and_report_shape_and_answers() {
    let body = http_api::request_body("tollgate", &[("user", "alice")], 170);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"namespace":"tollgate","values":{"user":"alice"},"delta":170,"response_headers":"DraftVersion03"})
    );
    let h: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"429"),
        (b"x-ratelimit-limit", b"1000, 1000;w=60, 50000;w=86400"),
        (b"x-ratelimit-remaining", b"12"),
        (b"x-ratelimit-reset", b"33"),
    ];
    assert_eq!(
        http_api::verdict("tollgate", Some(&h)),
        Verdict::Refuse(Some(RateState {
            unit: crate::limits::Unit::Tokens,
            rule: "tollgate".into(),
            limit: 1000,
            remaining: 12,
            reset_ms: 33_000
        }))
    );
    let h: Vec<(&[u8], &[u8])> = vec![(b":status", b"200")];
    assert_eq!(http_api::verdict("t", Some(&h)), Verdict::Allow(None));
    let h: Vec<(&[u8], &[u8])> = vec![(b":status", b"500")];
    assert!(matches!(
        http_api::verdict("t", Some(&h)),
        Verdict::Failed(_)
    ));
    assert!(matches!(http_api::verdict("t", None), Verdict::Failed(_)));
    assert!(matches!(
        http_api::verdict("t", Some(&[])),
        Verdict::Failed(_)
    ));
    // Garbage headers: no panic, no state.
    let h: Vec<(&[u8], &[u8])> = vec![(b":status", b"200"), (b"x-ratelimit-limit", b";;,\xff")];
    assert_eq!(http_api::verdict("t", Some(&h)), Verdict::Allow(None));
}
