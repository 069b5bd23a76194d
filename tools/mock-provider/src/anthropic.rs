//! Anthropic Messages API (`POST /v1/messages`), non-stream and SSE, in the
//! shapes Anthropic documents ("Streaming Messages").

use crate::common::*;
use crate::json::J;
use crate::text::{self, Rng, REPLY_PRIMING, TOKENS_PER_MESSAGE};
use crate::{arr, obj};
use serde_json::Value;

pub fn error(status: u16, ty: &str, message: &str) -> Reply {
    let body = obj! {
        "type" => "error",
        "error" => obj! {"type" => ty, "message" => message},
        "request_id" => new_id("req_"),
    };
    let mut extra = vec![("request-id".to_string(), new_id("req_"))];
    if status == 429 {
        extra.push(("retry-after".to_string(), "1".to_string()));
    }
    Reply::json(status, &body, extra)
}

pub fn invalid(message: &str) -> Reply {
    error(400, "invalid_request_error", message)
}

pub fn status_error(status: u16) -> Reply {
    match status {
        400 => invalid("Mock bad request (x-mock-status)."),
        401 => error(401, "authentication_error", "invalid x-api-key"),
        403 => error(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => error(
            404,
            "not_found_error",
            "The requested resource could not be found.",
        ),
        413 => error(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit.",
        ),
        529 => error(529, "overloaded_error", "Overloaded"),
        s if s >= 500 => error(s, "api_error", "Internal server error"),
        s => error(s, "invalid_request_error", "Mock error (x-mock-status)."),
    }
}

fn headers(stream: bool) -> Vec<(String, String)> {
    let mut h = Vec::new();
    if stream {
        h.push((
            "content-type".to_string(),
            "text/event-stream; charset=utf-8".to_string(),
        ));
        h.push(("cache-control".to_string(), "no-cache".to_string()));
    }
    h.push(("request-id".to_string(), new_id("req_")));
    h
}

/// Prompt tokens with the chat framing: `system` as one message, then each
/// message's text blocks, tool_use names+inputs and tool_result contents.
pub fn prompt_tokens(model: &str, body: &Value) -> u64 {
    let mut n = REPLY_PRIMING;
    if let Some(sys) = body.get("system") {
        let (t, _) = content_text(Some(sys));
        n += TOKENS_PER_MESSAGE + text::count(model, "system") + text::count(model, &t);
    }
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        n += TOKENS_PER_MESSAGE;
        if let Some(role) = m.get("role").and_then(Value::as_str) {
            n += text::count(model, role);
        }
        let (t, images) = content_text(m.get("content"));
        n += text::count(model, &t) + images * IMAGE_TOKENS;
        for b in m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if b.get("type").and_then(Value::as_str) == Some("tool_use") {
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                let input = b.get("input").map(Value::to_string).unwrap_or_default();
                n += text::count(model, name) + text::count(model, &input);
            }
        }
    }
    n
}

fn validate(body: &Value) -> Result<(String, u64), Reply> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) => return Err(invalid("model: Field required")),
        Some(_) => return Err(invalid("model: Input should be a valid string")),
    };
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err(invalid("max_tokens: Field required")),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => n as u64,
            Some(_) => {
                return Err(invalid(
                    "max_tokens: Input should be greater than or equal to 1",
                ))
            }
            None => return Err(invalid("max_tokens: Input should be a valid integer")),
        },
    };
    match body.get("messages") {
        None | Some(Value::Null) => return Err(invalid("messages: Field required")),
        Some(Value::Array(a)) => {
            for (i, m) in a.iter().enumerate() {
                match m.get("role").and_then(Value::as_str) {
                    Some("user") | Some("assistant") => {}
                    _ => {
                        return Err(invalid(&format!(
                            "messages.{i}.role: Input should be 'user' or 'assistant'"
                        )))
                    }
                }
                if m.get("content").is_none() {
                    return Err(invalid(&format!("messages.{i}.content: Field required")));
                }
            }
            check_blocks(body, a)?;
        }
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
    }
    Ok((model, max_tokens))
}

/// The content-block rules of the Messages API reference that a translating
/// gateway can get wrong: block shapes, image sources, tool_use/tool_result
/// pairing, `system`, `tools` and sampling ranges. Messages follow the API's
/// own error wording (`messages.1.content.0...`).
fn check_blocks(body: &Value, messages: &[Value]) -> Result<(), Reply> {
    match body.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(a)) => {
            for (j, b) in a.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text")
                    || !b.get("text").is_some_and(Value::is_string)
                {
                    return Err(invalid(&format!(
                        "system.{j}: Input should be a valid text block"
                    )));
                }
            }
        }
        Some(_) => return Err(invalid("system: Input should be a valid string or list")),
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        if !(0.0..=1.0).contains(&t) {
            return Err(invalid(
                "temperature: Input should be less than or equal to 1",
            ));
        }
    }
    if let Some(tools) = body.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err(invalid("tools: Input should be a valid list"));
        };
        for (j, t) in tools.iter().enumerate() {
            if !t.get("name").is_some_and(Value::is_string) {
                return Err(invalid(&format!("tools.{j}.name: Field required")));
            }
            if !t.get("input_schema").is_some_and(Value::is_object) {
                return Err(invalid(&format!("tools.{j}.input_schema: Field required")));
            }
        }
    }
    let mut prev_tool_ids: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let mut tool_ids = Vec::new();
        let blocks = match m.get("content") {
            Some(Value::String(_)) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            _ => {
                return Err(invalid(&format!(
                    "messages.{i}.content: Input should be a valid string or list"
                )))
            }
        };
        let mut seen_other = false;
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match b.get("type").and_then(Value::as_str).unwrap_or("") {
                "text" => {
                    match b.get("text").and_then(Value::as_str) {
                        Some("") => {
                            return Err(invalid(&format!(
                                "{at}: text content blocks must be non-empty"
                            )))
                        }
                        Some(_) => {}
                        None => return Err(invalid(&format!("{at}.text: Field required"))),
                    }
                    seen_other = true;
                }
                "image" => {
                    let src = b.get("source");
                    let ok = match src.and_then(|s| s.get("type")).and_then(Value::as_str) {
                        Some("base64") => {
                            matches!(
                                src.and_then(|s| s.get("media_type")).and_then(Value::as_str),
                                Some("image/jpeg" | "image/png" | "image/gif" | "image/webp")
                            ) && src.and_then(|s| s.get("data")).is_some_and(Value::is_string)
                        }
                        Some("url") => src.and_then(|s| s.get("url")).is_some_and(Value::is_string),
                        _ => false,
                    };
                    if !ok {
                        return Err(invalid(&format!("{at}.source: Input should be a valid image source")));
                    }
                    seen_other = true;
                }
                "tool_use" if role == "assistant" => {
                    let id = b.get("id").and_then(Value::as_str);
                    if id.is_none() || !b.get("name").is_some_and(Value::is_string) {
                        return Err(invalid(&format!("{at}: tool_use blocks need id and name")));
                    }
                    if !b.get("input").is_some_and(Value::is_object) {
                        return Err(invalid(&format!("{at}.input: Input should be a valid dictionary")));
                    }
                    tool_ids.extend(id);
                }
                "tool_result" if role == "user" => {
                    let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                    if !prev_tool_ids.contains(&id) {
                        return Err(invalid(&format!(
                            "{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                        )));
                    }
                    if seen_other {
                        return Err(invalid(&format!(
                            "{at}: tool_result blocks must come first in the user message content"
                        )));
                    }
                }
                "thinking" | "redacted_thinking" | "document" => seen_other = true,
                other => {
                    return Err(invalid(&format!(
                        "{at}.type: Input tag '{other}' found using 'type' does not match any of the expected tags"
                    )))
                }
            }
        }
        if role == "user" && !prev_tool_ids.is_empty() {
            let answered = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                .count();
            if answered < prev_tool_ids.len() {
                return Err(invalid(&format!(
                    "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after"
                )));
            }
        }
        prev_tool_ids = tool_ids;
    }
    Ok(())
}

pub fn count_tokens(body: &Value) -> Reply {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return invalid("model: Field required"),
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        return invalid("messages: Field required");
    }
    Reply::json(
        200,
        &obj! {"input_tokens" => prompt_tokens(&model, body)},
        headers(false),
    )
}

/// Extended thinking asked for (`thinking: {type: enabled, budget_tokens}`), checked
/// the way the Messages API does: the budget is at least 1024 and below
/// `max_tokens`, and thinking cannot be combined with forced tool use.
fn thinking_budget(body: &Value, max_tokens: u64) -> Result<Option<u64>, Reply> {
    let Some(t) = body.get("thinking").filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    match t.get("type").and_then(Value::as_str) {
        Some("enabled") => {}
        Some("disabled") | Some("adaptive") => return Ok(None),
        _ => {
            return Err(invalid(
                "thinking: Input tag found using 'type' does not match any of the expected tags: 'enabled', 'disabled', 'adaptive'",
            ))
        }
    }
    let Some(budget) = t.get("budget_tokens").and_then(Value::as_u64) else {
        return Err(invalid("thinking.enabled.budget_tokens: Field required"));
    };
    if budget < 1024 {
        return Err(invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ));
    }
    if max_tokens <= budget {
        return Err(invalid(
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
        ));
    }
    let forced = body
        .get("tool_choice")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str);
    if matches!(forced, Some("any") | Some("tool")) {
        return Err(invalid(
            "Thinking may not be enabled when tool_choice forces tool use.",
        ));
    }
    Ok(Some(budget))
}

fn sse(ty: &str, j: &J) -> String {
    format!("event: {ty}\ndata: {}\n\n", j.to_json())
}

pub fn messages(body: &Value, ctl: &Ctl) -> Reply {
    let (model, max_tokens) = match validate(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let thinking = match thinking_budget(body, max_tokens) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let prompt = prompt_tokens(&model, body);
    // Anthropic's input_tokens excludes the cached and cache-written parts.
    let cache_read = ctl.cached.min(prompt);
    let cache_creation = ctl.cache_creation.min(prompt - cache_read);
    let input_tokens = prompt - cache_read - cache_creation;
    let seed = seed_of(&model, body.get("messages"));
    let mut rng = Rng::new(seed);
    let id = new_id("msg_01");

    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());
    let choice = body
        .get("tool_choice")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str);
    let tool = match (tools, choice) {
        (Some(_), Some("none")) | (None, _) => None,
        (Some(ts), _) => {
            let wanted = body
                .get("tool_choice")
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str);
            wanted
                .and_then(|w| {
                    ts.iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some(w))
                })
                .or_else(|| {
                    ts.iter()
                        .find(|t| t.get("name").and_then(Value::as_str).is_some())
                })
                .cloned()
        }
    };

    let (block, pieces, output_tokens, stop_reason) = if let Some(t) = &tool {
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("tool")
            .to_string();
        let args = tool_arguments(t.get("input_schema"), &mut rng);
        let input: Value = serde_json::from_str(&args).unwrap_or(Value::Object(Default::default()));
        let out = text::count(&model, &name) + text::count(&model, &args);
        let block = obj! {"type" => "tool_use", "id" => new_id("toolu_01"), "name" => name, "input" => input};
        (block, split_chars(&args, 6), out, "tool_use")
    } else {
        let mut p = text::reply_pieces(seed, ctl.reply_words);
        let cut = truncate_to_tokens(&model, &mut p, Some(max_tokens));
        let text = p.concat();
        let out = text::count(&model, &text);
        (
            obj! {"type" => "text", "text" => text},
            p,
            out,
            if cut { "max_tokens" } else { "end_turn" },
        )
    };
    // Thinking comes first and is billed as output (Anthropic reports no split).
    let thought: Option<(Vec<String>, String)> = thinking.map(|_| {
        let mut p = vec!["Let me think this through. ".to_string()];
        p.extend(text::reply_pieces(seed ^ 0x7468_696e_6b21, 12));
        (p, new_id("EqQBCgIYAhIM"))
    });
    let thought_tokens = thought
        .as_ref()
        .map_or(0, |(p, _)| text::count(&model, &p.concat()));
    let redacted = (thought.is_some() && ctl.redacted_thinking).then(|| new_id("EmwKAhgBEgy"));
    let output_tokens = output_tokens + ctl.reasoning + thought_tokens;
    let usage = |output: u64| {
        obj! {
            "input_tokens" => input_tokens,
            "cache_creation_input_tokens" => cache_creation,
            "cache_read_input_tokens" => cache_read,
            "cache_creation" => obj! {"ephemeral_5m_input_tokens" => cache_creation, "ephemeral_1h_input_tokens" => 0u64},
            "output_tokens" => output,
            "service_tier" => "standard",
        }
    };
    let message = |content: J, stop: Option<&str>, usage: Option<J>| {
        let mut m = obj! {
            "id" => id.as_str(), "type" => "message", "role" => "assistant", "model" => model.as_str(),
            "content" => content, "stop_reason" => stop, "stop_sequence" => J::Null,
        };
        if let Some(u) = usage {
            m.push("usage", u);
        }
        m
    };
    let with_usage = !ctl.no_usage;
    let mut lead: Vec<J> = Vec::new();
    if let Some((p, sig)) = &thought {
        lead.push(
            obj! {"type" => "thinking", "thinking" => p.concat(), "signature" => sig.as_str()},
        );
    }
    if let Some(d) = &redacted {
        lead.push(obj! {"type" => "redacted_thinking", "data" => d.as_str()});
    }
    if !stream {
        let mut content = lead.clone();
        content.push(block);
        let m = message(
            J::Arr(content),
            Some(stop_reason),
            with_usage.then(|| usage(output_tokens)),
        );
        return Reply::json(200, &m, headers(false));
    }
    let mut events = vec![sse(
        "message_start",
        &obj! {"type" => "message_start", "message" => message(arr![], None, with_usage.then(|| usage(1)))},
    )];
    let (start_block, delta_kind, delta_key) = if tool.is_some() {
        let mut b = block.clone();
        if let J::Obj(pairs) = &mut b {
            for (k, v) in pairs.iter_mut() {
                if k == "input" {
                    *v = obj! {};
                }
            }
        }
        (b, "input_json_delta", "partial_json")
    } else {
        (obj! {"type" => "text", "text" => ""}, "text_delta", "text")
    };
    let mut index = 0u64;
    let block_delta = |index: u64, delta: J| {
        sse(
            "content_block_delta",
            &obj! {"type" => "content_block_delta", "index" => index, "delta" => delta},
        )
    };
    let block_stop = |index: u64| {
        sse(
            "content_block_stop",
            &obj! {"type" => "content_block_stop", "index" => index},
        )
    };
    if let Some((p, sig)) = &thought {
        events.push(sse(
            "content_block_start",
            &obj! {"type" => "content_block_start", "index" => index,
            "content_block" => obj! {"type" => "thinking", "thinking" => "", "signature" => ""}},
        ));
        for piece in p {
            events.push(block_delta(
                index,
                obj! {"type" => "thinking_delta", "thinking" => piece.as_str()},
            ));
        }
        events.push(block_delta(
            index,
            obj! {"type" => "signature_delta", "signature" => sig.as_str()},
        ));
        events.push(block_stop(index));
        index += 1;
    }
    if let Some(d) = &redacted {
        events.push(sse(
            "content_block_start",
            &obj! {"type" => "content_block_start", "index" => index,
            "content_block" => obj! {"type" => "redacted_thinking", "data" => d.as_str()}},
        ));
        events.push(block_stop(index));
        index += 1;
    }
    events.push(sse(
        "content_block_start",
        &obj! {"type" => "content_block_start", "index" => index, "content_block" => start_block},
    ));
    events.push(sse("ping", &obj! {"type" => "ping"}));
    for p in pieces {
        let mut delta = obj! {"type" => delta_kind};
        delta.push(delta_key, p);
        events.push(block_delta(index, delta));
    }
    events.push(block_stop(index));
    let mut md = obj! {"type" => "message_delta", "delta" => obj! {"stop_reason" => stop_reason, "stop_sequence" => J::Null}};
    if with_usage {
        md.push("usage", obj! {"output_tokens" => output_tokens});
    }
    events.push(sse("message_delta", &md));
    events.push(sse("message_stop", &obj! {"type" => "message_stop"}));
    Reply::Stream {
        headers: headers(true),
        events,
    }
}
