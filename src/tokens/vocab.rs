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

/// FNV-1a, byte at a time, so the hash of every prefix of a string comes for free
/// while probing for the longest token (must match `build.rs`).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FINAL_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
const RANK_BITS: u32 = 18;
const RANK_MASK: u32 = (1 << RANK_BITS) - 1;
const EMPTY: u32 = u32::MAX;
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
    maxlen2: &'static [u8],
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
    maxlen2: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_maxlen2.bin")),
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
    maxlen2: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_maxlen2.bin")),
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

    /// The bytes of `rank` (empty for unknown ranks).
    #[inline(always)]
    pub fn token(&self, rank: u32) -> &'static [u8] {
        let r = rank as usize;
        let (s, e) = (
            u32_at(self.offsets, r) as usize,
            u32_at(self.offsets, r + 1) as usize,
        );
        self.bytes.get(s..e).unwrap_or(&[])
    }

    /// Length in bytes of `rank` (0 for unknown ranks).
    #[inline(always)]
    pub fn token_len(&self, rank: u32) -> usize {
        let r = rank as usize;
        (u32_at(self.offsets, r + 1) as usize).saturating_sub(u32_at(self.offsets, r) as usize)
    }

    /// Rank of a single byte (every byte is a token in both vocabularies).
    #[inline(always)]
    pub fn byte_rank(&self, b: u8) -> u32 {
        self.byte_rank[usize::from(b)]
    }

    /// Rank of `bytes`, or `None` when it is not a token.
    #[inline]
    pub fn lookup(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() > self.max_len {
            return None;
        }
        self.lookup_hashed(hash_bytes(bytes), |t| t == bytes)
    }

    /// Rank of the string whose running hash is `h`; `eq` confirms a candidate's
    /// bytes (so callers can hash a concatenation without building it).
    #[inline]
    pub fn lookup_hashed(&self, h: u64, eq: impl Fn(&[u8]) -> bool) -> Option<u32> {
        let h = h.wrapping_mul(FINAL_MUL);
        let tag = ((h >> 20) as u32) & ((1 << (32 - RANK_BITS)) - 1);
        let mut slot = (h >> (64 - self.bits)) as usize;
        // Bounded so a corrupt (full) table cannot loop forever.
        for _ in 0..=self.mask {
            let e = u32_at(self.table, slot);
            if e == EMPTY {
                return None;
            }
            if e >> RANK_BITS == tag {
                let rank = e & RANK_MASK;
                if eq(self.token(rank)) {
                    return Some(rank);
                }
            }
            slot = (slot + 1) & self.mask;
        }
        None
    }

    /// Longest token length starting with bytes `a`, `b` (0 if none).
    #[inline(always)]
    pub fn max_len2(&self, a: u8, b: u8) -> usize {
        usize::from(
            self.maxlen2
                .get(usize::from(a) << 8 | usize::from(b))
                .copied()
                .unwrap_or(0),
        )
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
        u32_at(self.prefix, rank as usize)
    }

    /// The pair BPE merges into `rank`; `(rank, rank)` for tokens that are not merges.
    #[inline(always)]
    pub fn split(&self, rank: u32) -> (u32, u32) {
        let r = rank as usize;
        (u32_at(self.split, 2 * r), u32_at(self.split, 2 * r + 1))
    }

    /// The token that BPE makes by merging exactly `t1` with `t2`, if any.
    #[inline]
    pub fn pair(&self, t1: u32, t2: u32) -> Option<u32> {
        let (a, b) = (self.token(t1), self.token(t2));
        if a.len() + b.len() > self.max_len || a.is_empty() || b.is_empty() {
            return None;
        }
        let h = b.iter().fold(hash_bytes(a), |h, &x| hash_step(h, x));
        let r = self.lookup_hashed(h, |t| {
            t.len() == a.len() + b.len()
                && t.get(..a.len()) == Some(a)
                && t.get(a.len()..) == Some(b)
        })?;
        (self.split(r) == (t1, t2)).then_some(r)
    }

    /// Would BPE, run on the bytes of `t1` followed by those of `t2`, end as exactly
    /// `[t1, t2]`? Undo merges on both sides of the split point and check that no
    /// merge across it would have won first (GitHub `bpe` crate's construction).
    pub fn is_valid_pair(&self, mut t1: u32, mut t2: u32) -> bool {
        let mut limit = u32::MAX;
        // Each round strictly shrinks a token; the bound only guards corrupt tables.
        for _ in 0..2 * (self.max_len + 1) {
            if let Some(combined) = self.pair(t1, t2) {
                if combined < limit {
                    return false;
                }
            }
            if t1 > t2 {
                limit = t1;
                t1 = self.split(t1).1;
                if t1 == limit {
                    limit = t2.wrapping_add(1);
                    t2 = self.split(t2).0;
                    if t2.wrapping_add(1) == limit {
                        return true;
                    }
                }
            } else {
                limit = t2.wrapping_add(1);
                t2 = self.split(t2).0;
                if t2.wrapping_add(1) == limit {
                    limit = t1;
                    t1 = self.split(t1).1;
                    if t1 == limit {
                        return true;
                    }
                }
            }
        }
        true
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
