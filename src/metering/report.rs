//! The outcome of one metered exchange and its renderings: response headers,
//! filter-state entries for access logs, and the structured debug log line.

use std::rc::Rc;

use serde::Serialize;

use crate::config::FilterStateKey;
use crate::dialect::Api;
use crate::host::HeaderList;
use crate::usage::Usage;

/// Where the reported numbers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider's own `usage` (what it bills).
    Provider,
    /// tollgate's count (the provider reported none).
    Counted,
}

/// Everything known about one exchange once it is over.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// API dialect of the request.
    pub api: Api,
    /// Host route name (`xds.route_name` / Kong route), or `default`.
    pub route: Rc<str>,
    /// Provider label from config.
    pub provider: String,
    /// `model` in the request.
    pub request_model: Option<String>,
    /// `model` in the response (often a dated version of the requested one).
    pub response_model: Option<String>,
    /// The client asked for a stream.
    pub streaming: bool,
    /// Upstream HTTP status.
    pub status: u32,
    /// tollgate's own prompt count, made before forwarding.
    pub counted_prompt_tokens: u64,
    /// That count includes estimated parts (no public tokenizer, or over budget).
    pub counted_prompt_estimated: bool,
    /// Final usage: the provider's when it reported one, else tollgate's count.
    pub usage: Usage,
    /// Where `usage` comes from.
    pub source: UsageSource,
    /// `usage` includes estimated parts.
    pub estimated: bool,
}

impl Report {
    /// The model to label numbers with: what was requested (stable, low
    /// cardinality), falling back to what the provider said it served.
    pub fn model(&self) -> &str {
        self.request_model
            .as_deref()
            .or(self.response_model.as_deref())
            .unwrap_or("unknown")
    }

    /// `x-llm-*` response headers for non-streaming responses.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = HeaderList::with_capacity(5);
        self.push_headers(&mut h);
        h.to_vec()
    }

    /// [`Report::headers`], appended to the caller's list (no allocation per value).
    pub fn push_headers(&self, h: &mut HeaderList) {
        h.push_u64("x-llm-prompt-tokens", self.usage.prompt_tokens);
        h.push_u64("x-llm-completion-tokens", self.usage.completion_tokens);
        h.push_u64("x-llm-total-tokens", self.usage.total());
        h.push("x-llm-model", self.model());
        if self.estimated {
            h.push("x-llm-tokens-estimated", "true");
        }
    }

    /// Filter-state entries for `keys`; Envoy exposes `llm.x` as
    /// `%FILTER_STATE(wasm.llm.x:PLAIN)%`. Each entry is a hostcall (~1.5 µs in
    /// Envoy's V8), which is why the route config picks the keys.
    pub fn filter_state(&self, keys: &[FilterStateKey]) -> Vec<(&'static str, String)> {
        let mut out = HeaderList::with_capacity(keys.len());
        self.push_filter_state(keys, &mut out);
        out.to_vec()
    }

    /// [`Report::filter_state`], appended to the caller's list (no allocation per value).
    pub fn push_filter_state(&self, keys: &[FilterStateKey], out: &mut HeaderList) {
        for k in keys {
            let name = k.property();
            match k {
                FilterStateKey::PromptTokens => out.push_u64(name, self.usage.prompt_tokens),
                FilterStateKey::CompletionTokens => {
                    out.push_u64(name, self.usage.completion_tokens)
                }
                FilterStateKey::TotalTokens => out.push_u64(name, self.usage.total()),
                FilterStateKey::CachedTokens => out.push_u64(name, self.usage.cached_tokens),
                FilterStateKey::ReasoningTokens => out.push_u64(name, self.usage.reasoning_tokens),
                FilterStateKey::CountedPromptTokens => {
                    out.push_u64(name, self.counted_prompt_tokens)
                }
                FilterStateKey::Model => out.push(name, self.model()),
                FilterStateKey::ResponseModel => {
                    out.push(name, self.response_model.as_deref().unwrap_or(""))
                }
                FilterStateKey::Provider => out.push(name, &self.provider),
                FilterStateKey::Route => out.push(name, &self.route),
                FilterStateKey::Api => out.push(name, self.api.name()),
                FilterStateKey::Estimated => {
                    out.push(name, if self.estimated { "true" } else { "false" })
                }
                FilterStateKey::UsageSource => out.push(
                    name,
                    match self.source {
                        UsageSource::Provider => "provider",
                        UsageSource::Counted => "counted",
                    },
                ),
            }
        }
    }

    /// One JSON line per request for debug logs: everything, no prompt content.
    pub fn log_line(&self) -> String {
        let v = serde_json::json!({
            "event": "tollgate.exchange",
            "route": &*self.route,
            "api": self.api.name(),
            "provider": self.provider,
            "model": self.model(),
            "response_model": self.response_model,
            "stream": self.streaming,
            "status": self.status,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total(),
            "cached_tokens": self.usage.cached_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "counted_prompt_tokens": self.counted_prompt_tokens,
            "usage_source": self.source,
            "estimated": self.estimated,
        });
        v.to_string()
    }
}
