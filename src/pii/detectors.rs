//! The built-in detectors: one pattern each (joined into one automaton by
//! [`super::engine::Engine`]) and, where the format has one, a checksum or rule
//! validator that only ever runs on the few candidates the pattern found.
//!
//! Patterns are ASCII-only and use ASCII word boundaries `(?-u:\b)`, so the
//! combined automaton stays a lazy DFA on any text (Unicode `\b` would make the
//! regex engine fall back to a much slower NFA on non-ASCII input).

/// A validator: given the whole haystack and the candidate span, the end of the
/// accepted value (at most `end`, after `start`), or `None` to reject it.
pub type Validator = fn(hay: &[u8], start: usize, end: usize) -> Option<usize>;

/// One built-in detector.
#[derive(Clone)]
pub struct Spec {
    /// Config field name and metric label (`credit_card`).
    pub name: &'static str,
    /// Placeholder category (`CREDIT_CARD` in `<CREDIT_CARD_1>`).
    pub tag: &'static str,
    /// The pattern. A named group `v` marks the part replaced (the value of a
    /// `password=` assignment); otherwise the whole match is.
    pub pattern: String,
    /// Checks the candidate (checksum, number rules, context).
    pub validate: Option<Validator>,
    /// Bytes a match can start with: only these detectors are tried where a
    /// candidate starts with such a byte.
    pub first: fn(u8) -> bool,
    /// A cheap look at the bytes from the candidate's start (a separator at the
    /// right place, enough digits): false rules the detector out without running
    /// its regex, which keeps digit-dense text fast.
    pub shape: fn(&[u8]) -> bool,
    /// Longest match possible in bytes, counting only matches that contain a byte
    /// outside [`is_token_byte`]: a stream holds back at least this much so such a
    /// value split across chunks is still seen whole. Matches made only of token
    /// bytes are kept whole by the token-run rule instead (see `stream`).
    pub spaced_max_len: usize,
}

/// Bytes that make up token-like runs (words, keys, e-mail addresses, IPs,
/// placeholders): a stream never cuts inside such a run.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'_' | b'-' | b'.' | b'+' | b'/' | b'=' | b'@' | b'%' | b':' | b'<' | b'>'
        )
}

const B: &str = r"(?-u:\b)";

/// The catalogue, in priority order: where two could match at the same place the
/// earlier wins (a specific token format before a generic assignment, a card
/// before a phone number).
pub fn builtin() -> Vec<Spec> {
    vec![
        Spec {
            name: "private_key",
            shape: |_| true,
            first: |b| b == b'-',
            tag: "PRIVATE_KEY",
            // `\\` too: a key quoted inside JSON-in-text keeps its `\n` escapes.
            pattern: r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----(?:[A-Za-z0-9+/=\s:,.\\\-]*?-----END[A-Z ]{0,40}PRIVATE KEY-----|[A-Za-z0-9+/=\s\\]*)".into(),
            validate: None,
            // Held from the BEGIN marker instead (see `stream`), up to its cap.
            spaced_max_len: 0,
        },
        Spec {
            name: "aws_access_key",
            shape: |_| true,
            first: |b| b == b'A',
            tag: "AWS_ACCESS_KEY",
            pattern: const_format(&[B, r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", B]),
            validate: None,
            spaced_max_len: 0,
        },
        Spec {
            name: "anthropic_api_key",
            shape: |_| true,
            first: |b| b == b's',
            tag: "ANTHROPIC_API_KEY",
            pattern: const_format(&[B, r"sk-ant-[a-z]{3,8}[0-9]{2}-[A-Za-z0-9_\-]{20,}"]),
            validate: None,
            spaced_max_len: 0,
        },
        Spec {
            name: "openai_api_key",
            shape: |_| true,
            first: |b| b == b's',
            tag: "OPENAI_API_KEY",
            pattern: const_format(&[
                B,
                r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
            ]),
            validate: Some(openai_key),
            spaced_max_len: 0,
        },
        Spec {
            name: "github_token",
            shape: |_| true,
            first: |b| b == b'g',
            tag: "GITHUB_TOKEN",
            pattern: const_format(&[
                B,
                r"(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,})",
                B,
            ]),
            validate: None,
            spaced_max_len: 0,
        },
        Spec {
            name: "slack_token",
            shape: |_| true,
            first: |b| b == b'x',
            tag: "SLACK_TOKEN",
            pattern: const_format(&[B, r"xox[abposr]-[A-Za-z0-9\-]{10,}"]),
            validate: None,
            spaced_max_len: 0,
        },
        Spec {
            name: "jwt",
            shape: |_| true,
            first: |b| b == b'e',
            tag: "JWT",
            pattern: const_format(&[
                B,
                r"eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{8,}",
            ]),
            validate: None,
            spaced_max_len: 0,
        },
        Spec {
            name: "email",
            shape: email_shape,
            first: |b| b.is_ascii_alphanumeric(),
            tag: "EMAIL",
            pattern: r"[A-Za-z0-9][A-Za-z0-9._%+\-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?-u:\b)".into(),
            validate: Some(email),
            spaced_max_len: 0,
        },
        Spec {
            name: "iban",
            shape: |_| true,
            first: |b| b.is_ascii_uppercase(),
            tag: "IBAN",
            pattern: const_format(&[B, r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}", B]),
            validate: Some(iban),
            spaced_max_len: 42,
        },
        Spec {
            name: "credit_card",
            shape: card_shape,
            first: |b| b.is_ascii_digit(),
            tag: "CREDIT_CARD",
            pattern: const_format(&[B, r"[0-9](?:[ \-]?[0-9]){11,18}", B]),
            validate: Some(credit_card),
            spaced_max_len: 24,
        },
        Spec {
            name: "us_ssn",
            shape: |r| matches!(r.get(3), Some(b'-' | b' ')) && matches!(r.get(6), Some(b'-' | b' ')),
            first: |b| b.is_ascii_digit(),
            tag: "US_SSN",
            pattern: const_format(&[B, r"[0-9]{3}[\- ][0-9]{2}[\- ][0-9]{4}", B]),
            validate: Some(us_ssn),
            spaced_max_len: 11,
        },
        Spec {
            name: "ca_sin",
            shape: |r| matches!(r.get(3), Some(b'-' | b' ')) && matches!(r.get(7), Some(b'-' | b' ')),
            first: |b| b.is_ascii_digit(),
            tag: "CA_SIN",
            pattern: const_format(&[B, r"[0-79][0-9]{2}[\- ][0-9]{3}[\- ][0-9]{3}", B]),
            validate: Some(ca_sin),
            spaced_max_len: 11,
        },
        Spec {
            name: "es_nif",
            shape: |r| matches!(r.first(), Some(b'X' | b'Y' | b'Z')) || r.get(..8).is_some_and(|d| d.iter().all(u8::is_ascii_digit)),
            first: |b| b.is_ascii_digit() || matches!(b, b'X' | b'Y' | b'Z'),
            tag: "ES_NIF",
            pattern: const_format(&[B, r"(?:[0-9]{8}|[XYZ]-?[0-9]{7})-?[A-Z]", B]),
            validate: Some(es_nif),
            spaced_max_len: 0,
        },
        Spec {
            name: "mac_address",
            shape: |r| matches!(r.get(2), Some(b':' | b'-')) || r.get(4) == Some(&b'.'),
            first: |b| b.is_ascii_hexdigit(),
            tag: "MAC_ADDRESS",
            pattern: const_format(&[
                B,
                r"(?:[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})",
                B,
            ]),
            validate: Some(not_in_dotted_or_colon_run),
            spaced_max_len: 0,
        },
        Spec {
            name: "ip_address",
            shape: |r| r.iter().take(5).any(|&b| b == b'.' || b == b':'),
            first: |b| b.is_ascii_hexdigit() || b == b':',
            tag: "IP_ADDRESS",
            pattern: IP.into(),
            validate: Some(ip),
            spaced_max_len: 0,
        },
        Spec {
            name: "phone",
            shape: |_| true,
            first: |b| b.is_ascii_digit() || b == b'+' || b == b'(',
            tag: "PHONE",
            pattern: PHONE.into(),
            validate: Some(phone),
            // 15 digits, their separators, a `(0)` and an extension.
            spaced_max_len: 48,
        },
        Spec {
            name: "secret_assignment",
            shape: |_| true,
            first: |b| matches!(b.to_ascii_lowercase(), b'p' | b's' | b'c' | b'a'),
            tag: "SECRET",
            pattern: r#"(?i:(?-u:\b)(?:password|passwd|pwd|passphrase|secret|client[_\-]?secret|api[_\-]?key|apikey|access[_\-]?key|secret[_\-]?key|access[_\-]?token|auth[_\-]?token|private[_\-]?key))["']?[ \t]{0,3}[:=][ \t]{0,3}["']?(?P<v>[^\s"',;<>]{4,128})"#.into(),
            validate: Some(secret_value),
            spaced_max_len: 180,
        },
    ]
}

/// Concatenates pattern pieces at start-up (patterns are built once per config).
fn const_format(parts: &[&str]) -> String {
    parts.concat()
}

const IP: &str = concat!(
    r"(?-u:\b)(?:",
    // IPv4
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?-u:\b)",
    // IPv6, full and compressed forms.
    r"|(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
    r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?",
    r")|::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})"
);

const PHONE: &str = concat!(
    r"(?:",
    // International: +CC or 00CC, then digit groups with single separators.
    r"(?:\+|(?-u:\b)00)[1-9][0-9]{0,2}(?:[ .\-/]?(?:\(0\)|\([0-9]{1,4}\))?[ .\-/]?[0-9]{1,5}){1,6}",
    // North American 3-3-4, optionally 1- / 001- prefixed, optional extension.
    r"|(?:(?:(?-u:\b)(?:00)?1[ .\-])?\([2-9][0-9]{2}\) ?|(?:(?-u:\b)(?:00)?1[ .\-])?(?-u:\b)[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}",
    // National trunk-prefix formats (EU/UK: 0…), with at least one separator; an
    // area code in parentheses is one (`(0117)4960211`).
    r"|(?:\(0[1-9][0-9]{0,4}\)[ .\-/]?|(?-u:\b)0[1-9][0-9]{0,4}[ .\-/])[0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,3}",
    // National 10/11 digits written without separators (0… trunk prefix).
    r"|(?-u:\b)0[1-9][0-9]{8,9}",
    r")(?:[ ]?(?:x|ext\.?|#)[ ]?[0-9]{1,6})?(?-u:\b)"
);

/// An `@` before the next whitespace or quote, within an address's length.
fn email_shape(r: &[u8]) -> bool {
    r.iter()
        .take(320)
        .take_while(|&&b| !matches!(b, b' ' | b'\n' | b'\t' | b'"' | b'<' | b'>' | b','))
        .any(|&b| b == b'@')
}

/// At least 12 digits in a run of digits, spaces and dashes.
fn card_shape(r: &[u8]) -> bool {
    r.iter()
        .take(40)
        .take_while(|&&b| b.is_ascii_digit() || b == b' ' || b == b'-')
        .filter(|b| b.is_ascii_digit())
        .count()
        >= 12
}

fn prev(hay: &[u8], start: usize) -> Option<u8> {
    start.checked_sub(1).and_then(|i| hay.get(i).copied())
}

fn byte_at(hay: &[u8], i: usize) -> Option<u8> {
    hay.get(i).copied()
}

/// Luhn (mod 10) over the digits of `span` (no allocation: it runs on every
/// card-shaped candidate).
pub fn luhn(span: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for &b in span.iter().rev().filter(|b| b.is_ascii_digit()) {
        let mut d = u32::from(b - b'0');
        if n % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

/// Tries the candidate and then shorter prefixes cut at separators (a following
/// number group glued on by the pattern, `4111 1111 1111 1111 2024`).
fn longest_prefix(
    hay: &[u8],
    start: usize,
    end: usize,
    ok: impl Fn(&[u8]) -> bool,
    is_sep: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut e = end;
    loop {
        let span = hay.get(start..e)?;
        let right_ok = !byte_at(hay, e).is_some_and(|b| b.is_ascii_alphanumeric());
        if right_ok && ok(span) {
            return Some(e);
        }
        let p = span.iter().rposition(|&b| is_sep(b))?;
        if p == 0 {
            return None;
        }
        e = start + p;
    }
}

fn credit_card(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    if matches!(prev(hay, start), Some(b'.' | b'+' | b'$' | b'#')) {
        return None;
    }
    longest_prefix(hay, start, end, card_ok, |b| b == b' ' || b == b'-')
}

fn card_ok(span: &[u8]) -> bool {
    let n = span.iter().filter(|b| b.is_ascii_digit()).count();
    if !(12..=19).contains(&n) {
        return false;
    }
    // One separator style throughout, and groups no shorter than 3 digits
    // (a phone number or a date range is not a card).
    let mut sep = None;
    for &b in span {
        if !b.is_ascii_digit() {
            if sep.is_some_and(|s| s != b) {
                return false;
            }
            sep = Some(b);
        }
    }
    if sep.is_some() && span.split(|b| !b.is_ascii_digit()).any(|g| g.len() < 3) {
        return false;
    }
    let mut d = span.iter().copied().filter(u8::is_ascii_digit);
    let mut p4: u32 = 0;
    for _ in 0..4 {
        p4 = p4 * 10 + u32::from(d.next().unwrap_or(b'0').wrapping_sub(b'0'));
    }
    let p2 = p4 / 100;
    let first = span.iter().copied().find(u8::is_ascii_digit);
    let maestro = matches!(
        p4,
        5018 | 5020 | 5038 | 6304 | 6759 | 6761..=6763 | 6390 | 604
    ) || (56..=58).contains(&p2);
    if n == 12 {
        return maestro && luhn(span);
    }
    let iin = match first.as_ref() {
        Some(b'4') => true,                                      // Visa
        Some(b'1') => p4 == 1800,                                // JCB 15
        Some(b'2') if p4 == 2131 => true,                        // JCB 15
        Some(b'5') => (50..=59).contains(&p2),                   // Mastercard, Maestro
        Some(b'2') => (2221..=2720).contains(&p4),               // Mastercard 2-series
        Some(b'3') => matches!(p2, 30 | 34 | 35 | 36 | 37 | 38), // Amex, Diners, JCB
        Some(b'6') => true,                                      // Discover, Maestro, UnionPay
        Some(b'0') => p4 == 604,                                 // Maestro (0604)
        _ => false,
    };
    iin && luhn(span)
}

fn iban(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    longest_prefix(hay, start, end, iban_ok, |b| b == b' ')
}

/// ISO 13616: country length and mod-97 == 1 over the rearranged digits.
pub fn iban_ok(span: &[u8]) -> bool {
    let compact = || span.iter().copied().filter(|b| *b != b' ');
    let n = compact().count();
    let cc: [u8; 2] = {
        let mut c = compact();
        [c.next().unwrap_or(0), c.next().unwrap_or(0)]
    };
    let len = iban_length(&cc);
    if (len != 0 && n != len) || !(15..=34).contains(&n) {
        return false;
    }
    let mut rem: u32 = 0;
    for b in compact().skip(4).chain(compact().take(4)) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// IBAN length per country (0 = not listed: any length 15..34 with a valid checksum).
fn iban_length(cc: &[u8]) -> usize {
    match cc {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"NL" | b"FO" | b"GL" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" => 20,
        b"CH" | b"CR" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" => 22,
        b"AE" | b"GI" | b"IL" | b"TL" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"PL" => 28,
        b"BR" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" => 30,
        b"MT" => 31,
        _ => 0,
    }
}

/// US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000; one
/// separator style.
fn us_ssn(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    let s = hay.get(start..end)?;
    if s.len() != 11 || s.get(3) != s.get(6) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        s.get(r)
            .unwrap_or(b"")
            .iter()
            .fold(0, |a, &b| a * 10 + u32::from(b.wrapping_sub(b'0')))
    };
    let (area, group, serial) = (num(0..3), num(4..6), num(7..11));
    let ok = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    (ok && !glued_to_number(hay, start, end)).then_some(end)
}

/// Canadian SIN: 9 digits in 3-3-3 groups, Luhn-valid.
fn ca_sin(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    let s = hay.get(start..end)?;
    (s.get(3) == s.get(7) && luhn(s) && !glued_to_number(hay, start, end)).then_some(end)
}

/// A number glued to more digits or dotted parts (`1.234-56-7890`) is part of
/// something larger.
fn glued_to_number(hay: &[u8], start: usize, end: usize) -> bool {
    let before = prev(hay, start);
    let after = byte_at(hay, end);
    let next2 = byte_at(hay, end + 1);
    matches!(before, Some(b'.' | b'-' | b'/' | b'+'))
        || (matches!(after, Some(b'-' | b'.' | b'/')) && next2.is_some_and(|b| b.is_ascii_digit()))
}

/// Spanish DNI/NIE: the letter is the number mod 23 in the official table.
fn es_nif(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let s = hay.get(start..end)?;
    let letter = *s.last()?;
    let mut n: u32 = match s.first()? {
        b'X' => 0,
        b'Y' => 1,
        b'Z' => 2,
        _ => 0,
    };
    for &b in s.iter().take(s.len() - 1) {
        if b.is_ascii_digit() {
            n = n * 10 + u32::from(b - b'0');
        }
    }
    (LETTERS.get((n % 23) as usize) == Some(&letter)).then_some(end)
}

fn openai_key(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    // Real keys mix letters and digits; `sk-this-is-not-a-key-at-all` does not.
    let s = hay.get(start + 3..end)?;
    let has_digit = s.iter().any(u8::is_ascii_digit);
    let has_upper = s.iter().any(u8::is_ascii_uppercase);
    (has_digit && has_upper).then_some(end)
}

fn email(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    // The local part must not start mid-token (`x.y@` starting at `y`).
    match prev(hay, start) {
        Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-') => {
            None
        }
        _ => Some(end),
    }
}

fn not_in_dotted_or_colon_run(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    let sep = |b: Option<u8>| matches!(b, Some(b':' | b'-' | b'.'));
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    let before = sep(prev(hay, start)) && alnum(start.checked_sub(2).and_then(|i| byte_at(hay, i)));
    let after = sep(byte_at(hay, end)) && alnum(byte_at(hay, end + 1));
    (!before && !after).then_some(end)
}

fn ip(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    let s = hay.get(start..end)?;
    if s.contains(&b'.') && !s.contains(&b':') {
        // IPv4: not part of a longer dotted number (a version string `1.2.3.4.5`,
        // `v1.2.3.4`).
        if matches!(prev(hay, start), Some(b'.' | b'v' | b'V' | b'-'))
            || (byte_at(hay, end) == Some(b'.')
                && byte_at(hay, end + 1).is_some_and(|b| b.is_ascii_digit()))
        {
            return None;
        }
        return Some(end);
    }
    // IPv6: eight groups or one `::`, and not glued to more hex/colons
    // (timestamps `12:30:45` never get here: they have neither).
    let groups = s.split(|&b| b == b':').filter(|g| !g.is_empty()).count();
    let double = s.windows(2).filter(|w| w == b"::").count();
    let ok = (groups == 8 && double == 0)
        || (double == 1 && groups <= 7 && s.iter().any(u8::is_ascii_digit));
    if !ok || (groups < 2 && s != b"::1") {
        return None;
    }
    if prev(hay, start).is_some_and(|b| b == b':' || b.is_ascii_hexdigit())
        || byte_at(hay, end).is_some_and(|b| b == b':' || b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(end)
}

fn phone(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    let s = hay.get(start..end)?;
    let core_end = s
        .iter()
        .position(|&b| b == b'x' || b == b'e' || b == b'#')
        .unwrap_or(s.len());
    let core = s.get(..core_end)?;
    let n = core.iter().filter(|b| b.is_ascii_digit()).count();
    let international = core.first() == Some(&b'+') || core.starts_with(b"00");
    let min = if international { 8 } else { 9 };
    if !(min..=15).contains(&n) {
        return None;
    }
    // Not part of a larger identifier (`#001694067`, a UUID's `00562206-f41a`).
    if matches!(
        prev(hay, start),
        Some(b'.' | b'/' | b'-' | b'_' | b':' | b'#')
    ) || (matches!(byte_at(hay, end), Some(b'.' | b'-' | b'/' | b':'))
        && byte_at(hay, end + 1).is_some_and(|b| b.is_ascii_alphanumeric()))
    {
        return None;
    }
    // Dates and times written with separators (`2024-05-01 12`) are not phones.
    let groups: Vec<&[u8]> = core
        .split(|b| !b.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if !international
        && groups.len() >= 3
        && groups
            .first()
            .is_some_and(|g| g.len() == 4 && !g.starts_with(b"0"))
    {
        return None;
    }
    Some(end)
}

fn secret_value(hay: &[u8], start: usize, end: usize) -> Option<usize> {
    // The whole match is `key = value`; the engine replaces only group `v`. A
    // placeholder left by an earlier pass is not a secret.
    let s = hay.get(start..end)?;
    (!s.ends_with(b">")).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn(b"4111111111111111"));
        assert!(!luhn(b"4111111111111112"));
        assert!(card_ok(b"4111 1111 1111 1111"));
        assert!(card_ok(b"378282246310005"));
        assert!(!card_ok(b"4111 1111-1111 1111"));
        assert!(iban_ok(b"GB82WEST12345698765432"));
        assert!(iban_ok(b"DE89 3704 0044 0532 0130 00"));
        assert!(!iban_ok(b"GB82WEST12345698765433"));
        assert_eq!(es_nif(b"12345678Z", 0, 9), Some(9));
        assert_eq!(es_nif(b"12345678A", 0, 9), None);
        assert_eq!(es_nif(b"X1234567L", 0, 9), Some(9));
        assert_eq!(ca_sin(b"046 454 286", 0, 11), Some(11));
        assert_eq!(ca_sin(b"046 454 287", 0, 11), None);
        assert_eq!(us_ssn(b"123-45-6789", 0, 11), Some(11));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45 6789",
        ] {
            assert_eq!(us_ssn(bad.as_bytes(), 0, 11), None, "{bad}");
        }
    }
}
