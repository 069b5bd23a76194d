//! Ending a stream cleanly, in the client's protocol, when its budget runs out
//! (`limits.stream_cutoff: cut`).
//!
//! Admission knows how many output tokens the request may still produce before
//! some budget is exhausted ([`super::Admission::output_allowance`]). [`StreamCut`]
//! sits after the stream meter on what the client receives: it frames the events,
//! counts the completion text of each one as it passes, and once the count reaches
//! the allowance it ends the stream right after that event:
//!
//! - OpenAI chat/completions: a chunk with `finish_reason: "length"` for every
//!   choice seen, a usage chunk when the client asked for usage
//!   (`stream_options.include_usage`), then `data: [DONE]`;
//! - Anthropic Messages: `content_block_stop` for a block still open, then
//!   `message_delta` (`stop_reason: "max_tokens"`, `usage.output_tokens`) and
//!   `message_stop`.
//!
//! Everything the provider sends afterwards is swallowed (the host still reads it,
//! so the upstream connection is drained, never reset) and the client connection
//! ends normally. The Responses API is not cut (its closing `response.completed`
//! carries the whole response object); it always finishes.
//!
//! Counting is O(event): each event is parsed once (borrowed, only the text
//! members) and each delta's text is tokenized on its own with the model's
//! vocabulary (estimated past the route's tokenize budget, or for models without a
//! public vocabulary). Providers stream about one token per delta, so this tracks
//! the provider's count closely; a cut lands at most one event past the allowance.
//! The usage the synthesised events report is this count; the budgets are still
//! trued up to the provider's own usage, which the meter reads from the drained
//! stream (what the provider bills, including what it generated after the cut).

use serde::Deserialize;

use crate::dialect::sse::{SseEvent, SseFramer};
use crate::dialect::Api;
use crate::tokens::{BudgetedCounter, TextCounter};
use crate::usage::stream::Rewrite;
use crate::usage::wire::{AnDelta, OaDelta};
use crate::usage::Text;

/// Cut-off state of one streaming exchange.
pub struct StreamCut {
    api: Api,
    framer: SseFramer,
    counter: BudgetedCounter<'static>,
    allowance: u64,
    produced: u64,
    prompt_tokens: u64,
    client_wants_usage: bool,
    /// Set once cut: the output count at the cut.
    cut_at: Option<u64>,
    // What the closing events must repeat (OpenAI) or close (Anthropic).
    id: Option<String>,
    model: Option<String>,
    created: Option<u64>,
    max_choice: u32,
    open_block: Option<u64>,
}

#[derive(Deserialize)]
struct OaChunk<'a> {
    #[serde(default, borrow)]
    id: Text<'a>,
    #[serde(default, borrow)]
    model: Text<'a>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default, borrow)]
    choices: Option<Vec<OaChoice<'a>>>,
}

#[derive(Deserialize)]
struct OaChoice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    delta: Option<OaDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Text<'a>,
}

#[derive(Deserialize)]
struct AnEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Text<'a>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<AnDelta<'a>>,
}

/// What one event means for the cut.
struct Seen {
    tokens: u64,
    /// The event ends the message by itself (a finish reason): never cut after it.
    finishing: bool,
}

impl StreamCut {
    /// A cut-off for a stream of `api` that may produce `allowance` output tokens.
    /// `None` for APIs that are never cut. `client_wants_usage`: the client asked
    /// for a usage chunk (OpenAI), so the cut sends one.
    pub fn new(
        api: Api,
        allowance: u64,
        prompt_tokens: u64,
        client_wants_usage: bool,
        counter: BudgetedCounter<'static>,
        max_event_bytes: usize,
    ) -> Option<StreamCut> {
        if !matches!(
            api,
            Api::ChatCompletions | Api::Completions | Api::AnthropicMessages
        ) {
            return None;
        }
        Some(StreamCut {
            api,
            framer: SseFramer::new(max_event_bytes),
            counter,
            allowance,
            produced: 0,
            prompt_tokens,
            client_wants_usage,
            cut_at: None,
            id: None,
            model: None,
            created: None,
            max_choice: 0,
            open_block: None,
        })
    }

    /// Output tokens counted when the stream was cut, `None` while it was not.
    pub fn cut_at(&self) -> Option<u64> {
        self.cut_at
    }

    /// Output tokens counted so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The bytes the client receives (after the meter's own rewrite): returns what
    /// to send instead, if anything changes.
    pub fn on_chunk(&mut self, chunk: &[u8]) -> Rewrite {
        if self.cut_at.is_some() {
            return Rewrite::Replace(Vec::new());
        }
        if self.framer.gave_up() {
            return Rewrite::Unchanged;
        }
        let chunk_pos = self.framer.position();
        let mut cut_end: Option<u64> = None;
        let mut framer = std::mem::take(&mut self.framer);
        framer.push(chunk, |ev| {
            if cut_end.is_some() {
                return;
            }
            let seen = self.on_event(&ev);
            self.produced = self.produced.saturating_add(seen.tokens);
            if seen.tokens > 0 && !seen.finishing && self.produced >= self.allowance {
                cut_end = Some(ev.offset().saturating_add(ev.raw().len() as u64));
            }
        });
        if framer.gave_up() {
            framer.take_held();
        }
        self.framer = framer;
        let Some(end) = cut_end else {
            return Rewrite::Unchanged;
        };
        self.cut_at = Some(self.produced);
        let keep = usize::try_from(end.saturating_sub(chunk_pos))
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        let mut out = Vec::with_capacity(keep + 512);
        out.extend_from_slice(chunk.get(..keep).unwrap_or(chunk));
        self.closing_events(&mut out);
        Rewrite::Replace(out)
    }

    fn count(&mut self, t: &Text<'_>) -> u64 {
        t.0.as_deref().map_or(0, |s| self.counter.count(s))
    }

    fn on_event(&mut self, ev: &SseEvent<'_>) -> Seen {
        let none = Seen {
            tokens: 0,
            finishing: false,
        };
        let Some(data) = ev.data() else { return none };
        if self.api == Api::AnthropicMessages {
            let Ok(e) = serde_json::from_slice::<AnEvent<'_>>(data) else {
                return none;
            };
            match e.ty.0.as_deref() {
                Some("content_block_start") => self.open_block = e.index,
                Some("content_block_stop") => self.open_block = None,
                Some("content_block_delta") => {
                    if let Some(d) = &e.delta {
                        let mut tokens = 0;
                        d.for_each_text(|t| tokens += self.count(t));
                        return Seen {
                            tokens,
                            finishing: false,
                        };
                    }
                }
                _ => {}
            }
            return none;
        }
        let Ok(c) = serde_json::from_slice::<OaChunk<'_>>(data) else {
            return none; // `[DONE]`, keep-alives
        };
        if self.id.is_none() {
            self.id = c.id.0.as_deref().map(str::to_owned);
            self.model = c.model.0.as_deref().map(str::to_owned);
            self.created = c.created;
        }
        let mut seen = none;
        for ch in c.choices.iter().flatten() {
            self.max_choice = self.max_choice.max(ch.index.unwrap_or(0).min(127));
            seen.finishing |= ch.finish_reason.0.is_some();
            seen.tokens += self.count(&ch.text);
            if let Some(d) = &ch.delta {
                d.for_each_text(|t| seen.tokens += self.count(t));
            }
        }
        seen
    }

    /// The events that end the stream in protocol.
    fn closing_events(&self, out: &mut Vec<u8>) {
        let n = self.produced;
        if self.api == Api::AnthropicMessages {
            if let Some(i) = self.open_block {
                out.extend_from_slice(
                    format!(
                        "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{i}}}\n\n"
                    )
                    .as_bytes(),
                );
            }
            out.extend_from_slice(
                format!(
                    "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{n}}}}}\n\n"
                )
                .as_bytes(),
            );
            out.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
            return;
        }
        let id =
            serde_json::to_string(self.id.as_deref().unwrap_or("tollgate-cut")).unwrap_or_default();
        let model = serde_json::to_string(self.model.as_deref().unwrap_or("")).unwrap_or_default();
        let created = self.created.unwrap_or(0);
        let (object, empty) = match self.api {
            Api::Completions => ("text_completion", r#""text":"","logprobs":null"#),
            _ => ("chat.completion.chunk", r#""delta":{}"#),
        };
        let choices: Vec<String> = (0..=self.max_choice)
            .map(|i| format!(r#"{{"index":{i},{empty},"finish_reason":"length"}}"#))
            .collect();
        out.extend_from_slice(
            format!(
                "data: {{\"id\":{id},\"object\":\"{object}\",\"created\":{created},\"model\":{model},\"choices\":[{}]}}\n\n",
                choices.join(",")
            )
            .as_bytes(),
        );
        if self.client_wants_usage {
            let p = self.prompt_tokens;
            out.extend_from_slice(
                format!(
                    "data: {{\"id\":{id},\"object\":\"{object}\",\"created\":{created},\"model\":{model},\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
                    p.saturating_add(n)
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::bpe;
    use crate::tokens::Encoding;
    use serde_json::Value;

    fn cutter(api: Api, allowance: u64, usage: bool) -> StreamCut {
        let counter = BudgetedCounter::new(Some(bpe::tokenizer(Encoding::O200kBase)), 1 << 20, 4.0);
        StreamCut::new(api, allowance, 7, usage, counter, 1 << 16).unwrap()
    }

    fn oa_chunk(i: usize, word: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"finish_reason\":null}}]}}\n\n{}",
            if i.is_multiple_of(2) { "" } else { ": keep-alive\n\n" }
        )
    }

    /// Feed `stream` in pieces of `step` bytes; returns what the client got.
    fn run(c: &mut StreamCut, stream: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            match c.on_chunk(piece) {
                Rewrite::Unchanged => out.extend_from_slice(piece),
                Rewrite::Replace(v) => out.extend_from_slice(&v),
            }
        }
        out
    }

    fn events(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(
            text.ends_with("\n\n"),
            "ends on an event boundary: {text:?}"
        );
        text.split("\n\n")
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.to_string())))
            .collect()
    }

    #[test]
    fn openai_stream_is_cut_in_protocol_at_any_chunking() {
        let mut stream = String::new();
        for i in 0..50 {
            stream.push_str(&oa_chunk(i, " word"));
        }
        stream.push_str("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        for step in [1, 7, 64, 100_000] {
            let mut c = cutter(Api::ChatCompletions, 10, true);
            let out = run(&mut c, stream.as_bytes(), step);
            assert_eq!(c.cut_at(), Some(10), "step {step}");
            let ev = events(&out);
            let content: Vec<_> = ev
                .iter()
                .filter(|e| e["choices"][0]["delta"]["content"].is_string())
                .collect();
            assert_eq!(content.len(), 10, "step {step}");
            let n = ev.len();
            assert_eq!(ev[n - 3]["choices"][0]["finish_reason"], "length");
            assert_eq!(ev[n - 3]["id"], "c1");
            assert_eq!(ev[n - 3]["model"], "gpt-4o");
            assert_eq!(ev[n - 2]["usage"]["completion_tokens"], 10);
            assert_eq!(ev[n - 2]["usage"]["total_tokens"], 17);
            assert_eq!(ev[n - 1], Value::String("[DONE]".into()));
        }
        // Without include_usage: no usage chunk.
        let mut c = cutter(Api::ChatCompletions, 3, false);
        let ev = events(&run(&mut c, stream.as_bytes(), 13));
        assert!(ev.iter().all(|e| e.get("usage").is_none()));
        // A stream within its allowance passes untouched.
        let mut c = cutter(Api::ChatCompletions, 51, true);
        assert_eq!(run(&mut c, stream.as_bytes(), 9), stream.as_bytes());
        assert_eq!(c.cut_at(), None);
        assert_eq!(c.produced(), 50);
    }

    #[test]
    fn anthropic_stream_closes_the_open_block_then_the_message() {
        let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        for _ in 0..30 {
            s.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" hi\"}}\n\n");
        }
        s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        for step in [1, 5, 1000] {
            let mut c = cutter(Api::AnthropicMessages, 4, false);
            let ev = events(&run(&mut c, s.as_bytes(), step));
            let types: Vec<_> = ev
                .iter()
                .map(|e| e["type"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                types,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ]
            );
            assert_eq!(ev[7]["delta"]["stop_reason"], "max_tokens");
            assert_eq!(ev[7]["usage"]["output_tokens"], 4);
        }
        assert!(StreamCut::new(
            Api::Responses,
            1,
            0,
            false,
            BudgetedCounter::new(None, 0, 4.0),
            1024
        )
        .is_none());
    }
}
