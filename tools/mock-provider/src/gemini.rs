//! Google Gemini `generateContent` / `streamGenerateContent?alt=sse`
//! (`POST /v1beta/models/{model}:{method}`), in the shapes the Gemini API
//! reference documents (https://ai.google.dev/api/generate-content).
//!
//! Checks what a translating gateway can get wrong: the API key header, roles
//! (`user`/`model`), part shapes (`text`, `inlineData`, `functionCall`,
//! `functionResponse`), that a function-response turn answers the previous
//! function-call turn one for one, `systemInstruction`, `tools` and
//! `generationConfig`. `x-mock-stream-error-after: N` ends a stream with an error
//! event after N events. `usageMetadata` counts with tiktoken like the other mock
//! endpoints; `x-mock-cached-tokens` → `cachedContentTokenCount` (inside
//! `promptTokenCount`), `x-mock-reasoning-tokens` → `thoughtsTokenCount`.

use crate::common::*;
use crate::http::Request;
use crate::text::{self, Rng, REPLY_PRIMING, TOKENS_PER_MESSAGE};
use serde_json::{json, Value};

/// `(model, streaming)` when `path` is a Gemini generate call.
fn parse_path(path: &str) -> Option<(&str, bool)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    if let Some(m) = rest.strip_suffix(":generateContent") {
        return Some((m, false));
    }
    rest.strip_suffix(":streamGenerateContent")
        .map(|m| (m, true))
}

/// The route: `Some` for Gemini paths.
pub fn route(req: &Request) -> Option<Reply> {
    let (model, streaming) = parse_path(req.path())?;
    Some(handle(req, model, streaming))
}

pub fn error(code: u16, status: &str, message: &str) -> Reply {
    let body = json!({"error": {"code": code, "message": message, "status": status}});
    Reply::Full {
        status: code,
        headers: vec![(
            "content-type".into(),
            "application/json; charset=UTF-8".into(),
        )],
        body: body.to_string(),
    }
}

fn invalid(message: &str) -> Reply {
    error(400, "INVALID_ARGUMENT", message)
}

pub fn status_error(s: u16) -> Reply {
    match s {
        400 => invalid("Mock bad request (x-mock-status)."),
        401 | 403 => error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API."),
        404 => error(404, "NOT_FOUND", "models/unknown is not found for API version v1beta, or is not supported for generateContent."),
        429 => error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
        503 => error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        s if s >= 500 => error(s, "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"),
        s => error(s, "FAILED_PRECONDITION", "Mock error (x-mock-status)."),
    }
}

/// A member by its proto JSON name or its snake_case spelling (the API takes both).
fn get<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn validate(body: &Value) -> Result<(), Reply> {
    let Some(contents) = body.get("contents").and_then(Value::as_array) else {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    };
    if contents.is_empty() {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    let mut prev_calls = 0usize;
    for (i, c) in contents.iter().enumerate() {
        let role = c.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "model" && role != "function" {
            return Err(invalid(&format!(
                "Please use a valid role: user, model. (contents[{i}].role = {role:?})"
            )));
        }
        let Some(parts) = c
            .get("parts")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
        else {
            return Err(invalid(&format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )));
        };
        let (mut calls, mut responses) = (0usize, 0usize);
        for (j, p) in parts.iter().enumerate() {
            let at = format!("contents[{i}].parts[{j}]");
            if let Some(t) = p.get("text") {
                if !t.is_string() {
                    return Err(invalid(&format!(
                        "Invalid value at '{at}.text', expected a string"
                    )));
                }
            } else if let Some(d) = get(p, "inlineData", "inline_data") {
                let mime = get(d, "mimeType", "mime_type")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !mime.contains('/') || !d.get("data").is_some_and(Value::is_string) {
                    return Err(invalid(&format!("* GenerateContentRequest.{at}.inline_data: mime_type and data are required")));
                }
            } else if let Some(fc) = get(p, "functionCall", "function_call") {
                if role != "model" {
                    return Err(invalid(&format!(
                        "{at}: functionCall parts belong to model turns"
                    )));
                }
                if !fc.get("name").is_some_and(Value::is_string) {
                    return Err(invalid(&format!(
                        "* GenerateContentRequest.{at}.function_call.name: Name cannot be empty."
                    )));
                }
                if fc.get("args").is_some_and(|a| !a.is_object()) {
                    return Err(invalid(&format!("Invalid value at '{at}.function_call.args' (type.googleapis.com/google.protobuf.Struct)")));
                }
                calls += 1;
            } else if let Some(fr) = get(p, "functionResponse", "function_response") {
                if !fr.get("name").is_some_and(Value::is_string) {
                    return Err(invalid(&format!("* GenerateContentRequest.{at}.function_response.name: Name cannot be empty.")));
                }
                if !fr.get("response").is_some_and(Value::is_object) {
                    return Err(invalid(&format!("Invalid value at '{at}.function_response.response' (type.googleapis.com/google.protobuf.Struct)")));
                }
                responses += 1;
            } else {
                return Err(invalid(&format!("* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field")));
            }
        }
        if responses > 0 && responses != prev_calls {
            return Err(invalid("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn."));
        }
        prev_calls = calls;
    }
    if let Some(si) = get(body, "systemInstruction", "system_instruction") {
        if !si.get("parts").and_then(Value::as_array).is_some_and(|p| {
            p.iter()
                .all(|x| x.get("text").is_some_and(Value::is_string))
        }) {
            return Err(invalid(
                "* GenerateContentRequest.system_instruction.parts: only text parts are supported",
            ));
        }
    }
    if let Some(tools) = body.get("tools") {
        let ok = tools.as_array().is_some_and(|ts| {
            ts.iter().all(|t| {
                get(t, "functionDeclarations", "function_declarations")
                    .and_then(Value::as_array)
                    .is_some_and(|ds| {
                        ds.iter()
                            .all(|d| d.get("name").is_some_and(Value::is_string))
                    })
            })
        });
        if !ok {
            return Err(invalid("* GenerateContentRequest.tools[0].function_declarations[0].name: Name cannot be empty."));
        }
    }
    if let Some(g) = get(body, "generationConfig", "generation_config") {
        for k in [
            "maxOutputTokens",
            "max_output_tokens",
            "temperature",
            "topP",
            "top_p",
        ] {
            if g.get(k).is_some_and(|v| !v.is_number()) {
                return Err(invalid(&format!(
                    "Invalid value at 'generation_config.{k}'"
                )));
            }
        }
        if let Some(t) = g.get("temperature").and_then(Value::as_f64) {
            if !(0.0..=2.0).contains(&t) {
                return Err(invalid("* GenerateContentRequest.generation_config.temperature: temperature must be in [0.0, 2.0]"));
            }
        }
    }
    Ok(())
}

/// Prompt tokens: each turn framed like a chat message, text and function parts
/// counted with tiktoken, images at the flat image price.
fn prompt_tokens(model: &str, body: &Value) -> u64 {
    let mut n = REPLY_PRIMING;
    let count_parts = |parts: Option<&Value>| {
        let mut m = 0;
        for p in parts.and_then(Value::as_array).into_iter().flatten() {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                m += text::count(model, t);
            } else if get(p, "inlineData", "inline_data").is_some() {
                m += IMAGE_TOKENS;
            } else if let Some(f) = get(p, "functionCall", "function_call")
                .or_else(|| get(p, "functionResponse", "function_response"))
            {
                m += text::count(model, f.get("name").and_then(Value::as_str).unwrap_or(""));
                let payload = f.get("args").or_else(|| f.get("response"));
                m += text::count(model, &payload.map(Value::to_string).unwrap_or_default());
            }
        }
        m
    };
    if let Some(si) = get(body, "systemInstruction", "system_instruction") {
        n += TOKENS_PER_MESSAGE + text::count(model, "system") + count_parts(si.get("parts"));
    }
    for c in body
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = c.get("role").and_then(Value::as_str).unwrap_or("user");
        n += TOKENS_PER_MESSAGE + text::count(model, role) + count_parts(c.get("parts"));
    }
    n
}

fn handle(req: &Request, model: &str, streaming: bool) -> Reply {
    let ctl = match Ctl::from_request(req) {
        Ok(c) => c,
        Err(e) => return invalid(&e),
    };
    if let Some(s) = ctl.status {
        return status_error(s);
    }
    if req.method != "POST" {
        return error(
            405,
            "INVALID_ARGUMENT",
            &format!("Method {} not allowed", req.method),
        );
    }
    let has_key = req
        .header("x-goog-api-key")
        .is_some_and(|k| !k.trim().is_empty())
        || req.target.contains("key=");
    if !has_key {
        return status_error(403);
    }
    if streaming && !req.target.contains("alt=sse") {
        return invalid("mock-provider serves streamGenerateContent only with alt=sse");
    }
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return invalid("Invalid JSON payload received. Expected an object."),
        Err(e) => return invalid(&format!("Invalid JSON payload received. {e}")),
    };
    if let Err(r) = validate(&body) {
        return r;
    }
    let prompt = prompt_tokens(model, &body);
    let cached = ctl.cached.min(prompt);
    let seed = seed_of(model, body.get("contents"));
    let mut rng = Rng::new(seed);
    let gen = get(&body, "generationConfig", "generation_config");
    let max_out = gen
        .and_then(|g| get(g, "maxOutputTokens", "max_output_tokens"))
        .and_then(Value::as_u64);

    // A function call when tools are offered and the mode allows it.
    let decls: Vec<&Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| get(t, "functionDeclarations", "function_declarations"))
        .filter_map(Value::as_array)
        .flatten()
        .collect();
    let fcc = get(&body, "toolConfig", "tool_config")
        .and_then(|t| get(t, "functionCallingConfig", "function_calling_config"));
    let mode = fcc
        .and_then(|c| c.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("AUTO");
    let allowed: Vec<&str> = fcc
        .and_then(|c| get(c, "allowedFunctionNames", "allowed_function_names"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let decl = if mode == "NONE" {
        None
    } else {
        decls
            .iter()
            .find(|d| {
                allowed.is_empty()
                    || allowed.contains(&d.get("name").and_then(Value::as_str).unwrap_or(""))
            })
            .copied()
    };
    // After a function response, answer in text (as a model would).
    let answered = body
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|p| {
            p.iter()
                .any(|x| get(x, "functionResponse", "function_response").is_some())
        });
    let call = decl.filter(|_| !answered || mode == "ANY");

    let (parts_events, candidates, finish): (Vec<Value>, u64, &str) = if let Some(d) = call {
        let name = d
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("f")
            .to_string();
        let args = tool_arguments(d.get("parameters"), &mut rng);
        let args_v: Value = serde_json::from_str(&args).unwrap_or_else(|_| json!({}));
        let out = text::count(model, &name) + text::count(model, &args);
        (
            vec![json!([{"functionCall": {"name": name, "args": args_v}}])],
            out,
            "STOP",
        )
    } else {
        let mut pieces = text::reply_pieces(seed, ctl.reply_words);
        let cut = truncate_to_tokens(model, &mut pieces, max_out);
        let out = text::count(model, &pieces.concat());
        // Gemini streams a few words per event.
        let events = pieces
            .chunks(4)
            .map(|c| json!([{ "text": c.concat() }]))
            .collect();
        (events, out, if cut { "MAX_TOKENS" } else { "STOP" })
    };
    let usage = |cand: u64| {
        let mut u = json!({
            "promptTokenCount": prompt,
            "candidatesTokenCount": cand,
            "totalTokenCount": prompt + cand + ctl.reasoning,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        });
        if cached > 0 {
            u["cachedContentTokenCount"] = cached.into();
        }
        if ctl.reasoning > 0 {
            u["thoughtsTokenCount"] = ctl.reasoning.into();
        }
        u
    };
    let response_id = new_id("");
    let headers = |sse: bool| {
        vec![(
            "content-type".to_string(),
            if sse {
                "text/event-stream"
            } else {
                "application/json; charset=UTF-8"
            }
            .to_string(),
        )]
    };
    if !streaming {
        let parts: Vec<Value> = parts_events
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .cloned()
            .collect();
        // Adjacent text pieces are one part in a non-streamed answer.
        let mut merged: Vec<Value> = Vec::new();
        for p in parts {
            match (merged.last_mut(), p.get("text").and_then(Value::as_str)) {
                (Some(last), Some(t)) if last.get("text").is_some() => {
                    let joined = format!("{}{t}", last["text"].as_str().unwrap_or(""));
                    last["text"] = joined.into();
                }
                _ => merged.push(p),
            }
        }
        let mut r = json!({
            "candidates": [{"content": {"parts": merged, "role": "model"}, "finishReason": finish, "index": 0}],
            "modelVersion": model,
            "responseId": response_id,
        });
        if !ctl.no_usage {
            r["usageMetadata"] = usage(candidates);
        }
        return Reply::Full {
            status: 200,
            headers: headers(false),
            body: r.to_string(),
        };
    }
    let n = parts_events.len();
    let mut events = Vec::with_capacity(n);
    let mut so_far = 0u64;
    for (i, parts) in parts_events.into_iter().enumerate() {
        let last = i + 1 == n;
        let text: String = parts
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        so_far += text::count(model, &text);
        let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if last {
            cand["finishReason"] = finish.into();
        }
        let mut ev =
            json!({"candidates": [cand], "modelVersion": model, "responseId": response_id});
        if !ctl.no_usage {
            ev["usageMetadata"] = usage(if last { candidates } else { so_far });
        }
        events.push(format!("data: {ev}\r\n\r\n"));
    }
    if events.is_empty() {
        let mut ev = json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": finish, "index": 0}],
            "modelVersion": model, "responseId": response_id});
        if !ctl.no_usage {
            ev["usageMetadata"] = usage(0);
        }
        events.push(format!("data: {ev}\r\n\r\n"));
    }
    // x-mock-stream-error-after: N — an error event replaces everything after
    // the first N events (as Gemini reports a failure mid-stream).
    if let Some(n) = req
        .header("x-mock-stream-error-after")
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        events.truncate(n);
        let e = json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}});
        events.push(format!("data: {e}\r\n\r\n"));
    }
    Reply::Stream {
        headers: headers(true),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, body: Value, key: bool) -> Request {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if key {
            headers.push(("x-goog-api-key".to_string(), "k".to_string()));
        }
        Request {
            method: "POST".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers,
            body: body.to_string().into_bytes(),
        }
    }

    fn full(r: Reply) -> (u16, Value) {
        match r {
            Reply::Full { status, body, .. } => (status, serde_json::from_str(&body).unwrap()),
            Reply::Stream { .. } => panic!("expected a full reply"),
        }
    }

    #[test]
    fn text_answer_with_usage_and_key_check() {
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}],
            "generationConfig": {"maxOutputTokens": 5}});
        let (s, v) = full(
            route(&req(
                "/v1beta/models/gemini-2.0-flash:generateContent",
                body.clone(),
                true,
            ))
            .unwrap(),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
        let text = v["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap();
        assert!(text::count("gemini-2.0-flash", text) <= 5);
        assert_eq!(
            v["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap(),
            text::count("gemini-2.0-flash", text)
        );
        let (s, v) = full(
            route(&req(
                "/v1beta/models/gemini-2.0-flash:generateContent",
                body,
                false,
            ))
            .unwrap(),
        );
        assert_eq!(
            (s, v["error"]["status"].as_str()),
            (403, Some("PERMISSION_DENIED"))
        );
        assert!(route(&req("/v1/chat/completions", json!({}), true)).is_none());
    }

    #[test]
    fn function_calls_and_response_pairing() {
        let tools = json!([{"functionDeclarations": [{"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}]);
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "weather?"}]}], "tools": tools});
        let (_, v) = full(route(&req("/v1beta/models/m:generateContent", body, true)).unwrap());
        let fc = &v["candidates"][0]["content"]["parts"][0]["functionCall"];
        assert_eq!(fc["name"], "get_weather");
        assert!(fc["args"]["city"].is_string());
        let bad = json!({"contents": [
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {}}},
                                        {"functionResponse": {"name": "get_weather", "response": {}}}]}],
            "tools": tools});
        let (s, v) = full(route(&req("/v1beta/models/m:generateContent", bad, true)).unwrap());
        assert_eq!(s, 400);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("number of function response parts"));
    }

    #[test]
    fn stream_is_crlf_sse_with_final_usage() {
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]});
        let r = route(&req(
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            body,
            true,
        ))
        .unwrap();
        let Reply::Stream { events, .. } = r else {
            panic!()
        };
        assert!(events
            .iter()
            .all(|e| e.starts_with("data: ") && e.ends_with("\r\n\r\n")));
        let last: Value =
            serde_json::from_str(events.last().unwrap().trim_start_matches("data: ").trim())
                .unwrap();
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        let text: String = events
            .iter()
            .map(|e| serde_json::from_str::<Value>(e.trim_start_matches("data: ").trim()).unwrap())
            .map(|v| {
                v["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            last["usageMetadata"]["candidatesTokenCount"]
                .as_u64()
                .unwrap(),
            text::count("m", &text)
        );
    }
}
