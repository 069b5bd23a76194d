//! Skipping the bytes of a JSON string that need no attention, eight at a time.
//!
//! Message text is long and almost never holds a quote, a backslash or a control
//! character; a byte-at-a-time loop over it dominated JSON parsing, the PII walk
//! and string writing. Used by [`crate::dialect::doc`], [`crate::pii`] and
//! [`crate::providers::push_json_str`].

/// From `at`, in steps of eight bytes, the start of the first eight that may hold
/// `"`, `\\` or a byte below 0x20 (or where fewer than eight are left): no byte
/// before it is one of these. It can stop early (a false alarm), never late, so
/// the caller goes on byte by byte from there.
pub fn skip_plain(b: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    while let Some(word) = b
        .get(at..at.saturating_add(8))
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
    {
        let x = u64::from_le_bytes(word);
        let special = has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if special != 0 {
            break;
        }
        at += 8;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_steps_over_a_byte_that_needs_attention() {
        for len in 0..40 {
            for k in 0..len {
                for special in [b'"', b'\\', b'\n', 0u8, 0x1f] {
                    let mut b = vec![b'a'; len];
                    b[k] = special;
                    for from in 0..=k {
                        let stop = skip_plain(&b, from);
                        assert!(
                            stop <= k && stop >= from,
                            "len {len} at {k} from {from}: {stop}"
                        );
                    }
                }
            }
            // Plain text (UTF-8 included) is skipped to its last whole word.
            let text = "é".repeat(len);
            let stop = skip_plain(text.as_bytes(), 0);
            assert_eq!(stop, text.len() / 8 * 8);
        }
    }
}
