//! Reading a normalised OpenAI chat request ([`ChatRequest`]) the same way for every
//! translator that builds a JSON body of turns (Gemini, Bedrock Converse).
//!
//! These are the steps whose logic does not depend on the provider: refusing
//! `n > 1`, parsing an assistant tool call's `arguments`, flattening a tool result
//! to text, merging neighbouring turns of one role, and the system prompt as text
//! blocks. What a provider names its blocks and fields stays in its own module.

use crate::dialect::doc::Node;
use serde_json::{json, Map, Value};

use super::{ChatRequest, Part, ToolCall, TranslateError};

/// `n` > 1 asks for several choices; the translators answer with one, so say so
/// instead of silently returning fewer.
pub(crate) fn refuse_n(body: Node<'_>, provider: &str) -> Result<(), TranslateError> {
    match body.get("n").and_then(Node::as_u64) {
        Some(n) if n > 1 => Err(TranslateError::bad_request(format!(
            "n: {provider} routes return one choice; n = {n} is not supported"
        ))),
        _ => Ok(()),
    }
}

/// An assistant tool call's `arguments` (a JSON string) as a JSON value; blank
/// arguments read as `{}`. `at` names the message in the error.
pub(crate) fn tool_call_args(
    c: &ToolCall,
    at: &dyn std::fmt::Display,
) -> Result<Value, TranslateError> {
    if c.arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(&c.arguments).map_err(|e| {
        TranslateError::bad_request(format!(
            "{at}: tool call {:?} arguments are not valid JSON ({e})",
            c.id
        ))
    })
}

/// A `tool` message's content joined as text; images cannot be sent back as a
/// tool result, so they are refused naming `provider`.
pub(crate) fn tool_result_text(
    parts: &[Part],
    at: &dyn std::fmt::Display,
    provider: &str,
) -> Result<String, TranslateError> {
    let mut text = String::new();
    for p in parts {
        match p {
            Part::Text(t) => text.push_str(t),
            Part::Image(_) => {
                return Err(TranslateError::bad_request(format!(
                    "{at}: images in tool results cannot be translated for {provider}"
                )))
            }
        }
    }
    Ok(text)
}

/// Appends one turn, dropping it when it has no blocks and merging it into the
/// previous turn of the same role (both providers want user and assistant turns to
/// alternate, e.g. several tool results, or a tool result followed by user text).
pub(crate) fn push_turn(
    turns: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    blocks: Vec<Value>,
) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, b)) if *last == role => b.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// The non-empty system messages as `{"text": ...}` blocks.
pub(crate) fn system_text_blocks(r: &ChatRequest) -> Vec<Value> {
    r.system
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| json!({ "text": s }))
        .collect()
}

/// The sampling options both providers spell alike (`temperature`, `topP`,
/// `stopSequences`) plus the output cap under the provider's own key
/// (`maxTokens` for Converse, `maxOutputTokens` for Gemini). Empty when the client
/// set none of them.
pub(crate) fn sampling_config(r: &ChatRequest, max_tokens_key: &str) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(n) = r.max_tokens {
        m.insert(max_tokens_key.into(), n.into());
    }
    if let Some(t) = r.temperature {
        m.insert("temperature".into(), t.into());
    }
    if let Some(t) = r.top_p {
        m.insert("topP".into(), t.into());
    }
    if !r.stop.is_empty() {
        m.insert("stopSequences".into(), r.stop.clone().into());
    }
    m
}
