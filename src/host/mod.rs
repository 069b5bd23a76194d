//! What tollgate needs to know about the gateway it runs in, as plain data and
//! pure functions: which host this is, how its properties are encoded, and the
//! wire encoding of header maps. The adapter does the calls; this is the part
//! that can be unit-tested natively.

mod header_list;

pub use header_list::HeaderList;

/// The proxy-wasm host, detected at start-up from the properties it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// Envoy: route name at `xds.route_name`; integer properties are 8-byte little-endian.
    Envoy,
    /// Kong (ngx_wasm_module): route name at `kong.route_name`; every property is text.
    Kong,
    /// Neither answered; route-specific settings fall back to defaults.
    Unknown,
}

impl HostKind {
    /// Whether `Action::Pause` in `on_http_request_headers` waits for the body.
    /// Envoy (with `allow_on_headers_stop_iteration`) holds the headers and still
    /// delivers the body. ngx_wasm_module only resumes a paused request on an
    /// HTTP-call answer or `proxy_continue_request` (its t/03-proxy_wasm
    /// "on_request_headers -> Pause" case times out), but it reads the whole body
    /// before `on_request_body` anyway and request headers stay writable until
    /// then, so on Kong tollgate continues instead of pausing.
    pub fn pause_request_headers(self) -> bool {
        self != HostKind::Kong
    }

    /// Whether the host can hold response headers and buffer a response body.
    /// ngx_wasm_module cannot pause in response phases (`proxy_continue_response`
    /// is NYI: "cannot pause in header_filter phase", a 500), so on Kong responses
    /// are only ever copied or streamed, never held.
    pub fn can_hold_responses(self) -> bool {
        self != HostKind::Kong
    }

    /// Whether `proxy_get_log_level` may be called: ngx_wasm_module binds it to
    /// its NYI stub, which traps the filter.
    pub fn has_log_level(self) -> bool {
        self != HostKind::Kong
    }

    /// Whether `set_property` stores filter state others can read. Envoy keeps it
    /// as `wasm.<key>` for access logs; ngx_wasm_module only accepts `wasmx.*`
    /// (visible to the filter alone) and immutable `ngx.*` writes trap.
    pub fn has_filter_state(self) -> bool {
        self != HostKind::Kong
    }

    /// Whether `proxy_call_foreign_function` may be called (Envoy's
    /// `clear_route_cache`, `set_envoy_filter_state`): ngx_wasm_module binds it
    /// to its NYI stub, which traps.
    pub fn has_foreign_functions(self) -> bool {
        self != HostKind::Kong
    }

    /// `end_of_stream` for the request-headers callback. Kong always says false
    /// (ngx_http_proxy_wasm.c passes `0 // TODO: eof`), so a declared
    /// `content-length: 0` is the only sign there is no body; a body-less request
    /// that is not caught here still passes, because Kong never pauses on it.
    pub fn request_end_of_stream(self, end_of_stream: bool, content_length: Option<u64>) -> bool {
        match self {
            HostKind::Kong => end_of_stream || content_length == Some(0),
            _ => end_of_stream,
        }
    }
}

/// A property only Kong answers (an nginx variable every request has), read
/// once per VM to tell the hosts apart. Envoy answers `NotFound`.
pub const KONG_PROBE: &[&str] = &["ngx", "request_method"];

/// Where each host keeps the route name, in lookup order.
pub const ROUTE_NAME_PROPERTIES: [(HostKind, &[&str]); 3] = [
    (HostKind::Envoy, &["xds", "route_name"]),
    (HostKind::Kong, &["kong", "route_name"]),
    (HostKind::Kong, &["kong", "service_name"]),
];

/// A property value as text: Envoy returns strings raw, Kong returns text; empty
/// or non-UTF-8 values count as absent.
pub fn property_text(raw: Option<Vec<u8>>) -> Option<String> {
    let v = raw?;
    if v.is_empty() {
        return None;
    }
    String::from_utf8(v).ok()
}

/// A property value as an integer: Envoy encodes integers as 8-byte little-endian,
/// Kong as decimal text.
pub fn property_u64(raw: &[u8]) -> Option<u64> {
    if let Ok(bytes) = <[u8; 8]>::try_from(raw) {
        // Eight ASCII digits are also 8 bytes: prefer the text reading when it parses.
        if let Some(n) = std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()) {
            return Some(n);
        }
        return Some(u64::from_le_bytes(bytes));
    }
    std::str::from_utf8(raw).ok()?.trim().parse().ok()
}

/// proxy-wasm's header-map wire format: count, then (key len, value len) pairs,
/// then NUL-terminated keys and values.
pub fn serialize_header_map(map: &[(&str, &str)]) -> Vec<u8> {
    let bytes: Vec<(&[u8], &[u8])> = map
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    serialize_header_map_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_decode_from_both_hosts() {
        assert_eq!(property_u64(&200u64.to_le_bytes()), Some(200));
        assert_eq!(property_u64(b"200"), Some(200));
        assert_eq!(property_u64(b"12345678"), Some(12_345_678));
        assert_eq!(property_u64(b"x"), None);
    }

    #[test]
    fn kong_never_pauses_and_reads_eos_from_the_length() {
        assert!(!HostKind::Kong.pause_request_headers());
        assert!(!HostKind::Kong.can_hold_responses());
        assert!(HostKind::Envoy.pause_request_headers() && HostKind::Envoy.can_hold_responses());
        assert!(HostKind::Kong.request_end_of_stream(false, Some(0)));
        assert!(!HostKind::Kong.request_end_of_stream(false, Some(12)));
        assert!(!HostKind::Kong.request_end_of_stream(false, None));
        assert!(!HostKind::Envoy.request_end_of_stream(false, Some(0)));
    }

    #[test]
    fn header_map_layout() {
        let m = serialize_header_map(&[("a", "bc")]);
        assert_eq!(
            m,
            [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]
        );
        assert_eq!(property_text(Some(b"chat".to_vec())), Some("chat".into()));
        assert_eq!(property_text(Some(vec![0xff])), None);
        assert_eq!(property_text(Some(vec![])), None);
    }
}

/// A header map as the host serialises it (the layout of [`serialize_header_map`]),
/// read without copying. Malformed input yields the pairs read so far, never a panic.
pub fn parse_header_map(bytes: &[u8]) -> Vec<(&[u8], &[u8])> {
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let Some(count) = u32_at(0) else {
        return Vec::new();
    };
    let count = count.min(bytes.len() / 8);
    let mut out = Vec::with_capacity(count);
    let mut data = 4 + count * 8;
    for i in 0..count {
        let (Some(klen), Some(vlen)) = (u32_at(4 + i * 8), u32_at(8 + i * 8)) else {
            break;
        };
        let Some(key) = bytes.get(data..data + klen) else {
            break;
        };
        data += klen + 1;
        let Some(value) = bytes.get(data..data + vlen) else {
            break;
        };
        data += vlen + 1;
        out.push((key, value));
    }
    out
}

/// The value of header `name` (lower-case, as hosts store them) in a parsed map.
pub fn find_header<'a>(map: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| *v)
}

/// [`serialize_header_map`] for byte values (headers read back from the host may
/// hold any bytes).
pub fn serialize_header_map_bytes(map: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// A host header map (as [`parse_header_map`] reads it) with `ours` set on it and
/// the `drop` headers removed, serialised for one `set_header_map` call: on hosts
/// whose per-header calls do not handle pseudo-headers, one write of the whole map.
pub fn merge_header_map(base: &[(&[u8], &[u8])], ours: &[(&str, &str)], drop: &[&str]) -> Vec<u8> {
    // Ours take the place of the first header of the same name (so `:status` stays
    // first, where hosts expect pseudo-headers), later ones are dropped, and the
    // rest of ours go at the end.
    let ours_index = |k: &[u8]| {
        ours.iter()
            .position(|(o, _)| k.eq_ignore_ascii_case(o.as_bytes()))
    };
    let mut placed = vec![false; ours.len()];
    let mut map: Vec<(&[u8], &[u8])> = Vec::with_capacity(base.len() + ours.len());
    for &(k, v) in base {
        if drop.iter().any(|d| k.eq_ignore_ascii_case(d.as_bytes())) {
            continue;
        }
        match ours_index(k) {
            None => map.push((k, v)),
            Some(i) => {
                if let (Some(p), Some((ok, ov))) = (placed.get_mut(i), ours.get(i)) {
                    if !*p {
                        *p = true;
                        map.push((ok.as_bytes(), ov.as_bytes()));
                    }
                }
            }
        }
    }
    for ((k, v), p) in ours.iter().zip(&placed) {
        if !p {
            map.push((k.as_bytes(), v.as_bytes()));
        }
    }
    serialize_header_map_bytes(&map)
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_and_survive_garbage() {
        let m = serialize_header_map(&[(":status", "200"), ("content-type", "application/json")]);
        let parsed = parse_header_map(&m);
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            find_header(&parsed, "Content-Type"),
            Some(&b"application/json"[..])
        );
        assert_eq!(serialize_header_map_bytes(&parsed), m);
        for cut in 0..m.len() {
            let p = parse_header_map(&m[..cut]);
            assert!(p.len() <= 2);
        }
        assert!(parse_header_map(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }

    #[test]
    fn merged_maps_replace_ours_and_drop_the_named() {
        let base = serialize_header_map(&[
            (":status", "200"),
            ("X-LLM-Model", "old"),
            ("content-length", "9"),
        ]);
        let ours = [("x-llm-model", "gpt-4o"), ("x-llm-total-tokens", "3")];
        let merged = merge_header_map(&parse_header_map(&base), &ours, &["content-length"]);
        assert_eq!(
            merged,
            serialize_header_map(&[
                (":status", "200"),
                ("x-llm-model", "gpt-4o"),
                ("x-llm-total-tokens", "3")
            ])
        );
        let kept = merge_header_map(&parse_header_map(&base), &[], &[]);
        assert_eq!(kept, base);
        // A new status takes the old one's place (first), and a repeated header
        // replaced by ours appears once.
        let base = serialize_header_map(&[
            (":status", "200"),
            ("set-cookie", "a"),
            ("server", "x"),
            ("Set-Cookie", "b"),
        ]);
        let ours = [
            ("content-type", "application/json"),
            (":status", "502"),
            ("set-cookie", "c"),
        ];
        let merged = merge_header_map(&parse_header_map(&base), &ours, &[]);
        assert_eq!(
            merged,
            serialize_header_map(&[
                (":status", "502"),
                ("set-cookie", "c"),
                ("server", "x"),
                ("content-type", "application/json")
            ])
        );
    }
}
