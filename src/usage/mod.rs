//! What the provider says it billed: `usage` from JSON responses and SSE streams.
//!
//! Kept apart from translation and counting so every path (JSON, OpenAI SSE,
//! Anthropic SSE, and the delta-count fallback) feeds one `Usage` type.

pub mod stream;

/// Token usage of one exchange, in OpenAI terms (Anthropic's are mapped in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, including cached ones (OpenAI `prompt_tokens`; Anthropic
    /// `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`).
    pub prompt_tokens: u64,
    /// Output tokens, including reasoning tokens.
    pub completion_tokens: u64,
    /// Cached input tokens (`prompt_tokens_details.cached_tokens` / `cache_read_input_tokens`).
    pub cached_tokens: u64,
    /// Anthropic `cache_creation_input_tokens`.
    pub cache_creation_tokens: u64,
    /// Reasoning tokens (`completion_tokens_details.reasoning_tokens`).
    pub reasoning_tokens: u64,
}

impl Usage {
    /// prompt + completion, as OpenAI reports `total_tokens`.
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}
