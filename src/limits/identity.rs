//! Reading a consumer identity out of a host property (`limits.consumer.from:
//! jwt_claim` or `property`).
//!
//! Envoy answers `get_property` for a path into dynamic metadata by walking the
//! metadata as CEL values and serialising what the walk ends on. Observed with
//! Envoy 1.40 and jwt_authn `payload_in_metadata` (tests/e2e/test_limits.py):
//!
//! | claim in the JWT      | bytes returned                                         |
//! |-----------------------|--------------------------------------------------------|
//! | `"sub": "alice"`      | `alice` (the raw string)                               |
//! | `"num": 42`           | `00 00 00 00 00 00 45 40` (little-endian IEEE double)  |
//! | `"obj": {"a": "b"}`   | a proxy-wasm pairs map (`01 00 00 00 01 00 00 00 ...`) |
//! | absent                | `NotFound`                                             |
//!
//! [`from_property`] takes strings as they are and whole numbers as decimal text,
//! and refuses anything else (objects, lists, booleans, binary), so a consumer
//! id is always a plain, printable string.

/// Longest identity accepted from a property (longer is refused, not cut: a
/// truncated id could collide with another consumer's).
pub const MAX_IDENTITY_BYTES: usize = 256;

fn printable(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_IDENTITY_BYTES && !s.chars().any(char::is_control)
}

/// The consumer id in a property's raw bytes, `None` when absent or not a
/// string or whole number.
pub fn from_property(raw: Option<Vec<u8>>) -> Option<String> {
    let raw = raw?;
    if let Ok(s) = std::str::from_utf8(&raw) {
        if printable(s) {
            return Some(s.to_string());
        }
    }
    // A JSON number claim: an 8-byte double (a printable 8-byte string was
    // taken above; a double with a zero byte is not printable).
    let bytes: [u8; 8] = raw.as_slice().try_into().ok()?;
    let f = f64::from_le_bytes(bytes);
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then(|| format!("{}", f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_whole_numbers_as_envoy_encodes_them_and_nothing_else() {
        assert_eq!(from_property(Some(b"alice".to_vec())), Some("alice".into()));
        assert_eq!(
            from_property(Some(b"12345678".to_vec())),
            Some("12345678".into())
        );
        // Bytes Envoy 1.40 returned for `"num": 42`.
        assert_eq!(
            from_property(Some(vec![0, 0, 0, 0, 0, 0, 69, 64])),
            Some("42".into())
        );
        assert_eq!(from_property(Some(1.5f64.to_le_bytes().to_vec())), None);
        // Bytes Envoy 1.40 returned for `"obj": {"a": "b"}`: not an identity.
        let map = vec![1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 97, 0, 98, 0];
        assert_eq!(from_property(Some(map)), None);
        assert_eq!(from_property(Some(vec![1])), None, "a boolean");
        assert_eq!(from_property(Some(Vec::new())), None);
        assert_eq!(from_property(None), None);
        assert_eq!(from_property(Some(vec![b'a'; 300])), None);
    }
}
