//! Provider rewriting: clients speak OpenAI Chat Completions; tollgate rewrites each
//! request for the provider the route points at and rewrites the answer back.
//!
//! # Interface (stable; read by the Gemini/Bedrock translators)
//!
//! Interface changes since first commit: additions only (`push_usage`,
//! `ProviderConfig::models` + `serves` for model-based provider choice); build
//! `ProviderConfig` with `ProviderConfig::new`, not a struct literal.
//!
//! One [`Translator`] per provider kind, chosen by [`translator`] (the registry: one
//! `match` arm per [`ProviderKind`]). A translator is stateless and `'static`; the
//! per-request state of a stream lives in the [`StreamTranslator`] it creates.
//!
//! Request direction ([`Translator::translate_request`]): the complete client body
//! (OpenAI Chat Completions JSON, already redacted by PII, with `model` already
//! mapped through the route's model map) → [`UpstreamRequest`] (path, authority,
//! headers to set/remove, new body). The [`RequestContext`] carries the provider
//! config (endpoint, credentials) and the host clock for signing (SigV4).
//! [`ChatRequest::from_node`] gives a typed, normalised view of the body so each
//! translator does not re-walk OpenAI's many content shapes.
//!
//! Response direction, 2xx non-streaming ([`Translator::answer`]): provider JSON →
//! OpenAI `chat.completion` JSON, built with [`Completion`] and returned as an
//! [`Answer`] that also carries the usage and model written into it (metering
//! takes them from there instead of parsing the answer again).
//!
//! Response direction, 2xx streaming ([`Translator::stream_translator`]): a
//! [`StreamTranslator`] is fed every body chunk as it arrives and appends OpenAI SSE
//! (`data: {chat.completion.chunk}\n\n` ... `data: [DONE]\n\n`) to `out` (build them
//! with [`ChunkWriter`]). Rules:
//! - O(chunk) work: keep a bounded carry-over for a frame split across chunks,
//!   never re-scan what was already consumed.
//! - Always emit the usage chunk (`choices: []`, `usage: {...}` in OpenAI terms,
//!   [`ChunkWriter::usage`]) right before `[DONE]` when the provider reported usage.
//!   The exchange strips it again for clients that did not ask for
//!   `stream_options.include_usage` (same mechanism as OpenAI usage injection), so
//!   metering always sees exact usage.
//! - Emit `data: [DONE]` only when the provider's stream completed (Anthropic
//!   `message_stop`, Gemini final chunk with `finishReason` at end of stream,
//!   Bedrock `messageStop`+`metadata`). A provider error event becomes an OpenAI
//!   mid-stream error `data: {"error":{...}}` (the `openai` SDK raises on it),
//!   followed by nothing else. A stream cut short ends without `[DONE]`.
//!
//! Errors ([`Translator::translate_error`]): any non-2xx status and provider body →
//! OpenAI-shaped error JSON keeping the provider's message ([`openai_error_body`]).
//!
//! Usage is always reported in OpenAI terms: `prompt_tokens` includes cached and
//! cache-creation input tokens, cached reads go to
//! `prompt_tokens_details.cached_tokens` ([`usage_json`]).
//!
//! # Adding a provider
//! Add `src/providers/<name>.rs` implementing [`Translator`], a `pub mod <name>;`
//! line below and its arm in [`translator`].

pub mod config;

/// The response side of a [`Translator`] whose upstream already answers in OpenAI's
/// shape: bodies and streams pass through untouched, errors keep their message.
/// One definition for every pass-through provider (and the not-built placeholder),
/// so they cannot drift apart. Expands inside an `impl Translator for ...` block.
macro_rules! pass_through_responses {
    () => {
        fn answer(
            &self,
            _ctx: &$crate::providers::ResponseContext<'_>,
            body: &[u8],
        ) -> Result<$crate::providers::Answer, $crate::providers::TranslateError> {
            Ok($crate::providers::Answer::without_usage(body.to_vec()))
        }

        fn stream_translator(
            &self,
            _ctx: &$crate::providers::ResponseContext<'_>,
        ) -> Box<dyn $crate::providers::StreamTranslator> {
            Box::new($crate::providers::PassStream)
        }

        fn translate_error(&self, status: u32, body: &[u8]) -> Vec<u8> {
            $crate::providers::generic_error(status, body)
        }
    };
}

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod fallback;
pub mod gemini;
pub mod openai_compat;
pub(crate) mod request;
pub mod stage;

use std::fmt::{self, Write as _};

use serde_json::Value;

pub use config::{ProviderConfig, ProviderKind, Secret};

use crate::dialect::doc::{Node, View};
use crate::usage::Usage;

/// The translator for a provider kind: the registry. Gemini and Bedrock plug in here
/// (one arm each).
pub fn translator(kind: ProviderKind) -> &'static dyn Translator {
    match kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => &openai_compat::OpenAiCompat,
        ProviderKind::AzureOpenAi => &azure::AzureOpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Gemini => &gemini::Gemini,
        ProviderKind::Bedrock => &bedrock::Bedrock,
    }
}

/// What a translator needs to build the upstream request.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The route's provider settings (endpoint, credentials, per-provider options).
    pub provider: &'a ProviderConfig,
    /// The upstream model id after the model map (`fast` → `claude-haiku-4-5`).
    /// Empty when the client sent none.
    pub model: &'a str,
    /// The client asked for a stream (`"stream": true`).
    pub streaming: bool,
    /// Host wall clock, milliseconds since the Unix epoch (for SigV4 `x-amz-date`).
    pub now_unix_ms: u64,
    /// The client's original `:path` (query included), for providers that keep it.
    pub client_path: &'a str,
}

/// The client's body, as bytes and as the JSON tree the exchange already parsed
/// (`value` is exactly `serde_json::from_slice(bytes)`; it is an object).
#[derive(Debug)]
pub struct RequestBody<'a> {
    /// Current body bytes (after earlier stages such as PII redaction).
    pub bytes: &'a [u8],
    /// The same body, parsed into the flat document (no JSON tree: translators
    /// read what they need and build [`node_value`] trees only for what they pass
    /// on whole).
    pub root: Node<'a>,
}

/// The request to send upstream instead of the client's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// New `:path` (with query string), e.g. `/v1/messages`.
    pub path: String,
    /// New `:authority`, when the endpoint names one.
    pub authority: Option<String>,
    /// Headers to set (lower-case names), e.g. `x-api-key`, `anthropic-version`.
    /// Secrets go only here: never into logs.
    pub set_headers: Vec<(String, String)>,
    /// Headers to remove (lower-case names), e.g. the client's `authorization`.
    pub remove_headers: Vec<String>,
    /// New body, or `None` to forward the client's bytes unchanged.
    pub body: Option<Vec<u8>>,
}

/// What a translator needs to translate a response back.
#[derive(Debug)]
pub struct ResponseContext<'a> {
    /// The route's provider settings.
    pub provider: &'a ProviderConfig,
    /// The model id sent upstream (reported as `model` when the provider's answer
    /// does not name one).
    pub model: &'a str,
    /// Host wall clock in seconds since the Unix epoch, for `created`.
    pub created: u64,
    /// A fallback completion id (`chatcmpl-...`) for providers whose answers carry none.
    pub id: &'a str,
}

/// A request tollgate cannot translate (e.g. a content type the provider lacks):
/// answered locally as an OpenAI error with this status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateError {
    /// HTTP status of the local reply (400 for client mistakes, 500 for config).
    pub status: u32,
    /// Actionable message naming the offending field (`messages[2].content[0].type`).
    pub message: String,
}

impl TranslateError {
    /// A 400 for something in the client's request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        TranslateError {
            status: 400,
            message: message.into(),
        }
    }

    /// The error as an OpenAI error body.
    pub fn body(&self) -> Vec<u8> {
        let ty = if self.status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        openai_error_body(&self.message, ty, None, None)
    }
}

/// One provider's translation, both directions.
pub trait Translator: Sync {
    /// Short stable name for logs.
    fn name(&self) -> &'static str;

    /// Build the upstream request from the client's OpenAI Chat Completions body.
    fn translate_request(
        &self,
        ctx: &RequestContext<'_>,
        body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError>;

    /// A complete 2xx non-streaming provider body → OpenAI `chat.completion` JSON,
    /// with the usage and model written into it. `Err` means the body was not the
    /// provider's shape (sent on as a 502 error).
    fn answer(&self, ctx: &ResponseContext<'_>, body: &[u8]) -> Result<Answer, TranslateError>;

    /// [`Translator::answer`]'s body alone.
    fn translate_response(
        &self,
        ctx: &ResponseContext<'_>,
        body: &[u8],
    ) -> Result<Vec<u8>, TranslateError> {
        self.answer(ctx, body).map(|a| a.body)
    }

    /// A fresh translator for one 2xx streaming response.
    fn stream_translator(&self, ctx: &ResponseContext<'_>) -> Box<dyn StreamTranslator>;

    /// A non-2xx status and the provider's body → OpenAI error JSON keeping the
    /// provider's message (and type, where it maps).
    fn translate_error(&self, status: u32, body: &[u8]) -> Vec<u8>;

    /// True when the response needs translating at all (false for OpenAI-compatible
    /// upstreams, whose answers already are OpenAI's shape: zero cost).
    fn translates_response(&self) -> bool {
        true
    }
}

/// A place in the client's request for error messages (`messages[3].content`),
/// written out only when an error is: a request that translates formats no
/// paths (it used to build two strings per message).
pub struct Lazy<F>(F);

/// [`Lazy`] of a closure that writes the path.
pub fn lazy<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(write: F) -> Lazy<F> {
    Lazy(write)
}

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// A translated non-streaming answer: the client's `chat.completion` body and,
/// when tollgate wrote it, the usage and model it carries, so metering need not
/// parse the body it has just written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The body for the client.
    pub body: Vec<u8>,
    /// `(usage, model)` as written into `body`; `None` when `body` is the
    /// provider's own (metering reads it then).
    pub written: Option<(Option<Usage>, String)>,
}

impl Answer {
    /// A body tollgate did not write usage into (the provider's own, an error):
    /// metering reads whatever it carries.
    pub fn without_usage(body: Vec<u8>) -> Answer {
        Answer {
            body,
            written: None,
        }
    }
}

impl From<Completion> for Answer {
    fn from(c: Completion) -> Answer {
        let body = c.to_json();
        // The usage the client reads: OpenAI's object has no cache-creation field.
        let usage = c.usage.map(|u| Usage {
            cache_creation_tokens: 0,
            ..u
        });
        Answer {
            body,
            written: Some((usage, c.model)),
        }
    }
}

/// Per-stream translation state.
pub trait StreamTranslator {
    /// Feed one provider body chunk; append OpenAI SSE bytes for the client to `out`.
    /// `end_of_stream` is true on the last call (the chunk may be empty).
    fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool, out: &mut Vec<u8>);
}

/// Placeholder for a provider whose translator is not compiled in yet: requests get
/// a clear 500 naming the missing piece rather than being sent untranslated.
#[allow(dead_code)] // every kind is built today; kept for the next provider
struct NotBuilt(ProviderKind);

impl Translator for NotBuilt {
    fn name(&self) -> &'static str {
        self.0.as_str()
    }
    fn translate_request(
        &self,
        _ctx: &RequestContext<'_>,
        _body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        Err(TranslateError {
            status: 500,
            message: format!(
                "tollgate: provider kind `{}` is not available in this build",
                self.0.as_str()
            ),
        })
    }
    pass_through_responses!();
}

/// Passes stream bytes through unchanged.
pub struct PassStream;

impl StreamTranslator for PassStream {
    fn on_chunk(&mut self, chunk: &[u8], _end_of_stream: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(chunk);
    }
}

// ---------------------------------------------------------------------------
// Normalised OpenAI request
// ---------------------------------------------------------------------------

/// A Chat Completions request in a typed, normalised form: system/developer text
/// lifted out, string and array content unified, tool calls and results typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    /// Text of `system` and `developer` messages, in order.
    pub system: Vec<String>,
    /// Every other message, in order.
    pub messages: Vec<Message>,
    /// Function tools the model may call.
    pub tools: Vec<Tool>,
    /// `tool_choice`.
    pub tool_choice: ToolChoice,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `stop` (a string becomes one element).
    pub stop: Vec<String>,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `user` (an end-user id some providers accept as metadata).
    pub user: Option<String>,
    /// `parallel_tool_calls: false` was sent.
    pub parallel_tool_calls_disabled: bool,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `user`.
    User,
    /// `assistant`.
    Assistant,
    /// `tool` (a tool result; `tool_call_id` says for which call).
    Tool,
}

/// One non-system message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text and image parts, in order (empty for a tool-call-only assistant turn).
    pub content: Vec<Part>,
    /// Tool calls an assistant message made.
    pub tool_calls: Vec<ToolCall>,
    /// For `tool` messages: the call this answers.
    pub tool_call_id: Option<String>,
    /// For assistant messages: the provider's reasoning blocks the client sent back
    /// (`thinking_blocks`, LiteLLM's field: Anthropic `thinking` / `redacted_thinking`
    /// blocks with their signatures), as sent. Anthropic needs them to continue a
    /// tool-use turn with thinking on; other translators ignore them.
    pub thinking_blocks: Vec<Value>,
}

/// A content part.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// Text.
    Text(String),
    /// An image.
    Image(Image),
}

/// An image given by the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Image {
    /// A `data:<media_type>;base64,<data>` URL, split.
    Base64 {
        /// e.g. `image/png`.
        media_type: String,
        /// Base64 payload, as sent.
        data: String,
    },
    /// A remote URL.
    Url(String),
}

/// A tool call made by the assistant (in a request's history or a response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// Call id (`call_...`, `toolu_...`).
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments as JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// A function tool definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// Function name.
    pub name: String,
    /// Description, if given.
    pub description: Option<String>,
    /// JSON Schema of the arguments (`{"type":"object"}` when absent).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// Not sent: provider default.
    #[default]
    Unset,
    /// `"auto"`.
    Auto,
    /// `"none"`.
    None,
    /// `"required"`: must call some tool.
    Required,
    /// `{"type":"function","function":{"name":...}}`.
    Function(String),
}

impl ChatRequest {
    /// Read a Chat Completions body from the flat document the metering stage
    /// reads too (strings are taken as parsed, no JSON tree is built). Errors name
    /// the JSON path of what is wrong.
    pub fn from_node(v: Node<'_>) -> Result<ChatRequest, TranslateError> {
        if !v.is_object() {
            return Err(TranslateError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let mut r = ChatRequest::default();
        let msgs = v
            .get("messages")
            .and_then(Node::as_array)
            .ok_or_else(|| TranslateError::bad_request("`messages` must be an array"))?;
        for (i, m) in msgs.iter().enumerate() {
            let at = lazy(move |f| write!(f, "messages[{i}]"));
            let content_at = lazy(|f| write!(f, "{at}.content"));
            let role = m.get("role").and_then(Node::as_str).unwrap_or("");
            match role {
                "system" | "developer" => {
                    let parts = parts_of(m.get("content"), &content_at)?;
                    let mut text = String::new();
                    for p in parts {
                        match p {
                            Part::Text(t) => {
                                if !text.is_empty() {
                                    text.push('\n');
                                }
                                text.push_str(&t);
                            }
                            Part::Image(_) => {
                                return Err(TranslateError::bad_request(format!(
                                    "{at}.content: images are not allowed in {role} messages"
                                )))
                            }
                        }
                    }
                    r.system.push(text);
                }
                "user" | "assistant" | "tool" | "function" => {
                    let role = match role {
                        "user" => Role::User,
                        "assistant" => Role::Assistant,
                        _ => Role::Tool,
                    };
                    let content = parts_of(m.get("content"), &content_at)?;
                    let mut tool_calls = Vec::new();
                    if let Some(calls) = m.get("tool_calls").and_then(Node::as_array) {
                        for (j, c) in calls.iter().enumerate() {
                            let f = c.get("function");
                            let name = f.and_then(|f| f.get("name")).and_then(Node::as_str);
                            let Some(name) = name else {
                                return Err(TranslateError::bad_request(format!(
                                    "{at}.tool_calls[{j}].function.name is required"
                                )));
                            };
                            let arguments = f.and_then(|f| f.get("arguments"));
                            tool_calls.push(ToolCall {
                                id: str_of(c.get("id")),
                                name: name.to_string(),
                                arguments: match arguments.map(|a| (a, a.view())) {
                                    Some((_, View::String(s))) => s.to_string(),
                                    Some((_, View::Null)) | None => "{}".to_string(),
                                    Some((a, _)) => node_value(a).to_string(),
                                },
                            });
                        }
                    }
                    let tool_call_id = m
                        .get("tool_call_id")
                        .or_else(|| m.get("name").filter(|_| role == Role::Tool))
                        .and_then(Node::as_str)
                        .map(str::to_string);
                    if role == Role::Tool && tool_call_id.is_none() {
                        return Err(TranslateError::bad_request(format!(
                            "{at}.tool_call_id is required for tool messages"
                        )));
                    }
                    let thinking_blocks = match m.get("thinking_blocks").and_then(Node::as_array) {
                        Some(a) if role == Role::Assistant => a.iter().map(node_value).collect(),
                        _ => Vec::new(),
                    };
                    r.messages.push(Message {
                        role,
                        content,
                        tool_calls,
                        tool_call_id,
                        thinking_blocks,
                    });
                }
                other => {
                    return Err(TranslateError::bad_request(format!(
                        "{at}.role: unsupported role {other:?}"
                    )))
                }
            }
        }
        if let Some(tools) = v.get("tools").and_then(Node::as_array) {
            for (i, t) in tools.iter().enumerate() {
                let f = t.get("function");
                let name = f.and_then(|f| f.get("name")).and_then(Node::as_str);
                let Some(name) = name else {
                    return Err(TranslateError::bad_request(format!(
                        "tools[{i}].function.name is required"
                    )));
                };
                r.tools.push(Tool {
                    name: name.to_string(),
                    description: f
                        .and_then(|f| f.get("description"))
                        .and_then(Node::as_str)
                        .map(str::to_string),
                    parameters: f
                        .and_then(|f| f.get("parameters"))
                        .filter(|p| p.is_object())
                        .map(node_value)
                        .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
                });
            }
        }
        r.tool_choice = match v.get("tool_choice").map(|c| (c, c.view())) {
            None | Some((_, View::Null)) => ToolChoice::Unset,
            Some((_, View::String(s))) => match s {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(TranslateError::bad_request(format!(
                        "tool_choice: unsupported value {other:?}"
                    )))
                }
            },
            Some((c, _)) => match c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Node::as_str)
            {
                Some(n) => ToolChoice::Function(n.to_string()),
                None => {
                    return Err(TranslateError::bad_request(
                        "tool_choice.function.name is required",
                    ))
                }
            },
        };
        r.max_tokens = v
            .get("max_completion_tokens")
            .and_then(Node::as_u64)
            .or_else(|| v.get("max_tokens").and_then(Node::as_u64));
        r.temperature = v.get("temperature").and_then(node_f64);
        r.top_p = v.get("top_p").and_then(node_f64);
        match v.get("stop").map(|s| (s, s.view())) {
            Some((_, View::String(s))) => r.stop.push(s.to_string()),
            Some((_, View::Array(a))) => {
                r.stop = a
                    .iter()
                    .filter_map(Node::as_str)
                    .map(str::to_string)
                    .collect()
            }
            _ => {}
        }
        r.stream = v.get("stream").and_then(Node::as_bool).unwrap_or(false);
        r.include_usage = v
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Node::as_bool)
            .unwrap_or(false);
        r.user = v.get("user").and_then(Node::as_str).map(str::to_string);
        r.parallel_tool_calls_disabled =
            v.get("parallel_tool_calls").and_then(Node::as_bool) == Some(false);
        Ok(r)
    }
}

fn str_of(v: Option<Node<'_>>) -> String {
    v.and_then(Node::as_str).unwrap_or("").to_string()
}

/// A number as `f64` (serde_json's `as_f64` of it).
pub(crate) fn node_f64(n: Node<'_>) -> Option<f64> {
    n.raw_number()?.parse().ok()
}

/// A JSON tree of a node, for the few values translators pass on whole (tool
/// schemas, thinking blocks): built only for them, not for the whole body.
/// Objects keep the last of a repeated key, as serde_json does; numbers are read
/// by serde_json (the document accepts only numbers it reads).
pub fn node_value(n: Node<'_>) -> Value {
    match n.view() {
        View::Null => Value::Null,
        View::Bool(b) => Value::Bool(b),
        View::Number(raw) => serde_json::from_str(raw).unwrap_or(Value::Null),
        View::String(s) => Value::String(s.to_string()),
        View::Array(a) => Value::Array(a.iter().map(node_value).collect()),
        View::Object(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                o.insert(k.to_string(), node_value(v));
            }
            Value::Object(o)
        }
    }
}

/// Content (string, array of parts, or null) → parts.
fn parts_of(v: Option<Node<'_>>, at: &dyn fmt::Display) -> Result<Vec<Part>, TranslateError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    match v.view() {
        View::Null => Ok(Vec::new()),
        View::String(s) => Ok(vec![Part::Text(s.to_string())]),
        View::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, p) in a.iter().enumerate() {
                let ty = p.get("type").and_then(Node::as_str).unwrap_or("");
                match ty {
                    "text" | "input_text" | "output_text" | "refusal" => {
                        let key = if ty == "refusal" { "refusal" } else { "text" };
                        out.push(Part::Text(str_of(p.get(key))));
                    }
                    "image_url" => {
                        let url = match p.get("image_url").map(|u| (u, u.view())) {
                            Some((_, View::String(s))) => s,
                            Some((o, _)) => o.get("url").and_then(Node::as_str).unwrap_or(""),
                            None => "",
                        };
                        out.push(Part::Image(image_of(url, &lazy(|f| write!(f, "{at}[{i}]")))?));
                    }
                    other => {
                        return Err(TranslateError::bad_request(format!(
                            "{at}[{i}].type: content part {other:?} cannot be translated for this provider"
                        )))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(TranslateError::bad_request(format!(
            "{at}: expected a string or an array of content parts"
        ))),
    }
}

/// `data:image/png;base64,...` → [`Image::Base64`]; `http(s)://` → [`Image::Url`].
pub fn image_of(url: &str, at: &dyn fmt::Display) -> Result<Image, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| {
            TranslateError::bad_request(format!("{at}.image_url.url: malformed data URL"))
        })?;
        let Some(media_type) = meta.strip_suffix(";base64") else {
            return Err(TranslateError::bad_request(format!(
                "{at}.image_url.url: only base64 data URLs are supported"
            )));
        };
        return Ok(Image::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Image::Url(url.to_string()));
    }
    Err(TranslateError::bad_request(format!(
        "{at}.image_url.url: expected an http(s) or data: URL"
    )))
}

// ---------------------------------------------------------------------------
// OpenAI output builders
// ---------------------------------------------------------------------------

/// OpenAI `finish_reason` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Natural end or stop sequence.
    Stop,
    /// Output token cap reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Output was filtered.
    ContentFilter,
}

impl FinishReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// OpenAI `usage` object from a [`Usage`]: `prompt_tokens` already includes cached
/// and cache-creation tokens; cached reads are broken out in
/// `prompt_tokens_details.cached_tokens`.
pub fn usage_json(u: &Usage) -> Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total(),
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// A non-streaming answer, assembled by a translator and rendered as OpenAI's
/// `chat.completion`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    /// Completion id.
    pub id: String,
    /// Model that answered.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    /// Assistant text (`None` renders `content: null`, e.g. tool-call-only turns).
    pub content: Option<String>,
    /// Tool calls made.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped.
    pub finish_reason: Option<FinishReason>,
    /// Usage in OpenAI terms.
    pub usage: Option<Usage>,
    /// Reasoning text (`message.reasoning_content`, as LiteLLM, vLLM and DeepSeek
    /// name it), e.g. Anthropic `thinking` blocks joined.
    pub reasoning_content: Option<String>,
    /// Further members of `message`, already rendered: each `,"key":<json>`
    /// (`thinking_blocks`, `annotations`, `provider_specific_fields`).
    pub message_extra: String,
}

impl Completion {
    /// Render as `chat.completion` JSON bytes (written directly, no JSON tree).
    pub fn to_json(&self) -> Vec<u8> {
        let mut o = String::with_capacity(
            320 + self.content.as_ref().map_or(0, String::len)
                + self
                    .tool_calls
                    .iter()
                    .map(|c| c.arguments.len() + 96)
                    .sum::<usize>(),
        );
        o.push_str("{\"id\":");
        push_json_str(&mut o, &self.id);
        let _ = write!(
            o,
            ",\"object\":\"chat.completion\",\"created\":{},\"model\":",
            self.created
        );
        push_json_str(&mut o, &self.model);
        o.push_str(",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
        match &self.content {
            Some(c) => push_json_str(&mut o, c),
            None => o.push_str("null"),
        }
        if let Some(r) = &self.reasoning_content {
            o.push_str(",\"reasoning_content\":");
            push_json_str(&mut o, r);
        }
        o.push_str(&self.message_extra);
        if !self.tool_calls.is_empty() {
            o.push_str(",\"tool_calls\":[");
            for (i, c) in self.tool_calls.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str("{\"id\":");
                push_json_str(&mut o, &c.id);
                o.push_str(",\"type\":\"function\",\"function\":{\"name\":");
                push_json_str(&mut o, &c.name);
                o.push_str(",\"arguments\":");
                push_json_str(&mut o, &c.arguments);
                o.push_str("}}");
            }
            o.push(']');
        }
        o.push_str(",\"refusal\":null},\"logprobs\":null,\"finish_reason\":");
        match self.finish_reason {
            Some(f) => {
                o.push('"');
                o.push_str(f.as_str());
                o.push('"');
            }
            None => o.push_str("null"),
        }
        o.push_str("}]");
        if let Some(u) = &self.usage {
            o.push_str(",\"usage\":");
            push_usage(&mut o, u);
        }
        o.push('}');
        o.into_bytes()
    }
}

/// Append the OpenAI `usage` object for `u` (the text form of [`usage_json`]).
pub fn push_usage(o: &mut String, u: &Usage) {
    let _ = write!(
        o,
        "{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}},\"completion_tokens_details\":{{\"reasoning_tokens\":{}}}}}",
        u.prompt_tokens,
        u.completion_tokens,
        u.total(),
        u.cached_tokens,
        u.reasoning_tokens
    );
}

/// Writes OpenAI `chat.completion.chunk` SSE events. Holds the id/model/created
/// every chunk repeats, pre-rendered once per stream.
#[derive(Clone, Debug)]
pub struct ChunkWriter {
    /// `{"id":"..","object":"chat.completion.chunk","created":N,"model":".."` without
    /// the closing brace.
    head: String,
}

impl ChunkWriter {
    /// A writer for one stream.
    pub fn new(id: &str, model: &str, created: u64) -> ChunkWriter {
        let mut head = String::with_capacity(96 + id.len() + model.len());
        head.push_str("{\"id\":");
        push_json_str(&mut head, id);
        let _ = write!(
            head,
            ",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":"
        );
        push_json_str(&mut head, model);
        ChunkWriter { head }
    }

    /// Replace id and model (e.g. once Anthropic's `message_start` names them).
    pub fn reset(&mut self, id: &str, model: &str, created: u64) {
        *self = ChunkWriter::new(id, model, created);
    }

    fn open(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(self.head.as_bytes());
    }

    fn delta(&self, out: &mut Vec<u8>, delta_body: &str, finish: Option<FinishReason>) {
        self.open(out);
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{");
        out.extend_from_slice(delta_body.as_bytes());
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                out.push(b'"');
                out.extend_from_slice(f.as_str().as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// The first chunk: `delta: {role: assistant, content: ""}`.
    pub fn role(&self, out: &mut Vec<u8>) {
        self.delta(out, "\"role\":\"assistant\",\"content\":\"\"", None);
    }

    /// A text delta.
    pub fn content(&self, out: &mut Vec<u8>, text: &str) {
        let mut d = String::with_capacity(text.len() + 16);
        d.push_str("\"content\":");
        push_json_str(&mut d, text);
        self.delta(out, &d, None);
    }

    /// Start of tool call `index` (id and name, empty arguments).
    pub fn tool_call_start(&self, out: &mut Vec<u8>, index: usize, id: &str, name: &str) {
        let mut d = String::with_capacity(96 + id.len() + name.len());
        let _ = write!(d, "\"tool_calls\":[{{\"index\":{index},\"id\":");
        push_json_str(&mut d, id);
        d.push_str(",\"type\":\"function\",\"function\":{\"name\":");
        push_json_str(&mut d, name);
        d.push_str(",\"arguments\":\"\"}}]");
        self.delta(out, &d, None);
    }

    /// A reasoning delta (Anthropic `thinking_delta`): `reasoning_content`, plus the
    /// same text as a `thinking_blocks` fragment so a client that concatenates
    /// fragments (LiteLLM's stream shape) rebuilds the block to send back.
    pub fn reasoning(&self, out: &mut Vec<u8>, text: &str) {
        let mut d = String::with_capacity(2 * text.len() + 96);
        d.push_str("\"reasoning_content\":");
        push_json_str(&mut d, text);
        d.push_str(",\"thinking_blocks\":[{\"type\":\"thinking\",\"thinking\":");
        push_json_str(&mut d, text);
        d.push_str(",\"signature\":null}]");
        self.delta(out, &d, None);
    }

    /// The signature closing a thinking block (Anthropic `signature_delta`), as a
    /// `thinking_blocks` fragment with empty text.
    pub fn thinking_signature(&self, out: &mut Vec<u8>, signature: &str) {
        let mut d = String::with_capacity(signature.len() + 96);
        d.push_str("\"thinking_blocks\":[{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":");
        push_json_str(&mut d, signature);
        d.push_str("}]");
        self.delta(out, &d, None);
    }

    /// A redacted thinking block (Anthropic `redacted_thinking`): opaque, passed on
    /// whole so the client can send it back.
    pub fn redacted_thinking(&self, out: &mut Vec<u8>, data: &str) {
        let mut d = String::with_capacity(data.len() + 80);
        d.push_str("\"thinking_blocks\":[{\"type\":\"redacted_thinking\",\"data\":");
        push_json_str(&mut d, data);
        d.push_str("}]");
        self.delta(out, &d, None);
    }

    /// A provider-specific delta member with no OpenAI equivalent, under
    /// `provider_specific_fields` (LiteLLM's place for them), e.g. an Anthropic
    /// `citation`. `value` is JSON text.
    pub fn provider_field(&self, out: &mut Vec<u8>, key: &str, value: &str) {
        let mut d = String::with_capacity(value.len() + key.len() + 40);
        d.push_str("\"provider_specific_fields\":{");
        push_json_str(&mut d, key);
        d.push(':');
        d.push_str(value);
        d.push('}');
        self.delta(out, &d, None);
    }

    /// A fragment of tool call `index`'s JSON arguments.
    pub fn tool_call_args(&self, out: &mut Vec<u8>, index: usize, fragment: &str) {
        let mut d = String::with_capacity(fragment.len() + 64);
        let _ = write!(
            d,
            "\"tool_calls\":[{{\"index\":{index},\"function\":{{\"arguments\":"
        );
        push_json_str(&mut d, fragment);
        d.push_str("}}]");
        self.delta(out, &d, None);
    }

    /// The closing chunk with an empty delta and the finish reason.
    pub fn finish(&self, out: &mut Vec<u8>, reason: FinishReason) {
        self.delta(out, "", Some(reason));
    }

    /// The usage chunk (`choices: []`), OpenAI's `include_usage` shape.
    pub fn usage(&self, out: &mut Vec<u8>, u: &Usage) {
        self.open(out);
        let mut s = String::with_capacity(160);
        s.push_str(",\"choices\":[],\"usage\":");
        push_usage(&mut s, u);
        s.push_str("}\n\n");
        out.extend_from_slice(s.as_bytes());
    }

    /// A mid-stream error event, as OpenAI sends one (the `openai` SDK raises
    /// `APIError` with this message).
    pub fn error(&self, out: &mut Vec<u8>, message: &str, error_type: &str) {
        out.extend_from_slice(b"data: ");
        let v = serde_json::json!({"error": {"message": message, "type": error_type,
            "param": null, "code": null}});
        let _ = serde_json::to_writer(&mut *out, &v);
        out.extend_from_slice(b"\n\n");
    }

    /// `data: [DONE]`.
    pub fn done(out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// Append `s` as a JSON string literal. Runs without escapes are copied whole.
pub fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    // Most text needs no escape: find the first byte that may, eight at a time.
    let clean = crate::bytescan::skip_plain(s.as_bytes(), 0);
    let mut run = 0;
    for (i, b) in s.bytes().enumerate().skip(clean) {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Escapes are ASCII, so `run..i` ends on a character boundary.
        out.push_str(s.get(run..i).unwrap_or(""));
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        run = i + 1;
    }
    out.push_str(s.get(run..).unwrap_or(""));
    out.push('"');
}

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub fn openai_error_body(
    message: &str,
    error_type: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Vec<u8> {
    let v = serde_json::json!({"error": {"message": message, "type": error_type,
        "param": param, "code": code}});
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The OpenAI error `type` conventionally paired with an HTTP status, for providers
/// whose own type does not map.
pub fn openai_error_type_for_status(status: u32) -> &'static str {
    match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

/// Fallback error translation: the provider's `message` wherever it sits
/// (`error.message`, `message`, `Message`), or the raw body text, with a type from the status.
pub fn generic_error(status: u32, body: &[u8]) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let t: String = text.chars().take(2000).collect();
            if t.trim().is_empty() {
                format!("upstream provider returned HTTP {status}")
            } else {
                t
            }
        });
    openai_error_body(&msg, openai_error_type_for_status(status), None, None)
}

/// Test check: the usage and model an [`Answer`] says it wrote are what metering
/// would read back from its body (and it wrote them, with usage, at all).
#[cfg(test)]
pub(crate) fn written_as_read(a: &Answer) -> Vec<u8> {
    let (usage, model) = crate::usage::usage_and_model_from_response_json(
        crate::dialect::Api::ChatCompletions,
        &a.body,
    );
    assert!(usage.is_some(), "the answer carries usage");
    assert_eq!(a.written, Some((usage, model.unwrap_or_default())));
    a.body.clone()
}

#[cfg(test)]
mod tests;
