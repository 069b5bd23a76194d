//! The proxy-wasm adapter: the only code that talks to the host.
//!
//! It reads what the host provides (route name, headers, bodies), drives the
//! sans-IO [`crate::metering::Exchange`], and applies its decisions. Every hostcall
//! failure is logged and survived; nothing here may panic.

mod fallback;
mod ffi;
mod global;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use log::{debug, error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::Config;
use crate::hash::FastMap as HashMap;
use crate::host::{
    find_header, merge_header_map, parse_header_map, property_text, HeaderList, HostKind,
    KONG_PROBE, ROUTE_NAME_PROPERTIES,
};
use crate::limits::{self, Store, StoreError};
use crate::metering::labels::{self, ModelLabels, TokenType};
use crate::metering::{BodyDecision, Exchange, HeadersDecision, LocalReply, Report, ResponseMode};
use crate::usage::stream::Rewrite;

/// Limit counters in proxy-wasm shared data: one store for every worker of the
/// gateway instance, with the host's compare-and-swap. Refunds are held per VM
/// (worker) and written with the next charge of the same counter, or on the tick.
#[derive(Clone, Default)]
struct SharedData {
    deferred: Rc<RefCell<limits::Deferred>>,
    /// Refunds are held only when the timer that flushes them runs.
    defers: bool,
}

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

    fn defer(&mut self, key: &str, window_start: u64, delta: i64) -> bool {
        if !self.defers {
            return false;
        }
        match self.deferred.try_borrow_mut() {
            Ok(mut d) => d.defer(key, window_start, delta),
            Err(_) => false,
        }
    }

    fn take_deferred(&mut self, key: &str, window_start: u64) -> i64 {
        self.deferred
            .try_borrow_mut()
            .map_or(0, |mut d| d.take(key, window_start))
    }

    fn drain_deferred(&mut self) -> Vec<(String, u64, i64)> {
        self.deferred
            .try_borrow_mut()
            .map_or_else(|_| Vec::new(), |mut d| d.drain())
    }

    fn leases(&self) -> bool {
        self.defers
    }

    fn synced_used(&mut self, key: &str, window_start: u64) -> Option<u64> {
        self.deferred
            .try_borrow()
            .ok()
            .and_then(|d| d.synced(key, window_start))
    }

    fn set_synced_used(&mut self, key: &str, window_start: u64, used: u64) {
        if let Ok(mut d) = self.deferred.try_borrow_mut() {
            d.set_synced(key, window_start, used);
        }
    }

    fn take_held(&mut self, key: &str, window_start: u64) -> (i64, Option<u64>) {
        self.deferred
            .try_borrow_mut()
            .map_or((0, None), |mut d| d.take_with_synced(key, window_start))
    }

    fn spend_credit(&mut self, key: &str, window_start: u64, want: u64) -> Option<(u64, i64)> {
        self.deferred
            .try_borrow_mut()
            .ok()
            .and_then(|mut d| d.spend(key, window_start, want))
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        global::set_root_id(id);
        Box::new(Root::default())
    });
}}

/// Metric ids by name, and the bounded model-label set, shared by a VM's requests.
struct Metrics {
    ids: HashMap<String, u32>,
    models: ModelLabels,
    /// Rate-limit decision metric ids by route, rule and decision, so the
    /// per-request lookup builds no metric name (route and rule names come from
    /// the config, so this stays small).
    rate_limit_ids: HashMap<String, HashMap<String, HashMap<&'static str, u32>>>,
    /// The last (route, rule, decision) counted and its id: steady traffic
    /// repeats it, and comparing two short names is cheaper than three lookups.
    last_rate_limit: Option<(String, String, &'static str, u32)>,
    /// An exchange's counters by route, provider and requested model, so a
    /// request builds no metric name (see [`Series`]).
    series: HashMap<String, HashMap<String, HashMap<String, Series>>>,
    /// Entries in `series`; past [`MAX_SERIES`] new ones are not cached.
    series_len: usize,
    /// Counts not yet added to their counters (by metric id), when the timer
    /// runs: written on the tick (at most [`METRICS_FLUSH_MS`] late) instead of
    /// one hostcall each per request.
    pending: Option<HashMap<u32, u64>>,
}

/// How often batched metric counts and held limit refunds are written.
const METRICS_FLUSH_MS: u32 = 1000;

/// Most (route, provider, model) series a VM caches; model names are client
/// input, so the cache is bounded (beyond it, names are built per request).
const MAX_SERIES: usize = 1024;

/// The counters one metered exchange adds to, for one (route, provider, model).
#[derive(Clone, Copy)]
struct Series {
    input: Option<u32>,
    output: Option<u32>,
    /// `requests` by `estimated` (false, true), defined on first use.
    requests: [Option<u32>; 2],
}

impl Metrics {
    /// Count one rate-limit decision.
    fn rate_limit(&mut self, route: &str, rule: &str, decision: &'static str) {
        let cached = match &self.last_rate_limit {
            Some((ro, ru, d, id)) if *d == decision && ro == route && ru == rule => Some(*id),
            _ => self
                .rate_limit_ids
                .get(route)
                .and_then(|r| r.get(rule))
                .and_then(|d| d.get(decision))
                .copied(),
        };
        let id = match cached {
            Some(id) => id,
            None => {
                let name = labels::rate_limit(route, rule, decision);
                let Some(id) = self.id(name) else { return };
                self.rate_limit_ids
                    .entry(route.to_string())
                    .or_default()
                    .entry(rule.to_string())
                    .or_default()
                    .insert(decision, id);
                id
            }
        };
        if !matches!(&self.last_rate_limit, Some((_, _, _, last)) if *last == id) {
            self.last_rate_limit = Some((route.to_string(), rule.to_string(), decision, id));
        }
        // Refusals and the rarer decisions are counted at once (operators watch
        // them); `allowed` is batched like the token counters.
        if decision == "allowed" {
            self.count(id, 1);
        } else {
            increment(id, 1);
        }
    }

    /// Add `by` to counter `id`: batched for the tick when the timer runs, else now.
    fn count(&mut self, id: u32, by: u64) {
        if by == 0 {
            return;
        }
        match self.pending.as_mut() {
            Some(p) => {
                let n = p.entry(id).or_default();
                *n = n.saturating_add(by);
            }
            None => increment(id, by),
        }
    }

    /// Write the batched counts.
    fn flush(&mut self) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        for (id, n) in p.drain() {
            increment(id, n);
        }
    }

    /// Forget cached ids that depend on the config (the model-label cap).
    fn reset_series(&mut self) {
        self.series.clear();
        self.series_len = 0;
    }

    /// The token and request counters of one exchange.
    fn exchange(&mut self, report: &Report) {
        let u = &report.usage;
        let (route, provider) = (&*report.route, report.provider.as_str());
        let (input, output, requests) =
            match self.series_for(route, provider, report.model(), report.estimated) {
                Some(s) => (
                    s.input,
                    s.output,
                    s.requests
                        .get(usize::from(report.estimated))
                        .copied()
                        .flatten(),
                ),
                None => {
                    // Past the cache bound: names built per request, as before caching.
                    let model = self.models.label(report.model());
                    (
                        self.id(labels::token_usage(
                            TokenType::Input,
                            &model,
                            route,
                            provider,
                        )),
                        self.id(labels::token_usage(
                            TokenType::Output,
                            &model,
                            route,
                            provider,
                        )),
                        self.id(labels::requests(route, provider, report.estimated)),
                    )
                }
            };
        if let Some(id) = input {
            self.count(id, u.prompt_tokens);
        }
        if let Some(id) = output {
            self.count(id, u.completion_tokens);
        }
        if let Some(id) = requests {
            self.count(id, 1);
        }
    }

    /// The cached series of (route, provider, model), created on first use, with
    /// the `requests` counter of `estimated` defined on its first use (`None` past
    /// [`MAX_SERIES`]).
    fn series_for(
        &mut self,
        route: &str,
        provider: &str,
        model: &str,
        estimated: bool,
    ) -> Option<Series> {
        let est = usize::from(estimated);
        let cached = self
            .series
            .get(route)
            .and_then(|p| p.get(provider))
            .and_then(|m| m.get(model))
            .copied();
        if let Some(s) = cached.filter(|s| s.requests.get(est).copied().flatten().is_some()) {
            return Some(s);
        }
        let mut s = match cached {
            Some(s) => s,
            None if self.series_len >= MAX_SERIES => return None,
            None => {
                let label = self.models.label(model);
                Series {
                    input: self.id(labels::token_usage(
                        TokenType::Input,
                        &label,
                        route,
                        provider,
                    )),
                    output: self.id(labels::token_usage(
                        TokenType::Output,
                        &label,
                        route,
                        provider,
                    )),
                    requests: [None; 2],
                }
            }
        };
        if let Some(slot) = s.requests.get_mut(est) {
            *slot = self.id(labels::requests(route, provider, estimated));
        }
        let models = self
            .series
            .entry(route.to_string())
            .or_default()
            .entry(provider.to_string())
            .or_default();
        if models.insert(model.to_string(), s).is_none() {
            self.series_len += 1;
        }
        Some(s)
    }

    fn id(&mut self, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        match ffi::define_metric(MetricType::Counter, &name) {
            Ok(id) => {
                self.ids.insert(name, id);
                Some(id)
            }
            Err(s) => {
                warn!("tollgate: cannot define metric {name}: {s:?}");
                None
            }
        }
    }

    /// Add `by` to the counter called `name` now (rare counters: PII findings).
    fn add(&mut self, name: String, by: u64) {
        if by == 0 {
            return;
        }
        if let Some(id) = self.id(name) {
            increment(id, by);
        }
    }
}

/// One `proxy_increment_metric`, logged and survived on failure.
fn increment(id: u32, by: u64) {
    if let Err(s) = ffi::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) {
        warn!("tollgate: cannot increment metric: {s:?}");
    }
}

/// Per-VM state: the validated config and the metrics cache.
struct Root {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
    store: SharedData,
    /// Detected on the VM's first request (see [`detect_host`]).
    host: Rc<Cell<HostKind>>,
    /// Kong's shared-limit true-ups, sent on the tick (see [`global::TrueUps`]).
    true_ups: Rc<RefCell<global::TrueUps>>,
    /// The tick period is set: it is not asked for twice (ngx_wasm_module refuses a
    /// second `set_tick_period` with "tick_period already set").
    ticking: bool,
    /// Whether the host logs at debug, asked on the tick instead of per exchange
    /// (one hostcall less per request; a level change shows within a tick).
    /// `None` until the first tick, or without a timer: then asked per exchange.
    debug_log: Rc<Cell<Option<bool>>>,
    /// One list for the headers (and the filter-state values) tollgate adds to a
    /// response, shared by the VM's requests and cleared for each use: no
    /// allocation per value.
    headers: Rc<RefCell<HeaderList>>,
    /// The clock as the tick last read it, for admissions from credits.
    recent: Rc<Cell<RecentTime>>,
    /// The window of every local limit rule of the config, to know until when the
    /// tick's reading picks the same windows as the clock.
    windows: Vec<crate::config::Window>,
}

/// A clock reading taken on the tick, which admissions from credits use instead
/// of a clock hostcall each (about 1 µs in Envoy's V8, a fifth of what a local
/// limit adds to metering). It is used only while it picks the same windows as
/// the clock ([`limits::recent_time_usable_until`]) and for at most
/// [`RECENT_TIME_USES`] admissions; anything that writes the shared counters or
/// refuses reads the clock itself.
#[derive(Clone, Copy, Debug, Default)]
struct RecentTime {
    read_ms: u64,
    usable_until_ms: u64,
    uses_left: u32,
}

/// Admissions one tick's clock reading may serve: should the timer stall while
/// traffic flows, the clock is read again after this many.
const RECENT_TIME_USES: u32 = 4096;

/// The tick's clock reading, if it may stand in for the clock now (one use taken).
fn take_recent_time(cell: &Cell<RecentTime>) -> Option<u64> {
    let mut t = cell.get();
    if t.uses_left == 0 || t.read_ms == 0 || t.read_ms > t.usable_until_ms {
        return None;
    }
    t.uses_left -= 1;
    cell.set(t);
    Some(t.read_ms)
}

/// Which host runs this VM, probed once: request properties are not readable in
/// the root context, so the first HTTP context asks and every later one reuses it.
fn detect_host(cached: &Cell<HostKind>) -> HostKind {
    if cached.get() == HostKind::Unknown {
        let kong = matches!(ffi::property(KONG_PROBE), Ok(Some(_)));
        cached.set(if kong {
            HostKind::Kong
        } else {
            HostKind::Envoy
        });
    }
    cached.get()
}

impl Default for Root {
    fn default() -> Self {
        Root {
            config: Rc::new(Config::default()),
            metrics: Rc::new(RefCell::new(Metrics {
                ids: HashMap::default(),
                models: ModelLabels::new(32),
                rate_limit_ids: HashMap::default(),
                last_rate_limit: None,
                series: HashMap::default(),
                series_len: 0,
                pending: None,
            })),
            store: SharedData::default(),
            host: Rc::new(Cell::new(HostKind::Unknown)),
            true_ups: Rc::new(RefCell::new(global::TrueUps::default())),
            ticking: false,
            debug_log: Rc::new(Cell::new(None)),
            headers: Rc::new(RefCell::new(HeaderList::with_capacity(12))),
            recent: Rc::new(Cell::new(RecentTime::default())),
            windows: Vec::new(),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let started = ffi::now_nanos();
        let raw = ffi::buffer(BufferType::PluginConfiguration, 0, usize::MAX).unwrap_or_default();
        match Config::parse(&raw) {
            Ok(config) => {
                {
                    let mut m = self.metrics.borrow_mut();
                    // Write what is held under the old labels before they change.
                    m.flush();
                    m.models = ModelLabels::new(config.metrics.max_model_labels as usize);
                    m.reset_series();
                }
                let routes: Vec<&str> = config.route_names().collect();
                let took_ms = match (started, ffi::now_nanos()) {
                    (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e6,
                    _ => 0.0,
                };
                info!(
                    "configured in {took_ms:.2} ms; routes with own settings: {:?}",
                    routes
                );
                limits::init_store(&mut self.store.clone());
                let any_route =
                    |f: &dyn Fn(&crate::config::RouteSettings) -> bool| config.all_routes().any(f);
                let any_limits = any_route(&|r| r.limits.active());
                // New rules: the tick's reading is checked against them from the
                // next tick on; until then admissions read the clock.
                self.recent.set(RecentTime::default());
                self.windows.clear();
                for r in config.all_routes() {
                    for w in r.limits.rules.iter().map(|rule| rule.window()) {
                        if !self.windows.contains(&w) {
                            self.windows.push(w);
                        }
                    }
                }
                // Kong sends `http` true-ups from the tick. The host is only known at
                // the first request, so the timer runs wherever the mode is set; on
                // Envoy its tick finds the queue empty (one borrow).
                let global_http =
                    any_route(&|r| r.limits.global.mode == limits::global::GlobalMode::Http);
                // Write what is held before a new config could change the rules.
                limits::flush_deferred(&mut self.store.clone());
                self.store.defers = false;
                // The timer batches metric counts (every config), holds limit
                // refunds, and sends Kong's `http` true-ups.
                if !self.ticking {
                    match ffi::set_tick_period_ms(METRICS_FLUSH_MS) {
                        Ok(()) => self.ticking = true,
                        Err(s) => warn!(
                            "tollgate: no timer ({s:?}); metrics and refunds are written per request, and on Kong shared-limit (http) true-ups are not sent"
                        ),
                    }
                }
                if self.ticking {
                    self.store.defers = any_limits;
                    let mut m = self.metrics.borrow_mut();
                    if m.pending.is_none() {
                        m.pending = Some(HashMap::default());
                    }
                }
                if let Ok(mut q) = self.true_ups.try_borrow_mut() {
                    q.set_enabled(self.ticking && global_http);
                }
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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            calls: global::Calls::new(context_id),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            host: self.host.get(),
            host_cell: self.host.clone(),
            debug_log: self.debug_log.clone(),
            headers: self.headers.clone(),
            recent: self.recent.clone(),
            true_ups: self.true_ups.clone(),
            exchange: None,
            response: ResponseMode::PassThrough,
            waiting_for_body: false,
            response_body_replaced: false,
            pii_emitted: false,
            translate_in_filter: None,
            provider_calls: fallback::ProviderCalls::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn on_tick(&mut self) {
        if !self.windows.is_empty() {
            let read = ffi::now_nanos().map_or(0, |n| n / 1_000_000);
            self.recent.set(RecentTime {
                read_ms: read,
                usable_until_ms: limits::recent_time_usable_until(
                    &self.windows,
                    read,
                    u64::from(METRICS_FLUSH_MS),
                ),
                uses_left: RECENT_TIME_USES,
            });
        }
        limits::flush_deferred(&mut self.store.clone());
        if let Ok(mut m) = self.metrics.try_borrow_mut() {
            m.flush();
        }
        global::send_true_ups(&self.true_ups);
        let host = self.host.get();
        if host != HostKind::Unknown && host.has_log_level() {
            self.debug_log.set(Some(ffi::debug_enabled()));
        }
    }
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // The VM is going away: write what is still batched.
        limits::flush_deferred(&mut self.store.clone());
        if let Ok(mut m) = self.metrics.try_borrow_mut() {
            m.flush();
        }
        true
    }
}

/// One HTTP request as seen by tollgate.
struct Http {
    config: Rc<Config>,
    metrics: Rc<RefCell<Metrics>>,
    host: HostKind,
    store: SharedData,
    /// The VM's detected host, shared with the root context.
    host_cell: Rc<Cell<HostKind>>,
    /// Kong's shared-limit true-ups, queued here and sent by the root's tick.
    true_ups: Rc<RefCell<global::TrueUps>>,
    /// The root's view of the host's log level (see `Root::debug_log`).
    debug_log: Rc<Cell<Option<bool>>>,
    /// The VM's list for the headers a response gets (see `Root::headers`).
    headers: Rc<RefCell<HeaderList>>,
    /// The tick's clock reading (see [`RecentTime`]).
    recent: Rc<Cell<RecentTime>>,
    exchange: Option<Exchange>,
    response: ResponseMode,
    waiting_for_body: bool,
    /// Calls to the shared rate-limit service (`limits.global`).
    calls: global::Calls,
    /// The held response body was rewritten (PII restore): drop `content-length`.
    response_body_replaced: bool,
    /// PII metrics and filter state were written (once per request).
    pii_emitted: bool,
    /// Kong: a provider answer being translated without holding headers. Chunks
    /// collect here (the client gets empty chunks) until the last one, which is
    /// replaced by the whole translated body.
    translate_in_filter: Option<Vec<u8>>,
    /// Kong fallback: provider calls tollgate makes itself.
    provider_calls: fallback::ProviderCalls,
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.global_grpc_answer(token_id, status_code, response_size);
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        if self.fallback_answer(token_id, body) {
            return;
        }
        self.global_http_answer(token_id);
    }
}

impl Http {
    fn route_name(&mut self) -> Option<String> {
        for (kind, path) in ROUTE_NAME_PROPERTIES {
            if self.host != HostKind::Unknown && self.host != kind {
                continue;
            }
            if let Some(name) = property_text(ffi::property(path).ok().flatten()) {
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
        let recent = take_recent_time(&self.recent);
        let reply = if recent.is_some_and(|t| ex.admit_from_credits(&mut self.store, t)) {
            None
        } else {
            let Some(now_ms) = ffi::now_nanos().map(|n| n / 1_000_000) else {
                warn!("tollgate: no host clock; limits skipped (fail open)");
                return None;
            };
            if recent.is_some() {
                // The credits were just tried (in the same windows): not again.
                ex.admit_from_store(&mut self.store, now_ms)
            } else {
                ex.admit(&mut self.store, now_ms)
            }
        };
        if let Some(a) = ex.admission() {
            let rule = a.state().map_or("none", |s| &*s.rule);
            let decision = match (a.allowed, a.over_limit, a.clamped_to) {
                (false, _, _) => "refused",
                (true, true, _) => "would_refuse",
                (true, false, Some(_)) => "clamped",
                (true, false, None) => "allowed",
            };
            if a.store_errors > 0 {
                warn!(
                    "tollgate: limit store unusable for {} rule(s); failed open",
                    a.store_errors
                );
            }
            if a.over_limit || a.clamped_to.is_some() {
                info!(
                    "{{\"event\":\"tollgate.rate_limit\",\"decision\":\"{decision}\",\"rule\":{},\"remaining\":{},\"clamped_to\":{}}}",
                    serde_json::Value::from(rule),
                    a.state().map_or(0, |s| s.remaining),
                    serde_json::Value::from(a.clamped_to)
                );
            }
            self.metrics
                .borrow_mut()
                .rate_limit(ex.route(), rule, decision);
        }
        reply
    }

    fn emit(&mut self, report: &Report, add_headers: bool) {
        if let Some(ex) = self.exchange.as_mut() {
            ex.settle(&mut self.store, report);
            if let Some(n) = ex.stream_cut_at() {
                let rule = ex
                    .admission()
                    .and_then(|a| a.state())
                    .map_or("none", |s| &*s.rule);
                info!(
                    "{{\"event\":\"tollgate.rate_limit\",\"decision\":\"stream_cut\",\"rule\":{},\"output_tokens_at_cut\":{n},\"provider_output_tokens\":{}}}",
                    serde_json::Value::from(rule),
                    report.usage.completion_tokens
                );
                self.metrics
                    .borrow_mut()
                    .rate_limit(ex.route(), rule, "stream_cut");
            }
        }
        self.global_settle(report);
        let host = self.host;
        let (reports, usage_headers) = self
            .exchange
            .as_ref()
            .map_or((true, true), |ex| (ex.reports_usage(), ex.usage_headers()));
        if add_headers {
            // Headers were held: add ours before they go.
            let stale: &[&str] = if self.response_body_replaced {
                &["content-length"]
            } else {
                &[]
            };
            let exchange = self.exchange.as_ref();
            let set = with_list(&self.headers, |ours| {
                if usage_headers {
                    report.push_headers(ours);
                }
                if let Some(ex) = exchange {
                    ex.push_rate_limit_headers(ours);
                }
                set_response_headers(ours, stale)
            });
            if let Err(s) = set {
                debug!("cannot set x-llm headers: {s:?}");
            }
        }
        if host.has_filter_state() && reports {
            let keys = self
                .exchange
                .as_ref()
                .map_or(&[][..], |ex| ex.settings().metering.filter_state.as_slice());
            with_list(&self.headers, |state| {
                report.push_filter_state(keys, state);
                for (k, v) in state.iter() {
                    if let Err(s) = ffi::set_property(&[k], v.as_bytes()) {
                        debug!("tollgate: cannot set filter state {k}: {s:?}");
                    }
                }
            });
        }
        if reports {
            self.metrics.borrow_mut().exchange(report);
            // The level the root's tick last saw; asked here only before the
            // first tick (or on a host without a timer).
            let debug = match self.debug_log.get() {
                Some(on) => on,
                None => host.has_log_level() && ffi::debug_enabled(),
            };
            if debug {
                debug!("{}", report.log_line());
            }
        }
        self.emit_pii();
    }

    /// PII findings of the exchange: a counter per detector and direction, and
    /// the `llm.pii` filter state (categories and counts, never values). Once.
    fn emit_pii(&mut self) {
        if self.pii_emitted {
            return;
        }
        let Some(ex) = self.exchange.as_ref() else {
            return;
        };
        let Some(pii) = ex.pii() else { return };
        self.pii_emitted = true;
        let mut m = self.metrics.borrow_mut();
        for (name, req, resp) in pii.counts() {
            m.add(
                crate::pii::metric_name(ex.route(), name, crate::pii::Direction::Request),
                req,
            );
            m.add(
                crate::pii::metric_name(ex.route(), name, crate::pii::Direction::Response),
                resp,
            );
        }
        let state = self.host.has_filter_state().then(|| pii.filter_state());
        if let Some(state) = state.flatten() {
            if let Err(s) = ffi::set_property(&["llm.pii"], state.as_bytes()) {
                debug!("tollgate: cannot set filter state llm.pii: {s:?}");
            }
        }
    }
}

/// Set `ours` on the response headers (each replacing any header of its name) and
/// remove `stale`, one hostcall per header. Cheaper in Envoy than writing the whole
/// map back (`proxy_set_header_map_pairs` removes and re-adds every header: about
/// 7 µs for a typical answer's read and write, against about 0.5 µs per header
/// set; the bench's `probe-*` variants, benches/README.md). Stops at the first failure.
fn set_response_headers(ours: &HeaderList, stale: &[&str]) -> Result<(), Status> {
    for (k, v) in ours.iter() {
        ffi::set_header(MapType::HttpResponseHeaders, k, v)?;
    }
    for k in stale {
        ffi::remove_header(MapType::HttpResponseHeaders, k)?;
    }
    Ok(())
}

/// Run `f` on the VM's header list, emptied (a fresh one should it be in use):
/// a response's headers or filter-state values then need no allocation of their own.
fn with_list<R>(list: &RefCell<HeaderList>, f: impl FnOnce(&mut HeaderList) -> R) -> R {
    match list.try_borrow_mut() {
        Ok(mut l) => {
            l.clear();
            f(&mut l)
        }
        Err(_) => f(&mut HeaderList::with_capacity(8)),
    }
}

/// Kong, where responses cannot be held: add this chunk to `gathered` and send the
/// client an empty chunk instead; at the end of the body, the whole answer to
/// rewrite and write out in place of the last chunk.
fn gather_chunk(
    gathered: &mut Option<Vec<u8>>,
    body_size: usize,
    end_of_stream: bool,
) -> Option<Vec<u8>> {
    let chunk = ffi::buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_default();
    let mut all = gathered.take().unwrap_or_default();
    all.extend_from_slice(&chunk);
    if end_of_stream {
        return Some(all);
    }
    *gathered = Some(all);
    if let Err(s) = ffi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &[]) {
        warn!("tollgate: cannot hold back a response chunk: {s:?}");
    }
    None
}

/// Apply the provider stage's request rewrite while headers are still held:
/// `:path`, `:authority`, auth and cluster headers (and `content-length` for a new
/// body), then ask Envoy to pick the route again (see docs/providers.md). Envoy
/// gets one call per header (cheaper there than reading the whole map and writing
/// it back, which removes and re-adds every header); other hosts one read and one
/// write of the map, whose pseudo-header handling is the documented one.
fn rewrite_upstream(
    host: HostKind,
    req: &crate::providers::UpstreamRequest,
    body_len: Option<usize>,
) {
    let map = MapType::HttpRequestHeaders;
    let body_len = body_len.map(|n| n.to_string());
    let mut ours: Vec<(&str, &str)> = Vec::with_capacity(req.set_headers.len() + 3);
    ours.push((":path", req.path.as_str()));
    if let Some(a) = &req.authority {
        ours.push((":authority", a.as_str()));
    }
    if let Some(n) = &body_len {
        ours.push(("content-length", n.as_str()));
    }
    ours.extend(
        req.set_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let drop: Vec<&str> = req.remove_headers.iter().map(String::as_str).collect();
    let written = if host == HostKind::Envoy {
        ours.iter()
            .try_for_each(|(k, v)| ffi::set_header(map, k, v))
            .and_then(|()| drop.iter().try_for_each(|k| ffi::remove_header(map, k)))
    } else {
        let raw = ffi::header_map(map).unwrap_or_default();
        ffi::set_header_map(
            map,
            &merge_header_map(&parse_header_map(&raw), &ours, &drop),
        )
    };
    if let Err(s) = written {
        warn!("tollgate: cannot rewrite request headers for the provider: {s:?}");
    }
    // Envoy 1.40 re-selects the route by itself after a filter edited request
    // headers (measured); the foreign function makes it explicit where offered.
    if host.has_foreign_functions() {
        let _ = ffi::clear_route_cache();
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.host = detect_host(&self.host_cell);
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
        if ex.settings().limits.any_active() {
            // A header is trusted only because the edge strips client copies; a
            // property (jwt_authn metadata) cannot be set by clients (docs/limits.md).
            let source = &ex.settings().limits.consumer;
            let consumer = match source.property_path() {
                None => text(source.header.as_str()).map(str::to_string),
                Some(path) => limits::identity::from_property(ffi::property(&path).ok().flatten()),
            };
            ex.set_consumer(consumer);
        }
        let end_of_stream = self.host.request_end_of_stream(end_of_stream, len);
        if self.host == HostKind::Kong {
            // No retry mechanism to steer on Kong: fallbacks are tollgate's calls.
            ex.enable_provider_calls();
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
                if self.host.pause_request_headers() {
                    Action::Pause
                } else {
                    Action::Continue
                }
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
            if !self.host.pause_request_headers() {
                // Kong hands over the whole body at once; should a part ever come,
                // pausing would hang the request: pass it through unmetered.
                warn!("tollgate: partial request body on a host that cannot pause; passing through unmetered");
                self.waiting_for_body = false;
                self.exchange = None;
                return Action::Continue;
            }
            return Action::Pause;
        }
        self.waiting_for_body = false;
        let body = match ffi::buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(b) if b.is_empty() && body_size > 0 => {
                // Kong: a body over `nginx_http_client_body_buffer_size` is on disk
                // and the host hands back nothing. Fail open, loudly.
                warn!("tollgate: request body of {body_size} bytes is not readable (Kong: raise nginx_http_client_body_buffer_size); passing through unmetered");
                self.exchange = None;
                return Action::Continue;
            }
            Ok(b) => b,
            Err(s) => {
                warn!("tollgate: cannot read request body: {s:?}; passing through unmetered");
                self.exchange = None;
                return Action::Continue;
            }
        };
        if ex.has_provider() {
            ex.set_clock(ffi::now_nanos().map_or(0, |n| n / 1_000_000));
        }
        let decision = ex.on_request_body(&body);
        if !matches!(decision, BodyDecision::Respond(_)) {
            if let Some(r) = self.admit() {
                return self.reply(&r);
            }
        }
        // Request stages after admission, in data-path order: the clamp edits the
        // client-dialect body, then the provider stage translates the result.
        let decision = match self.exchange.as_mut() {
            Some(ex) => {
                let clamped = ex.clamp_request(decision, &body);
                ex.provider_stage(clamped, &body)
            }
            None => decision,
        };
        let upstream = self
            .exchange
            .as_mut()
            .and_then(Exchange::take_upstream_headers);
        self.fallback_prepare(&decision, &body, upstream.as_ref());
        let action = match decision {
            BodyDecision::Forward => {
                if let Some(u) = upstream {
                    rewrite_upstream(self.host, &u, None);
                }
                Action::Continue
            }
            BodyDecision::Replace(new_body) => {
                match ffi::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_body) {
                    Ok(()) if upstream.is_some() => {
                        if let Some(u) = upstream {
                            rewrite_upstream(self.host, &u, Some(new_body.len()));
                        }
                    }
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
            BodyDecision::Respond(r) => {
                self.emit_pii();
                return self.reply(&r);
            }
        };
        // Shared limits last: the request is held (body already edited) until the
        // rate-limit service answers. Then a Kong fallback route's provider call.
        match self.global_admit() {
            Some(a) => a,
            None => self.fallback_start().unwrap_or(action),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.fallback_relayed() {
            return Action::Continue;
        }
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
            let encoding = text("content-encoding").unwrap_or("");
            if self.host.can_hold_responses() {
                if let Some(r) = ex.encoded_answer_refusal(status, encoding) {
                    warn!("tollgate: compressed answer ({encoding}) on a PII route refused");
                    // Still metered (the provider billed it): the prompt count, labelled.
                    self.response = ex.on_encoded_response_headers(status);
                    return self.reply(&r);
                }
            } else if (200..300).contains(&status) && ex.pii().is_some_and(|p| p.wants_response()) {
                // Kong sent the headers already: nothing left but to say so.
                warn!("tollgate: compressed answer ({encoding}) on a PII route passes unscanned (Kong)");
            }
            ex.on_encoded_response_headers(status)
        };
        let mut gather = false;
        if self.response == ResponseMode::Buffer && !self.host.can_hold_responses() {
            // Kong: no holding headers; copy the body for usage instead (no x-llm-* headers).
            self.response = ResponseMode::Copy;
            // A PII route must restore/scan the whole answer before the client sees
            // it: gather it in the filter (the declared length is small, that is why
            // it would have been buffered) and write it out at the end.
            gather = ex.pii().is_some() && !end_of_stream;
        }
        if self.response == ResponseMode::Translate
            && !self.host.can_hold_responses()
            && !end_of_stream
        {
            // Kong: headers go now (JSON, length unknown until translated); the
            // body is gathered in the filter and replaced at the end.
            let set = with_list(&self.headers, |ours| {
                ours.push("content-type", "application/json");
                ex.push_rate_limit_headers(ours);
                set_response_headers(ours, &["content-length"])
            });
            if let Err(s) = set {
                warn!("tollgate: cannot set translated response headers: {s:?}");
            }
            self.translate_in_filter = Some(Vec::new());
            return Action::Continue;
        }
        if gather {
            self.translate_in_filter = Some(Vec::new());
        }
        // PII rewriting a copied answer as it passes changes its length too.
        let rewritten = gather || ex.rewrites_copied_response();
        if self.response != ResponseMode::Buffer || end_of_stream {
            // Rate-limit headers now (held headers get them in `emit` instead,
            // with the x-llm ones).
            let set = with_list(&self.headers, |rl| {
                ex.push_rate_limit_headers(rl);
                set_response_headers(rl, &[])
            });
            if let Err(s) = set {
                debug!("tollgate: cannot set rate-limit headers: {s:?}");
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
            ResponseMode::Buffer | ResponseMode::Translate => Action::Pause,
            ResponseMode::Stream => {
                // Stripping the injected usage chunk changes the length.
                let _ = ffi::remove_header(MapType::HttpResponseHeaders, "content-length");
                if ex.translates_response() {
                    let _ = ffi::set_header(
                        MapType::HttpResponseHeaders,
                        "content-type",
                        "text/event-stream",
                    );
                }
                Action::Continue
            }
            ResponseMode::Copy => {
                if rewritten {
                    // The answer is rewritten (gathered, or as it passes): its length changes.
                    let _ = ffi::remove_header(MapType::HttpResponseHeaders, "content-length");
                }
                Action::Continue
            }
            ResponseMode::PassThrough => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.provider_calls_relayed() {
            return Action::Continue;
        }
        let Some(ex) = self.exchange.as_mut() else {
            return Action::Continue;
        };
        match self.response {
            ResponseMode::PassThrough => Action::Continue,
            ResponseMode::Buffer => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let mut body =
                    ffi::buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_default();
                if let Some(new_body) = ex.pii_response(&body) {
                    match ffi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &new_body) {
                        Ok(()) => {
                            self.response_body_replaced = true;
                            body = new_body;
                        }
                        Err(s) => warn!("tollgate: cannot rewrite response body: {s:?}"),
                    }
                }
                if let Some(r) = ex.on_response_complete(Some(&body)) {
                    self.emit(&r, true);
                }
                Action::Continue
            }
            ResponseMode::Translate if self.translate_in_filter.is_some() => {
                let Some(gathered) =
                    gather_chunk(&mut self.translate_in_filter, body_size, end_of_stream)
                else {
                    return Action::Continue;
                };
                let (out, report) = ex.on_translated_response(&gathered);
                if let Err(s) = ffi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out) {
                    warn!("tollgate: cannot write the translated response: {s:?}");
                }
                if let Some(r) = report {
                    self.emit(&r, false);
                }
                Action::Continue
            }
            ResponseMode::Translate => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body =
                    ffi::buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_default();
                let upstream_status = ex.response_status();
                let (out, report) = ex.on_translated_response(&body);
                if let Err(s) = ffi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out) {
                    warn!("tollgate: cannot write the translated response: {s:?}");
                }
                let set = with_list(&self.headers, |ours| {
                    ours.push("content-type", "application/json");
                    ours.push_u64("content-length", out.len() as u64);
                    if ex.response_status() != upstream_status {
                        // 502 when a 2xx answer was not the provider's documented shape.
                        ours.push_u64(":status", u64::from(ex.response_status()));
                    }
                    if let Some(r) = report.as_ref().filter(|_| ex.usage_headers()) {
                        r.push_headers(ours);
                    }
                    ex.push_rate_limit_headers(ours);
                    set_response_headers(ours, &[])
                });
                if let Err(s) = set {
                    debug!("tollgate: cannot set translated response headers: {s:?}");
                }
                if let Some(r) = report {
                    self.emit(&r, false);
                }
                Action::Continue
            }
            ResponseMode::Copy if self.translate_in_filter.is_some() => {
                // Kong, PII route: the answer is gathered and rewritten as a whole.
                let Some(gathered) =
                    gather_chunk(&mut self.translate_in_filter, body_size, end_of_stream)
                else {
                    return Action::Continue;
                };
                let out = ex.pii_response(&gathered).unwrap_or(gathered);
                if let Err(s) = ffi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out) {
                    warn!("tollgate: cannot write the scanned response: {s:?}");
                }
                if let Some(r) = ex.on_response_complete(Some(&out)) {
                    self.emit(&r, false);
                }
                Action::Continue
            }
            ResponseMode::Copy => {
                if let Ok(chunk) = ffi::buffer(BufferType::HttpResponseBody, 0, body_size) {
                    // PII: a big answer is restored/scanned as it passes.
                    let chunk = match ex.pii_response_chunk(&chunk, end_of_stream) {
                        Rewrite::Replace(out) => {
                            if let Err(s) =
                                ffi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out)
                            {
                                warn!("tollgate: cannot rewrite response chunk: {s:?}");
                            }
                            out
                        }
                        Rewrite::Unchanged => chunk,
                    };
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
        self.emit_pii();
    }
}
