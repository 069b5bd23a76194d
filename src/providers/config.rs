//! The `provider` section of a route: which provider, where, with which credentials.
//!
//! ```json
//! "provider": "openai"                      // label only: no rewriting (as before)
//! "provider": {
//!   "kind": "anthropic",                    // openai | openai_compatible | azure_openai
//!                                           // | anthropic | gemini | bedrock
//!   "name": "anthropic",                    // metric label (default: the kind)
//!   "endpoint": { "authority": "api.anthropic.com", "base_path": "/v1",
//!                 "cluster": "anthropic" },
//!   "api_key": { "env": "ANTHROPIC_API_KEY" },   // or { "inline": "sk-..." }
//!   "model_map": { "fast": "claude-haiku-4-5" },
//!   "anthropic": { "max_tokens_default": 4096, "version": "2023-06-01" },
//!   "azure": { "api_version": "2024-10-21" },
//!   "aws": { "region": "us-east-1", "access_key_id": {...}, "secret_access_key": {...},
//!            "session_token": {...} }
//! }
//! ```
//! Secrets are resolved once at configure (`env` through WASI `environ_get`, which
//! Envoy fills from `vm_config.environment_variables`), and their `Debug` prints
//! `<redacted>`, so no log line ever carries one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Which wire protocol the upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI itself.
    #[serde(rename = "openai")]
    OpenAi,
    /// Servers speaking OpenAI's API: Mistral, Groq, DeepSeek, vLLM, Ollama, OpenRouter.
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
    /// Azure OpenAI: deployment in the path, `api-version`, `api-key` header.
    #[serde(rename = "azure_openai")]
    AzureOpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent?alt=sse`.
    Gemini,
    /// AWS Bedrock Converse / ConverseStream, SigV4-signed.
    Bedrock,
}

impl ProviderKind {
    /// The config spelling, also the default metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::OpenAiCompatible => "openai_compatible",
            ProviderKind::AzureOpenAi => "azure_openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Bedrock => "bedrock",
        }
    }
}

/// A credential: where it comes from in the config, and its value once resolved.
/// `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The value itself, in the config (fine for tests; prefer `env` in production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Name of an environment variable of the wasm VM. In Envoy, list it in
    /// `vm_config.environment_variables.host_env_keys` (copied from Envoy's own
    /// environment) or `key_values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(skip)]
    value: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            Some(e) => write!(f, "Secret(env {e:?}, <redacted>)"),
            None => f.write_str("Secret(<redacted>)"),
        }
    }
}

impl Secret {
    /// An inline secret (tests, tools).
    pub fn inline(value: &str) -> Secret {
        Secret {
            inline: Some(value.to_string()),
            env: None,
            value: value.to_string(),
        }
    }

    /// The resolved value. Never log it.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Resolve the value once at configure.
    fn resolve(
        &mut self,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let v = match (&self.inline, &self.env) {
            (Some(v), None) => v.clone(),
            (None, Some(name)) => env(name).ok_or_else(|| {
                ConfigError::at(
                    format!("{path}.env"),
                    format!(
                        "environment variable {name:?} is not set in the wasm VM (Envoy: add it to vm_config.environment_variables host_env_keys or key_values)"
                    ),
                )
            })?,
            _ => {
                return Err(ConfigError::at(
                    path,
                    "expected exactly one of `inline` or `env`",
                ))
            }
        };
        if v.is_empty() || v.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(ConfigError::at(
                path,
                "the secret is empty or holds control characters (a trailing newline?)",
            ));
        }
        self.value = v;
        Ok(())
    }
}

/// Where requests for this provider go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoint {
    /// New `:authority` (e.g. `api.anthropic.com`); unset keeps the client's.
    pub authority: Option<String>,
    /// Path prefix before the API's own path, e.g. `/v1` (Anthropic, OpenAI),
    /// `/openai/v1` (Groq), `/api/v1` (OpenRouter). Unset: the provider's default.
    pub base_path: Option<String>,
    /// Envoy cluster that should carry the request. tollgate sets it in the
    /// `x-tollgate-cluster` request header; a route with
    /// `cluster_header: x-tollgate-cluster` sends it there (see docs/providers.md).
    pub cluster: Option<String>,
    /// `host:port` tollgate dials itself with `dispatch_http_call` (Kong fallback,
    /// where ngx_wasm_module takes an address, not a cluster). Unset: `authority`
    /// with port 443 (`tls`) or 80.
    pub address: Option<String>,
    /// Calls tollgate makes itself use TLS (`:scheme: https`). Default true.
    pub tls: Option<bool>,
    /// Timeout of a call tollgate makes itself, in ms (default 300000: a whole
    /// non-streaming answer).
    pub timeout_ms: Option<u32>,
}

impl Endpoint {
    /// The `host:port` to dial for a call tollgate makes itself, if known.
    pub fn dial_address(&self) -> Option<String> {
        if let Some(a) = &self.address {
            return Some(a.clone());
        }
        let host = self.authority.as_deref()?;
        if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            return Some(host.to_string());
        }
        let port = if self.uses_tls() { 443 } else { 80 };
        Some(format!("{host}:{port}"))
    }

    /// TLS for calls tollgate makes itself.
    pub fn uses_tls(&self) -> bool {
        self.tls.unwrap_or(true)
    }

    /// Timeout for calls tollgate makes itself.
    pub fn call_timeout_ms(&self) -> u32 {
        self.timeout_ms.unwrap_or(300_000)
    }
}

/// Anthropic options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnthropicOptions {
    /// `max_tokens` sent when the client gave none (Anthropic requires it).
    pub max_tokens_default: u64,
    /// `anthropic-version` header.
    pub version: String,
    /// `thinking.budget_tokens` sent for each OpenAI `reasoning_effort`.
    pub thinking_budgets: ThinkingBudgets,
}

impl Default for AnthropicOptions {
    fn default() -> Self {
        AnthropicOptions {
            max_tokens_default: 4096,
            version: "2023-06-01".to_string(),
            thinking_budgets: ThinkingBudgets::default(),
        }
    }
}

/// Anthropic extended-thinking budgets (tokens) per OpenAI `reasoning_effort`.
/// Defaults are LiteLLM's (low 1024, medium 2048, high 4096), with `minimal` at
/// Anthropic's floor of 1024 and `xhigh` at twice `high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThinkingBudgets {
    /// `reasoning_effort: "minimal"`.
    pub minimal: u64,
    /// `reasoning_effort: "low"`.
    pub low: u64,
    /// `reasoning_effort: "medium"`.
    pub medium: u64,
    /// `reasoning_effort: "high"`.
    pub high: u64,
    /// `reasoning_effort: "xhigh"`.
    pub xhigh: u64,
}

impl Default for ThinkingBudgets {
    fn default() -> Self {
        ThinkingBudgets {
            minimal: 1024,
            low: 1024,
            medium: 2048,
            high: 4096,
            xhigh: 8192,
        }
    }
}

impl ThinkingBudgets {
    /// The budget for a `reasoning_effort` value: `Some(None)` for `"none"` (thinking
    /// off), `None` for a value OpenAI does not define.
    pub fn for_effort(&self, effort: &str) -> Option<Option<u64>> {
        Some(Some(match effort {
            "none" => return Some(None),
            "minimal" => self.minimal,
            "low" => self.low,
            "medium" => self.medium,
            "high" => self.high,
            "xhigh" => self.xhigh,
            _ => return None,
        }))
    }
}

/// Azure OpenAI options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureOptions {
    /// `api-version` query parameter.
    pub api_version: String,
}

impl Default for AzureOptions {
    fn default() -> Self {
        AzureOptions {
            api_version: "2024-10-21".to_string(),
        }
    }
}

/// AWS credentials and region (Bedrock).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsOptions {
    /// Region, e.g. `us-east-1` (also names the default authority
    /// `bedrock-runtime.<region>.amazonaws.com`).
    pub region: String,
    /// Access key id.
    pub access_key_id: Option<Secret>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials, if any.
    pub session_token: Option<Secret>,
}

/// A route's provider, fully described (the object form of `provider`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Metric/log label; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Where to send requests.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// API key (Bearer for OpenAI-compatible, `x-api-key` for Anthropic, `api-key`
    /// for Azure, `x-goog-api-key` for Gemini). Unset: the client's own auth header
    /// goes through unchanged.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Model aliases: the client's `model` → the upstream model (for Azure, the
    /// deployment name).
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    /// Anthropic options.
    #[serde(default)]
    pub anthropic: AnthropicOptions,
    /// Azure OpenAI options.
    #[serde(default)]
    pub azure: AzureOptions,
    /// AWS options (Bedrock).
    #[serde(default)]
    pub aws: AwsOptions,
    /// In a route's `providers` list: the client models this provider serves, exact
    /// names or `prefix*` patterns, matched before the model map.
    #[serde(default)]
    pub models: Vec<String>,
    /// A second provider for a request the first answers with 429 or 5xx
    /// (non-streaming, on Kong; Envoy uses the route's retry policy, see
    /// docs/providers.md "Fallback").
    #[serde(default)]
    pub fallback: Option<Box<ProviderConfig>>,
}

impl ProviderConfig {
    /// A config of `kind` with everything else default (tests, tools).
    pub fn new(kind: ProviderKind) -> ProviderConfig {
        ProviderConfig {
            kind,
            name: None,
            endpoint: Endpoint::default(),
            api_key: None,
            model_map: BTreeMap::new(),
            anthropic: AnthropicOptions::default(),
            azure: AzureOptions::default(),
            aws: AwsOptions::default(),
            models: Vec::new(),
            fallback: None,
        }
    }

    /// True when `model` is one of `models` (exact, or a `prefix*` pattern).
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => m == model,
        })
    }

    /// The metric/log label.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }

    /// The upstream model for the client's `model`: the model map's entry, else unchanged.
    pub fn map_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }

    /// Validate and resolve secrets; `path` is this object's config path.
    pub fn resolve(
        &mut self,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let at = |f: &str| format!("{path}.{f}");
        if let Some(n) = &self.name {
            if n.is_empty()
                || n.len() > 64
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::at(
                    at("name"),
                    "expected 1 to 64 characters [A-Za-z0-9_-] (it becomes a metric label)",
                ));
            }
        }
        if let Some(a) = &self.endpoint.authority {
            if a.is_empty() || a.bytes().any(|b| b <= b' ' || b == b'/' || b >= 0x7f) {
                return Err(ConfigError::at(
                    at("endpoint.authority"),
                    "expected a host[:port] with no scheme or path",
                ));
            }
        }
        if let Some(p) = &self.endpoint.base_path {
            if !p.is_empty()
                && (!p.starts_with('/') || p.ends_with('/') || p.bytes().any(|b| b <= b' '))
            {
                return Err(ConfigError::at(
                    at("endpoint.base_path"),
                    "expected \"\" or a path starting with '/' and not ending with '/' (e.g. \"/v1\")",
                ));
            }
        }
        if let Some(c) = &self.endpoint.cluster {
            if c.is_empty() || c.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                return Err(ConfigError::at(
                    at("endpoint.cluster"),
                    "expected an Envoy cluster name",
                ));
            }
        }
        if let Some(a) = &self.endpoint.address {
            let port_ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok || a.bytes().any(|b| b <= b' ' || b == b'/' || b >= 0x7f) {
                return Err(ConfigError::at(
                    at("endpoint.address"),
                    "expected host:port (e.g. \"api.openai.com:443\" or \"10.0.0.7:8080\")",
                ));
            }
        }
        if self.endpoint.timeout_ms == Some(0) {
            return Err(ConfigError::at(
                at("endpoint.timeout_ms"),
                "must be at least 1",
            ));
        }
        if let Some(f) = self.fallback.as_mut() {
            let fat = at("fallback");
            if f.fallback.is_some() {
                return Err(ConfigError::at(
                    format!("{fat}.fallback"),
                    "one fallback per provider: a request is retried once",
                ));
            }
            if !f.models.is_empty() {
                return Err(ConfigError::at(
                    format!("{fat}.models"),
                    "not used on a fallback (it serves whatever its provider did)",
                ));
            }
            f.resolve(&fat, env)?;
            for (who, e, path) in [
                ("this provider", &self.endpoint, at("endpoint")),
                ("the fallback", &f.endpoint, format!("{fat}.endpoint")),
            ] {
                if e.dial_address().is_none() {
                    return Err(ConfigError::at(
                        format!("{path}.address"),
                        format!("{who} needs `address` (host:port) or `authority`: on Kong tollgate calls it itself to fall back"),
                    ));
                }
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.is_empty()
                || m.get(..m.len().saturating_sub(1))
                    .is_some_and(|h| h.contains('*'))
            {
                return Err(ConfigError::at(
                    format!("{path}.models[{i}]"),
                    "expected a model name or a `prefix*` pattern (one trailing `*`)",
                ));
            }
        }
        for (k, v) in &self.model_map {
            if k.is_empty() || v.is_empty() {
                return Err(ConfigError::at(
                    at("model_map"),
                    format!("aliases and targets must not be empty ({k:?} → {v:?})"),
                ));
            }
        }
        if self.azure.api_version.is_empty()
            || !self
                .azure
                .api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(ConfigError::at(
                at("azure.api_version"),
                "expected an api-version such as \"2024-10-21\"",
            ));
        }
        if self.anthropic.max_tokens_default == 0 {
            return Err(ConfigError::at(
                at("anthropic.max_tokens_default"),
                "must be at least 1",
            ));
        }
        let b = self.anthropic.thinking_budgets;
        for (name, v) in [
            ("minimal", b.minimal),
            ("low", b.low),
            ("medium", b.medium),
            ("high", b.high),
            ("xhigh", b.xhigh),
        ] {
            if v < 1024 {
                return Err(ConfigError::at(
                    at(&format!("anthropic.thinking_budgets.{name}")),
                    "must be at least 1024 (Anthropic's minimum thinking budget)",
                ));
            }
        }
        if let Some(s) = self.api_key.as_mut() {
            s.resolve(&at("api_key"), env)?;
        }
        match self.kind {
            ProviderKind::AzureOpenAi if self.endpoint.authority.is_none() => {
                return Err(ConfigError::at(
                    at("endpoint.authority"),
                    "required for azure_openai (e.g. \"myresource.openai.azure.com\")",
                ));
            }
            ProviderKind::OpenAiCompatible if self.endpoint.authority.is_none() => {
                return Err(ConfigError::at(
                    at("endpoint.authority"),
                    "required for openai_compatible (e.g. \"api.mistral.ai\")",
                ));
            }
            ProviderKind::Bedrock => {
                if self.aws.region.is_empty() {
                    return Err(ConfigError::at(at("aws.region"), "required for bedrock"));
                }
                for (name, s) in [
                    ("access_key_id", self.aws.access_key_id.as_mut()),
                    ("secret_access_key", self.aws.secret_access_key.as_mut()),
                ] {
                    match s {
                        Some(s) => s.resolve(&at(&format!("aws.{name}")), env)?,
                        None => {
                            return Err(ConfigError::at(
                                at(&format!("aws.{name}")),
                                "required for bedrock (requests are SigV4-signed)",
                            ))
                        }
                    }
                }
                if let Some(s) = self.aws.session_token.as_mut() {
                    s.resolve(&at("aws.session_token"), env)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
