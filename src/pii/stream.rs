//! PII in streamed answers: restore placeholders and redact values in text deltas
//! that arrive a few bytes at a time.
//!
//! Each text stream (a chat choice's content, one tool call's arguments, an
//! Anthropic content block, a Responses output item) keeps its own small pending
//! buffer. When a delta arrives it is appended and everything that can no longer
//! be the beginning of a value is released into the same event, rewritten; the
//! rest waits for the next delta. What waits is bounded:
//! - the last [`holdback`](super::engine::Engine::holdback) bytes (the longest match that contains a
//!   separator, e.g. `4111 1111 1111 1111` or `password = hunter2`, or a placeholder);
//! - an unfinished token run (key, JWT, e-mail, IP: letters, digits and `_-.+/=@%:<>`)
//!   and an unfinished `-----BEGIN … PRIVATE KEY-----` block, up to
//!   `max_stream_hold_bytes`, after which text is released as it is.
//!
//! A match that ends inside the held tail is held whole, so a value is never
//! split between a released and a held part: nothing leaks at a chunk boundary.
//! When the text stream ends (finish reason, block stop, `[DONE]`, end of body)
//! the rest is flushed, in an event of the same kind synthesised for it if the
//! closing event carries no text of its own. Work per event is proportional to
//! the event plus the bounded pending text. An event too big to frame (over
//! 1 MiB) is not held: its JSON is scanned as it passes (`BigEvent`).

use std::borrow::Cow;
use std::ops::Range;

use serde_json::{json, Value};

use super::detectors::is_token_byte;
use super::engine::Hit;
use super::json;
use super::json_stream::JsonScan;
use super::{paths, Direction, PiiExchange};
use crate::dialect::sse::{SseEvent, SseFramer};
use crate::dialect::Api;
use crate::usage::stream::Rewrite;

/// Which text of an OpenAI choice a delta extends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// `content` (or completions `text`).
    Content,
    /// `reasoning_content` (DeepSeek-style reasoning, and tollgate's own
    /// translation of Anthropic thinking).
    Reasoning,
    /// A tool call's `arguments`, by tool-call index.
    Tool(u64),
}

/// Which text stream a delta belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    /// OpenAI chat/completions: choice index and which of its texts.
    Choice(u64, Part),
    /// Anthropic content block index; true for `partial_json` (tool input).
    Block(u64, bool),
    /// Responses: item id and content index.
    Item(String, u64),
}

/// Held text of one text stream.
struct Pending {
    key: Key,
    /// `buf[..ctx]` is the last released byte (context for word boundaries),
    /// `buf[ctx..]` the held text.
    buf: Vec<u8>,
    ctx: usize,
    /// Responses: the last delta event, the shape a flush event copies.
    template: Option<(Option<String>, Value)>,
}

/// Per-stream PII state.
pub struct PiiStream {
    api: Api,
    framer: SseFramer,
    pending: Vec<Pending>,
    /// Chat: `id`, `created`, `model` … of the stream, for flush chunks.
    header: Option<Value>,
    /// Responses: `sequence_number` of the last event passed on; an event
    /// synthesised after it repeats it, so every provider event keeps its number.
    last_seq: Option<Value>,
    /// An event too big to frame, being read as it passes.
    big: Option<BigEvent>,
}

const MAX_EVENT_BYTES: usize = 1 << 20;

impl PiiStream {
    /// A stream of `api` answers.
    pub fn new(api: Api) -> Self {
        PiiStream {
            api,
            framer: SseFramer::new(MAX_EVENT_BYTES),
            pending: Vec::new(),
            header: None,
            last_seq: None,
            big: None,
        }
    }

    /// Rewrite one chunk; see the module docs.
    pub fn on_chunk(&mut self, ex: &mut PiiExchange, chunk: &[u8], end_of_stream: bool) -> Rewrite {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        let mut cur: Cow<'_, [u8]> = Cow::Borrowed(chunk);
        let mut at = 0usize;
        // Each pass consumes the rest of `cur`, or ends a big event inside it (at
        // least one byte further): bounded by the chunk's length.
        loop {
            let rest = cur.get(at..).unwrap_or(b"");
            if let Some(mut big) = self.big.take() {
                match big.feed(ex, rest, &mut out) {
                    // The event ended (k >= 1: at least its blank line).
                    Some(k) => {
                        at += k;
                        self.framer = SseFramer::new(MAX_EVENT_BYTES);
                        continue;
                    }
                    None => {
                        self.big = Some(big);
                        break;
                    }
                }
            }
            let mut framer = std::mem::take(&mut self.framer);
            framer.push(rest, |ev| self.on_event(ex, &ev, &mut out));
            if !framer.gave_up() {
                self.framer = framer;
                break;
            }
            // An event too large to frame: what earlier deltas held goes first, then
            // the event is read as it passes (its text scanned like a JSON answer's),
            // and framing resumes after it.
            self.flush_all(ex, &mut out);
            let start = usize::try_from(
                framer
                    .pending_start()
                    .saturating_sub(framer.position().saturating_sub(rest.len() as u64)),
            )
            .unwrap_or(0)
            .min(rest.len());
            let mut bytes = framer.take_held();
            bytes.extend_from_slice(rest.get(start..).unwrap_or(b""));
            self.big = Some(BigEvent::new(self.api));
            self.framer = SseFramer::new(MAX_EVENT_BYTES);
            cur = Cow::Owned(bytes);
            at = 0;
        }
        if end_of_stream {
            match self.big.take() {
                Some(mut big) => big.finish(ex, &mut out),
                None => {
                    let mut framer = std::mem::take(&mut self.framer);
                    framer.finish(|ev| self.on_event(ex, &ev, &mut out));
                    self.framer = framer;
                }
            }
            self.flush_all(ex, &mut out);
        }
        Rewrite::Replace(out)
    }

    fn on_event(&mut self, ex: &mut PiiExchange, ev: &SseEvent<'_>, out: &mut Vec<u8>) {
        let raw = ev.raw();
        let Some(data) = ev.data() else {
            out.extend_from_slice(raw);
            return;
        };
        if data.trim_ascii() == b"[DONE]" {
            self.flush_all(ex, out);
            out.extend_from_slice(raw);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            out.extend_from_slice(raw);
            return;
        };
        let name = ev.event().map(str::to_string);
        let new_data = match self.api {
            Api::ChatCompletions | Api::Completions => self.chat_event(ex, data, &v, out),
            Api::AnthropicMessages => self.anthropic_event(ex, data, &v, out),
            Api::Responses => {
                let nd = self.responses_event(ex, data, &v, name, out);
                if let Some(n) = v.get("sequence_number") {
                    self.last_seq = Some(n.clone());
                }
                nd
            }
            Api::Embeddings => None,
        };
        match new_data {
            None => out.extend_from_slice(raw),
            Some(nd) => {
                let off = (data.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
                match raw.get(off..off.saturating_add(data.len())) {
                    Some(d) if ev.data_is_borrowed() && d.as_ptr() == data.as_ptr() => {
                        out.extend_from_slice(raw.get(..off).unwrap_or(b""));
                        out.extend_from_slice(&nd);
                        out.extend_from_slice(raw.get(off + data.len()..).unwrap_or(b""));
                    }
                    _ => {
                        if let Some(n) = ev.event() {
                            out.extend_from_slice(format!("event: {n}\n").as_bytes());
                        }
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(&nd);
                        out.extend_from_slice(b"\n\n");
                    }
                }
            }
        }
    }

    fn chat_event(
        &mut self,
        ex: &mut PiiExchange,
        data: &[u8],
        v: &Value,
        out: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        if self.header.is_none() && v.get("choices").is_some() {
            let mut h = serde_json::Map::new();
            for k in ["id", "object", "created", "model", "system_fingerprint"] {
                if let Some(x) = v.get(k) {
                    h.insert(k.to_string(), x.clone());
                }
            }
            self.header = Some(Value::Object(h));
        }
        let choices = v.get("choices").and_then(Value::as_array)?;
        let index_of = |p: usize| -> u64 {
            choices
                .get(p)
                .and_then(|c| c.get("index"))
                .and_then(Value::as_u64)
                .unwrap_or(p as u64)
        };
        let finished: Vec<u64> = choices
            .iter()
            .enumerate()
            .filter(|(_, c)| c.get("finish_reason").is_some_and(|f| !f.is_null()))
            .map(|(p, _)| index_of(p))
            .collect();
        let mut found: Vec<(Key, Range<usize>)> = Vec::new();
        json::for_each_string(data, |keys, pos, r| {
            let choice = pos.first().map_or(0, |&p| index_of(p));
            match keys {
                [b"choices", b"delta", b"content"] | [b"choices", b"text"] => {
                    found.push((Key::Choice(choice, Part::Content), r))
                }
                [b"choices", b"delta", b"reasoning_content"] => {
                    found.push((Key::Choice(choice, Part::Reasoning), r))
                }
                [b"choices", b"delta", b"tool_calls", b"function", b"arguments"] => {
                    let p = pos.first().copied().unwrap_or(0);
                    let t = pos.get(1).copied().unwrap_or(0);
                    let tool = choices
                        .get(p)
                        .and_then(|c| c.pointer(&format!("/delta/tool_calls/{t}/index")))
                        .and_then(Value::as_u64)
                        .unwrap_or(t as u64);
                    found.push((Key::Choice(choice, Part::Tool(tool)), r));
                }
                _ => {}
            }
        });
        // A different text stream of the same choice starts: the old one is over.
        for (k, _) in &found {
            if let Key::Choice(c, _) = k {
                let stale: Vec<Key> = self
                    .pending
                    .iter()
                    .filter(|p| matches!(&p.key, Key::Choice(pc, _) if pc == c) && &p.key != k)
                    .map(|p| p.key.clone())
                    .collect();
                for s in stale {
                    self.flush(ex, &s, out);
                }
            }
        }
        let edits = self.feed_all(
            ex,
            data,
            found,
            |k| matches!(k, Key::Choice(c, _) if finished.contains(c)),
        );
        // Finished choices with text still held and no text in this event.
        let done: Vec<Key> = self
            .pending
            .iter()
            .filter(|p| matches!(&p.key, Key::Choice(c, _) if finished.contains(c)))
            .map(|p| p.key.clone())
            .collect();
        for k in done {
            self.flush(ex, &k, out);
        }
        edits
    }

    fn anthropic_event(
        &mut self,
        ex: &mut PiiExchange,
        data: &[u8],
        v: &Value,
        out: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match ty {
            "content_block_delta" => {
                let mut found = Vec::new();
                json::for_each_string(data, |keys, _, r| match keys {
                    [b"delta", b"text"] => found.push((Key::Block(index, false), r)),
                    [b"delta", b"partial_json"] => found.push((Key::Block(index, true), r)),
                    _ => {}
                });
                self.feed_all(ex, data, found, |_| false)
            }
            "content_block_stop" => {
                let keys: Vec<Key> = self
                    .pending
                    .iter()
                    .filter(|p| matches!(p.key, Key::Block(b, _) if b == index))
                    .map(|p| p.key.clone())
                    .collect();
                for k in keys {
                    self.flush(ex, &k, out);
                }
                None
            }
            "message_delta" | "message_stop" => {
                self.flush_all(ex, out);
                None
            }
            _ => None,
        }
    }

    fn responses_event(
        &mut self,
        ex: &mut PiiExchange,
        data: &[u8],
        v: &Value,
        name: Option<String>,
        out: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        // Text deltas (output text, arguments, transcripts, reasoning summaries);
        // `response.audio.delta` is base64 audio, never scanned.
        if ty.ends_with(".delta")
            && ty != "response.audio.delta"
            && v.get("delta").is_some_and(Value::is_string)
        {
            let item = v
                .get("item_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ci = v.get("content_index").and_then(Value::as_u64).unwrap_or(0);
            let key = Key::Item(item, ci);
            let mut found = Vec::new();
            json::for_each_string(data, |keys, _, r| {
                if keys == [b"delta"] {
                    found.push((key.clone(), r));
                }
            });
            let edits = self.feed_all(ex, data, found, |_| false);
            if let Some(p) = self.pending.iter_mut().find(|p| p.key == key) {
                p.template = Some((name, v.clone()));
            }
            return edits;
        }
        if ty.ends_with(".done")
            || ty.starts_with("response.completed")
            || ty == "response.incomplete"
            || ty == "response.failed"
        {
            self.flush_all(ex, out);
            // Whole texts repeated at the end: restore/scan them like a JSON answer.
            return ex.rewrite_json_with(data, Direction::Response, |keys| {
                paths::response_text(Api::Responses, keys)
            });
        }
        None
    }

    /// Feed every found delta string of one event; returns the event's new data
    /// if any string changed. `is_final` marks text streams that end with this event.
    fn feed_all(
        &mut self,
        ex: &mut PiiExchange,
        data: &[u8],
        found: Vec<(Key, Range<usize>)>,
        is_final: impl Fn(&Key) -> bool,
    ) -> Option<Vec<u8>> {
        let mut edits = Vec::new();
        for (key, r) in found {
            let raw = data.get(r.clone())?;
            let dec = json::decode(raw);
            let fin = is_final(&key);
            let text = self.feed(ex, &key, &dec.text, fin);
            if text[..] != dec.text[..] {
                let mut enc = Vec::with_capacity(text.len());
                json::encode_into(&text, &mut enc);
                edits.push((r, enc));
            }
        }
        (!edits.is_empty()).then(|| json::apply_edits(data, &edits))
    }

    /// Append a delta to its text stream and return what can be released now.
    fn feed(&mut self, ex: &mut PiiExchange, key: &Key, delta: &[u8], fin: bool) -> Vec<u8> {
        let i = match self.pending.iter().position(|p| &p.key == key) {
            Some(i) => i,
            None => {
                self.pending.push(Pending {
                    key: key.clone(),
                    buf: Vec::new(),
                    ctx: 0,
                    template: None,
                });
                self.pending.len() - 1
            }
        };
        let Some(p) = self.pending.get_mut(i) else {
            return delta.to_vec();
        };
        p.buf.extend_from_slice(delta);
        let out = release(ex, p, fin);
        if fin {
            self.pending.remove(i);
        }
        out
    }

    /// End a text stream: release all it holds in a synthesised event.
    fn flush(&mut self, ex: &mut PiiExchange, key: &Key, out: &mut Vec<u8>) {
        let Some(i) = self.pending.iter().position(|p| &p.key == key) else {
            return;
        };
        let mut p = self.pending.remove(i);
        let text = release(ex, &mut p, true);
        if text.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let (name, v) = match &p.key {
            Key::Choice(c, tool) => {
                let mut v = self.header.clone().unwrap_or_else(|| json!({}));
                let choice = if self.api == Api::Completions {
                    json!({"index": c, "text": text, "logprobs": null, "finish_reason": null})
                } else {
                    let delta = match tool {
                        Part::Content => json!({"content": text}),
                        Part::Reasoning => json!({"reasoning_content": text}),
                        Part::Tool(t) => {
                            json!({"tool_calls": [{"index": t, "function": {"arguments": text}}]})
                        }
                    };
                    json!({"index": c, "delta": delta, "logprobs": null, "finish_reason": null})
                };
                if let Some(o) = v.as_object_mut() {
                    o.insert("choices".into(), json!([choice]));
                }
                (None, v)
            }
            Key::Block(b, partial) => {
                let delta = if *partial {
                    json!({"type": "input_json_delta", "partial_json": text})
                } else {
                    json!({"type": "text_delta", "text": text})
                };
                (
                    Some("content_block_delta".to_string()),
                    json!({"type": "content_block_delta", "index": b, "delta": delta}),
                )
            }
            Key::Item(..) => match p.template.take() {
                Some((name, mut v)) => {
                    if let Some(o) = v.as_object_mut() {
                        o.insert("delta".into(), Value::String(text));
                        if let Some(n) = &self.last_seq {
                            o.insert("sequence_number".into(), n.clone());
                        }
                    }
                    (name, v)
                }
                None => return,
            },
        };
        if let Some(n) = name {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(n.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }

    fn flush_all(&mut self, ex: &mut PiiExchange, out: &mut Vec<u8>) {
        let keys: Vec<Key> = self.pending.iter().map(|p| p.key.clone()).collect();
        for k in keys {
            self.flush(ex, &k, out);
        }
    }
}

/// One piece of released text: `buf` bytes kept as they are, or replaced.
pub(super) enum Seg {
    /// `buf[range]` goes out unchanged.
    Keep(Range<usize>),
    /// A finding goes out as these bytes instead.
    Put(Vec<u8>),
}

/// What of `buf[ctx..]` can be released now (all of it when `fin`), as segments
/// in order; returns where the held rest starts. Findings in the released part
/// are counted and replaced; a match that ends in the held tail is held whole.
pub(super) fn plan(
    ex: &mut PiiExchange,
    buf: &[u8],
    ctx: usize,
    fin: bool,
    segs: &mut Vec<Seg>,
) -> usize {
    let engine = ex.engine.clone();
    let mut hits: Vec<Hit> = std::mem::take(&mut ex.hits);
    hits.clear();
    engine.scan(buf, ctx, true, &mut hits);
    let len = buf.len();
    let mut cut = if fin {
        len
    } else {
        safe_cut(buf, ctx, engine.holdback, engine.max_hold)
    };
    if !fin {
        if let Some(h) = hits.iter().find(|h| h.end > cut) {
            cut = cut.min(h.from);
        }
    }
    let mut at = ctx;
    for &h in hits.iter().filter(|h| h.end <= cut) {
        if let Some(rep) = ex.replacement(h, buf, Direction::Response) {
            if h.start > at {
                segs.push(Seg::Keep(at..h.start));
            }
            segs.push(Seg::Put(rep));
            at = h.end;
        }
    }
    if cut > at {
        segs.push(Seg::Keep(at..cut));
    }
    ex.hits = hits;
    cut
}

/// Where to start the kept context after releasing up to `cut`: a few released
/// bytes stay (word boundaries; validators look one or two bytes back).
pub(super) fn keep_from(ctx: usize, cut: usize) -> usize {
    if cut > ctx {
        cut.saturating_sub(8)
    } else {
        0
    }
}

/// Release what of `p` is safe (all of it when `fin`), rewritten.
fn release(ex: &mut PiiExchange, p: &mut Pending, fin: bool) -> Vec<u8> {
    let mut segs = Vec::new();
    let cut = plan(ex, &p.buf, p.ctx, fin, &mut segs);
    let mut out = Vec::with_capacity(cut.saturating_sub(p.ctx));
    for s in &segs {
        match s {
            Seg::Keep(r) => out.extend_from_slice(p.buf.get(r.clone()).unwrap_or(b"")),
            Seg::Put(rep) => out.extend_from_slice(rep),
        }
    }
    let k = keep_from(p.ctx, cut);
    p.buf.drain(..k);
    p.ctx = cut - k;
    out
}

/// Where the held tail of `buf[from..]` starts: at most `holdback` bytes from
/// the end, moved back to the start of an unfinished token run or private-key
/// block (if that is within `max_hold`), and onto a UTF-8 character boundary.
fn safe_cut(buf: &[u8], from: usize, holdback: usize, max_hold: usize) -> usize {
    let len = buf.len();
    let mut c = len.saturating_sub(holdback).max(from);
    if c > from && c < len {
        let tok = |i: usize| buf.get(i).copied().is_some_and(is_token_byte);
        if tok(c - 1) && tok(c) {
            let mut r = c - 1;
            while r > from && tok(r - 1) {
                r -= 1;
            }
            if len - r <= max_hold {
                c = r;
            }
        }
    }
    if let Some(p) = rfind(buf.get(from..).unwrap_or(b""), b"-----BEGIN") {
        let p = from + p;
        let closed = rfind(buf.get(p..).unwrap_or(b""), b"-----END").is_some_and(|e| {
            // `-----END … KEY-----` complete?
            buf.get(p + e + 8..)
                .is_some_and(|t| t.windows(5).any(|w| w == b"-----"))
        });
        if !closed && len - p <= max_hold {
            c = c.min(p);
        }
    }
    while c > from && c < len && buf.get(c).is_some_and(|b| b & 0xC0 == 0x80) {
        c -= 1;
    }
    c
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| hay.get(i..i + needle.len()) == Some(needle))
}

/// Longest `event:` name or field name looked at in a big event.
const MAX_FIELD: usize = 64;

/// Where a [`BigEvent`] is within its current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BigLine {
    /// At a line's start, reading the field name.
    Head,
    /// After `data:`, before the optional space.
    DataSpace,
    /// In a `data:` value: JSON, scanned as it passes.
    Data,
    /// In an `event:` value (kept, bounded).
    Name,
    /// In any other line.
    Other,
}

/// An SSE event over `MAX_EVENT_BYTES` (e.g. a `response.completed` repeating a
/// long answer): its lines pass as they come, and the JSON of its `data:` lines is
/// scanned like a non-streaming answer ([`JsonScan`], the stream's text paths).
/// Its text is scanned on its own: pending text of other events was flushed first.
struct BigEvent {
    api: Api,
    line: BigLine,
    head: Vec<u8>,
    name: Vec<u8>,
    scan: Option<JsonScan>,
    /// The previous byte was a `\r`: a `\n` right after it ends the same line.
    cr: bool,
}

impl BigEvent {
    fn new(api: Api) -> Self {
        BigEvent {
            api,
            line: BigLine::Head,
            head: Vec::new(),
            name: Vec::new(),
            scan: None,
            cr: false,
        }
    }

    /// Pass `bytes` on into `out`, rewritten; `Some(k)` when the event ended at
    /// `bytes[..k]` (the rest is framed again).
    fn feed(&mut self, ex: &mut PiiExchange, bytes: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while let Some(&c) = bytes.get(i) {
            if std::mem::take(&mut self.cr) && c == b'\n' {
                out.push(c);
                i += 1;
                continue;
            }
            let newline = c == b'\n' || c == b'\r';
            match self.line {
                BigLine::Head => {
                    i += 1;
                    if newline {
                        out.extend_from_slice(&self.head);
                        out.push(c);
                        self.cr = c == b'\r';
                        if self.head.is_empty() {
                            // A blank line: the event ends here.
                            if self.cr && bytes.get(i) == Some(&b'\n') {
                                out.push(b'\n');
                                i += 1;
                            }
                            self.scan = None;
                            return Some(i);
                        }
                        self.head.clear();
                    } else if c == b':' {
                        out.extend_from_slice(&self.head);
                        out.push(c);
                        self.line = match self.head.as_slice() {
                            b"data" => BigLine::DataSpace,
                            b"event" => {
                                self.name.clear();
                                BigLine::Name
                            }
                            _ => BigLine::Other,
                        };
                        self.head.clear();
                    } else if self.head.len() >= MAX_FIELD {
                        out.extend_from_slice(&self.head);
                        out.push(c);
                        self.head.clear();
                        self.line = BigLine::Other;
                    } else {
                        self.head.push(c);
                    }
                }
                BigLine::DataSpace => {
                    if c == b' ' {
                        out.push(c);
                        i += 1;
                    }
                    self.line = BigLine::Data;
                }
                BigLine::Data => {
                    let rest = bytes.get(i..).unwrap_or(b"");
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .unwrap_or(rest.len());
                    let api = self.api;
                    // Base64 audio is never read.
                    let audio = self.name.trim_ascii() == b"response.audio.delta";
                    let scan = self
                        .scan
                        .get_or_insert_with(|| JsonScan::for_events(api, !audio));
                    out.extend_from_slice(&scan.on_chunk(ex, rest.get(..n).unwrap_or(b""), false));
                    i += n;
                    if let Some(&nl) = bytes.get(i) {
                        // The line ends: a string cannot go on past it.
                        if scan.in_text() {
                            out.extend_from_slice(&scan.on_chunk(ex, b"", true));
                        }
                        self.end_line(nl, out);
                        i += 1;
                    }
                }
                BigLine::Name | BigLine::Other => {
                    let rest = bytes.get(i..).unwrap_or(b"");
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .unwrap_or(rest.len());
                    let part = rest.get(..n).unwrap_or(b"");
                    if self.line == BigLine::Name && self.name.len() + part.len() <= MAX_FIELD {
                        self.name.extend_from_slice(part);
                    }
                    out.extend_from_slice(part);
                    i += n;
                    if let Some(&nl) = bytes.get(i) {
                        self.end_line(nl, out);
                        i += 1;
                    }
                }
            }
        }
        None
    }

    /// A non-blank line ends with `nl`.
    fn end_line(&mut self, nl: u8, out: &mut Vec<u8>) {
        out.push(nl);
        self.cr = nl == b'\r';
        self.line = BigLine::Head;
    }

    /// End of stream inside the event: what its scan holds goes out.
    fn finish(&mut self, ex: &mut PiiExchange, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        if let Some(scan) = self.scan.as_mut() {
            out.extend_from_slice(&scan.on_chunk(ex, b"", true));
        }
    }
}
