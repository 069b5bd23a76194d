//! The document must read every body exactly as serde_json does: same accepted
//! set, same values, last duplicate key winning.

use serde_json::Value;

use super::*;
use crate::testing::{json_value as to_value, XorShift};

fn same_as_serde(text: &[u8]) {
    let ours = Doc::parse(text).map(|d| to_value(d.root()));
    let theirs = serde_json::from_slice::<Value>(text);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(text)),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "disagree on {:?}: ours {:?}, serde_json {:?}",
            String::from_utf8_lossy(text),
            ours.map(|_| ()),
            theirs.map(|_| ())
        ),
    }
}

#[test]
fn reads_what_serde_json_reads() {
    for text in [
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"n":2}"#,
        r#" [1, -0, 0.5, -1.25e+3, 1E-2, 18446744073709551615, 18446744073709551616] "#,
        r#"{"a":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude42 x","b":null,"c":[[],{}],"d":false}"#,
        r#"{"k":1,"k":2,"k":{"k":3}}"#,
        r#""just a string""#,
        "\u{feff}{}",
        r#"{"é🙂":"ünïcödé","":""}"#,
        "{\"a\":\"\\u0040\"}",
    ] {
        same_as_serde(text.as_bytes());
    }
}

#[test]
fn rejects_what_serde_json_rejects() {
    for text in [
        &b""[..],
        b"   ",
        b"{",
        b"{\"a\"}",
        b"{\"a\":}",
        b"{\"a\":1,}",
        b"[1,]",
        b"[1 2]",
        b"{1:2}",
        b"01",
        b"1.",
        b".5",
        b"-",
        b"1e",
        b"+1",
        b"tru",
        b"nul",
        b"[] []",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"\\ud800\\u0041\"",
        b"\"\\x\"",
        b"\"\\u12g4\"",
        b"\"a\x01b\"",
        b"\"\xff\xfe\"",
        b"{\"a\":\"unterminated",
        b"[\"a\\",
    ] {
        same_as_serde(text);
        assert!(
            Doc::parse(text).is_err(),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn nesting_limit_matches_serde_json() {
    for depth in 120..=132 {
        let text = "[".repeat(depth) + &"]".repeat(depth);
        same_as_serde(text.as_bytes());
        let text = "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth);
        same_as_serde(text.as_bytes());
    }
    // Far deeper than the limit: an error, not a stack overflow.
    let text = "[".repeat(100_000) + &"]".repeat(100_000);
    assert_eq!(
        Doc::parse(text.as_bytes()).unwrap_err().what,
        "nesting deeper than 128"
    );
}

/// A random JSON text with escapes, non-ASCII, numbers and nesting.
fn random_json(rng: &mut XorShift, depth: usize, out: &mut String) {
    let pick = rng.next_u64() % if depth > 4 { 4 } else { 7 };
    match pick {
        0 => out.push_str(rng.pick(&["null", "true", "false"])),
        1 => out.push_str(rng.pick(&[
            "0",
            "-7",
            "42",
            "3.25",
            "-1e5",
            "2E+2",
            "1.5e-3",
            "123456789012",
        ])),
        2 | 3 => {
            out.push('"');
            for _ in 0..rng.next_u64() % 6 {
                out.push_str(rng.pick(&[
                    "a",
                    "hé",
                    "🙂",
                    "\\n",
                    "\\\"",
                    "\\\\",
                    "\\u0041",
                    "\\ud83d\\ude00",
                    "\\/",
                    " ",
                    "\\t",
                ]));
            }
            out.push('"');
        }
        4 | 5 => {
            out.push('{');
            for i in 0..rng.next_u64() % 4 {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(rng.pick(&["\"role\"", "\"content\"", "\"k\\u0065y\"", "\"\""]));
                out.push_str(rng.pick(&[":", " : ", ":\n"]));
                random_json(rng, depth + 1, out);
            }
            out.push('}');
        }
        _ => {
            out.push('[');
            for i in 0..rng.next_u64() % 4 {
                if i > 0 {
                    out.push_str(rng.pick(&[",", ", ", "\t,"]));
                }
                random_json(rng, depth + 1, out);
            }
            out.push(']');
        }
    }
}

#[test]
fn random_documents_and_their_mutations_agree_with_serde_json() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let mut text = String::new();
        random_json(&mut rng, 0, &mut text);
        same_as_serde(text.as_bytes());
        // Truncations and single-byte edits: both accept or both refuse.
        let bytes = text.as_bytes();
        let cut = (rng.next_u64() as usize) % (bytes.len() + 1);
        same_as_serde(&bytes[..cut]);
        let mut edited = bytes.to_vec();
        if !edited.is_empty() {
            let at = (rng.next_u64() as usize) % edited.len();
            edited[at] = b"{}[]\",:\\0-e. \x01"[(rng.next_u64() % 14) as usize];
            same_as_serde(&edited);
        }
    }
}

#[test]
fn accessors() {
    let doc = Doc::parse(
        br#"{"max_tokens":12,"f":1.0,"e":1e3,"neg":-1,"s":"x","a":[1,{"b":2},3],"o":{}}"#,
    )
    .unwrap();
    let r = doc.root();
    assert_eq!(r.get("max_tokens").and_then(Node::as_u64), Some(12));
    for k in ["f", "e", "neg", "s"] {
        assert_eq!(r.get(k).and_then(Node::as_u64), None, "{k}");
    }
    let a = r.get("a").and_then(Node::as_array).unwrap();
    assert_eq!(a.len(), 3);
    let items: Vec<_> = a.iter().map(|n| n.kind()).collect();
    assert_eq!(items, [Kind::Number, Kind::Object, Kind::Number]);
    assert_eq!(a.iter().nth(2).and_then(Node::raw_number), Some("3"));
    assert!(r.get("o").unwrap().is_object());
    assert_eq!(r.get("missing").map(Node::kind), None);
    assert_eq!(r.get("s").unwrap().get("x").map(Node::kind), None);
    assert!(Array::EMPTY.iter().next().is_none());
    // Strings without escapes borrow the body.
    let body = br#"{"k":"plain"}"#;
    let doc = Doc::parse(body).unwrap();
    let s = doc.root().get("k").unwrap().as_str().unwrap();
    assert!(std::ptr::eq(s.as_ptr(), body[6..].as_ptr()));
}

#[test]
fn byte_offsets() {
    let body = br#" {"m":[ {"a":1} , "x\n", 7, [ ], true ],"k":"v"} "#;
    let doc = Doc::parse(body).unwrap();
    let r = doc.root();
    assert_eq!((r.start_byte(), r.end_byte()), (1, Some(body.len() - 1)));
    let m = r.get("m").unwrap();
    let text = |n: Node<'_>| {
        let end = n.end_byte().unwrap_or(n.start_byte() + 1);
        std::str::from_utf8(&body[n.start_byte()..end])
            .unwrap()
            .to_string()
    };
    assert_eq!(text(m), r#"[ {"a":1} , "x\n", 7, [ ], true ]"#);
    let starts: Vec<_> = m
        .as_array()
        .unwrap()
        .iter()
        .map(|n| body[n.start_byte()])
        .collect();
    assert_eq!(starts, b"{\"7[t");
    let inner: Vec<_> = m
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.end_byte().map(|_| text(n)))
        .collect();
    assert_eq!(inner, [r#"{"a":1}"#, "[ ]"]);
}

#[test]
fn long_strings_with_a_special_byte_at_every_offset() {
    // The plain-byte skip reads eight bytes at a time: put each kind of byte that
    // stops it at every offset of long strings.
    for special in [
        "\\n", "\\\"", "\\u00e9", "é", "🙂", "\u{1}", "\u{1f}", "\u{7f}", " ", "~",
    ] {
        for k in 0..40 {
            let text = format!(
                "{{\"k\":\"{}{}{}\"}}",
                "a".repeat(k),
                special,
                "b".repeat(40 - k)
            );
            same_as_serde(text.as_bytes());
        }
    }
    // Unterminated long strings, cut at every offset.
    let long = format!("[\"{}\"]", "x".repeat(70));
    for cut in 0..long.len() {
        same_as_serde(&long.as_bytes()[..cut]);
    }
}
