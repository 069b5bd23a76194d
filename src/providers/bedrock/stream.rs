//! ConverseStream eventstream → OpenAI `chat.completion.chunk` SSE.
//!
//! | Bedrock event | OpenAI chunk |
//! |---|---|
//! | `messageStart` | `delta: {role: assistant, content: ""}` |
//! | `contentBlockStart` with `toolUse` | `tool_calls[{index, id, function: {name, arguments: ""}}]` |
//! | `contentBlockDelta` `text` | `delta: {content}` |
//! | `contentBlockDelta` `toolUse.input` | `tool_calls[{index, function: {arguments}}]` |
//! | `messageStop` | empty delta with `finish_reason` |
//! | `metadata` (`usage`) | usage chunk (`choices: []`), then `data: [DONE]` |
//! | exception / error frame, bad frame | `data: {"error": {...}}`, then nothing |
//!
//! Work per chunk is O(chunk): the frame decoder keeps at most one partial frame
//! and each completed frame's JSON is parsed once.

use serde_json::Value;

use super::eventstream::{Decoder, Frame};
use super::{finish_reason, usage_of};
use crate::providers::{ChunkWriter, FinishReason, ResponseContext, StreamTranslator};
use crate::usage::Usage;

/// Translation state of one ConverseStream response.
pub struct ConverseStream {
    dec: Decoder,
    st: State,
}

struct State {
    w: ChunkWriter,
    /// The role chunk was sent.
    started: bool,
    /// `contentBlockIndex` of each tool-use block, in OpenAI tool-call order.
    tool_blocks: Vec<u64>,
    /// `messageStop` was seen (its finish chunk sent).
    stopped: Option<FinishReason>,
    /// `metadata` usage seen before `messageStop` (not the documented order, but
    /// harmless to accept).
    pending_usage: Option<Usage>,
    /// `[DONE]` or an error event was sent: nothing more goes out.
    closed: bool,
}

impl ConverseStream {
    /// A translator for one stream.
    pub fn new(ctx: &ResponseContext<'_>) -> ConverseStream {
        ConverseStream {
            dec: Decoder::default(),
            st: State {
                w: ChunkWriter::new(ctx.id, ctx.model, ctx.created),
                started: false,
                tool_blocks: Vec::new(),
                stopped: None,
                pending_usage: None,
                closed: false,
            },
        }
    }
}

impl StreamTranslator for ConverseStream {
    fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool, out: &mut Vec<u8>) {
        if self.st.closed {
            return;
        }
        let st = &mut self.st;
        let fed = self.dec.feed(chunk, |f| st.on_frame(&f, out));
        // Bytes after [DONE] or an error are not forwarded, whatever they are.
        if self.st.closed {
            return;
        }
        if let Err(e) = fed {
            self.st.fail(
                out,
                &format!("tollgate: bad eventstream from Bedrock: {e}"),
                "server_error",
            );
            return;
        }
        if end_of_stream && !self.st.closed {
            // A completed message whose metadata never came still ends cleanly; a
            // stream cut before `messageStop` ends without `[DONE]`.
            if self.st.stopped.is_some() && self.dec.finish().is_ok() {
                if let Some(u) = self.st.pending_usage.take() {
                    self.st.w.usage(out, &u);
                }
                ChunkWriter::done(out);
                self.st.closed = true;
            }
        }
    }
}

impl State {
    fn fail(&mut self, out: &mut Vec<u8>, message: &str, ty: &str) {
        self.w.error(out, message, ty);
        self.closed = true;
    }

    fn role(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.w.role(out);
            self.started = true;
        }
    }

    fn on_frame(&mut self, f: &Frame, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        match f.header_str(":message-type").unwrap_or("event") {
            "event" => {}
            "exception" => {
                let kind = f.header_str(":exception-type").unwrap_or("exception");
                let msg = serde_json::from_slice::<Value>(&f.payload)
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .or_else(|| v.get("Message"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&f.payload).into_owned());
                self.fail(out, &format!("{kind}: {msg}"), exception_type(kind));
                return;
            }
            _ => {
                // `:message-type: error` carries `:error-code` / `:error-message`.
                let code = f.header_str(":error-code").unwrap_or("error");
                let msg = f.header_str(":error-message").unwrap_or("");
                self.fail(out, &format!("{code}: {msg}"), exception_type(code));
                return;
            }
        }
        let Ok(v) = serde_json::from_slice::<Value>(&f.payload) else {
            self.fail(
                out,
                "tollgate: Bedrock sent an event whose payload is not JSON",
                "server_error",
            );
            return;
        };
        match f.header_str(":event-type").unwrap_or("") {
            "messageStart" => self.role(out),
            "contentBlockStart" => {
                if let Some(tu) = v.pointer("/start/toolUse") {
                    self.role(out);
                    let block = v.get("contentBlockIndex").and_then(Value::as_u64);
                    let idx = self.tool_blocks.len();
                    self.tool_blocks.push(block.unwrap_or(u64::MAX));
                    let s = |k: &str| tu.get(k).and_then(Value::as_str).unwrap_or("");
                    self.w.tool_call_start(out, idx, s("toolUseId"), s("name"));
                }
            }
            "contentBlockDelta" => {
                let Some(d) = v.get("delta") else { return };
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    self.role(out);
                    if !t.is_empty() {
                        self.w.content(out, t);
                    }
                } else if let Some(input) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    let block = v.get("contentBlockIndex").and_then(Value::as_u64);
                    let idx = block
                        .and_then(|b| self.tool_blocks.iter().position(|&x| x == b))
                        .or_else(|| self.tool_blocks.len().checked_sub(1));
                    if let (Some(idx), false) = (idx, input.is_empty()) {
                        self.w.tool_call_args(out, idx, input);
                    }
                }
            }
            "messageStop" => {
                self.role(out);
                let reason =
                    finish_reason(v.get("stopReason").and_then(Value::as_str).unwrap_or(""));
                self.w.finish(out, reason);
                self.stopped = Some(reason);
                if let Some(u) = self.pending_usage.take() {
                    self.w.usage(out, &u);
                    ChunkWriter::done(out);
                    self.closed = true;
                }
            }
            "metadata" => {
                let u = v.get("usage").and_then(usage_of);
                if self.stopped.is_some() {
                    if let Some(u) = u {
                        self.w.usage(out, &u);
                    }
                    ChunkWriter::done(out);
                    self.closed = true;
                } else {
                    self.pending_usage = u;
                }
            }
            // contentBlockStop and events added later carry nothing to forward.
            _ => {}
        }
    }
}

/// Bedrock exception name → OpenAI error `type`.
fn exception_type(kind: &str) -> &'static str {
    let k = kind.to_ascii_lowercase();
    if k.starts_with("throttling") || k.starts_with("servicequotaexceeded") {
        "rate_limit_error"
    } else if k.starts_with("validation") {
        "invalid_request_error"
    } else if k.starts_with("accessdenied") {
        "permission_error"
    } else {
        "server_error"
    }
}
