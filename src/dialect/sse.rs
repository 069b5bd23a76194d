//! Incremental Server-Sent Events framing over arbitrary response-body chunks.
//!
//! A gateway sees a stream as whatever chunks the upstream connection happened to
//! deliver: an event, a line, even a UTF-8 character can be split anywhere. The
//! framer turns those chunks into whole events without ever rescanning bytes it has
//! already looked at, so the per-chunk cost is proportional to the chunk, not to the
//! stream. Every byte of the stream belongs to exactly one emitted event (blank lines
//! and comment blocks included), so a caller that wants to drop or rewrite an event
//! can rebuild the stream from the events' raw bytes and lose nothing.
//!
//! Only the bytes of an unfinished event are held between chunks, and never more
//! than `max_event_bytes`: a stream that never terminates an event makes the framer
//! give up (see [`SseFramer::gave_up`]) instead of buffering without bound.

use std::borrow::Cow;

/// Default bound on one event held across chunks. Real LLM events are a few hundred
/// bytes; 1 MiB leaves room for a large tool-call argument sent in one piece.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// How a carriage return that ended a line is to be resolved by the next byte: SSE
/// allows `\r\n`, `\n` and a lone `\r` as line terminators, so a `\r` alone says
/// nothing until the byte after it is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cr {
    /// No carriage return pending.
    None,
    /// A `\r` ended a non-empty line; a following `\n` belongs to the same terminator.
    EndsLine,
    /// A `\r` ended an empty line, so the event is complete; a following `\n` is still
    /// part of it, which is why it is not emitted until the next byte is seen.
    EndsBlock,
}

/// One SSE event as it appeared on the wire, with its parsed `event:` and `data:` fields.
///
/// Borrowed from the chunk (or the framer's carry-over) to avoid copies; a caller
/// that needs it after the callback returns must copy what it keeps.
#[derive(Debug)]
pub struct SseEvent<'a> {
    raw: &'a [u8],
    offset: u64,
    name: Option<&'a [u8]>,
    data: Option<Cow<'a, [u8]>>,
    complete: bool,
}

/// The lines of an event block, split at `\r\n`, `\n` or `\r` as the SSE spec
/// allows, without their terminators.
pub(crate) fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        let (line, tail) = rest.split_at(len);
        rest = match tail {
            [b'\r', b'\n', more @ ..] => more,
            [_, more @ ..] => more,
            [] => tail,
        };
        Some(line)
    })
}

impl<'a> SseEvent<'a> {
    /// Parse the fields of one raw event block (lines up to and including the blank
    /// line that ends it). Unknown fields (`id:`, `retry:`) and comments are kept in
    /// `raw` but ignored, as the SSE spec says.
    fn parse(raw: &'a [u8], offset: u64, complete: bool) -> SseEvent<'a> {
        let mut body = raw;
        if offset == 0 {
            // The spec strips one leading BOM from the stream.
            body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        }
        let mut name = None;
        let mut data: Option<Cow<'a, [u8]>> = None;
        for line in lines(body) {
            if line.is_empty() {
                break;
            }
            if line.first() == Some(&b':') {
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(c) => {
                    let v = line.get(c + 1..).unwrap_or_default();
                    (
                        line.get(..c).unwrap_or(line),
                        v.strip_prefix(b" ").unwrap_or(v),
                    )
                }
                // Empty, but inside the line: callers locate values by address.
                None => (line, line.get(line.len()..).unwrap_or_default()),
            };
            match field {
                b"event" => name = Some(value),
                b"data" => {
                    data = Some(match data.take() {
                        None => Cow::Borrowed(value),
                        Some(prev) => {
                            let mut joined = prev.into_owned();
                            joined.push(b'\n');
                            joined.extend_from_slice(value);
                            Cow::Owned(joined)
                        }
                    })
                }
                _ => {}
            }
        }
        SseEvent {
            raw,
            offset,
            name,
            data,
            complete,
        }
    }

    /// The exact bytes of the event in the stream, terminator included, so a caller
    /// can forward, drop or splice it byte for byte.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Stream offset of the first byte of [`raw`](Self::raw), counted from the first
    /// byte ever pushed; lets a caller map the event back onto the chunk it came from.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The `event:` field, if present and UTF-8 (OpenAI chat streams have none; the
    /// Anthropic and Responses APIs name every event).
    pub fn event(&self) -> Option<&'a str> {
        self.name.and_then(|n| std::str::from_utf8(n).ok())
    }

    /// The `data:` payload, multi-line data joined with `\n`; `None` when the block
    /// has no data line (comments, keep-alives, blank lines), which a client never
    /// dispatches.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// True when the payload is a single `data:` line, i.e. [`data`](Self::data) is a
    /// sub-slice of [`raw`](Self::raw) and can be spliced in place.
    pub fn data_is_borrowed(&self) -> bool {
        matches!(self.data, Some(Cow::Borrowed(_)))
    }

    /// False only for the unterminated tail handed out by [`SseFramer::finish`]: a
    /// browser would drop it, but a meter may still want the usage it carries.
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

/// Incremental SSE framer: push chunks, get whole events.
///
/// The carry-over is only the unfinished event, scanned once: the separator search
/// resumes where the previous chunk left off.
#[derive(Clone, Debug)]
pub struct SseFramer {
    /// Bytes of the unfinished event from earlier chunks (all already scanned).
    carry: Vec<u8>,
    /// Scanner state at the end of everything pushed so far.
    at_line_start: bool,
    cr: Cr,
    /// Stream offset of the next byte to be pushed.
    pos: u64,
    /// Stream offset of the first byte of the unfinished event.
    block_start: u64,
    max_event_bytes: usize,
    gave_up: bool,
}

impl Default for SseFramer {
    fn default() -> Self {
        SseFramer::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseFramer {
    /// A framer that holds at most `max_event_bytes` of one unfinished event between
    /// chunks before giving up (0 is treated as 1 so progress is always possible).
    pub fn new(max_event_bytes: usize) -> SseFramer {
        SseFramer {
            carry: Vec::new(),
            at_line_start: true,
            cr: Cr::None,
            pos: 0,
            block_start: 0,
            max_event_bytes: max_event_bytes.max(1),
            gave_up: false,
        }
    }

    /// Feed the next chunk; `on_event` is called, in stream order, for every event
    /// the chunk completes. After giving up this only advances the stream position.
    pub fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let chunk_pos = self.pos;
        self.pos += chunk.len() as u64;
        if self.gave_up {
            self.block_start = self.pos;
            return;
        }
        // Index in `chunk` where the unfinished event's in-chunk part starts.
        let mut start = 0usize;
        let mut i = 0usize;
        while i < chunk.len() {
            match self.cr {
                Cr::EndsBlock => {
                    self.cr = Cr::None;
                    let end = if chunk.get(i) == Some(&b'\n') {
                        i + 1
                    } else {
                        i
                    };
                    self.emit(chunk, chunk_pos, start, end, &mut on_event);
                    start = end;
                    i = end;
                    continue;
                }
                Cr::EndsLine => {
                    self.cr = Cr::None;
                    if chunk.get(i) == Some(&b'\n') {
                        i += 1;
                        continue;
                    }
                }
                Cr::None => {}
            }
            if !self.at_line_start {
                // Fast path: skip the body of a line in one go.
                let rest = chunk.get(i..).unwrap_or_default();
                match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                    Some(n) => i += n,
                    None => break,
                }
            }
            match chunk.get(i) {
                Some(b'\n') => {
                    if self.at_line_start {
                        self.emit(chunk, chunk_pos, start, i + 1, &mut on_event);
                        start = i + 1;
                    } else {
                        self.at_line_start = true;
                    }
                }
                Some(b'\r') => {
                    if self.at_line_start {
                        self.cr = Cr::EndsBlock;
                    } else {
                        self.at_line_start = true;
                        self.cr = Cr::EndsLine;
                    }
                }
                _ => self.at_line_start = false,
            }
            i += 1;
        }
        let tail = chunk.get(start..).unwrap_or_default();
        if self.carry.len() + tail.len() > self.max_event_bytes {
            // Keep `carry` for `take_held`: those bytes were never handed to the caller.
            self.gave_up = true;
            return;
        }
        self.carry.extend_from_slice(tail);
    }

    /// Hand out the event ending at `chunk[..end]` (plus any carry-over) and reset
    /// the per-event state.
    fn emit(
        &mut self,
        chunk: &[u8],
        chunk_pos: u64,
        start: usize,
        end: usize,
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) {
        let offset = self.block_start;
        let part = chunk.get(start..end).unwrap_or_default();
        if self.carry.is_empty() {
            on_event(SseEvent::parse(part, offset, true));
        } else {
            self.carry.extend_from_slice(part);
            on_event(SseEvent::parse(&self.carry, offset, true));
            self.carry.clear();
        }
        self.block_start = chunk_pos + end as u64;
        self.at_line_start = true;
        self.cr = Cr::None;
    }

    /// End of stream: emit what is still held. A block whose blank line ended in a
    /// lone `\r` is complete; anything else is an unterminated tail, emitted with
    /// [`SseEvent::is_complete`] false so a caller can still forward (and meter) it.
    pub fn finish(&mut self, mut on_event: impl FnMut(SseEvent<'_>)) {
        if self.gave_up || self.carry.is_empty() {
            return;
        }
        let complete = self.cr == Cr::EndsBlock;
        on_event(SseEvent::parse(&self.carry, self.block_start, complete));
        self.carry.clear();
        self.block_start = self.pos;
        self.at_line_start = true;
        self.cr = Cr::None;
    }

    /// True once an unfinished event outgrew `max_event_bytes`; from then on nothing
    /// is framed, and a caller must pass the rest of the stream through untouched.
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// Number of bytes held back from earlier chunks (the unfinished event's prefix).
    pub fn held_len(&self) -> usize {
        self.carry.len()
    }

    /// Take the held bytes. Meant for after [`gave_up`](Self::gave_up): they were never
    /// part of an emitted event, so a caller that forwards the stream must send them.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.carry)
    }

    /// Stream offset of the next byte to be pushed (the total pushed so far).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Stream offset where the unfinished event starts; equal to
    /// [`position`](Self::position) when nothing is held.
    pub fn pending_start(&self) -> u64 {
        self.block_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (event name, data, raw, offset, complete): an owned copy of an event.
    type Owned = (Option<String>, Option<Vec<u8>>, Vec<u8>, u64, bool);

    /// Every event of `chunks`, and whether the framer gave up.
    fn frame(chunks: &[&[u8]], max: usize) -> (Vec<Owned>, bool) {
        let mut f = SseFramer::new(max);
        let mut out = Vec::new();
        let mut cb = |e: SseEvent<'_>| {
            out.push((
                e.event().map(str::to_owned),
                e.data().map(<[u8]>::to_vec),
                e.raw().to_vec(),
                e.offset(),
                e.is_complete(),
            ))
        };
        for c in chunks {
            f.push(c, &mut cb);
        }
        f.finish(&mut cb);
        (out, f.gave_up())
    }

    fn check_all_splits(stream: &[u8]) {
        let (whole, _) = frame(&[stream], 1 << 20);
        // Events tile the stream.
        let joined: Vec<u8> = whole.iter().flat_map(|e| e.2.clone()).collect();
        assert_eq!(joined, stream);
        for cut in 0..=stream.len() {
            let (split, _) = frame(&[&stream[..cut], &stream[cut..]], 1 << 20);
            assert_eq!(split, whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame(&bytes, 1 << 20).0, whole);
    }

    #[test]
    fn separators_of_every_kind() {
        for sep in ["\n", "\r\n", "\r"] {
            let s =
                format!("event: a{sep}data: 1{sep}data: 2{sep}{sep}: c{sep}{sep}data:x{sep}{sep}");
            let (ev, _) = frame(&[s.as_bytes()], 100);
            assert_eq!(ev.len(), 3, "{sep:?}");
            assert_eq!(ev[0].0.as_deref(), Some("a"));
            assert_eq!(ev[0].1.as_deref(), Some(&b"1\n2"[..]));
            assert_eq!(ev[1].1, None);
            assert_eq!(ev[2].1.as_deref(), Some(&b"x"[..]));
            assert!(ev.iter().all(|e| e.4));
            check_all_splits(s.as_bytes());
        }
    }

    #[test]
    fn mixed_terminators_and_utf8_split_anywhere() {
        let s = "data: h\u{e9}llo \u{1F600}\r\n\r\n\n\ndata: {\"a\":\"\u{2019}\"}\r\r\ndata: z\n\r\nevent: e\rdata: y\n\n";
        check_all_splits(s.as_bytes());
        let (ev, _) = frame(&[s.as_bytes()], 100);
        let datas: Vec<_> = ev.iter().filter_map(|e| e.1.clone()).collect();
        assert_eq!(
            datas,
            vec![
                "h\u{e9}llo \u{1F600}".as_bytes().to_vec(),
                "{\"a\":\"\u{2019}\"}".into(),
                b"z".to_vec(),
                b"y".to_vec()
            ]
        );
    }

    #[test]
    fn lone_cr_at_end_waits_for_next_byte() {
        let mut f = SseFramer::new(100);
        let mut n = 0;
        f.push(b"data: a\r\n\r", |_| n += 1);
        assert_eq!(n, 0);
        let mut raw = Vec::new();
        f.push(b"\ndata: b", |e| raw.push(e.raw().to_vec()));
        assert_eq!(raw, vec![b"data: a\r\n\r\n".to_vec()]);
        assert_eq!(f.pending_start(), 11);
        let mut tail = Vec::new();
        f.finish(|e| {
            tail.push((
                e.raw().to_vec(),
                e.is_complete(),
                e.data().map(<[u8]>::to_vec),
            ))
        });
        assert_eq!(
            tail,
            vec![(b"data: b".to_vec(), false, Some(b"b".to_vec()))]
        );
    }

    #[test]
    fn bom_and_field_without_colon() {
        let (ev, _) = frame(&[b"\xEF\xBB\xBFdata\nevent:x\n\n"], 100);
        assert_eq!(ev[0].1.as_deref(), Some(&b""[..]));
        assert_eq!(ev[0].0.as_deref(), Some("x"));
    }

    #[test]
    fn oversized_event_gives_up_and_returns_held_bytes() {
        let mut f = SseFramer::new(16);
        let mut n = 0;
        f.push(b"data: ok\n\ndata: 0123", |_| n += 1);
        assert_eq!(n, 1);
        assert_eq!(f.held_len(), 10);
        f.push(b"456789abcdef", |_| n += 1);
        assert!(f.gave_up());
        assert_eq!(f.take_held(), b"data: 0123");
        f.push(b"\n\ndata: more\n\n", |_| n += 1);
        f.finish(|_| n += 1);
        assert_eq!(n, 1);
        assert_eq!(f.position(), 10 + 10 + 12 + 14);
    }

    #[test]
    fn carry_is_bounded_but_one_chunk_events_pass() {
        // A whole event inside one chunk is never carried, so it is framed even when large.
        let big = format!("data: {}\n\n", "x".repeat(100));
        let (ev, gave_up) = frame(&[big.as_bytes()], 16);
        assert!(!gave_up);
        assert_eq!(ev.len(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            let mut buf = Vec::new();
            for _ in 0..200 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"\r\n:da ta\xff\xc3event";
                buf.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let (ev, _) = frame(&buf.chunks(7).collect::<Vec<_>>(), 64);
            let joined: Vec<u8> = ev.iter().flat_map(|e| e.2.clone()).collect();
            assert!(buf.starts_with(&joined));
        }
    }
}
