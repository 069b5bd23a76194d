//! Reading a consumer identity out of a host property (`limits.consumer.from:
//! jwt_claim` or `property`).
//!
//! Envoy answers `get_property` for a path into dynamic metadata by walking the
//! metadata as CEL values: a string claim of jwt_authn's `payload_in_metadata`
//! struct comes back as its raw bytes, a number as 8 little-endian bytes of an
//! IEEE double, and a value the walk stops at as a serialised protobuf message
//! (`google.protobuf.Value`: field 3 `string_value`, field 2 `number_value`).
//! [`from_property`] accepts all of these and refuses anything else (objects,
//! lists, binary), so a consumer id is always a plain, printable string.

/// Longest identity accepted from a property (longer is refused, not cut: a
/// truncated id could collide with another consumer's).
pub const MAX_IDENTITY_BYTES: usize = 256;

fn printable(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_IDENTITY_BYTES && !s.chars().any(char::is_control)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn number(f: f64) -> Option<String> {
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then(|| format!("{}", f as i64))
}

/// The consumer id in a property's raw bytes, `None` when absent or not a
/// scalar (see the module docs for the encodings understood).
pub fn from_property(raw: Option<Vec<u8>>) -> Option<String> {
    let raw = raw?;
    if let Ok(s) = std::str::from_utf8(&raw) {
        if printable(s) {
            return Some(s.to_string());
        }
    }
    match raw.first()? {
        // google.protobuf.Value string_value (field 3, length-delimited).
        0x1a => {
            let (len, n) = varint(raw.get(1..)?)?;
            let body = raw.get(1 + n..)?;
            if u64::try_from(body.len()).ok()? != len {
                return None;
            }
            let s = std::str::from_utf8(body).ok()?;
            printable(s).then(|| s.to_string())
        }
        // google.protobuf.Value number_value (field 2, fixed64).
        0x11 if raw.len() == 9 => number(f64::from_le_bytes(raw.get(1..9)?.try_into().ok()?)),
        _ if raw.len() == 8 => number(f64::from_le_bytes(raw.as_slice().try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_in_every_encoding_and_nothing_else() {
        assert_eq!(from_property(Some(b"alice".to_vec())), Some("alice".into()));
        let mut pb = vec![0x1a, 5];
        pb.extend_from_slice(b"alice");
        assert_eq!(from_property(Some(pb.clone())), Some("alice".into()));
        pb.push(b'x');
        assert_eq!(from_property(Some(pb)), None, "length must match");
        assert_eq!(
            from_property(Some(42f64.to_le_bytes().to_vec())),
            Some("42".into())
        );
        let mut num = vec![0x11];
        num.extend_from_slice(&7f64.to_le_bytes());
        assert_eq!(from_property(Some(num)), Some("7".into()));
        assert_eq!(from_property(Some(1.5f64.to_le_bytes().to_vec())), None);
        // A struct (field 5) or a list: not an identity.
        assert_eq!(from_property(Some(vec![0x2a, 2, 0x0a, 0])), None);
        assert_eq!(from_property(Some(Vec::new())), None);
        assert_eq!(from_property(None), None);
        assert_eq!(from_property(Some(vec![b'a'; 300])), None);
    }
}
