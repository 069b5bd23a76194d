//! Ask OpenAI for streamed usage without the client noticing.
//!
//! An OpenAI stream carries no token counts unless the request sets
//! `stream_options.include_usage`, and counting the deltas ourselves is only an
//! estimate. So tollgate turns it on, and [`crate::usage::stream::StreamMeter`]
//! removes what it adds from the stream when the client had not asked for it.
//!
//! The body is edited by splicing bytes, not by re-serialising: everything the
//! client sent (key order, number formatting, escapes, whitespace) reaches the
//! provider unchanged apart from the one member, and no JSON tree is rebuilt.

use std::ops::Range;

use super::doc::Node;

/// What [`ensure_stream_usage`] did to a request body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Injection {
    /// The body to send instead, when usage had to be switched on; `None` means
    /// forward the original bytes.
    pub body: Option<Vec<u8>>,
    /// The client itself set `stream_options.include_usage: true`, so the usage
    /// chunk and `"usage":null` members are its to see and must not be stripped.
    pub client_asked: bool,
}

/// Make a streaming OpenAI chat/completions request ask for usage.
///
/// `parsed` is the same body already parsed by the caller, so deciding costs no
/// second parse; the bytes are only scanned (not parsed) to find where to splice.
/// Requests that are not `"stream": true` are left alone.
pub fn ensure_stream_usage(body: &[u8], parsed: Node<'_>) -> Injection {
    if parsed.get("stream").and_then(Node::as_bool) != Some(true) {
        return Injection::default();
    }
    let options = parsed.get("stream_options");
    if options
        .and_then(|o| o.get("include_usage"))
        .and_then(Node::as_bool)
        == Some(true)
    {
        return Injection {
            body: None,
            client_asked: true,
        };
    }
    Injection {
        body: splice_include_usage(body, options),
        client_asked: false,
    }
}

fn splice_include_usage(body: &[u8], options: Option<Node<'_>>) -> Option<Vec<u8>> {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return None;
    }
    match options {
        None => {
            // Fresh member first, so no other byte moves relative to its neighbours.
            // `"stream": true` exists, so the object is not empty and needs the comma.
            Some(splice(body, open + 1..open + 1, &[MEMBER, b","].concat()))
        }
        Some(o) if o.is_object() => {
            let m = find_member(body, b"stream_options")?;
            let obj = body.get(m.value.clone())?;
            if o.get("include_usage").is_some() {
                let inner = find_member(obj, b"include_usage")?;
                let at = m.value.start + inner.value.start..m.value.start + inner.value.end;
                Some(splice(body, at, b"true"))
            } else {
                let inner_open = m.value.start + 1;
                let empty = obj.get(skip_ws(obj, 1)) == Some(&b'}');
                let ins: &[u8] = if empty {
                    br#""include_usage":true"#
                } else {
                    br#""include_usage":true,"#
                };
                Some(splice(body, inner_open..inner_open, ins))
            }
        }
        Some(_) => {
            // `null` or a non-object: replace the value (a duplicate key would lose to it).
            let m = find_member(body, b"stream_options")?;
            Some(splice(body, m.value, br#"{"include_usage":true}"#))
        }
    }
}

fn splice(body: &[u8], at: Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len().saturating_sub(at.len()) + with.len());
    out.extend_from_slice(body.get(..at.start).unwrap_or_default());
    out.extend_from_slice(with);
    out.extend_from_slice(body.get(at.end..).unwrap_or_default());
    out
}

/// Where a top-level member of a JSON object sits in its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// The member's value.
    pub value: Range<usize>,
    /// The bytes to delete to remove the member and exactly one adjoining comma, so
    /// the object stays valid: from the end of the previous value when there is
    /// one, else from the key up to the next key.
    pub removal: Range<usize>,
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = s.get(i) {
        i += 1;
    }
    i
}

/// End (exclusive) of the string whose opening quote is at `i`.
fn skip_string(s: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// End (exclusive) of the JSON value starting at `i`; a shallow lexer that trusts
/// the input to be JSON already (the caller parsed it) but never reads out of bounds.
fn skip_value(s: &[u8], i: usize) -> Option<usize> {
    match *s.get(i)? {
        b'"' => skip_string(s, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&b) = s.get(j) {
                match b {
                    b'"' => {
                        j = skip_string(s, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while s
                .get(j)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Find the top-level member `key` (compared as raw, unescaped bytes) of the JSON
/// object in `json`. With duplicate keys the last one wins, as in `serde_json`.
/// `None` if absent or the text is not an object.
pub(crate) fn find_member(json: &[u8], key: &[u8]) -> Option<Member> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut prev_value_end: Option<usize> = None;
    let mut found = None;
    loop {
        i = skip_ws(json, i);
        match json.get(i)? {
            b'}' => return found,
            b'"' => {}
            _ => return None,
        }
        let key_start = i;
        let key_end = skip_string(json, i)?;
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(json, i + 1);
        let value_end = skip_value(json, value_start)?;
        i = skip_ws(json, value_end);
        let comma = json.get(i) == Some(&b',');
        if comma {
            i += 1;
        }
        if json.get(key_start + 1..key_end.saturating_sub(1)) == Some(key) {
            let removal = match prev_value_end {
                Some(p) => p..value_end,
                None if comma => key_start..skip_ws(json, i),
                None => key_start..value_end,
            };
            found = Some(Member {
                value: value_start..value_end,
                removal,
            });
        }
        prev_value_end = Some(value_end);
        if !comma {
            i = skip_ws(json, i);
            return (json.get(i) == Some(&b'}')).then_some(found).flatten();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn run(body: &str) -> (Injection, Option<Value>) {
        let parsed: Value = serde_json::from_str(body).unwrap();
        let doc = crate::dialect::doc::Doc::parse(body.as_bytes()).unwrap();
        let inj = ensure_stream_usage(body.as_bytes(), doc.root());
        let after = inj
            .body
            .as_ref()
            .map(|b| serde_json::from_slice::<Value>(b).expect("valid JSON after splice"));
        if let Some(a) = &after {
            let mut want = parsed.clone();
            if !want["stream_options"].is_object() {
                want["stream_options"] = serde_json::json!({});
            }
            want["stream_options"]["include_usage"] = Value::Bool(true);
            assert_eq!(a, &want, "{body}");
        }
        (inj, after)
    }

    #[test]
    fn injects_by_splicing_after_the_opening_brace() {
        let body = "  {\"model\":\"gpt-5-nano\", \"stream\" : true,\"messages\":[]}";
        let (inj, _) = run(body);
        assert!(!inj.client_asked);
        let out = String::from_utf8(inj.body.unwrap()).unwrap();
        assert_eq!(out, "  {\"stream_options\":{\"include_usage\":true},\"model\":\"gpt-5-nano\", \"stream\" : true,\"messages\":[]}");
    }

    #[test]
    fn client_who_asked_is_left_alone() {
        let (inj, _) = run(r#"{"stream":true,"stream_options":{"include_usage":true}}"#);
        assert_eq!(
            inj,
            Injection {
                body: None,
                client_asked: true
            }
        );
    }

    #[test]
    fn non_streaming_is_left_alone() {
        for b in [
            r#"{"stream":false}"#,
            r#"{"model":"x"}"#,
            r#"{"stream":"true"}"#,
            r#"{"stream":null}"#,
        ] {
            assert_eq!(run(b).0, Injection::default(), "{b}");
        }
    }

    #[test]
    fn existing_stream_options_are_edited_in_place() {
        for body in [
            r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"stream":true,"stream_options":{"include_usage": null ,"x":1}}"#,
            r#"{"stream":true,"stream_options":{}}"#,
            r#"{"stream":true,"stream_options":{ }}"#,
            r#"{"stream":true,"stream_options":{"other":"}\"{"}}"#,
            r#"{"stream":true,"stream_options":null,"m":[1,{"a":"b"}]}"#,
            r#"{"stream_options": 5, "stream":true}"#,
            "{\n  \"stream\": true,\n  \"stream_options\": {\n    \"include_usage\": false\n  }\n}",
        ] {
            let (inj, after) = run(body);
            assert!(!inj.client_asked);
            assert!(after.is_some(), "{body}");
        }
    }

    #[test]
    fn recorded_requests() {
        let mut n = 0;
        for r in crate::usage::testdata::all() {
            let Ok(parsed) = serde_json::from_str::<Value>(&r.request) else {
                continue;
            };
            let doc = crate::dialect::doc::Doc::parse(r.request.as_bytes()).unwrap();
            let inj = ensure_stream_usage(r.request.as_bytes(), doc.root());
            let streaming = parsed["stream"] == Value::Bool(true);
            let asked = parsed["stream_options"]["include_usage"] == Value::Bool(true);
            assert_eq!(inj.client_asked, asked, "{}", r.name);
            assert_eq!(inj.body.is_some(), streaming && !asked, "{}", r.name);
            if inj.body.is_some() {
                run(&r.request);
                n += 1;
            }
        }
        assert!(n >= 3);
    }

    #[test]
    fn member_removal_ranges() {
        let cases = [
            (r#"{"a":1,"usage":null,"b":2}"#, r#"{"a":1,"b":2}"#),
            (r#"{"a":1, "usage": null}"#, r#"{"a":1}"#),
            (r#"{"usage":null, "b":2}"#, r#"{"b":2}"#),
            (r#"{ "usage" : {"x":[1,"}"]} }"#, r#"{  }"#),
            (
                r#"{"a":"usage","usage":{"p":1},"c":[]}"#,
                r#"{"a":"usage","c":[]}"#,
            ),
        ];
        for (json, want) in cases {
            let m = find_member(json.as_bytes(), b"usage").unwrap();
            let out = splice(json.as_bytes(), m.removal, b"");
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        for bad in [
            &b"[]"[..],
            b"{\"usage\"",
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"",
            b"{\"x\":\"\\",
            b"{\"a\":1 \"usage\":2}",
        ] {
            assert_eq!(find_member(bad, b"usage"), None);
        }
        assert_eq!(find_member(br#"{"a":{"usage":1}}"#, b"usage"), None);
    }
}
