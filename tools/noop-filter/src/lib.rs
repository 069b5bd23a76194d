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

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopHttp))
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
