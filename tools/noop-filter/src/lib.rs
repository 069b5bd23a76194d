//! noop-filter: the cost floor of any body-aware proxy-wasm filter.
//!
//! It does exactly what tollgate must do to see a request body before the
//! router picks an upstream, and nothing else:
//! - request headers: `Action::Pause` (with `allow_on_headers_stop_iteration:
//!   true` in the plugin config this is StopIteration, so the body still arrives);
//! - request body: `Action::Pause` on every non-final chunk, so Envoy buffers
//!   the whole body, then `Action::Continue` at end of stream;
//! - responses: passed through untouched (no response callbacks do any work).
//!
//! The benchmark in `benches/` compares tollgate against this filter to tell
//! tollgate's own cost from the fixed cost of wasm + buffering.
//!
//! Probe mode, for pricing hostcalls: a plugin configuration `NAME:N` (e.g.
//! `get_shared_data:10`) makes N calls of that kind per request at the end of the
//! request body (see [`Probe`]); the bench's `probe-*` variants compare it with the
//! plain no-op (configuration `{}`), so the difference divided by N is one call.
//! Flow probes (`NAME:0`) price steps of tollgate's request flow instead:
//! `hold_response` (pause the response until its end), `read_bodies` (copy both
//! bodies into the VM) and `mimic` (tollgate's metering hostcalls in its order,
//! with no logic between them); `pii_alone` and `translate_alone` do the same for a
//! route that only redacts, or only rewrites for Anthropic (metering off): the
//! floor of those features in the host, whatever their own code costs.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot::default()) });
}}

/// Hostcalls the probe mode can repeat, each the way tollgate makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// `proxy_get_current_time_nanoseconds`.
    Time,
    /// `proxy_get_shared_data` of a 16-byte entry (the host allocates the copy in the VM).
    GetSharedData,
    /// `proxy_set_shared_data` of a 16-byte entry (unconditional).
    SetSharedData,
    /// `proxy_set_property` (a filter-state object), N distinct keys.
    SetProperty,
    /// `proxy_increment_metric` of one counter.
    IncrementMetric,
    /// `proxy_get_log_level`.
    LogLevel,
    /// N reads of the response header map (`proxy_get_header_map_pairs`).
    ResponseHeaderRead,
    /// One read of the response header map, then N headers set one call each
    /// (`proxy_replace_header_map_value`).
    ReplaceResponseHeader,
    /// One read of the response header map, then N headers added one call each
    /// (`proxy_add_header_map_value`).
    AddResponseHeader,
    /// One read of the response header map, then one write of the whole map
    /// (`proxy_set_header_map_pairs`) with N headers added.
    ResponseHeaderMapWrite,
    /// Pause the response headers and body until the end (N unused).
    HoldResponse,
    /// Read the request and the response body (N unused).
    ReadBodies,
    /// A metering exchange's hostcalls, as tollgate makes them (N unused).
    Mimic,
    /// The hostcalls of a PII-only exchange (metering off, nothing found): route,
    /// both header maps, `accept-encoding` dropped, both bodies read, the answer
    /// held to its end (N unused).
    PiiAlone,
    /// The hostcalls of an OpenAI->Anthropic exchange with metering off: as
    /// `PiiAlone`, plus the clock, both bodies written, four request headers set,
    /// `content-length` dropped, the route cache cleared and two response headers
    /// set (N unused).
    TranslateAlone,
}

impl Probe {
    fn parse(s: &str) -> Option<(Probe, u32)> {
        let (name, n) = s.trim().split_once(':')?;
        let probe = match name {
            "time" => Probe::Time,
            "get_shared_data" => Probe::GetSharedData,
            "set_shared_data" => Probe::SetSharedData,
            "set_property" => Probe::SetProperty,
            "increment_metric" => Probe::IncrementMetric,
            "log_level" => Probe::LogLevel,
            "response_header_read" => Probe::ResponseHeaderRead,
            "replace_response_header" => Probe::ReplaceResponseHeader,
            "add_response_header" => Probe::AddResponseHeader,
            "response_header_map" => Probe::ResponseHeaderMapWrite,
            "hold_response" => Probe::HoldResponse,
            "read_bodies" => Probe::ReadBodies,
            "mimic" => Probe::Mimic,
            "pii_alone" => Probe::PiiAlone,
            "translate_alone" => Probe::TranslateAlone,
            _ => return None,
        };
        Some((probe, n.parse().ok()?))
    }
}

const PROBE_KEY: &str = "noop/probe";
const HEADER_NAMES: [&str; 8] = [
    "x-probe-0",
    "x-probe-1",
    "x-probe-2",
    "x-probe-3",
    "x-probe-4",
    "x-probe-5",
    "x-probe-6",
    "x-probe-7",
];

#[derive(Default)]
struct NoopRoot {
    probe: Option<(Probe, u32)>,
    metric: u32,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        self.probe = Probe::parse(&String::from_utf8_lossy(&raw));
        if let Some((p, _)) = self.probe {
            if p == Probe::IncrementMetric {
                self.metric =
                    hostcalls::define_metric(MetricType::Counter, "noop_probe").unwrap_or(0);
            }
            if matches!(p, Probe::GetSharedData | Probe::SetSharedData) {
                let _ = hostcalls::set_shared_data(PROBE_KEY, Some(&[0u8; 16]), None);
            }
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.probe {
            None => Some(Box::new(NoopHttp)),
            Some((probe, n)) => Some(Box::new(ProbeHttp {
                probe,
                n,
                metric: self.metric,
            })),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopHttp;

impl Context for NoopHttp {}

impl HttpContext for NoopHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            // No body (e.g. GET): nothing to wait for.
            Action::Continue
        } else {
            // Hold the headers (and so the routing decision) until the body is complete.
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            Action::Continue
        } else {
            // Pause on non-final chunks: Envoy keeps buffering the body.
            Action::Pause
        }
    }
}

/// The no-op filter plus N hostcalls of one kind per request.
struct ProbeHttp {
    probe: Probe,
    n: u32,
    metric: u32,
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if matches!(
            self.probe,
            Probe::Mimic | Probe::PiiAlone | Probe::TranslateAlone
        ) {
            let _ = hostcalls::get_property(vec!["xds", "route_name"]);
            let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "accept-encoding", None);
        }
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if matches!(
            self.probe,
            Probe::ReadBodies | Probe::Mimic | Probe::PiiAlone | Probe::TranslateAlone
        ) {
            let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, _body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            if self.probe == Probe::TranslateAlone {
                let _ = hostcalls::get_current_time();
                // The same bytes back: the host's side of a rewritten body.
                let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, _body_size, &body);
                for (k, v) in [
                    (":path", "/v1/messages"),
                    (":authority", "api.anthropic.com"),
                    ("x-api-key", "sk-ant-probe"),
                    ("anthropic-version", "2023-06-01"),
                ] {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, k, Some(v));
                }
                let _ =
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, "content-length", None);
                let _ = hostcalls::call_foreign_function("clear_route_cache", Some(&[]));
            }
        }
        for i in 0..self.n {
            match self.probe {
                Probe::Time => {
                    let _ = hostcalls::get_current_time();
                }
                Probe::GetSharedData => {
                    let _ = hostcalls::get_shared_data(PROBE_KEY);
                }
                Probe::SetSharedData => {
                    let _ = hostcalls::set_shared_data(PROBE_KEY, Some(&[1u8; 16]), None);
                }
                Probe::SetProperty => {
                    let key = format!("probe.k{i}");
                    let _ = hostcalls::set_property(vec![key.as_str()], Some(b"12345"));
                }
                Probe::IncrementMetric => {
                    let _ = hostcalls::increment_metric(self.metric, 1);
                }
                Probe::LogLevel => {
                    let _ = hostcalls::get_log_level();
                }
                Probe::ResponseHeaderRead
                | Probe::ReplaceResponseHeader
                | Probe::AddResponseHeader
                | Probe::ResponseHeaderMapWrite
                | Probe::HoldResponse
                | Probe::ReadBodies
                | Probe::Mimic
                | Probe::PiiAlone
                | Probe::TranslateAlone => {}
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let n = self.n as usize;
        match self.probe {
            Probe::HoldResponse if !end_of_stream => return Action::Pause,
            Probe::Mimic | Probe::PiiAlone | Probe::TranslateAlone => {
                let _ = hostcalls::get_map_bytes(MapType::HttpResponseHeaders);
                if !end_of_stream {
                    return Action::Pause;
                }
            }
            Probe::ResponseHeaderRead => {
                for _ in 0..n {
                    let _ = hostcalls::get_map_bytes(MapType::HttpResponseHeaders);
                }
            }
            Probe::ReplaceResponseHeader => {
                let _ = hostcalls::get_map_bytes(MapType::HttpResponseHeaders);
                for name in HEADER_NAMES.iter().cycle().take(n) {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some("12345"));
                }
            }
            Probe::AddResponseHeader => {
                let _ = hostcalls::get_map_bytes(MapType::HttpResponseHeaders);
                for name in HEADER_NAMES.iter().cycle().take(n) {
                    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, "12345");
                }
            }
            Probe::ResponseHeaderMapWrite => {
                // tollgate's held-response write; N = 0 prices the read and the
                // write of the upstream's own headers.
                let mut map = hostcalls::get_map(MapType::HttpResponseHeaders).unwrap_or_default();
                let base = map.len();
                for name in HEADER_NAMES.iter().cycle().take(n) {
                    map.push((name.to_string(), "12345".to_string()));
                }
                let pairs: Vec<(&str, &str)> = map
                    .iter()
                    .take(base + n)
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let _ = hostcalls::set_map(MapType::HttpResponseHeaders, pairs);
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.probe {
            Probe::HoldResponse | Probe::Mimic | Probe::PiiAlone | Probe::TranslateAlone
                if !end_of_stream =>
            {
                Action::Pause
            }
            Probe::ReadBodies | Probe::Mimic | Probe::PiiAlone | Probe::TranslateAlone
                if end_of_stream =>
            {
                let body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                if self.probe == Probe::TranslateAlone {
                    let _ =
                        hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &body);
                    let _ = hostcalls::set_map_value(
                        MapType::HttpResponseHeaders,
                        "content-type",
                        Some("application/json"),
                    );
                    let _ = hostcalls::set_map_value(
                        MapType::HttpResponseHeaders,
                        "content-length",
                        None,
                    );
                }
                if self.probe == Probe::Mimic {
                    for name in [
                        "x-llm-prompt-tokens",
                        "x-llm-completion-tokens",
                        "x-llm-total-tokens",
                        "x-llm-model",
                    ] {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpResponseHeaders,
                            name,
                            Some("123"),
                        );
                    }
                    for k in [
                        "llm.prompt_tokens",
                        "llm.completion_tokens",
                        "llm.total_tokens",
                        "llm.model",
                        "llm.estimated",
                    ] {
                        let _ = hostcalls::set_property(vec![k], Some(b"123"));
                    }
                    let _ = hostcalls::get_log_level();
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }
}
