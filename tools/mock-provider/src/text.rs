//! Deterministic reply text and independent token counts (tiktoken-rs).

use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// Words the replies are drawn from: varied, with punctuation-adjacent
/// forms and non-ASCII (2-, 3- and 4-byte UTF-8) so that SSE chunks and
/// UTF-8 sequences exercise the filter's stream parsing.
const WORDS: &[&str] = &[
    "the",
    "gateway",
    "meters",
    "every",
    "token",
    "that",
    "flows",
    "through",
    "envoy",
    "while",
    "streaming",
    "replies",
    "arrive",
    "in",
    "small",
    "pieces",
    "café",
    "naïve",
    "über",
    "señor",
    "Zürich",
    "résumé",
    "façade",
    "日本語",
    "数据",
    "привет",
    "Ελλάδα",
    "🚀",
    "emoji",
    "model",
    "prompt",
    "completion",
    "usage",
    "counts",
    "are",
    "checked",
    "against",
    "billing",
    "limits",
    "quickly",
    "and",
    "precisely",
    "with",
    "numbers",
    "like",
    "42",
    "3.14",
    "2025",
    "a",
    "router",
    "forwards",
    "each",
    "request",
    "upstream",
    "to",
    "providers",
    "such",
    "as",
    "anthropic",
    "openai",
    "mock",
    "servers",
    "return",
    "JSON",
    "or",
    "SSE",
    "events",
    "über-cool",
    "don't",
    "can't",
    "well-known",
    "x86_64",
    "UTF-8",
    "Straße",
    "mañana",
    "crème",
    "brûlée",
    "東京",
    "한국어",
    "مرحبا",
    "שלום",
    "✓",
    "∑",
    "λ",
    "fn",
    "main()",
    "{ok}",
    "[done]",
];

/// FNV-1a, used to seed the deterministic reply from the prompt.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// xorshift64*: a small deterministic generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }
}

/// The reply as a list of pieces; concatenated they give the reply text.
/// Each piece is one word with its leading space (none on the first),
/// which is how the stream endpoints split their deltas.
pub fn reply_pieces(seed: u64, words: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(words);
    let mut sentence_start = true;
    let mut since_period = 0usize;
    let mut sentence_len = 6 + rng.below(6);
    for i in 0..words {
        let w = WORDS[rng.below(WORDS.len())];
        let mut piece = String::with_capacity(w.len() + 2);
        if i > 0 {
            piece.push(' ');
        }
        if sentence_start {
            let mut chars = w.chars();
            if let Some(c) = chars.next() {
                piece.extend(c.to_uppercase());
                piece.push_str(chars.as_str());
            }
        } else {
            piece.push_str(w);
        }
        since_period += 1;
        sentence_start = false;
        if i + 1 == words || since_period >= sentence_len {
            piece.push(if rng.below(5) == 0 { '!' } else { '.' });
            sentence_start = true;
            since_period = 0;
            sentence_len = 6 + rng.below(6);
        } else if rng.below(9) == 0 {
            piece.push(',');
        }
        out.push(piece);
    }
    out
}

pub fn reply_text(seed: u64, words: usize) -> String {
    reply_pieces(seed, words).concat()
}

/// The BPE used for `model`: tiktoken's mapping, and o200k_base for models
/// it does not know (Claude, mock names).
pub fn bpe(model: &str) -> &'static CoreBPE {
    let tok = get_tokenizer(model).unwrap_or(Tokenizer::O200kBase);
    match tok {
        Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        Tokenizer::P50kBase => tiktoken_rs::p50k_base_singleton(),
        Tokenizer::R50kBase | Tokenizer::Gpt2 => tiktoken_rs::r50k_base_singleton(),
        Tokenizer::P50kEdit => tiktoken_rs::p50k_edit_singleton(),
        Tokenizer::O200kHarmony => tiktoken_rs::o200k_harmony_singleton(),
        Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton(),
    }
}

/// Tokens of `text` encoded as ordinary text (special-token strings in user
/// text are not special, as the providers treat them).
pub fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe(model).count_ordinary(text) as u64
}

/// OpenAI cookbook framing: 3 tokens per message, +1 per `name`, +3 priming.
pub const TOKENS_PER_MESSAGE: u64 = 3;
pub const TOKENS_PER_NAME: u64 = 1;
pub const REPLY_PRIMING: u64 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_is_deterministic_varied_and_sized() {
        let a = reply_pieces(7, 50);
        let b = reply_pieces(7, 50);
        assert_eq!(a, b);
        assert_eq!(a.len(), 50);
        let text = a.concat();
        assert_eq!(text.split_whitespace().count(), 50);
        let distinct: std::collections::HashSet<_> = text.split_whitespace().collect();
        assert!(distinct.len() > 20);
        assert_ne!(reply_text(8, 50), text);
        assert!(!reply_text(1, 400).is_ascii());
    }

    #[test]
    fn zero_words_is_empty() {
        assert!(reply_pieces(1, 0).is_empty());
    }

    #[test]
    fn counts_like_tiktoken() {
        // "hello world" is 2 tokens in both cl100k and o200k.
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert_eq!(count("gpt-4", "hello world"), 2);
        assert_eq!(count("claude-sonnet-4-5", "hello world"), 2);
        assert_eq!(count("gpt-4o", ""), 0);
        // Special-token text is counted as ordinary text.
        assert!(count("gpt-4o", "<|endoftext|>") > 1);
    }
}
