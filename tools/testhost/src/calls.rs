//! The host functions, one dispatcher over every import of the module.

use wasmtime::{Caller, Extern, Val};

use crate::abi::{self, buffer, map, status, Kong};
use crate::{HeaderMap, HttpCall, Mode, Phase, State};

type R = wasmtime::Result<i32>;

fn trap(msg: String) -> wasmtime::Error {
    wasmtime::Error::msg(msg)
}

fn i(args: &[Val], k: usize) -> i32 {
    args.get(k).and_then(Val::i32).unwrap_or(0)
}

fn u(args: &[Val], k: usize) -> usize {
    i(args, k) as u32 as usize
}

fn read(c: &mut Caller<'_, State>, ptr: usize, len: usize) -> wasmtime::Result<Vec<u8>> {
    let mem = c
        .data()
        .memory
        .ok_or_else(|| trap("no memory export".into()))?;
    let data = mem.data(&*c);
    data.get(ptr..ptr.saturating_add(len))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| trap(format!("out-of-bounds read {ptr}+{len}")))
}

fn write(c: &mut Caller<'_, State>, ptr: usize, bytes: &[u8]) -> wasmtime::Result<()> {
    let mem = c
        .data()
        .memory
        .ok_or_else(|| trap("no memory export".into()))?;
    mem.write(&mut *c, ptr, bytes)
        .map_err(|e| trap(format!("out-of-bounds write at {ptr}: {e}")))
}

fn write_u32(c: &mut Caller<'_, State>, ptr: usize, v: u32) -> wasmtime::Result<()> {
    write(c, ptr, &v.to_le_bytes())
}

/// Hand `data` to the filter: memory from `proxy_on_memory_allocate`, pointer and
/// size written to the two return slots.
fn give(
    c: &mut Caller<'_, State>,
    data: &[u8],
    ret_ptr: usize,
    ret_size: usize,
) -> wasmtime::Result<()> {
    if data.is_empty() {
        write_u32(c, ret_ptr, 0)?;
        return write_u32(c, ret_size, 0);
    }
    let alloc = c
        .get_export("proxy_on_memory_allocate")
        .and_then(Extern::into_func)
        .ok_or_else(|| trap("no proxy_on_memory_allocate".into()))?
        .typed::<i32, i32>(&*c)?;
    let p = alloc.call(&mut *c, data.len() as i32)? as u32 as usize;
    write(c, p, data)?;
    write_u32(c, ret_ptr, p as u32)?;
    write_u32(c, ret_size, data.len() as u32)
}

fn serialize(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = (map.len() as u32).to_le_bytes().to_vec();
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn deserialize(b: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let n = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    let mut sizes = Vec::with_capacity(n);
    for k in 0..n {
        let at = 4 + k * 8;
        let kl = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        let vl = u32::from_le_bytes(b.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((kl, vl));
    }
    let mut p = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in sizes {
        let k = String::from_utf8(b.get(p..p + kl)?.to_vec()).ok()?;
        p += kl + 1;
        let v = b.get(p..p + vl)?.to_vec();
        p += vl + 1;
        out.push((k, v));
    }
    Some(out)
}

/// Which header map a call addresses, if it is readable in this phase.
fn headers(d: &mut State, kind: i32) -> Option<(&mut HeaderMap, bool)> {
    match kind {
        map::HTTP_REQUEST_HEADERS if !matches!(d.phase, Phase::Root | Phase::Tick) => {
            Some((&mut d.stream.req_headers, d.stream.req_headers_frozen))
        }
        map::HTTP_RESPONSE_HEADERS
            if matches!(
                d.phase,
                Phase::ResponseHeaders | Phase::ResponseBody | Phase::Log
            ) =>
        {
            Some((&mut d.stream.resp_headers, d.stream.resp_headers_frozen))
        }
        // Only while an answer is being delivered; read-only.
        map::HTTP_CALL_RESPONSE_HEADERS => d.answering.as_mut().map(|(h, _)| (h, true)),
        _ => None,
    }
}

fn header_write(
    c: &mut Caller<'_, State>,
    kind: i32,
    f: impl FnOnce(&mut Vec<(String, Vec<u8>)>),
) -> R {
    let d = c.data_mut();
    let mode = d.mode;
    let phase = d.phase;
    let Some((map, frozen)) = headers(d, kind) else {
        return Ok(status::BAD_ARGUMENT);
    };
    if frozen {
        // Envoy (measured): status 2 once headers went on. Kong: headers already sent.
        let what = if kind == map::HTTP_REQUEST_HEADERS {
            "request"
        } else {
            "response"
        };
        d.logs.push((
            4,
            format!("{mode:?}: cannot modify {what} headers in {phase:?}: already sent"),
        ));
        return Ok(status::BAD_ARGUMENT);
    }
    f(map);
    Ok(status::OK)
}

/// A property as this host answers it.
fn property(d: &State, path: &str) -> Option<Vec<u8>> {
    let s = &d.stream;
    let in_request = !matches!(d.phase, Phase::Root | Phase::Tick);
    let header = |name: &str| {
        s.req_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if path == "plugin_name" {
        return Some(d.filter.clone().into_bytes());
    }
    if let Some(v) = d.properties.get(path) {
        return Some(v.clone());
    }
    if !in_request {
        return None;
    }
    match (d.mode, path) {
        (Mode::Envoy, "xds.route_name") => s.route.route.clone().map(String::into_bytes),
        (Mode::Kong, "kong.route_name") => s.route.route.clone().map(String::into_bytes),
        (Mode::Kong, "kong.service_name") => s.route.service.clone().map(String::into_bytes),
        (Mode::Kong, "kong.route_id") => s
            .route
            .route
            .as_ref()
            .map(|_| b"5f3c1a2e-0000-4000-8000-000000000001".to_vec()),
        (Mode::Kong, "ngx.request_method") | (_, "request.method") => header(":method"),
        (Mode::Kong, "ngx.request_uri") | (_, "request.path") => header(":path"),
        (_, "request.host") => header(":authority"),
        (Mode::Envoy, "response.code") if s.status != 0 => {
            Some(u64::from(s.status).to_le_bytes().to_vec())
        }
        // ngx_wasm_module: "All properties' values are strings."
        (Mode::Kong, "response.code") if s.status != 0 => Some(s.status.to_string().into_bytes()),
        (_, p) if p.starts_with("request.headers.") => header(&p["request.headers.".len()..]),
        _ => None,
    }
}

pub(crate) fn dispatch(mut c: Caller<'_, State>, module: &str, name: &str, a: &[Val]) -> R {
    let mode = c.data().mode;
    if module == "wasi_snapshot_preview1" {
        return wasi(&mut c, name, a);
    }
    if mode == Mode::Kong && abi::kong_status(name) == Some(Kong::Trap) {
        // ngx_proxy_wasm_hfuncs_nop → NGX_WAVM_NYI → instance trap, request 500.
        return Err(trap(format!(
            "Kong: host trap (function not yet implemented): {name}"
        )));
    }
    let phase = c.data().phase;
    if !matches!(phase, Phase::Root | Phase::Tick) {
        let record = match c.get_fuel() {
            // Fuel counting: the wasm operators run since the last hostcall (or
            // the callback's start), e.g. `RequestBody:[+5120]:proxy_get_buffer_bytes`.
            Ok(left) if crate::fuel_counting() => {
                let ran = c.data().fuel_mark.saturating_sub(left);
                c.data_mut().fuel_mark = left;
                format!("{phase:?}:[+{ran}]:{name}")
            }
            _ => format!("{phase:?}:{name}"),
        };
        c.data_mut().hostcalls.push(record);
    }
    match name {
        "proxy_log" => {
            let msg = read(&mut c, u(a, 1), u(a, 2))?;
            c.data_mut()
                .logs
                .push((i(a, 0), String::from_utf8_lossy(&msg).into_owned()));
            Ok(status::OK)
        }
        "proxy_get_log_level" => {
            let level = c.data().log_level as u32;
            write_u32(&mut c, u(a, 0), level)?;
            Ok(status::OK)
        }
        "proxy_get_current_time_nanoseconds" => {
            let now = c.data().now_ns;
            write(&mut c, u(a, 0), &now.to_le_bytes())?;
            Ok(status::OK)
        }
        "proxy_set_effective_context" | "proxy_done" | "proxy_close_stream" => Ok(status::OK),
        "proxy_set_tick_period_milliseconds" => {
            if mode == Mode::Kong && !matches!(phase, Phase::Root | Phase::Tick) {
                return Err(trap(
                    "Kong: can only set tick_period in root context".into(),
                ));
            }
            c.data_mut().tick_ms = i(a, 0) as u32;
            Ok(status::OK)
        }
        "proxy_continue_stream" => {
            if mode == Mode::Kong && i(a, 0) == 1 {
                c.data_mut().violations.push("Kong: proxy_continue_stream(response): yielding not supported in response phases".into());
                return Ok(status::BAD_ARGUMENT);
            }
            if i(a, 0) == 0 {
                c.data_mut().request_resumed = true;
            }
            Ok(status::OK)
        }
        "proxy_get_buffer_bytes" => {
            let (kind, start, max) = (i(a, 0), u(a, 1), u(a, 2));
            let d = c.data();
            let whole: Vec<u8> = match kind {
                buffer::PLUGIN_CONFIGURATION => d.config.clone(),
                buffer::VM_CONFIGURATION => Vec::new(),
                buffer::HTTP_REQUEST_BODY => {
                    if mode == Mode::Kong {
                        if !matches!(
                            phase,
                            Phase::RequestHeaders | Phase::RequestBody | Phase::Log
                        ) {
                            return Err(trap(
                                "Kong: can only get request body during on_request_body, on_log"
                                    .into(),
                            ));
                        }
                        if d.stream.req_body.len() > d.client_body_buffer {
                            // Spilled to a temp file: "cannot read request body buffered to file".
                            c.data_mut().logs.push((
                                4,
                                "Kong: cannot read request body buffered to file".into(),
                            ));
                            return Ok(status::NOT_FOUND);
                        }
                    }
                    d.stream.req_body.clone()
                }
                buffer::HTTP_RESPONSE_BODY => {
                    if mode == Mode::Kong && phase != Phase::ResponseBody {
                        return Err(trap(
                            "Kong: can only get response body during on_response_body".into(),
                        ));
                    }
                    d.stream.resp_body.clone()
                }
                buffer::HTTP_CALL_RESPONSE_BODY => match &d.answering {
                    Some((_, body)) => body.clone(),
                    None => return Ok(status::NOT_FOUND),
                },
                _ => return Ok(status::NOT_FOUND),
            };
            let end = start.saturating_add(max).min(whole.len());
            let slice = whole.get(start.min(end)..end).unwrap_or_default().to_vec();
            give(&mut c, &slice, u(a, 3), u(a, 4))?;
            Ok(status::OK)
        }
        "proxy_set_buffer_bytes" => {
            let (kind, start, size) = (i(a, 0), u(a, 1), u(a, 2));
            let data = read(&mut c, u(a, 3), u(a, 4))?;
            let d = c.data_mut();
            let buf = match kind {
                buffer::HTTP_REQUEST_BODY => {
                    if mode == Mode::Kong
                        && !matches!(phase, Phase::RequestHeaders | Phase::RequestBody)
                    {
                        return Err(trap(
                            "Kong: can only set request body during on_request_body".into(),
                        ));
                    }
                    &mut d.stream.req_body
                }
                buffer::HTTP_RESPONSE_BODY => {
                    if mode == Mode::Kong && phase != Phase::ResponseBody {
                        return Err(trap(
                            "Kong: can only set response body during on_response_body".into(),
                        ));
                    }
                    &mut d.stream.resp_body
                }
                _ => return Ok(status::BAD_ARGUMENT),
            };
            let from = start.min(buf.len());
            let to = start.saturating_add(size).min(buf.len());
            buf.splice(from..to, data);
            Ok(status::OK)
        }
        "proxy_get_header_map_pairs" => {
            let d = c.data_mut();
            let Some((m, _)) = headers(d, i(a, 0)) else {
                return Ok(status::NOT_FOUND);
            };
            let bytes = serialize(m);
            give(&mut c, &bytes, u(a, 1), u(a, 2))?;
            Ok(status::OK)
        }
        "proxy_get_header_map_value" => {
            let key =
                String::from_utf8_lossy(&read(&mut c, u(a, 1), u(a, 2))?).to_ascii_lowercase();
            let d = c.data_mut();
            let v = headers(d, i(a, 0))
                .and_then(|(m, _)| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
            match v {
                Some(v) => {
                    give(&mut c, &v, u(a, 3), u(a, 4))?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        }
        "proxy_set_header_map_pairs" => {
            let bytes = read(&mut c, u(a, 1), u(a, 2))?;
            let Some(new) = deserialize(&bytes) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let new: Vec<_> = new
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            header_write(&mut c, i(a, 0), move |m| {
                // Pseudo-headers the filter did not include are kept (hosts never drop them).
                let pseudo: Vec<_> = m
                    .iter()
                    .filter(|(k, _)| k.starts_with(':') && !new.iter().any(|(n, _)| n == k))
                    .cloned()
                    .collect();
                *m = pseudo.into_iter().chain(new).collect();
            })
        }
        "proxy_replace_header_map_value" | "proxy_add_header_map_value" => {
            let key =
                String::from_utf8_lossy(&read(&mut c, u(a, 1), u(a, 2))?).to_ascii_lowercase();
            let value = read(&mut c, u(a, 3), u(a, 4))?;
            let replace = name == "proxy_replace_header_map_value";
            header_write(&mut c, i(a, 0), move |m| {
                if replace {
                    m.retain(|(k, _)| *k != key);
                }
                m.push((key, value));
            })
        }
        "proxy_remove_header_map_value" => {
            let key =
                String::from_utf8_lossy(&read(&mut c, u(a, 1), u(a, 2))?).to_ascii_lowercase();
            header_write(&mut c, i(a, 0), move |m| m.retain(|(k, _)| *k != key))
        }
        "proxy_get_property" => {
            let raw = read(&mut c, u(a, 0), u(a, 1))?;
            let path: String = raw
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(".");
            match property(c.data(), &path) {
                Some(v) => {
                    give(&mut c, &v, u(a, 2), u(a, 3))?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        }
        "proxy_set_property" => {
            let raw = read(&mut c, u(a, 0), u(a, 1))?;
            let path: String = raw
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(".");
            let value = read(&mut c, u(a, 2), u(a, 3))?;
            let d = c.data_mut();
            match mode {
                // Envoy: filter state `wasm.<path>`.
                Mode::Envoy => {
                    d.properties.insert(path, value);
                    Ok(status::OK)
                }
                // Kong: `wasmx.*` host properties are writable; immutable ngx vars trap.
                Mode::Kong if path.starts_with("wasmx.") => {
                    d.properties.insert(path, value);
                    Ok(status::OK)
                }
                Mode::Kong if path.starts_with("ngx.") => {
                    Err(trap(format!("Kong: cannot set immutable property {path}")))
                }
                Mode::Kong => Ok(status::NOT_FOUND),
            }
        }
        "proxy_send_local_response" => {
            let code = i(a, 0) as u32;
            let body = read(&mut c, u(a, 3), u(a, 4))?;
            let hdrs = read(&mut c, u(a, 5), u(a, 6))?;
            let hdrs = deserialize(&hdrs).unwrap_or_default();
            let d = c.data_mut();
            if d.stream.resp_headers_frozen {
                d.violations.push(format!(
                    "{mode:?}: send_local_response({code}) after response headers were sent"
                ));
                return Ok(status::BAD_ARGUMENT);
            }
            d.stream.local = Some((code, hdrs, body));
            Ok(status::OK)
        }
        "proxy_http_call" => {
            let upstream = String::from_utf8_lossy(&read(&mut c, u(a, 0), u(a, 1))?).into_owned();
            let headers = deserialize(&read(&mut c, u(a, 2), u(a, 3))?).unwrap_or_default();
            let body = read(&mut c, u(a, 4), u(a, 5))?;
            let timeout_ms = i(a, 8) as u32;
            let d = c.data_mut();
            // ngx_proxy_wasm_host.c: "can only send HTTP dispatch during
            // "on_request_headers", "on_request_body", "on_dispatch_response", "on_tick""
            // (answers are delivered in the RequestBody phase here).
            if mode == Mode::Kong
                && !matches!(
                    phase,
                    Phase::RequestHeaders | Phase::RequestBody | Phase::Tick
                )
            {
                d.violations.push(format!("Kong: dispatch_http_call to {upstream} in {phase:?} (only request headers/body, a call's answer and on_tick)"));
                return Ok(status::BAD_ARGUMENT);
            }
            if mode == Mode::Kong && !upstream.contains(':') {
                // ngx_wasm_module takes host:port, not an Envoy cluster name.
                d.violations.push(format!(
                    "Kong: dispatch_http_call to {upstream:?}: expected host:port"
                ));
                return Ok(status::BAD_ARGUMENT);
            }
            d.calls.push(format!("http {upstream}"));
            d.last_token += 1;
            let token = d.last_token;
            d.http_calls.push(HttpCall {
                upstream,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
                body,
                timeout_ms,
                token,
                phase: format!("{phase:?}"),
            });
            write_u32(&mut c, u(a, 9), token)?;
            Ok(status::OK)
        }
        "proxy_grpc_call" | "proxy_grpc_stream" => {
            let upstream = String::from_utf8_lossy(&read(&mut c, u(a, 0), u(a, 1))?).into_owned();
            let service = String::from_utf8_lossy(&read(&mut c, u(a, 2), u(a, 3))?).into_owned();
            let d = c.data_mut();
            d.calls.push(format!("grpc {upstream} {service}"));
            d.last_token += 1;
            let token = d.last_token;
            let slot = if name == "proxy_grpc_call" { 11 } else { 8 };
            write_u32(&mut c, u(a, slot), token)?;
            Ok(status::OK)
        }
        "proxy_grpc_send" | "proxy_grpc_cancel" | "proxy_grpc_close" => Ok(status::OK),
        "proxy_get_status" => {
            write_u32(&mut c, u(a, 0), 0)?;
            give(&mut c, &[], u(a, 1), u(a, 2))?;
            Ok(status::OK)
        }
        "proxy_get_shared_data" => {
            let key = String::from_utf8_lossy(&read(&mut c, u(a, 0), u(a, 1))?).into_owned();
            let found = c
                .data()
                .shared
                .data
                .lock()
                .ok()
                .and_then(|m| m.get(&key).cloned());
            match found {
                Some((v, cas)) => {
                    give(&mut c, &v, u(a, 2), u(a, 3))?;
                    write_u32(&mut c, u(a, 4), cas)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        }
        "proxy_set_shared_data" => {
            let key = String::from_utf8_lossy(&read(&mut c, u(a, 0), u(a, 1))?).into_owned();
            let value = read(&mut c, u(a, 2), u(a, 3))?;
            let cas = i(a, 4) as u32;
            let shared = c.data().shared.clone();
            let Ok(mut m) = shared.data.lock() else {
                return Ok(status::INTERNAL_FAILURE);
            };
            let next = match m.get(&key) {
                Some((_, cur)) if cas != 0 && cas != *cur => return Ok(status::CAS_MISMATCH),
                Some((_, cur)) => cur.wrapping_add(1).max(1),
                None => 1,
            };
            m.insert(key, (value, next));
            Ok(status::OK)
        }
        "proxy_register_shared_queue" | "proxy_resolve_shared_queue" => {
            let (np, nl, ret) = if name == "proxy_register_shared_queue" {
                (0, 1, 2)
            } else {
                (2, 3, 4)
            };
            let qname = String::from_utf8_lossy(&read(&mut c, u(a, np), u(a, nl))?).into_owned();
            let shared = c.data().shared.clone();
            let Ok(mut q) = shared.queues.lock() else {
                return Ok(status::INTERNAL_FAILURE);
            };
            let id = match q.iter().position(|(n, _)| *n == qname) {
                Some(p) => p + 1,
                None if name == "proxy_register_shared_queue" => {
                    q.push((qname.clone(), Vec::new()));
                    q.len()
                }
                None => return Ok(status::NOT_FOUND),
            };
            drop(q);
            c.data_mut().queue_ids.insert(qname, id as u32);
            write_u32(&mut c, u(a, ret), id as u32)?;
            Ok(status::OK)
        }
        "proxy_enqueue_shared_queue" => {
            let item = read(&mut c, u(a, 1), u(a, 2))?;
            let shared = c.data().shared.clone();
            let Ok(mut q) = shared.queues.lock() else {
                return Ok(status::INTERNAL_FAILURE);
            };
            match q.get_mut(u(a, 0).wrapping_sub(1)) {
                Some((_, items)) => {
                    items.push(item);
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        }
        "proxy_dequeue_shared_queue" => {
            let shared = c.data().shared.clone();
            let item = {
                let Ok(mut q) = shared.queues.lock() else {
                    return Ok(status::INTERNAL_FAILURE);
                };
                match q.get_mut(u(a, 0).wrapping_sub(1)) {
                    Some((_, items)) if !items.is_empty() => Some(items.remove(0)),
                    Some(_) => return Ok(status::EMPTY),
                    None => return Ok(status::NOT_FOUND),
                }
            };
            give(&mut c, &item.unwrap_or_default(), u(a, 1), u(a, 2))?;
            Ok(status::OK)
        }
        "proxy_define_metric" => {
            let mname = String::from_utf8_lossy(&read(&mut c, u(a, 1), u(a, 2))?).into_owned();
            let d = c.data_mut();
            let full = format!("{}{mname}", mode.metric_prefix(&d.filter));
            let id = match d.metric_names.iter().position(|n| *n == full) {
                Some(p) => p,
                None => {
                    d.metric_names.push(full.clone());
                    d.metric_names.len() - 1
                }
            };
            if let Ok(mut m) = d.shared.metrics.lock() {
                m.entry(full).or_insert(0);
            }
            write_u32(&mut c, u(a, 3), id as u32)?;
            Ok(status::OK)
        }
        "proxy_increment_metric" | "proxy_record_metric" => {
            let by = a.get(1).and_then(Val::i64).unwrap_or(0);
            let d = c.data();
            let Some(full) = d.metric_names.get(u(a, 0)).cloned() else {
                return Ok(status::NOT_FOUND);
            };
            if let Ok(mut m) = d.shared.metrics.lock() {
                let v = m.entry(full).or_insert(0);
                if name == "proxy_increment_metric" {
                    *v += by;
                } else {
                    *v = by;
                }
            }
            Ok(status::OK)
        }
        "proxy_get_metric" => {
            let d = c.data();
            let v = d
                .metric_names
                .get(u(a, 0))
                .and_then(|n| d.shared.metrics.lock().ok().and_then(|m| m.get(n).copied()));
            match v {
                Some(v) => {
                    write(&mut c, u(a, 1), &v.to_le_bytes())?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        }
        "proxy_call_foreign_function" => {
            let fname = String::from_utf8_lossy(&read(&mut c, u(a, 0), u(a, 1))?).into_owned();
            let args = read(&mut c, u(a, 2), u(a, 3))?;
            if fname == "set_envoy_filter_state" {
                c.data_mut()
                    .properties
                    .insert("foreign.set_envoy_filter_state".into(), args);
                give(&mut c, &[], u(a, 4), u(a, 5))?;
                return Ok(status::OK);
            }
            Ok(status::NOT_FOUND)
        }
        other => Err(trap(format!("{mode:?}: unknown import env.{other}"))),
    }
}

fn wasi(c: &mut Caller<'_, State>, name: &str, a: &[Val]) -> R {
    const ERRNO_SUCCESS: i32 = 0;
    const ERRNO_NOSYS: i32 = 52;
    match name {
        "random_get" => {
            // Deterministic bytes are enough for HashMap seeds in tests.
            let len = u(a, 1);
            let bytes: Vec<u8> = (0..len)
                .map(|k| (k as u8).wrapping_mul(31).wrapping_add(7))
                .collect();
            write(c, u(a, 0), &bytes)?;
            Ok(ERRNO_SUCCESS)
        }
        "environ_sizes_get" | "args_sizes_get" => {
            write_u32(c, u(a, 0), 0)?;
            write_u32(c, u(a, 1), 0)?;
            Ok(ERRNO_SUCCESS)
        }
        "environ_get" | "args_get" | "sched_yield" => Ok(ERRNO_SUCCESS),
        "clock_time_get" => {
            let now = c.data().now_ns;
            write(c, u(a, 2), &now.to_le_bytes())?;
            Ok(ERRNO_SUCCESS)
        }
        "fd_write" => {
            let (iovs, n) = (u(a, 1), u(a, 2));
            let mut text = Vec::new();
            let mut total = 0u32;
            for k in 0..n {
                let iov = read(c, iovs + k * 8, 8)?;
                let p = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]) as usize;
                let l = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
                text.extend(read(c, p, l)?);
                total += l as u32;
            }
            c.data_mut().logs.push((
                5,
                format!("fd {}: {}", i(a, 0), String::from_utf8_lossy(&text)),
            ));
            write_u32(c, u(a, 3), total)?;
            Ok(ERRNO_SUCCESS)
        }
        "proc_exit" => Err(trap(format!("proc_exit({})", i(a, 0)))),
        _ => Ok(ERRNO_NOSYS),
    }
}
