//! Metric names with labels encoded in them, and the cap that keeps label
//! cardinality bounded.
//!
//! Envoy has no labels for wasm metrics: a label lives in the name
//! (`...gen_ai_request_model.gpt-4o...`) and `stats_config.stats_tags` regexes lift
//! it out (see `envoy/snippets/stats-tags.yaml`). So every label value is
//! sanitised to `[A-Za-z0-9_-]` (no dots, which separate name segments) and the
//! number of distinct models is capped per VM.

use std::collections::HashSet;

/// Prefix of every tollgate metric (Envoy adds `wasmcustom.`).
pub const PREFIX: &str = "tollgate";

/// Token direction, as OpenTelemetry's `gen_ai.token.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Prompt tokens.
    Input,
    /// Completion tokens.
    Output,
}

impl TokenType {
    fn as_str(self) -> &'static str {
        match self {
            TokenType::Input => "input",
            TokenType::Output => "output",
        }
    }
}

/// Bounded set of model label values: the first `cap` distinct models keep their
/// name, later ones are reported as `other`.
pub struct ModelLabels {
    seen: HashSet<String>,
    cap: usize,
}

impl ModelLabels {
    /// A set that admits at most `cap` distinct models.
    pub fn new(cap: usize) -> Self {
        ModelLabels {
            seen: HashSet::new(),
            cap: cap.max(1),
        }
    }

    /// The label for `model`: sanitised, or `other` once the cap is reached.
    pub fn label(&mut self, model: &str) -> String {
        let clean = sanitize(model);
        if self.seen.contains(&clean) {
            return clean;
        }
        if self.seen.len() >= self.cap {
            return "other".to_string();
        }
        self.seen.insert(clean.clone());
        clean
    }
}

/// Make a label value safe inside a dotted metric name.
pub fn sanitize(v: &str) -> String {
    let mut out: String = v
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

/// Counter of tokens: OpenTelemetry `gen_ai.client.token.usage`, by token type,
/// model, route and provider.
pub fn token_usage(kind: TokenType, model: &str, route: &str, provider: &str) -> String {
    format!(
        "{PREFIX}.gen_ai_client_token_usage.gen_ai_token_type.{}.gen_ai_request_model.{}.route.{}.gen_ai_provider_name.{}",
        kind.as_str(),
        model,
        sanitize(route),
        sanitize(provider)
    )
}

/// Counter of metered requests, split by whether the count is exact.
pub fn requests(route: &str, provider: &str, estimated: bool) -> String {
    format!(
        "{PREFIX}.requests.route.{}.gen_ai_provider_name.{}.estimated.{}",
        sanitize(route),
        sanitize(provider),
        estimated
    )
}

/// Counter of rate-limit decisions (`allowed`, `refused`, `would_refuse` in
/// report-only mode) by route and the rule that decided. Rule names are validated
/// label-safe at configure, so cardinality is bounded by the config.
pub fn rate_limit(route: &str, rule: &str, decision: &str) -> String {
    format!(
        "{PREFIX}.rate_limit_decisions.route.{}.rule.{}.decision.{}",
        sanitize(route),
        sanitize(rule),
        sanitize(decision)
    )
}

/// Counter of shared-limit true-ups dropped unsent because the per-worker queue
/// that holds them for the timer (Kong) was full. No labels.
pub fn global_true_ups_dropped() -> String {
    format!("{PREFIX}.global_true_ups_dropped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_capped_and_sanitised() {
        let mut l = ModelLabels::new(2);
        assert_eq!(l.label("gpt-4.1"), "gpt-4_1");
        assert_eq!(l.label("ft:gpt-4o:org::x"), "ft_gpt-4o_org__x");
        assert_eq!(l.label("claude"), "other");
        assert_eq!(l.label("gpt-4.1"), "gpt-4_1");
        assert_eq!(sanitize(""), "unknown");
    }

    #[test]
    fn names_carry_labels_in_order() {
        assert_eq!(
            token_usage(TokenType::Input, "gpt-4o", "chat.v1", "openai"),
            "tollgate.gen_ai_client_token_usage.gen_ai_token_type.input.gen_ai_request_model.gpt-4o.route.chat_v1.gen_ai_provider_name.openai"
        );
    }
}
