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
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
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
    /// Count and report tokens on this route.
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

/// Where the consumer identity comes from. Only a header the host itself sets is
/// trusted: the edge must strip client-sent copies (see README).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSource {
    /// Request header carrying the consumer id, set by the host's IAM (Kong
    /// `x-consumer-id`, Envoy jwt_authn `claim_to_headers`).
    pub header: String,
}

impl Default for ConsumerSource {
    fn default() -> Self {
        ConsumerSource {
            header: "x-consumer-id".to_string(),
        }
    }
}

/// One token limit: a budget of `tokens` per fixed `window`, per distinct key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Stable name: identifies the counter (with the key values), so a rule in
    /// `defaults` is one budget across routes unless its key includes `route`.
    pub name: String,
    /// Parts the counter is keyed by; empty means one counter for everyone.
    #[serde(default)]
    pub key: Vec<LimitKeyPart>,
    /// Window length: a positive integer and a unit (`s`, `m`, `h`, `d`), e.g. `1m`.
    pub window: String,
    /// Tokens allowed per key per window.
    pub tokens: u64,
    /// Which tokens count against the budget.
    #[serde(default)]
    pub count: LimitCount,
}

impl LimitRule {
    /// The window in milliseconds (validated at configure, so 0 never reaches the
    /// request path).
    pub fn window_ms(&self) -> u64 {
        parse_window(&self.window).unwrap_or(60_000)
    }
}

/// Longest window accepted: 31 days.
const MAX_WINDOW_MS: u64 = 31 * 86_400_000;

/// `"30s"`, `"1m"`, `"1h"`, `"7d"` in milliseconds.
pub fn parse_window(w: &str) -> Option<u64> {
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
        _ => return None,
    };
    let total = n.checked_mul(ms)?;
    (total <= MAX_WINDOW_MS).then_some(total)
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            mode: LimitMode::Enforce,
            consumer: ConsumerSource::default(),
            reserve_max_tokens_default: 1024,
            rules: Vec::new(),
        }
    }
}

impl Limits {
    /// True when there is anything to do: the request path skips limits entirely
    /// otherwise.
    pub fn active(&self) -> bool {
        !self.rules.is_empty()
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let h = &self.consumer.header;
        if h.is_empty()
            || h.len() > 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::at(
                format!("{path}.consumer.header"),
                "expected a lower-case header name of 1 to 64 characters [a-z0-9_-]",
            ));
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
            if self.rules[..i].iter().any(|o| o.name == r.name) {
                return Err(ConfigError::at(
                    at("name"),
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            if parse_window(&r.window).is_none() {
                return Err(ConfigError::at(
                    at("window"),
                    format!(
                        "expected a positive integer and a unit s, m, h or d, at most 31d (e.g. \"1m\"), got {:?}",
                        r.window
                    ),
                ));
            }
            if r.tokens == 0 {
                return Err(ConfigError::at(at("tokens"), "must be at least 1"));
            }
            for (j, k) in r.key.iter().enumerate() {
                if r.key[..j].contains(k) {
                    return Err(ConfigError::at(
                        format!("{path}.rules[{i}].key[{j}]"),
                        "duplicate key part",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Everything tollgate does on one route. `defaults` holds one; each entry of
/// `routes` is merged over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteSettings {
    /// Master switch: `false` makes tollgate a pass-through on this route.
    pub enabled: bool,
    /// Provider label for metrics and logs (the real provider once rewriting lands).
    pub provider: String,
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
}

impl Default for RouteSettings {
    fn default() -> Self {
        RouteSettings {
            enabled: true,
            provider: "openai".to_string(),
            max_request_bytes: 960 * 1024,
            invalid_body: InvalidBody::Pass,
            metering: Metering::default(),
            limits: Limits::default(),
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
        let defaults = settings_from_value(defaults_value.clone(), "defaults")?;

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
            merge(&mut merged, over);
            routes.insert(name, Rc::new(settings_from_value(merged, &path)?));
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
}

fn settings_from_value(v: Value, path: &str) -> Result<RouteSettings, ConfigError> {
    let s: RouteSettings = serde_path_to_error::deserialize(v).map_err(|e| path_error(path, e))?;
    s.validate(path)?;
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
        assert_eq!(chat.limits.rules[1].window_ms(), 86_400_000);
        assert_eq!(chat.limits.rules[1].count, LimitCount::Total);
        assert!(!c.route(None).limits.active());

        let e = err(
            r#"{"routes":{"chat":{"limits":{"rules":[{"name":"a","window":"1w","tokens":1}]}}}}"#,
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
    }

    #[test]
    fn windows_parse_strictly() {
        assert_eq!(parse_window("30s"), Some(30_000));
        assert_eq!(parse_window("1m"), Some(60_000));
        assert_eq!(parse_window("2h"), Some(7_200_000));
        assert_eq!(parse_window("31d"), Some(31 * 86_400_000));
        for bad in ["", "m", "0m", "01m", "32d", "1w", "1.5m", "-1m", "1 m", "é"] {
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
