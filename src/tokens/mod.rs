//! Token counting: exact BPE for OpenAI vocabularies, and the per-API prompt rules.
//!
//! `bpe`/`pretokenize`/`vocab` give an exact `o200k_base` / `cl100k_base` count of a
//! string; `prompt` turns a whole request body into what the provider bills;
//! `image` prices image parts. Counting is budgeted: past a per-request byte budget
//! the count degrades to a documented estimate instead of stalling a worker.

pub mod bpe;
pub mod cache;
pub mod image;
pub mod models;
pub mod pretokenize;
pub mod prompt;
#[allow(dead_code)] // build.rs uses all of it; the reader needs only some
mod table_layout;
pub mod vocab;

use serde::{Deserialize, Serialize};

/// A BPE vocabulary. Chosen per model by [`models::profile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-5, o-series.
    O200kBase,
    /// gpt-4, gpt-3.5, text-embedding-3 and ada-002.
    Cl100kBase,
}

impl Encoding {
    /// The name tiktoken uses, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }
}

/// Anything that can count tokens in a piece of text. Prompt rules are written
/// against this so they can be tested with any tokenizer and so the byte budget is
/// applied in one place.
pub trait TextCounter {
    /// Tokens in `text` (exact while within budget, estimated after).
    fn count(&mut self, text: &str) -> u64;
    /// True once any part of the count was estimated rather than tokenized.
    fn estimated(&self) -> bool;
    /// Bytes still tokenized exactly; also bounds how many messages a prompt
    /// walk reads (unbounded unless the counter has a budget).
    fn remaining_budget(&self) -> usize {
        usize::MAX
    }
}

/// Bytes per token assumed when text is estimated instead of tokenized. 4 is
/// OpenAI's published rule of thumb for English; it over-counts code and
/// under-counts CJK, which is why every estimated count is labelled as such.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

/// Estimate for text that is not tokenized (over budget, or no known vocabulary).
pub fn estimate_tokens(bytes: usize, bytes_per_token: f64) -> u64 {
    if bytes == 0 {
        return 0;
    }
    let per = if bytes_per_token.is_finite() && bytes_per_token > 0.0 {
        bytes_per_token
    } else {
        ESTIMATE_BYTES_PER_TOKEN as f64
    };
    ((bytes as f64) / per).ceil() as u64
}

/// Exact counting while `remaining` bytes of budget last; estimation afterwards.
pub struct BudgetedCounter<'a> {
    tokenizer: Option<&'a bpe::Tokenizer>,
    remaining: usize,
    bytes_per_token: f64,
    estimated: bool,
}

impl<'a> BudgetedCounter<'a> {
    /// `tokenizer: None` means the model has no known vocabulary: everything is estimated.
    pub fn new(
        tokenizer: Option<&'a bpe::Tokenizer>,
        byte_budget: usize,
        bytes_per_token: f64,
    ) -> Self {
        BudgetedCounter {
            tokenizer,
            remaining: byte_budget,
            bytes_per_token,
            estimated: tokenizer.is_none(),
        }
    }
}

impl TextCounter for BudgetedCounter<'_> {
    fn count(&mut self, text: &str) -> u64 {
        match self.tokenizer {
            Some(tok) if text.len() <= self.remaining => {
                self.remaining -= text.len();
                cache::count(tok, text)
            }
            _ => {
                if !text.is_empty() {
                    self.estimated = true;
                }
                self.remaining = 0;
                estimate_tokens(text.len(), self.bytes_per_token)
            }
        }
    }
    fn estimated(&self) -> bool {
        self.estimated
    }
    fn remaining_budget(&self) -> usize {
        self.remaining
    }
}
