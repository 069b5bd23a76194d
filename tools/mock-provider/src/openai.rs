//! OpenAI wire formats: chat completions, completions, embeddings,
//! responses, models. Shapes follow recorded api.openai.com traffic.

use crate::common::*;
use crate::json::J;
use crate::text::{self, Rng, REPLY_PRIMING, TOKENS_PER_MESSAGE, TOKENS_PER_NAME};
use crate::{arr, obj};
use serde_json::Value;

pub fn error(
    status: u16,
    message: &str,
    ty: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Reply {
    let body = obj! {"error" => obj! {
        "message" => message,
        "type" => ty,
        "param" => param,
        "code" => code,
    }};
    let mut extra = vec![("x-request-id".to_string(), new_id("req_"))];
    if status == 429 {
        extra.push(("retry-after".to_string(), "1".to_string()));
    }
    Reply::json(status, &body, extra)
}

pub fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Reply {
    error(400, message, "invalid_request_error", param, code)
}

/// The error a real OpenAI endpoint returns for `status` (x-mock-status).
pub fn status_error(status: u16) -> Reply {
    match status {
        400 => invalid("Mock bad request (x-mock-status).", None, None),
        401 => error(401, "Incorrect API key provided: test. You can find your API key at https://platform.openai.com/account/api-keys.", "invalid_request_error", None, Some("invalid_api_key")),
        403 => error(403, "You are not allowed to sample from this model", "invalid_request_error", None, None),
        404 => error(404, "The model `mock` does not exist or you do not have access to it.", "invalid_request_error", None, Some("model_not_found")),
        429 => error(429, "Rate limit reached for requests. Please try again in 1s.", "requests", None, Some("rate_limit_exceeded")),
        503 => error(503, "The engine is currently overloaded, please try again later.", "server_error", None, None),
        s if s >= 500 => error(s, "The server had an error while processing your request. Sorry about that!", "server_error", None, None),
        s => error(s, "Mock error (x-mock-status).", "invalid_request_error", None, None),
    }
}

/// A non-streaming chat completion with `message` as its one choice, shaped and
/// ordered as OpenAI sends it; `usage: None` leaves usage out (x-mock-no-usage).
fn chat_completion(
    id: &str,
    created: u64,
    model: &str,
    message: J,
    finish: &str,
    usage: Option<J>,
) -> Reply {
    let mut out = obj! {
        "id" => id, "object" => "chat.completion", "created" => created, "model" => model,
        "choices" => arr![obj! {"index" => 0u64, "message" => message, "finish_reason" => finish}],
    };
    if let Some(usage) = usage {
        out.push("usage", usage);
    }
    out.push("service_tier", "default");
    out.push("system_fingerprint", J::Null);
    Reply::json(200, &out, ok_headers())
}

fn ok_headers() -> Vec<(String, String)> {
    vec![
        ("x-request-id".to_string(), new_id("req_")),
        ("openai-processing-ms".to_string(), "1".to_string()),
    ]
}

fn sse_headers() -> Vec<(String, String)> {
    let mut h = vec![(
        "content-type".to_string(),
        "text/event-stream; charset=utf-8".to_string(),
    )];
    h.push(("cache-control".to_string(), "no-cache".to_string()));
    h.extend(ok_headers());
    h
}

fn data(j: &J) -> String {
    format!("data: {}\n\n", j.to_json())
}

const DONE: &str = "data: [DONE]\n\n";

fn model_of(body: &Value) -> Result<String, Reply> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(invalid("you must provide a model parameter", None, None))
        }
        Some(_) => Err(invalid(
            "Invalid type for 'model': expected a string.",
            Some("model"),
            Some("invalid_type"),
        )),
    }
}

fn limit(body: &Value, keys: &[&str]) -> Result<Option<u64>, Reply> {
    for k in keys {
        match body.get(*k) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return match v.as_i64() {
                    Some(n) if n >= 0 => Ok(Some(n as u64)),
                    Some(n) => Err(invalid(
                        &format!(
                            "Invalid '{k}': integer below minimum value. Expected a value >= 0, but got {n} instead."
                        ),
                        Some(k),
                        Some("integer_below_min_value"),
                    )),
                    None => Err(invalid(
                        &format!("Invalid type for '{k}': expected an integer."),
                        Some(k),
                        Some("invalid_type"),
                    )),
                };
            }
        }
    }
    Ok(None)
}

fn stream_opts(body: &Value) -> (bool, bool, bool) {
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let so = body.get("stream_options");
    let include_usage = so
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let obfuscation = so
        .and_then(|o| o.get("include_obfuscation"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    (stream, include_usage, obfuscation)
}

fn chat_usage(prompt: u64, completion: u64, ctl: &Ctl) -> J {
    let completion = completion + ctl.reasoning;
    obj! {
        "prompt_tokens" => prompt,
        "completion_tokens" => completion,
        "total_tokens" => prompt + completion,
        "prompt_tokens_details" => obj! {"cached_tokens" => ctl.cached.min(prompt), "audio_tokens" => 0u64},
        "completion_tokens_details" => obj! {
            "reasoning_tokens" => ctl.reasoning,
            "audio_tokens" => 0u64,
            "accepted_prediction_tokens" => 0u64,
            "rejected_prediction_tokens" => 0u64,
        },
    }
}

/// prompt_tokens of a chat request: the OpenAI cookbook formula.
pub fn chat_prompt_tokens(model: &str, messages: &[Value]) -> u64 {
    let mut n = REPLY_PRIMING;
    for m in messages {
        n += TOKENS_PER_MESSAGE;
        if let Some(role) = m.get("role").and_then(Value::as_str) {
            n += text::count(model, role);
        }
        let (t, images) = content_text(m.get("content"));
        n += text::count(model, &t) + images * IMAGE_TOKENS;
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            n += text::count(model, name) + TOKENS_PER_NAME;
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                let f = c.get("function");
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let args = f
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                n += text::count(model, name) + text::count(model, args) + 1;
            }
        }
    }
    n
}

struct ToolPick {
    name: String,
    schema: Option<Value>,
}

/// The tool to call, if the request has tools and does not forbid calling.
fn pick_tool(tools: Option<&Value>, choice: Option<&Value>, nested: bool) -> Option<ToolPick> {
    let tools = tools?.as_array()?;
    if tools.is_empty() || choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let fname = |t: &Value| -> Option<String> {
        let f = if nested { t.get("function")? } else { t };
        f.get("name")?.as_str().map(str::to_string)
    };
    let wanted = choice.and_then(|c| {
        c.get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| c.get("name"))
            .and_then(Value::as_str)
    });
    let tool = wanted
        .and_then(|w| tools.iter().find(|t| fname(t).as_deref() == Some(w)))
        .or_else(|| tools.iter().find(|t| fname(t).is_some()))?;
    let f = if nested { tool.get("function")? } else { tool };
    Some(ToolPick {
        name: fname(tool)?,
        schema: f.get("parameters").cloned(),
    })
}

pub fn chat(body: &Value, ctl: &Ctl) -> Reply {
    let model = match model_of(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let messages = match body.get("messages") {
        None | Some(Value::Null) => {
            return invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            )
        }
        Some(Value::Array(a)) if a.is_empty() => return invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return invalid(
                "Invalid type for 'messages': expected an array of objects.",
                Some("messages"),
                Some("invalid_type"),
            )
        }
    };
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str).is_none() {
            return invalid(
                &format!("Missing required parameter: 'messages[{i}].role'."),
                Some(&format!("messages[{i}].role")),
                Some("missing_required_parameter"),
            );
        }
    }
    let max = match limit(body, &["max_completion_tokens", "max_tokens"]) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let (stream, include_usage, obfuscation) = stream_opts(body);
    let prompt = chat_prompt_tokens(&model, messages);
    let seed = seed_of(&model, body.get("messages"));
    let mut rng = Rng::new(seed);
    let id = new_id("chatcmpl-");
    let created = now();
    let usage_on = !ctl.no_usage;

    if let Some(tool) = pick_tool(body.get("tools"), body.get("tool_choice"), true) {
        let args = tool_arguments(tool.schema.as_ref(), &mut rng);
        let call_id = new_id("call_");
        let completion = text::count(&model, &tool.name) + text::count(&model, &args);
        let usage = chat_usage(prompt, completion, ctl);
        if !stream {
            let message = obj! {
                "role" => "assistant", "content" => J::Null, "refusal" => J::Null, "annotations" => arr![],
                "tool_calls" => arr![obj! {
                    "id" => call_id, "type" => "function",
                    "function" => obj! {"name" => tool.name, "arguments" => args},
                }],
            };
            return chat_completion(
                &id,
                created,
                &model,
                message,
                "tool_calls",
                usage_on.then_some(usage),
            );
        }
        let mut ev = ChunkWriter::new(&id, created, &model, include_usage, obfuscation, &mut rng);
        let mut events = vec![ev.chunk(
            obj! {
                "role" => "assistant", "content" => J::Null,
                "tool_calls" => arr![obj! {
                    "index" => 0u64, "id" => call_id, "type" => "function",
                    "function" => obj! {"name" => tool.name, "arguments" => ""},
                }],
                "refusal" => J::Null,
            },
            None,
        )];
        for piece in split_chars(&args, 6) {
            events.push(ev.chunk(
                obj! {"tool_calls" => arr![obj! {"index" => 0u64, "function" => obj! {"arguments" => piece}}]},
                None,
            ));
        }
        events.push(ev.chunk(obj! {}, Some("tool_calls")));
        if include_usage && usage_on {
            events.push(ev.usage_chunk(usage));
        }
        events.push(DONE.to_string());
        return Reply::Stream {
            headers: sse_headers(),
            events,
        };
    }

    let scripted = ctl.scripted_reply(|| {
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
        content_text(last_user.and_then(|m| m.get("content"))).0
    });
    let mut pieces = match scripted {
        Some(t) => split_chars(&t, 4),
        None => text::reply_pieces(seed, ctl.reply_words),
    };
    let cut = truncate_to_tokens(&model, &mut pieces, max);
    let finish = if cut { "length" } else { "stop" };
    let reply = pieces.concat();
    let usage = chat_usage(prompt, text::count(&model, &reply), ctl);
    if !stream {
        let message = obj! {"role" => "assistant", "content" => reply, "refusal" => J::Null, "annotations" => arr![]};
        return chat_completion(
            &id,
            created,
            &model,
            message,
            finish,
            usage_on.then_some(usage),
        );
    }
    let mut ev = ChunkWriter::new(&id, created, &model, include_usage, obfuscation, &mut rng);
    let mut events = vec![ev.chunk(
        obj! {"role" => "assistant", "content" => "", "refusal" => J::Null},
        None,
    )];
    for p in pieces {
        events.push(ev.chunk(obj! {"content" => p}, None));
    }
    events.push(ev.chunk(obj! {}, Some(finish)));
    if include_usage && usage_on {
        events.push(ev.usage_chunk(usage));
    }
    events.push(DONE.to_string());
    Reply::Stream {
        headers: sse_headers(),
        events,
    }
}

/// Builds `chat.completion.chunk` events the way the API frames them:
/// `"usage":null` on every chunk only when `include_usage` is on, a final
/// `choices:[]` chunk carrying usage, and an `obfuscation` pad.
struct ChunkWriter<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
    include_usage: bool,
    obfuscation: bool,
    rng: &'a mut Rng,
}

impl<'a> ChunkWriter<'a> {
    fn new(
        id: &'a str,
        created: u64,
        model: &'a str,
        include_usage: bool,
        obfuscation: bool,
        rng: &'a mut Rng,
    ) -> Self {
        ChunkWriter {
            id,
            created,
            model,
            include_usage,
            obfuscation,
            rng,
        }
    }

    fn pad(&mut self) -> String {
        const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let n = self.rng.below(16);
        (0..n)
            .map(|_| ALPHA[self.rng.below(ALPHA.len())] as char)
            .collect()
    }

    fn head(&self) -> J {
        obj! {
            "id" => self.id, "object" => "chat.completion.chunk", "created" => self.created, "model" => self.model,
            "service_tier" => "default", "system_fingerprint" => J::Null,
        }
    }

    fn chunk(&mut self, delta: J, finish: Option<&str>) -> String {
        let mut c = self.head();
        c.push(
            "choices",
            arr![obj! {"index" => 0u64, "delta" => delta, "finish_reason" => finish}],
        );
        if self.include_usage {
            c.push("usage", J::Null);
        }
        if self.obfuscation {
            let pad = self.pad();
            c.push("obfuscation", pad);
        }
        data(&c)
    }

    fn usage_chunk(&mut self, usage: J) -> String {
        let mut c = self.head();
        c.push("choices", arr![]);
        c.push("usage", usage);
        if self.obfuscation {
            let pad = self.pad();
            c.push("obfuscation", pad);
        }
        data(&c)
    }
}

/// Prompts of a completions/embeddings `input`: strings, or token arrays.
/// Returns (list of (text, token-array length)).
fn prompts(v: &Value) -> Option<Vec<(String, Option<u64>)>> {
    match v {
        Value::String(s) => Some(vec![(s.clone(), None)]),
        Value::Array(a) if a.is_empty() => None,
        Value::Array(a) if a.iter().all(Value::is_number) => {
            Some(vec![(v.to_string(), Some(a.len() as u64))])
        }
        Value::Array(a) => a
            .iter()
            .map(|it| match it {
                Value::String(s) => Some((s.clone(), None)),
                Value::Array(t) if t.iter().all(Value::is_number) => {
                    Some((it.to_string(), Some(t.len() as u64)))
                }
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn prompt_count(model: &str, p: &(String, Option<u64>)) -> u64 {
    p.1.unwrap_or_else(|| text::count(model, &p.0))
}

pub fn completions(body: &Value, ctl: &Ctl) -> Reply {
    let model = match model_of(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(ps) = body.get("prompt").map(prompts) else {
        return invalid(
            "Missing required parameter: 'prompt'.",
            Some("prompt"),
            Some("missing_required_parameter"),
        );
    };
    let Some(ps) = ps else {
        return invalid(
            "Invalid 'prompt': expected a string, array of strings, or array of token arrays.",
            Some("prompt"),
            Some("invalid_type"),
        );
    };
    let max = match limit(body, &["max_tokens"]) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let (stream, include_usage, _) = stream_opts(body);
    let prompt_tokens: u64 = ps.iter().map(|p| prompt_count(&model, p)).sum();
    let id = new_id("cmpl-");
    let created = now();
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (i, p) in ps.iter().enumerate() {
        let mut pieces = text::reply_pieces(
            text::fnv1a(format!("{model}{i}{}", p.0).as_bytes()),
            ctl.reply_words,
        );
        let cut = truncate_to_tokens(&model, &mut pieces, max);
        completion_tokens += text::count(&model, &pieces.concat());
        choices.push((pieces, if cut { "length" } else { "stop" }));
    }
    let usage = obj! {
        "prompt_tokens" => prompt_tokens,
        "completion_tokens" => completion_tokens,
        "total_tokens" => prompt_tokens + completion_tokens,
    };
    if !stream {
        let mut out = obj! {
            "id" => id, "object" => "text_completion", "created" => created,
            "choices" => J::Arr(choices.into_iter().enumerate().map(|(i, (pieces, finish))| obj! {
                "text" => pieces.concat(), "index" => i, "logprobs" => J::Null, "finish_reason" => finish,
            }).collect()),
            "model" => model.as_str(),
        };
        if !ctl.no_usage {
            out.push("usage", usage);
        }
        return Reply::json(200, &out, ok_headers());
    }
    let mut events = Vec::new();
    let chunk = |i: usize, text: &str, finish: Option<&str>| {
        let mut c = obj! {
            "id" => id.as_str(), "object" => "text_completion", "created" => created,
            "choices" => arr![obj! {"text" => text, "index" => i, "logprobs" => J::Null, "finish_reason" => finish}],
            "model" => model.as_str(),
        };
        if include_usage {
            c.push("usage", J::Null);
        }
        data(&c)
    };
    for (i, (pieces, finish)) in choices.iter().enumerate() {
        let n = pieces.len();
        if n == 0 {
            events.push(chunk(i, "", Some(finish)));
        }
        for (k, p) in pieces.iter().enumerate() {
            events.push(chunk(i, p, if k + 1 == n { Some(finish) } else { None }));
        }
    }
    if include_usage && !ctl.no_usage {
        events.push(data(&obj! {
            "id" => id.as_str(), "object" => "text_completion", "created" => created, "model" => model.as_str(),
            "usage" => usage, "choices" => arr![],
        }));
    }
    events.push(DONE.to_string());
    Reply::Stream {
        headers: sse_headers(),
        events,
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

pub const DEFAULT_EMBEDDING_DIM: u64 = 8;
pub const MAX_EMBEDDING_DIM: u64 = 4096;

/// A deterministic unit vector for `text`.
pub fn embedding(text: &str, dim: usize) -> Vec<f32> {
    let mut rng = Rng::new(text::fnv1a(text.as_bytes()));
    let mut v: Vec<f32> = (0..dim)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

pub fn embeddings(body: &Value, ctl: &Ctl) -> Reply {
    let model = match model_of(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(input) = body.get("input") else {
        return invalid(
            "Missing required parameter: 'input'.",
            Some("input"),
            Some("missing_required_parameter"),
        );
    };
    let Some(ps) = prompts(input) else {
        return invalid(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            None,
            None,
        );
    };
    let dim = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIM,
        Some(v) => match v.as_i64() {
            Some(d) if d >= 1 => (d as u64).min(MAX_EMBEDDING_DIM),
            Some(d) => {
                return invalid(
                    &format!("{d} is less than the minimum of 1 - 'dimensions'"),
                    None,
                    None,
                )
            }
            None => {
                return invalid(
                    "Invalid type for 'dimensions': expected an integer.",
                    Some("dimensions"),
                    Some("invalid_type"),
                )
            }
        },
    } as usize;
    let b64 =
        match body
            .get("encoding_format")
            .and_then(|v| if v.is_null() { None } else { Some(v) })
        {
            None => false,
            Some(Value::String(s)) if s == "float" => false,
            Some(Value::String(s)) if s == "base64" => true,
            Some(v) => return invalid(
                &format!(
                    "Invalid value for 'encoding_format': expected one of 'float' or 'base64', but got {v} instead."
                ),
                Some("encoding_format"),
                Some("invalid_value"),
            ),
        };
    let tokens: u64 = ps.iter().map(|p| prompt_count(&model, p)).sum();
    let data: Vec<J> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let v = embedding(&p.0, dim);
            let e = if b64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                J::Str(base64(&bytes))
            } else {
                J::Arr(v.into_iter().map(J::F32).collect())
            };
            obj! {"object" => "embedding", "index" => i, "embedding" => e}
        })
        .collect();
    let mut out = obj! {"object" => "list", "data" => J::Arr(data), "model" => model.as_str()};
    if !ctl.no_usage {
        out.push(
            "usage",
            obj! {"prompt_tokens" => tokens, "total_tokens" => tokens},
        );
    }
    Reply::json(200, &out, ok_headers())
}

/// input_tokens of a Responses request, with the chat framing: the
/// `instructions` as a system message, a string `input` as a user message.
pub fn responses_input_tokens(model: &str, body: &Value) -> u64 {
    let mut n = REPLY_PRIMING;
    if let Some(i) = body.get("instructions").and_then(Value::as_str) {
        n += TOKENS_PER_MESSAGE + text::count(model, "system") + text::count(model, i);
    }
    match body.get("input") {
        Some(Value::String(s)) => {
            n += TOKENS_PER_MESSAGE + text::count(model, "user") + text::count(model, s)
        }
        Some(Value::Array(items)) => {
            for it in items {
                n += TOKENS_PER_MESSAGE;
                if let Some(role) = it.get("role").and_then(Value::as_str) {
                    n += text::count(model, role);
                }
                let (t, images) = content_text(Some(&Value::Array(vec![it.clone()])));
                n += text::count(model, &t) + images * IMAGE_TOKENS;
                if let Some(a) = it.get("arguments").and_then(Value::as_str) {
                    n += text::count(model, a);
                }
            }
        }
        _ => {}
    }
    n
}

/// The text of a Responses request's last user input (a string `input`, or the
/// last `role: user` item), for `x-mock-echo`.
fn responses_last_user_text(body: &Value) -> String {
    match body.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let last = items
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
            content_text(last.and_then(|m| m.get("content"))).0
        }
        _ => String::new(),
    }
}

pub fn responses(body: &Value, ctl: &Ctl) -> Reply {
    let model = match model_of(body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match body.get("input") {
        Some(Value::String(_)) | Some(Value::Array(_)) => {}
        None | Some(Value::Null) => {
            return invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
                Some("missing_required_parameter"),
            )
        }
        Some(_) => {
            return invalid(
                "Invalid type for 'input': expected a string or an array.",
                Some("input"),
                Some("invalid_type"),
            )
        }
    }
    let max = match limit(body, &["max_output_tokens"]) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let input_tokens = responses_input_tokens(&model, body);
    let seed = seed_of(&model, body.get("input"));
    let mut rng = Rng::new(seed);
    let resp_id = new_id("resp_");
    let created = now();

    let tool = pick_tool(body.get("tools"), body.get("tool_choice"), false);
    let (item_id, pieces, cut, call) = match &tool {
        Some(t) => {
            let args = tool_arguments(t.schema.as_ref(), &mut rng);
            (
                new_id("fc_"),
                split_chars(&args, 6),
                false,
                Some((new_id("call_"), t.name.clone(), args)),
            )
        }
        None => {
            let scripted = ctl.scripted_reply(|| responses_last_user_text(body));
            let mut p = match scripted {
                Some(t) => split_chars(&t, 4),
                None => text::reply_pieces(seed, ctl.reply_words),
            };
            let cut = truncate_to_tokens(&model, &mut p, max);
            (new_id("msg_"), p, cut, None)
        }
    };
    let full = pieces.concat();
    let output_tokens = match &call {
        Some((_, name, args)) => text::count(&model, name) + text::count(&model, args),
        None => text::count(&model, &full),
    } + ctl.reasoning;
    let usage = if ctl.no_usage {
        J::Null
    } else {
        obj! {
            "input_tokens" => input_tokens,
            "input_tokens_details" => obj! {"cached_tokens" => ctl.cached.min(input_tokens)},
            "output_tokens" => output_tokens,
            "output_tokens_details" => obj! {"reasoning_tokens" => ctl.reasoning},
            "total_tokens" => input_tokens + output_tokens,
        }
    };
    let part = |text: &str| obj! {"type" => "output_text", "annotations" => arr![], "logprobs" => arr![], "text" => text};
    let item = |done: bool| -> J {
        let status = if done { "completed" } else { "in_progress" };
        match &call {
            Some((call_id, name, args)) => obj! {
                "id" => item_id.as_str(), "type" => "function_call", "status" => status,
                "arguments" => if done { args.as_str() } else { "" }, "call_id" => call_id.as_str(), "name" => name.as_str(),
            },
            None => obj! {
                "id" => item_id.as_str(), "type" => "message", "status" => status,
                "content" => if done { arr![part(&full)] } else { arr![] }, "role" => "assistant",
            },
        }
    };
    let status = if cut { "incomplete" } else { "completed" };
    let response = |state: &str, output: Vec<J>, usage: J| -> J {
        obj! {
            "id" => resp_id.as_str(), "object" => "response", "created_at" => created, "status" => state,
            "background" => false, "error" => J::Null,
            "incomplete_details" => if state == "incomplete" { obj! {"reason" => "max_output_tokens"} } else { J::Null },
            "instructions" => body.get("instructions").cloned(), "max_output_tokens" => body.get("max_output_tokens").cloned(),
            "model" => model.as_str(), "output" => J::Arr(output), "parallel_tool_calls" => true,
            "previous_response_id" => body.get("previous_response_id").cloned(),
            "reasoning" => obj! {"effort" => J::Null, "summary" => J::Null}, "store" => true, "temperature" => 1.0f64,
            "text" => obj! {"format" => obj! {"type" => "text"}}, "tool_choice" => "auto",
            "tools" => body.get("tools").cloned().unwrap_or(Value::Array(vec![])), "top_p" => 1.0f64,
            "truncation" => "disabled", "usage" => usage, "user" => J::Null, "metadata" => obj! {},
        }
    };
    if !stream {
        return Reply::json(
            200,
            &response(status, vec![item(true)], usage),
            ok_headers(),
        );
    }
    let mut seq: u64 = 0;
    let mut events = Vec::new();
    let mut emit = |ty: &str, mut fields: J| {
        let mut e = obj! {"type" => ty};
        if let (J::Obj(dst), J::Obj(src)) = (&mut e, &mut fields) {
            dst.append(src);
        }
        e.push("sequence_number", seq);
        seq += 1;
        events.push(format!("event: {ty}\ndata: {}\n\n", e.to_json()));
    };
    emit(
        "response.created",
        obj! {"response" => response("in_progress", vec![], J::Null)},
    );
    emit(
        "response.in_progress",
        obj! {"response" => response("in_progress", vec![], J::Null)},
    );
    emit(
        "response.output_item.added",
        obj! {"output_index" => 0u64, "item" => item(false)},
    );
    if let Some((_, _, args)) = &call {
        for p in &pieces {
            emit(
                "response.function_call_arguments.delta",
                obj! {"item_id" => item_id.as_str(), "output_index" => 0u64, "delta" => p.as_str()},
            );
        }
        emit(
            "response.function_call_arguments.done",
            obj! {"item_id" => item_id.as_str(), "output_index" => 0u64, "arguments" => args.as_str()},
        );
    } else {
        emit(
            "response.content_part.added",
            obj! {"item_id" => item_id.as_str(), "output_index" => 0u64, "content_index" => 0u64, "part" => part("")},
        );
        for p in &pieces {
            emit(
                "response.output_text.delta",
                obj! {"item_id" => item_id.as_str(), "output_index" => 0u64, "content_index" => 0u64, "delta" => p.as_str(), "logprobs" => arr![]},
            );
        }
        emit(
            "response.output_text.done",
            obj! {"item_id" => item_id.as_str(), "output_index" => 0u64, "content_index" => 0u64, "text" => full.as_str(), "logprobs" => arr![]},
        );
        emit(
            "response.content_part.done",
            obj! {"item_id" => item_id.as_str(), "output_index" => 0u64, "content_index" => 0u64, "part" => part(&full)},
        );
    }
    emit(
        "response.output_item.done",
        obj! {"output_index" => 0u64, "item" => item(true)},
    );
    let last = if cut {
        "response.incomplete"
    } else {
        "response.completed"
    };
    emit(
        last,
        obj! {"response" => response(status, vec![item(true)], usage)},
    );
    Reply::Stream {
        headers: sse_headers(),
        events,
    }
}

pub const MODELS: &[(&str, &str)] = &[
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-4.1", "openai"),
    ("gpt-5-nano", "openai"),
    ("o3-mini", "openai"),
    ("text-embedding-3-small", "openai"),
    ("babbage-002", "openai"),
];

fn model_obj(id: &str, owner: &str) -> J {
    obj! {"id" => id, "object" => "model", "created" => 1_715_367_049u64, "owned_by" => owner}
}

pub fn models() -> Reply {
    let data = MODELS.iter().map(|(id, o)| model_obj(id, o)).collect();
    Reply::json(
        200,
        &obj! {"object" => "list", "data" => J::Arr(data)},
        ok_headers(),
    )
}

pub fn model(id: &str) -> Reply {
    match MODELS.iter().find(|(m, _)| *m == id) {
        Some((m, o)) => Reply::json(200, &model_obj(m, o), ok_headers()),
        None => error(
            404,
            &format!("The model `{id}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        ),
    }
}
