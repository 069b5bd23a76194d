//! Anthropic Messages (`POST /v1/messages`) behind an OpenAI Chat Completions front.
//!
//! Written from Anthropic's API reference ("Messages", "Streaming Messages",
//! "Tool use", "Vision", "Errors", "Prompt caching"):
//! - `system`/`developer` messages are lifted into the top-level `system`;
//! - `max_tokens` is required: the client's `max_completion_tokens`/`max_tokens`,
//!   else the route's `anthropic.max_tokens_default`;
//! - assistant `tool_calls` become `tool_use` blocks, `tool` messages become
//!   `tool_result` blocks in a user turn (consecutive ones merged, results first);
//! - images: data URLs become `base64` sources, http(s) URLs `url` sources;
//! - `stop` → `stop_sequences`, `temperature` (clamped to Anthropic's 0..1), `top_p`,
//!   `tool_choice` (`required` → `any`), `parallel_tool_calls: false` →
//!   `disable_parallel_tool_use`, `user` → `metadata.user_id`;
//! - answers: text blocks joined, `tool_use` → `tool_calls`, `stop_reason` →
//!   `finish_reason`, usage with `prompt_tokens = input + cache_read + cache_creation`
//!   and `cached_tokens = cache_read`;
//! - SSE: `message_start`, `content_block_*`, `message_delta`, `message_stop`,
//!   `ping`, `error` → OpenAI chunks ending `data: [DONE]`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    openai_error_body, openai_error_type_for_status, ChatRequest, ChunkWriter, Completion,
    FinishReason, Image, Part, RequestBody, RequestContext, ResponseContext, Role,
    StreamTranslator, ToolCall, ToolChoice, TranslateError, Translator, UpstreamRequest,
};
use crate::dialect::sse::{SseEvent, SseFramer, DEFAULT_MAX_EVENT_BYTES};
use crate::usage::Usage;

/// The Anthropic Messages translator.
pub struct Anthropic;

impl Translator for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn translate_request(
        &self,
        ctx: &RequestContext<'_>,
        body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let p = ctx.provider;
        let chat = ChatRequest::from_value(body.value)?;
        let out = request_body(&chat, ctx.model, p.anthropic.max_tokens_default)?;
        let base = p.endpoint.base_path.as_deref().unwrap_or("/v1");
        let mut req = UpstreamRequest {
            path: format!("{base}/messages"),
            authority: p.endpoint.authority.clone(),
            body: Some(serde_json::to_vec(&out).unwrap_or_default()),
            ..UpstreamRequest::default()
        };
        req.set_headers
            .push(("anthropic-version".into(), p.anthropic.version.clone()));
        if let Some(key) = &p.api_key {
            req.set_headers
                .push(("x-api-key".into(), key.value().into()));
            req.remove_headers.push("authorization".into());
        }
        Ok(req)
    }

    fn translate_response(
        &self,
        ctx: &ResponseContext<'_>,
        body: &[u8],
    ) -> Result<Vec<u8>, TranslateError> {
        let m: MessageResponse = serde_json::from_slice(body).map_err(|e| TranslateError {
            status: 502,
            message: format!("tollgate: the Anthropic response is not a Messages object: {e}"),
        })?;
        let mut text = String::new();
        let mut calls = Vec::new();
        for b in &m.content {
            match b {
                Block::Text { text: t } => text.push_str(t),
                Block::ToolUse { id, name, input } => calls.push(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: serde_json::to_string(input).unwrap_or_else(|_| "{}".into()),
                }),
                Block::Other => {}
            }
        }
        let c = Completion {
            id: m.id.unwrap_or_else(|| ctx.id.to_string()),
            model: m.model.unwrap_or_else(|| ctx.model.to_string()),
            created: ctx.created,
            content: (!text.is_empty() || calls.is_empty()).then_some(text),
            tool_calls: calls,
            finish_reason: m.stop_reason.as_deref().map(finish_reason),
            usage: m.usage.map(|u| u.to_usage()),
        };
        Ok(c.to_json())
    }

    fn stream_translator(&self, ctx: &ResponseContext<'_>) -> Box<dyn StreamTranslator> {
        Box::new(AnthropicStream::new(ctx))
    }

    fn translate_error(&self, status: u32, body: &[u8]) -> Vec<u8> {
        error_body(status, body)
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> FinishReason {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => FinishReason::Stop,
    }
}

/// Anthropic error `type` → OpenAI error `type` (the `openai` SDK picks its
/// exception class from the status; the type is informative).
fn error_type(anthropic_type: &str, status: u32) -> &'static str {
    match anthropic_type {
        "invalid_request_error" | "request_too_large" | "not_found_error" => {
            "invalid_request_error"
        }
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "rate_limit_error" => "rate_limit_error",
        "overloaded_error" => "overloaded_error",
        "api_error" => "server_error",
        _ => openai_error_type_for_status(status),
    }
}

/// An Anthropic error (`{"type":"error","error":{"type","message"}}`) → OpenAI's
/// shape, keeping the message; a non-JSON body (a proxy's HTML page) is kept as text.
pub fn error_body(status: u32, body: &[u8]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Outer {
        error: Option<Inner>,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(rename = "type", default)]
        ty: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Outer>(body) {
        Ok(Outer { error: Some(e) }) => openai_error_body(
            &e.message,
            error_type(&e.ty, status),
            None,
            (!e.ty.is_empty()).then_some(e.ty.as_str()),
        ),
        _ => super::generic_error(status, body),
    }
}

// ---------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------

fn image_block(img: &Image) -> Value {
    match img {
        Image::Base64 { media_type, data } => serde_json::json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}
        }),
        Image::Url(u) => serde_json::json!({
            "type": "image", "source": {"type": "url", "url": u}
        }),
    }
}

fn text_block(t: &str) -> Value {
    serde_json::json!({"type": "text", "text": t})
}

/// Content parts → Anthropic blocks (empty text parts dropped: Anthropic refuses them).
fn blocks_of(parts: &[Part], out: &mut Vec<Value>) {
    for p in parts {
        match p {
            Part::Text(t) if t.is_empty() => {}
            Part::Text(t) => out.push(text_block(t)),
            Part::Image(i) => out.push(image_block(i)),
        }
    }
}

/// The Anthropic request body for a normalised Chat Completions request.
pub fn request_body(
    chat: &ChatRequest,
    model: &str,
    max_tokens_default: u64,
) -> Result<Value, TranslateError> {
    let mut o = Map::new();
    o.insert("model".into(), model.into());
    o.insert(
        "max_tokens".into(),
        chat.max_tokens.unwrap_or(max_tokens_default).into(),
    );
    match chat.system.len() {
        0 => {}
        1 => {
            o.insert("system".into(), chat.system.concat().into());
        }
        _ => {
            let blocks: Vec<Value> = chat
                .system
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| text_block(s))
                .collect();
            o.insert("system".into(), Value::Array(blocks));
        }
    }

    // (role, blocks); consecutive same-role turns merged.
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::with_capacity(chat.messages.len());
    for (i, m) in chat.messages.iter().enumerate() {
        let (role, mut blocks) = match m.role {
            Role::User => {
                let mut b = Vec::with_capacity(m.content.len());
                blocks_of(&m.content, &mut b);
                ("user", b)
            }
            Role::Assistant => {
                let mut b = Vec::with_capacity(m.content.len() + m.tool_calls.len());
                blocks_of(&m.content, &mut b);
                for (j, c) in m.tool_calls.iter().enumerate() {
                    let input: Value = if c.arguments.trim().is_empty() {
                        Value::Object(Map::new())
                    } else {
                        serde_json::from_str(&c.arguments).map_err(|e| {
                            TranslateError::bad_request(format!(
                                "messages[{i}].tool_calls[{j}].function.arguments is not valid JSON: {e}"
                            ))
                        })?
                    };
                    if !input.is_object() {
                        return Err(TranslateError::bad_request(format!(
                            "messages[{i}].tool_calls[{j}].function.arguments must be a JSON object"
                        )));
                    }
                    b.push(serde_json::json!({"type": "tool_use", "id": c.id,
                        "name": c.name, "input": input}));
                }
                ("assistant", b)
            }
            Role::Tool => {
                let mut inner = Vec::with_capacity(m.content.len());
                blocks_of(&m.content, &mut inner);
                let content = match inner.as_slice() {
                    [] => Value::String(String::new()),
                    [one] if one.get("type").and_then(Value::as_str) == Some("text") => {
                        one.get("text").cloned().unwrap_or_default()
                    }
                    _ => Value::Array(inner),
                };
                let id = m.tool_call_id.clone().unwrap_or_default();
                (
                    "user",
                    vec![serde_json::json!({"type": "tool_result", "tool_use_id": id,
                        "content": content})],
                )
            }
        };
        match turns.last_mut() {
            Some((r, prev)) if *r == role => prev.append(&mut blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| {
            // A lone text block goes as a plain string, as most clients send it.
            let content = match blocks.as_slice() {
                [one] if one.get("type").and_then(Value::as_str) == Some("text") => {
                    one.get("text").cloned().unwrap_or_default()
                }
                [] => Value::String(String::new()),
                _ => Value::Array(blocks),
            };
            serde_json::json!({"role": role, "content": content})
        })
        .collect();
    o.insert("messages".into(), Value::Array(messages));

    if !chat.stop.is_empty() {
        o.insert("stop_sequences".into(), chat.stop.clone().into());
    }
    if let Some(t) = chat.temperature {
        o.insert("temperature".into(), t.clamp(0.0, 1.0).into());
    }
    if let Some(p) = chat.top_p {
        o.insert("top_p".into(), p.into());
    }
    if chat.stream {
        o.insert("stream".into(), true.into());
    }
    if let Some(u) = &chat.user {
        o.insert("metadata".into(), serde_json::json!({"user_id": u}));
    }
    if !chat.tools.is_empty() && chat.tool_choice != ToolChoice::None {
        let tools: Vec<Value> = chat
            .tools
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("name".into(), t.name.clone().into());
                if let Some(d) = &t.description {
                    m.insert("description".into(), d.clone().into());
                }
                m.insert("input_schema".into(), t.parameters.clone());
                Value::Object(m)
            })
            .collect();
        o.insert("tools".into(), Value::Array(tools));
        let mut choice = match &chat.tool_choice {
            ToolChoice::Unset | ToolChoice::Auto | ToolChoice::None => {
                serde_json::json!({"type": "auto"})
            }
            ToolChoice::Required => serde_json::json!({"type": "any"}),
            ToolChoice::Function(n) => serde_json::json!({"type": "tool", "name": n}),
        };
        if chat.parallel_tool_calls_disabled {
            if let Some(c) = choice.as_object_mut() {
                c.insert("disable_parallel_tool_use".into(), true.into());
            }
            o.insert("tool_choice".into(), choice);
        } else if chat.tool_choice != ToolChoice::Unset {
            o.insert("tool_choice".into(), choice);
        }
    }
    Ok(Value::Object(o))
}

// ---------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// Anthropic's `usage` object (all fields optional: `message_delta` carries only some).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// In OpenAI terms: prompt = input + cache read + cache creation.
    pub fn to_usage(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(created),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: read,
            cache_creation_tokens: created,
            reasoning_tokens: 0,
        }
    }

    /// Later counts (a `message_delta`'s cumulative figures) override earlier ones.
    fn update(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }
}

// ---------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: Delta,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    ty: String,
    #[serde(default)]
    message: String,
}

/// Anthropic SSE → OpenAI chunks, one per stream.
pub struct AnthropicStream {
    framer: SseFramer,
    w: ChunkWriter,
    created: u64,
    usage: AnthropicUsage,
    saw_usage: bool,
    /// Anthropic block index → OpenAI tool-call index, for open tool_use blocks.
    tool_blocks: Vec<(u64, usize)>,
    tools: usize,
    finished: bool,
    done: bool,
}

impl AnthropicStream {
    /// A stream translator; id and model are replaced by `message_start`'s.
    pub fn new(ctx: &ResponseContext<'_>) -> AnthropicStream {
        AnthropicStream {
            framer: SseFramer::new(DEFAULT_MAX_EVENT_BYTES),
            w: ChunkWriter::new(ctx.id, ctx.model, ctx.created),
            created: ctx.created,
            usage: AnthropicUsage::default(),
            saw_usage: false,
            tool_blocks: Vec::new(),
            tools: 0,
            finished: false,
            done: false,
        }
    }

    fn on_event(&mut self, ev: &SseEvent<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(data) = ev.data() else { return };
        let Ok(e) = serde_json::from_slice::<Event>(data) else {
            return;
        };
        match e {
            Event::MessageStart { message } => {
                if let (Some(id), Some(model)) = (message.id.as_deref(), message.model.as_deref()) {
                    self.w.reset(id, model, self.created);
                }
                if let Some(u) = message.usage {
                    self.usage.update(u);
                    self.saw_usage = true;
                }
                self.w.role(out);
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                StartBlock::Text { text } => {
                    if !text.is_empty() {
                        self.w.content(out, &text);
                    }
                }
                StartBlock::ToolUse { id, name } => {
                    let t = self.tools;
                    self.tools += 1;
                    self.tool_blocks.push((index, t));
                    self.w.tool_call_start(out, t, &id, &name);
                }
                StartBlock::Other => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                Delta::Text { text } => {
                    if !text.is_empty() {
                        self.w.content(out, &text);
                    }
                }
                Delta::InputJson { partial_json } => {
                    if partial_json.is_empty() {
                        return;
                    }
                    if let Some(&(_, t)) = self.tool_blocks.iter().find(|(i, _)| *i == index) {
                        self.w.tool_call_args(out, t, &partial_json);
                    }
                }
                Delta::Other => {}
            },
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.update(u);
                    self.saw_usage = true;
                }
                if let Some(r) = delta.stop_reason.as_deref() {
                    if !self.finished {
                        self.finished = true;
                        self.w.finish(out, finish_reason(r));
                    }
                }
            }
            Event::MessageStop => {
                if !self.finished {
                    self.finished = true;
                    self.w.finish(out, FinishReason::Stop);
                }
                if self.saw_usage {
                    self.w.usage(out, &self.usage.to_usage());
                }
                ChunkWriter::done(out);
                self.done = true;
            }
            Event::Error { error } => {
                let ty = error_type(&error.ty, 500);
                self.w.error(out, &error.message, ty);
                self.done = true;
            }
            Event::Other => {}
        }
    }
}

impl StreamTranslator for AnthropicStream {
    fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool, out: &mut Vec<u8>) {
        let mut framer = std::mem::take(&mut self.framer);
        framer.push(chunk, |ev| self.on_event(&ev, out));
        if end_of_stream {
            framer.finish(|ev| self.on_event(&ev, out));
        }
        self.framer = framer;
    }
}

#[cfg(test)]
mod tests;
