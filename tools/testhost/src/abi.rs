//! proxy-wasm ABI 0.2.1 constants and the host-function inventory, with what
//! each host does with each import.
//!
//! Sources for the Kong column: ngx_wasm_module `docs/PROXY_WASM.md` ("Supported
//! Host ABI" table, "Current Limitations") and
//! `src/common/proxy_wasm/ngx_proxy_wasm_host.c` (functions bound to
//! `ngx_proxy_wasm_hfuncs_nop` return `NGX_WAVM_NYI`, which traps the instance:
//! t/03-proxy_wasm/hfuncs "NYI host function" expects a 500 and
//! `host trap (function not yet implemented)`). Metrics follow
//! `docs/METRICS.md` (ngx_wasm_module 0.4+, Kong 3.8+), which supersedes the
//! older table that still marks them unimplemented.

/// proxy-wasm status codes (proxy-wasm-rust-sdk `types::Status`).
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// Key or property not found.
    pub const NOT_FOUND: i32 = 1;
    /// Bad argument, or a call made where the host does not allow it.
    pub const BAD_ARGUMENT: i32 = 2;
    /// Queue empty.
    pub const EMPTY: i32 = 7;
    /// Shared-data compare-and-swap mismatch.
    pub const CAS_MISMATCH: i32 = 8;
    /// Host-side failure.
    pub const INTERNAL_FAILURE: i32 = 10;
}

/// Buffer types.
pub mod buffer {
    /// Request body.
    pub const HTTP_REQUEST_BODY: i32 = 0;
    /// Response body.
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    /// Body of an `http_call` answer.
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    /// VM configuration.
    pub const VM_CONFIGURATION: i32 = 6;
    /// Plugin (filter) configuration.
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// Header map types.
pub mod map {
    /// Request headers.
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    /// Response headers.
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    /// Headers of an `http_call` answer.
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
}

/// `Action` values returned by HTTP callbacks.
pub mod action {
    /// Continue to the next filter.
    pub const CONTINUE: i32 = 0;
    /// Pause (Envoy: StopIteration / StopIterationAndBuffer).
    pub const PAUSE: i32 = 1;
}

/// How ngx_wasm_module treats one import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kong {
    /// Implemented.
    Supported,
    /// Bound to the NYI stub: calling it traps the filter (request fails with 500).
    Trap,
}

/// Every proxy-wasm 0.2.1 import a Rust SDK filter can link against, and its
/// status on Kong. The import check (`tests/imports.rs`) reads this table; the
/// emulated Kong host traps on the `Trap` rows exactly like ngx_wasm_module.
pub const IMPORTS: &[(&str, Kong)] = &[
    ("proxy_log", Kong::Supported),
    ("proxy_get_log_level", Kong::Trap),
    ("proxy_get_current_time_nanoseconds", Kong::Supported),
    ("proxy_set_effective_context", Kong::Supported),
    ("proxy_done", Kong::Trap),
    ("proxy_set_tick_period_milliseconds", Kong::Supported),
    ("proxy_get_buffer_bytes", Kong::Supported),
    ("proxy_set_buffer_bytes", Kong::Supported),
    ("proxy_get_header_map_pairs", Kong::Supported),
    ("proxy_get_header_map_value", Kong::Supported),
    ("proxy_set_header_map_pairs", Kong::Supported),
    ("proxy_add_header_map_value", Kong::Supported),
    ("proxy_replace_header_map_value", Kong::Supported),
    ("proxy_remove_header_map_value", Kong::Supported),
    ("proxy_get_property", Kong::Supported),
    ("proxy_set_property", Kong::Supported),
    ("proxy_continue_stream", Kong::Supported),
    ("proxy_close_stream", Kong::Trap),
    ("proxy_send_local_response", Kong::Supported),
    ("proxy_http_call", Kong::Supported),
    ("proxy_grpc_call", Kong::Trap),
    ("proxy_grpc_stream", Kong::Trap),
    ("proxy_grpc_send", Kong::Trap),
    ("proxy_grpc_cancel", Kong::Trap),
    ("proxy_grpc_close", Kong::Trap),
    ("proxy_get_status", Kong::Trap),
    ("proxy_get_shared_data", Kong::Supported),
    ("proxy_set_shared_data", Kong::Supported),
    ("proxy_register_shared_queue", Kong::Supported),
    ("proxy_dequeue_shared_queue", Kong::Supported),
    ("proxy_enqueue_shared_queue", Kong::Supported),
    ("proxy_resolve_shared_queue", Kong::Trap),
    ("proxy_define_metric", Kong::Supported),
    ("proxy_increment_metric", Kong::Supported),
    ("proxy_record_metric", Kong::Supported),
    ("proxy_get_metric", Kong::Supported),
    ("proxy_call_foreign_function", Kong::Trap),
];

/// Kong status of a `env` import, `None` when it is not a proxy-wasm 0.2.1 import.
pub fn kong_status(name: &str) -> Option<Kong> {
    IMPORTS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The WASI preview1 functions the host shims (tollgate's Rust std imports these;
/// ngx_wasm_module links wasmtime's WASI for every module).
pub const WASI: &[&str] = &[
    "random_get",
    "environ_get",
    "environ_sizes_get",
    "fd_write",
    "proc_exit",
    "clock_time_get",
    "args_get",
    "args_sizes_get",
    "sched_yield",
];
