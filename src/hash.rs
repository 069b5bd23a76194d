//! A seeded, fast hasher for the small maps the request path looks up several
//! times per request (held limit refunds, metric ids).
//!
//! std's `HashMap` hashes with SipHash-1-3, which costs several hundred wasm
//! operators for a 50-byte counter key; a limited request made four such lookups
//! and the rate-limit metric four more. This one takes a 64-bit multiply and a
//! rotate per eight bytes (the FxHash shape) and murmur3's finaliser, started and
//! finished with a per-VM random seed (from std's `RandomState`, so from the
//! host's WASI `random_get`), so which keys collide depends on a secret. It is not
//! a keyed cryptographic hash: the maps using it compare whole keys, so a
//! collision can only cost time, never mix two entries. Where a hash alone decides
//! a result (the token cache), SipHash stays.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// 64-bit constants (digits of pi, as foldhash takes them): the seed's source and
/// the per-word multiplier (made odd).
const MIX: [u64; 2] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];

/// A `HashMap` with the fast seeded hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;

/// Builds [`FastHasher`]s with this map's random seed.
#[derive(Clone, Debug)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        FastState {
            seed: RandomState::new().hash_one(MIX[0]) | 1,
        }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            acc: self.seed,
            seed: self.seed,
        }
    }
}

/// The hasher [`FastState`] builds: one multiply per eight bytes.
#[derive(Clone, Debug)]
pub struct FastHasher {
    acc: u64,
    seed: u64,
}

impl FastHasher {
    /// One 64-bit multiply per word (a 128-bit one is a library call in wasm);
    /// the seed is folded in non-linearly by [`Hasher::finish`] and the start.
    fn mix(&mut self, word: u64) {
        self.acc = (self.acc.rotate_left(26) ^ word).wrapping_mul(MIX[1] | 1);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        if let Some(dst) = w.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        // The length goes in too, so "ab" and "ab\0" differ.
        self.mix(u64::from_le_bytes(w) ^ ((bytes.len() as u64) << 56));
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn finish(&self) -> u64 {
        // murmur3's 64-bit finaliser, over the state and the seed.
        let mut h = self.acc ^ self.seed.rotate_left(32);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(s: &FastState, v: &str) -> u64 {
        s.hash_one(v)
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        let s = FastState::default();
        assert_eq!(
            hash(&s, "tollgate/limits/v2/a"),
            hash(&s, "tollgate/limits/v2/a")
        );
        let mut seen = std::collections::HashSet::new();
        // Keys differing in one byte, in length, or by a trailing NUL all differ.
        for i in 0..2000u32 {
            assert!(seen.insert(hash(&s, &format!("tollgate/limits/v2/rule/t60000/c{i}"))));
        }
        assert_ne!(hash(&s, "ab"), hash(&s, "ab\0"));
        assert_ne!(hash(&s, ""), hash(&s, "\0"));
        assert_ne!(s.hash_one(1u32), s.hash_one(2u32));
    }

    #[test]
    fn seeds_differ_between_maps() {
        let (a, b) = (FastState::default(), FastState::default());
        assert_ne!(hash(&a, "same key"), hash(&b, "same key"));
    }

    #[test]
    fn a_map_with_it_behaves_like_a_map() {
        let mut m: FastMap<String, usize> = FastMap::default();
        for i in 0..500 {
            m.insert(format!("k{i}"), i);
        }
        assert_eq!(m.len(), 500);
        assert!((0..500).all(|i| m.get(format!("k{i}").as_str()) == Some(&i)));
        assert_eq!(m.get("k500"), None);
    }
}
