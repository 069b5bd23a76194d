//! Non-panicking wrappers over the proxy-wasm ABI calls used on the request path.
//!
//! The SDK's own wrappers `panic!` on any status they do not expect (for example
//! setting a header after headers were sent, or a non-UTF-8 header value), and a
//! panic kills the worker's VM. These return `Err(status)` instead, so the adapter
//! can log and carry on. Signatures match the SDK's declarations of the same imports.

use std::ptr::{null, null_mut};

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

extern "C" {
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_set_header_map_pairs(
        map_type: MapType,
        map_data: *const u8,
        map_size: usize,
    ) -> Status;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> Status;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
    fn proxy_set_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> Status;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
}

extern "C" {
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> Status;
}

/// Envoy's `clear_route_cache` foreign function: the route is chosen again from the
/// (rewritten) request headers. `Err(NotFound)` on hosts without it.
pub fn clear_route_cache() -> Result<(), Status> {
    let name = "clear_route_cache";
    let mut data: *mut u8 = null_mut();
    let mut size = 0usize;
    // SAFETY: pointers valid for the call; any result buffer is taken back and freed.
    let s = unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), null(), 0, &mut data, &mut size)
    };
    // SAFETY: the host allocated `data` through proxy_on_memory_allocate.
    drop(unsafe { owned(data, size) });
    ok(s)
}

extern "C" {
    // Declared with a plain u32 (same wasm signature as the SDK's enum pointer) so a
    // level value the SDK's enum does not know cannot become an invalid enum.
    #[allow(clashing_extern_declarations)]
    fn proxy_get_log_level(return_level: *mut u32) -> Status;
}

/// Take ownership of a buffer the host wrote into memory it got from
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

fn ok(s: Status) -> Result<(), Status> {
    match s {
        Status::Ok => Ok(()),
        other => Err(other),
    }
}

/// The whole header map in one call (serialised; parse with
/// [`crate::host::parse_header_map`]). One call instead of one per header matters:
/// each hostcall costs about 1.4 µs in Envoy's V8.
pub fn header_map(map: MapType) -> Result<Vec<u8>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as in `header`.
    match unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) } {
        Status::Ok => Ok(unsafe { owned(data, size) }),
        Status::NotFound => Ok(Vec::new()),
        other => Err(other),
    }
}

/// Replace the whole header map in one call.
pub fn set_header_map(map: MapType, serialized: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers valid for the call.
    ok(unsafe { proxy_set_header_map_pairs(map, serialized.as_ptr(), serialized.len()) })
}

/// Set (replace) a header.
pub fn set_header(map: MapType, key: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers valid for the call.
    ok(unsafe {
        proxy_replace_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len())
    })
}

/// Remove a header.
pub fn remove_header(map: MapType, key: &str) -> Result<(), Status> {
    // SAFETY: pointers valid for the call.
    ok(unsafe { proxy_remove_header_map_value(map, key.as_ptr(), key.len()) })
}

/// Bytes `start..start+max` of a body buffer.
pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Vec<u8>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as in `header`.
    match unsafe { proxy_get_buffer_bytes(kind, start, max, &mut data, &mut size) } {
        Status::Ok => Ok(unsafe { owned(data, size) }),
        Status::NotFound => Ok(Vec::new()),
        other => Err(other),
    }
}

/// Replace bytes `start..start+size` of a body buffer with `value`.
pub fn set_buffer(kind: BufferType, start: usize, size: usize, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers valid for the call.
    ok(unsafe { proxy_set_buffer_bytes(kind, start, size, value.as_ptr(), value.len()) })
}

fn property_path(path: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for p in path {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out.pop();
    out
}

/// A host property's raw bytes (`Ok(None)` when the host has none).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let p = property_path(path);
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as in `header`.
    match unsafe { proxy_get_property(p.as_ptr(), p.len(), &mut data, &mut size) } {
        Status::Ok => Ok(Some(unsafe { owned(data, size) })),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Store a property (Envoy: filter state `wasm.<path>`).
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    let p = property_path(path);
    // SAFETY: pointers valid for the call.
    ok(unsafe { proxy_set_property(p.as_ptr(), p.len(), value.as_ptr(), value.len()) })
}

/// Answer the request locally.
pub fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status> {
    let map = crate::host::serialize_header_map(headers);
    let details = "tollgate";
    // SAFETY: pointers valid for the call.
    ok(unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Define (or look up) a metric by name.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: pointers valid for the call.
    ok(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Add to a counter.
pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: plain values.
    ok(unsafe { proxy_increment_metric(id, by) })
}

/// A shared-data entry (process-wide per vm_id) and its CAS version;
/// `Ok(None)` when the key does not exist.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0u32;
    // SAFETY: pointers valid for the call; the host allocates the value with
    // `proxy_on_memory_allocate`, which `owned` takes over.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }
    {
        Status::Ok => Ok(Some((unsafe { owned(data, size) }, cas))),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Write a shared-data entry if it is still at version `cas` (0: unconditionally).
/// `Err(Status::CasMismatch)` means someone wrote it since it was read.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers valid for the call.
    ok(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            if value.is_empty() {
                null()
            } else {
                value.as_ptr()
            },
            value.len(),
            cas,
        )
    })
}

/// Host wall-clock time in nanoseconds, for start-up timing logs.
pub fn now_nanos() -> Option<u64> {
    let mut t = 0u64;
    // SAFETY: pointer valid for the call.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        Status::Ok => Some(t),
        _ => None,
    }
}

/// The host's current log level for this plugin, so debug-only work (building the
/// per-request JSON line) is skipped unless someone is listening. Envoy changes it
/// at runtime via `/logging?wasm=debug`, so it is asked per request (one cheap call).
pub fn debug_enabled() -> bool {
    let mut level = LogLevel::Info as u32;
    // SAFETY: pointer valid for the call.
    match unsafe { proxy_get_log_level(&mut level) } {
        Status::Ok => level <= LogLevel::Debug as u32,
        _ => false,
    }
}
