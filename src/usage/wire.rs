//! Borrowed stream-delta wire types shared by the stream meter
//! ([`super::stream`]) and the mid-stream cut-off (`crate::limits::cutoff`).
//!
//! Both read the same billed completion text out of each SSE event; keeping the
//! members in one place means a new delta field (a new kind of billed text) is
//! seen by metering and by the cut-off alike. Only the text members are
//! deserialised; serde skips the rest without building values.

use serde::Deserialize;

use super::Text;

/// OpenAI chat-completions `choices[].delta`.
#[derive(Deserialize)]
pub(crate) struct OaDelta<'a> {
    #[serde(default, borrow)]
    pub(crate) content: Text<'a>,
    #[serde(default, borrow)]
    pub(crate) reasoning_content: Text<'a>,
    #[serde(default, borrow)]
    pub(crate) reasoning: Text<'a>,
    #[serde(default, borrow)]
    pub(crate) refusal: Text<'a>,
    #[serde(default, borrow)]
    pub(crate) tool_calls: Option<Vec<OaToolCall<'a>>>,
}

/// One entry of an OpenAI delta's `tool_calls`.
#[derive(Deserialize)]
pub(crate) struct OaToolCall<'a> {
    #[serde(default, borrow)]
    pub(crate) function: Option<OaFunction<'a>>,
}

/// The `function` of an OpenAI streamed tool call (name, argument fragment).
#[derive(Deserialize)]
pub(crate) struct OaFunction<'a> {
    #[serde(default, borrow)]
    pub(crate) name: Text<'a>,
    #[serde(default, borrow)]
    pub(crate) arguments: Text<'a>,
}

impl OaDelta<'_> {
    /// Every billed text member of the delta, in wire order: content, reasoning
    /// (both spellings), refusal, then each tool call's name and arguments.
    pub(crate) fn for_each_text(&self, mut f: impl FnMut(&Text<'_>)) {
        f(&self.content);
        f(&self.reasoning_content);
        f(&self.reasoning);
        f(&self.refusal);
        for func in self
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|t| t.function.as_ref())
        {
            f(&func.name);
            f(&func.arguments);
        }
    }
}

/// Anthropic Messages `content_block_delta.delta`.
#[derive(Deserialize)]
pub(crate) struct AnDelta<'a> {
    #[serde(default, borrow)]
    pub(crate) text: Text<'a>,
    #[serde(default, borrow)]
    pub(crate) partial_json: Text<'a>,
    #[serde(default, borrow)]
    pub(crate) thinking: Text<'a>,
}

impl AnDelta<'_> {
    /// Every billed text member of the delta: text, tool-input JSON, thinking.
    pub(crate) fn for_each_text(&self, mut f: impl FnMut(&Text<'_>)) {
        f(&self.text);
        f(&self.partial_json);
        f(&self.thinking);
    }
}
