//! Google Gemini `generateContent` and `streamGenerateContent?alt=sse`.
//!
//! Request: `POST {base}/models/{model}:generateContent` (base `/v1beta` unless the
//! endpoint names another), key in `x-goog-api-key`, body `{contents, systemInstruction,
//! tools: [{functionDeclarations}], toolConfig, generationConfig}`. Roles are `user`
//! and `model`; tool results are `functionResponse` parts in a `user` turn, named by
//! the function (Gemini matches results by name, so the name is looked up from the
//! assistant turn that made the call).
//!
//! Response: `candidates[0].content.parts` (`text`, `functionCall`; `thought` parts
//! are skipped), `finishReason`, `usageMetadata`. In OpenAI terms `prompt_tokens` =
//! `promptTokenCount` (which already includes `cachedContentTokenCount`) +
//! `toolUsePromptTokenCount`, and `completion_tokens` = `candidatesTokenCount` +
//! `thoughtsTokenCount` (reasoning, reported apart by Gemini, inside completion
//! tokens by OpenAI).
//!
//! Stream: SSE (`data: {GenerateContentResponse}` separated by `\r\n\r\n`), each event
//! a partial response; the last carries `finishReason` and the final usage.
//!
//! API reference: <https://ai.google.dev/api/generate-content>,
//! <https://ai.google.dev/gemini-api/docs/function-calling>.

use std::collections::HashMap;

use crate::dialect::doc::Node;
use serde_json::{json, Map, Value};

use super::request::{
    push_turn, refuse_n, sampling_config, system_text_blocks, tool_call_args, tool_result_text,
};
use super::{
    openai_error_body, openai_error_type_for_status, Answer, ChatRequest, ChunkWriter, Completion,
    FinishReason, Image, Part, RequestBody, RequestContext, ResponseContext, Role,
    StreamTranslator, ToolCall, ToolChoice, TranslateError, Translator, UpstreamRequest,
};
use crate::dialect::sse::SseFramer;
use crate::usage::Usage;

/// The Gemini translator.
pub struct Gemini;

impl Translator for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn translate_request(
        &self,
        ctx: &RequestContext<'_>,
        body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let p = ctx.provider;
        if ctx.model.is_empty() {
            return Err(TranslateError::bad_request(
                "`model` is required: Gemini takes the model in the path",
            ));
        }
        if ctx
            .model
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
        {
            return Err(TranslateError::bad_request(format!(
                "model: {:?} is not a Gemini model name (letters, digits, '-', '.', '_')",
                ctx.model
            )));
        }
        refuse_n(body.root, "Gemini")?;
        let chat = ChatRequest::from_node(body.root)?;
        let mut v = gemini_body(&chat)?;
        extra_generation_config(body.root, &mut v)?;
        let new_body = serde_json::to_vec(&v).map_err(|e| TranslateError {
            status: 500,
            message: format!("tollgate: could not serialise the Gemini body: {e}"),
        })?;
        let base = p.endpoint.base_path.as_deref().unwrap_or("/v1beta");
        let path = if ctx.streaming {
            format!("{base}/models/{}:streamGenerateContent?alt=sse", ctx.model)
        } else {
            format!("{base}/models/{}:generateContent", ctx.model)
        };
        let mut set_headers = vec![("content-type".to_string(), "application/json".to_string())];
        let mut remove_headers = vec!["x-api-key".to_string(), "api-key".to_string()];
        if let Some(key) = &p.api_key {
            set_headers.push(("x-goog-api-key".to_string(), key.value().to_string()));
            remove_headers.push("authorization".to_string());
        }
        Ok(UpstreamRequest {
            path,
            authority: Some(
                p.endpoint
                    .authority
                    .clone()
                    .unwrap_or_else(|| "generativelanguage.googleapis.com".to_string()),
            ),
            set_headers,
            remove_headers,
            body: Some(new_body),
        })
    }

    fn answer(&self, ctx: &ResponseContext<'_>, body: &[u8]) -> Result<Answer, TranslateError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError {
            status: 502,
            message: format!("tollgate: Gemini answered with a body that is not JSON: {e}"),
        })?;
        if v.get("candidates").is_none() && v.get("promptFeedback").is_none() {
            return Err(TranslateError {
                status: 502,
                message: "tollgate: Gemini answered without candidates or promptFeedback".into(),
            });
        }
        let mut text: Option<String> = None;
        let mut tool_calls = Vec::new();
        let cand = v.pointer("/candidates/0");
        for part in cand
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                text.get_or_insert_with(String::new).push_str(t);
            } else if let Some(fc) = part.get("functionCall") {
                let idx = tool_calls.len();
                tool_calls.push(tool_call_of(part, fc, idx));
            }
        }
        let reason = match cand
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            Some(r) => finish_reason(r, !tool_calls.is_empty()),
            // No candidate at all: the prompt was blocked (`promptFeedback.blockReason`).
            None if cand.is_none() => FinishReason::ContentFilter,
            None => finish_reason("STOP", !tool_calls.is_empty()),
        };
        let c = Completion {
            id: response_id(&v, ctx.id),
            model: v
                .get("modelVersion")
                .and_then(Value::as_str)
                .unwrap_or(ctx.model)
                .to_string(),
            created: ctx.created,
            content: text,
            tool_calls,
            finish_reason: Some(reason),
            usage: v.get("usageMetadata").and_then(usage_of),
            ..Completion::default()
        };
        Ok(Answer::from(c))
    }

    fn stream_translator(&self, ctx: &ResponseContext<'_>) -> Box<dyn StreamTranslator> {
        Box::new(GeminiStream {
            framer: SseFramer::default(),
            st: StreamState {
                w: ChunkWriter::new(ctx.id, ctx.model, ctx.created),
                id_model_set: false,
                fallback_id: ctx.id.to_string(),
                fallback_model: ctx.model.to_string(),
                created: ctx.created,
                started: false,
                tools: 0,
                finish: None,
                usage: None,
                closed: false,
            },
        })
    }

    fn translate_error(&self, status: u32, body: &[u8]) -> Vec<u8> {
        error_body(status, body)
    }
}

/// Gemini error JSON (`{"error": {"code", "message", "status"}}`) → OpenAI error,
/// keeping the message and passing Gemini's `status` (e.g. `INVALID_ARGUMENT`) as
/// `code`.
pub fn error_body(status: u32, body: &[u8]) -> Vec<u8> {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let err = v.as_ref().and_then(|v| v.get("error"));
    let msg = err.and_then(|e| e.get("message")).and_then(Value::as_str);
    match msg {
        Some(m) => openai_error_body(
            m,
            openai_error_type_for_status(status),
            None,
            err.and_then(|e| e.get("status")).and_then(Value::as_str),
        ),
        None => super::generic_error(status, body),
    }
}

/// OpenAI sampling and output-format options that Gemini's `generationConfig`
/// also has: `seed`, `presence_penalty`, `frequency_penalty`, and `response_format`
/// (`json_object` → `responseMimeType: application/json`; `json_schema` → plus
/// `responseJsonSchema`).
fn extra_generation_config(openai: Node<'_>, body: &mut Value) -> Result<(), TranslateError> {
    let mut extra = Map::new();
    if let Some(s) = openai
        .get("seed")
        .and_then(Node::raw_number)
        .and_then(|n| n.parse::<i64>().ok())
    {
        extra.insert("seed".into(), s.into());
    }
    for (from, to) in [
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(x) = openai.get(from).and_then(super::node_f64) {
            extra.insert(to.into(), x.into());
        }
    }
    match openai.get("response_format") {
        None => {}
        Some(rf) if rf.is_null() => {}
        Some(rf) => match rf.get("type").and_then(Node::as_str) {
            Some("text") => {}
            Some("json_object") => {
                extra.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                let schema = rf.get("json_schema").and_then(|j| j.get("schema"));
                let Some(schema) = schema.filter(|s| s.is_object()) else {
                    return Err(TranslateError::bad_request(
                        "response_format.json_schema.schema: expected a JSON Schema object",
                    ));
                };
                extra.insert("responseMimeType".into(), "application/json".into());
                extra.insert("responseJsonSchema".into(), super::node_value(schema));
            }
            other => {
                return Err(TranslateError::bad_request(format!(
                    "response_format.type: {other:?} cannot be translated for Gemini"
                )))
            }
        },
    }
    if extra.is_empty() {
        return Ok(());
    }
    if let Some(o) = body.as_object_mut() {
        let g = o
            .entry("generationConfig")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(g) = g.as_object_mut() {
            g.extend(extra);
        }
    }
    Ok(())
}

fn response_id(v: &Value, fallback: &str) -> String {
    match v.get("responseId").and_then(Value::as_str) {
        Some(r) if !r.is_empty() => format!("chatcmpl-{r}"),
        _ => fallback.to_string(),
    }
}

/// Separates a tool-call id from the Gemini thought signature carried in it.
///
/// Gemini 3 rejects a function-calling turn whose history lacks the
/// `thoughtSignature` it returned next to the `functionCall` (a 400 "missing a
/// thought_signature"). OpenAI clients echo tool-call ids back verbatim, so the
/// signature rides in the id (`call_0.thought.<signature>`) and goes back as a
/// part-level `thoughtSignature` on the next request.
const THOUGHT_MARK: &str = ".thought.";

/// A `functionCall` part → an OpenAI tool call. Gemini ids are optional; without
/// one the call gets `call_<n>` (n counts calls in the answer), which the client
/// echoes back as `tool_call_id` and [`gemini_body`] resolves to the name again.
fn tool_call_of(part: &Value, fc: &Value, idx: usize) -> ToolCall {
    let mut id = match fc.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("call_{idx}"),
    };
    if let Some(sig) = part
        .get("thoughtSignature")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        id.push_str(THOUGHT_MARK);
        id.push_str(sig);
    }
    ToolCall {
        id,
        name: fc
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        arguments: fc
            .get("args")
            .map_or_else(|| "{}".to_string(), Value::to_string),
    }
}

/// Gemini `finishReason` → OpenAI `finish_reason` (`STOP` with function calls is
/// `tool_calls`, as OpenAI reports it).
pub fn finish_reason(r: &str, called_tools: bool) -> FinishReason {
    match r {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => FinishReason::ContentFilter,
        _ if called_tools => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// `usageMetadata` → [`Usage`] in OpenAI terms (see the module docs).
pub fn usage_of(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Some(Usage {
        prompt_tokens: n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
        completion_tokens: n("candidatesTokenCount").saturating_add(thoughts),
        cached_tokens: n("cachedContentTokenCount"),
        cache_creation_tokens: 0,
        reasoning_tokens: thoughts,
    })
}

fn parts_of(content: &[Part], at: &dyn std::fmt::Display) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::with_capacity(content.len());
    for p in content {
        match p {
            Part::Text(t) if t.is_empty() => {}
            Part::Text(t) => out.push(json!({ "text": t })),
            Part::Image(Image::Base64 { media_type, data }) => {
                out.push(json!({"inlineData": {"mimeType": media_type, "data": data}}))
            }
            Part::Image(Image::Url(_)) => {
                return Err(TranslateError::bad_request(format!(
                    "{at}: Gemini takes images inline; send a data:image/...;base64 URL instead of a remote URL"
                )))
            }
        }
    }
    Ok(out)
}

/// The Gemini request body for a normalised chat request.
pub fn gemini_body(r: &ChatRequest) -> Result<Value, TranslateError> {
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::with_capacity(r.messages.len());
    // tool_call_id → function name, from the assistant turns seen so far.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in r.messages.iter().enumerate() {
        let at = super::lazy(move |f| write!(f, "messages (non-system #{i})"));
        let (role, parts) = match m.role {
            Role::User => ("user", parts_of(&m.content, &at)?),
            Role::Assistant => {
                let mut parts = parts_of(&m.content, &at)?;
                for c in &m.tool_calls {
                    call_names.insert(c.id.as_str(), c.name.as_str());
                    let args = tool_call_args(c, &at)?;
                    let mut part = json!({"functionCall": {"name": c.name, "args": args}});
                    if let Some((_, sig)) = c.id.split_once(THOUGHT_MARK) {
                        if let Some(o) = part.as_object_mut() {
                            o.insert("thoughtSignature".into(), sig.into());
                        }
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let Some(name) = call_names.get(id) else {
                    return Err(TranslateError::bad_request(format!(
                        "{at}: tool_call_id {id:?} answers no tool call of an earlier assistant message (Gemini needs the function name)"
                    )));
                };
                let text = tool_result_text(&m.content, &at, "Gemini")?;
                // `response` must be an object: a JSON object result goes as is,
                // anything else is wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    Ok(other) => json!({ "result": other }),
                    Err(_) => json!({ "result": text }),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        push_turn(&mut contents, role, parts);
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    let system = system_text_blocks(r);
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if !r.tools.is_empty() {
        let decls: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut d = Map::new();
                d.insert("name".into(), t.name.clone().into());
                if let Some(desc) = t.description.as_ref().filter(|d| !d.is_empty()) {
                    d.insert("description".into(), desc.clone().into());
                }
                d.insert("parameters".into(), t.parameters.clone());
                Value::Object(d)
            })
            .collect();
        body.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
        let cfg = match &r.tool_choice {
            ToolChoice::Unset => None,
            ToolChoice::Auto => Some(json!({"mode": "AUTO"})),
            ToolChoice::None => Some(json!({"mode": "NONE"})),
            ToolChoice::Required => Some(json!({"mode": "ANY"})),
            ToolChoice::Function(n) => Some(json!({"mode": "ANY", "allowedFunctionNames": [n]})),
        };
        if let Some(c) = cfg {
            body.insert("toolConfig".into(), json!({ "functionCallingConfig": c }));
        }
    }
    let g = sampling_config(r, "maxOutputTokens");
    if !g.is_empty() {
        body.insert("generationConfig".into(), Value::Object(g));
    }
    Ok(Value::Object(body))
}

/// Translation state of one `streamGenerateContent?alt=sse` response.
struct GeminiStream {
    framer: SseFramer,
    st: StreamState,
}

struct StreamState {
    w: ChunkWriter,
    /// The writer was re-made with the stream's `responseId` / `modelVersion`.
    id_model_set: bool,
    fallback_id: String,
    fallback_model: String,
    created: u64,
    started: bool,
    /// Tool calls emitted so far (the next one's OpenAI index).
    tools: usize,
    /// `finishReason` seen.
    finish: Option<FinishReason>,
    /// Latest `usageMetadata` (each event repeats the running totals).
    usage: Option<Usage>,
    /// `[DONE]` or an error was sent.
    closed: bool,
}

impl StreamTranslator for GeminiStream {
    fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool, out: &mut Vec<u8>) {
        if self.st.closed {
            return;
        }
        let st = &mut self.st;
        self.framer.push(chunk, |e| {
            if let Some(d) = e.data() {
                st.on_data(d, false, out);
            }
        });
        if self.framer.gave_up() && !self.st.closed {
            self.st.closed = true;
            self.st.w.error(
                out,
                "tollgate: a Gemini stream event exceeded the 1 MiB limit",
                "server_error",
            );
            return;
        }
        if end_of_stream {
            let st = &mut self.st;
            self.framer.finish(|e| {
                if let Some(d) = e.data() {
                    st.on_data(d, !e.is_complete(), out);
                }
            });
            // Gemini has no terminal event: a stream whose last response carried a
            // finishReason is complete; one cut before it ends without [DONE].
            if !self.st.closed && self.st.finish.is_some() {
                if let Some(u) = self.st.usage.take() {
                    self.st.w.usage(out, &u);
                }
                ChunkWriter::done(out);
                self.st.closed = true;
            }
        }
    }
}

impl StreamState {
    /// One `data:` payload. `cut_tail` marks the unterminated end of a stream that
    /// was cut: half a JSON object there is the cut, not a provider error.
    fn on_data(&mut self, data: &[u8], cut_tail: bool, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            if cut_tail {
                return;
            }
            self.w.error(
                out,
                "tollgate: Gemini sent a stream event that is not JSON",
                "server_error",
            );
            self.closed = true;
            return;
        };
        if let Some(err) = v.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("Gemini stream error");
            let code = err.get("code").and_then(Value::as_u64).unwrap_or(500);
            let ty = openai_error_type_for_status(u32::try_from(code).unwrap_or(500));
            self.w.error(out, msg, ty);
            self.closed = true;
            return;
        }
        if !self.id_model_set {
            self.id_model_set = true;
            let id = response_id(&v, &self.fallback_id);
            let model = v
                .get("modelVersion")
                .and_then(Value::as_str)
                .unwrap_or(&self.fallback_model)
                .to_string();
            self.w.reset(&id, &model, self.created);
        }
        if !self.started {
            self.w.role(out);
            self.started = true;
        }
        let cand = v.pointer("/candidates/0");
        for part in cand
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                if !t.is_empty() {
                    self.w.content(out, t);
                }
            } else if let Some(fc) = part.get("functionCall") {
                let c = tool_call_of(part, fc, self.tools);
                self.w.tool_call_start(out, self.tools, &c.id, &c.name);
                self.w.tool_call_args(out, self.tools, &c.arguments);
                self.tools = self.tools.saturating_add(1);
            }
        }
        if let Some(u) = v.get("usageMetadata").and_then(usage_of) {
            self.usage = Some(u);
        }
        let reason = cand
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
            .map(|r| finish_reason(r, self.tools > 0))
            .or_else(|| {
                // A blocked prompt: promptFeedback.blockReason and no candidate.
                v.pointer("/promptFeedback/blockReason")
                    .filter(|_| cand.is_none())
                    .map(|_| FinishReason::ContentFilter)
            });
        if let (Some(r), None) = (reason, self.finish) {
            self.w.finish(out, r);
            self.finish = Some(r);
        }
    }
}

#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
