//! The import check: tollgate.wasm may only import what ngx_wasm_module (Kong's
//! proxy-wasm host) implements, except functions reachable only on Envoy paths,
//! each listed below with why Kong never calls it.
//!
//! "Implemented" follows ngx_wasm_module's docs/PROXY_WASM.md "Supported Host
//! ABI" table and the source it describes (`ngx_proxy_wasm_host.c`: functions
//! bound to the NYI stub trap the filter), with metrics per docs/METRICS.md
//! (ngx_wasm_module 0.4+, Kong 3.8+). The table lives in `testhost::abi`, and the
//! Kong mode of the test host traps on exactly those functions, so every case in
//! `tests/hosts.rs` that passes on Kong also proves none of them was called there.

use testhost::abi::{self, Kong};

/// Imports ngx_wasm_module does not implement, kept because only Envoy paths call
/// them. Each entry: (import, why it is never called on Kong).
const ENVOY_ONLY: &[(&str, &str)] = &[
    (
        "proxy_get_log_level",
        "adapter asks only when HostKind::has_log_level() (not Kong) before building the debug line",
    ),
    (
        "proxy_grpc_call",
        "SDK Context::dispatch_grpc_call default, linked via trait-object vtables; gRPC (RLS) is Envoy-only, Kong's global limit goes over HTTP",
    ),
    ("proxy_grpc_stream", "SDK Context default (vtable); tollgate opens no gRPC streams"),
    ("proxy_grpc_send", "SDK Context default (vtable); tollgate opens no gRPC streams"),
    ("proxy_grpc_cancel", "SDK Context default (vtable); only for gRPC calls, Envoy-only"),
    ("proxy_grpc_close", "SDK Context default (vtable); only for gRPC calls, Envoy-only"),
    ("proxy_get_status", "SDK get_grpc_status, read only in gRPC callbacks (Envoy-only)"),
    ("proxy_done", "SDK Context::done default (vtable); tollgate never defers on_done"),
    ("proxy_close_stream", "SDK close_http_stream default (vtable); tollgate never resets streams"),
    (
        "proxy_call_foreign_function",
        "Envoy foreign functions (clear_route_cache after a provider rewrite, set_envoy_filter_state): called only when HostKind::has_foreign_functions() (not Kong)",
    ),
    ("proxy_resolve_shared_queue", "SDK default (vtable); a Kong queue is registered, never resolved"),
];

fn imports() -> Vec<(String, String)> {
    let path = testhost::tollgate_wasm_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run `make build` first",
            path.display()
        )
    });
    testhost::wasm_imports(&bytes).expect("parse import section")
}

#[test]
fn every_import_is_supported_by_ngx_wasm_module_or_justified() {
    let imports = imports();
    assert!(imports.len() > 10, "parsed {} imports", imports.len());
    let mut problems = Vec::new();
    for (module, name) in &imports {
        match module.as_str() {
            "env" => match abi::kong_status(name) {
                Some(Kong::Supported) => {}
                Some(Kong::Trap) if ENVOY_ONLY.iter().any(|(n, _)| n == name) => {}
                Some(Kong::Trap) => {
                    problems.push(format!("{name}: traps on Kong (NYI) and is not justified"))
                }
                None => problems.push(format!("{name}: not a proxy-wasm 0.2.1 host function")),
            },
            "wasi_snapshot_preview1" if abi::WASI.contains(&name.as_str()) => {}
            _ => problems.push(format!("{module}.{name}: unexpected import module")),
        }
    }
    assert!(
        problems.is_empty(),
        "imports Kong cannot serve:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_exception_is_still_needed_and_really_unsupported() {
    let imports = imports();
    for (name, why) in ENVOY_ONLY {
        assert!(!why.is_empty());
        assert_eq!(
            abi::kong_status(name),
            Some(Kong::Trap),
            "{name} is supported on Kong: drop the exception"
        );
        assert!(
            imports.iter().any(|(m, n)| m == "env" && n == name),
            "{name} is no longer imported: drop the exception"
        );
    }
}

#[test]
fn parser_reads_a_hand_made_import_section() {
    // (module (import "env" "proxy_log" (func (param i32 i32 i32) (result i32))))
    let wasm: &[u8] = &[
        0, b'a', b's', b'm', 1, 0, 0, 0, // header
        1, 8, 1, 0x60, 3, 0x7f, 0x7f, 0x7f, 1, 0x7f, // type section
        2, 15, 1, 3, b'e', b'n', b'v', 9, b'p', b'r', b'o', b'x', b'y', b'_', b'l', b'o', b'g', 0,
        0,
    ];
    assert_eq!(
        testhost::wasm_imports(wasm).unwrap(),
        vec![("env".to_string(), "proxy_log".to_string())]
    );
    assert!(testhost::wasm_imports(b"nope").is_err());
    assert!(testhost::wasm_imports(&wasm[..wasm.len() - 3]).is_err());
}
