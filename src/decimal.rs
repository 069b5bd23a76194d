//! Decimal text of integers for the request path (header values, filter state,
//! counter keys) without `core::fmt`: `to_string()` goes through the formatting
//! machinery, a few hundred wasm operators per number, and tollgate writes a
//! dozen numbers per exchange.

/// The lower-case hex digit of a nibble (`n`'s low four bits), for `\u00XX`
/// escapes and digests.
pub fn hex_digit(n: u8) -> u8 {
    match n & 15 {
        d @ 0..=9 => b'0' + d,
        d => b'a' + (d - 10),
    }
}

/// Append `v` in decimal.
pub fn push_u64(out: &mut String, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    if let Some(Ok(digits)) = buf.get(i..).map(std::str::from_utf8) {
        out.push_str(digits);
    }
}

/// `v` in decimal, as `v.to_string()` gives it.
pub fn u64_string(v: u64) -> String {
    let mut s = String::with_capacity(20);
    push_u64(&mut s, v);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_to_string() {
        let mut v = 1u64;
        for x in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX - 1, u64::MAX] {
            assert_eq!(u64_string(x), x.to_string());
        }
        while v < u64::MAX / 3 {
            for x in [v - 1, v, v + 1] {
                assert_eq!(u64_string(x), x.to_string());
            }
            v *= 3;
        }
        let mut s = String::from("n=");
        push_u64(&mut s, 42);
        assert_eq!(s, "n=42");
    }
}
