//! Metering of one request/response exchange, with no host calls.
//!
//! The adapter feeds host events in (headers, complete request body, response
//! chunks) and applies the decisions that come back. Keeping this sans-IO means the
//! whole flow — counting, `stream_options` injection, usage extraction, fallback
//! counting, the final report — is unit-tested natively on recorded payloads.

pub mod labels;
pub mod report;

use std::rc::Rc;

use crate::config::LimitMode;
use crate::config::{InvalidBody, RouteSettings};
use crate::dialect::doc::{Doc, Node};
use crate::dialect::{error_body, inject, Api, ErrorKind};
use crate::host::HeaderList;
use crate::limits::{self, Admission, Store, Subject};
use crate::providers::stage::Stage;
use crate::providers::Answer;
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
    /// A provider answer to translate: hold headers, buffer the whole body, then
    /// call [`Exchange::on_translated_response`] and send what it returns.
    Translate,
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
    global: limits::global::Ticket,
    /// PII state of this exchange (routes with `pii.enabled`).
    pii: Option<crate::pii::PiiExchange>,
    /// Provider rewriting (route's `provider` object), if any.
    provider: Option<Stage>,
    /// The client request parsed as JSON and counted: the provider stage runs.
    parsed: bool,
    /// The client itself asked for a usage chunk (`stream_options.include_usage`).
    client_asked_usage: bool,
    /// Mid-stream cut-off (`limits.stream_cutoff: cut`), once the stream started.
    cut: Option<limits::cutoff::StreamCut>,
    /// Client path, kept when the provider is chosen from the body's model.
    provider_path: Option<String>,
    /// Host clock for the provider stage (Unix ms).
    clock_ms: u64,
    /// The response body had a `content-encoding` tollgate cannot read.
    encoded_response: bool,
    /// Completions the provider generates (and bills) per request: OpenAI's `n`,
    /// or `best_of` for legacy completions; 1 otherwise.
    choices: u64,
    /// The host lets tollgate call providers itself for a fallback (Kong).
    provider_calls: bool,
    /// A non-streaming request on a route whose provider has a fallback, sent by
    /// tollgate's own calls (see [`crate::providers::fallback`]).
    fallback: Option<FallbackState>,
}

/// What a fallback needs after the first provider answered.
struct FallbackState {
    /// The client-dialect body as it went to the provider stage (after PII and
    /// the clamp), to translate again for the fallback.
    client_body: Vec<u8>,
    /// The first provider's label and status, once the fallback was called.
    used: Option<(String, u32)>,
}

/// What the adapter does with a provider call's answer.
#[derive(Debug)]
pub enum CallStep {
    /// Send this call (the fallback) and wait for its answer.
    Retry(crate::providers::fallback::Call),
    /// Answer the client with this (a local response) and emit the report.
    Relay(Relay),
}

/// A provider answer for the client, already in its dialect.
#[derive(Debug)]
pub struct Relay {
    /// HTTP status.
    pub status: u32,
    /// Headers (`content-type`, `x-llm-*`, rate-limit headers, relayed provider
    /// headers, the fallback header).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The exchange's report (usage), to emit once the answer is sent.
    pub report: Option<Report>,
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
            global: limits::global::Ticket::default(),
            pii: None,
            provider: None,
            parsed: false,
            client_asked_usage: false,
            cut: None,
            provider_path: None,
            clock_ms: 0,
            encoded_response: false,
            choices: 1,
            provider_calls: false,
            fallback: None,
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

    /// Whether this route reports usage (metering on): the `x-llm-*` headers, the
    /// `llm.*` filter state, the token metrics and the debug line. A route that
    /// only redacts or rewrites says nothing of tokens (and counts them only for
    /// its limits, see [`Exchange::counts_tokens`]).
    pub fn reports_usage(&self) -> bool {
        self.settings.metering.enabled
    }

    /// Whether anything on this route reads token counts: metering reports them,
    /// limits charge them. A route that only redacts or rewrites counts nothing.
    pub fn counts_tokens(&self) -> bool {
        self.settings.metering.enabled || self.settings.limits.any_active()
    }

    /// Whether a held answer gets the `x-llm-*` headers.
    pub fn usage_headers(&self) -> bool {
        self.settings.metering.enabled && self.settings.metering.response_headers
    }

    /// The route's settings, shared (for callers that also need `&mut self`).
    pub fn settings_rc(&self) -> Rc<RouteSettings> {
        self.settings.clone()
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
        // A route rewritten for a provider, or scanned for PII, needs the body flow
        // even with metering off.
        let rewrites =
            self.settings.upstream.is_some() || !self.settings.upstreams_by_model.is_empty();
        if !self.settings.enabled
            || (!self.counts_tokens() && !rewrites && self.settings.pii.engine().is_none())
        {
            return HeadersDecision::PassThrough;
        }
        if !method.eq_ignore_ascii_case("POST") || end_of_stream {
            return HeadersDecision::PassThrough;
        }
        let Some(api) = Api::from_path(path) else {
            return HeadersDecision::PassThrough;
        };
        self.api = Some(api);
        if !self.settings.upstreams_by_model.is_empty() {
            // The provider depends on the model: chosen once the body is complete.
            self.provider_path = Some(path.to_string());
        } else if let Some(cfg) = self.settings.upstream.clone() {
            let mut stage = Stage::new(cfg);
            match stage.on_request_headers(api, path) {
                Ok(true) => self.provider = Some(stage),
                Ok(false) => {}
                Err(e) => {
                    return HeadersDecision::Respond(LocalReply {
                        status: e.status,
                        body: error_body(api.family(), ErrorKind::InvalidRequest, &e.message),
                        headers: Vec::new(),
                    })
                }
            }
        }
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
        let doc = match Doc::parse(body) {
            Ok(d) => d,
            Err(e) => {
                return self.invalid_body(api, &format!("the request body is not valid JSON: {e}"))
            }
        };
        let parsed = doc.root();
        if !parsed.is_object() {
            return self.invalid_body(api, "the request body must be a JSON object");
        }
        let model = parsed.get("model").and_then(Node::as_str).unwrap_or("");
        self.model = (!model.is_empty()).then(|| model.to_string());
        if let Some(path) = self.provider_path.take() {
            if let Err(reply) = self.choose_provider(api, &path, model) {
                return BodyDecision::Respond(reply);
            }
        }
        self.streaming = parsed
            .get("stream")
            .and_then(Node::as_bool)
            .unwrap_or(false);
        self.max_tokens = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| parsed.get(k).and_then(Node::as_u64));
        self.choices = choices(api, parsed);

        let m = &self.settings.metering;
        self.prompt = Some(if self.counts_tokens() {
            let profile = self.billing_profile(model);
            self.encoding = profile.encoding;
            let mut counter = self.counter();
            let opts = PromptOptions {
                image_estimate_tokens: m.image_estimate_tokens,
                bytes_per_token: m.estimate_bytes_per_token,
            };
            let mut count = count_prompt(api, parsed, &profile, &mut counter, &opts);
            count.estimated |= counter.estimated();
            count
        } else {
            PromptCount::UNCOUNTED
        });

        let mut new_body = None;
        let translated = self
            .provider
            .as_ref()
            .is_some_and(|p| crate::providers::translator(p.config().kind).translates_response());
        if translated && self.streaming {
            // Translators always emit the usage chunk; hide it unless asked for.
            let asked = parsed
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Node::as_bool)
                == Some(true);
            self.client_asked_usage = asked;
            self.stream = Some(self.stream_meter(api, !asked));
        } else if self.streaming
            && m.inject_stream_usage
            && self.counts_tokens()
            && matches!(api, Api::ChatCompletions | Api::Completions)
        {
            let inj = inject::ensure_stream_usage(body, parsed);
            self.client_asked_usage = inj.client_asked;
            self.stream = Some(self.stream_meter(api, !inj.client_asked));
            new_body = inj.body;
        }
        // PII redaction on the client-dialect body (after any injection), before the
        // provider rewrite translates it.
        match self.pii_request(api, new_body.as_deref().unwrap_or(body)) {
            Some(BodyDecision::Replace(b)) => new_body = Some(b),
            Some(other) => return other,
            None => {}
        }
        if self.provider.is_some() {
            if new_body.is_none() && !self.settings.limits.any_active() {
                // Nothing can edit the body before the provider stage (no earlier
                // edit, no admission, no clamp): translate from this parse.
                match self.translate_parsed(body, parsed) {
                    Ok(b) => new_body = b,
                    Err(reply) => return BodyDecision::Respond(reply),
                }
            } else {
                // The provider stage runs after admission and the clamp (see
                // `provider_stage`).
                self.parsed = true;
            }
        }
        match new_body {
            Some(b) => BodyDecision::Replace(b),
            None => BodyDecision::Forward,
        }
    }

    /// The last request stage, after admission and the clamp: translate whatever
    /// `decision` forwards for the route's provider. `original` is the client's body.
    pub fn provider_stage(&mut self, decision: BodyDecision, original: &[u8]) -> BodyDecision {
        if !std::mem::take(&mut self.parsed) {
            return decision;
        }
        let mut new_body = match decision {
            BodyDecision::Forward => None,
            BodyDecision::Replace(b) => Some(b),
            BodyDecision::Respond(r) => return BodyDecision::Respond(r),
        };
        if let Err(reply) = self.rewrite_for_provider(original, &mut new_body) {
            return BodyDecision::Respond(reply);
        }
        match new_body {
            Some(b) => BodyDecision::Replace(b),
            None => BodyDecision::Forward,
        }
    }

    /// PII stage of the request (after counting, on the body as it will be sent):
    /// `None` when it changes nothing.
    fn pii_request(&mut self, api: Api, body: &[u8]) -> Option<BodyDecision> {
        let engine = self.settings.pii.engine()?.clone();
        let pii = self.pii.insert(crate::pii::PiiExchange::new(engine, api));
        match pii.on_request(body) {
            crate::pii::RequestOutcome::Unchanged => None,
            crate::pii::RequestOutcome::Replace(b) => Some(BodyDecision::Replace(b)),
            crate::pii::RequestOutcome::Block(err) => {
                // Refused before forwarding: nothing was used, nothing to report.
                self.reported = true;
                Some(BodyDecision::Respond(LocalReply {
                    status: ErrorKind::InvalidRequest.status(),
                    body: err,
                    headers: Vec::new(),
                }))
            }
        }
    }

    /// Provider stage: translate the (possibly already edited) body for the
    /// route's provider. `new_body` holds earlier stages' edit and receives ours.
    fn rewrite_for_provider(
        &mut self,
        original: &[u8],
        new_body: &mut Option<Vec<u8>>,
    ) -> Result<(), LocalReply> {
        if self.provider.is_none() {
            return Ok(());
        }
        let current = new_body.as_deref().unwrap_or(original);
        // The translators read the body as it will be sent (after the PII, clamp
        // and usage edits) from the flat document; no JSON tree is built.
        let doc = match Doc::parse(current) {
            Ok(d) => d,
            // tollgate's own edit broke the body: its fault, not the client's.
            Err(e) if new_body.is_some() => {
                return Err(self.refuse(crate::providers::TranslateError {
                    status: 500,
                    message: format!("tollgate: the rewritten request body is not JSON: {e}"),
                }))
            }
            Err(e) => {
                // Refused before forwarding: nothing was used, nothing to report.
                // (A provider route never passes an invalid body on.)
                self.reported = true;
                let api = self.api.unwrap_or(Api::ChatCompletions);
                return Err(invalid_reply(
                    api,
                    &format!("the request body is not valid JSON: {e}"),
                ));
            }
        };
        if let Some(b) = self.translate_parsed(current, doc.root())? {
            *new_body = Some(b);
        }
        Ok(())
    }

    /// The provider stage on a parsed body (`root` is `current`'s document): the
    /// translated body, if it changed.
    fn translate_parsed(
        &mut self,
        current: &[u8],
        root: Node<'_>,
    ) -> Result<Option<Vec<u8>>, LocalReply> {
        let streaming = self.streaming;
        let Some(stage) = self.provider.as_mut() else {
            return Ok(None);
        };
        if stage.config().fallback.is_some() && !self.provider_calls {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                log::warn!("tollgate: route {}: a provider `fallback` is carried out on Kong only; on Envoy give the route a retry_policy (docs/providers.md \"Fallback\"); ignored here", self.route);
            }
        }
        if self.provider_calls && !streaming && stage.config().fallback.is_some() {
            self.fallback = Some(FallbackState {
                client_body: current.to_vec(),
                used: None,
            });
        }
        let result = stage.on_request_body(current, root, streaming);
        if result.is_ok()
            && !stage.model().is_empty()
            && self.model.as_deref() != Some(stage.model())
        {
            // Metrics, logs and limits name the model the provider was asked for.
            self.model = Some(stage.model().to_string());
        }
        result.map_err(|e| self.refuse(e))
    }

    /// The provider stage's refusal as the reply to send. Refused before
    /// forwarding: nothing was used, nothing to report, nothing to fall back to.
    fn refuse(&mut self, e: crate::providers::TranslateError) -> LocalReply {
        self.reported = true;
        self.fallback = None;
        LocalReply {
            status: e.status,
            body: e.body(),
            headers: Vec::new(),
        }
    }

    /// Let tollgate call providers itself where the host offers no retry mechanism
    /// it can steer (Kong): non-streaming requests on routes whose provider has a
    /// `fallback` then go through [`Exchange::provider_call`]. Call before the body.
    pub fn enable_provider_calls(&mut self) {
        self.provider_calls = true;
    }

    /// True when this request goes to its provider through tollgate's own calls
    /// (set once the provider stage ran).
    pub fn calls_provider(&self) -> bool {
        self.fallback.is_some()
    }

    /// The first provider call: the rewrite the provider stage made (`upstream`,
    /// from [`Exchange::take_upstream_headers`]) with the body it produced, and the
    /// client's own request headers. `None` when this request is not sent that way.
    pub fn provider_call(
        &self,
        upstream: &crate::providers::UpstreamRequest,
        body: Vec<u8>,
        client_headers: &[(&str, &str)],
    ) -> Option<crate::providers::fallback::Call> {
        self.fallback.as_ref()?;
        let stage = self.provider.as_ref()?;
        let cfg = stage.config();
        crate::providers::fallback::call(&cfg.endpoint, cfg.label(), upstream, body, client_headers)
    }

    /// A provider call's answer (`status` 0: none came). A 429 or 5xx from the first
    /// provider turns into the fallback's call, translated from the client's body;
    /// anything else (or the fallback's own answer) is translated for the client,
    /// read for usage, and relayed.
    pub fn on_call_answer(
        &mut self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        client_headers: &[(&str, &str)],
    ) -> CallStep {
        let first = self.fallback.as_ref().is_some_and(|f| f.used.is_none());
        if first && crate::providers::fallback::retryable(status) {
            if let Some(call) = self.fallback_call(status, client_headers) {
                return CallStep::Retry(call);
            }
        }
        CallStep::Relay(self.relay(status, headers, body))
    }

    /// Switch to the fallback provider and build its call; `None` (the first
    /// answer is relayed) when the request cannot be translated for it.
    fn fallback_call(
        &mut self,
        status: u32,
        client_headers: &[(&str, &str)],
    ) -> Option<crate::providers::fallback::Call> {
        let api = self.api?;
        let stage = self.provider.as_ref()?;
        let first_label = stage.config().label().to_string();
        let cfg = Rc::new((**stage.config().fallback.as_ref()?).clone());
        let path = stage.client_path().to_string();
        let state = self.fallback.as_mut()?;
        let doc = Doc::parse(&state.client_body).ok()?;
        let mut next = Stage::new(cfg);
        next.set_clock(self.clock_ms);
        let translated = match next.on_request_headers(api, &path) {
            Ok(true) => next.on_request_body(&state.client_body, doc.root(), false),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        let body = match translated {
            Ok(b) => b.unwrap_or_else(|| state.client_body.clone()),
            Err(e) => {
                log::warn!(
                    "tollgate: {first_label} answered {status}; the fallback {} cannot take this request ({}), so that answer goes to the client",
                    next.config().label(),
                    e.message
                );
                return None;
            }
        };
        let upstream = next.take_headers()?;
        let cfg = next.config();
        let call = crate::providers::fallback::call(
            &cfg.endpoint,
            cfg.label(),
            &upstream,
            body,
            client_headers,
        )?;
        state.used = Some((first_label, status));
        if !next.model().is_empty() {
            self.model = Some(next.model().to_string());
        }
        self.provider = Some(next);
        Some(call)
    }

    /// The final answer for the client: translated, PII-restored, metered.
    fn relay(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Relay {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let mut out_headers: Vec<(String, String)> = Vec::new();
        let mut written = None;
        let (status, out) = if status == 0 {
            let who = self
                .provider
                .as_ref()
                .map_or("the provider", |p| p.config().label());
            let e = crate::providers::TranslateError {
                status: 502,
                message: format!("tollgate: {who} did not answer (connection failure or timeout)"),
            };
            self.response_status = 502;
            (502, e.body())
        } else if !identity_encoding(find("content-encoding")) {
            // Unreadable: passed on as it came, counted as an estimate.
            self.response_status = status;
            self.encoded_response = (200..300).contains(&status);
            if let Some(ce) = find("content-encoding") {
                out_headers.push(("content-encoding".into(), ce.to_string()));
            }
            if let Some(ct) = find("content-type") {
                out_headers.push(("content-type".into(), ct.to_string()));
            }
            (status, body.to_vec())
        } else {
            let (status, answer) = match self.provider.as_ref() {
                Some(p) if p.translates_response() => p.translate_body(status, body),
                _ => (status, Answer::without_usage(body.to_vec())),
            };
            self.response_status = status;
            written = answer.written;
            let out = answer.body;
            (status, self.pii_response(&out).unwrap_or(out))
        };
        let report = if self.encoded_response {
            self.finish()
        } else {
            self.complete_answer(&out, written)
        };
        if !out_headers.iter().any(|(k, _)| k == "content-type") {
            out_headers.push(("content-type".into(), "application/json".into()));
        }
        for name in crate::providers::fallback::RELAYED_HEADERS {
            if let Some(v) = find(name) {
                out_headers.push(((*name).to_string(), v.to_string()));
            }
        }
        if let Some((label, first)) = self.fallback.as_ref().and_then(|f| f.used.as_ref()) {
            out_headers.push((
                crate::providers::fallback::FALLBACK_HEADER.to_string(),
                format!("{label} {first}"),
            ));
        }
        if let Some(r) = report.as_ref() {
            out_headers.extend(r.headers().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        out_headers.extend(
            self.rate_limit_headers()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        self.fallback = None;
        Relay {
            status,
            headers: out_headers,
            body: out,
            report,
        }
    }

    /// The host sent the request on by itself while a provider call was out (Kong
    /// resumes a request whose call failed without an answer): its response is
    /// read the usual way, for the provider the host sent it to.
    pub fn forget_provider_call(&mut self) {
        self.fallback = None;
    }

    /// The route's provider for `model`: the first `providers` entry serving it, else
    /// `provider`. Errors when the API cannot go to it.
    fn choose_provider(&mut self, api: Api, path: &str, model: &str) -> Result<(), LocalReply> {
        let cfg = self
            .settings
            .upstreams_by_model
            .iter()
            .find(|p| p.serves(model))
            .or(self.settings.upstream.as_ref())
            .cloned();
        let Some(cfg) = cfg else { return Ok(()) };
        let mut stage = Stage::new(cfg);
        stage.set_clock(self.clock_ms);
        match stage.on_request_headers(api, path) {
            Ok(true) => self.provider = Some(stage),
            Ok(false) => {}
            Err(e) => {
                self.reported = true;
                return Err(LocalReply {
                    status: e.status,
                    body: error_body(api.family(), ErrorKind::InvalidRequest, &e.message),
                    headers: Vec::new(),
                });
            }
        }
        Ok(())
    }

    /// This exchange's PII findings, for metrics and filter state.
    pub fn pii(&self) -> Option<&crate::pii::PiiExchange> {
        self.pii.as_ref()
    }

    /// PII stage of a whole JSON answer (restore placeholders, scan completions):
    /// the body to send instead, if it changed.
    pub fn pii_response(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        if !(200..300).contains(&self.response_status) {
            return None;
        }
        self.pii.as_mut()?.on_response_json(body)
    }

    /// Host wall clock (Unix ms) for the provider stage (request signing, `created`).
    /// Only needed when [`Exchange::has_provider`].
    pub fn set_clock(&mut self, now_unix_ms: u64) {
        self.clock_ms = now_unix_ms;
        if let Some(p) = self.provider.as_mut() {
            p.set_clock(now_unix_ms);
        }
    }

    /// True when this exchange is (or may be, once the model is known) rewritten
    /// for a provider.
    pub fn has_provider(&self) -> bool {
        self.provider.is_some() || self.provider_path.is_some()
    }

    /// The provider label for metrics, logs and limit keys: the chosen provider's.
    fn provider_label(&self) -> &str {
        self.provider
            .as_ref()
            .map_or(self.settings.provider.as_str(), |p| p.config().label())
    }

    /// The request rewrite for the provider (`:path`, `:authority`, headers), once,
    /// after [`Exchange::on_request_body`] forwarded.
    pub fn take_upstream_headers(&mut self) -> Option<crate::providers::UpstreamRequest> {
        self.provider.as_mut().and_then(Stage::take_headers)
    }

    /// True when the response is translated (the adapter then sets the client's
    /// `content-type` and drops `content-length`).
    pub fn translates_response(&self) -> bool {
        self.provider
            .as_ref()
            .is_some_and(Stage::translates_response)
    }

    /// The whole provider answer in [`ResponseMode::Translate`]: returns the body for
    /// the client (OpenAI JSON) and the report.
    pub fn on_translated_response(&mut self, body: &[u8]) -> (Vec<u8>, Option<Report>) {
        let (out, written) = match self.provider.as_ref() {
            Some(p) => {
                let (status, answer) = p.translate_body(self.response_status, body);
                // See [`Exchange::response_status`]: the adapter sends this status.
                self.response_status = status;
                (answer.body, answer.written)
            }
            None => (body.to_vec(), None),
        };
        // PII restore/scan on the client-dialect answer (text only: the usage and
        // model written into it stay as they are).
        let out = self.pii_response(&out).unwrap_or(out);
        let report = self.complete_answer(&out, written);
        (out, report)
    }

    /// The end of a whole non-streaming answer: its usage and model as tollgate
    /// wrote them into a translated answer (`written`), else read from `body`.
    fn complete_answer(
        &mut self,
        body: &[u8],
        written: Option<(Option<Usage>, String)>,
    ) -> Option<Report> {
        match written {
            Some((usage, model)) => self.complete_with(usage, Some(model)),
            None => self.on_response_complete(Some(body)),
        }
    }

    /// The status the client gets: the provider's, or 502 once a 2xx answer could
    /// not be translated (see [`Exchange::on_translated_response`]).
    pub fn response_status(&self) -> u32 {
        self.response_status
    }

    /// The tokenizer and framing the prompt is billed by: the provider's model
    /// (after the route's model map), so a prompt translated for Claude is not
    /// counted with OpenAI's tokenizer. OpenAI and Azure keep the client's model
    /// when the mapped name is not a model (an Azure deployment name).
    fn billing_profile(&self, client_model: &str) -> models::ModelProfile {
        use crate::providers::config::ProviderKind;
        let Some(p) = self.provider.as_ref() else {
            return models::profile(client_model);
        };
        let cfg = p.config();
        let mapped = models::profile(cfg.map_model(client_model));
        match cfg.kind {
            ProviderKind::OpenAi | ProviderKind::AzureOpenAi
                if mapped.family == models::ModelFamily::Unknown =>
            {
                models::profile(client_model)
            }
            _ => mapped,
        }
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
        // A body the provider stage cannot read cannot be sent on as-is either: it
        // would reach the provider's route untranslated.
        let pass = self.settings.invalid_body == InvalidBody::Pass && self.provider.is_none();
        match if pass {
            InvalidBody::Pass
        } else {
            InvalidBody::Reject
        } {
            InvalidBody::Pass => {
                // Not ours to meter: forget the API so responses pass through too.
                self.api = None;
                BodyDecision::Forward
            }
            InvalidBody::Reject => BodyDecision::Respond(invalid_reply(api, why)),
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
    /// route's default, at most `reserve_max_tokens_cap`; embeddings produce none.
    fn reservation(&self) -> u64 {
        if self.api == Some(Api::Embeddings) {
            return 0;
        }
        let l = &self.settings.limits;
        let r = self.max_tokens.unwrap_or(l.reserve_max_tokens_default);
        let per_choice = match l.reserve_max_tokens_cap {
            0 => r,
            cap => r.min(cap),
        };
        // Every choice can use the whole cap: `n: 8` must not reserve for one.
        per_choice.saturating_mul(self.choices)
    }

    /// Admission against the route's limits, after the body was counted. Returns
    /// the 429 to send when refused (the exchange is then over: no usage report).
    pub fn admit(&mut self, store: &mut dyn Store, now_ms: u64) -> Option<LocalReply> {
        self.admit_with(store, now_ms, limits::admit)
    }

    /// [`Exchange::admit`] against the shared counters alone, for a caller that
    /// has just tried this worker's credits ([`Exchange::admit_from_credits`]).
    pub fn admit_from_store(&mut self, store: &mut dyn Store, now_ms: u64) -> Option<LocalReply> {
        self.admit_with(store, now_ms, limits::admit_from_store)
    }

    fn admit_with(
        &mut self,
        store: &mut dyn Store,
        now_ms: u64,
        admit: fn(&crate::config::Limits, &mut dyn Store, u64, &Subject) -> Admission,
    ) -> Option<LocalReply> {
        if !self.limits_active() {
            return None;
        }
        let subject = self.subject();
        let prompt = subject.prompt_tokens;
        let a = admit(&self.settings.limits, store, now_ms, &subject);
        let reply = (!a.allowed).then(|| {
            let family = self
                .api
                .map(Api::family)
                .unwrap_or(crate::dialect::Family::OpenAi);
            let msg = match a.state() {
                Some(s) => format!(
                    "Rate limit reached for {} (tollgate rule '{}'): limit {}, remaining {}, requested {prompt} prompt + {} reserved completion tokens. Please try again in {}.",
                    s.what(),
                    s.rule,
                    s.limit,
                    s.remaining,
                    subject.reserve_tokens,
                    limits::format_duration(s.reset_ms)
                ),
                None => "Rate limit reached (tollgate).".to_string(),
            };
            let mut headers = a.headers();
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

    /// Admission from this worker's credits alone (no store call, never a refusal)
    /// at `now_ms`, which may be a recent reading of the clock (see
    /// [`limits::admit_from_credits`]). `false`: nothing was done; call
    /// [`Exchange::admit_from_store`] with the clock.
    pub fn admit_from_credits(&mut self, store: &mut dyn Store, now_ms: u64) -> bool {
        if !self.limits_active() {
            return false;
        }
        let subject = self.subject();
        match limits::admit_from_credits(&self.settings.limits, store, now_ms, &subject) {
            Some(a) => {
                self.admission = Some(a);
                true
            }
            None => false,
        }
    }

    /// What admission knows about this request.
    fn subject(&self) -> Subject<'_> {
        Subject {
            consumer: self.consumer.as_deref(),
            route: &self.route,
            model: self.model.as_deref().unwrap_or(""),
            provider: self.provider_label(),
            prompt_tokens: self.prompt.map_or(0, |p| p.tokens),
            reserve_tokens: self.reservation(),
            choices: self.choices,
        }
    }

    /// The admission outcome, for the adapter's metric and log line.
    pub fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    /// Whether limits run in report-only mode on this route.
    pub fn limits_report_only(&self) -> bool {
        self.settings.limits.mode == LimitMode::ReportOnly
    }

    /// `x-ratelimit-*-tokens` headers for an admitted request's response (empty
    /// when no limits apply); the tighter of the local and the shared limits.
    pub fn rate_limit_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = HeaderList::with_capacity(4);
        self.push_rate_limit_headers(&mut out);
        out.to_vec()
    }

    /// [`Exchange::rate_limit_headers`], appended to a list of the caller's (the
    /// x-llm-* headers of a held response: one list, no copy).
    pub fn push_rate_limit_headers(&self, out: &mut HeaderList) {
        let Some(shared) = self.global.state.as_ref() else {
            if let Some(a) = self.admission.as_ref() {
                a.push_headers(out);
            }
            return;
        };
        // The shared limit counts tokens: its state stands in for the local token
        // budget when it has less room left.
        let mut states: Vec<&limits::RateState> = self
            .admission
            .as_ref()
            .map(|a| a.states.iter().collect())
            .unwrap_or_default();
        match states.iter_mut().find(|s| s.unit == shared.unit) {
            Some(s) => {
                if shared.remaining < s.remaining {
                    *s = shared;
                }
            }
            None => states.push(shared),
        }
        for s in states {
            s.push_headers(out);
        }
        if let Some(n) = self.admission.as_ref().and_then(|a| a.clamped_to) {
            out.push_u64("x-tollgate-max-tokens-clamped", n);
        }
    }

    /// After admission: the request body with its completion cap lowered to the
    /// clamp (see [`limits::clamp`]), applied to whatever `decision` forwards. The
    /// clamp is per choice: with `n` choices it is the room divided by `n`, since
    /// the provider applies the cap to each.
    pub fn clamp_request(&self, decision: BodyDecision, body: &[u8]) -> BodyDecision {
        let (Some(api), Some(to)) = (self.api, self.admission.as_ref().and_then(|a| a.clamped_to))
        else {
            return decision;
        };
        let current = match &decision {
            BodyDecision::Forward => body,
            BodyDecision::Replace(b) => b.as_slice(),
            BodyDecision::Respond(_) => return decision,
        };
        match limits::clamp::clamp_body(api, current, to) {
            Some(b) => BodyDecision::Replace(b),
            None => decision,
        }
    }

    /// Output tokens counted when the stream was cut for lack of budget, if it was.
    pub fn stream_cut_at(&self) -> Option<u64> {
        self.cut.as_ref().and_then(|c| c.cut_at())
    }

    /// Input of the shared-limit admission (`limits.global`); `None` when the route
    /// has none or the request was not counted.
    pub fn global_subject(&self) -> Option<Subject<'_>> {
        let g = &self.settings.limits.global;
        let counted = self.api.is_some() && self.prompt.is_some();
        if !(self.settings.enabled && g.active() && counted) {
            return None;
        }
        Some(Subject {
            provider: &self.settings.provider,
            ..self.subject()
        })
    }

    /// The shared-limit state of this exchange (what was charged, the last answer).
    pub fn global_ticket(&mut self) -> &mut limits::global::Ticket {
        &mut self.global
    }

    /// The 429 for a refusal by the shared limits, in the client's dialect; the
    /// exchange is then over (nothing is reported).
    pub fn global_refusal(&mut self, decision: limits::global::Decision) -> LocalReply {
        let family = self
            .api
            .map(Api::family)
            .unwrap_or(crate::dialect::Family::OpenAi);
        self.reported = true;
        limits::global::refusal(family, decision, &self.global)
    }

    /// True the admission charges up to the real usage of the finished exchange.
    /// Runs once; later calls do nothing.
    pub fn settle(&mut self, store: &mut dyn Store, report: &Report) {
        if let Some(a) = self.admission.as_mut() {
            let charges = std::mem::take(&mut a.charges);
            limits::true_up_charges(
                store,
                &charges,
                a.price,
                report.usage.prompt_tokens,
                report.usage.cached_tokens,
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
        // `reported` here means tollgate itself answered (e.g. a limit's 429): that
        // reply is already in the client's dialect and is not translated.
        if self.prompt.is_some() && !self.reported && self.translates_response() {
            if (200..300).contains(&status) && self.streaming {
                if let Some(p) = self.provider.as_mut() {
                    p.start_stream();
                }
                if self.stream.is_none() {
                    self.stream = Some(self.stream_meter(api, false));
                }
                return ResponseMode::Stream;
            }
            self.stream = None;
            return ResponseMode::Translate;
        }
        if self.prompt.is_none() || !(200..300).contains(&status) {
            return ResponseMode::PassThrough;
        }
        let ct = content_type.unwrap_or("");
        let pii_reads = self.pii.as_ref().is_some_and(|p| p.wants_response());
        // A route that neither counts tokens nor reads answers for PII leaves the
        // answer alone (it set up no stream meter and no cut-off either).
        let counts = self.counts_tokens();
        if !counts && !pii_reads {
            return ResponseMode::PassThrough;
        }
        if starts_with_ignore_case(ct, "text/event-stream") {
            if self.stream.is_none() && counts {
                self.stream = Some(self.stream_meter(api, false));
            }
            self.cut = self.stream_cut(api);
            return ResponseMode::Stream;
        }
        // A stream we prepared for came back as JSON (e.g. the provider ignored
        // `stream`): nothing will need stripping.
        self.stream = None;
        if starts_with_ignore_case(ct, "application/json") || ct.is_empty() {
            let small = content_length.is_some_and(|n| n <= MAX_BUFFERED_RESPONSE);
            // PII restore/scan: an answer declared small is held and rewritten
            // whole; a bigger one, or one of unknown length, is rewritten chunk by
            // chunk as it passes (never held, so never over the host's buffer limit).
            if (self.usage_headers() || pii_reads) && small {
                ResponseMode::Buffer
            } else {
                if pii_reads {
                    if let Some(p) = self.pii.as_mut() {
                        p.start_json_scan();
                    }
                }
                ResponseMode::Copy
            }
        } else {
            ResponseMode::PassThrough
        }
    }

    /// The reply instead of a 2xx answer with `content-encoding` on a route whose PII
    /// settings must read answers (restore or scan): passing it unread could let
    /// model-written personal data through, so it fails closed with a 502 in the
    /// client's dialect. `None` where the answer may pass.
    pub fn encoded_answer_refusal(&mut self, status: u32, encoding: &str) -> Option<LocalReply> {
        let api = self.api?;
        if !(200..300).contains(&status) || !self.pii.as_ref().is_some_and(|p| p.wants_response()) {
            return None;
        }
        let message = format!(
            "tollgate: the provider's answer is compressed (content-encoding: {encoding}), so PII in \
             it cannot be checked; refused. The provider should honour the request's missing \
             accept-encoding."
        );
        Some(LocalReply {
            status: ErrorKind::UpstreamUnreadable.status(),
            body: error_body(api.family(), ErrorKind::UpstreamUnreadable, &message),
            headers: Vec::new(),
        })
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

    /// PII restore/scan of a chunk of a non-streaming answer in
    /// [`ResponseMode::Copy`] (one too big to hold, or of unknown length): what
    /// the client gets instead, released as soon as it is safe.
    pub fn pii_response_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Rewrite {
        match self.pii.as_mut() {
            Some(p) => p.on_response_json_chunk(chunk, end_of_stream),
            None => Rewrite::Unchanged,
        }
    }

    /// True when a copied answer is rewritten as it passes: its length changes.
    pub fn rewrites_copied_response(&self) -> bool {
        self.pii.as_ref().is_some_and(|p| p.scans_json_chunks())
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
        let (u, model) = if self.counts_tokens() {
            usage::usage_and_model_from_response_json(api, body)
        } else {
            (None, None)
        };
        self.complete_with(u, model)
    }

    /// The end of a whole non-streaming answer whose usage and model are known.
    fn complete_with(&mut self, usage: Option<Usage>, model: Option<String>) -> Option<Report> {
        self.api?;
        self.copy = Vec::new();
        self.response_usage = usage;
        self.response_model = model;
        self.finish()
    }

    /// A chunk of an SSE response: returns what the client should receive instead,
    /// if anything must change. At `end_of_stream` the report is ready via [`Exchange::finish`].
    pub fn on_stream_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Rewrite {
        // Provider translation first (to the client's dialect), then PII
        // (restore/scan), then metering and the cut-off on what the client will get.
        let translated = self
            .provider
            .as_mut()
            .filter(|p| p.translates_response())
            .map(|p| p.stream_chunk(chunk, end_of_stream));
        let client = translated.as_deref().unwrap_or(chunk);
        let pii = match self.pii.as_mut() {
            Some(p) => p.on_stream_chunk(client, end_of_stream),
            None => Rewrite::Unchanged,
        };
        let input = match &pii {
            Rewrite::Replace(b) => b.as_slice(),
            Rewrite::Unchanged => client,
        };
        let metered = match self.stream.as_mut() {
            Some(s) => s.on_chunk(input, end_of_stream),
            None => Rewrite::Unchanged,
        };
        let metered = match (metered, pii, translated) {
            (Rewrite::Replace(b), _, _) | (_, Rewrite::Replace(b), _) => Rewrite::Replace(b),
            (_, _, Some(out)) => Rewrite::Replace(out),
            _ => Rewrite::Unchanged,
        };
        let Some(cut) = self.cut.as_mut() else {
            return metered;
        };
        match (
            cut.on_chunk(match &metered {
                Rewrite::Unchanged => chunk,
                Rewrite::Replace(b) => b,
            }),
            metered,
        ) {
            (Rewrite::Unchanged, m) => m,
            (r, _) => r,
        }
    }

    /// A mid-stream cut-off when the route asks for one and admission bounded the
    /// output this request may produce.
    fn stream_cut(&self, api: Api) -> Option<limits::cutoff::StreamCut> {
        let l = &self.settings.limits;
        if l.stream_cutoff != crate::config::StreamCutoff::Cut {
            return None;
        }
        let allowance = self.admission.as_ref()?.output_allowance?;
        limits::cutoff::StreamCut::new(
            api,
            allowance,
            self.prompt.map_or(0, |p| p.tokens),
            self.client_asked_usage,
            self.counter(),
            usize::try_from(self.settings.metering.max_event_bytes).unwrap_or(usize::MAX),
        )
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
            provider: self.provider_label().to_string(),
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
fn choices(api: Api, parsed: Node<'_>) -> u64 {
    if !matches!(api, Api::ChatCompletions | Api::Completions) {
        return 1;
    }
    ["n", "best_of"]
        .iter()
        .filter_map(|k| parsed.get(k).and_then(Node::as_u64))
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

/// The 400 for a body tollgate cannot read, in the client's dialect.
fn invalid_reply(api: Api, why: &str) -> LocalReply {
    LocalReply {
        status: ErrorKind::InvalidRequest.status(),
        body: error_body(api.family(), ErrorKind::InvalidRequest, why),
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
