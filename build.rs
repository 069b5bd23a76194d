//! Bakes the tokenizer tables into `OUT_DIR` so a VM starts with zero parsing.
//!
//! tiktoken-rs needs ~130 ms per VM to base64-decode its vocabularies and build a
//! HashMap. Here that work happens once, at build time, and the result is written as
//! flat little-endian arrays that `src/tokens/vocab.rs` reads in place through
//! `include_bytes!`. Per vocabulary (`o200k`, `cl100k`):
//!
//! * `<enc>_bytes.bin`   every token's bytes, concatenated in rank order;
//! * `<enc>_offsets.bin` u32 start in `_bytes` of every 64th rank;
//! * `<enc>_table.bin`   open-addressing hash table of `[check, meta]` u32 pairs;
//! * `<enc>_split.bin`   u32 pairs: the two tokens BPE merges into each rank;
//! * `<enc>_prefix.bin`  u32: the longest shorter token that prefixes each rank
//!   (these two store `rank | len << 18`);
//! * `<enc>_byte2.bin`   u32 per two bytes: their rank, longest token starting with them.
//!
//! plus `unicode_*.bin`, a two-level table of the character classes the
//! pretokenizer regexes use, and `tables.rs` with the constants.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

#[allow(dead_code)]
#[path = "src/tokens/table_layout.rs"]
mod table_layout;
use table_layout::*;
/// Ranks per stored offset in `<enc>_offsets.bin` (must match `vocab.rs`).
const OFFSET_STRIDE: usize = 64;

fn hash(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h.wrapping_mul(FINAL_MUL)
}

/// The two words of a hash slot (must match `vocab.rs`); only tokens of 3 or
/// more bytes are in the table (shorter ones are read from direct tables):
/// * meta: `rank | (len - 1) << 18 | disp << 25`, `disp` = distance from the
///   slot the hash picks (Robin Hood order: a lookup stops at a smaller one);
/// * check: tokens of up to 4 bytes store their bytes (little-endian, zero
///   padded), so a hit needs nothing else; longer ones store
///   `offset | fingerprint << 21` (11 more bits of the hash, then the bytes at
///   `offset` confirm).
fn slot_words(h: u64, t: &[u8], offset: u32, rank: u32) -> (u32, u32) {
    let meta = rank | (t.len() as u32 - 1) << RANK_BITS;
    let check = if t.len() <= 4 {
        let mut w = [0u8; 4];
        w[..t.len()].copy_from_slice(t);
        u32::from_le_bytes(w)
    } else {
        offset | ((h >> 26) as u32 & 0x7ff) << OFFSET_BITS
    };
    (check, meta)
}

/// Slots per prefix length in `<enc>_maxlen34.bin` (must match `vocab.rs`).
const PREFIX_SLOTS: usize = 1 << 16;

fn prefix_slot(prefix: &[u8]) -> usize {
    (hash(prefix) >> 48) as usize
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = std::env::var_os("OUT_DIR").expect("OUT_DIR");
    let out = Path::new(&out_dir);
    let mut consts = String::new();
    let o200k = tiktoken_rs::o200k_base().expect("o200k_base");
    bake_vocab("O200K", "o200k", &o200k, out, &mut consts);
    drop(o200k);
    let cl100k = tiktoken_rs::cl100k_base().expect("cl100k_base");
    bake_vocab("CL100K", "cl100k", &cl100k, out, &mut consts);
    drop(cl100k);
    bake_unicode(out, &mut consts);
    std::fs::write(out.join("tables.rs"), consts).expect("write tables.rs");
}

fn put_u32s(path: &Path, values: &[u32]) {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write table");
}

fn bake_vocab(
    upper: &str,
    lower: &str,
    bpe: &tiktoken_rs::CoreBPE,
    out: &Path,
    consts: &mut String,
) {
    // Special tokens are encoded as ordinary text by the caller, so leave them out.
    let specials: HashSet<u32> = bpe
        .special_tokens()
        .into_iter()
        .flat_map(|s| bpe.encode_with_special_tokens(s))
        .collect();
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut n = 0usize;
    for rank in 0..(1u32 << RANK_BITS) - 1 {
        if specials.contains(&rank) {
            tokens.push(Vec::new());
            continue;
        }
        match bpe.decode_bytes(&[rank]) {
            Ok(b) if !b.is_empty() => {
                tokens.push(b);
                n = rank as usize + 1;
            }
            _ => tokens.push(Vec::new()),
        }
    }
    tokens.truncate(n);
    let by_bytes: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    let max_len = tokens.iter().map(Vec::len).max().unwrap_or(0);
    assert!(max_len <= 255, "token longer than 255 bytes");

    // Concatenated bytes + offsets.
    let mut all = Vec::new();
    let mut offsets = Vec::with_capacity(n + 1);
    for t in &tokens {
        offsets.push(all.len() as u32);
        all.extend_from_slice(t);
    }
    offsets.push(all.len() as u32);
    std::fs::write(out.join(format!("{lower}_bytes.bin")), &all).expect("write bytes");
    // Only every 64th offset: lookups find bytes through the hash slots, and
    // `Vocab::token` sums the lengths in `_split` from the nearest stored one.
    let sparse: Vec<u32> = offsets.iter().copied().step_by(OFFSET_STRIDE).collect();
    put_u32s(&out.join(format!("{lower}_offsets.bin")), &sparse);

    // Open-addressing table of 8-byte slots `[check, meta]` (see `vocab.rs`),
    // Robin Hood ordered so a miss ends after a few slots even at load ~0.75.
    assert!(
        all.len() < 1 << OFFSET_BITS,
        "{lower}: token bytes too large"
    );
    let long = tokens.iter().filter(|t| t.len() >= 3).count();
    let mut bits = 1u32;
    while (1usize << bits) * 3 < long * 4 {
        bits += 1;
    }
    let mask = (1usize << bits) - 1;
    let mut table = vec![EMPTY; 2 << bits];
    for (rank, t) in tokens.iter().enumerate() {
        if t.len() < 3 {
            continue;
        }
        let h = hash(t);
        let (mut check, mut meta) = slot_words(h, t, offsets[rank], rank as u32);
        let mut slot = (h >> (64 - bits)) as usize;
        let mut disp = 0usize;
        loop {
            assert!(
                disp <= MAX_DISP,
                "{lower}: hash clustering, pick another FINAL_MUL"
            );
            if table[2 * slot + 1] == EMPTY {
                table[2 * slot] = check;
                table[2 * slot + 1] = meta | (disp as u32) << DISP_SHIFT;
                break;
            }
            let theirs = (table[2 * slot + 1] >> DISP_SHIFT) as usize;
            if theirs < disp {
                let (c, m) = (table[2 * slot], table[2 * slot + 1]);
                table[2 * slot] = check;
                table[2 * slot + 1] = meta | (disp as u32) << DISP_SHIFT;
                check = c;
                meta = m & !(u32::MAX << DISP_SHIFT);
                disp = theirs;
            }
            slot = (slot + 1) & mask;
            disp += 1;
        }
    }
    put_u32s(&out.join(format!("{lower}_table.bin")), &table);

    // Every two-byte string: its rank if it is a token (low 18 bits, all ones if
    // not) and the longest token starting with it (bits 18..26), read directly.
    let mut byte2 = vec![RANK_MASK; 65536];
    for (rank, t) in tokens.iter().enumerate() {
        if t.len() >= 2 {
            let i = usize::from(t[0]) << 8 | usize::from(t[1]);
            let maxlen = (byte2[i] >> RANK_BITS).max(t.len() as u32);
            byte2[i] = (byte2[i] & RANK_MASK) | maxlen << RANK_BITS;
            if t.len() == 2 {
                byte2[i] = (byte2[i] & !RANK_MASK) | rank as u32;
            }
        }
    }
    put_u32s(&out.join(format!("{lower}_byte2.bin")), &byte2);
    // Same for 3- and 4-byte prefixes, keyed by a hash (collisions only loosen the
    // bound): most probes for a longest match are cache misses, so cut them early.
    let mut maxlen34 = vec![0u8; 2 * PREFIX_SLOTS];
    for t in &tokens {
        for k in [3usize, 4] {
            if t.len() >= k {
                let i = (k - 3) * PREFIX_SLOTS + prefix_slot(&t[..k]);
                maxlen34[i] = maxlen34[i].max(t.len() as u8);
            }
        }
    }
    std::fs::write(out.join(format!("{lower}_maxlen34.bin")), &maxlen34).expect("write maxlen34");

    let mut byte_rank = [0u32; 256];
    for (b, r) in byte_rank.iter_mut().enumerate() {
        *r = *by_bytes.get(&[b as u8][..]).expect("every byte is a token");
    }

    // Longest proper prefix that is itself a token (the backtracking encoder's fallback).
    let prefix: Vec<u32> = tokens
        .iter()
        .map(|t| {
            (1..t.len())
                .rev()
                .find_map(|l| by_bytes.get(&t[..l]).copied())
                .unwrap_or(u32::MAX)
        })
        .collect();

    // Reverse-engineer the merge that produced each token (as in GitHub's `bpe`
    // crate): the pair BPE itself would pick when encoding the token's bytes.
    let mut split: Vec<(u32, u32)> = Vec::with_capacity(n);
    let mut pair_lookup: HashMap<(u32, u32), u32> = HashMap::new();
    for (id, t) in tokens.iter().enumerate() {
        let id = id as u32;
        let mut found = None;
        let mut t1 = prefix.get(id as usize).copied().unwrap_or(u32::MAX);
        while t1 != u32::MAX {
            let l1 = tokens[t1 as usize].len();
            if let Some(&t2) = by_bytes.get(&t[l1..]) {
                if t1 < id && t2 < id && valid_pair(&pair_lookup, &split, t1, t2) {
                    found = Some((t1, t2));
                    break;
                }
            }
            t1 = prefix[t1 as usize];
        }
        match found {
            Some(p) => {
                pair_lookup.insert(p, id);
                split.push(p);
            }
            None => split.push((id, id)),
        }
    }
    // Each rank also carries its length in bits 18.. so the encoder never needs
    // `_offsets` to walk merges or prefixes.
    let with_len = |r: u32| match tokens.get(r as usize) {
        Some(t) => r | (t.len() as u32) << RANK_BITS,
        None => u32::MAX,
    };
    let mut flat = Vec::with_capacity(n * 2);
    for (a, b) in &split {
        flat.push(with_len(*a));
        flat.push(with_len(*b));
    }
    put_u32s(&out.join(format!("{lower}_split.bin")), &flat);
    let prefix: Vec<u32> = prefix.iter().map(|&r| with_len(r)).collect();
    put_u32s(&out.join(format!("{lower}_prefix.bin")), &prefix);

    let _ = writeln!(
        consts,
        "/// Ranks in the {lower} vocabulary (holes for special tokens are empty)."
    );
    let _ = writeln!(consts, "pub const {upper}_N: usize = {n};");
    let _ = writeln!(consts, "/// log2 of the {lower} hash table size.");
    let _ = writeln!(consts, "pub const {upper}_BITS: u32 = {bits};");
    let _ = writeln!(consts, "/// Longest {lower} token in bytes.");
    let _ = writeln!(consts, "pub const {upper}_MAX_LEN: usize = {max_len};");
    let _ = writeln!(consts, "/// Rank of each single byte in {lower}.");
    let _ = writeln!(
        consts,
        "pub const {upper}_BYTE_RANK: [u32; 256] = {byte_rank:?};"
    );
}

/// Character classes (bit flags) the pretokenizers need; must match `pretokenize.rs`.
const CLASSES: [(&str, u8); 5] = [
    (r"\p{L}", 1),
    (r"\p{N}", 2),
    (r"\s", 4),
    (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", 8),
    (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", 16),
];

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("class pattern");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("unexpected HIR for {pattern}: {other:?}"),
    }
}

fn bake_unicode(out: &Path, consts: &mut String) {
    let mut cls = vec![0u8; 0x11_0000];
    for (pattern, bit) in CLASSES {
        for (lo, hi) in class_ranges(pattern) {
            for c in lo..=hi {
                cls[c as usize] |= bit;
            }
        }
    }
    // The contraction suffixes are matched case-insensitively by hand in
    // pretokenize.rs; fail the build if Unicode case folding ever adds letters.
    for (letter, expect) in [
        ('s', &['S', 's', '\u{17f}'][..]),
        ('t', &['T', 't']),
        ('d', &['D', 'd']),
        ('m', &['M', 'm']),
        ('l', &['L', 'l']),
        ('v', &['V', 'v']),
        ('r', &['R', 'r']),
        ('e', &['E', 'e']),
    ] {
        let mut got: Vec<char> = Vec::new();
        for (lo, hi) in class_ranges(&format!("(?i:[{letter}])")) {
            for c in lo..=hi {
                got.extend(char::from_u32(c));
            }
        }
        let mut want = expect.to_vec();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "case folding of {letter} changed");
    }
    // Two-level table: 256-codepoint blocks, deduplicated.
    let mut index: Vec<u32> = Vec::with_capacity(0x1100);
    let mut blocks: Vec<u8> = Vec::new();
    let mut seen: HashMap<&[u8], u32> = HashMap::new();
    for block in cls.chunks(256) {
        let id = *seen.entry(block).or_insert_with(|| {
            let id = (blocks.len() / 256) as u32;
            blocks.extend_from_slice(block);
            id
        });
        index.push(id);
    }
    let index16: Vec<u8> = index
        .iter()
        .flat_map(|&i| (i as u16).to_le_bytes())
        .collect();
    std::fs::write(out.join("unicode_index.bin"), index16).expect("write unicode index");
    std::fs::write(out.join("unicode_blocks.bin"), &blocks).expect("write unicode blocks");
    let ascii: Vec<u8> = cls[..128].to_vec();
    let _ = writeln!(consts, "/// Character class flags of ASCII (fast path).");
    let _ = writeln!(consts, "pub const ASCII_CLASS: [u8; 128] = {ascii:?};");
}

/// Would BPE, run on the bytes of `t1` followed by `t2`, end as exactly `[t1, t2]`?
/// Undo merges on both sides of the split point and check that no merge across it
/// could have won first. Same algorithm as `vocab.rs`, over a growing table.
fn valid_pair(
    pairs: &HashMap<(u32, u32), u32>,
    split: &[(u32, u32)],
    mut t1: u32,
    mut t2: u32,
) -> bool {
    let mut limit = u32::MAX;
    loop {
        if let Some(&combined) = pairs.get(&(t1, t2)) {
            if combined < limit {
                return false;
            }
        }
        if t1 > t2 {
            limit = t1;
            t1 = split[t1 as usize].1;
            if t1 == limit {
                limit = t2 + 1;
                t2 = split[t2 as usize].0;
                if t2 + 1 == limit {
                    return true;
                }
            }
        } else {
            limit = t2 + 1;
            t2 = split[t2 as usize].0;
            if t2 + 1 == limit {
                limit = t1;
                t1 = split[t1 as usize].1;
                if t1 == limit {
                    return true;
                }
            }
        }
    }
}
