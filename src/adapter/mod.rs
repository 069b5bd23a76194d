//! The proxy-wasm adapter: the only code that talks to the host.
//!
//! It reads what the host provides (route name, headers, bodies), drives the
//! sans-IO [`crate::metering::Exchange`], and applies its decisions. Every hostcall
//! failure is logged and survived; nothing here may panic.

mod ffi;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use log::{debug, error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::Config;
use crate::host::{
    find_header, merge_header_map, parse_header_map, property_text, HostKind, ROUTE_NAME_PROPERTIES,
};
use crate::limits::{self, Store, StoreError};
use crate::metering::labels::{self, ModelLabels, TokenType};
use crate::metering::{BodyDecision, Exchange, HeadersDecision, LocalReply, Report, ResponseMode};
use crate::usage::stream::Rewrite;

/// Limit counters in proxy-wasm shared data: one store for every worker of the
/// gateway instance, with the host's compare-and-swap.
struct SharedData;

impl Store for SharedData {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        ffi::shared_data(key).map_err(|s| {
            warn!("tollgate: shared data get failed: {s:?}");
            StoreError::Unavailable
        })
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match ffi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(s) => {
                warn!("tollgate: shared data set failed: {s:?}");
                Err(StoreError::Unavailable)
            }
        }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Metric ids by name, and the bounded model-label set, shared by a VM's requests.
struct Metrics {
    ids: HashMap<String, u32>,
    models: ModelLabels,
}

impl Metrics {
    fn add(&mut self, name: String, by: u64) {
        if by == 0 {
            return;
        }
        let id = match self.ids.get(&name) {
            Some(id) => *id,
            None => match ffi::define_metric(MetricType::Counter, &name) {
                Ok(id) => {
                    self.ids.insert(name, id);
                    id
                }
                Err(s) => {
                    warn!("tollgate: cannot define metric {name}: {s:?}");
                    return;
                }
            },
        };
        if let Err(s) = ffi::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) {
            warn!("tollgate: cannot increment metric: {s:?}");
        }
    }
}

/// Per-VM state: the validated config and the metrics cache.
struct Root {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
    host: HostKind,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            config: Rc::new(Config::default()),
            metrics: Rc::new(RefCell::new(Metrics {
                ids: HashMap::new(),
                models: ModelLabels::new(32),
            })),
            host: HostKind::Unknown,
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let started = ffi::now_nanos();
        let raw = ffi::buffer(BufferType::PluginConfiguration, 0, usize::MAX).unwrap_or_default();
        match Config::parse(&raw) {
            Ok(config) => {
                self.metrics.borrow_mut().models =
                    ModelLabels::new(config.metrics.max_model_labels as usize);
                let routes: Vec<&str> = config.route_names().collect();
                let took_ms = match (started, ffi::now_nanos()) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e6,
                    _ => 0.0,
                };
                info!(
                    "configured in {took_ms:.2} ms; routes with own settings: {:?}",
                    routes
                );
                limits::init_store(&mut SharedData);
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject the config (and keep the old one on update).
                error!("{e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            host: self.host,
            exchange: None,
            response: ResponseMode::PassThrough,
            waiting_for_body: false,
            held_response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request as seen by tollgate.
struct Http {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
    host: HostKind,
    exchange: Option<Exchange>,
    response: ResponseMode,
    waiting_for_body: bool,
    /// Response headers read when they were held, written back with `x-llm-*` added.
    held_response_headers: Vec<u8>,
}

impl Context for Http {}

impl Http {
    fn route_name(&mut self) -> Option<String> {
        for (kind, path) in ROUTE_NAME_PROPERTIES {
            if self.host != HostKind::Unknown && self.host != kind {
                continue;
            }
            if let Some(name) = property_text(ffi::property(path).ok().flatten()) {
                self.host = kind;
                return Some(name);
            }
        }
        None
    }

    fn reply(&self, r: &LocalReply) -> Action {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("x-tollgate", "local-reply"),
        ];
        headers.extend(r.headers.iter().map(|(k, v)| (*k, v.as_str())));
        if let Err(s) = ffi::send_response(r.status, &headers, &r.body) {
            error!("tollgate: cannot send local reply {}: {s:?}", r.status);
            return Action::Continue;
        }
        Action::Pause
    }

    /// Admission against the route's limits; the 429 reply when refused.
    fn admit(&mut self) -> Option<LocalReply> {
        let ex = self.exchange.as_mut()?;
        if !ex.limits_active() {
            return None;
        }
        let Some(now_ms) = ffi::now_nanos().map(|n| n / 1_000_000) else {
            warn!("tollgate: no host clock; limits skipped (fail open)");
            return None;
        };
        let reply = ex.admit(&mut SharedData, now_ms);
        if let Some(a) = ex.admission() {
            let rule = a.state.as_ref().map_or("none", |s| s.rule.as_str());
            let decision = match (a.allowed, a.over_limit) {
                (false, _) => "refused",
                (true, true) => "would_refuse",
                (true, false) => "allowed",
            };
            if a.store_errors > 0 {
                warn!(
                    "tollgate: limit store unusable for {} rule(s); failed open",
                    a.store_errors
                );
            }
            if a.over_limit {
                info!(
                    "{{\"event\":\"tollgate.rate_limit\",\"decision\":\"{decision}\",\"rule\":{},\"remaining\":{}}}",
                    serde_json::Value::from(rule),
                    a.state.as_ref().map_or(0, |s| s.remaining)
                );
            }
            let name = labels::rate_limit(ex.route(), rule, decision);
            self.metrics.borrow_mut().add(name, 1);
        }
        reply
    }

    fn emit(&mut self, report: &Report, add_headers: bool) {
        if let Some(ex) = self.exchange.as_mut() {
            ex.settle(&mut SharedData, report);
        }
        if add_headers {
            // Headers were held: write them back with ours added, in one call.
            let held = std::mem::take(&mut self.held_response_headers);
            let mut ours = report.headers();
            if let Some(ex) = self.exchange.as_ref() {
                ours.extend(ex.rate_limit_headers());
            }
            let map = merge_header_map(&parse_header_map(&held), &ours, &[]);
            if let Err(s) = ffi::set_header_map(MapType::HttpResponseHeaders, &map) {
                debug!("cannot set x-llm headers: {s:?}");
            }
        }
        let keys = self
            .exchange
            .as_ref()
            .map_or(&[][..], |ex| ex.settings().metering.filter_state.as_slice());
        for (k, v) in report.filter_state(keys) {
            if let Err(s) = ffi::set_property(&[k], v.as_bytes()) {
                debug!("tollgate: cannot set filter state {k}: {s:?}");
            }
        }
        let mut m = self.metrics.borrow_mut();
        let model = m.models.label(report.model());
        let u = &report.usage;
        m.add(
            labels::token_usage(TokenType::Input, &model, &report.route, &report.provider),
            u.prompt_tokens,
        );
        m.add(
            labels::token_usage(TokenType::Output, &model, &report.route, &report.provider),
            u.completion_tokens,
        );
        m.add(
            labels::requests(&report.route, &report.provider, report.estimated),
            1,
        );
        if ffi::debug_enabled() {
            debug!("{}", report.log_line());
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let route = self.route_name();
        let settings = self.config.route(route.as_deref());
        let route: Rc<str> = Rc::from(route.as_deref().unwrap_or("default"));
        let mut ex = Exchange::new(settings, route);
        let raw = ffi::header_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let headers = parse_header_map(&raw);
        let text = |name| find_header(&headers, name).and_then(|v| std::str::from_utf8(v).ok());
        let method = text(":method").unwrap_or("");
        let path = text(":path").unwrap_or("");
        let len = text("content-length").and_then(|v| v.trim().parse().ok());
        let has_accept_encoding = find_header(&headers, "accept-encoding").is_some();
        if ex.settings().limits.active() {
            // Trusted only because the edge strips client copies (README).
            let consumer = text(ex.settings().limits.consumer.header.as_str()).map(str::to_string);
            ex.set_consumer(consumer);
        }
        match ex.on_request_headers(method, path, len, end_of_stream) {
            HeadersDecision::PassThrough => Action::Continue,
            HeadersDecision::Respond(r) => {
                self.exchange = Some(ex);
                self.reply(&r)
            }
            HeadersDecision::WaitForBody => {
                // Usage lives in the response body: it must come back uncompressed.
                if has_accept_encoding {
                    let _ = ffi::remove_header(MapType::HttpRequestHeaders, "accept-encoding");
                }
                self.exchange = Some(ex);
                self.waiting_for_body = true;
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.waiting_for_body {
            return Action::Continue;
        }
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        if let Some(r) = ex.check_body_size(body_size as u64) {
            self.waiting_for_body = false;
            return self.reply(&r);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.waiting_for_body = false;
        let body = match ffi::buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(b) => b,
            Err(s) => {
                warn!("tollgate: cannot read request body: {s:?}; passing through unmetered");
                self.exchange = None;
                return Action::Continue;
            }
        };
        let decision = ex.on_request_body(&body);
        if !matches!(decision, BodyDecision::Respond(_)) {
            if let Some(r) = self.admit() {
                return self.reply(&r);
            }
        }
        match decision {
            BodyDecision::Forward => Action::Continue,
            BodyDecision::Replace(new_body) => {
                match ffi::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_body) {
                    Ok(()) => {
                        let len = new_body.len().to_string();
                        if ffi::set_header(MapType::HttpRequestHeaders, "content-length", &len)
                            .is_err()
                        {
                            let _ =
                                ffi::remove_header(MapType::HttpRequestHeaders, "content-length");
                        }
                    }
                    Err(s) => warn!("tollgate: cannot rewrite request body: {s:?}"),
                }
                Action::Continue
            }
            BodyDecision::Respond(r) => self.reply(&r),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        let raw = ffi::header_map(MapType::HttpResponseHeaders).unwrap_or_default();
        let headers = parse_header_map(&raw);
        let text = |name| find_header(&headers, name).and_then(|v| std::str::from_utf8(v).ok());
        let status = text(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if status == 0 || ex.api().is_none() {
            return Action::Continue;
        }
        let ct = text("content-type");
        let len = text("content-length").and_then(|v| v.trim().parse().ok());
        self.response = if crate::metering::identity_encoding(text("content-encoding")) {
            ex.on_response_headers(status, ct, len)
        } else {
            ex.on_encoded_response_headers(status)
        };
        let stream = self.response == ResponseMode::Stream && !end_of_stream;
        let mut length_removed = false;
        if self.response != ResponseMode::Buffer || end_of_stream {
            // Rate-limit headers, in one write of the whole map (held headers get
            // them in `emit` instead, with the x-llm ones).
            let rl = ex.rate_limit_headers();
            if !rl.is_empty() {
                let stale: &[&str] = if stream { &["content-length"] } else { &[] };
                let map = merge_header_map(&headers, &rl, stale);
                match ffi::set_header_map(MapType::HttpResponseHeaders, &map) {
                    Ok(()) => length_removed = stream,
                    Err(s) => debug!("tollgate: cannot set rate-limit headers: {s:?}"),
                }
            }
        }
        if end_of_stream {
            self.response = ResponseMode::PassThrough;
            if let Some(r) = ex.finish() {
                self.emit(&r, false);
            }
            return Action::Continue;
        }
        match self.response {
            ResponseMode::Buffer => {
                self.held_response_headers = raw;
                Action::Pause
            }
            ResponseMode::Stream => {
                // Stripping the injected usage chunk changes the length.
                if !length_removed {
                    let _ = ffi::remove_header(MapType::HttpResponseHeaders, "content-length");
                }
                Action::Continue
            }
            ResponseMode::Copy | ResponseMode::PassThrough => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        match self.response {
            ResponseMode::PassThrough => Action::Continue,
            ResponseMode::Buffer => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body =
                    ffi::buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_default();
                if let Some(r) = ex.on_response_complete(Some(&body)) {
                    self.emit(&r, true);
                }
                Action::Continue
            }
            ResponseMode::Copy => {
                if let Ok(chunk) = ffi::buffer(BufferType::HttpResponseBody, 0, body_size) {
                    ex.on_copied_chunk(&chunk);
                }
                if end_of_stream {
                    if let Some(r) = ex.on_response_complete(None) {
                        self.emit(&r, false);
                    }
                }
                Action::Continue
            }
            ResponseMode::Stream => {
                let chunk =
                    ffi::buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_default();
                if let Rewrite::Replace(out) = ex.on_stream_chunk(&chunk, end_of_stream) {
                    if let Err(s) =
                        ffi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out)
                    {
                        warn!("tollgate: cannot rewrite stream chunk: {s:?}");
                    }
                }
                if end_of_stream {
                    if let Some(r) = ex.finish() {
                        self.emit(&r, false);
                    }
                }
                Action::Continue
            }
        }
    }

    fn on_log(&mut self) {
        // Exchanges cut short (client gone, upstream reset) are reported here, once.
        if let Some(ex) = self.exchange.as_mut() {
            if let Some(r) = ex.finish() {
                self.emit(&r, false);
            }
        }
    }
}
