//! tiktoken's pre-BPE split, as hand-written matchers instead of a regex.
//!
//! tiktoken cuts text with a backtracking regex (possessive quantifiers and a
//! `\s+(?!\S)` lookahead) and runs BPE inside each piece. The `regex` crate has
//! neither feature, and a general engine is the slowest part of counting, so each
//! pattern is transcribed here alternative by alternative, keeping leftmost-first
//! and backtracking semantics exact. The Unicode classes come from `build.rs`
//! (regex-syntax, the tables tiktoken's own regex engine uses).
//!
//! cl100k_base:
//! `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`
//!
//! o200k_base (`U` = `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`, `W` = `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`,
//! `C` = `(?i:'s|'t|'re|'ve|'m|'ll|'d)`):
//! `[^\r\n\p{L}\p{N}]?U*W+C?|[^\r\n\p{L}\p{N}]?U+W*C?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//!
//! Every alternative scans forward only and each match is consumed, so splitting
//! is linear in the text.

use super::vocab::ASCII_CLASS;
use super::Encoding;

/// `\p{L}`
const L: u8 = 1;
/// `\p{N}`
const N: u8 = 2;
/// `\s` (Unicode White_Space)
const WS: u8 = 4;
/// o200k's "upper" class `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
const U: u8 = 8;
/// o200k's "lower" class `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
const W: u8 = 16;
/// Past the end of the text: matches no class.
const END: u8 = 128;

static UNICODE_INDEX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unicode_index.bin"));
static UNICODE_BLOCKS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unicode_blocks.bin"));

#[inline(always)]
fn class_of(cp: u32) -> u8 {
    if cp < 128 {
        return ASCII_CLASS.get(cp as usize).copied().unwrap_or(END);
    }
    let i = (cp >> 8) as usize * 2;
    let block = match UNICODE_INDEX.get(i..i + 2) {
        Some(&[a, b]) => usize::from(u16::from_le_bytes([a, b])),
        _ => return 0,
    };
    UNICODE_BLOCKS
        .get(block * 256 + (cp & 255) as usize)
        .copied()
        .unwrap_or(0)
}

/// The character at byte `i`: (code point, UTF-8 length, class flags).
/// Past the end: `(u32::MAX, 0, END)`.
#[inline(always)]
fn at(b: &[u8], i: usize) -> (u32, usize, u8) {
    let b0 = match b.get(i) {
        Some(&x) => x,
        None => return (u32::MAX, 0, END),
    };
    if b0 < 0x80 {
        return (
            u32::from(b0),
            1,
            ASCII_CLASS.get(usize::from(b0)).copied().unwrap_or(END),
        );
    }
    let c = |k: usize| b.get(i + k).map_or(0, |&x| u32::from(x & 0x3f));
    let (cp, len) = if b0 < 0xe0 {
        (u32::from(b0 & 0x1f) << 6 | c(1), 2)
    } else if b0 < 0xf0 {
        (u32::from(b0 & 0x0f) << 12 | c(1) << 6 | c(2), 3)
    } else {
        (
            u32::from(b0 & 0x07) << 18 | c(1) << 12 | c(2) << 6 | c(3),
            4,
        )
    };
    (cp, len, class_of(cp))
}

const CR: u32 = '\r' as u32;
const LF: u32 = '\n' as u32;

/// `[^\r\n\p{L}\p{N}]`
#[inline(always)]
fn is_p0(cp: u32, k: u8) -> bool {
    k & (L | N | END) == 0 && cp != CR && cp != LF
}

/// `[^\s\p{L}\p{N}]`
#[inline(always)]
fn is_p4(k: u8) -> bool {
    k & (L | N | WS | END) == 0
}

/// End of the run of characters having any of `flags`, from `i`.
#[inline(always)]
fn run(b: &[u8], mut i: usize, flags: u8) -> usize {
    loop {
        let (_, l, k) = at(b, i);
        if k & flags == 0 {
            return i;
        }
        i += l;
    }
}

/// End of `[^\s\p{L}\p{N}]+` from `i`.
#[inline(always)]
fn run_p4(b: &[u8], mut i: usize) -> usize {
    loop {
        let (_, l, k) = at(b, i);
        if !is_p4(k) {
            return i;
        }
        i += l;
    }
}

/// `\p{N}{1,3}` from `i` (the caller checked the first).
#[inline(always)]
fn digits3(b: &[u8], mut i: usize) -> usize {
    for _ in 0..3 {
        let (_, l, k) = at(b, i);
        if k & N == 0 {
            break;
        }
        i += l;
    }
    i
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `i`: both patterns accept the same set
/// (cl100k writes it `'(?i:[sdmt]|ll|ve|re)`). Unicode case folding adds only
/// U+017F LONG S to `s` (checked at build time).
#[inline]
fn contraction(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'\'') {
        return None;
    }
    match (b.get(i + 1).map(u8::to_ascii_lowercase), b.get(i + 2)) {
        (Some(b's' | b'd' | b'm' | b't'), _) => Some(i + 2),
        (Some(0xc5), Some(0xbf)) => Some(i + 3),
        (Some(b'l'), Some(c)) if c.eq_ignore_ascii_case(&b'l') => Some(i + 3),
        (Some(b'v' | b'r'), Some(c)) if c.eq_ignore_ascii_case(&b'e') => Some(i + 3),
        _ => None,
    }
}

/// A whitespace run from `i`: (end, end of its last `\r`/`\n` if any, start of
/// its last character, number of characters capped at 2).
#[inline]
fn ws_run(b: &[u8], mut i: usize) -> (usize, Option<usize>, usize, u8) {
    let mut last_nl = None;
    let mut last = i;
    let mut n = 0u8;
    loop {
        let (c, l, k) = at(b, i);
        if k & WS == 0 {
            return (i, last_nl, last, n);
        }
        last = i;
        i += l;
        if c == CR || c == LF {
            last_nl = Some(i);
        }
        n = n.saturating_add(1).min(2);
    }
}

/// End of the cl100k piece starting at `i` (`i` itself only at the end of text).
fn next_cl100k(b: &[u8], i: usize) -> usize {
    let (c0, l0, k0) = at(b, i);
    if l0 == 0 {
        return i;
    }
    // '(?i:[sdmt]|ll|ve|re)
    if c0 == u32::from(b'\'') {
        if let Some(e) = contraction(b, i) {
            return e;
        }
    }
    // [^\r\n\p{L}\p{N}]?+\p{L}++  (possessive: no need to retry without the prefix,
    // which could not be a letter anyway)
    let j = if is_p0(c0, k0) { i + l0 } else { i };
    let e = run(b, j, L);
    if e > j {
        return e;
    }
    // \p{N}{1,3}+
    if k0 & N != 0 {
        return digits3(b, i);
    }
    //  ?[^\s\p{L}\p{N}]++[\r\n]*+
    let s = if c0 == u32::from(b' ') && is_p4(at(b, i + 1).2) {
        i + 1
    } else {
        i
    };
    if is_p4(at(b, s).2) {
        let mut e = run_p4(b, s);
        while let Some(b'\r' | b'\n') = b.get(e) {
            e += 1;
        }
        return e;
    }
    if k0 & WS != 0 {
        let (e, last_nl, last, n) = ws_run(b, i);
        // \s++$
        if e >= b.len() {
            return e;
        }
        // \s*[\r\n]
        if let Some(nl) = last_nl {
            return nl;
        }
        // \s+(?!\S)  (give the last space to the next word)
        if n >= 2 {
            return last;
        }
        // \s
        return e;
    }
    i + l0
}

/// `U*W+` at `s` with regex backtracking: the U run, then either a W run right
/// after it or, backing off, up to the last W inside the run.
#[inline]
fn o200k_alt1(b: &[u8], s: usize) -> Option<usize> {
    let mut e = s;
    let mut last_w = None;
    loop {
        let (_, l, k) = at(b, e);
        if k & U == 0 {
            break;
        }
        e += l;
        if k & W != 0 {
            last_w = Some(e);
        }
    }
    if at(b, e).2 & W != 0 {
        return Some(run(b, e, W));
    }
    last_w
}

/// `U+W*` at `s`.
#[inline]
fn o200k_alt2(b: &[u8], s: usize) -> Option<usize> {
    let e = run(b, s, U);
    (e > s).then(|| run(b, e, W))
}

/// End of the o200k piece starting at `i` (`i` itself only at the end of text).
fn next_o200k(b: &[u8], i: usize) -> usize {
    let (c0, l0, k0) = at(b, i);
    if l0 == 0 {
        return i;
    }
    // The two letter alternatives, each first with the optional prefix taken
    // (greedy `?`) and then without it.
    if k0 & (L | U | W) != 0 || is_p0(c0, k0) {
        let p0 = is_p0(c0, k0);
        let s = i + l0;
        let end = (if p0 { o200k_alt1(b, s) } else { None })
            .or_else(|| o200k_alt1(b, i))
            .or_else(|| if p0 { o200k_alt2(b, s) } else { None })
            .or_else(|| o200k_alt2(b, i));
        if let Some(e) = end {
            return contraction(b, e).unwrap_or(e);
        }
    }
    // \p{N}{1,3}
    if k0 & N != 0 {
        return digits3(b, i);
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n/]*
    let s = if c0 == u32::from(b' ') && is_p4(at(b, i + 1).2) {
        i + 1
    } else {
        i
    };
    if is_p4(at(b, s).2) {
        let mut e = run_p4(b, s);
        while let Some(b'\r' | b'\n' | b'/') = b.get(e) {
            e += 1;
        }
        return e;
    }
    if k0 & WS != 0 {
        let (e, last_nl, last, n) = ws_run(b, i);
        // \s*[\r\n]+
        if let Some(nl) = last_nl {
            return nl;
        }
        // \s+(?!\S)
        if e >= b.len() {
            return e;
        }
        if n >= 2 {
            return last;
        }
        // \s+
        return e;
    }
    i + l0
}

/// The pieces tiktoken would hand to BPE, in order; they tile the text exactly.
pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
    next: fn(&[u8], usize) -> usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let b = self.text.as_bytes();
        if self.pos >= b.len() {
            return None;
        }
        let start = self.pos;
        let mut end = (self.next)(b, start);
        if end <= start {
            // Unreachable for valid input; never stall or panic.
            end = b.len();
        }
        self.pos = end.min(b.len());
        match self.text.get(start..self.pos) {
            Some(p) => Some(p),
            None => {
                self.pos = b.len();
                self.text.get(start..)
            }
        }
    }
}

/// Splits `text` the way `enc`'s regex does (special tokens are ordinary text).
pub fn pieces(enc: Encoding, text: &str) -> Pieces<'_> {
    Pieces {
        text,
        pos: 0,
        next: match enc {
            Encoding::O200kBase => next_o200k,
            Encoding::Cl100kBase => next_cl100k,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference split with the `regex` crate: the patterns without possessives, and
    /// `\s+(?!\S)` emulated (see the module docs of tiktoken's regex).
    fn regex_split(enc: Encoding, text: &str) -> Vec<String> {
        let pat = match enc {
            Encoding::Cl100kBase => {
                r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]|\s+|\s"
            }
            Encoding::O200kBase => concat!(
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+"
            ),
        };
        let re = regex::Regex::new(pat).unwrap();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let m = re.find_at(text, pos).unwrap();
            assert_eq!(m.start(), pos);
            let mut end = m.end();
            let s = m.as_str();
            // \s+ (standing in for \s+(?!\S)): give back the last char if the next is \S.
            let is_plain_ws = s.chars().all(char::is_whitespace)
                && !s.ends_with(['\r', '\n'])
                && s.chars().count() >= 2
                && end < text.len();
            if is_plain_ws {
                end -= s.chars().last().unwrap().len_utf8();
            }
            out.push(text[pos..end].to_string());
            pos = end;
        }
        out
    }

    #[test]
    fn matches_regex_reference() {
        let samples = [
            "Hello, world! It's a test. I'M HERE, they'RE 'S ſ 'ſ don't",
            "  leading spaces\n\n\ttabs\r\n\r\n  trailing  ",
            "  \n  ",
            "x  \n  ",
            "numbers 1234567 and 3.14159, ١٢٣٤ ²³",
            "中文字符和English混合、日本語のテキスト。한국어 텍스트",
            "e\u{301}te\u{301} a\u{300}\u{300}b \u{301}x \u{301}",
            "👨‍👩‍👧‍👦 🇺🇸 👍🏽 ",
            "CamelCaseWord HTTPServer iPhone ǅungla ʰAʰBb",
            "path/to/file.rs\n//comment\n/* x */\n}\n/\n/",
            "\u{3000}\u{3000}word\u{a0}\u{a0}x\u{2028}y",
            "a\r\r\n\nb",
            "____init__ --- ... !!! ???",
        ];
        for enc in [Encoding::Cl100kBase, Encoding::O200kBase] {
            for s in samples {
                let got: Vec<&str> = pieces(enc, s).collect();
                // The regex stand-in lacks possessives; for these samples that is equivalent.
                assert_eq!(got, regex_split(enc, s), "{enc:?} {s:?}");
            }
        }
    }
}
