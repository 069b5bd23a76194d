//! AWS Bedrock Converse and ConverseStream: OpenAI chat requests translated to
//! Converse, signed with SigV4; answers and eventstream frames translated back.
//!
//! Request: `POST /model/{modelId}/converse` (or `/converse-stream`), the model id
//! percent-encoded (`anthropic.claude-3-haiku-20240307-v1:0` →
//! `...-v1%3A0`; inference-profile ARNs have `/` and `:`), body
//! `{messages, system, inferenceConfig, toolConfig}`, signed for service `bedrock`.
//! Response: `output.message.content` blocks, `stopReason`, `usage`
//! (`inputTokens` excludes cache reads and writes, so OpenAI's `prompt_tokens` is
//! their sum). Stream: `application/vnd.amazon.eventstream` frames
//! ([`eventstream`]) carrying `messageStart`, `contentBlockStart`,
//! `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata` or an
//! exception ([`stream`]).
//!
//! API reference: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html>,
//! <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html>.

pub mod eventstream;
pub mod sigv4;
pub mod stream;

use serde_json::{json, Map, Value};

use super::request::{
    push_turn, refuse_n, sampling_config, system_text_blocks, tool_call_args, tool_result_text,
};
use super::{
    generic_error, Answer, ChatRequest, Completion, FinishReason, Image, Part, RequestBody,
    RequestContext, ResponseContext, Role, StreamTranslator, ToolCall, ToolChoice, TranslateError,
    Translator, UpstreamRequest,
};
use crate::usage::Usage;

/// The Bedrock Converse translator.
pub struct Bedrock;

/// SigV4 service name of `bedrock-runtime`.
const SIGNING_SERVICE: &str = "bedrock";

impl Translator for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn translate_request(
        &self,
        ctx: &RequestContext<'_>,
        body: &RequestBody<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let p = ctx.provider;
        if ctx.model.is_empty() {
            return Err(TranslateError::bad_request(
                "`model` is required: Bedrock takes the model id in the path",
            ));
        }
        if ctx.now_unix_ms == 0 {
            return Err(TranslateError {
                status: 500,
                message: "tollgate: the host gave no wall clock, so the Bedrock request cannot be SigV4-signed".into(),
            });
        }
        refuse_n(body.root, "Bedrock")?;
        let chat = ChatRequest::from_node(body.root)?;
        let converse = converse_body(&chat)?;
        let new_body = serde_json::to_vec(&converse).map_err(|e| TranslateError {
            status: 500,
            message: format!("tollgate: could not serialise the Converse body: {e}"),
        })?;

        let host = match &p.endpoint.authority {
            Some(a) => a.clone(),
            None => format!("bedrock-runtime.{}.amazonaws.com", p.aws.region),
        };
        let mut path = String::with_capacity(64 + ctx.model.len());
        path.push_str(p.endpoint.base_path.as_deref().unwrap_or(""));
        path.push_str("/model/");
        sigv4::uri_encode(&mut path, ctx.model, false);
        path.push_str(if ctx.streaming {
            "/converse-stream"
        } else {
            "/converse"
        });

        let (Some(akid), Some(secret)) = (&p.aws.access_key_id, &p.aws.secret_access_key) else {
            return Err(TranslateError {
                status: 500,
                message:
                    "tollgate: bedrock provider has no aws.access_key_id / aws.secret_access_key"
                        .into(),
            });
        };
        let session_token = p.aws.session_token.as_ref().map(|s| s.value());
        let signed_extra = [("content-type", "application/json")];
        let signed = sigv4::sign(
            &sigv4::Request {
                method: "POST",
                host: &host,
                path: &path,
                query: &[],
                headers: &signed_extra,
                payload: &new_body,
                sign_content_sha256: true,
            },
            &sigv4::Credentials {
                access_key_id: akid.value(),
                secret_access_key: secret.value(),
                session_token,
            },
            &sigv4::Scope {
                region: &p.aws.region,
                service: SIGNING_SERVICE,
                unix_secs: ctx.now_unix_ms / 1000,
            },
        );
        let mut set_headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-amz-content-sha256".to_string(), signed.payload_sha256),
            ("x-amz-date".to_string(), signed.amz_date),
            ("authorization".to_string(), signed.authorization),
        ];
        if let Some(t) = session_token {
            set_headers.push(("x-amz-security-token".to_string(), t.to_string()));
        }
        set_headers.push((
            "accept".to_string(),
            if ctx.streaming {
                "application/vnd.amazon.eventstream"
            } else {
                "application/json"
            }
            .to_string(),
        ));
        Ok(UpstreamRequest {
            path,
            authority: Some(host),
            set_headers,
            remove_headers: vec!["x-api-key".into(), "api-key".into()],
            body: Some(new_body),
        })
    }

    fn answer(&self, ctx: &ResponseContext<'_>, body: &[u8]) -> Result<Answer, TranslateError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| bad_upstream(&e.to_string()))?;
        let content = v
            .pointer("/output/message/content")
            .and_then(Value::as_array)
            .ok_or_else(|| bad_upstream("no output.message.content"))?;
        let mut text: Option<String> = None;
        let mut tool_calls = Vec::new();
        for block in content {
            if let Some(t) = block.get("text").and_then(Value::as_str) {
                text.get_or_insert_with(String::new).push_str(t);
            } else if let Some(tu) = block.get("toolUse") {
                tool_calls.push(ToolCall {
                    id: tu
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    name: tu
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    arguments: tu
                        .get("input")
                        .map_or_else(|| "{}".to_string(), Value::to_string),
                });
            }
        }
        let c = Completion {
            id: ctx.id.to_string(),
            model: ctx.model.to_string(),
            created: ctx.created,
            content: text,
            tool_calls,
            finish_reason: Some(finish_reason(
                v.get("stopReason").and_then(Value::as_str).unwrap_or(""),
            )),
            usage: v.get("usage").and_then(usage_of),
            ..Completion::default()
        };
        Ok(Answer::from(c))
    }

    fn stream_translator(&self, ctx: &ResponseContext<'_>) -> Box<dyn StreamTranslator> {
        Box::new(stream::ConverseStream::new(ctx))
    }

    fn translate_error(&self, status: u32, body: &[u8]) -> Vec<u8> {
        // Bedrock errors are `{"message": "..."}` (the type is in the
        // `x-amzn-errortype` header); the status carries the kind.
        generic_error(status, body)
    }
}

fn bad_upstream(why: &str) -> TranslateError {
    TranslateError {
        status: 502,
        message: format!("tollgate: Bedrock answered with an unexpected body: {why}"),
    }
}

/// Converse `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> FinishReason {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Converse `usage` → [`Usage`] in OpenAI terms: `inputTokens` counts neither cache
/// reads nor cache writes, so all three make `prompt_tokens`.
pub fn usage_of(u: &Value) -> Option<Usage> {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    if !u.is_object() {
        return None;
    }
    let (input, read, write) = (
        n("inputTokens"),
        n("cacheReadInputTokens"),
        n("cacheWriteInputTokens"),
    );
    Some(Usage {
        prompt_tokens: input.saturating_add(read).saturating_add(write),
        completion_tokens: n("outputTokens"),
        cached_tokens: read,
        cache_creation_tokens: write,
        reasoning_tokens: 0,
    })
}

/// `image/png` → `png` (Converse `ImageBlock.format`).
fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type.to_ascii_lowercase().as_str() {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

fn content_blocks(
    parts: &[Part],
    at: &dyn std::fmt::Display,
) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            // Converse rejects blank text blocks.
            Part::Text(t) if t.is_empty() => {}
            Part::Text(t) => out.push(json!({ "text": t })),
            Part::Image(Image::Base64 { media_type, data }) => {
                let Some(format) = image_format(media_type) else {
                    return Err(TranslateError::bad_request(format!(
                        "{at}: Bedrock accepts png, jpeg, gif and webp images, not {media_type:?}"
                    )));
                };
                out.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
            }
            Part::Image(Image::Url(_)) => {
                return Err(TranslateError::bad_request(format!(
                    "{at}: Bedrock takes images as bytes only; send a data:image/...;base64 URL instead of a remote URL"
                )))
            }
        }
    }
    Ok(out)
}

/// The Converse request body for a normalised chat request.
pub fn converse_body(r: &ChatRequest) -> Result<Value, TranslateError> {
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::with_capacity(r.messages.len());
    let mut tool_history = false;
    for (i, m) in r.messages.iter().enumerate() {
        let at = super::lazy(move |f| write!(f, "messages (non-system #{i})"));
        let (role, blocks) = match m.role {
            Role::User => ("user", content_blocks(&m.content, &at)?),
            Role::Assistant => {
                let mut b = content_blocks(&m.content, &at)?;
                for c in &m.tool_calls {
                    tool_history = true;
                    let input = tool_call_args(c, &at)?;
                    b.push(json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": input}}));
                }
                ("assistant", b)
            }
            Role::Tool => {
                tool_history = true;
                let text = tool_result_text(&m.content, &at, "Bedrock")?;
                let content = if text.is_empty() {
                    json!([])
                } else {
                    json!([{ "text": text }])
                };
                (
                    "user",
                    vec![json!({"toolResult": {
                        "toolUseId": m.tool_call_id.as_deref().unwrap_or_default(),
                        "content": content,
                    }})],
                )
            }
        };
        // Converse wants user and assistant turns to alternate: merge neighbours.
        push_turn(&mut messages, role, blocks);
    }
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    let system = system_text_blocks(r);
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let inference = sampling_config(r, "maxTokens");
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    // `tool_choice: none` has no Converse equivalent: leave the tools out, unless
    // the history holds tool blocks (Converse then requires a toolConfig).
    let send_tools = !r.tools.is_empty() && (r.tool_choice != ToolChoice::None || tool_history);
    if send_tools {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut spec = Map::new();
                spec.insert("name".into(), t.name.clone().into());
                if let Some(d) = t.description.as_ref().filter(|d| !d.is_empty()) {
                    spec.insert("description".into(), d.clone().into());
                }
                spec.insert("inputSchema".into(), json!({ "json": t.parameters }));
                json!({ "toolSpec": spec })
            })
            .collect();
        let mut cfg = Map::new();
        cfg.insert("tools".into(), Value::Array(tools));
        let choice = match &r.tool_choice {
            ToolChoice::Auto => Some(json!({"auto": {}})),
            ToolChoice::Required => Some(json!({"any": {}})),
            ToolChoice::Function(n) => Some(json!({"tool": {"name": n}})),
            ToolChoice::Unset | ToolChoice::None => None,
        };
        if let Some(c) = choice {
            cfg.insert("toolChoice".into(), c);
        }
        body.insert("toolConfig".into(), Value::Object(cfg));
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests;
