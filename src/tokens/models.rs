//! Which vocabulary and which prompt framing a model name implies.
//!
//! Billing differs per model family (gpt-5 renders chats in the harmony format,
//! gpt-4o in ChatML, search models bill only the text), so the name a client sends is
//! mapped once to a [`ModelProfile`] and the prompt rules in `prompt` follow it.
//! Names are matched by prefix after removing fine-tune (`ft:base:org::id`) and
//! router (`openai/`) decorations, so dated snapshots and Azure deployments named
//! after their model map like the model. A deployment with an arbitrary name is
//! unknown and therefore estimated.

use super::image::ImagePricing;
use super::Encoding;

/// How a model turns a chat into billed prompt tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamily {
    /// gpt-5*: harmony format. 4 tokens per message, 2 to prime the reply, tools
    /// rendered as a TypeScript namespace in a developer message (see docs/counting.md).
    Harmony,
    /// gpt-4o*, gpt-4.1*, o-series, gpt-4, gpt-3.5: OpenAI cookbook ChatML rule,
    /// 3 per message + role + 1 per name, 3 to prime the reply.
    ChatMl,
    /// gpt-4o(-mini)-search-preview: only the message text is billed, no framing.
    SearchPreview,
    /// Completion and embedding models (babbage-002, text-embedding-3-*): plain text.
    Plain,
    /// Not an OpenAI model, or a name we cannot place: everything is an estimate.
    Unknown,
}

/// Everything the prompt rules need to know about a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelProfile {
    /// BPE vocabulary, `None` when the provider's tokenizer is not public.
    pub encoding: Option<Encoding>,
    /// Prompt framing.
    pub family: ModelFamily,
    /// True when this family's chat rule reproduced real billed recordings; false
    /// means counts are labelled estimated even when every string is tokenized.
    pub exact: bool,
    /// How images are priced for this model.
    pub image: ImagePricing,
}

impl ModelProfile {
    const UNKNOWN: ModelProfile = ModelProfile {
        encoding: None,
        family: ModelFamily::Unknown,
        exact: false,
        image: ImagePricing::Unknown,
    };
}

const fn tiles(base: u32, per_tile: u32) -> ImagePricing {
    ImagePricing::Tiles { base, per_tile }
}

const fn patches(multiplier_milli: u32) -> ImagePricing {
    ImagePricing::Patches { multiplier_milli }
}

/// Strip decorations that do not change billing: `ft:` fine-tunes (base model is
/// the second field), router prefixes such as `openai/`, and ASCII case.
fn base_name(model: &str) -> &str {
    let m = model.trim();
    let m = match m.strip_prefix("ft:") {
        Some(rest) => rest.split(':').next().unwrap_or(rest),
        None => m,
    };
    match m.rfind('/') {
        Some(i) => m.get(i + 1..).unwrap_or(m),
        None => m,
    }
}

/// True if `name` is `prefix` or starts with `prefix` followed by `-`, `.`, `:` or `_`.
fn is(name: &str, prefix: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with(['-', '.', ':', '_']),
        None => false,
    }
}

/// Map a request's `model` to its billing profile. Never fails: unknown names get
/// an all-estimate profile.
pub fn profile(model: &str) -> ModelProfile {
    let base = base_name(model);
    // Model names are lowercase ASCII; normalise into a small stack buffer.
    let mut buf = [0u8; 64];
    let bytes = base.as_bytes();
    let len = bytes.len().min(buf.len());
    for (d, s) in buf.iter_mut().zip(bytes.iter()) {
        *d = s.to_ascii_lowercase();
    }
    let name = std::str::from_utf8(buf.get(..len).unwrap_or(&[])).unwrap_or("");
    classify(name)
}

fn classify(n: &str) -> ModelProfile {
    use ModelFamily::*;
    let o200k = Some(Encoding::O200kBase);
    let cl100k = Some(Encoding::Cl100kBase);
    let p = |encoding, family, exact, image| ModelProfile {
        encoding,
        family,
        exact,
        image,
    };

    if n.contains("search-preview") || n.contains("-search-api") {
        // One recording (chat-web-search) only: the rule fits, but is labelled estimate.
        let img = if n.starts_with("gpt-4o-mini") {
            tiles(2833, 5667)
        } else {
            tiles(85, 170)
        };
        return p(o200k, SearchPreview, false, img);
    }
    if n.starts_with("gpt-5") {
        // Recorded: gpt-5-nano (chat, tools, json_schema, multi-turn, Azure). The
        // harmony framing is shared by the gpt-5 line; image multipliers differ.
        let img = if is(n, "gpt-5-nano") {
            patches(2460)
        } else if is(n, "gpt-5-mini") {
            patches(1620)
        } else {
            tiles(70, 140)
        };
        return p(o200k, Harmony, true, img);
    }
    if n.starts_with("gpt-oss") {
        return p(o200k, Harmony, false, ImagePricing::Unknown);
    }
    if n.starts_with("gpt-4o-mini") {
        // Cookbook rule + chat-text-to-audio (gpt-4o-mini-audio-preview) recording.
        return p(o200k, ChatMl, true, tiles(2833, 5667));
    }
    if n.starts_with("gpt-4o") || n.starts_with("chatgpt-4o") {
        return p(o200k, ChatMl, true, tiles(85, 170));
    }
    if is(n, "gpt-4.1-mini") {
        return p(o200k, ChatMl, false, patches(1620));
    }
    if is(n, "gpt-4.1-nano") {
        return p(o200k, ChatMl, false, patches(2460));
    }
    if is(n, "gpt-4.1") || is(n, "gpt-4.5") {
        return p(o200k, ChatMl, false, tiles(85, 170));
    }
    if is(n, "o4-mini") || n.starts_with("codex-mini") {
        return p(o200k, ChatMl, false, patches(1720));
    }
    if is(n, "o1") || is(n, "o3") || is(n, "o4") {
        return p(o200k, ChatMl, false, tiles(75, 150));
    }
    if n.starts_with("computer-use-preview") {
        return p(o200k, ChatMl, false, tiles(65, 129));
    }
    if n.starts_with("gpt-3.5-turbo-instruct")
        || n.starts_with("gpt-35-turbo-instruct")
        || is(n, "babbage-002")
        || is(n, "davinci-002")
        || n.starts_with("text-embedding-3")
        || n.starts_with("text-embedding-ada-002")
    {
        // Recorded: completions (babbage-002, gpt-3.5-turbo-instruct), embeddings.
        return p(cl100k, Plain, true, ImagePricing::Unknown);
    }
    if n.starts_with("gpt-4-turbo")
        || n.starts_with("gpt-4-vision")
        || n.starts_with("gpt-4-1106-vision")
    {
        return p(cl100k, ChatMl, false, tiles(85, 170));
    }
    if is(n, "gpt-4") || n.starts_with("gpt-3.5") || n.starts_with("gpt-35") {
        return p(cl100k, ChatMl, false, ImagePricing::Unknown);
    }
    ModelProfile::UNKNOWN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        let f = |m: &str| profile(m).family;
        assert_eq!(f("gpt-5-nano"), ModelFamily::Harmony);
        assert_eq!(f("gpt-5-2025-08-07"), ModelFamily::Harmony);
        assert_eq!(f("GPT-5-mini"), ModelFamily::Harmony);
        assert_eq!(f("gpt-4o-2024-08-06"), ModelFamily::ChatMl);
        assert_eq!(f("ft:gpt-4o-mini:org::abc123"), ModelFamily::ChatMl);
        assert_eq!(f("openai/gpt-4.1"), ModelFamily::ChatMl);
        assert_eq!(f("gpt-4o-mini-search-preview"), ModelFamily::SearchPreview);
        assert_eq!(f("text-embedding-3-small"), ModelFamily::Plain);
        assert_eq!(f("babbage-002"), ModelFamily::Plain);
        assert_eq!(f("gpt-3.5-turbo-instruct"), ModelFamily::Plain);
        assert_eq!(f("gpt-35-turbo"), ModelFamily::ChatMl);
        assert_eq!(f("o3-mini"), ModelFamily::ChatMl);
        assert_eq!(f("o1"), ModelFamily::ChatMl);
        assert_eq!(f("claude-sonnet-4-5"), ModelFamily::Unknown);
        assert_eq!(f("o1x"), ModelFamily::Unknown);
        assert_eq!(f(""), ModelFamily::Unknown);
        assert_eq!(f("ft:"), ModelFamily::Unknown);
        assert_eq!(f(&"x".repeat(500)), ModelFamily::Unknown);
        assert_eq!(f("gpt-5-ñ"), ModelFamily::Harmony);
    }

    #[test]
    fn encodings() {
        let e = |m: &str| profile(m).encoding;
        assert_eq!(e("gpt-4o"), Some(Encoding::O200kBase));
        assert_eq!(e("gpt-4-0613"), Some(Encoding::Cl100kBase));
        assert_eq!(e("text-embedding-ada-002"), Some(Encoding::Cl100kBase));
        assert_eq!(e("gemini-2.0-flash"), None);
        assert_eq!(e("llama-3-70b"), None);
        assert!(profile("gpt-5-nano").exact);
        assert!(!profile("gpt-4.1").exact);
    }
}
