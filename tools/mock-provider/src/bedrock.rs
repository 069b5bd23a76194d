//! AWS Bedrock Converse / ConverseStream (`POST /model/{modelId}/converse`,
//! `/converse-stream`), in the shapes of the Bedrock API reference
//! (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html).
//!
//! Every request must carry a well-formed SigV4 `Authorization` for service
//! `bedrock` with `x-amz-date` (and, when sent, an `x-amz-content-sha256` that
//! matches the body). With `x-mock-aws-secret: <secret>` the mock also recomputes
//! the signature over the request exactly as it arrived (path, signed headers,
//! body), so an e2e test proves that what reached the provider is what was signed.
//! The SigV4, SHA-256 and CRC-32 code here is independent of tollgate's (sha2 and
//! crc32fast crates), so the e2e tests cross-check both.
//!
//! ConverseStream answers with real `application/vnd.amazon.eventstream` frames;
//! `x-mock-stream-error-after: N` ends it with a `throttlingException` frame
//! after N frames.
//! Usage counts with tiktoken like the other endpoints; `x-mock-cached-tokens` →
//! `cacheReadInputTokens`, `x-mock-cache-creation-tokens` → `cacheWriteInputTokens`
//! (both outside `inputTokens`, as Bedrock reports them).

use crate::common::*;
use crate::http::{self, Request};
use crate::text::{self, Rng, REPLY_PRIMING, TOKENS_PER_MESSAGE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{self, Write};

/// `(model id, streaming)` when `path` is a Converse call; the id percent-decoded.
fn parse_path(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (id, stream) = if let Some(id) = rest.strip_suffix("/converse-stream") {
        (id, true)
    } else {
        (rest.strip_suffix("/converse")?, false)
    };
    Some((percent_decode(id)?, stream))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn error(status: u16, ty: &str, message: &str) -> Reply {
    Reply::Full {
        status,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "x-amzn-errortype".into(),
                format!("{ty}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            ),
            ("x-amzn-requestid".into(), new_id("")),
        ],
        body: json!({ "message": message }).to_string(),
    }
}

fn invalid(message: &str) -> Reply {
    error(400, "ValidationException", message)
}

pub fn status_error(s: u16) -> Reply {
    match s {
        400 => invalid("Mock bad request (x-mock-status)."),
        401 | 403 => error(
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => error(
            404,
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        429 => error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => error(
            503,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        s if s >= 500 => error(
            s,
            "InternalServerException",
            "The server encountered an internal error.",
        ),
        s => error(s, "ValidationException", "Mock error (x-mock-status)."),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Checks the SigV4 headers; with `x-mock-aws-secret`, the signature itself.
fn check_sigv4(req: &Request) -> Result<(), Reply> {
    let deny = |m: &str| Err(error(403, "UnrecognizedClientException", m));
    let Some(auth) = req.header("authorization") else {
        return deny("Missing Authentication Token");
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return deny("Authorization header requires the AWS4-HMAC-SHA256 algorithm.");
    };
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    let (Some(cred), Some(signed), Some(sig)) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    ) else {
        return deny("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters.");
    };
    let scope: Vec<&str> = cred.split('/').collect();
    if scope.len() != 5
        || scope[1].len() != 8
        || scope[3] != "bedrock"
        || scope[4] != "aws4_request"
    {
        return deny(&format!(
            "Credential should be scoped to a valid region and the service bedrock: {cred}"
        ));
    }
    if sig.len() != 64
        || !sig
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return deny("Signature must be 64 lower-case hex digits.");
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host")
        || !names.contains(&"x-amz-date")
        || names.windows(2).any(|w| w[0] >= w[1])
    {
        return deny("SignedHeaders must be sorted and include host and x-amz-date.");
    }
    let Some(date) = req.header("x-amz-date") else {
        return deny("Missing x-amz-date.");
    };
    if date.len() != 16 || !date.starts_with(scope[1]) || date.as_bytes().get(8) != Some(&b'T') {
        return deny(&format!(
            "x-amz-date {date:?} does not match the credential date {}",
            scope[1]
        ));
    }
    let body_sha = hex(&Sha256::digest(&req.body));
    if let Some(h) = req.header("x-amz-content-sha256") {
        if h != body_sha {
            return Err(invalid(
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
    }
    let Some(secret) = req.header("x-mock-aws-secret") else {
        return Ok(());
    };
    // Recompute: canonical request over what arrived.
    let mut creq = format!("{}\n{}\n\n", req.method, uri_encode(req.path(), true));
    for n in &names {
        let vals: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if vals.is_empty() {
            return deny(&format!("signed header {n} is missing from the request"));
        }
        creq.push_str(&format!("{n}:{}\n", vals.join(",")));
    }
    creq.push_str(&format!("\n{signed}\n{body_sha}"));
    let sts = format!(
        "AWS4-HMAC-SHA256\n{date}\n{}/{}/{}/{}\n{}",
        scope[1],
        scope[2],
        scope[3],
        scope[4],
        hex(&Sha256::digest(creq.as_bytes()))
    );
    let mut k = hmac(format!("AWS4{secret}").as_bytes(), scope[1].as_bytes());
    for part in [scope[2], scope[3], scope[4]] {
        k = hmac(&k, part.as_bytes());
    }
    let want = hex(&hmac(&k, sts.as_bytes()));
    if want != sig {
        return Err(error(403, "InvalidSignatureException", &format!(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{creq}'\n\nThe String-to-Sign should have been\n'{sts}'\n"
        )));
    }
    Ok(())
}

fn validate(body: &Value) -> Result<(), Reply> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(invalid("1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null"));
    };
    let mut prev_tool_ids: Vec<&str> = Vec::new();
    let mut tool_blocks = false;
    let mut prev_role = "";
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(invalid(&format!(
                "messages.{i}.role: must be user or assistant"
            )));
        }
        if i == 0 && role != "user" {
            return Err(invalid("A conversation must start with a user message. Try again with a conversation that starts with a user message."));
        }
        if role == prev_role {
            return Err(invalid("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again."));
        }
        prev_role = role;
        let Some(content) = m
            .get("content")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        else {
            return Err(invalid(&format!(
                "messages.{i}.content: must be a non-empty list of content blocks"
            )));
        };
        let mut ids = Vec::new();
        for (j, b) in content.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            if let Some(t) = b.get("text") {
                if t.as_str().is_none_or(|t| t.trim().is_empty()) {
                    return Err(invalid(&format!("The text field in the ContentBlock object at {at} is blank. Add text to the text field, and try again.")));
                }
            } else if let Some(img) = b.get("image") {
                let fmt_ok = matches!(
                    img.get("format").and_then(Value::as_str),
                    Some("png" | "jpeg" | "gif" | "webp")
                );
                if !fmt_ok || !img.pointer("/source/bytes").is_some_and(Value::is_string) {
                    return Err(invalid(&format!(
                        "{at}.image: format must be png|jpeg|gif|webp and source.bytes base64"
                    )));
                }
            } else if let Some(tu) = b.get("toolUse") {
                tool_blocks = true;
                if role != "assistant" {
                    return Err(invalid(&format!(
                        "{at}: toolUse blocks belong to assistant messages"
                    )));
                }
                let id = tu.get("toolUseId").and_then(Value::as_str);
                if id.is_none()
                    || !tu.get("name").is_some_and(Value::is_string)
                    || !tu.get("input").is_some_and(Value::is_object)
                {
                    return Err(invalid(&format!(
                        "{at}.toolUse: toolUseId, name and an object input are required"
                    )));
                }
                ids.extend(id);
            } else if let Some(tr) = b.get("toolResult") {
                tool_blocks = true;
                let id = tr.get("toolUseId").and_then(Value::as_str).unwrap_or("");
                if role != "user" || !prev_tool_ids.contains(&id) {
                    return Err(invalid(&format!("The toolResult block at {at} references toolUseId {id:?}, which is not a toolUse in the previous assistant message.")));
                }
                if !tr.get("content").is_some_and(Value::is_array) {
                    return Err(invalid(&format!("{at}.toolResult.content: must be a list")));
                }
            } else {
                return Err(invalid(&format!("{at}: unknown content block")));
            }
        }
        if role == "user" && !prev_tool_ids.is_empty() {
            let answered = content
                .iter()
                .filter(|b| b.get("toolResult").is_some())
                .count();
            if answered != prev_tool_ids.len() {
                return Err(invalid("Expected toolResult blocks at messages.{i}.content for the following Ids: every toolUse of the previous turn"));
            }
        }
        prev_tool_ids = ids;
    }
    if prev_role != "user" {
        return Err(invalid("A conversation must end with a user message. Try again with a conversation that ends with a user message."));
    }
    if let Some(sys) = body.get("system") {
        if !sys.as_array().is_some_and(|s| {
            s.iter()
                .all(|b| b.get("text").is_some_and(Value::is_string))
        }) {
            return Err(invalid("system: must be a list of {\"text\": ...} blocks"));
        }
    }
    if let Some(ic) = body.get("inferenceConfig") {
        if ic
            .get("maxTokens")
            .is_some_and(|n| n.as_u64().is_none_or(|n| n == 0))
        {
            return Err(invalid(
                "inferenceConfig.maxTokens: Member must have value greater than or equal to 1",
            ));
        }
        if ic
            .get("temperature")
            .and_then(Value::as_f64)
            .is_some_and(|t| !(0.0..=1.0).contains(&t))
        {
            return Err(invalid(
                "inferenceConfig.temperature: Member must have value less than or equal to 1",
            ));
        }
    }
    match body.get("toolConfig") {
        Some(tc) => {
            let ok = tc.get("tools").and_then(Value::as_array).is_some_and(|ts| {
                !ts.is_empty()
                    && ts.iter().all(|t| {
                        t.pointer("/toolSpec/name").is_some_and(Value::is_string)
                            && t.pointer("/toolSpec/inputSchema/json")
                                .is_some_and(Value::is_object)
                    })
            });
            if !ok {
                return Err(invalid(
                    "toolConfig.tools: each tool needs toolSpec.name and toolSpec.inputSchema.json",
                ));
            }
        }
        None if tool_blocks => {
            return Err(invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks."));
        }
        None => {}
    }
    Ok(())
}

fn prompt_tokens(model: &str, body: &Value) -> u64 {
    let mut n = REPLY_PRIMING;
    let count_blocks = |blocks: Option<&Value>| {
        let mut m = 0;
        for b in blocks.and_then(Value::as_array).into_iter().flatten() {
            if let Some(t) = b.get("text").and_then(Value::as_str) {
                m += text::count(model, t);
            } else if b.get("image").is_some() {
                m += IMAGE_TOKENS;
            } else if let Some(tu) = b.get("toolUse") {
                m += text::count(model, tu.get("name").and_then(Value::as_str).unwrap_or(""));
                m += text::count(
                    model,
                    &tu.get("input").map(Value::to_string).unwrap_or_default(),
                );
            } else if let Some(tr) = b.get("toolResult") {
                for c in tr
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = c.get("text").and_then(Value::as_str) {
                        m += text::count(model, t);
                    } else if let Some(j) = c.get("json") {
                        m += text::count(model, &j.to_string());
                    }
                }
            }
        }
        m
    };
    if let Some(sys) = body.get("system") {
        n += TOKENS_PER_MESSAGE + text::count(model, "system") + count_blocks(Some(sys));
    }
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        n += TOKENS_PER_MESSAGE + text::count(model, role) + count_blocks(m.get("content"));
    }
    n
}

/// What the model "says": the blocks in order, as (kind, pieces) for streaming.
enum Block {
    Text(Vec<String>),
    Tool {
        id: String,
        name: String,
        input: Value,
        pieces: Vec<String>,
    },
}

struct Answer {
    blocks: Vec<Block>,
    stop: &'static str,
    usage: Value,
}

fn answer(model: &str, body: &Value, ctl: &Ctl) -> Answer {
    let prompt = prompt_tokens(model, body);
    let read = ctl.cached.min(prompt);
    let write = ctl.cache_creation.min(prompt - read);
    let input = prompt - read - write;
    let seed = seed_of(model, body.get("messages"));
    let mut rng = Rng::new(seed);
    let tools = body.pointer("/toolConfig/tools").and_then(Value::as_array);
    let choice = body.pointer("/toolConfig/toolChoice");
    let last_is_result = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()));
    let forced = choice.is_some_and(|c| c.get("any").is_some() || c.get("tool").is_some());
    let tool = tools.filter(|_| forced || !last_is_result).and_then(|ts| {
        let wanted = choice
            .and_then(|c| c.pointer("/tool/name"))
            .and_then(Value::as_str);
        ts.iter()
            .find(|t| {
                wanted
                    .is_none_or(|w| t.pointer("/toolSpec/name").and_then(Value::as_str) == Some(w))
            })
            .and_then(|t| t.get("toolSpec"))
    });
    let (blocks, output, stop) = if let Some(spec) = tool {
        let name = spec
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("tool")
            .to_string();
        let args = tool_arguments(spec.pointer("/inputSchema/json"), &mut rng);
        let input_v: Value = serde_json::from_str(&args).unwrap_or_else(|_| json!({}));
        let out = text::count(model, &name) + text::count(model, &args);
        let block = Block::Tool {
            id: new_id("tooluse_"),
            name,
            input: input_v,
            pieces: split_chars(&args, 7),
        };
        (vec![block], out, "tool_use")
    } else {
        let mut p = text::reply_pieces(seed, ctl.reply_words);
        let max = body
            .pointer("/inferenceConfig/maxTokens")
            .and_then(Value::as_u64);
        let cut = truncate_to_tokens(model, &mut p, max);
        let out = text::count(model, &p.concat());
        (
            vec![Block::Text(p)],
            out,
            if cut { "max_tokens" } else { "end_turn" },
        )
    };
    let output = output + ctl.reasoning;
    let mut usage =
        json!({"inputTokens": input, "outputTokens": output, "totalTokens": prompt + output});
    if read > 0 {
        usage["cacheReadInputTokens"] = read.into();
    }
    if write > 0 {
        usage["cacheWriteInputTokens"] = write.into();
    }
    Answer {
        blocks,
        stop,
        usage,
    }
}

/// Parse and check a Converse request: `Err` is the error reply to send.
fn prepare(req: &Request) -> Result<(String, Value, Ctl), Reply> {
    let ctl = Ctl::from_request(req).map_err(|e| invalid(&e))?;
    if let Some(s) = ctl.status {
        return Err(status_error(s));
    }
    if req.method != "POST" {
        return Err(error(405, "ValidationException", "Only POST is supported."));
    }
    check_sigv4(req)?;
    let Some((model, _)) = parse_path(req.path()) else {
        return Err(error(404, "UnknownOperationException", "Unknown operation"));
    };
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(error(
                400,
                "SerializationException",
                "Could not parse the request body as JSON.",
            ))
        }
    };
    validate(&body)?;
    Ok((model, body, ctl))
}

/// The non-streaming route (`/converse`); `None` for other paths.
pub fn route(req: &Request) -> Option<Reply> {
    let (_, stream) = parse_path(req.path())?;
    if stream {
        // Served by `serve_stream` (binary frames); reaching here is a bug.
        return Some(error(
            500,
            "InternalServerException",
            "converse-stream is served by serve_stream",
        ));
    }
    let (model, body, ctl) = match prepare(req) {
        Ok(v) => v,
        Err(r) => return Some(r),
    };
    let a = answer(&model, &body, &ctl);
    let content: Vec<Value> = a
        .blocks
        .iter()
        .map(|b| match b {
            Block::Text(p) => json!({ "text": p.concat() }),
            Block::Tool {
                id, name, input, ..
            } => json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}),
        })
        .collect();
    let mut out = json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": a.stop,
        "metrics": {"latencyMs": 42},
    });
    if !ctl.no_usage {
        out["usage"] = a.usage;
    }
    Some(Reply::Full {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-amzn-requestid".into(), new_id("")),
        ],
        body: out.to_string(),
    })
}

/// One eventstream frame (independent of tollgate's encoder: crc32fast).
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = (12 + h.len() + payload.len() + 4) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let c = crc32fast::hash(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let c = crc32fast::hash(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out
}

fn event(ty: &str, mut payload: Value) -> Vec<u8> {
    // Bedrock pads event payloads with a `p` member of varying length.
    if let Some(o) = payload.as_object_mut() {
        o.insert(
            "p".into(),
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
                .get(..(ty.len() * 3) % 36)
                .unwrap_or("")
                .into(),
        );
    }
    frame(
        &[
            (":event-type", ty),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// The frames of a ConverseStream answer.
pub fn stream_frames(model: &str, body: &Value, ctl: &Ctl) -> Vec<Vec<u8>> {
    let a = answer(model, body, ctl);
    let mut frames = vec![event("messageStart", json!({"role": "assistant"}))];
    for (i, b) in a.blocks.iter().enumerate() {
        match b {
            Block::Text(pieces) => {
                for p in pieces {
                    frames.push(event(
                        "contentBlockDelta",
                        json!({"contentBlockIndex": i, "delta": {"text": p}}),
                    ));
                }
            }
            Block::Tool {
                id, name, pieces, ..
            } => {
                frames.push(event("contentBlockStart", json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": id, "name": name}}})));
                for p in pieces {
                    frames.push(event(
                        "contentBlockDelta",
                        json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": p}}}),
                    ));
                }
            }
        }
        frames.push(event("contentBlockStop", json!({ "contentBlockIndex": i })));
    }
    frames.push(event("messageStop", json!({ "stopReason": a.stop })));
    if !ctl.no_usage {
        frames.push(event(
            "metadata",
            json!({"usage": a.usage, "metrics": {"latencyMs": 42}}),
        ));
    }
    frames
}

/// Serves `/converse-stream` itself (its body is binary, which `Reply` does not
/// carry). `None` for every other request.
pub fn serve_stream<W: Write>(
    req: &Request,
    w: &mut W,
    keep_alive: bool,
) -> Option<io::Result<()>> {
    let (_, true) = parse_path(req.path())? else {
        return None;
    };
    {
        let mut h = crate::REQUESTS.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() >= crate::HISTORY {
            h.pop_front();
        }
        h.push_back(crate::record(req));
    }
    let r = match prepare(req) {
        Err(Reply::Full {
            status,
            headers,
            body,
        }) => http::write_full(w, status, &headers, body.as_bytes(), keep_alive, false),
        Err(Reply::Stream { .. }) => Ok(()),
        Ok((model, body, ctl)) => {
            let mut frames = stream_frames(&model, &body, &ctl);
            // x-mock-stream-error-after: N — a throttlingException frame replaces
            // everything after the first N frames (Bedrock's mid-stream exception).
            if let Some(n) = req
                .header("x-mock-stream-error-after")
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                frames.truncate(n);
                frames.push(frame(
                    &[
                        (":exception-type", "throttlingException"),
                        (":content-type", "application/json"),
                        (":message-type", "exception"),
                    ],
                    br#"{"message":"Too many tokens, please wait before trying again."}"#,
                ));
            }
            let headers = vec![
                (
                    "content-type".to_string(),
                    "application/vnd.amazon.eventstream".to_string(),
                ),
                ("x-amzn-requestid".to_string(), new_id("")),
            ];
            http::write_chunks(w, 200, &headers, &frames, ctl.delay, keep_alive)
        }
    };
    Some(r.and_then(|()| {
        if keep_alive {
            Ok(())
        } else {
            Err(io::Error::other("close"))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, body: &Value, auth: bool) -> Request {
        let body = body.to_string().into_bytes();
        let mut headers = vec![
            (
                "host".to_string(),
                "bedrock-runtime.us-east-1.amazonaws.com".to_string(),
            ),
            ("content-type".to_string(), "application/json".to_string()),
            ("x-amz-date".to_string(), "20261123T114805Z".to_string()),
        ];
        if auth {
            // Signed by hand with the mock's own code path below.
            headers.push(("authorization".to_string(), String::new()));
        }
        let mut r = Request {
            method: "POST".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers,
            body,
        };
        if auth {
            let sig = sign(&r, "secret");
            if let Some(h) = r.headers.iter_mut().find(|(k, _)| k == "authorization") {
                h.1 = sig;
            }
            r.headers
                .push(("x-mock-aws-secret".to_string(), "secret".to_string()));
        }
        r
    }

    /// Signs content-type;host;x-amz-date like botocore would.
    fn sign(r: &Request, secret: &str) -> String {
        let creq = format!(
            "POST\n{}\n\ncontent-type:application/json\nhost:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-date:20261123T114805Z\n\ncontent-type;host;x-amz-date\n{}",
            uri_encode(r.path(), true),
            hex(&Sha256::digest(&r.body))
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n20261123T114805Z\n20261123/us-east-1/bedrock/aws4_request\n{}",
            hex(&Sha256::digest(creq.as_bytes()))
        );
        let mut k = hmac(format!("AWS4{secret}").as_bytes(), b"20261123");
        for p in ["us-east-1", "bedrock", "aws4_request"] {
            k = hmac(&k, p.as_bytes());
        }
        format!(
            "AWS4-HMAC-SHA256 Credential=AKID/20261123/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={}",
            hex(&hmac(&k, sts.as_bytes()))
        )
    }

    fn full(r: Reply) -> (u16, Value) {
        match r {
            Reply::Full { status, body, .. } => (status, serde_json::from_str(&body).unwrap()),
            Reply::Stream { .. } => panic!("expected a full reply"),
        }
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn converse_checks_signature_and_answers_with_usage() {
        let body = json!({"messages": [{"role": "user", "content": [{"text": "hello"}]}], "inferenceConfig": {"maxTokens": 6}});
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        let (s, v) = full(route(&req(path, &body, true)).unwrap());
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["stopReason"], "max_tokens");
        let text = v["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap();
        assert_eq!(
            v["usage"]["outputTokens"].as_u64().unwrap(),
            text::count("m", text)
        );
        let (s, _) = full(route(&req(path, &body, false)).unwrap());
        assert_eq!(s, 403);
        let mut tampered = req(path, &body, true);
        tampered.body = br#"{"messages":[{"role":"user","content":[{"text":"hellO"}]}]}"#.to_vec();
        let (s, v) = full(route(&tampered).unwrap());
        assert_eq!(s, 403);
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("signature we calculated"));
    }

    #[test]
    fn tool_history_needs_tool_config_and_pairing() {
        let path = "/model/m/converse";
        let body = json!({"messages": [
            {"role": "user", "content": [{"text": "weather?"}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "w", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}}]}]});
        let (s, v) = full(route(&req(path, &body, true)).unwrap());
        assert_eq!(s, 400);
        assert!(v["message"].as_str().unwrap().contains("toolConfig"));
        let mut ok = body.clone();
        ok["toolConfig"] = json!({"tools": [{"toolSpec": {"name": "w", "inputSchema": {"json": {"type": "object"}}}}]});
        let (s, v) = full(route(&req(path, &ok, true)).unwrap());
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["stopReason"], "end_turn");
    }

    #[test]
    fn stream_frames_have_valid_crcs() {
        let body = json!({"messages": [{"role": "user", "content": [{"text": "hello"}]}]});
        let frames = stream_frames(
            "m",
            &body,
            &Ctl {
                reply_words: 5,
                ..Ctl::default()
            },
        );
        for f in &frames {
            let total = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
            assert_eq!(total, f.len());
            assert_eq!(crc32fast::hash(&f[..8]).to_be_bytes(), f[8..12]);
            assert_eq!(
                crc32fast::hash(&f[..total - 4]).to_be_bytes(),
                f[total - 4..]
            );
        }
        assert!(String::from_utf8_lossy(frames.last().unwrap()).contains("\"outputTokens\""));
    }
}
