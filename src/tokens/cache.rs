//! A per-VM cache of exact token counts for text seen before.
//!
//! Chat traffic resends the same system prompt and the whole conversation history
//! on every turn, so most of a typical request's text was already tokenized by an
//! earlier request on the same worker. Counting it again costs ~14 µs per KB in
//! Envoy's V8; hashing it to find the earlier count costs about a tenth of that.
//!
//! The table is direct-mapped (a new entry overwrites whatever shared its slot), a
//! fixed 4096 slots allocated once per VM, so it never grows and needs no eviction
//! pass. Keys are SipHash-1-3 with per-VM random keys (`RandomState`, seeded by the
//! host's WASI `random_get`) plus the text's length and the vocabulary: a client
//! cannot aim a crafted text at another text's slot to have its prompt under-counted.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use super::bpe::Tokenizer;

/// Slots in the table (a power of two); 24 bytes each.
const SLOTS: usize = 4096;
/// Shorter text is tokenized directly: hashing would save little.
pub const MIN_CACHED_BYTES: usize = 64;

#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    len: u32,
    count: u32,
}

struct Table {
    keys: RandomState,
    slots: Vec<Slot>,
    hits: u64,
    misses: u64,
}

thread_local! {
    // wasm32-wasip1 VMs are single-threaded: this is one table per VM.
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// Exact token count of `text` in `tok`'s vocabulary, from the cache when this VM
/// counted the same text before. The result is always what `tok.count(text)` gives.
pub fn count(tok: &Tokenizer, text: &str) -> u64 {
    let Ok(len) = u32::try_from(text.len()) else {
        return tok.count(text) as u64;
    };
    if text.len() < MIN_CACHED_BYTES {
        return tok.count(text) as u64;
    }
    TABLE.with(|cell| {
        let Ok(mut guard) = cell.try_borrow_mut() else {
            return tok.count(text) as u64;
        };
        let table = guard.get_or_insert_with(|| Table {
            keys: RandomState::new(),
            slots: vec![Slot::default(); SLOTS],
            hits: 0,
            misses: 0,
        });
        let mut h = table.keys.build_hasher();
        h.write_usize(std::ptr::from_ref(tok) as usize);
        h.write(text.as_bytes());
        let hash = h.finish();
        let index = (hash as usize) & (SLOTS - 1);
        if let Some(slot) = table.slots.get(index) {
            if slot.hash == hash && slot.len == len {
                table.hits += 1;
                return u64::from(slot.count);
            }
        }
        table.misses += 1;
        let n = tok.count(text);
        if let (Ok(count), Some(slot)) = (u32::try_from(n), table.slots.get_mut(index)) {
            *slot = Slot { hash, len, count };
        }
        n as u64
    })
}

/// Hits and misses of this VM's (this thread's) table, for tests and benchmarks.
#[doc(hidden)]
pub fn stats() -> (u64, u64) {
    TABLE.with(|cell| {
        cell.try_borrow()
            .ok()
            .and_then(|t| t.as_ref().map(|t| (t.hits, t.misses)))
            .unwrap_or((0, 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift;
    use crate::tokens::{bpe, Encoding};

    #[test]
    fn cached_counts_equal_fresh_counts() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let words = [
            "hello",
            " world",
            "的",
            " 🙂",
            "\n\n",
            "  ",
            "x=1;",
            " Réponse",
            "123",
        ];
        let texts: Vec<String> = (0..300)
            .map(|_| {
                let n = 10 + (rng.next_u64() % 80) as usize;
                (0..n).map(|_| rng.pick(&words)).collect()
            })
            .collect();
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let tok = bpe::tokenizer(enc);
            for round in 0..2 {
                for t in &texts {
                    assert_eq!(count(tok, t), tok.count(t) as u64, "round {round}: {t:?}");
                }
            }
        }
    }

    #[test]
    fn repeated_text_hits_and_vocabularies_do_not_share_entries() {
        let text = "You are a careful assistant. Answer in one sentence, and cite sources.";
        assert!(text.len() >= MIN_CACHED_BYTES);
        let o200k = bpe::tokenizer(Encoding::O200kBase);
        let cl100k = bpe::tokenizer(Encoding::Cl100kBase);
        let (h0, m0) = stats();
        let a = count(o200k, text);
        let (h1, m1) = stats();
        assert_eq!((h1 - h0, m1 - m0), (0, 1));
        assert_eq!(count(o200k, text), a);
        let (h2, _) = stats();
        assert_eq!(h2 - h1, 1, "second count of the same text is a hit");
        assert_eq!(count(cl100k, text), cl100k.count(text) as u64);
        let (h3, m3) = stats();
        assert_eq!(
            (h3 - h2, m3 - m1),
            (0, 1),
            "another vocabulary is its own entry"
        );
        let short = "hi there";
        assert_eq!(count(o200k, short), o200k.count(short) as u64);
        assert_eq!(stats(), (h3, m3), "short text bypasses the table");
    }
}
