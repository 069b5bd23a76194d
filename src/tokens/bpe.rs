//! Exact tiktoken BPE over the baked vocabularies.
//!
//! tiktoken's rule: split the text into pieces (see [`super::pretokenize`]), then
//! inside each piece repeatedly merge the adjacent pair whose concatenation has the
//! lowest rank (leftmost on ties). Three paths, all giving that exact result:
//!
//! * the whole piece is a token (most English words): one hash lookup;
//! * short pieces: tiktoken's own in-place algorithm on a stack buffer
//!   (quadratic, but n is tiny and there is no allocation);
//! * long pieces (a megabyte of `_` or random letters is a single piece): the
//!   linear backtracking encoder of GitHub's `bpe` crate. It walks left to right
//!   taking the longest token that is *compatible* with the previous one (BPE of
//!   the pair's bytes is the pair itself), shortening or backtracking otherwise.
//!   Compatibility is decided from the baked merge table in a few lookups.

use super::pretokenize::pieces;
use super::vocab::{self, hash_start, hash_step, Vocab, NONE};
use super::Encoding;

/// Pieces up to this many bytes use the quadratic in-place merge.
const SMALL: usize = 16;

/// An exact `o200k_base` / `cl100k_base` tokenizer. Holds only `'static` table
/// references, so it is free to create and share across requests and threads.
pub struct Tokenizer {
    enc: Encoding,
    vocab: &'static Vocab,
}

static O200K: Tokenizer = Tokenizer {
    enc: Encoding::O200kBase,
    vocab: &vocab::O200K,
};
static CL100K: Tokenizer = Tokenizer {
    enc: Encoding::Cl100kBase,
    vocab: &vocab::CL100K,
};

/// The shared tokenizer for `enc`. Costs nothing: the tables are baked into the
/// binary and read in place, so the first call only touches pages.
pub fn tokenizer(enc: Encoding) -> &'static Tokenizer {
    match enc {
        Encoding::O200kBase => &O200K,
        Encoding::Cl100kBase => &CL100K,
    }
}

/// Where token ranks go: counting needs no buffer, encoding collects them.
trait Sink {
    fn push(&mut self, vocab: &Vocab, piece: &[u8], range: (usize, usize));
    fn push_rank(&mut self, rank: u32);
}

struct Counter(usize);

impl Sink for Counter {
    #[inline(always)]
    fn push(&mut self, _: &Vocab, _: &[u8], _: (usize, usize)) {
        self.0 += 1;
    }
    #[inline(always)]
    fn push_rank(&mut self, _: u32) {
        self.0 += 1;
    }
}

impl Sink for Vec<u32> {
    #[inline]
    fn push(&mut self, vocab: &Vocab, piece: &[u8], (s, e): (usize, usize)) {
        let r = piece
            .get(s..e)
            .and_then(|t| vocab.lookup(t))
            .unwrap_or(NONE);
        Vec::push(self, r);
    }
    #[inline]
    fn push_rank(&mut self, rank: u32) {
        Vec::push(self, rank);
    }
}

/// Reusable buffers for long pieces, so one request allocates at most once.
#[derive(Default)]
struct Scratch {
    /// The tokens so far, as `rank | len << 18`.
    tokens: Vec<u32>,
    dead: Vec<u64>,
    /// Prefix hashes for [`longest_match`] (kept to avoid re-zeroing a buffer).
    hashes: Vec<u64>,
    /// Direct-mapped memo of [`Vocab::is_valid_pair_at`]: `(t1, t2, valid)`.
    /// Long pieces are often repetitive, so the same pairs are asked again.
    pairs: Vec<(u32, u32, bool)>,
}

/// Most entries in the pair-validity memo (a power of two); a piece of n bytes
/// gets about n, so short requests do not pay for filling a big memo.
const PAIR_CACHE: usize = 4096;

const LEN_SHIFT: u32 = 18;
const RANK_MASK: u32 = (1 << LEN_SHIFT) - 1;

#[inline(always)]
fn pack(rank: u32, len: usize) -> u32 {
    rank | (len as u32) << LEN_SHIFT
}

#[inline(always)]
fn unpack(t: u32) -> (u32, usize) {
    (t & RANK_MASK, (t >> LEN_SHIFT) as usize)
}

impl Scratch {
    /// Sizes the memo for a piece of `n` bytes (clearing it when it grows).
    fn prepare(&mut self, n: usize) {
        let want = n.next_power_of_two().clamp(64, PAIR_CACHE);
        if self.pairs.len() < want {
            self.pairs.clear();
            self.pairs.resize(want, (NONE, NONE, false));
        }
    }

    #[inline]
    fn valid_pair(&mut self, v: &Vocab, text: &[u8], pos: usize, t1: u32, t2: u32) -> bool {
        let mask = self.pairs.len().wrapping_sub(1);
        let k = (t1.wrapping_mul(0x9e37_79b1) ^ t2).wrapping_mul(0x85eb_ca6b) as usize >> 7 & mask;
        if let Some(&(a, b, ok)) = self.pairs.get(k) {
            if a == t1 && b == t2 {
                return ok;
            }
        }
        let ok = v.is_valid_pair_at(text, pos, unpack(t1), unpack(t2));
        if let Some(e) = self.pairs.get_mut(k) {
            *e = (t1, t2, ok);
        }
        ok
    }
}

impl Tokenizer {
    /// Which vocabulary this is.
    pub fn encoding(&self) -> Encoding {
        self.enc
    }

    /// Number of tokens tiktoken's `encode_ordinary` would produce for `text`.
    pub fn count(&self, text: &str) -> usize {
        let mut sink = Counter(0);
        let mut scratch = Scratch::default();
        for p in pieces(self.enc, text) {
            self.piece(p.as_bytes(), &mut sink, &mut scratch);
        }
        sink.0
    }

    /// The ranks tiktoken's `encode_ordinary` would produce (for tests and tools;
    /// metering only needs [`Tokenizer::count`]).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        let mut scratch = Scratch::default();
        for p in pieces(self.enc, text) {
            self.piece(p.as_bytes(), &mut out, &mut scratch);
        }
        out
    }

    #[inline]
    fn piece<S: Sink>(&self, piece: &[u8], sink: &mut S, scratch: &mut Scratch) {
        let v = self.vocab;
        match piece.len() {
            0 => {}
            1 => sink.push_rank(piece.first().map_or(NONE, |&b| v.byte_rank(b))),
            n => {
                if let Some(r) = v.lookup(piece) {
                    sink.push_rank(r);
                } else if n <= SMALL {
                    small_merge(v, piece, sink);
                } else {
                    backtrack(v, piece, sink, scratch);
                }
            }
        }
    }
}

/// tiktoken's `_byte_pair_merge` on a stack buffer: `parts[i]` is the start of
/// part i and the rank of merging parts i and i+1 (`NONE` if not a token).
fn small_merge<S: Sink>(v: &Vocab, piece: &[u8], sink: &mut S) {
    let n = piece.len();
    let mut start = [0u32; SMALL + 2];
    let mut rank = [NONE; SMALL + 2];
    let rank_of = |s: u32, e: u32| match piece.get(s as usize..e as usize) {
        Some(&[a, b]) => v.lookup2(a, b).unwrap_or(NONE),
        Some(t) => v.lookup(t).unwrap_or(NONE),
        None => NONE,
    };
    let mut len = n + 1;
    for i in 0..=n.min(SMALL) {
        if let (Some(s), Some(r)) = (start.get_mut(i), rank.get_mut(i)) {
            *s = i as u32;
            *r = if i + 2 <= n {
                rank_of(i as u32, i as u32 + 2)
            } else {
                NONE
            };
        }
    }
    loop {
        // Lowest rank, leftmost on ties (the last part has no right neighbour).
        let mut best = (NONE, usize::MAX);
        for (i, &r) in rank.iter().enumerate().take(len - 1) {
            if r < best.0 {
                best = (r, i);
            }
        }
        let i = best.1;
        if best.0 == NONE || i + 1 >= len {
            break;
        }
        // Part i absorbs part i+1; recompute the ranks of pairs touching it.
        let at = |k: usize| start.get(k).copied().unwrap_or(n as u32);
        if i > 0 {
            let r = if i + 2 < len {
                rank_of(at(i - 1), at(i + 2))
            } else {
                NONE
            };
            if let Some(x) = rank.get_mut(i - 1) {
                *x = r;
            }
        }
        let r = if i + 3 < len {
            rank_of(at(i), at(i + 3))
        } else {
            NONE
        };
        if let Some(x) = rank.get_mut(i) {
            *x = r;
        }
        start.copy_within(i + 2..len, i + 1);
        rank.copy_within(i + 2..len, i + 1);
        len -= 1;
    }
    for i in 0..len - 1 {
        let s = start.get(i).copied().unwrap_or(0) as usize;
        let e = start.get(i + 1).copied().unwrap_or(n as u32) as usize;
        sink.push(v, piece, (s, e));
    }
}

/// Longest token that is a prefix of `text` as `rank | len << 18` (`None` only
/// for empty text).
#[inline]
fn longest_match(v: &Vocab, text: &[u8], hashes: &mut Vec<u64>) -> Option<u32> {
    let (&b0, &b1) = match (text.first(), text.get(1)) {
        (Some(a), Some(b)) => (a, b),
        (Some(a), None) => return Some(pack(v.byte_rank(*a), 1)),
        _ => return None,
    };
    let mut bound = v.max_len2(b0, b1).min(text.len());
    for k in [3, 4] {
        if bound >= k {
            bound = bound.min(text.get(..k).map_or(0, |p| v.max_len_prefix(p)).max(k - 1));
        }
    }
    if bound >= 3 {
        // Hash every prefix in one pass, then probe longest first.
        hashes.clear();
        let mut h = hash_start();
        for &b in text.iter().take(bound) {
            h = hash_step(h, b);
            hashes.push(h);
        }
        for l in (3..=bound).rev() {
            let (Some(&h), Some(want)) = (hashes.get(l - 1), text.get(..l)) else {
                continue;
            };
            if let Some(r) = v.lookup_hashed(h, want) {
                return Some(pack(r, l));
            }
        }
    }
    if bound >= 2 {
        if let Some(r) = v.lookup2(b0, b1) {
            return Some(pack(r, 2));
        }
    }
    Some(pack(v.byte_rank(b0), 1))
}

/// The `bpe` crate's backtracking encoder: linear in practice, exact for these
/// vocabularies (checked against tiktoken in the tests, long adversarial runs included).
fn backtrack<S: Sink>(v: &Vocab, text: &[u8], sink: &mut S, scratch: &mut Scratch) {
    scratch.prepare(text.len());
    let mut tokens = std::mem::take(&mut scratch.tokens);
    tokens.clear();
    let mut dead = std::mem::take(&mut scratch.dead);
    dead.clear();
    dead.resize(text.len() / 64 + 1, 0);
    let is_dead = |dead: &[u64], p: usize| dead.get(p / 64).is_some_and(|w| w >> (p % 64) & 1 == 1);

    let mut pos = 0usize;
    let mut hashes = std::mem::take(&mut scratch.hashes);
    let mut next = longest_match(v, text, &mut hashes);
    // Guard against corrupt tables: a correct run takes a few steps per byte.
    let mut budget = text.len().saturating_mul(64).saturating_add(1024);
    while let Some(mut token) = next {
        budget -= 1;
        if budget == 0 {
            // Unreachable with the baked tables; count the rest as single bytes.
            for &b in text.iter().skip(pos) {
                tokens.push(pack(v.byte_rank(b), 1));
            }
            break;
        }
        let last = tokens.last().copied();
        loop {
            let (rank, len) = unpack(token);
            let end = pos + len;
            if len > 0
                && !is_dead(&dead, end)
                && last.is_none_or(|l| scratch.valid_pair(v, text, pos, l, token))
            {
                tokens.push(token);
                pos = end;
                next = longest_match(v, text.get(end..).unwrap_or(&[]), &mut hashes);
                break;
            }
            let (shorter, len) = v.next_prefix_len(rank);
            if shorter != NONE {
                token = pack(shorter, len);
            } else {
                // Nothing fits after `last`: mark this position dead and retry
                // `last` shorter.
                if let Some(w) = dead.get_mut(pos / 64) {
                    *w |= 1 << (pos % 64);
                }
                tokens.pop();
                pos -= last.map_or(0, |l| unpack(l).1);
                next = last;
                break;
            }
        }
    }
    for &t in tokens.iter() {
        sink.push_rank(unpack(t).0);
    }
    scratch.tokens = tokens;
    scratch.dead = dead;
    scratch.hashes = hashes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift as Rng;

    fn reference(enc: Encoding) -> tiktoken_rs::CoreBPE {
        match enc {
            Encoding::O200kBase => tiktoken_rs::o200k_base().unwrap(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base().unwrap(),
        }
    }

    fn check(refs: &[(Encoding, tiktoken_rs::CoreBPE)], text: &str) {
        for (enc, r) in refs {
            let want = r.encode_ordinary(text);
            let got = tokenizer(*enc).encode(text);
            if got != want {
                let show: String = text.chars().take(200).collect();
                panic!(
                    "{enc:?} mismatch on {show:?} (len {}): got {} tokens, want {}",
                    text.len(),
                    got.len(),
                    want.len()
                );
            }
            assert_eq!(tokenizer(*enc).count(text), want.len());
        }
    }

    fn refs() -> Vec<(Encoding, tiktoken_rs::CoreBPE)> {
        vec![
            (Encoding::O200kBase, reference(Encoding::O200kBase)),
            (Encoding::Cl100kBase, reference(Encoding::Cl100kBase)),
        ]
    }

    #[test]
    fn edge_cases_match_tiktoken() {
        let refs = refs();
        let cases = [
            "",
            "a",
            "Hello, world!",
            "<|endoftext|> is ordinary text <|fim_prefix|><|endofprompt|>",
            "It's, it’s, it‘s, IT'S, we'RE, they've, I'm, you'll, he'd, 'ſ, don'T",
            "line1\r\nline2\r\n\r\n\n\rline3\r\r\r",
            "   \t  mixed whitespace before text",
            "\u{3000}全角スペース\u{3000}\u{3000}テスト",
            "e\u{301}e\u{301}e\u{301} combining \u{301}\u{302} marks a\u{308}",
            "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 skin, 🇩🇪🇫🇷 flags",
            "1234567890 12 3.14159 1,000,000 ١٢٣٤٥ 一二三",
            "function foo(bar) {\n    return bar.map(x => x * 2);\n}\n",
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"units\": \"metric\"}}",
            "Привет, мир! Как дела?",
            "مرحبا بالعالم",
            "नमस्ते दुनिया",
            "안녕하세요 세계",
            "Grüße aus München, Straße",
            "trailing spaces   ",
            "  \n  ",
            "x  \n  ",
            "\n\n\n",
            "ǅungla HTTPServer iPhone McDonald's",
        ];
        for c in cases {
            check(&refs, c);
        }
    }

    #[test]
    fn long_runs_match_tiktoken() {
        let refs = refs();
        let n = 20_000;
        let units = [
            "_", "a", "ab", " ", "1", "é", "😀", "-=", "\n", " \n", "aB", "ー", "abc ", "Ǆ",
            "\u{301}",
        ];
        for u in units {
            let s = u.repeat(n / u.len());
            check(&refs, &s);
            check(&refs, &format!("x{s}y"));
        }
    }

    #[test]
    fn random_text_matches_tiktoken() {
        let refs = refs();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let atoms = [
            "the",
            " quick",
            " brown",
            "fox",
            "'s",
            "'",
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "1",
            "23",
            "4567",
            ".",
            ",",
            "!",
            "?",
            "/",
            "//",
            "{",
            "}",
            "\"",
            ":",
            "_",
            "__",
            "-",
            "Ä",
            "ö",
            "ß",
            "é",
            "中",
            "文",
            "の",
            "한",
            "ا",
            "ह",
            "्",
            "ж",
            "Ж",
            "😀",
            "👍🏽",
            "‍",
            "\u{301}",
            "\u{3000}",
            "\u{a0}",
            "A",
            "B",
            "xyz",
            "HTTP",
            "ǅ",
            "ʰ",
            "ſ",
            "K",
            "<|endoftext|>",
        ];
        for _ in 0..400 {
            let len = (rng.next_u64() % 60) as usize;
            let s: String = (0..len).map(|_| rng.pick(&atoms)).collect();
            check(&refs, &s);
        }
        // Long random pieces exercise the backtracking path.
        let letters: Vec<String> = ('a'..='z')
            .chain('À'..='ÿ')
            .filter(|c| c.is_alphabetic())
            .map(String::from)
            .collect();
        let letters: Vec<&str> = letters.iter().map(String::as_str).collect();
        for len in [60, 200, 5_000, 50_000] {
            let s: String = (0..len).map(|_| rng.pick(&letters)).collect();
            check(&refs, &s);
            let s: String = (0..len)
                .map(|_| rng.pick(&["a", "b", "c", "_", "-", "."]))
                .collect();
            check(&refs, &s);
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let t = tokenizer(enc);
            for s in [
                "\u{10ffff}",
                "\u{0}",
                "\u{feff}",
                "\u{fffd}\u{fffd}",
                "\u{e000}",
            ] {
                assert!(t.count(s) >= 1);
            }
        }
    }
}
