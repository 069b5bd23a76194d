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
//!   `ping`, `error` → OpenAI chunks ending `data: [DONE]`;
//! - extended thinking, as LiteLLM maps it: `reasoning_effort` (or the client's own
//!   `thinking` object) → `thinking`; `thinking` / `redacted_thinking` blocks →
//!   `reasoning_content` + `thinking_blocks` (signatures kept, so clients can send
//!   them back on the next turn, which Anthropic requires with tool use), in
//!   answers and stream deltas; citations → `provider_specific_fields.citations`
//!   (web ones also as `annotations`); `logprobs` requests refused (Anthropic has
//!   none).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::dialect::doc::{Node, View};
use serde::Deserialize;
use serde_json::Value;

use super::{
    openai_error_body, openai_error_type_for_status, push_json_str, Answer, ChatRequest,
    ChunkWriter, Completion, FinishReason, Image, Part, RequestBody, RequestContext,
    ResponseContext, Role, StreamTranslator, ToolCall, ToolChoice, TranslateError, Translator,
    UpstreamRequest,
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
        refuse_logprobs(body.root)?;
        super::request::refuse_n(body.root, "Anthropic")?;
        let chat = ChatRequest::from_node(body.root)?;
        let thinking = thinking_param(body.root, &p.anthropic.thinking_budgets)?;
        let out = request_body(
            &chat,
            ctx.model,
            p.anthropic.max_tokens_default,
            thinking.as_ref(),
        )?;
        let base = p.endpoint.base_path.as_deref().unwrap_or("/v1");
        let mut req = UpstreamRequest {
            path: format!("{base}/messages"),
            authority: p.endpoint.authority.clone(),
            body: Some(out),
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

    fn answer(&self, ctx: &ResponseContext<'_>, body: &[u8]) -> Result<Answer, TranslateError> {
        let m: MessageResponse = serde_json::from_slice(body).map_err(|e| TranslateError {
            status: 502,
            message: format!("tollgate: the Anthropic response is not a Messages object: {e}"),
        })?;
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut extra = AnswerExtras::default();
        for b in m.content {
            match b.ty.as_ref() {
                "text" => {
                    let t = b.text.as_deref().unwrap_or("");
                    if let Some(cs) = b.citations.as_ref().filter(|c| !c.is_empty()) {
                        let start = text.chars().count();
                        extra.cite(cs, start, start + t.chars().count());
                    }
                    text.push_str(t);
                }
                "tool_use" => calls.push(ToolCall {
                    id: b.id.unwrap_or_default(),
                    name: b.name.unwrap_or_default(),
                    arguments: b.input.map_or_else(|| "{}".to_string(), |v| v.to_string()),
                }),
                "thinking" => extra.thinking(
                    b.thinking.as_deref().unwrap_or(""),
                    b.signature.as_deref().unwrap_or(""),
                ),
                "redacted_thinking" => extra.redacted(b.data.as_deref().unwrap_or("")),
                _ => {}
            }
        }
        let (reasoning_content, message_extra) = extra.render();
        let c = Completion {
            id: m.id.unwrap_or_else(|| ctx.id.to_string()),
            model: m.model.unwrap_or_else(|| ctx.model.to_string()),
            created: ctx.created,
            content: (!text.is_empty() || calls.is_empty()).then_some(text),
            tool_calls: calls,
            finish_reason: m.stop_reason.as_deref().map(finish_reason),
            usage: m.usage.map(|u| u.to_usage()),
            reasoning_content,
            message_extra,
        };
        Ok(Answer::from(c))
    }

    fn stream_translator(&self, ctx: &ResponseContext<'_>) -> Box<dyn StreamTranslator> {
        Box::new(AnthropicStream::new(ctx))
    }

    fn translate_error(&self, status: u32, body: &[u8]) -> Vec<u8> {
        error_body(status, body)
    }
}

/// What an Anthropic answer carries beyond text and tool calls, gathered while its
/// blocks are read and rendered as `message` members the way OpenAI-compatible
/// gateways (LiteLLM) do: `reasoning_content`, `thinking_blocks`, citations under
/// `provider_specific_fields.citations` (one list per cited text block), and web
/// citations also as OpenAI `annotations` (`url_citation` with character offsets
/// into `content`).
#[derive(Default)]
struct AnswerExtras {
    reasoning: Option<String>,
    /// `thinking_blocks` array members, JSON.
    blocks: Vec<String>,
    /// Each cited text block's `citations` array, JSON.
    citations: Vec<String>,
    /// `annotations` array members, JSON.
    annotations: Vec<String>,
}

impl AnswerExtras {
    fn thinking(&mut self, text: &str, signature: &str) {
        self.reasoning
            .get_or_insert_with(String::new)
            .push_str(text);
        let mut b = String::with_capacity(text.len() + signature.len() + 64);
        b.push_str(r#"{"type":"thinking","thinking":"#);
        push_json_str(&mut b, text);
        b.push_str(r#","signature":"#);
        push_json_str(&mut b, signature);
        b.push('}');
        self.blocks.push(b);
    }

    fn redacted(&mut self, data: &str) {
        let mut b = String::with_capacity(data.len() + 48);
        b.push_str(r#"{"type":"redacted_thinking","data":"#);
        push_json_str(&mut b, data);
        b.push('}');
        self.blocks.push(b);
    }

    /// A text block's citations; `start..end` is the block's span in `content`
    /// (characters).
    fn cite(&mut self, citations: &[Value], start: usize, end: usize) {
        self.citations
            .push(Value::from(citations.to_vec()).to_string());
        for c in citations {
            if c.get("type").and_then(Value::as_str) != Some("web_search_result_location") {
                continue;
            }
            let Some(url) = c.get("url").and_then(Value::as_str) else {
                continue;
            };
            let title = c.get("title").and_then(Value::as_str).unwrap_or("");
            let a = serde_json::json!({"type": "url_citation", "url_citation": {
                "start_index": start, "end_index": end, "url": url, "title": title}});
            self.annotations.push(a.to_string());
        }
    }

    /// `(reasoning_content, the other members as ",\"key\":value...")`.
    fn render(self) -> (Option<String>, String) {
        let mut o = String::new();
        let list = |o: &mut String, key: &str, items: &[String]| {
            if items.is_empty() {
                return;
            }
            o.push_str(",\"");
            o.push_str(key);
            o.push_str("\":[");
            o.push_str(&items.join(","));
            o.push(']');
        };
        list(&mut o, "thinking_blocks", &self.blocks);
        list(&mut o, "annotations", &self.annotations);
        if !self.citations.is_empty() {
            o.push_str(",\"provider_specific_fields\":{\"citations\":[");
            o.push_str(&self.citations.join(","));
            o.push_str("]}");
        }
        (self.reasoning, o)
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

/// Anthropic returns no log probabilities. A client that asks for them gets a 400
/// rather than an answer whose `logprobs` is silently `null` (code reading
/// `choice.logprobs.content` would fail later, far from the cause).
/// `logprobs: false` and `top_logprobs: 0` ask for nothing and pass.
fn refuse_logprobs(body: Node<'_>) -> Result<(), TranslateError> {
    let asked = body.get("logprobs").and_then(Node::as_bool) == Some(true);
    let top = body
        .get("top_logprobs")
        .and_then(Node::as_u64)
        .filter(|n| *n > 0);
    if asked || top.is_some() {
        let field = if asked { "logprobs" } else { "top_logprobs" };
        return Err(TranslateError::bad_request(format!(
            "{field}: Anthropic does not return log probabilities; remove `logprobs`/`top_logprobs` for this route's model"
        )));
    }
    Ok(())
}

/// The `thinking` parameter for Anthropic: the client's own `thinking` object
/// (Anthropic's shape, passed through), else OpenAI's `reasoning_effort` mapped to
/// `{"type":"enabled","budget_tokens":N}` with the route's budgets.
#[derive(Clone, Debug, PartialEq)]
pub struct Thinking {
    /// The `thinking` object, JSON text.
    pub json: String,
    /// Its `budget_tokens`, when thinking is `enabled` with a budget: `max_tokens`
    /// must exceed it.
    pub budget: Option<u64>,
}

fn thinking_param(
    body: Node<'_>,
    budgets: &crate::providers::config::ThinkingBudgets,
) -> Result<Option<Thinking>, TranslateError> {
    match body.get("thinking") {
        None => {}
        Some(t) if t.is_null() => {}
        Some(t) => {
            let ty = t.get("type").and_then(Node::as_str);
            let Some(ty) = ty.filter(|_| t.is_object()) else {
                return Err(TranslateError::bad_request(
                    "thinking: expected Anthropic's object, e.g. {\"type\": \"enabled\", \"budget_tokens\": 2048}",
                ));
            };
            let budget = t.get("budget_tokens").and_then(Node::as_u64);
            return Ok(Some(Thinking {
                json: super::node_value(t).to_string(),
                budget: budget.filter(|_| ty == "enabled"),
            }));
        }
    }
    let effort = match body.get("reasoning_effort").map(Node::view) {
        None | Some(View::Null) => return Ok(None),
        Some(View::String(e)) => e,
        Some(_) => {
            return Err(TranslateError::bad_request(
                "reasoning_effort: expected a string",
            ))
        }
    };
    match budgets.for_effort(effort) {
        Some(Some(n)) => Ok(Some(Thinking {
            json: format!(r#"{{"type":"enabled","budget_tokens":{n}}}"#),
            budget: Some(n),
        })),
        Some(None) => Ok(None),
        None => Err(TranslateError::bad_request(format!(
            "reasoning_effort: {effort:?} is not one of none, minimal, low, medium, high, xhigh"
        ))),
    }
}

/// `max_tokens` for Anthropic: the client's cap, else the route default. With a
/// thinking budget the cap covers thinking too (Anthropic requires `max_tokens >
/// budget_tokens`): a client cap at or under the budget is refused; the default
/// gets the budget added, so the visible answer keeps the default's room.
fn max_tokens(
    chat: &ChatRequest,
    default: u64,
    thinking: Option<&Thinking>,
) -> Result<u64, TranslateError> {
    match (chat.max_tokens, thinking.and_then(|t| t.budget)) {
        (Some(m), Some(b)) if m <= b => Err(TranslateError::bad_request(format!(
            "max_completion_tokens: {m} must be greater than the thinking budget of {b} tokens (Anthropic counts thinking in max_tokens); raise it or lower reasoning_effort"
        ))),
        (Some(m), _) => Ok(m),
        (None, Some(b)) => Ok(default.saturating_add(b)),
        (None, None) => Ok(default),
    }
}

/// The assistant's thinking blocks sent back by the client (`thinking_blocks`),
/// checked and written as Anthropic blocks (only the fields Anthropic accepts).
fn push_thinking_blocks(
    out: &mut String,
    blocks: &[Value],
    at: usize,
    first: &mut bool,
) -> Result<(), TranslateError> {
    for (n, b) in blocks.iter().enumerate() {
        let s = |k: &str| b.get(k).and_then(Value::as_str);
        let bad = || {
            TranslateError::bad_request(format!(
                "messages[{at}].thinking_blocks[{n}]: expected {{\"type\":\"thinking\",\"thinking\",\"signature\"}} or {{\"type\":\"redacted_thinking\",\"data\"}}"
            ))
        };
        if !std::mem::take(first) {
            out.push(',');
        }
        match s("type") {
            Some("thinking") => {
                let (Some(t), Some(sig)) = (s("thinking"), s("signature")) else {
                    return Err(bad());
                };
                out.push_str(r#"{"type":"thinking","thinking":"#);
                push_json_str(out, t);
                out.push_str(r#","signature":"#);
                push_json_str(out, sig);
                out.push('}');
            }
            Some("redacted_thinking") => {
                let Some(d) = s("data") else {
                    return Err(bad());
                };
                out.push_str(r#"{"type":"redacted_thinking","data":"#);
                push_json_str(out, d);
                out.push('}');
            }
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// Append a JSON value (tool schemas: already parsed, written back as is).
fn push_value(out: &mut String, v: &Value) {
    out.push_str(&v.to_string());
}

fn push_image(out: &mut String, img: &Image) {
    match img {
        Image::Base64 { media_type, data } => {
            out.push_str(r#"{"type":"image","source":{"type":"base64","media_type":"#);
            push_json_str(out, media_type);
            out.push_str(r#","data":"#);
            push_json_str(out, data);
            out.push_str("}}");
        }
        Image::Url(u) => {
            out.push_str(r#"{"type":"image","source":{"type":"url","url":"#);
            push_json_str(out, u);
            out.push_str("}}");
        }
    }
}

fn push_text_block(out: &mut String, t: &str) {
    out.push_str(r#"{"type":"text","text":"#);
    push_json_str(out, t);
    out.push('}');
}

/// Content parts as Anthropic blocks (empty text parts dropped: Anthropic refuses
/// them), each preceded by a comma when `*first` is false.
fn push_parts(out: &mut String, parts: &[Part], first: &mut bool) {
    for p in parts {
        if matches!(p, Part::Text(t) if t.is_empty()) {
            continue;
        }
        if !std::mem::take(first) {
            out.push(',');
        }
        match p {
            Part::Text(t) => push_text_block(out, t),
            Part::Image(i) => push_image(out, i),
        }
    }
}

/// The single non-empty text of `parts` when that is all there is, so it can go as
/// a plain string, as most clients send it.
fn lone_text(parts: &[Part]) -> Option<&str> {
    let mut it = parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()));
    match (it.next(), it.next()) {
        (Some(Part::Text(t)), None) => Some(t),
        (None, None) => Some(""),
        _ => None,
    }
}

/// Which Anthropic turn a message belongs to.
fn turn_role(r: Role) -> &'static str {
    match r {
        Role::Assistant => "assistant",
        Role::User | Role::Tool => "user",
    }
}

/// The Anthropic request body for a normalised Chat Completions request, written
/// straight to JSON text (no intermediate tree).
pub fn request_body(
    chat: &ChatRequest,
    model: &str,
    max_tokens_default: u64,
    thinking: Option<&Thinking>,
) -> Result<Vec<u8>, TranslateError> {
    let mut o = String::with_capacity(256 + chat.messages.len() * 128);
    o.push_str(r#"{"model":"#);
    push_json_str(&mut o, model);
    let _ = write!(
        o,
        r#","max_tokens":{}"#,
        max_tokens(chat, max_tokens_default, thinking)?
    );
    if let Some(t) = thinking {
        o.push_str(r#","thinking":"#);
        o.push_str(&t.json);
    }
    let system: Vec<&String> = chat.system.iter().filter(|s| !s.is_empty()).collect();
    match system.as_slice() {
        [] => {}
        [one] => {
            o.push_str(r#","system":"#);
            push_json_str(&mut o, one);
        }
        many => {
            o.push_str(r#","system":["#);
            for (i, s) in many.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                push_text_block(&mut o, s);
            }
            o.push(']');
        }
    }

    o.push_str(r#","messages":["#);
    let msgs = &chat.messages;
    let mut i = 0;
    let mut first_turn = true;
    while i < msgs.len() {
        // One Anthropic turn: consecutive messages of the same role, merged
        // (tool results are user turns, and come first in theirs).
        let role = msgs.get(i).map_or(Role::User, |m| m.role);
        let mut j = i;
        while msgs
            .get(j)
            .is_some_and(|m| turn_role(m.role) == turn_role(role))
        {
            j += 1;
        }
        let turn = msgs.get(i..j).unwrap_or(&[]);
        if !std::mem::take(&mut first_turn) {
            o.push(',');
        }
        o.push_str(r#"{"role":""#);
        o.push_str(turn_role(role));
        o.push_str(r#"","content":"#);
        let single = match turn {
            [m] if m.tool_calls.is_empty()
                && m.thinking_blocks.is_empty()
                && m.role != Role::Tool =>
            {
                lone_text(&m.content)
            }
            _ => None,
        };
        if let Some(t) = single {
            push_json_str(&mut o, t);
        } else {
            o.push('[');
            let mut first = true;
            for (k, m) in turn.iter().enumerate() {
                let at = i + k;
                match m.role {
                    Role::User => push_parts(&mut o, &m.content, &mut first),
                    Role::Assistant => {
                        // Anthropic wants thinking blocks first in the turn.
                        push_thinking_blocks(&mut o, &m.thinking_blocks, at, &mut first)?;
                        push_parts(&mut o, &m.content, &mut first);
                        for (n, c) in m.tool_calls.iter().enumerate() {
                            let args = c.arguments.trim();
                            let args = if args.is_empty() { "{}" } else { args };
                            match serde_json::from_str::<Value>(args) {
                                Ok(Value::Object(_)) => {}
                                Ok(_) => {
                                    return Err(TranslateError::bad_request(format!(
                                        "messages[{at}].tool_calls[{n}].function.arguments must be a JSON object"
                                    )))
                                }
                                Err(e) => {
                                    return Err(TranslateError::bad_request(format!(
                                        "messages[{at}].tool_calls[{n}].function.arguments is not valid JSON: {e}"
                                    )))
                                }
                            }
                            if !std::mem::take(&mut first) {
                                o.push(',');
                            }
                            o.push_str(r#"{"type":"tool_use","id":"#);
                            push_json_str(&mut o, &c.id);
                            o.push_str(r#","name":"#);
                            push_json_str(&mut o, &c.name);
                            o.push_str(r#","input":"#);
                            o.push_str(args);
                            o.push('}');
                        }
                    }
                    Role::Tool => {
                        if !std::mem::take(&mut first) {
                            o.push(',');
                        }
                        o.push_str(r#"{"type":"tool_result","tool_use_id":"#);
                        push_json_str(&mut o, m.tool_call_id.as_deref().unwrap_or(""));
                        o.push_str(r#","content":"#);
                        match lone_text(&m.content) {
                            Some(t) => push_json_str(&mut o, t),
                            None => {
                                o.push('[');
                                let mut f = true;
                                push_parts(&mut o, &m.content, &mut f);
                                o.push(']');
                            }
                        }
                        o.push('}');
                    }
                }
            }
            o.push(']');
        }
        o.push('}');
        i = j;
    }
    o.push(']');

    if !chat.stop.is_empty() {
        o.push_str(r#","stop_sequences":["#);
        for (i, st) in chat.stop.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            push_json_str(&mut o, st);
        }
        o.push(']');
    }
    if let Some(t) = chat.temperature.filter(|t| t.is_finite()) {
        o.push_str(r#","temperature":"#);
        o.push_str(&Value::from(t.clamp(0.0, 1.0)).to_string());
    }
    if let Some(p) = chat.top_p.filter(|p| p.is_finite()) {
        o.push_str(r#","top_p":"#);
        o.push_str(&Value::from(p).to_string());
    }
    if chat.stream {
        o.push_str(r#","stream":true"#);
    }
    if let Some(u) = &chat.user {
        o.push_str(r#","metadata":{"user_id":"#);
        push_json_str(&mut o, u);
        o.push('}');
    }
    if !chat.tools.is_empty() && chat.tool_choice != ToolChoice::None {
        o.push_str(r#","tools":["#);
        for (i, t) in chat.tools.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str(r#"{"name":"#);
            push_json_str(&mut o, &t.name);
            if let Some(d) = &t.description {
                o.push_str(r#","description":"#);
                push_json_str(&mut o, d);
            }
            o.push_str(r#","input_schema":"#);
            push_value(&mut o, &t.parameters);
            o.push('}');
        }
        o.push(']');
        let explicit = chat.tool_choice != ToolChoice::Unset;
        if explicit || chat.parallel_tool_calls_disabled {
            o.push_str(r#","tool_choice":{"type":"#);
            match &chat.tool_choice {
                ToolChoice::Required => o.push_str(r#""any""#),
                ToolChoice::Function(n) => {
                    o.push_str(r#""tool","name":"#);
                    push_json_str(&mut o, n);
                }
                _ => o.push_str(r#""auto""#),
            }
            if chat.parallel_tool_calls_disabled {
                o.push_str(r#","disable_parallel_tool_use":true"#);
            }
            o.push('}');
        }
    }
    o.push('}');
    Ok(o.into_bytes())
}

// ---------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct MessageResponse<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(borrow)]
    content: Vec<Block<'a>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// A content block, flat (an internally tagged enum would make serde buffer every
/// block into an intermediate tree first).
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    /// `thinking` blocks: the reasoning text.
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    /// `thinking` blocks: the signature to send back.
    #[serde(default, borrow)]
    signature: Option<Cow<'a, str>>,
    /// `redacted_thinking` blocks: the opaque payload.
    #[serde(default, borrow)]
    data: Option<Cow<'a, str>>,
    /// `text` blocks: the citations backing this text.
    #[serde(default)]
    citations: Option<Vec<Value>>,
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

/// One stream event, flat: every event type's fields as options (an internally
/// tagged enum would buffer each event into an intermediate tree first).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default, borrow)]
    content_block: Option<EventBlock<'a>>,
    #[serde(default, borrow)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(default)]
    error: Option<ErrorBody>,
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
struct EventBlock<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    signature: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<Cow<'a, str>>,
}

/// `content_block_delta.delta` and `message_delta.delta` share this shape.
#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", default, borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    signature: Option<Cow<'a, str>>,
    #[serde(default)]
    citation: Option<Value>,
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
        let Ok(e) = serde_json::from_slice::<Event<'_>>(data) else {
            return;
        };
        match e.ty.as_ref() {
            "message_start" => {
                if let Some(message) = e.message {
                    if let (Some(id), Some(model)) =
                        (message.id.as_deref(), message.model.as_deref())
                    {
                        self.w.reset(id, model, self.created);
                    }
                    if let Some(u) = message.usage {
                        self.usage.update(u);
                        self.saw_usage = true;
                    }
                }
                self.w.role(out);
            }
            "content_block_start" => {
                let Some(b) = e.content_block else { return };
                match b.ty.as_ref() {
                    "text" => {
                        if let Some(t) = b.text.as_deref().filter(|t| !t.is_empty()) {
                            self.w.content(out, t);
                        }
                    }
                    "thinking" => {
                        if let Some(t) = b.thinking.as_deref().filter(|t| !t.is_empty()) {
                            self.w.reasoning(out, t);
                        }
                        if let Some(sig) = b.signature.as_deref().filter(|s| !s.is_empty()) {
                            self.w.thinking_signature(out, sig);
                        }
                    }
                    "redacted_thinking" => {
                        self.w
                            .redacted_thinking(out, b.data.as_deref().unwrap_or(""));
                    }
                    "tool_use" => {
                        let t = self.tools;
                        self.tools += 1;
                        self.tool_blocks.push((e.index, t));
                        self.w.tool_call_start(
                            out,
                            t,
                            b.id.as_deref().unwrap_or(""),
                            b.name.as_deref().unwrap_or(""),
                        );
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let Some(d) = e.delta else { return };
                match d.ty.as_deref() {
                    Some("text_delta") => {
                        if let Some(t) = d.text.as_deref().filter(|t| !t.is_empty()) {
                            self.w.content(out, t);
                        }
                    }
                    Some("input_json_delta") => {
                        let Some(frag) = d.partial_json.as_deref().filter(|f| !f.is_empty()) else {
                            return;
                        };
                        if let Some(&(_, t)) = self.tool_blocks.iter().find(|(i, _)| *i == e.index)
                        {
                            self.w.tool_call_args(out, t, frag);
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(t) = d.thinking.as_deref().filter(|t| !t.is_empty()) {
                            self.w.reasoning(out, t);
                        }
                    }
                    Some("signature_delta") => {
                        if let Some(sig) = d.signature.as_deref().filter(|s| !s.is_empty()) {
                            self.w.thinking_signature(out, sig);
                        }
                    }
                    Some("citations_delta") => {
                        if let Some(c) = d.citation.as_ref() {
                            self.w.provider_field(out, "citation", &c.to_string());
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = e.usage {
                    self.usage.update(u);
                    self.saw_usage = true;
                }
                if let Some(r) = e.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    if !self.finished {
                        self.finished = true;
                        self.w.finish(out, finish_reason(r));
                    }
                }
            }
            "message_stop" => {
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
            "error" => {
                let (ty, msg) = e
                    .error
                    .map_or((String::new(), String::new()), |er| (er.ty, er.message));
                self.w.error(out, &msg, error_type(&ty, 500));
                self.done = true;
            }
            _ => {}
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
