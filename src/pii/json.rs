//! Finding and rewriting the model text inside a JSON body without re-serialising it.
//!
//! [`for_each_string`] walks the raw bytes and reports every string value with the
//! keys leading to it (array positions alongside), so a caller picks the text
//! fields of its API by path: message content, tool arguments, system prompts —
//! never keys, ids, roles or base64 image data. [`decode`] turns a string's raw
//! content into bytes (escapes resolved: `\u0040` is `@`) with a map back to raw
//! offsets, so a replacement is spliced over exactly the raw bytes of the matched
//! value and everything else stays byte-identical.

use std::ops::Range;

/// Deepest nesting walked; deeper documents are left alone (serde_json refuses
/// them before this point anyway).
const MAX_DEPTH: usize = 128;

/// Walk `body` (a JSON document) and call `f(keys, positions, raw)` for every
/// string value: `keys` are the object keys from the root (their values: a key
/// written with escapes, `"m\u0065ssages"`, is `messages`, as the provider reads
/// it), `positions` the array positions on the way, and `raw` the range of the
/// string's content between its quotes. Returns false if the bytes are not
/// well-formed JSON (the callbacks made so far stand).
pub fn for_each_string(body: &[u8], mut f: impl FnMut(&[&[u8]], &[usize], Range<usize>)) -> bool {
    let mut w = Walker {
        b: body,
        i: 0,
        keys: Vec::new(),
        decoded: Vec::new(),
        pos: Vec::new(),
    };
    w.ws();
    w.value(&mut f, 0) && {
        w.ws();
        w.i == body.len()
    }
}

struct Walker<'a> {
    b: &'a [u8],
    i: usize,
    keys: Vec<&'a [u8]>,
    /// The decoded value of each key on the path written with escapes, by its
    /// depth in `keys` (rare: a client hiding `messages` from a raw-byte match).
    decoded: Vec<(usize, Vec<u8>)>,
    pos: Vec<usize>,
}

impl<'a> Walker<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// The raw content of a string starting at the opening quote; leaves `i`
    /// after the closing quote.
    fn string(&mut self) -> Option<Range<usize>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.i + 1;
        let mut j = start;
        loop {
            j = crate::bytescan::skip_plain(self.b, j);
            let rest = self.b.get(j..)?;
            let k = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
            j += k;
            match self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(start..j);
                }
                _ => j += 2,
            }
        }
    }

    fn value(
        &mut self,
        f: &mut impl FnMut(&[&[u8]], &[usize], Range<usize>),
        depth: usize,
    ) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match self.peek() {
            Some(b'"') => match self.string() {
                Some(r) => {
                    if self.decoded.is_empty() {
                        f(&self.keys, &self.pos, r);
                    } else {
                        let keys: Vec<&[u8]> = self
                            .keys
                            .iter()
                            .enumerate()
                            .map(|(at, raw)| {
                                self.decoded
                                    .iter()
                                    .find(|(d, _)| *d == at)
                                    .map_or(*raw, |(_, v)| v.as_slice())
                            })
                            .collect();
                        f(&keys, &self.pos, r);
                    }
                    true
                }
                None => false,
            },
            Some(b'{') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return true;
                }
                loop {
                    self.ws();
                    let Some(k) = self.string() else { return false };
                    let Some(key) = self.b.get(k) else {
                        return false;
                    };
                    self.ws();
                    if self.peek() != Some(b':') {
                        return false;
                    }
                    self.i += 1;
                    self.ws();
                    let escaped = key.contains(&b'\\');
                    if escaped {
                        self.decoded
                            .push((self.keys.len(), decode(key).text.into_owned()));
                    }
                    self.keys.push(key);
                    let ok = self.value(f, depth + 1);
                    self.keys.pop();
                    if escaped {
                        self.decoded.pop();
                    }
                    if !ok {
                        return false;
                    }
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return true;
                        }
                        _ => return false,
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return true;
                }
                let mut n = 0usize;
                loop {
                    self.ws();
                    self.pos.push(n);
                    let ok = self.value(f, depth + 1);
                    self.pos.pop();
                    if !ok {
                        return false;
                    }
                    n += 1;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return true;
                        }
                        _ => return false,
                    }
                }
            }
            Some(_) => {
                // Number or literal: skip to the next delimiter.
                let rest = self.b.get(self.i..).unwrap_or(b"");
                let n = rest
                    .iter()
                    .position(|&c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                    .unwrap_or(rest.len());
                self.i += n;
                n > 0
            }
            None => false,
        }
    }
}

/// A decoded JSON string: its bytes, and for escaped strings the raw offset
/// (relative to the content start) of every decoded byte, plus the end.
pub struct Decoded<'a> {
    /// The string's value as UTF-8 bytes (borrowed when it has no escapes, as
    /// most message text has not: no copy per string).
    pub text: std::borrow::Cow<'a, [u8]>,
    /// `map[i]` = raw offset of decoded byte `i`; `None` when no escapes (identity).
    map: Option<Vec<u32>>,
    raw_len: usize,
}

impl Decoded<'_> {
    /// Raw offset (relative to the content start) of decoded offset `i`.
    pub fn raw(&self, i: usize) -> usize {
        match &self.map {
            None => i,
            Some(m) => m.get(i).map_or(self.raw_len, |&r| r as usize),
        }
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Decode a string's raw content (between the quotes).
pub fn decode(raw: &[u8]) -> Decoded<'_> {
    if !raw.contains(&b'\\') {
        return Decoded {
            text: std::borrow::Cow::Borrowed(raw),
            map: None,
            raw_len: raw.len(),
        };
    }
    let mut text = Vec::with_capacity(raw.len());
    let mut map = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    while i < raw.len() {
        let at = i as u32;
        let c = raw.get(i).copied().unwrap_or(0);
        if c != b'\\' {
            text.push(c);
            map.push(at);
            i += 1;
            continue;
        }
        let e = raw.get(i + 1).copied().unwrap_or(b'\\');
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(s) = simple {
            text.push(s);
            map.push(at);
            i += 2;
            continue;
        }
        // \uXXXX, possibly a surrogate pair.
        let hi = raw.get(i + 2..).and_then(hex4).unwrap_or(0xFFFD);
        let mut used = 6;
        let cp = if (0xD800..0xDC00).contains(&hi) {
            let lo = raw
                .get(i + 6..)
                .filter(|r| r.starts_with(b"\\u"))
                .and_then(|r| r.get(2..))
                .and_then(hex4);
            match lo {
                Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                    used = 12;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                }
                _ => 0xFFFD,
            }
        } else if (0xDC00..0xE000).contains(&hi) {
            0xFFFD
        } else {
            hi
        };
        let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
        let mut buf = [0u8; 4];
        for &b in ch.encode_utf8(&mut buf).as_bytes() {
            text.push(b);
            map.push(at);
        }
        i += used;
    }
    Decoded {
        text: std::borrow::Cow::Owned(text),
        map: Some(map),
        raw_len: raw.len(),
    }
}

/// Append `text` as JSON string content (no quotes): `"`, `\` and control
/// characters escaped, everything else (UTF-8 included) as is.
pub fn encode_into(text: &[u8], out: &mut Vec<u8>) {
    for &b in text {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(crate::decimal::hex_digit(b >> 4));
                out.push(crate::decimal::hex_digit(b));
            }
            _ => out.push(b),
        }
    }
}

/// Rebuild `body` with each `(raw range, replacement)` edit applied; edits must be
/// sorted and not overlap.
pub fn apply_edits(body: &[u8], edits: &[(Range<usize>, Vec<u8>)]) -> Vec<u8> {
    let extra: usize = edits.iter().map(|(_, r)| r.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (r, rep) in edits {
        out.extend_from_slice(body.get(at..r.start).unwrap_or(b""));
        out.extend_from_slice(rep);
        at = r.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or(b""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_end_at_the_right_quote_whatever_the_offset() {
        // The eight-at-a-time skip must never step over a quote or a backslash.
        for len in 0..24 {
            for k in 0..len {
                for special in ["\\\"", "\\\\", "\\n"] {
                    let text: String = (0..len)
                        .map(|i| {
                            if i == k {
                                special.to_string()
                            } else {
                                "x".to_string()
                            }
                        })
                        .collect();
                    let body = format!("{{\"a\":\"{text}\",\"b\":[\"{text}\"]}}");
                    let want: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let mut got = Vec::new();
                    assert!(for_each_string(body.as_bytes(), |_, _, r| {
                        got.push(decode(&body.as_bytes()[r]).text.into_owned());
                    }));
                    let a = want["a"].as_str().unwrap().as_bytes().to_vec();
                    assert_eq!(got, vec![a.clone(), a], "{body}");
                }
            }
        }
    }

    #[test]
    fn keys_are_reported_by_their_value() {
        let body = br#"{"m\u0065ssages":[{"c\u006fntent":"x","role":"y"}],"plain":"z"}"#;
        let mut seen = Vec::new();
        assert!(for_each_string(body, |k, _, _| {
            seen.push(k.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
        }));
        let want: Vec<Vec<Vec<u8>>> = vec![
            vec![b"messages".to_vec(), b"content".to_vec()],
            vec![b"messages".to_vec(), b"role".to_vec()],
            vec![b"plain".to_vec()],
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn walks_paths_and_positions() {
        let body = br#"{"a":[{"b":"x"},{"b":"y\"z"}],"c":{"d":1,"e":"w"},"f":true}"#;
        let mut seen = Vec::new();
        assert!(for_each_string(body, |k, p, r| {
            let k: Vec<String> = k
                .iter()
                .map(|k| String::from_utf8_lossy(k).into())
                .collect();
            seen.push((
                k.join("."),
                p.to_vec(),
                String::from_utf8_lossy(&body[r]).to_string(),
            ));
        }));
        assert_eq!(
            seen,
            vec![
                ("a.b".into(), vec![0], "x".into()),
                ("a.b".into(), vec![1], r#"y\"z"#.into()),
                ("c.e".into(), vec![], "w".into()),
            ]
        );
        assert!(!for_each_string(br#"{"a":"#, |_, _, _| {}));
    }

    #[test]
    fn decodes_escapes_with_a_raw_map() {
        let raw = br#"a\u0040b\n\ud83d\ude00c"#;
        let d = decode(raw);
        assert_eq!(d.text, "a@b\n😀c".as_bytes());
        assert_eq!(d.raw(1), 1); // '@' comes from the \u0040 at raw 1
        assert_eq!(d.raw(2), 7);
        assert_eq!(d.raw(4), 10); // emoji from raw 10
        assert_eq!(d.raw(d.text.len()), raw.len());
        let mut out = Vec::new();
        encode_into(b"q\"\\\n\x01", &mut out);
        assert_eq!(out, br#"q\"\\\n\u0001"#);
    }
}
