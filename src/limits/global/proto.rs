//! Hand-written protobuf for the few messages tollgate exchanges with a rate-limit
//! service, so the filter needs no protobuf crate (filter dependencies are fixed):
//!
//! * `envoy.service.ratelimit.v3.RateLimitRequest` (encode) and `RateLimitResponse`
//!   (decode), for `RateLimitService/ShouldRateLimit`;
//! * `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments` (encode), the
//!   argument of Envoy's `set_envoy_filter_state` foreign function.
//!
//! The decoder is written for hostile input: every length is bounds-checked, unknown
//! fields of every wire type are skipped, nesting is bounded by the message shapes
//! (no recursion on attacker-chosen depth), and nothing panics. The tests check the
//! bytes against an independent encoder (Python's `protobuf`, see
//! `tests/test_global_proto.py`) and the decoder against its output.

/// Varint (wire type 0), 64-bit (1), length-delimited (2), 32-bit (5).
const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wt: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wt));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, WT_LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Proto3 omits default values: empty strings and zero integers are not written,
/// exactly as the official encoders do (so the bytes compare equal).
fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

fn put_u64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, WT_VARINT);
        put_varint(out, v);
    }
}

/// `RateLimitRequest{domain=1, descriptors=2 (one descriptor: entries=1 {key=1,
/// value=2}), hits_addend=3}`. One descriptor carries every entry: Envoy's RLS counts a
/// descriptor as one key, so the entries together name one budget.
pub fn encode_rate_limit_request(
    domain: &str,
    entries: &[(&str, &str)],
    hits_addend: u32,
) -> Vec<u8> {
    let mut descriptor =
        Vec::with_capacity(entries.iter().map(|(k, v)| k.len() + v.len() + 8).sum());
    for (k, v) in entries {
        let mut entry = Vec::with_capacity(k.len() + v.len() + 4);
        put_str(&mut entry, 1, k);
        put_str(&mut entry, 2, v);
        put_bytes(&mut descriptor, 1, &entry);
    }
    let mut out = Vec::with_capacity(domain.len() + descriptor.len() + 16);
    put_str(&mut out, 1, domain);
    put_bytes(&mut out, 2, &descriptor);
    put_u64(&mut out, 3, u64::from(hits_addend));
    out
}

/// `SetEnvoyFilterStateArguments{path=1, value=2, span=3}`; `span` 0 is
/// `FilterChain`, which is what a per-request value needs.
pub fn encode_set_filter_state(path: &str, value: &str, span: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + value.len() + 8);
    put_str(&mut out, 1, path);
    put_str(&mut out, 2, value);
    put_u64(&mut out, 3, u64::from(span));
    out
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 0: the service did not say.
    Unknown,
    /// 1: under the limit.
    Ok,
    /// 2: over the limit.
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Code {
        match v {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.DescriptorStatus`, the fields tollgate reports to clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// This descriptor's verdict.
    pub code: Option<Code>,
    /// `current_limit.requests_per_unit` (tokens per unit here).
    pub limit: Option<u64>,
    /// `current_limit.unit` in seconds (SECOND..YEAR), when known.
    pub unit_secs: Option<u64>,
    /// `current_limit.name`.
    pub name: String,
    /// `limit_remaining`.
    pub remaining: u64,
    /// `duration_until_reset` in milliseconds, when sent.
    pub reset_ms: Option<u64>,
}

/// The decoded parts of `RateLimitResponse` tollgate uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitResponse {
    /// `overall_code`.
    pub overall_code: Option<Code>,
    /// `statuses`, in order.
    pub statuses: Vec<DescriptorStatus>,
    /// `response_headers_to_add` (`HeaderValue{key=1, value=2}`), in order.
    pub headers: Vec<(String, String)>,
}

/// Why a message could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A varint, length or fixed field runs past the end of its message.
    Truncated,
    /// A varint longer than 10 bytes.
    BadVarint,
    /// A wire type protobuf does not define (3, 4 groups, 6, 7).
    BadWireType,
    /// A string field is not UTF-8.
    BadUtf8,
    /// Too many repeated items for a sane response (bounds memory).
    TooMany,
}

/// At most this many statuses / headers are kept from one response.
pub const MAX_REPEATED: usize = 64;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let byte = *self.b.get(self.at).ok_or(DecodeError::Truncated)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.b.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    /// The next field number and value, `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.at >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match (key & 7) as u8 {
            WT_VARINT => Value::Varint(self.varint()?),
            WT_I64 => {
                self.skip(8)?;
                Value::Fixed
            }
            WT_LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Value::Bytes(self.skip(n)?)
            }
            WT_I32 => {
                self.skip(4)?;
                Value::Fixed
            }
            _ => return Err(DecodeError::BadWireType),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn text(b: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| DecodeError::BadUtf8)
}

fn unit_secs(unit: u64) -> Option<u64> {
    // RateLimit.Unit: SECOND=1, MINUTE=2, HOUR=3, DAY=4, MONTH=5, YEAR=6, WEEK=7.
    match unit {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3600),
        4 => Some(86_400),
        5 => Some(30 * 86_400),
        6 => Some(365 * 86_400),
        7 => Some(7 * 86_400),
        _ => None,
    }
}

fn decode_status(b: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut s = DescriptorStatus::default();
    let mut r = Reader::new(b);
    while let Some((field, v)) = r.field()? {
        match (field, v) {
            (1, Value::Varint(c)) => s.code = Some(Code::from_wire(c)),
            (2, Value::Bytes(limit)) => {
                let mut lr = Reader::new(limit);
                while let Some((f, v)) = lr.field()? {
                    match (f, v) {
                        (1, Value::Varint(n)) => s.limit = Some(n),
                        (2, Value::Varint(u)) => s.unit_secs = unit_secs(u),
                        (3, Value::Bytes(n)) => s.name = text(n)?,
                        _ => {}
                    }
                }
            }
            (3, Value::Varint(n)) => s.remaining = n,
            (4, Value::Bytes(d)) => {
                let (mut secs, mut nanos) = (0u64, 0u64);
                let mut dr = Reader::new(d);
                while let Some((f, v)) = dr.field()? {
                    match (f, v) {
                        // int64/int32: negative values are sign-extended varints; a
                        // negative duration is treated as 0.
                        (1, Value::Varint(n)) => secs = if (n as i64) < 0 { 0 } else { n },
                        (2, Value::Varint(n)) => nanos = if (n as i64) < 0 { 0 } else { n },
                        _ => {}
                    }
                }
                s.reset_ms = Some(
                    secs.saturating_mul(1000)
                        .saturating_add(nanos.min(999_999_999) / 1_000_000),
                );
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Decode a `RateLimitResponse` (unknown fields skipped).
pub fn decode_rate_limit_response(b: &[u8]) -> Result<RateLimitResponse, DecodeError> {
    let mut out = RateLimitResponse::default();
    let mut r = Reader::new(b);
    while let Some((field, v)) = r.field()? {
        match (field, v) {
            (1, Value::Varint(c)) => out.overall_code = Some(Code::from_wire(c)),
            (2, Value::Bytes(s)) => {
                if out.statuses.len() >= MAX_REPEATED {
                    return Err(DecodeError::TooMany);
                }
                out.statuses.push(decode_status(s)?);
            }
            (3, Value::Bytes(h)) => {
                if out.headers.len() >= MAX_REPEATED {
                    return Err(DecodeError::TooMany);
                }
                let (mut k, mut val) = (String::new(), String::new());
                let mut hr = Reader::new(h);
                while let Some((f, v)) = hr.field()? {
                    match (f, v) {
                        (1, Value::Bytes(b)) => k = text(b)?,
                        (2, Value::Bytes(b)) => val = text(b)?,
                        _ => {}
                    }
                }
                out.headers.push((k, val));
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Vectors written by Python's official `protobuf` runtime from the upstream field
    /// numbers; `tests/test_global_proto.py` re-derives every line on each run.
    fn vector(name: &str) -> Vec<u8> {
        let line = include_str!("vectors.txt")
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no vector {name}"));
        unhex(line.split(' ').nth(1).unwrap())
    }

    #[test]
    fn request_matches_the_official_encoder() {
        let b = encode_rate_limit_request(
            "tollgate",
            &[("consumer", "alice"), ("model", "gpt-4o-mini")],
            1234,
        );
        assert_eq!(b, vector("request_full"));
        // hits_addend 0 and an empty value are omitted, as proto3 encoders do.
        assert_eq!(
            encode_rate_limit_request("d", &[("k", "")], 0),
            vector("request_defaults")
        );
    }

    #[test]
    fn filter_state_arguments_match_the_official_encoder() {
        let b = encode_set_filter_state("envoy.ratelimit.hits_addend", "1500", 0);
        assert_eq!(b, vector("filter_state"));
        assert_eq!(
            encode_set_filter_state("p", "v", 1),
            vector("filter_state_span")
        );
    }

    #[test]
    fn decodes_the_official_encoders_responses() {
        let r = decode_rate_limit_response(&vector("response_over_limit")).unwrap();
        assert_eq!(r.overall_code, Some(Code::OverLimit));
        assert_eq!(r.statuses.len(), 1);
        let s = &r.statuses[0];
        assert_eq!(s.code, Some(Code::OverLimit));
        assert_eq!(s.limit, Some(1000));
        assert_eq!(s.unit_secs, Some(60));
        assert_eq!(s.name, "tpm");
        assert_eq!(s.remaining, 7);
        assert_eq!(s.reset_ms, Some(42_500));
        // request_headers_to_add (4) and raw_body (5) are skipped.
        assert_eq!(r.headers, vec![("x-a".to_string(), "1".to_string())]);
        let r = decode_rate_limit_response(&vector("response_ok_minimal")).unwrap();
        assert_eq!(r.overall_code, Some(Code::Ok));
        assert_eq!(r.statuses[0].limit, None);
        assert_eq!(r.statuses[0].reset_ms, None);
    }

    #[test]
    fn hostile_bytes_never_panic_and_fail_cleanly() {
        assert_eq!(
            decode_rate_limit_response(&[]).unwrap(),
            RateLimitResponse::default()
        );
        assert_eq!(
            decode_rate_limit_response(&[0x08]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_rate_limit_response(&[0x12, 0x05, 0x08]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_rate_limit_response(&[0x0b]),
            Err(DecodeError::BadWireType)
        );
        let mut long = vec![0x08];
        long.extend_from_slice(&[0xff; 11]);
        assert_eq!(
            decode_rate_limit_response(&long),
            Err(DecodeError::BadVarint)
        );
        // A length near u64::MAX must not overflow.
        let mut b = vec![0x12];
        put_varint(&mut b, u64::MAX);
        assert_eq!(decode_rate_limit_response(&b), Err(DecodeError::Truncated));
        // Every prefix of a valid message and a pseudo-random soup: no panic.
        let good = encode_rate_limit_request("x", &[("a", "b")], 9);
        for n in 0..good.len() {
            let _ = decode_rate_limit_response(&good[..n]);
        }
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 40) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                buf.push((x >> 16) as u8);
            }
            let _ = decode_rate_limit_response(&buf);
        }
        // Too many statuses are refused rather than buffered without bound.
        let mut many = Vec::new();
        for _ in 0..=MAX_REPEATED {
            many.extend_from_slice(&[0x12, 0x00]);
        }
        assert_eq!(decode_rate_limit_response(&many), Err(DecodeError::TooMany));
    }
}
