//! Metering of one request/response exchange, with no host calls.
//!
//! The adapter feeds host events in (headers, complete request body, response
//! chunks) and applies the decisions that come back. Keeping this sans-IO means the
//! whole flow — counting, `stream_options` injection, usage extraction, fallback
//! counting, the final report — is unit-tested natively on recorded payloads.

pub mod labels;
pub mod report;

use std::rc::Rc;

use serde_json::Value;

use crate::config::LimitMode;
use crate::config::{InvalidBody, RouteSettings};
use crate::dialect::{error_body, inject, Api, ErrorKind};
use crate::limits::{self, Admission, Store, Subject};
use crate::tokens::prompt::{count_prompt, PromptCount, PromptOptions};
use crate::tokens::{bpe, models, BudgetedCounter, Encoding, TextCounter};
use crate::usage::stream::{Rewrite, StreamMeter};
use crate::usage::{self, Usage};

pub use report::{Report, UsageSource};

/// What the adapter should do after request headers.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadersDecision {
    /// Not an LLM call tollgate handles here: let it through untouched.
    PassThrough,
    /// Hold headers until the body is complete (the body decides what happens).
    WaitForBody,
    /// Answer locally without forwarding.
    Respond(LocalReply),
}

/// A reply tollgate sends itself, already in the client's dialect.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// JSON body in the client's API dialect.
    pub body: Vec<u8>,
    /// Headers beyond `content-type` (rate-limit headers, `retry-after`).
    pub headers: Vec<(&'static str, String)>,
}

/// What the adapter should do with a complete request body.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyDecision {
    /// Forward the body as it is.
    Forward,
    /// Forward this body instead; the adapter must drop `content-length`.
    Replace(Vec<u8>),
    /// Answer locally without forwarding.
    Respond(LocalReply),
}

/// How the adapter should handle the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Nothing to read: let it through.
    PassThrough,
    /// Hold headers and buffer the whole (JSON) body, then add `x-llm-*` headers.
    Buffer,
    /// Let chunks through as they come, copying them for usage parsing at the end.
    Copy,
    /// An SSE stream: feed every chunk to [`Exchange::on_stream_chunk`].
    Stream,
}

/// Largest non-streaming JSON response held back (headers paused) to add token
/// headers. Above it the response streams through and only logs/metrics/filter
/// state carry the numbers, so a large embeddings answer never hits the host's
/// buffer limit.
pub const MAX_BUFFERED_RESPONSE: u64 = 512 * 1024;
/// Largest non-streaming response copied for usage parsing when not buffered.
pub const MAX_COPIED_RESPONSE: usize = 8 * 1024 * 1024;

/// One request/response exchange on one route.
pub struct Exchange {
    settings: Rc<RouteSettings>,
    route: Rc<str>,
    api: Option<Api>,
    model: Option<String>,
    /// Vocabulary of the request's model (`None`: no public tokenizer, estimate).
    encoding: Option<Encoding>,
    streaming: bool,
    prompt: Option<PromptCount>,
    stream: Option<StreamMeter>,
    copy: Vec<u8>,
    copy_overflow: bool,
    response_status: u32,
    response_usage: Option<Usage>,
    response_model: Option<String>,
    reported: bool,
    max_tokens: Option<u64>,
    consumer: Option<String>,
    admission: Option<Admission>,
    /// The response body had a `content-encoding` tollgate cannot read.
    encoded_response: bool,
    /// Completions the provider generates (and bills) per request: OpenAI's `n`,
    /// or `best_of` for legacy completions; 1 otherwise.
    choices: u64,
}

impl Exchange {
    /// Start an exchange with the route's resolved settings.
    pub fn new(settings: Rc<RouteSettings>, route: Rc<str>) -> Self {
        Exchange {
            settings,
            route,
            api: None,
            model: None,
            encoding: None,
            streaming: false,
            prompt: None,
            stream: None,
            copy: Vec::new(),
            copy_overflow: false,
            response_status: 0,
            response_usage: None,
            response_model: None,
            reported: false,
            max_tokens: None,
            consumer: None,
            admission: None,
            encoded_response: false,
            choices: 1,
        }
    }

    /// The API recognised from the path, once request headers were seen.
    pub fn api(&self) -> Option<Api> {
        self.api
    }

    /// Host route name (or `default`).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Route settings this exchange runs under.
    pub fn settings(&self) -> &RouteSettings {
        &self.settings
    }

    /// Decide from the request headers whether tollgate needs the body.
    /// `content_length` is the declared size, if any; `end_of_stream` is true for
    /// a headers-only request.
    pub fn on_request_headers(
        &mut self,
        method: &str,
        path: &str,
        content_length: Option<u64>,
        end_of_stream: bool,
    ) -> HeadersDecision {
        if !self.settings.enabled || !self.settings.metering.enabled {
            return HeadersDecision::PassThrough;
        }
        if !method.eq_ignore_ascii_case("POST") || end_of_stream {
            return HeadersDecision::PassThrough;
        }
        let Some(api) = Api::from_path(path) else {
            return HeadersDecision::PassThrough;
        };
        self.api = Some(api);
        if let Some(len) = content_length {
            if len > self.settings.max_request_bytes {
                return HeadersDecision::Respond(self.too_large());
            }
        }
        HeadersDecision::WaitForBody
    }

    /// Called as body bytes accumulate, so an oversized upload is refused early
    /// instead of filling the host's buffer.
    pub fn check_body_size(&self, buffered: u64) -> Option<LocalReply> {
        if self.api.is_some() && buffered > self.settings.max_request_bytes {
            Some(self.too_large())
        } else {
            None
        }
    }

    fn too_large(&self) -> LocalReply {
        let family = self
            .api
            .map(Api::family)
            .unwrap_or(crate::dialect::Family::OpenAi);
        LocalReply {
            status: ErrorKind::RequestTooLarge.status(),
            body: error_body(
                family,
                ErrorKind::RequestTooLarge,
                &format!(
                    "Request body exceeds this route's limit of {} bytes (tollgate max_request_bytes).",
                    self.settings.max_request_bytes
                ),
            ),
            headers: Vec::new(),
        }
    }

    /// The complete request body: count the prompt, and add usage reporting to
    /// OpenAI streaming requests.
    pub fn on_request_body(&mut self, body: &[u8]) -> BodyDecision {
        let Some(api) = self.api else {
            return BodyDecision::Forward;
        };
        if let Some(reply) = self.check_body_size(body.len() as u64) {
            return BodyDecision::Respond(reply);
        }
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return self.invalid_body(api, "the request body must be a JSON object"),
            Err(e) => {
                return self.invalid_body(api, &format!("the request body is not valid JSON: {e}"))
            }
        };
        let model = parsed.get("model").and_then(Value::as_str).unwrap_or("");
        self.model = (!model.is_empty()).then(|| model.to_string());
        self.streaming = parsed
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.max_tokens = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| parsed.get(*k).and_then(Value::as_u64));
        self.choices = choices(api, &parsed);

        let profile = models::profile(model);
        self.encoding = profile.encoding;
        let mut counter = self.counter();
        let m = &self.settings.metering;
        let opts = PromptOptions {
            image_estimate_tokens: m.image_estimate_tokens,
            bytes_per_token: m.estimate_bytes_per_token,
        };
        let mut count = count_prompt(api, &parsed, &profile, &mut counter, &opts);
        count.estimated |= counter.estimated();
        self.prompt = Some(count);

        if self.streaming
            && m.inject_stream_usage
            && matches!(api, Api::ChatCompletions | Api::Completions)
        {
            let inj = inject::ensure_stream_usage(body, &parsed);
            self.stream = Some(self.stream_meter(api, !inj.client_asked));
            if let Some(new_body) = inj.body {
                return BodyDecision::Replace(new_body);
            }
        }
        BodyDecision::Forward
    }

    /// A counter for this exchange's model with the route's full byte budget: one
    /// for the prompt, and one for streamed text when the provider reports no usage.
    fn counter(&self) -> BudgetedCounter<'static> {
        let m = &self.settings.metering;
        let budget = usize::try_from(m.tokenize_byte_budget).unwrap_or(usize::MAX);
        BudgetedCounter::new(
            self.encoding.map(bpe::tokenizer),
            budget,
            m.estimate_bytes_per_token,
        )
    }

    /// A stream meter with the route's limits; `strip_usage` when tollgate asked
    /// for usage the client did not.
    fn stream_meter(&self, api: Api, strip_usage: bool) -> StreamMeter {
        let m = &self.settings.metering;
        StreamMeter::new(
            api,
            strip_usage,
            usize::try_from(m.max_event_bytes).unwrap_or(usize::MAX),
            usize::try_from(m.tokenize_byte_budget).unwrap_or(usize::MAX),
        )
    }

    fn invalid_body(&mut self, api: Api, why: &str) -> BodyDecision {
        match self.settings.invalid_body {
            InvalidBody::Pass => {
                // Not ours to meter: forget the API so responses pass through too.
                self.api = None;
                BodyDecision::Forward
            }
            InvalidBody::Reject => BodyDecision::Respond(LocalReply {
                status: ErrorKind::InvalidRequest.status(),
                body: error_body(api.family(), ErrorKind::InvalidRequest, why),
                headers: Vec::new(),
            }),
        }
    }

    /// True when this exchange is subject to token limits: the route has rules and
    /// the request was counted. The adapter does no limit work (no clock, no store)
    /// otherwise.
    pub fn limits_active(&self) -> bool {
        self.settings.enabled
            && self.settings.limits.active()
            && self.api.is_some()
            && self.prompt.is_some()
    }

    /// The consumer id the host's IAM put in the trusted header (see
    /// `limits.consumer.header`); `None` means the anonymous consumer.
    pub fn set_consumer(&mut self, consumer: Option<String>) {
        self.consumer = consumer.filter(|c| !c.is_empty());
    }

    /// Completion tokens reserved at admission: the request's own cap, else the
    /// route's default; embeddings produce none.
    fn reservation(&self) -> u64 {
        if self.api == Some(Api::Embeddings) {
            return 0;
        }
        self.max_tokens
            .unwrap_or(self.settings.limits.reserve_max_tokens_default)
    }

    /// Admission against the route's limits, after the body was counted. Returns
    /// the 429 to send when refused (the exchange is then over: no usage report).
    pub fn admit(&mut self, store: &mut dyn Store, now_ms: u64) -> Option<LocalReply> {
        if !self.limits_active() {
            return None;
        }
        let prompt = self.prompt.map_or(0, |p| p.tokens);
        let subject = Subject {
            consumer: self.consumer.as_deref(),
            route: &self.route,
            model: self.model.as_deref().unwrap_or(""),
            provider: &self.settings.provider,
            prompt_tokens: prompt,
            // Every choice can use the whole cap: `n: 8` must not reserve for one.
            reserve_tokens: self.reservation().saturating_mul(self.choices),
        };
        let a = limits::admit(&self.settings.limits, store, now_ms, &subject);
        let reply = (!a.allowed).then(|| {
            let family = self
                .api
                .map(Api::family)
                .unwrap_or(crate::dialect::Family::OpenAi);
            let (rule, limit, remaining, reset) = a.state.as_ref().map_or(("?", 0, 0, 0), |s| {
                (s.rule.as_str(), s.limit, s.remaining, s.reset_ms)
            });
            let msg = format!(
                "Rate limit reached for tokens (tollgate rule '{rule}'): limit {limit}, remaining {remaining}, requested {prompt} prompt + {} reserved completion tokens. Please try again in {}.",
                subject.reserve_tokens,
                limits::format_duration(reset)
            );
            let mut headers = self.rate_limit_headers_of(&a);
            let secs = a.retry_after_secs();
            headers.push(("retry-after", secs.to_string()));
            headers.push(("retry-after-ms", (secs * 1000).to_string()));
            LocalReply {
                status: ErrorKind::RateLimited.status(),
                body: error_body(family, ErrorKind::RateLimited, &msg),
                headers,
            }
        });
        if reply.is_some() {
            // Refused before forwarding: nothing was used, nothing to report.
            self.reported = true;
        }
        self.admission = Some(a);
        reply
    }

    /// The admission outcome, for the adapter's metric and log line.
    pub fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    /// Whether limits run in report-only mode on this route.
    pub fn limits_report_only(&self) -> bool {
        self.settings.limits.mode == LimitMode::ReportOnly
    }

    fn rate_limit_headers_of(&self, a: &Admission) -> Vec<(&'static str, String)> {
        a.state.as_ref().map(|s| s.headers()).unwrap_or_default()
    }

    /// `x-ratelimit-*-tokens` headers for an admitted request's response (empty
    /// when no limits apply).
    pub fn rate_limit_headers(&self) -> Vec<(&'static str, String)> {
        self.admission
            .as_ref()
            .map(|a| self.rate_limit_headers_of(a))
            .unwrap_or_default()
    }

    /// True the admission charges up to the real usage of the finished exchange.
    /// Runs once; later calls do nothing.
    pub fn settle(&mut self, store: &mut dyn Store, report: &Report) {
        if let Some(a) = self.admission.as_mut() {
            let charged = std::mem::take(&mut a.charges);
            let a = Admission {
                charges: charged,
                ..a.clone()
            };
            limits::true_up(
                store,
                &a,
                report.usage.prompt_tokens,
                report.usage.completion_tokens,
            );
        }
    }

    /// Decide how to read the response from its status and headers.
    pub fn on_response_headers(
        &mut self,
        status: u32,
        content_type: Option<&str>,
        content_length: Option<u64>,
    ) -> ResponseMode {
        self.response_status = status;
        let Some(api) = self.api else {
            return ResponseMode::PassThrough;
        };
        if self.prompt.is_none() || !(200..300).contains(&status) {
            return ResponseMode::PassThrough;
        }
        let ct = content_type.unwrap_or("");
        if starts_with_ignore_case(ct, "text/event-stream") {
            if self.stream.is_none() {
                self.stream = Some(self.stream_meter(api, false));
            }
            return ResponseMode::Stream;
        }
        // A stream we prepared for came back as JSON (e.g. the provider ignored
        // `stream`): nothing will need stripping.
        self.stream = None;
        if starts_with_ignore_case(ct, "application/json") || ct.is_empty() {
            let small = content_length.is_some_and(|n| n <= MAX_BUFFERED_RESPONSE);
            if self.settings.metering.response_headers && small {
                ResponseMode::Buffer
            } else {
                ResponseMode::Copy
            }
        } else {
            ResponseMode::PassThrough
        }
    }

    /// Instead of [`Exchange::on_response_headers`] when the response carries a
    /// `content-encoding` other than `identity` (an upstream may compress even
    /// though tollgate drops `accept-encoding`): the body can be neither read nor
    /// edited, so it passes through byte for byte, and the report falls back to
    /// tollgate's prompt count, labelled as an estimate (the completion is unknown).
    pub fn on_encoded_response_headers(&mut self, status: u32) -> ResponseMode {
        self.response_status = status;
        self.stream = None;
        self.encoded_response = self.api.is_some() && (200..300).contains(&status);
        ResponseMode::PassThrough
    }

    /// A chunk of a non-streaming response in [`ResponseMode::Copy`].
    pub fn on_copied_chunk(&mut self, chunk: &[u8]) {
        if self.copy_overflow {
            return;
        }
        if self.copy.len() + chunk.len() > MAX_COPIED_RESPONSE {
            self.copy_overflow = true;
            self.copy = Vec::new();
            return;
        }
        self.copy.extend_from_slice(chunk);
    }

    /// The whole non-streaming response body (buffered, or the end of a copy).
    /// Returns the report; the adapter turns it into headers if it still can.
    pub fn on_response_complete(&mut self, body: Option<&[u8]>) -> Option<Report> {
        let api = self.api?;
        let copy = std::mem::take(&mut self.copy);
        let body = body.unwrap_or(&copy);
        let (u, model) = usage::usage_and_model_from_response_json(api, body);
        self.response_usage = u;
        self.response_model = model;
        self.finish()
    }

    /// A chunk of an SSE response: returns what the client should receive instead,
    /// if anything must change. At `end_of_stream` the report is ready via [`Exchange::finish`].
    pub fn on_stream_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Rewrite {
        match self.stream.as_mut() {
            Some(s) => s.on_chunk(chunk, end_of_stream),
            None => Rewrite::Unchanged,
        }
    }

    /// Build the final report once (later calls return `None`). Called at the end
    /// of the response, or from the host's stream-done hook for exchanges that
    /// ended early (reset, error), so every metered request is reported exactly once.
    pub fn finish(&mut self) -> Option<Report> {
        if self.reported {
            return None;
        }
        let api = self.api?;
        let prompt = self.prompt?;
        self.reported = true;
        let m = &self.settings.metering;

        let mut usage = self.response_usage;
        let mut source = UsageSource::Provider;
        let mut estimated_completion = false;
        if let Some(stream) = self.stream.as_ref() {
            let summary = stream.finish();
            if usage.is_none() {
                usage = summary.usage;
            }
            if self.response_model.is_none() {
                self.response_model = summary.model.clone();
            }
            // A stream cut before its closing usage (Anthropic's `message_delta`)
            // holds only the start-of-message count: count what was streamed instead,
            // keeping the provider's input figures.
            let partial = usage.is_some() && !summary.usage_final;
            if (usage.is_none() || partial) && m.count_streamed_deltas {
                let mut completion = self.counter().count(&summary.fallback_text);
                if summary.fallback_truncated_bytes > 0 {
                    completion += crate::tokens::estimate_tokens(
                        summary.fallback_truncated_bytes,
                        m.estimate_bytes_per_token,
                    );
                }
                let base = usage.unwrap_or(Usage {
                    prompt_tokens: prompt.tokens,
                    ..Usage::default()
                });
                usage = Some(Usage {
                    completion_tokens: completion.max(base.completion_tokens),
                    ..base
                });
                source = UsageSource::Counted;
                estimated_completion = true;
            }
        }
        let success = (200..300).contains(&self.response_status);
        let usage = match usage {
            Some(u) => u,
            None => {
                source = UsageSource::Counted;
                Usage {
                    prompt_tokens: if success { prompt.tokens } else { 0 },
                    ..Usage::default()
                }
            }
        };
        let estimated = match source {
            UsageSource::Provider => false,
            UsageSource::Counted => {
                prompt.estimated || estimated_completion || self.encoded_response
            }
        };
        Some(Report {
            api,
            route: self.route.clone(),
            provider: self.settings.provider.clone(),
            request_model: self.model.clone(),
            response_model: self.response_model.clone(),
            streaming: self.streaming,
            status: self.response_status,
            counted_prompt_tokens: prompt.tokens,
            counted_prompt_estimated: prompt.estimated,
            usage,
            source,
            estimated,
        })
    }
}

/// Completions generated per request: `n` (and legacy `best_of`, which the
/// provider generates and bills in full) on OpenAI chat/completions; at least 1.
fn choices(api: Api, parsed: &Value) -> u64 {
    if !matches!(api, Api::ChatCompletions | Api::Completions) {
        return 1;
    }
    ["n", "best_of"]
        .iter()
        .filter_map(|k| parsed.get(*k).and_then(Value::as_u64))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// True for a `content-encoding` tollgate can read: none, or `identity`.
pub fn identity_encoding(content_encoding: Option<&str>) -> bool {
    content_encoding
        .is_none_or(|e| e.trim().is_empty() || e.trim().eq_ignore_ascii_case("identity"))
}

/// Case-insensitive prefix test for header values (`Text/Event-Stream`), without
/// allocating a lower-case copy on every response.
fn starts_with_ignore_case(value: &str, prefix: &str) -> bool {
    value
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

#[cfg(test)]
mod tests;
