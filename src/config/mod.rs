//! tollgate's configuration: parsed and validated once per `on_configure`, then
//! resolved to one immutable [`RouteSettings`] per route so the request path only
//! does a map lookup.
//!
//! Shape (the public contract is `filters/tollgate.schema.json`):
//! ```json
//! { "defaults": { ...RouteSettings... },
//!   "routes":   { "<route name>": { ...any part of RouteSettings... } },
//!   "metrics":  { "max_model_labels": 32 } }
//! ```
//! A route's object is deep-merged over `defaults`, so a route overrides only what it
//! names. Unknown fields are errors, and every error names the exact path.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::Unit;

/// A config problem, with the dotted path of the offending field so an operator can
/// fix it without guessing (`routes.chat.metering.tokenize_byte_budget: ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path from the config root, e.g. `routes.chat.max_request_bytes`.
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "tollgate config: {}", self.message)
        } else {
            write!(f, "tollgate config: {}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// What to do with a body on an LLM path that is not the API's JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InvalidBody {
    /// Forward it untouched and unmetered (the provider will answer with its own error).
    #[default]
    Pass,
    /// Answer 400 in the client's dialect without forwarding.
    Reject,
}

/// Token metering settings of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metering {
    /// Count and report tokens on this route. Off where the route only redacts PII or
    /// rewrites for a provider: no `x-llm-*` header, `llm.*` filter state, token
    /// metric or debug line is written, and the prompt is tokenized only when the
    /// route has limits (which charge it).
    pub enabled: bool,
    /// Add `stream_options.include_usage` to OpenAI streaming requests so the provider
    /// reports exact usage; the extra usage chunk is removed again for clients that
    /// did not ask for it.
    pub inject_stream_usage: bool,
    /// When a stream ends without any usage, count the streamed text ourselves
    /// (reported as an estimate).
    pub count_streamed_deltas: bool,
    /// Add `x-llm-*-tokens` headers to responses. Non-streaming responses are held
    /// until complete for this (they are complete JSON documents anyway).
    pub response_headers: bool,
    /// Bytes of prompt text tokenized exactly per request; the rest is estimated.
    /// Bounds the CPU one hostile prompt can take on a worker.
    pub tokenize_byte_budget: u64,
    /// Bytes per token assumed for estimated text (over budget, or models with no
    /// public tokenizer such as Claude or Gemini).
    pub estimate_bytes_per_token: f64,
    /// Tokens charged for an image whose size cannot be read (remote URL).
    pub image_estimate_tokens: u64,
    /// Largest single SSE event accepted for usage parsing; larger events pass
    /// through unparsed.
    pub max_event_bytes: u64,
    /// Which `llm.*` filter-state keys to write. Each key is one hostcall and one
    /// Envoy filter-state object (about 1.5 µs per request in Envoy's V8), so the
    /// default writes the figures an access log needs and nothing the host knows.
    pub filter_state: Vec<FilterStateKey>,
}

/// One `llm.*` filter-state entry (`%FILTER_STATE(wasm.llm.<key>:PLAIN)%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterStateKey {
    /// Billed (or counted) prompt tokens.
    PromptTokens,
    /// Billed (or counted) completion tokens.
    CompletionTokens,
    /// Prompt plus completion tokens.
    TotalTokens,
    /// Prompt tokens served from the provider's cache.
    CachedTokens,
    /// Reasoning tokens inside the completion.
    ReasoningTokens,
    /// tollgate's own pre-forward prompt count.
    CountedPromptTokens,
    /// Requested model (else the served one).
    Model,
    /// Model the provider says it served.
    ResponseModel,
    /// Provider label.
    Provider,
    /// Route name as tollgate resolved it.
    Route,
    /// API dialect (`chat_completions`, `messages`, ...).
    Api,
    /// `true` when any figure is an estimate.
    Estimated,
    /// `provider` or `counted`.
    UsageSource,
}

impl FilterStateKey {
    /// Every key, in the order they are documented.
    pub const ALL: [FilterStateKey; 13] = [
        FilterStateKey::PromptTokens,
        FilterStateKey::CompletionTokens,
        FilterStateKey::TotalTokens,
        FilterStateKey::CachedTokens,
        FilterStateKey::ReasoningTokens,
        FilterStateKey::CountedPromptTokens,
        FilterStateKey::Model,
        FilterStateKey::ResponseModel,
        FilterStateKey::Provider,
        FilterStateKey::Route,
        FilterStateKey::Api,
        FilterStateKey::Estimated,
        FilterStateKey::UsageSource,
    ];

    /// The property name written (Envoy prefixes it with `wasm.`).
    pub fn property(self) -> &'static str {
        match self {
            FilterStateKey::PromptTokens => "llm.prompt_tokens",
            FilterStateKey::CompletionTokens => "llm.completion_tokens",
            FilterStateKey::TotalTokens => "llm.total_tokens",
            FilterStateKey::CachedTokens => "llm.cached_tokens",
            FilterStateKey::ReasoningTokens => "llm.reasoning_tokens",
            FilterStateKey::CountedPromptTokens => "llm.counted_prompt_tokens",
            FilterStateKey::Model => "llm.model",
            FilterStateKey::ResponseModel => "llm.response_model",
            FilterStateKey::Provider => "llm.provider",
            FilterStateKey::Route => "llm.route",
            FilterStateKey::Api => "llm.api",
            FilterStateKey::Estimated => "llm.estimated",
            FilterStateKey::UsageSource => "llm.usage_source",
        }
    }
}

/// The default filter-state keys: the billed figures, the model, and whether any
/// of it is an estimate.
pub const DEFAULT_FILTER_STATE: [FilterStateKey; 5] = [
    FilterStateKey::PromptTokens,
    FilterStateKey::CompletionTokens,
    FilterStateKey::TotalTokens,
    FilterStateKey::Model,
    FilterStateKey::Estimated,
];

impl Default for Metering {
    fn default() -> Self {
        Metering {
            enabled: true,
            inject_stream_usage: true,
            count_streamed_deltas: true,
            response_headers: true,
            tokenize_byte_budget: 256 * 1024,
            estimate_bytes_per_token: 4.0,
            image_estimate_tokens: 765,
            max_event_bytes: 1024 * 1024,
            filter_state: DEFAULT_FILTER_STATE.to_vec(),
        }
    }
}

/// Whether a route's limits refuse requests or only report what they would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Refuse over-limit requests with a 429 in the client's dialect.
    #[default]
    Enforce,
    /// Count and report (headers, metric, log line) but never refuse: for rolling
    /// limits out through an existing gateway without breaking anyone.
    ReportOnly,
}

/// What a limit rule's counter is keyed by; several parts combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKeyPart {
    /// The consumer identity from the trusted header (`limits.consumer.header`).
    Consumer,
    /// The host's route name.
    Route,
    /// The requested model.
    Model,
    /// The route's provider label.
    Provider,
}

/// Which tokens a rule counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitCount {
    /// Prompt tokens only.
    Input,
    /// Completion tokens only (the reservation before the response).
    Output,
    /// Prompt plus completion tokens.
    #[default]
    Total,
}

/// Where the consumer identity comes from: `property` if set, else `jwt_claim`
/// if set, else the header. Only what the host itself sets is trusted: a header
/// must be stripped from client requests at the edge; dynamic metadata and
/// properties cannot be set by clients at all (see docs/limits.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSource {
    /// Request header carrying the consumer id, set by the host's IAM (Kong
    /// `x-consumer-id`, Envoy jwt_authn `claim_to_headers`).
    pub header: String,
    /// Top-level claim of the JWT payload Envoy's jwt_authn verified and stored
    /// in dynamic metadata (`payload_in_metadata`); empty: not used.
    pub jwt_claim: String,
    /// jwt_authn `payload_in_metadata` name, for `jwt_claim`.
    pub jwt_payload: String,
    /// Property path segments, e.g. `["metadata", "filter_metadata",
    /// "envoy.filters.http.ext_authz", "tenant"]`; empty: not used.
    pub property: Vec<String>,
}

impl Default for ConsumerSource {
    fn default() -> Self {
        ConsumerSource {
            header: "x-consumer-id".to_string(),
            jwt_claim: String::new(),
            jwt_payload: "jwt_payload".to_string(),
            property: Vec::new(),
        }
    }
}

impl ConsumerSource {
    /// The host property path to read, for the property and JWT sources; `None`
    /// for the header source.
    pub fn property_path(&self) -> Option<Vec<&str>> {
        if !self.property.is_empty() {
            return Some(self.property.iter().map(String::as_str).collect());
        }
        if !self.jwt_claim.is_empty() {
            return Some(vec![
                "metadata",
                "filter_metadata",
                "envoy.filters.http.jwt_authn",
                self.jwt_payload.as_str(),
                self.jwt_claim.as_str(),
            ]);
        }
        None
    }
}

/// What to do when a stream outruns its budget (the reservation was too small
/// and the rules have no room left for more output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StreamCutoff {
    /// Let it finish; the true-up charges what it really used.
    #[default]
    Finish,
    /// End it cleanly in the client's protocol (OpenAI `finish_reason: "length"`
    /// and `[DONE]`; Anthropic `message_delta` with `max_tokens` and
    /// `message_stop`) and swallow the rest of the upstream stream.
    Cut,
}

/// A model's price, in USD per million tokens, for `usd` budgets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Model name prefix; the longest matching prefix wins, `""` matches every model.
    pub model: String,
    /// USD per 1M uncached input tokens.
    pub input: f64,
    /// USD per 1M output tokens (reasoning included).
    pub output: f64,
    /// USD per 1M cached input tokens; the input price when absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
}

impl ModelPrice {
    /// Prices in nano-dollars per token (USD per 1M tokens x 1000), the integer
    /// unit cost arithmetic uses: (input, output, cached input).
    pub fn nano_per_token(&self) -> (u64, u64, u64) {
        let n = |usd_per_m: f64| (usd_per_m * 1000.0).round() as u64;
        (
            n(self.input),
            n(self.output),
            n(self.cached_input.unwrap_or(self.input)),
        )
    }
}

/// One limit: per distinct key and fixed `window`, a budget of `tokens`, of
/// `requests` and/or of `usd` (at least one; each is its own counter and each
/// must admit a request).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Stable name: identifies the counter (with the key values), so a rule in
    /// `defaults` is one budget across routes unless its key includes `route`.
    pub name: String,
    /// Parts the counter is keyed by; empty means one counter for everyone.
    #[serde(default)]
    pub key: Vec<LimitKeyPart>,
    /// Window length: a positive integer and a unit (`s`, `m`, `h`, `d`, `w`),
    /// e.g. `1m`, or `month` (the calendar month, UTC).
    pub window: String,
    /// Tokens allowed per key per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Requests allowed per key per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// USD allowed per key per window, priced from `limits.prices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// Which tokens count against `tokens` and `usd`.
    #[serde(default)]
    pub count: LimitCount,
    /// Filled once at configure ([`LimitRule::prepare`]), so the request path
    /// neither parses the window nor copies or formats the rule's name.
    #[serde(skip)]
    pub prepared: PreparedRule,
}

/// What the request path needs of a [`LimitRule`], computed at configure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreparedRule {
    /// The parsed `window`.
    window: Option<Window>,
    /// The name, shared by every rate state that reports this rule.
    name: Option<Rc<str>>,
    /// Per unit (tokens, requests, USD), the rule's part of its counter keys.
    key_prefixes: [String; 3],
}

impl LimitRule {
    /// Compute [`PreparedRule`] (after validation: the window parses).
    pub fn prepare(&mut self) {
        let window = self.window();
        let name: Rc<str> = Rc::from(self.name.as_str());
        let prefixes = Unit::ALL.map(|u| crate::limits::key_prefix(&self.name, u, window));
        self.prepared = PreparedRule {
            window: Some(window),
            name: Some(name),
            key_prefixes: prefixes,
        };
    }

    /// The window (validated at configure, so an invalid one never reaches the
    /// request path).
    pub fn window(&self) -> Window {
        self.prepared
            .window
            .or_else(|| parse_window(&self.window))
            .unwrap_or(Window::Fixed(60_000))
    }

    /// The name as rate states carry it (shared once prepared).
    pub fn shared_name(&self) -> Rc<str> {
        match &self.prepared.name {
            Some(n) => n.clone(),
            None => Rc::from(self.name.as_str()),
        }
    }

    /// The rule's part of a counter key of `unit` (built here if not prepared).
    pub fn key_prefix(&self, unit: Unit) -> std::borrow::Cow<'_, str> {
        match self.prepared.key_prefixes.get(unit.index()) {
            Some(p) if !p.is_empty() => std::borrow::Cow::Borrowed(p.as_str()),
            _ => {
                std::borrow::Cow::Owned(crate::limits::key_prefix(&self.name, unit, self.window()))
            }
        }
    }

    /// The `usd` budget in micro-dollars.
    pub fn usd_micros(&self) -> Option<u64> {
        self.usd.map(|u| (u * 1e6).round() as u64)
    }
}

/// A rule's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Fixed windows of this many milliseconds, aligned to the Unix epoch.
    Fixed(u64),
    /// Windows of this many milliseconds (whole weeks) starting on Mondays, 00:00 UTC.
    Weeks(u64),
    /// Calendar months, UTC.
    Month,
}

/// Longest fixed window accepted: 31 days.
const MAX_WINDOW_MS: u64 = 31 * 86_400_000;

/// `"30s"`, `"1m"`, `"1h"`, `"7d"`, `"1w"`, or `"month"`.
pub fn parse_window(w: &str) -> Option<Window> {
    if w == "month" {
        return Some(Window::Month);
    }
    let unit = w.chars().last()?;
    let digits = w.get(..w.len() - unit.len_utf8())?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    let total = n.checked_mul(ms)?;
    let w = if unit == 'w' {
        Window::Weeks(total)
    } else {
        Window::Fixed(total)
    };
    (total <= MAX_WINDOW_MS).then_some(w)
}

/// Token rate limits of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Enforce, or only report.
    pub mode: LimitMode,
    /// Where the consumer identity is read from.
    pub consumer: ConsumerSource,
    /// Completion tokens reserved at admission when the request sets no
    /// `max_tokens`/`max_completion_tokens`/`max_output_tokens`; trued up afterwards.
    pub reserve_max_tokens_default: u64,
    /// The limits; every one must admit a request (the strictest wins).
    pub rules: Vec<LimitRule>,
    /// Reserve at most this many completion tokens even when the request's cap is
    /// higher (0: no cap). Clients that always send a large `max_tokens`
    /// (Anthropic requires one) are then not refused for output they will rarely
    /// produce; a response that outgrows its reservation is trued up, and a
    /// stream can be cut where the budget runs out (`stream_cutoff: cut`).
    pub reserve_max_tokens_cap: u64,
    /// Instead of refusing a request whose prompt fits but whose completion
    /// reservation does not, lower its `max_tokens` (or `max_completion_tokens`,
    /// `max_output_tokens`) to what remains.
    pub clamp_max_tokens: bool,
    /// Smallest completion a clamp may leave; below it the request is refused.
    pub clamp_min_tokens: u64,
    /// What happens when a stream runs out of budget.
    pub stream_cutoff: StreamCutoff,
    /// Model prices for `usd` budgets.
    pub prices: Vec<ModelPrice>,
    /// Limits shared across replicas, on the host's distributed rate limiting.
    pub global: crate::limits::global::GlobalLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            mode: LimitMode::Enforce,
            consumer: ConsumerSource::default(),
            reserve_max_tokens_default: 1024,
            rules: Vec::new(),
            reserve_max_tokens_cap: 0,
            clamp_max_tokens: false,
            clamp_min_tokens: 1,
            stream_cutoff: StreamCutoff::Finish,
            prices: Vec::new(),
            global: Default::default(),
        }
    }
}

impl Limits {
    /// True when there is anything to do: the request path skips limits entirely
    /// otherwise.
    pub fn active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// True when the route admits requests against any budget, local rules or a
    /// shared limit: then the prompt is counted and the consumer read.
    pub fn any_active(&self) -> bool {
        self.active() || self.global.active()
    }

    /// The price entry for a model: the longest matching `model` prefix.
    pub fn price_for(&self, model: &str) -> Option<&ModelPrice> {
        self.prices
            .iter()
            .filter(|p| model.starts_with(p.model.as_str()))
            .max_by_key(|p| p.model.len())
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let name_ok = |h: &str, max: usize| {
            !h.is_empty()
                && h.len() <= max
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        let c = &self.consumer;
        if !name_ok(&c.header, 64) {
            return Err(ConfigError::at(
                format!("{path}.consumer.header"),
                "expected a lower-case header name of 1 to 64 characters [a-z0-9_-]",
            ));
        }
        if c.jwt_payload.is_empty() || c.jwt_payload.len() > 128 {
            return Err(ConfigError::at(
                format!("{path}.consumer.jwt_payload"),
                "expected the jwt_authn payload_in_metadata name (1 to 128 characters)",
            ));
        }
        if c.jwt_claim.len() > 256 {
            return Err(ConfigError::at(
                format!("{path}.consumer.jwt_claim"),
                "expected a claim name of at most 256 characters",
            ));
        }
        if c.property.len() > 16 || c.property.iter().any(String::is_empty) {
            return Err(ConfigError::at(
                format!("{path}.consumer.property"),
                "expected at most 16 non-empty path segments",
            ));
        }
        if !c.property.is_empty() && !c.jwt_claim.is_empty() {
            return Err(ConfigError::at(
                format!("{path}.consumer.property"),
                "set either `property` or `jwt_claim`, not both (one identity source)",
            ));
        }
        if self.clamp_min_tokens == 0 {
            return Err(ConfigError::at(
                format!("{path}.clamp_min_tokens"),
                "must be at least 1",
            ));
        }
        for (i, p) in self.prices.iter().enumerate() {
            let at = |f: &str| format!("{path}.prices[{i}].{f}");
            if self.prices.iter().take(i).any(|o| o.model == p.model) {
                return Err(ConfigError::at(
                    at("model"),
                    format!("duplicate price for model prefix {:?}", p.model),
                ));
            }
            for (f, v) in [
                ("input", Some(p.input)),
                ("output", Some(p.output)),
                ("cached_input", p.cached_input),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && (0.0..=1_000_000.0).contains(&v)) {
                        return Err(ConfigError::at(
                            at(f),
                            format!("expected USD per 1M tokens from 0 to 1000000, got {v}"),
                        ));
                    }
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("{path}.rules[{i}].{f}");
            if r.name.is_empty()
                || r.name.len() > 64
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::at(
                    at("name"),
                    "expected 1 to 64 characters [A-Za-z0-9_-] (it becomes a metric label)",
                ));
            }
            if self.rules.iter().take(i).any(|o| o.name == r.name) {
                return Err(ConfigError::at(
                    at("name"),
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            if parse_window(&r.window).is_none() {
                return Err(ConfigError::at(
                    at("window"),
                    format!(
                        "expected a positive integer and a unit s, m, h, d or w, at most 31d (e.g. \"1m\"), or \"month\", got {:?}",
                        r.window
                    ),
                ));
            }
            if r.tokens.is_none() && r.requests.is_none() && r.usd.is_none() {
                return Err(ConfigError::at(
                    at("tokens"),
                    "a rule needs a budget: `tokens`, `requests` and/or `usd`",
                ));
            }
            if r.tokens == Some(0) {
                return Err(ConfigError::at(at("tokens"), "must be at least 1"));
            }
            if r.requests == Some(0) {
                return Err(ConfigError::at(at("requests"), "must be at least 1"));
            }
            if let Some(u) = r.usd {
                if !(u.is_finite() && (0.000001..=1e9).contains(&u)) {
                    return Err(ConfigError::at(
                        at("usd"),
                        format!("expected USD from 0.000001 to 1e9, got {u}"),
                    ));
                }
                if self.prices.is_empty() {
                    return Err(ConfigError::at(
                        at("usd"),
                        "a `usd` budget needs `limits.prices` (USD per 1M tokens per model prefix)",
                    ));
                }
            }
            for (j, k) in r.key.iter().enumerate() {
                if r.key.iter().take(j).any(|o| o == k) {
                    return Err(ConfigError::at(
                        format!("{path}.rules[{i}].key[{j}]"),
                        "duplicate key part",
                    ));
                }
            }
            // Two rules counting the same thing over the same key and window: the
            // looser one could never refuse anything, which is almost surely a
            // mistake (e.g. a route re-listing a default rule under a new name).
            if let Some((j, o)) = self.rules.iter().take(i).enumerate().find(|(_, o)| {
                o.window() == r.window()
                    && o.count == r.count
                    && same_parts(&o.key, &r.key)
                    && ((o.tokens.is_some() && r.tokens.is_some())
                        || (o.requests.is_some() && r.requests.is_some())
                        || (o.usd.is_some() && r.usd.is_some()))
            }) {
                return Err(ConfigError::at(
                    at("name"),
                    format!(
                        "rule {:?} counts the same budget over the same key and window as rule {:?} ({path}.rules[{j}]): the looser one would never apply; merge them",
                        r.name, o.name
                    ),
                ));
            }
        }
        self.global.validate(&format!("{path}.global"))?;
        Ok(())
    }
}

fn same_parts(a: &[LimitKeyPart], b: &[LimitKeyPart]) -> bool {
    a.len() == b.len() && a.iter().all(|p| b.contains(p))
}

/// Route `limits.rules` add to the defaults' rules instead of replacing them (a
/// route rule with a default's name replaces that one), so a route can never
/// silently drop a budget set for everyone.
fn merge_limit_rules(defaults: &Value, merged: &mut Value, over: &Value) {
    let rules = |v: &Value| v.get("limits")?.get("rules")?.as_array().cloned();
    let (Some(base), Some(own)) = (rules(defaults), rules(over)) else {
        return;
    };
    let name = |r: &Value| r.get("name").and_then(Value::as_str).map(str::to_owned);
    let mut out: Vec<Value> = base
        .into_iter()
        .filter(|b| !own.iter().any(|o| name(o).is_some() && name(o) == name(b)))
        .collect();
    out.extend(own);
    if let Some(slot) = merged.get_mut("limits").and_then(|l| l.get_mut("rules")) {
        *slot = Value::Array(out);
    }
}

/// Everything tollgate does on one route. `defaults` holds one; each entry of
/// `routes` is merged over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteSettings {
    /// Master switch: `false` makes tollgate a pass-through on this route.
    pub enabled: bool,
    /// Provider label for metrics and logs. In the config, `provider` is either
    /// this label alone or a full provider object (see [`crate::providers::config`]);
    /// with an object, the label is its `name` (default: its `kind`).
    pub provider: String,
    /// The provider requests on this route are rewritten for (object form of
    /// `provider`); `None` leaves requests as the client sent them.
    #[serde(skip)]
    pub upstream: Option<Rc<crate::providers::ProviderConfig>>,
    /// Providers chosen by the request's `model` (each entry's `models`), tried in
    /// order before `provider`: one route, several providers. Raw here; parsed into
    /// [`RouteSettings::upstreams_by_model`].
    pub providers: Vec<Value>,
    /// `providers`, parsed and validated.
    #[serde(skip)]
    pub upstreams_by_model: Vec<Rc<crate::providers::ProviderConfig>>,
    /// Largest request body accepted; larger gets a 413 in the client's dialect.
    /// The default, 960 KiB, sits one 64 KiB read below Envoy's default 1 MiB
    /// buffer limit: a chunked upload must cross tollgate's cap before the host's,
    /// or the client gets the host's plain-text 413 instead of one its SDK parses.
    pub max_request_bytes: u64,
    /// What to do with bodies that are not the API's JSON.
    pub invalid_body: InvalidBody,
    /// Token metering.
    pub metering: Metering,
    /// Token rate limits (local, per gateway instance). No rules: nothing is done.
    pub limits: Limits,
    /// PII and secret redaction of prompts and completions (off by default).
    pub pii: crate::pii::PiiConfig,
}

impl Default for RouteSettings {
    fn default() -> Self {
        RouteSettings {
            enabled: true,
            provider: "openai".to_string(),
            upstream: None,
            providers: Vec::new(),
            upstreams_by_model: Vec::new(),
            max_request_bytes: 960 * 1024,
            invalid_body: InvalidBody::Pass,
            metering: Metering::default(),
            limits: Limits::default(),
            pii: crate::pii::PiiConfig::default(),
        }
    }
}

/// Metrics settings (process-wide, not per route).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Distinct model label values per VM before new models are reported as
    /// `other`: keeps Prometheus cardinality bounded when clients send arbitrary models.
    pub max_model_labels: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_model_labels: 32,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    defaults: Option<Value>,
    routes: BTreeMap<String, Value>,
    metrics: MetricsConfig,
}

/// The validated configuration: settings resolved per route, shared by reference.
#[derive(Clone, Debug)]
pub struct Config {
    defaults: Rc<RouteSettings>,
    routes: BTreeMap<String, Rc<RouteSettings>>,
    /// Process-wide metrics settings.
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            defaults: Rc::new(RouteSettings::default()),
            routes: BTreeMap::new(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Config {
    /// Parse and validate the plugin configuration. Empty input means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Config::default());
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig =
            serde_path_to_error::deserialize(&mut de).map_err(|e| path_error("", e))?;
        de.end().map_err(|e| {
            ConfigError::at("", format!("trailing data after the JSON config: {e}"))
        })?;

        let defaults_value = raw
            .defaults
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !defaults_value.is_object() {
            return Err(ConfigError::at("defaults", "expected an object"));
        }
        // Routes that inherit the same `pii` section share one compiled engine.
        let mut pii_engines = Vec::new();
        let defaults = settings_from_value(defaults_value.clone(), "defaults", &mut pii_engines)?;

        let mut routes = BTreeMap::new();
        for (name, over) in raw.routes {
            let path = format!("routes.{name}");
            if name.is_empty() {
                return Err(ConfigError::at("routes", "route names must not be empty"));
            }
            if !over.is_object() {
                return Err(ConfigError::at(path, "expected an object"));
            }
            let mut merged = defaults_value.clone();
            let own = over.clone();
            merge(&mut merged, over);
            merge_limit_rules(&defaults_value, &mut merged, &own);
            routes.insert(
                name,
                Rc::new(settings_from_value(merged, &path, &mut pii_engines)?),
            );
        }
        if raw.metrics.max_model_labels == 0 {
            return Err(ConfigError::at(
                "metrics.max_model_labels",
                "must be at least 1 (models beyond it are labelled `other`)",
            ));
        }
        Ok(Config {
            defaults: Rc::new(defaults),
            routes,
            metrics: raw.metrics,
        })
    }

    /// Settings for a route name as the host reports it; unknown or absent names get
    /// the defaults. Cheap: one map lookup and a reference-count increment.
    pub fn route(&self, name: Option<&str>) -> Rc<RouteSettings> {
        name.and_then(|n| self.routes.get(n))
            .unwrap_or(&self.defaults)
            .clone()
    }

    /// Names of the routes with their own settings, for the start-up log line.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// The defaults and every route's own settings, for what configure derives
    /// from all of them (the timer, the limit windows).
    pub fn all_routes(&self) -> impl Iterator<Item = &RouteSettings> {
        std::iter::once(&*self.defaults).chain(self.routes.values().map(|r| &**r))
    }
}

fn settings_from_value(
    mut v: Value,
    path: &str,
    pii_engines: &mut Vec<crate::pii::PiiConfig>,
) -> Result<RouteSettings, ConfigError> {
    // The object form of `provider` is parsed on its own (so its errors keep their
    // exact path) and replaced by its label for the rest of the settings.
    let upstream = match v.get_mut("provider") {
        Some(p) if p.is_object() => {
            let at = format!("{path}.provider");
            let mut pc: crate::providers::ProviderConfig =
                serde_path_to_error::deserialize(p.take()).map_err(|e| path_error(&at, e))?;
            pc.resolve(&at, &|name| std::env::var(name).ok())?;
            *p = Value::String(pc.label().to_string());
            Some(Rc::new(pc))
        }
        _ => None,
    };
    let mut s: RouteSettings =
        serde_path_to_error::deserialize(v).map_err(|e| path_error(path, e))?;
    s.upstream = upstream;
    for (i, raw) in std::mem::take(&mut s.providers).into_iter().enumerate() {
        let at = format!("{path}.providers[{i}]");
        let mut pc: crate::providers::ProviderConfig =
            serde_path_to_error::deserialize(raw).map_err(|e| path_error(&at, e))?;
        pc.resolve(&at, &|name| std::env::var(name).ok())?;
        if pc.models.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.models"),
                "required in `providers` entries: the models (or `prefix*` patterns) this provider serves",
            ));
        }
        s.upstreams_by_model.push(Rc::new(pc));
    }
    s.validate(path)?;
    for r in &mut s.limits.rules {
        r.prepare();
    }
    s.pii
        .compile(pii_engines)
        .map_err(|(field, msg)| ConfigError::at(format!("{path}.pii.{field}"), msg))?;
    Ok(s)
}

fn path_error<E: fmt::Display>(prefix: &str, e: serde_path_to_error::Error<E>) -> ConfigError {
    let inner = e.path().to_string();
    let path = match (prefix.is_empty(), inner == ".") {
        (true, true) => String::new(),
        (true, false) => inner,
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{inner}"),
    };
    ConfigError::at(path, e.into_inner().to_string())
}

/// Deep-merge `over` into `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

impl RouteSettings {
    /// Range checks serde cannot express, with paths relative to `path`.
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let at = |field: &str| format!("{path}.{field}");
        if self.max_request_bytes == 0 {
            return Err(ConfigError::at(
                at("max_request_bytes"),
                "must be greater than 0",
            ));
        }
        if self.provider.is_empty() || self.provider.len() > 64 {
            return Err(ConfigError::at(
                at("provider"),
                "must be 1 to 64 characters",
            ));
        }
        if !self
            .provider
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::at(
                at("provider"),
                "may hold only ASCII letters, digits, '-' and '_' (it becomes a metric label)",
            ));
        }
        let m = &self.metering;
        let bpt = m.estimate_bytes_per_token;
        if !(bpt.is_finite() && (0.5..=32.0).contains(&bpt)) {
            return Err(ConfigError::at(
                at("metering.estimate_bytes_per_token"),
                format!("expected a number from 0.5 to 32, got {bpt}"),
            ));
        }
        if m.max_event_bytes < 1024 {
            return Err(ConfigError::at(
                at("metering.max_event_bytes"),
                "must be at least 1024",
            ));
        }
        for (i, k) in m.filter_state.iter().enumerate() {
            if m.filter_state.get(..i).is_some_and(|seen| seen.contains(k)) {
                return Err(ConfigError::at(
                    format!("{}[{i}]", at("metering.filter_state")),
                    format!("duplicate key {:?}", k.property()),
                ));
            }
        }
        self.limits.validate(&at("limits"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        match Config::parse(json.as_bytes()) {
            Ok(_) => panic!("config should be refused: {json}"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::parse(b"").unwrap();
        assert_eq!(*c.route(Some("x")), RouteSettings::default());
        let c = Config::parse(b"{}").unwrap();
        assert_eq!(*c.route(None), RouteSettings::default());
    }

    #[test]
    fn routes_override_only_what_they_name() {
        let c = Config::parse(
            br#"{"defaults":{"max_request_bytes":5000,"metering":{"inject_stream_usage":false}},
                 "routes":{"chat":{"metering":{"tokenize_byte_budget":10}}}}"#,
        )
        .unwrap();
        let chat = c.route(Some("chat"));
        assert_eq!(chat.max_request_bytes, 5000);
        assert!(!chat.metering.inject_stream_usage);
        assert_eq!(chat.metering.tokenize_byte_budget, 10);
        let other = c.route(Some("other"));
        assert_eq!(
            other.metering.tokenize_byte_budget,
            Metering::default().tokenize_byte_budget
        );
    }

    #[test]
    fn errors_name_the_exact_path() {
        let e = err(r#"{"routes":{"chat":{"metering":{"tokenize_byte_budget":"lots"}}}}"#);
        assert_eq!(e.path, "routes.chat.metering.tokenize_byte_budget");
        assert!(e.message.contains("expected u64"), "{}", e.message);

        let e = err(r#"{"defaults":{"metering":{"enabeld":true}}}"#);
        assert_eq!(e.path, "defaults.metering.enabeld");
        assert!(
            e.message.contains("unknown field `enabeld`"),
            "{}",
            e.message
        );

        let e = err(r#"{"routs":{}}"#);
        assert!(e.message.contains("unknown field `routs`"), "{}", e.message);

        let e = err(r#"{"routes":{"a":{"max_request_bytes":0}}}"#);
        assert_eq!(e.path, "routes.a.max_request_bytes");

        let e = err(r#"{"routes":{"a":{"metering":{"estimate_bytes_per_token":0}}}}"#);
        assert_eq!(e.path, "routes.a.metering.estimate_bytes_per_token");

        let e = err(r#"{"defaults":{"metering":{"filter_state":["model","model"]}}}"#);
        assert_eq!(e.path, "defaults.metering.filter_state[1]");
        let e = err(r#"{"defaults":{"metering":{"filter_state":["modle"]}}}"#);
        assert_eq!(e.path, "defaults.metering.filter_state[0]");

        let e = err(r#"{"defaults":{"invalid_body":"drop"}}"#);
        assert_eq!(e.path, "defaults.invalid_body");

        let e = err(r#"{"routes":{"a":[]}}"#);
        assert_eq!(e.path, "routes.a");

        let e = err(r#"{"metrics":{"max_model_labels":0}}"#);
        assert_eq!(e.path, "metrics.max_model_labels");

        let e = err("{} x");
        assert!(e.message.contains("trailing"), "{}", e.message);
        let e = err("not json");
        assert!(e.to_string().starts_with("tollgate config"), "{e}");
    }

    #[test]
    fn limits_parse_merge_and_name_exact_paths() {
        let c = Config::parse(
            br#"{"defaults":{"limits":{"reserve_max_tokens_default":50}},
                 "routes":{"chat":{"limits":{"mode":"report_only","rules":[
                   {"name":"m","key":["consumer","model"],"window":"1m","tokens":100,"count":"input"},
                   {"name":"d","window":"1d","tokens":1000}]}}}}"#,
        )
        .unwrap();
        let chat = c.route(Some("chat"));
        assert_eq!(chat.limits.mode, LimitMode::ReportOnly);
        assert_eq!(chat.limits.reserve_max_tokens_default, 50);
        assert_eq!(chat.limits.rules.len(), 2);
        assert_eq!(chat.limits.rules[1].window(), Window::Fixed(86_400_000));
        assert_eq!(chat.limits.rules[1].count, LimitCount::Total);
        assert!(!c.route(None).limits.active());

        let e = err(
            r#"{"routes":{"chat":{"limits":{"rules":[{"name":"a","window":"5w","tokens":1}]}}}}"#,
        );
        assert_eq!(e.path, "routes.chat.limits.rules[0].window");
        let e = err(
            r#"{"routes":{"chat":{"limits":{"rules":[{"name":"a","window":"1m","tokens":"x"}]}}}}"#,
        );
        assert_eq!(e.path, "routes.chat.limits.rules[0].tokens");
        let e = err(
            r#"{"defaults":{"limits":{"rules":[{"name":"a","window":"1m","tokens":1},{"name":"a","window":"1h","tokens":1}]}}}"#,
        );
        assert_eq!(e.path, "defaults.limits.rules[1].name");
        let e = err(r#"{"defaults":{"limits":{"rules":[{"name":"a","window":"1m","tokens":0}]}}}"#);
        assert_eq!(e.path, "defaults.limits.rules[0].tokens");
        let e = err(
            r#"{"defaults":{"limits":{"rules":[{"name":"a","key":["user"],"window":"1m","tokens":1}]}}}"#,
        );
        assert_eq!(e.path, "defaults.limits.rules[0].key[0]");
        let e = err(r#"{"defaults":{"limits":{"consumer":{"header":"X Bad"}}}}"#);
        assert_eq!(e.path, "defaults.limits.consumer.header");
        let e = err(r#"{"defaults":{"limits":{"rules":[{"name":"a","window":"1m"}]}}}"#);
        assert_eq!(e.path, "defaults.limits.rules[0].tokens");
        assert!(e.message.contains("`requests`"), "{e}");
        let e = err(r#"{"defaults":{"limits":{"rules":[{"name":"a","window":"1m","usd":1.5}]}}}"#);
        assert_eq!(e.path, "defaults.limits.rules[0].usd");
        let e = err(r#"{"defaults":{"limits":{"consumer":{"jwt_claim":"sub","property":["a"]}}}}"#);
        assert_eq!(e.path, "defaults.limits.consumer.property");
        let e =
            err(r#"{"defaults":{"limits":{"prices":[{"model":"gpt","input":1,"output":-2}]}}}"#);
        assert_eq!(e.path, "defaults.limits.prices[0].output");
    }

    #[test]
    fn overlapping_limit_rules_are_never_silently_ignored() {
        // The same budget twice over the same key and window: one could never apply.
        let e = err(r#"{"defaults":{"limits":{"rules":[
                {"name":"a","key":["consumer","model"],"window":"1m","tokens":10},
                {"name":"b","key":["model","consumer"],"window":"1m","tokens":20,"requests":3}]}}}"#);
        assert_eq!(e.path, "defaults.limits.rules[1].name");
        assert!(e.message.contains("\"a\""), "{e}");
        // Different windows, units or counts are different budgets: all kept.
        Config::parse(
            br#"{"defaults":{"limits":{"rules":[
                {"name":"a","key":["consumer"],"window":"1m","tokens":10},
                {"name":"b","key":["consumer"],"window":"1h","tokens":20},
                {"name":"c","key":["consumer"],"window":"1m","requests":20},
                {"name":"d","key":["consumer"],"window":"1m","tokens":20,"count":"output"}]}}}"#,
        )
        .unwrap();
        // A route's rules add to the defaults' (same name: replaced), so a route
        // cannot drop a budget set for everyone by listing its own.
        let c = Config::parse(
            br#"{"defaults":{"limits":{"rules":[{"name":"global","window":"1d","tokens":100},
                                                 {"name":"min","window":"1m","tokens":10}]}},
                 "routes":{"chat":{"limits":{"rules":[{"name":"min","window":"1m","tokens":5},
                                                      {"name":"chat-hour","window":"1h","requests":9}]}}}}"#,
        )
        .unwrap();
        let names: Vec<(String, Option<u64>)> = c
            .route(Some("chat"))
            .limits
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.tokens))
            .collect();
        assert_eq!(
            names,
            [
                ("global".to_string(), Some(100)),
                ("min".to_string(), Some(5)),
                ("chat-hour".to_string(), None)
            ]
        );
        // A route rule duplicating a default budget under another name is refused.
        let e = err(
            r#"{"defaults":{"limits":{"rules":[{"name":"g","window":"1d","tokens":100}]}},
                "routes":{"chat":{"limits":{"rules":[{"name":"g2","window":"1d","tokens":50}]}}}}"#,
        );
        assert_eq!(e.path, "routes.chat.limits.rules[1].name");
    }

    #[test]
    fn prices_match_the_longest_prefix() {
        let c = Config::parse(
            br#"{"defaults":{"limits":{"prices":[{"model":"","input":10,"output":30},
                {"model":"gpt-4o","input":2.5,"output":10,"cached_input":1.25},
                {"model":"gpt-4o-mini","input":0.15,"output":0.6}]}}}"#,
        )
        .unwrap();
        let l = &c.route(None).limits;
        assert_eq!(
            l.price_for("gpt-4o-2024-08-06").unwrap().nano_per_token(),
            (2500, 10_000, 1250)
        );
        assert_eq!(
            l.price_for("gpt-4o-mini").unwrap().nano_per_token(),
            (150, 600, 150)
        );
        assert_eq!(l.price_for("llama").unwrap().model, "");
    }

    #[test]
    fn windows_parse_strictly() {
        let f = |ms| Some(Window::Fixed(ms));
        assert_eq!(parse_window("30s"), f(30_000));
        assert_eq!(parse_window("1m"), f(60_000));
        assert_eq!(parse_window("2h"), f(7_200_000));
        assert_eq!(parse_window("31d"), f(31 * 86_400_000));
        assert_eq!(parse_window("1w"), Some(Window::Weeks(7 * 86_400_000)));
        assert_eq!(parse_window("4w"), Some(Window::Weeks(28 * 86_400_000)));
        assert_eq!(parse_window("month"), Some(Window::Month));
        for bad in [
            "", "m", "0m", "01m", "32d", "5w", "1.5m", "-1m", "1 m", "é", "1month", "Month",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }

    #[test]
    fn display_is_path_then_message() {
        let e = ConfigError::at("routes.chat.provider", "must be 1 to 64 characters");
        assert_eq!(
            e.to_string(),
            "tollgate config: routes.chat.provider: must be 1 to 64 characters"
        );
    }
}
