//! Non-streaming JSON answers scanned as they pass, chunk by chunk, when they are
//! too big to hold whole (or of unknown length).
//!
//! A small state machine follows the JSON structure across chunks (containers,
//! the key path, strings, escapes) and copies every byte through unchanged except
//! the contents of completion-text strings ([`paths::response_text`], the same
//! strings a whole answer is rewritten in). Those are decoded as they arrive
//! (escapes split across chunks wait for their last byte) and run through the
//! same bounded hold-back as stream deltas (`stream::plan`): what can no longer
//! begin a value is released in the same chunk, rewritten, and the raw bytes of
//! everything not replaced go out exactly as the provider sent them (no
//! re-serialisation). What is held at a chunk's end is bounded like a stream's
//! (`holdback`, or an unfinished token / private-key block up to
//! `max_stream_hold_bytes`), plus at most one unfinished escape.
//!
//! Bytes that are not well-formed JSON (or nesting deeper than `MAX_DEPTH`)
//! end the scan: held text is released (scanned) and the rest passes unread,
//! as the whole-answer walker leaves such a body after the point it fails.

use super::stream::{self, Seg};
use super::{json, paths, PiiExchange};
use crate::dialect::Api;

/// Deepest nesting followed (as [`json::for_each_string`]).
const MAX_DEPTH: usize = 128;
/// Longest key kept for path matching; longer keys never name a text field.
const MAX_KEY: usize = 64;

/// Where the scanner is in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// A value is expected.
    Value,
    /// Just after `[`: a value or `]`.
    FirstItem,
    /// Just after `{`: a key or `}`.
    FirstKey,
    /// After `,` in an object: a key.
    Key,
    /// Inside a key string.
    InKey,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the container's end.
    After,
    /// Inside a string value; `true` when it is completion text.
    Str(bool),
    /// Inside a number or literal.
    Scalar,
    /// After the root value.
    Done,
    /// Not JSON as expected: the rest passes unread.
    Failed,
}

/// The completion-text string being read: decoded text held back, with the raw
/// bytes it came from.
#[derive(Default)]
struct Text {
    /// Decoded bytes: `buf[..ctx]` already released (context), `buf[ctx..]` held.
    buf: Vec<u8>,
    ctx: usize,
    /// `map[i]` = offset in `raw` of decoded byte `ctx + i`.
    map: Vec<usize>,
    /// Raw (escaped) bytes of the held text, then any not yet decodable tail.
    raw: Vec<u8>,
    /// `raw[..dec]` is decoded into `buf[ctx..]`.
    dec: usize,
}

impl Text {
    /// Raw offset of decoded offset `i` (`ctx <= i <= buf.len()`).
    fn raw_at(&self, i: usize) -> usize {
        self.map
            .get(i.saturating_sub(self.ctx))
            .copied()
            .unwrap_or(self.dec)
    }

    /// Decode what of `raw[dec..]` is complete (all of it when `closed`).
    fn decode(&mut self, closed: bool) {
        let end = if closed {
            self.raw.len()
        } else {
            decodable_end(&self.raw, self.dec)
        };
        let Some(part) = self.raw.get(self.dec..end) else {
            return;
        };
        if part.is_empty() {
            return;
        }
        if !part.contains(&b'\\') {
            self.buf.extend_from_slice(part);
            self.map.extend(self.dec..end);
        } else {
            let d = json::decode(part);
            self.buf.extend_from_slice(&d.text);
            let base = self.dec;
            self.map
                .extend((0..d.text.len()).map(|k| base.saturating_add(d.raw(k))));
        }
        self.dec = end;
    }

    /// Release what is safe (all when `fin`) into `out`, raw bytes kept as they
    /// came and replacements JSON-encoded.
    fn release(&mut self, ex: &mut PiiExchange, fin: bool, out: &mut Vec<u8>) {
        self.decode(fin);
        let mut segs = Vec::new();
        let cut = stream::plan(ex, &self.buf, self.ctx, fin, &mut segs);
        for s in &segs {
            match s {
                Seg::Keep(r) => {
                    let (a, b) = (self.raw_at(r.start), self.raw_at(r.end));
                    out.extend_from_slice(self.raw.get(a..b).unwrap_or(b""));
                }
                Seg::Put(rep) => json::encode_into(rep, out),
            }
        }
        let raw_cut = self.raw_at(cut);
        if fin {
            // Whatever could not be decoded (a truncated escape) goes out as it is.
            out.extend_from_slice(self.raw.get(raw_cut..).unwrap_or(b""));
            *self = Text::default();
            return;
        }
        self.raw.drain(..raw_cut.min(self.raw.len()));
        self.map
            .drain(..cut.saturating_sub(self.ctx).min(self.map.len()));
        for m in &mut self.map {
            *m -= raw_cut.min(*m);
        }
        self.dec -= raw_cut.min(self.dec);
        let k = stream::keep_from(self.ctx, cut);
        self.buf.drain(..k.min(self.buf.len()));
        self.ctx = cut - k;
    }
}

/// End of the decodable prefix of `raw[from..]`: before an escape whose bytes
/// have not all arrived. It follows [`json::decode`]'s reading exactly (a
/// non-simple escape takes 6 bytes, a high surrogate 12 when a low one follows),
/// so text decoded in pieces is the text decoded whole.
fn decodable_end(raw: &[u8], from: usize) -> usize {
    let hex4 = |at: usize| {
        raw.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    let mut i = from;
    loop {
        let Some(k) = raw
            .get(i..)
            .and_then(|r| r.iter().position(|&c| c == b'\\'))
        else {
            return raw.len();
        };
        let j = i + k;
        let need = match raw.get(j + 1) {
            None => return j,
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
            // `\uXXXX` (decode reads any other escape the same way).
            Some(_) => {
                if raw.len() < j + 6 {
                    return j;
                }
                match hex4(j + 2) {
                    Some(h) if (0xD800..0xDC00).contains(&h) => {
                        if raw.len() < j + 12 {
                            return j;
                        }
                        let pair = raw.get(j + 6..j + 8) == Some(b"\\u")
                            && hex4(j + 8).is_some_and(|l| (0xDC00..0xE000).contains(&l));
                        if pair {
                            12
                        } else {
                            6
                        }
                    }
                    _ => 6,
                }
            }
        };
        if raw.len() < j + need {
            return j;
        }
        i = j + need;
    }
}

/// Scanner state of one non-streaming answer.
pub struct JsonScan {
    api: Api,
    /// Which strings are text, by key path.
    wanted: fn(Api, &[&[u8]]) -> bool,
    st: St,
    /// Open containers, innermost last: true for objects.
    frames: Vec<bool>,
    /// Keys from the root to the current value (raw, bounded).
    keys: Vec<Vec<u8>>,
    /// The key being read.
    key: Vec<u8>,
    key_long: bool,
    /// The previous string byte was an escaping backslash.
    esc: bool,
    text: Text,
}

impl JsonScan {
    /// A scanner for an `api` answer.
    pub fn new(api: Api) -> Self {
        Self::with_paths(api, paths::response_text)
    }

    /// A scanner for one SSE event's JSON (an event too big to frame): the
    /// stream's delta texts and the whole texts of closing events; none when
    /// `text` is false.
    pub fn for_events(api: Api, text: bool) -> Self {
        fn none(_: Api, _: &[&[u8]]) -> bool {
            false
        }
        Self::with_paths(api, if text { paths::stream_event_text } else { none })
    }

    fn with_paths(api: Api, wanted: fn(Api, &[&[u8]]) -> bool) -> Self {
        JsonScan {
            api,
            wanted,
            st: St::Value,
            frames: Vec::new(),
            keys: Vec::new(),
            key: Vec::new(),
            key_long: false,
            esc: false,
            text: Text::default(),
        }
    }

    /// True once the bytes stopped being JSON as expected (the rest passes unread).
    pub fn gave_up(&self) -> bool {
        self.st == St::Failed
    }

    /// True inside a text string (something may be held).
    pub fn in_text(&self) -> bool {
        self.st == St::Str(true)
    }

    /// Rewrite one chunk: everything but completion text is copied as it is;
    /// completion text is released as soon as it is safe. `end_of_stream`
    /// releases all that is held.
    pub fn on_chunk(&mut self, ex: &mut PiiExchange, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        // chunk[copy..i] is passed through but not yet written.
        let mut copy = 0;
        let mut i = 0;
        while i < chunk.len() {
            let Some(&c) = chunk.get(i) else { break };
            match self.st {
                St::Failed => break,
                St::Str(true) => {
                    let (end, closed) = self.string_end(chunk, i);
                    self.text
                        .raw
                        .extend_from_slice(chunk.get(i..end).unwrap_or(b""));
                    out.extend_from_slice(chunk.get(copy..i).unwrap_or(b""));
                    copy = end;
                    i = end;
                    if closed {
                        self.text.release(ex, true, &mut out);
                        i += 1; // the closing quote (copied with what follows)
                        self.value_done();
                    }
                }
                St::Str(false) => {
                    let (end, closed) = self.string_end(chunk, i);
                    i = end;
                    if closed {
                        i += 1;
                        self.value_done();
                    }
                }
                St::InKey => {
                    let (end, closed) = self.string_end(chunk, i);
                    let part = chunk.get(i..end).unwrap_or(b"");
                    if self.key.len() + part.len() > MAX_KEY {
                        self.key_long = true;
                    } else {
                        self.key.extend_from_slice(part);
                    }
                    i = end;
                    if closed {
                        i += 1;
                        if self.key.contains(&b'\\') {
                            // Matched by its value, as the client reads it.
                            self.key = json::decode(&self.key).text.into_owned();
                        }
                        self.st = St::Colon;
                    }
                }
                St::Scalar => {
                    let rest = chunk.get(i..).unwrap_or(b"");
                    match rest.iter().position(|&b| is_delim(b)) {
                        Some(k) => {
                            i += k;
                            self.value_done();
                        }
                        None => i = chunk.len(),
                    }
                }
                _ if is_ws(c) => i += 1,
                St::Value | St::FirstItem => {
                    i += 1;
                    if c == b']' && self.st == St::FirstItem {
                        self.close();
                        continue;
                    }
                    if self.frames.len() > MAX_DEPTH {
                        // As deep as the whole-answer walker goes.
                        self.st = St::Failed;
                        continue;
                    }
                    match c {
                        b'"' => {
                            let want = {
                                let keys: Vec<&[u8]> =
                                    self.keys.iter().map(Vec::as_slice).collect();
                                (self.wanted)(self.api, &keys)
                            };
                            self.esc = false;
                            self.st = St::Str(want);
                        }
                        b'{' | b'[' => {
                            self.frames.push(c == b'{');
                            self.st = if c == b'{' {
                                St::FirstKey
                            } else {
                                St::FirstItem
                            };
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => self.st = St::Scalar,
                        _ => self.st = St::Failed,
                    }
                }
                St::FirstKey | St::Key => {
                    i += 1;
                    match c {
                        b'}' if self.st == St::FirstKey => self.close(),
                        b'"' => {
                            self.key.clear();
                            self.key_long = false;
                            self.esc = false;
                            self.st = St::InKey;
                        }
                        _ => self.st = St::Failed,
                    }
                }
                St::Colon => {
                    i += 1;
                    if c == b':' {
                        let key = if self.key_long {
                            vec![0xFF]
                        } else {
                            std::mem::take(&mut self.key)
                        };
                        self.keys.push(key);
                        self.st = St::Value;
                    } else {
                        self.st = St::Failed;
                    }
                }
                St::After => {
                    i += 1;
                    let obj = self.frames.last().copied();
                    match (c, obj) {
                        (b',', Some(true)) => self.st = St::Key,
                        (b',', Some(false)) => self.st = St::Value,
                        (b'}', Some(true)) => self.close(),
                        (b']', Some(false)) => self.close(),
                        _ => self.st = St::Failed,
                    }
                }
                St::Done => self.st = St::Failed,
            }
        }
        if end_of_stream && self.st == St::Str(true) {
            // Truncated inside a string: what it holds goes out scanned.
            self.text.release(ex, true, &mut out);
            self.st = St::Failed;
        }
        out.extend_from_slice(chunk.get(copy..).unwrap_or(b""));
        if self.st == St::Str(true) {
            self.text.release(ex, false, &mut out);
        }
        out
    }

    /// The end of the string content starting at `i` in `chunk`: the index of
    /// its closing quote and true, or the chunk's end and false.
    fn string_end(&mut self, chunk: &[u8], mut i: usize) -> (usize, bool) {
        if self.esc {
            if i >= chunk.len() {
                return (i, false);
            }
            self.esc = false;
            i += 1;
        }
        loop {
            let Some(k) = chunk
                .get(i..)
                .and_then(|r| r.iter().position(|&c| c == b'"' || c == b'\\'))
            else {
                return (chunk.len(), false);
            };
            let j = i + k;
            if chunk.get(j) == Some(&b'"') {
                return (j, true);
            }
            if j + 1 >= chunk.len() {
                self.esc = true;
                return (chunk.len(), false);
            }
            i = j + 2;
        }
    }

    /// A container ends.
    fn close(&mut self) {
        self.frames.pop();
        self.value_done();
    }

    /// A value ended: its member key (if in an object) is done.
    fn value_done(&mut self) {
        match self.frames.last() {
            None => self.st = St::Done,
            Some(&obj) => {
                if obj {
                    self.keys.pop();
                }
                self.st = St::After;
            }
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

fn is_delim(b: u8) -> bool {
    matches!(b, b',' | b'}' | b']') || is_ws(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text decoded piece by piece (as it arrives) is the text decoded whole,
    /// whatever the escapes, valid or not, and wherever the pieces are cut.
    #[test]
    fn decoding_in_pieces_equals_decoding_whole() {
        let raws: &[&[u8]] = &[
            br#"a\u0040b\n\"c\\"#,
            br#"x\ud83d\ude00y\ud800\ud83d\ude00z"#,
            br#"c\all +1 415\q12345\u12"#,
            br#"\ud800\u00e9\udc00\ud800x\aD83D\uDE00"#,
        ];
        for raw in raws {
            let whole = json::decode(raw).text.into_owned();
            for cut in 0..=raw.len() {
                let mut t = Text::default();
                t.raw.extend_from_slice(&raw[..cut]);
                t.decode(false);
                t.raw.extend_from_slice(&raw[cut..]);
                t.decode(true);
                assert_eq!(t.buf, whole, "{} cut {cut}", String::from_utf8_lossy(raw));
                // Every decoded byte maps into the raw bytes, in order.
                assert!(t.map.windows(2).all(|w| w[0] <= w[1]));
                assert!(t.map.iter().all(|&m| m < raw.len()));
            }
        }
    }
}
