//! SigV4 against AWS's published test suite and against botocore on Bedrock requests.

use serde_json::Value;

use super::*;

const SUITE: &str = include_str!("../../../../tests/fixtures/providers/bedrock/sigv4-suite.json");
const BOTOCORE: &str =
    include_str!("../../../../tests/fixtures/providers/bedrock/sigv4-bedrock-botocore.json");

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn pairs(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap().to_string(),
                        p[1].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn aws_test_suite_vectors() {
    let doc: Value = serde_json::from_str(SUITE).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 15, "the suite file lost vectors");
    for v in vectors {
        let name = s(v, "name");
        let query = pairs(v.get("query"));
        let headers = pairs(v.get("headers"));
        let query: Vec<(&str, &str)> = query.iter().map(|(a, b)| (&**a, &**b)).collect();
        let mut headers: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (&**a, &**b)).collect();
        // The suite's requests carry X-Amz-Date themselves; the signer adds it.
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("x-amz-date"));
        let req = Request {
            method: s(v, "method"),
            host: s(&doc, "host"),
            path: s(v, "path"),
            query: &query,
            headers: &headers,
            payload: s(v, "body").as_bytes(),
            sign_content_sha256: false,
        };
        let creds = Credentials {
            access_key_id: s(&doc, "access_key_id"),
            secret_access_key: s(&doc, "secret_access_key"),
            session_token: v.get("session_token").and_then(Value::as_str),
        };
        let scope = Scope {
            region: s(&doc, "region"),
            service: s(&doc, "service"),
            unix_secs: doc["unix_secs"].as_u64().unwrap(),
        };
        let signed = sign(&req, &creds, &scope);
        assert_eq!(signed.amz_date, "20150830T123600Z");
        if let Some(creq) = v.get("creq").and_then(Value::as_str) {
            assert_eq!(signed.canonical_request, creq, "{name}: canonical request");
        }
        if let Some(sts) = v.get("sts").and_then(Value::as_str) {
            assert_eq!(signed.string_to_sign, sts, "{name}: string to sign");
        }
        assert_eq!(signed.authorization, s(v, "authz"), "{name}: Authorization");
    }
}

#[test]
fn botocore_bedrock_requests() {
    let doc: Value = serde_json::from_str(BOTOCORE).unwrap();
    for c in doc["cases"].as_array().unwrap() {
        let body = s(c, "body").as_bytes();
        let sha = hex(&sha256(body));
        let headers = [("Content-Type", "application/json")];
        let signed = sign(
            &Request {
                method: "POST",
                host: s(&doc, "host"),
                path: s(c, "path"),
                query: &[],
                headers: &headers,
                payload: body,
                sign_content_sha256: true,
            },
            &Credentials {
                access_key_id: s(&doc, "access_key_id"),
                secret_access_key: s(&doc, "secret_access_key"),
                session_token: c.get("session_token").and_then(Value::as_str),
            },
            &Scope {
                region: s(&doc, "region"),
                service: s(&doc, "service"),
                unix_secs: doc["unix_secs"].as_u64().unwrap(),
            },
        );
        let name = s(c, "name");
        assert_eq!(signed.amz_date, s(c, "x-amz-date"), "{name}");
        assert_eq!(signed.payload_sha256, sha, "{name}");
        assert_eq!(
            signed.canonical_request,
            s(c, "canonical_request"),
            "{name}"
        );
        assert_eq!(signed.authorization, s(c, "authorization"), "{name}");
    }
}

#[test]
fn amz_date_matches_known_instants() {
    // Cross-checked with Python's datetime.utcfromtimestamp.
    assert_eq!(amz_date(0), "19700101T000000Z");
    assert_eq!(amz_date(951_782_400), "20000229T000000Z"); // leap day of a /400 year
    assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
    assert_eq!(amz_date(1_709_251_199), "20240229T235959Z");
    assert_eq!(amz_date(4_107_542_400), "21000301T000000Z"); // 2100 is no leap year
    assert_eq!(amz_date(253_402_300_799), "99991231T235959Z");
    // Far-future input does not panic.
    let _ = amz_date(u64::MAX);
}

#[test]
fn every_day_of_four_centuries_round_trips() {
    // days → civil date must be strictly increasing and consistent with a simple
    // day-by-day calendar walk.
    let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    for days in 0..146_097u64 {
        assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
        let len = match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        d += 1;
        if d > len {
            d = 1;
            m += 1;
            if m > 12 {
                m = 1;
                y += 1;
            }
        }
    }
}

#[test]
fn secrets_stay_out_of_debug_and_headers() {
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "very-secret",
        session_token: Some("tok"),
    };
    let dbg = format!("{creds:?}");
    assert!(
        !dbg.contains("very-secret") && !dbg.contains("tok\""),
        "{dbg}"
    );
    let signed = sign(
        &Request {
            method: "POST",
            host: "h",
            path: "/",
            query: &[],
            headers: &[],
            payload: b"",
            sign_content_sha256: false,
        },
        &creds,
        &Scope {
            region: "r",
            service: "bedrock",
            unix_secs: 0,
        },
    );
    assert!(!signed.authorization.contains("very-secret"));
    assert_eq!(signed.payload_sha256, EMPTY_SHA256);
}
