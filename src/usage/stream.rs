//! Usage from SSE streams, and hiding the usage tollgate asked for.
//!
//! [`StreamMeter`] sits on the response body of a streaming exchange. It frames
//! the chunks into events ([`SseFramer`]), reads the provider's usage (OpenAI's
//! usage chunk, Responses' `response.completed`, Anthropic's `message_start` and
//! `message_delta`), and keeps the streamed completion text, bounded, for the case
//! where the stream ends without any usage and the caller must count it.
//!
//! When tollgate injected `stream_options.include_usage` on the client's behalf
//! ([`crate::dialect::inject`]), the meter also removes what that option adds, so
//! the client receives byte for byte what the provider would have sent without it.
//! Only then are bytes ever held back or copied; otherwise every chunk passes
//! through untouched ([`Rewrite::Unchanged`]) and metering is purely observational.

use std::ops::Range;

use serde::Deserialize;

use super::wire::{AnDelta, OaDelta};
use super::{RawUsage, Text, Usage};
use crate::dialect::inject::find_member;
use crate::dialect::sse::{SseEvent, SseFramer};
use crate::dialect::Api;

/// What to send to the client in place of a response chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Send the chunk as it is: the common case, costing no copy.
    Unchanged,
    /// Send these bytes instead (possibly empty, when everything in the chunk is
    /// held back or removed). Only produced when stripping injected usage.
    Replace(Vec<u8>),
}

/// Everything the meter learned from a stream, for the final report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Provider-reported usage, if the stream carried any. For Anthropic this is
    /// present from `message_start` on, with `output_tokens` the latest cumulative
    /// count; see [`usage_final`](Self::usage_final) for whether the closing count arrived.
    pub usage: Option<Usage>,
    /// True when the provider's closing count was seen (OpenAI usage chunk,
    /// Responses `response.completed`/`incomplete`/`failed`, Anthropic
    /// `message_delta`), i.e. `usage` is not a count of a stream cut short.
    pub usage_final: bool,
    /// The model the provider says served the stream (first one seen).
    pub model: Option<String>,
    /// The streamed completion text (content, tool-call arguments, reasoning), up to
    /// the cap, for counting when `usage` is `None`.
    pub fallback_text: String,
    /// Bytes of completion text beyond the cap, not kept, so a caller can estimate them.
    pub fallback_truncated_bytes: usize,
    /// Number of SSE events with a `data:` payload seen (`[DONE]` included).
    pub events: u64,
    /// An event outgrew `max_event_bytes`: the rest of the stream was passed through
    /// unread, so `usage` may be missing and `fallback_text` incomplete.
    pub gave_up: bool,
}

/// Per-stream metering state; one per streaming exchange.
#[derive(Clone, Debug)]
pub struct StreamMeter {
    framer: SseFramer,
    strip: bool,
    st: Extract,
}

impl StreamMeter {
    /// `strip_usage`: tollgate injected `include_usage` and the client did not ask,
    /// so usage chunks and `"usage"` members are removed (OpenAI chat/completions
    /// only; ignored for other APIs, which always stream their usage).
    /// `max_event_bytes` bounds one event held across chunks; `fallback_text_cap`
    /// bounds the completion text kept for fallback counting.
    pub fn new(
        api: Api,
        strip_usage: bool,
        max_event_bytes: usize,
        fallback_text_cap: usize,
    ) -> StreamMeter {
        StreamMeter {
            framer: SseFramer::new(max_event_bytes),
            strip: strip_usage && matches!(api, Api::ChatCompletions | Api::Completions),
            st: Extract {
                api,
                usage: None,
                usage_final: false,
                anthropic: None,
                model: None,
                text: String::new(),
                cap: fallback_text_cap,
                truncated: 0,
                events: 0,
            },
        }
    }

    /// Meter one chunk and say what the client gets instead. Without stripping this
    /// is always [`Rewrite::Unchanged`]. With stripping, an event split across
    /// chunks is held back and sent whole with the chunk that completes it (at most
    /// `max_event_bytes`); `end_of_stream` releases anything still held.
    pub fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Rewrite {
        if self.framer.gave_up() {
            // Whatever was held went out when the framer gave up.
            return Rewrite::Unchanged;
        }
        let strip = self.strip;
        let chunk_pos = self.framer.position();
        let held_in = self.framer.held_len();
        // `None` while the output is still an unmodified prefix of `chunk`.
        let mut out: Option<Vec<u8>> =
            (strip && held_in > 0).then(|| Vec::with_capacity(held_in + chunk.len()));
        let st = &mut self.st;
        let mut handle = |ev: SseEvent<'_>| {
            let action = st.on_event(&ev, strip);
            if !strip {
                return;
            }
            let o = match out.as_mut() {
                Some(o) => o,
                None if matches!(action, Action::Keep) => return,
                None => {
                    // No bytes were held, so this event lies within `chunk`.
                    let prefix = offset_in(ev.offset(), chunk_pos, chunk.len());
                    let mut o = Vec::with_capacity(chunk.len());
                    o.extend_from_slice(chunk.get(..prefix).unwrap_or_default());
                    out.insert(o)
                }
            };
            action.apply(ev.raw(), o);
        };
        self.framer.push(chunk, &mut handle);
        if end_of_stream {
            self.framer.finish(&mut handle);
        }
        if !strip {
            if self.framer.gave_up() {
                self.framer.take_held();
            }
            return Rewrite::Unchanged;
        }
        let pending = offset_in(self.framer.pending_start(), chunk_pos, chunk.len());
        if self.framer.gave_up() {
            // Release the unfinished event unread, and everything after it.
            let held = self.framer.take_held();
            return match out {
                None if held.is_empty() => Rewrite::Unchanged,
                out => {
                    let (before, after) = chunk.split_at_checked(pending).unwrap_or((chunk, &[]));
                    let mut o = out.unwrap_or_else(|| before.to_vec());
                    o.extend_from_slice(&held);
                    o.extend_from_slice(after);
                    Rewrite::Replace(o)
                }
            };
        }
        match out {
            Some(o) => Rewrite::Replace(o),
            None if pending >= chunk.len() => Rewrite::Unchanged,
            None => Rewrite::Replace(chunk.get(..pending).unwrap_or_default().to_vec()),
        }
    }

    /// What the stream said so far; called once the response is over (or was cut).
    /// Cheap enough to call more than once: it copies the bounded fallback text.
    pub fn finish(&self) -> StreamSummary {
        StreamSummary {
            usage: self.st.usage(),
            usage_final: self.st.usage_final,
            model: self.st.model.clone(),
            fallback_text: self.st.text.clone(),
            fallback_truncated_bytes: self.st.truncated,
            events: self.st.events,
            gave_up: self.framer.gave_up(),
        }
    }
}

/// Index in the current chunk of stream offset `at`, clamped into the chunk.
fn offset_in(at: u64, chunk_pos: u64, len: usize) -> usize {
    usize::try_from(at.saturating_sub(chunk_pos))
        .unwrap_or(usize::MAX)
        .min(len)
}

/// What to do with one event's raw bytes when stripping.
#[derive(Debug)]
enum Action {
    Keep,
    Drop,
    /// Remove this range of the raw event.
    Splice(Range<usize>),
    /// Send these bytes instead of the raw event.
    Rebuild(Vec<u8>),
}

impl Action {
    fn apply(self, raw: &[u8], out: &mut Vec<u8>) {
        match self {
            Action::Keep => out.extend_from_slice(raw),
            Action::Drop => {}
            Action::Splice(r) => {
                out.extend_from_slice(raw.get(..r.start).unwrap_or_default());
                out.extend_from_slice(raw.get(r.end..).unwrap_or_default());
            }
            Action::Rebuild(v) => out.extend_from_slice(&v),
        }
    }
}

/// What is read out of the events (kept apart from the framer so the event
/// callback can borrow it while the framer is busy).
#[derive(Clone, Debug)]
struct Extract {
    api: Api,
    /// OpenAI-family usage: the last one reported.
    usage: Option<Usage>,
    usage_final: bool,
    /// Anthropic counts, merged field by field across `message_start`/`message_delta`.
    anthropic: Option<RawUsage>,
    model: Option<String>,
    text: String,
    cap: usize,
    truncated: usize,
    events: u64,
}

// Only the members metering needs; serde skips the rest without building values.

#[derive(Deserialize)]
struct OaChunk<'a> {
    #[serde(default, borrow)]
    model: Text<'a>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default, borrow)]
    choices: Option<Vec<OaChoice<'a>>>,
}

#[derive(Deserialize)]
struct OaChoice<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    delta: Option<OaDelta<'a>>,
}

#[derive(Deserialize)]
struct AnEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Text<'a>,
    #[serde(default, borrow)]
    message: Option<AnMessage<'a>>,
    #[serde(default, borrow)]
    delta: Option<AnDelta<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct AnMessage<'a> {
    #[serde(default, borrow)]
    model: Text<'a>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RsEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Text<'a>,
    #[serde(default, borrow)]
    delta: Text<'a>,
    #[serde(default, borrow)]
    response: Option<RsResponse<'a>>,
}

#[derive(Deserialize)]
struct RsResponse<'a> {
    #[serde(default, borrow)]
    model: Text<'a>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

/// Responses API events whose `delta` is completion text the model was billed for.
const RESPONSES_TEXT_DELTAS: &[&str] = &[
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta",
];

impl Extract {
    fn usage(&self) -> Option<Usage> {
        match self.api {
            Api::AnthropicMessages => self.anthropic.as_ref().and_then(|u| u.to_usage(self.api)),
            _ => self.usage,
        }
    }

    fn set_model(&mut self, m: &Text<'_>) {
        if self.model.is_none() {
            if let Some(m) = m.0.as_deref().filter(|m| !m.is_empty()) {
                self.model = Some(m.to_owned());
            }
        }
    }

    fn add_text(&mut self, t: &Text<'_>) {
        let Some(s) = t.0.as_deref() else { return };
        if self.truncated > 0 {
            // Keep the text a true prefix of the completion: nothing after a gap.
            self.truncated = self.truncated.saturating_add(s.len());
            return;
        }
        let room = self.cap.saturating_sub(self.text.len());
        let mut cut = room.min(s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        self.truncated = self.truncated.saturating_add(s.len() - cut);
    }

    fn on_event(&mut self, ev: &SseEvent<'_>, strip: bool) -> Action {
        let Some(data) = ev.data() else {
            return Action::Keep;
        };
        self.events += 1;
        match self.api {
            Api::AnthropicMessages => {
                self.anthropic_event(data);
                Action::Keep
            }
            Api::Responses => {
                self.responses_event(data);
                Action::Keep
            }
            _ => self.openai_event(ev, data, strip),
        }
    }

    fn openai_event(&mut self, ev: &SseEvent<'_>, data: &[u8], strip: bool) -> Action {
        let Ok(c) = serde_json::from_slice::<OaChunk<'_>>(data) else {
            return Action::Keep; // `[DONE]`, keep-alives, garbage: never ours to touch
        };
        self.set_model(&c.model);
        let usage = c.usage.and_then(|u| u.to_usage(self.api));
        if usage.is_some() {
            self.usage = usage;
            self.usage_final = true;
        }
        for choice in c.choices.iter().flatten() {
            self.add_text(&choice.text);
            if let Some(d) = &choice.delta {
                d.for_each_text(|t| self.add_text(t));
            }
        }
        if !strip {
            return Action::Keep;
        }
        if c.usage.is_some() && c.choices.as_ref().is_some_and(Vec::is_empty) {
            // The usage-only chunk: it would not exist without `include_usage`.
            return Action::Drop;
        }
        let Some(m) = find_member(data, b"usage") else {
            return Action::Keep;
        };
        let raw = ev.raw();
        let at = (data.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
        if ev.data_is_borrowed()
            && at
                .checked_add(data.len())
                .is_some_and(|end| end <= raw.len())
        {
            Action::Splice(at + m.removal.start..at + m.removal.end)
        } else {
            let mut new = data.get(..m.removal.start).unwrap_or_default().to_vec();
            new.extend_from_slice(data.get(m.removal.end..).unwrap_or_default());
            Action::Rebuild(rebuild_event(raw, &new))
        }
    }

    fn anthropic_event(&mut self, data: &[u8]) {
        let Ok(e) = serde_json::from_slice::<AnEvent<'_>>(data) else {
            return;
        };
        match e.ty.0.as_deref() {
            Some("message_start") => {
                if let Some(m) = &e.message {
                    self.set_model(&m.model);
                    if let Some(u) = &m.usage {
                        self.merge_anthropic(u);
                    }
                }
            }
            Some("message_delta") => {
                if let Some(u) = &e.usage {
                    self.merge_anthropic(u);
                    self.usage_final = true;
                }
            }
            Some("content_block_delta") => {
                if let Some(d) = &e.delta {
                    d.for_each_text(|t| self.add_text(t));
                }
            }
            _ => {}
        }
    }

    /// Anthropic counts are cumulative: a later event's field replaces an earlier one.
    fn merge_anthropic(&mut self, u: &RawUsage) {
        let acc = self.anthropic.get_or_insert_with(RawUsage::default);
        for (dst, src) in [
            (&mut acc.input_tokens, u.input_tokens),
            (&mut acc.output_tokens, u.output_tokens),
            (&mut acc.cache_read_input_tokens, u.cache_read_input_tokens),
            (
                &mut acc.cache_creation_input_tokens,
                u.cache_creation_input_tokens,
            ),
        ] {
            if src.0.is_some() {
                *dst = src;
            }
        }
    }

    fn responses_event(&mut self, data: &[u8]) {
        let Ok(e) = serde_json::from_slice::<RsEvent<'_>>(data) else {
            return;
        };
        let ty = e.ty.0.as_deref().unwrap_or("");
        if RESPONSES_TEXT_DELTAS.contains(&ty) {
            self.add_text(&e.delta);
        }
        if let Some(r) = &e.response {
            self.set_model(&r.model);
            if matches!(
                ty,
                "response.completed" | "response.incomplete" | "response.failed"
            ) {
                if let Some(u) = r.usage.as_ref().and_then(|u| u.to_usage(self.api)) {
                    self.usage = Some(u);
                    self.usage_final = true;
                }
            }
        }
    }
}

/// Re-emit an event whose payload spans several `data:` lines with a new payload:
/// its other lines kept in order, the data as `data:` lines, `\n` line endings.
fn rebuild_event(raw: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut wrote_data = false;
    for line in crate::dialect::sse::lines(raw) {
        if line.is_empty() {
            break;
        }
        if line == b"data" || line.starts_with(b"data:") {
            if !wrote_data {
                wrote_data = true;
                for l in data.split(|&b| b == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(l);
                    out.push(b'\n');
                }
            }
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::sse::DEFAULT_MAX_EVENT_BYTES;
    use crate::testing::XorShift as Rng;
    use crate::usage::testdata;
    use serde_json::Value;

    const CAP: usize = 1 << 20;

    /// Feed `chunks`, the last with `end_of_stream` when `eos`; return what the
    /// client got and whether every chunk was passed on unchanged.
    fn feed_eos(m: &mut StreamMeter, chunks: &[&[u8]], eos: bool) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut unchanged = true;
        for (i, c) in chunks.iter().enumerate() {
            match m.on_chunk(c, eos && i + 1 == chunks.len()) {
                Rewrite::Unchanged => out.extend_from_slice(c),
                Rewrite::Replace(v) => {
                    unchanged = false;
                    out.extend_from_slice(&v)
                }
            }
        }
        (out, unchanged)
    }

    fn feed(m: &mut StreamMeter, chunks: &[&[u8]]) -> Vec<u8> {
        feed_eos(m, chunks, true).0
    }

    fn random_pieces(stream: &[u8], seed: u64) -> Vec<&[u8]> {
        let mut rng = Rng(seed);
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < stream.len() {
            let end = (i + 1 + (rng.next_u64() % 64) as usize).min(stream.len());
            chunks.push(&stream[i..end]);
            i = end;
        }
        chunks
    }

    /// Every splitting, literally: whole, two pieces at every offset, random small
    /// pieces, single bytes. For short synthetic streams.
    fn splittings(stream: &[u8], mut check: impl FnMut(&[&[u8]], &str)) {
        check(&[stream], "whole");
        for cut in 0..=stream.len() {
            check(&[&stream[..cut], &stream[cut..]], &format!("cut {cut}"));
        }
        for round in 0..20 {
            check(
                &random_pieces(stream, 0x2545_F491_4F6C_DD1D + round),
                &format!("random {round}"),
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        check(&bytes, "bytes");
    }

    /// The same splittings for long recorded streams, at linear rather than
    /// quadratic cost. `check` judges full runs (whole, event-aligned, random
    /// pieces, single bytes) against the expectations. The two-piece split at
    /// every offset is checked against the event-aligned run instead: starting
    /// from a snapshot of that run at the boundary before the cut, feeding
    /// `[boundary..cut]` and `[cut..]` up to the end of the following event must
    /// give the same bytes and the same summary as the aligned run there. Past
    /// that point both meters hold nothing and agree, so the rest of the stream
    /// would replay the (already checked) aligned run.
    fn check_stream(
        stream: &[u8],
        make: impl Fn() -> StreamMeter,
        expect_unchanged: bool,
        mut check: impl FnMut(&[u8], &StreamSummary, &str),
    ) {
        let mut full = |chunks: &[&[u8]], how: &str| {
            let mut m = make();
            let (out, unchanged) = feed_eos(&mut m, chunks, true);
            assert!(
                unchanged || !expect_unchanged,
                "{how}: a chunk was rewritten"
            );
            check(&out, &m.finish(), how);
        };
        full(&[stream], "whole");
        for round in 0..20 {
            full(
                &random_pieces(stream, 0x2545_F491_4F6C_DD1D + round),
                &format!("random {round}"),
            );
        }
        full(&stream.chunks(1).collect::<Vec<_>>(), "bytes");

        // Event boundaries: where nothing is held.
        let mut bounds = vec![0];
        for i in 1..stream.len() {
            if stream[..i].ends_with(b"\n\n") || stream[..i].ends_with(b"\r\n\r\n") {
                bounds.push(i);
            }
        }
        bounds.push(stream.len());
        let aligned: Vec<&[u8]> = bounds.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        full(&aligned, "aligned");
        let mut reference = make();
        let mut snaps = Vec::new();
        let mut out = Vec::new();
        for (i, w) in bounds.windows(2).enumerate() {
            snaps.push((reference.clone(), out.len()));
            let eos = i + 2 == bounds.len();
            out.extend(feed_eos(&mut reference, &[&stream[w[0]..w[1]]], eos).0);
        }
        snaps.push((reference.clone(), out.len()));
        for k in 0..bounds.len() - 1 {
            let until = (k + 2).min(bounds.len() - 1);
            let eos = until == bounds.len() - 1;
            let want_out = &out[snaps[k].1..snaps[until].1];
            let want_sum = snaps[until].0.finish();
            for cut in bounds[k]..bounds[k + 1] {
                let mut m = snaps[k].0.clone();
                let (got, unchanged) = feed_eos(
                    &mut m,
                    &[&stream[bounds[k]..cut], &stream[cut..bounds[until]]],
                    eos,
                );
                assert!(
                    unchanged || !expect_unchanged,
                    "cut {cut}: a chunk was rewritten"
                );
                assert!(
                    got == want_out,
                    "cut {cut}: {:?}\nwant {:?}",
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(want_out)
                );
                assert_eq!(m.finish(), want_sum, "cut {cut}");
            }
        }
    }

    /// Independent reading of a recorded stream: events split on blank lines.
    fn events_of(stream: &str) -> Vec<String> {
        stream
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn expected_usage_openai(stream: &str) -> Option<Usage> {
        let mut last = None;
        for e in events_of(stream) {
            let Some(d) = e.strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(d) else {
                continue;
            };
            let u = &v["usage"];
            if u.is_object() {
                let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
                last = Some(Usage {
                    prompt_tokens: n("/prompt_tokens"),
                    completion_tokens: n("/completion_tokens"),
                    cached_tokens: n("/prompt_tokens_details/cached_tokens"),
                    cache_creation_tokens: 0,
                    reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
                });
            }
        }
        last
    }

    fn expected_text_openai(stream: &str) -> String {
        let mut s = String::new();
        for e in events_of(stream) {
            let Some(d) = e.strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(d) else {
                continue;
            };
            for c in v["choices"].as_array().into_iter().flatten() {
                for p in ["/text", "/delta/content", "/delta/reasoning_content"] {
                    if let Some(t) = c.pointer(p).and_then(Value::as_str) {
                        s.push_str(t);
                    }
                }
            }
        }
        s
    }

    /// What a client that never asked for usage would have received, built from
    /// JSON values: usage-only chunks gone, `usage` members gone, rest as is.
    fn expected_stripped_values(stream: &str) -> Vec<Result<Value, String>> {
        let mut out = Vec::new();
        for e in events_of(stream) {
            let d = e.strip_prefix("data: ").unwrap();
            match serde_json::from_str::<Value>(d) {
                Ok(mut v) => {
                    let usage_only = v["usage"].is_object()
                        && v["choices"].as_array().is_some_and(Vec::is_empty);
                    if usage_only {
                        continue;
                    }
                    v.as_object_mut().unwrap().remove("usage");
                    out.push(Ok(v));
                }
                Err(_) => out.push(Err(d.to_owned())),
            }
        }
        out
    }

    fn as_values(stream: &[u8]) -> Vec<Result<Value, String>> {
        events_of(std::str::from_utf8(stream).unwrap())
            .iter()
            .map(|e| {
                let d = e.strip_prefix("data: ").unwrap();
                serde_json::from_str::<Value>(d).map_err(|_| d.to_owned())
            })
            .collect()
    }

    fn recorded_streams() -> Vec<(String, Api, String)> {
        let v: Vec<_> = testdata::all()
            .into_iter()
            .filter(|r| r.sse)
            .map(|r| {
                let api = if r.name.starts_with("completion") {
                    Api::Completions
                } else {
                    Api::ChatCompletions
                };
                (r.name, api, r.response)
            })
            .collect();
        assert!(v.len() >= 5, "recorded SSE fixtures missing");
        v
    }

    #[test]
    fn recorded_openai_streams_pass_through_untouched_without_strip() {
        for (name, api, body) in recorded_streams() {
            let want_usage = expected_usage_openai(&body);
            let want_text = expected_text_openai(&body);
            let want_model = events_of(&body).iter().find_map(|e| {
                let v: Value = serde_json::from_str(e.strip_prefix("data: ")?).ok()?;
                v["model"].as_str().map(str::to_owned)
            });
            let make = || StreamMeter::new(api, false, DEFAULT_MAX_EVENT_BYTES, CAP);
            check_stream(body.as_bytes(), make, true, |out, s, how| {
                assert!(out == body.as_bytes(), "{name} {how}");
                assert_eq!(s.usage, want_usage, "{name} {how}");
                assert_eq!(s.usage_final, want_usage.is_some());
                assert_eq!(s.model, want_model, "{name} {how}");
                assert_eq!(s.fallback_text, want_text, "{name} {how}");
                assert_eq!(s.events as usize, events_of(&body).len(), "{name} {how}");
                assert!(!s.gave_up);
            });
        }
    }

    #[test]
    fn recorded_openai_streams_are_stripped_of_injected_usage() {
        let mut with_usage = 0;
        for (name, api, body) in recorded_streams() {
            let want_usage = expected_usage_openai(&body);
            with_usage += usize::from(want_usage.is_some());
            let want_values = expected_stripped_values(&body);
            // Byte-level expectation, built independently of the meter's JSON scanner.
            let want_bytes: String = events_of(&body)
                .iter()
                .filter(|e| !(e.contains("\"choices\":[]") && e.contains("\"usage\":{")))
                .map(|e| format!("{}\n\n", e.replace(",\"usage\":null", "")))
                .collect();
            for crlf in [false, true] {
                let (body, want_bytes) = if crlf {
                    (body.replace('\n', "\r\n"), want_bytes.replace('\n', "\r\n"))
                } else {
                    (body.clone(), want_bytes.clone())
                };
                if !crlf {
                    // The two expectations agree, so comparing bytes below checks both.
                    assert_eq!(as_values(want_bytes.as_bytes()), want_values, "{name}");
                }
                let make = || StreamMeter::new(api, true, DEFAULT_MAX_EVENT_BYTES, CAP);
                check_stream(body.as_bytes(), make, false, |out, s, how| {
                    if out != want_bytes.as_bytes() {
                        panic!(
                            "{name} {how} crlf={crlf}:\n{}\nwant\n{want_bytes}",
                            String::from_utf8_lossy(out)
                        );
                    }
                    assert_eq!(s.usage, want_usage, "{name} {how}");
                });
                if body.len() < 2000 {
                    // Short enough to also split literally at every offset, end to end.
                    splittings(body.as_bytes(), |chunks, how| {
                        let mut m = make();
                        assert!(
                            feed(&mut m, chunks) == want_bytes.as_bytes(),
                            "{name} {how} crlf={crlf}"
                        );
                        assert_eq!(m.finish().usage, want_usage, "{name} {how}");
                    });
                }
            }
            // Event-aligned chunks (how providers flush) need no copy unless an event changes.
            let mut m = StreamMeter::new(api, true, DEFAULT_MAX_EVENT_BYTES, CAP);
            for e in events_of(&body) {
                let chunk = format!("{e}\n\n");
                let r = m.on_chunk(chunk.as_bytes(), false);
                if !chunk.contains("\"usage\"") {
                    assert_eq!(r, Rewrite::Unchanged, "{name}");
                }
            }
        }
        assert!(with_usage >= 2);
    }

    #[test]
    fn usage_in_a_content_chunk_is_removed_not_dropped() {
        let s = "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\": {\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
                 data: {\"usage\" : null , \"choices\":[]}\n\ndata: [DONE]\n\n";
        let want = "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                    data: {\"choices\":[]}\n\ndata: [DONE]\n\n";
        splittings(s.as_bytes(), |chunks, how| {
            let mut m = StreamMeter::new(Api::ChatCompletions, true, 4096, CAP);
            assert_eq!(
                String::from_utf8(feed(&mut m, chunks)).unwrap(),
                want,
                "{how}"
            );
            assert_eq!(m.finish().usage.map(|u| u.total()), Some(4));
        });
    }

    #[test]
    fn multi_line_data_is_rebuilt() {
        let s = "event: x\ndata: {\"a\":1,\ndata: \"usage\":null}\nid: 7\n\n";
        let mut m = StreamMeter::new(Api::ChatCompletions, true, 4096, CAP);
        let out = feed(&mut m, &[s.as_bytes()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: x\ndata: {\"a\":1}\nid: 7\n\n"
        );
    }

    #[test]
    fn tool_calls_and_reasoning_feed_the_fallback() {
        let s = r#"data: {"model":"m1","choices":[{"delta":{"reasoning_content":"think "}}]}

data: {"model":"m2","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"get","arguments":"{\"q\":"}}]}}]}

data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"\u00e9\"}"}}]}}]}

data: [DONE]

"#;
        let mut m = StreamMeter::new(Api::ChatCompletions, false, 4096, CAP);
        feed(&mut m, &[s.as_bytes()]);
        let sum = m.finish();
        assert_eq!(sum.fallback_text, "think get{\"q\":\"\u{e9}\"}");
        assert_eq!(sum.model.as_deref(), Some("m1"));
        assert_eq!(sum.usage, None);
        assert_eq!(sum.events, 4);
    }

    #[test]
    fn fallback_text_is_capped_on_a_char_boundary() {
        let s = "data: {\"choices\":[{\"text\":\"ab\u{e9}cd\"}]}\n\ndata: {\"choices\":[{\"text\":\"xyz\"}]}\n\n";
        let mut m = StreamMeter::new(Api::Completions, false, 4096, 3);
        feed(&mut m, &[s.as_bytes()]);
        let sum = m.finish();
        assert_eq!(sum.fallback_text, "ab");
        assert_eq!(sum.fallback_truncated_bytes, 4 + 3);
    }

    const ANTHROPIC: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me think. \"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \u{2014} \"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"w\\u00f6rld\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Paris\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn anthropic_stream_every_split() {
        let want = Usage {
            prompt_tokens: 2035,
            completion_tokens: 15,
            cached_tokens: 2000,
            cache_creation_tokens: 10,
            reasoning_tokens: 0,
        };
        for strip in [false, true] {
            splittings(ANTHROPIC.as_bytes(), |chunks, how| {
                let mut m =
                    StreamMeter::new(Api::AnthropicMessages, strip, DEFAULT_MAX_EVENT_BYTES, CAP);
                for (i, c) in chunks.iter().enumerate() {
                    assert_eq!(
                        m.on_chunk(c, i + 1 == chunks.len()),
                        Rewrite::Unchanged,
                        "{how}"
                    );
                }
                let s = m.finish();
                assert_eq!(s.usage, Some(want), "{how}");
                assert!(s.usage_final);
                assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
                assert_eq!(
                    s.fallback_text,
                    "Let me think. Hello \u{2014} w\u{f6}rld{\"location\": \"Paris\"}"
                );
                assert_eq!(s.events, 17);
            });
        }
    }

    #[test]
    fn anthropic_cut_short_and_cumulative_input() {
        let start = ANTHROPIC
            .split("event: content_block_start")
            .next()
            .unwrap();
        let mut m = StreamMeter::new(Api::AnthropicMessages, false, 4096, CAP);
        feed(&mut m, &[start.as_bytes()]);
        let s = m.finish();
        assert_eq!(
            s.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((2035, 1))
        );
        assert!(!s.usage_final);
        // Newer servers repeat (possibly updated) input counts in message_delta.
        let delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":30,\"cache_read_input_tokens\":null,\"output_tokens\":9}}\n\n\
                     event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        feed(&mut m, &[delta.as_bytes()]);
        let u = m.finish().usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (2040, 9, 2000)
        );
    }

    const RESPONSES: &str = "event: response.created\n\
data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null}}\n\n\
event: response.output_item.added\n\
data: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}\n\n\
event: response.output_text.delta\n\
data: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n\
event: response.output_text.delta\n\
data: {\"type\":\"response.output_text.delta\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\" there\"}\n\n\
event: response.output_text.done\n\
data: {\"type\":\"response.output_text.done\",\"sequence_number\":4,\"text\":\"Hi there\"}\n\n\
event: response.completed\n\
data: {\"type\":\"response.completed\",\"sequence_number\":5,\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi there\"}]}],\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":5},\"output_tokens\":11,\"output_tokens_details\":{\"reasoning_tokens\":3},\"total_tokens\":48}}}\n\n";

    #[test]
    fn responses_stream_every_split() {
        let want = Usage {
            prompt_tokens: 37,
            completion_tokens: 11,
            cached_tokens: 5,
            cache_creation_tokens: 0,
            reasoning_tokens: 3,
        };
        splittings(RESPONSES.as_bytes(), |chunks, how| {
            let mut m = StreamMeter::new(Api::Responses, true, DEFAULT_MAX_EVENT_BYTES, CAP);
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!(
                    m.on_chunk(c, i + 1 == chunks.len()),
                    Rewrite::Unchanged,
                    "{how}"
                );
            }
            let s = m.finish();
            assert_eq!(s.usage, Some(want), "{how}");
            assert_eq!(s.model.as_deref(), Some("gpt-4.1-2025-04-14"));
            assert_eq!(s.fallback_text, "Hi there");
        });
    }

    #[test]
    fn oversized_event_releases_everything_and_gives_up() {
        let big = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}],\"usage\":null}}\n\n",
            "x".repeat(300)
        );
        let s = format!("data: {{\"choices\":[],\"usage\":null}}\n\n{big}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1}}}}\n\n");
        let mut m = StreamMeter::new(Api::ChatCompletions, true, 100, CAP);
        let chunks: Vec<&[u8]> = s.as_bytes().chunks(40).collect();
        let out = feed(&mut m, &chunks);
        let sum = m.finish();
        assert!(sum.gave_up);
        // The first event was stripped; from the oversized one on, all bytes pass.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "data: {{\"choices\":[]}}\n\n{}",
                &s[s.find(&big).unwrap()..]
            )
        );
        assert_eq!(sum.usage, None);
    }

    #[test]
    fn unterminated_tail_is_released_and_metered_at_end() {
        let s = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}";
        splittings(s.as_bytes(), |chunks, how| {
            let mut m = StreamMeter::new(Api::ChatCompletions, true, 4096, CAP);
            let out = feed(&mut m, chunks);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                "{how}"
            );
            assert_eq!(m.finish().usage.map(|u| u.total()), Some(3), "{how}");
            let mut m = StreamMeter::new(Api::ChatCompletions, false, 4096, CAP);
            assert_eq!(feed(&mut m, chunks), s.as_bytes(), "{how}");
        });
    }

    #[test]
    fn garbage_never_panics_and_unmatched_bytes_survive() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let alphabet: &[u8] = b"\r\n\n: data[DONE]\xff\xc3\xa9{}\"usage,null";
        for round in 0..300 {
            let len = (rng.next_u64() % 600) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next_u64() as usize) % alphabet.len()])
                .collect();
            let mut chunks = Vec::new();
            let mut i = 0;
            while i < buf.len() {
                let end = (i + 1 + (rng.next_u64() % 50) as usize).min(buf.len());
                chunks.push(&buf[i..end]);
                i = end;
            }
            if chunks.is_empty() {
                chunks.push(&buf[..]);
            }
            for api in [
                Api::ChatCompletions,
                Api::Completions,
                Api::Responses,
                Api::AnthropicMessages,
            ] {
                for strip in [false, true] {
                    let mut m = StreamMeter::new(api, strip, 64 + round, 16);
                    let out = feed(&mut m, &chunks);
                    if !strip || api == Api::Responses || api == Api::AnthropicMessages {
                        assert_eq!(out, buf);
                    } else {
                        assert!(out.len() <= buf.len());
                    }
                    let s = m.finish();
                    assert!(s.fallback_text.len() <= 16);
                }
            }
        }
        // Valid JSON with hostile shapes.
        for d in [
            r#"{"choices":null,"usage":"x"}"#,
            r#"{"choices":[1,2],"model":{}}"#,
            r#"{"choices":[{"delta":"s","text":5}]}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"[]"#,
            r#""usage""#,
        ] {
            let s = format!("data: {d}\n\n");
            for strip in [false, true] {
                let mut m = StreamMeter::new(Api::ChatCompletions, strip, 4096, 16);
                feed(&mut m, &[s.as_bytes()]);
                m.finish();
            }
        }
    }
}
