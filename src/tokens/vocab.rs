//! Zero-parse BPE vocabularies baked by `build.rs`.
//!
//! Every table is a `&'static [u8]` from `include_bytes!`, read in place with
//! `u32::from_le_bytes`: a VM touches only the pages it needs and pays nothing at
//! start-up, where tiktoken-rs spends ~130 ms decoding base64 into a HashMap.
//! All reads go through `get`, so a corrupt table can give a wrong count but never
//! a panic.

mod tables {
    include!(concat!(env!("OUT_DIR"), "/tables.rs"));
}

pub(crate) use tables::ASCII_CLASS;

use super::table_layout::*;
/// `_offsets` holds the byte offset of every this many ranks (must match `build.rs`).
const OFFSET_STRIDE: usize = 64;
/// Slots per prefix length in the 3/4-byte bound table (must match `build.rs`).
const PREFIX_SLOTS: usize = 1 << 16;
/// No token (a missing prefix or merge).
pub const NONE: u32 = u32::MAX;

/// Running hash state; feed bytes with [`hash_step`], finish with [`Vocab::lookup_hashed`].
#[inline(always)]
pub fn hash_start() -> u64 {
    FNV_OFFSET
}

/// Adds one byte to a running hash.
#[inline(always)]
pub fn hash_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

/// Hash of a whole byte string (as the table was built).
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| hash_step(h, b))
}

/// Up to the first 4 bytes of `key`, little-endian, zero padded (as `build.rs`).
#[inline(always)]
pub fn pack4(key: &[u8]) -> u32 {
    match *key {
        [a, b, c, d, ..] => u32::from_le_bytes([a, b, c, d]),
        [a, b, c] => u32::from_le_bytes([a, b, c, 0]),
        [a, b] => u32::from_le_bytes([a, b, 0, 0]),
        [a] => u32::from(a),
        [] => 0,
    }
}

/// Byte equality without a `memcmp` call (keys are short).
#[inline(always)]
fn eq_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[inline(always)]
fn u32_at(data: &[u8], i: usize) -> u32 {
    match data.get(i * 4..i * 4 + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => NONE,
    }
}

/// One vocabulary's baked tables. `'static` and `Copy`-cheap to share across
/// requests; nothing is computed when it is created.
pub struct Vocab {
    bytes: &'static [u8],
    offsets: &'static [u8],
    table: &'static [u8],
    split: &'static [u8],
    prefix: &'static [u8],
    byte2: &'static [u8],
    maxlen34: &'static [u8],
    byte_rank: [u32; 256],
    bits: u32,
    mask: usize,
    n: usize,
    max_len: usize,
}

/// The `o200k_base` tables (GPT-4o, GPT-4.1, GPT-5, o-series).
pub static O200K: Vocab = Vocab {
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_bytes.bin")),
    offsets: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_offsets.bin")),
    table: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_table.bin")),
    split: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_split.bin")),
    prefix: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_prefix.bin")),
    byte2: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_byte2.bin")),
    maxlen34: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_maxlen34.bin")),
    byte_rank: tables::O200K_BYTE_RANK,
    bits: tables::O200K_BITS,
    mask: (1 << tables::O200K_BITS) - 1,
    n: tables::O200K_N,
    max_len: tables::O200K_MAX_LEN,
};

/// The `cl100k_base` tables (GPT-4, GPT-3.5-turbo, text-embedding-3).
pub static CL100K: Vocab = Vocab {
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_bytes.bin")),
    offsets: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_offsets.bin")),
    table: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_table.bin")),
    split: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_split.bin")),
    prefix: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_prefix.bin")),
    byte2: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_byte2.bin")),
    maxlen34: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_maxlen34.bin")),
    byte_rank: tables::CL100K_BYTE_RANK,
    bits: tables::CL100K_BITS,
    mask: (1 << tables::CL100K_BITS) - 1,
    n: tables::CL100K_N,
    max_len: tables::CL100K_MAX_LEN,
};

impl Vocab {
    /// Number of ranks (including any empty holes), for tests and diagnostics.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Never true for the baked vocabularies; present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Longest token in bytes: longer strings are never looked up.
    #[inline(always)]
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The bytes of `rank` (empty for unknown ranks). Not for hot paths: only
    /// every 64th offset is stored, the rest is summed from the token lengths.
    pub fn token(&self, rank: u32) -> &'static [u8] {
        let r = rank as usize;
        if r >= self.n {
            return &[];
        }
        let base = r & !(OFFSET_STRIDE - 1);
        let s = (base..r).fold(
            u32_at(self.offsets, base / OFFSET_STRIDE) as usize,
            |s, k| s + self.token_len(k as u32),
        );
        self.bytes.get(s..s + self.token_len(rank)).unwrap_or(&[])
    }

    /// Length in bytes of `rank` (0 for unknown ranks).
    #[inline(always)]
    pub fn token_len(&self, rank: u32) -> usize {
        let ((a, la), (_, lb)) = self.split_len(rank);
        if a == rank {
            la
        } else {
            la + lb
        }
    }

    /// Rank of a single byte (every byte is a token in both vocabularies).
    #[inline(always)]
    pub fn byte_rank(&self, b: u8) -> u32 {
        self.byte_rank.get(usize::from(b)).copied().unwrap_or(0)
    }

    /// Rank of `bytes`, or `None` when it is not a token.
    #[inline]
    pub fn lookup(&self, bytes: &[u8]) -> Option<u32> {
        match *bytes {
            [a] => Some(self.byte_rank(a)),
            [a, b] => self.lookup2(a, b),
            _ if bytes.len() > self.max_len => None,
            _ => self.lookup_hashed(hash_bytes(bytes), bytes),
        }
    }

    /// Rank of `key` (3 bytes or more; shorter keys use [`Vocab::lookup`]),
    /// whose running hash (see [`hash_step`]) is `h`.
    #[inline]
    pub fn lookup_hashed(&self, h: u64, key: &[u8]) -> Option<u32> {
        let len = key.len();
        if !(3..=self.max_len).contains(&len) {
            return None;
        }
        let h = h.wrapping_mul(FINAL_MUL);
        let fp = (h >> 26) as u32 & 0x7ff;
        let word = pack4(key);
        let mut slot = (h >> (64 - self.bits)) as usize;
        // Robin Hood order: every entry at distance `d` from here whose own
        // distance is below `d` would have displaced ours, so the key is absent.
        // `disp` reaching 127 only happens in a corrupt table.
        let mut want = (len as u32 - 1) << RANK_BITS;
        for _ in 0..128 {
            let (check, meta) = match self.table.get(slot * 8..slot * 8 + 8) {
                Some(&[a, b, c, d, e, f, g, i]) => (
                    u32::from_le_bytes([a, b, c, d]),
                    u32::from_le_bytes([e, f, g, i]),
                ),
                _ => return None,
            };
            if meta == EMPTY || meta >> DISP_SHIFT < want >> DISP_SHIFT {
                return None;
            }
            if meta & !RANK_MASK == want {
                if len <= 4 {
                    if check == word {
                        return Some(meta & RANK_MASK);
                    }
                } else if check >> OFFSET_BITS == fp {
                    let off = (check & OFFSET_MASK) as usize;
                    if self
                        .bytes
                        .get(off..off + len)
                        .is_some_and(|t| eq_bytes(t, key))
                    {
                        return Some(meta & RANK_MASK);
                    }
                }
            }
            slot = (slot + 1) & self.mask;
            want += 1 << DISP_SHIFT;
        }
        None
    }

    /// Rank of the two-byte string `a b`, if it is a token (a direct table read).
    #[inline(always)]
    pub fn lookup2(&self, a: u8, b: u8) -> Option<u32> {
        let r = self.byte2_entry(a, b) & RANK_MASK;
        (r != RANK_MASK).then_some(r)
    }

    #[inline(always)]
    fn byte2_entry(&self, a: u8, b: u8) -> u32 {
        u32_at(self.byte2, usize::from(a) << 8 | usize::from(b))
    }

    /// Longest token length starting with bytes `a`, `b` (0 if none).
    #[inline(always)]
    pub fn max_len2(&self, a: u8, b: u8) -> usize {
        (self.byte2_entry(a, b) >> RANK_BITS & 0xff) as usize
    }

    /// Upper bound on the length of a token starting with `prefix` (3 or 4 bytes;
    /// the table is hashed, so the bound may be loose but is never too small).
    #[inline(always)]
    pub fn max_len_prefix(&self, prefix: &[u8]) -> usize {
        let k = prefix.len();
        if !(3..=4).contains(&k) {
            return self.max_len;
        }
        let slot = (hash_bytes(prefix).wrapping_mul(FINAL_MUL) >> 48) as usize;
        usize::from(
            self.maxlen34
                .get((k - 3) * PREFIX_SLOTS + slot)
                .copied()
                .unwrap_or(u8::MAX),
        )
    }

    /// Longest token that is a proper prefix of `rank`, or [`NONE`].
    #[inline(always)]
    pub fn next_prefix(&self, rank: u32) -> u32 {
        self.next_prefix_len(rank).0
    }

    /// [`Vocab::next_prefix`] with its length in bytes (`(NONE, 0)` if none).
    #[inline(always)]
    pub fn next_prefix_len(&self, rank: u32) -> (u32, usize) {
        rank_len(u32_at(self.prefix, rank as usize))
    }

    /// The pair BPE merges into `rank`; `(rank, rank)` for tokens that are not merges.
    #[inline(always)]
    pub fn split(&self, rank: u32) -> (u32, u32) {
        let (a, b) = self.split_len(rank);
        (a.0, b.0)
    }

    /// [`Vocab::split`] with the length in bytes of each half.
    #[inline(always)]
    pub fn split_len(&self, rank: u32) -> ((u32, usize), (u32, usize)) {
        let r = rank as usize;
        (
            rank_len(u32_at(self.split, 2 * r)),
            rank_len(u32_at(self.split, 2 * r + 1)),
        )
    }

    /// The token that BPE makes by merging exactly `t1` with `t2`, if any.
    #[inline]
    pub fn pair(&self, t1: u32, t2: u32) -> Option<u32> {
        let (a, b) = (self.token(t1), self.token(t2));
        if a.len() + b.len() > self.max_len || a.is_empty() || b.is_empty() {
            return None;
        }
        let mut key = [0u8; 256];
        let joined = key.get_mut(..a.len() + b.len())?;
        let (x, y) = joined.split_at_mut(a.len());
        x.copy_from_slice(a);
        y.copy_from_slice(b);
        let r = self.lookup(joined)?;
        (self.split(r) == (t1, t2)).then_some(r)
    }

    /// [`Vocab::pair`] for `t1` of length `l1` ending at `text[pos]` and `t2` of
    /// length `l2` starting there: the merged bytes are read from the text.
    #[inline(always)]
    fn pair_at(
        &self,
        text: &[u8],
        pos: usize,
        (t1, l1): (u32, usize),
        (t2, l2): (u32, usize),
    ) -> Option<u32> {
        let key = text.get(pos.checked_sub(l1)?..pos + l2)?;
        let r = self.lookup(key)?;
        (self.split(r) == (t1, t2)).then_some(r)
    }

    /// Would BPE, run on the bytes of `t1` followed by those of `t2`, end as exactly
    /// `[t1, t2]`? Undo merges on both sides of the split point and check that no
    /// merge across it would have won first (GitHub `bpe` crate's construction).
    /// `t1` (with its length) must end at `text[pos]` and `t2` start there.
    pub fn is_valid_pair_at(
        &self,
        text: &[u8],
        pos: usize,
        mut t1: (u32, usize),
        mut t2: (u32, usize),
    ) -> bool {
        let mut limit = u32::MAX;
        // Each round strictly shrinks a token; the bound only guards corrupt tables.
        for _ in 0..2 * (self.max_len + 1) {
            if let Some(combined) = self.pair_at(text, pos, t1, t2) {
                if combined < limit {
                    return false;
                }
            }
            if t1.0 > t2.0 {
                limit = t1.0;
                t1 = self.split_len(t1.0).1;
                if t1.0 == limit {
                    limit = t2.0.wrapping_add(1);
                    t2 = self.split_len(t2.0).0;
                    if t2.0.wrapping_add(1) == limit {
                        return true;
                    }
                }
            } else {
                limit = t2.0.wrapping_add(1);
                t2 = self.split_len(t2.0).0;
                if t2.0.wrapping_add(1) == limit {
                    limit = t1.0;
                    t1 = self.split_len(t1.0).1;
                    if t1.0 == limit {
                        return true;
                    }
                }
            }
        }
        true
    }
}

/// Unpacks a `rank | len << 18` word of `_split` / `_prefix`.
#[inline(always)]
fn rank_len(w: u32) -> (u32, usize) {
    if w == NONE {
        (NONE, 0)
    } else {
        (w & RANK_MASK, (w >> RANK_BITS) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip() {
        for v in [&O200K, &CL100K] {
            assert!(v.len() > 100_000);
            for r in (0..v.len() as u32).step_by(97) {
                let t = v.token(r);
                if !t.is_empty() {
                    assert_eq!(v.lookup(t), Some(r));
                }
            }
            for b in 0..=255u8 {
                assert_eq!(v.lookup(&[b]), Some(v.byte_rank(b)));
            }
            assert_eq!(v.lookup(b"<|endoftext|>"), None);
        }
    }
}
