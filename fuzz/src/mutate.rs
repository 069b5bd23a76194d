//! A deterministic mutator and replay loop for the stable smoke run: the
//! committed seeds, then mutations of them drawn from a fixed-seed PRNG, so a
//! failure in `make test` reproduces exactly (the failing input is written to
//! `fuzz/artifacts/<target>/smoke-crash` and printed in hex).

use std::path::{Path, PathBuf};

/// Tokens worth splicing into JSON and SSE inputs.
const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\u0040",
    b"null",
    b"true",
    b"false",
    b"-0",
    b"1e999",
    b"18446744073709551616",
    b"\"stream\":true",
    b"\"stream_options\":",
    b"\"include_usage\":",
    b"\"usage\":",
    b"\"n\":",
    b"\"max_tokens\":",
    b"\"model\":\"gpt-4o\"",
    b"\"messages\":[",
    b"\"content\":",
    b"\"role\":\"user\"",
    b"data: ",
    b"event: ",
    b"data: [DONE]",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\xff",
    b"\xf0\x9f",
    b"\xc3",
    b"\xe2\x80\x99",
    b"'s",
    b"  ",
    b"\t",
    b"\xe3\x80\x80",
];

/// xorshift64: small and reproducible.
pub struct Rng(pub u64);

impl Rng {
    /// Next value.
    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.draw() % n as u64) as usize
        }
    }
}

/// One to four random edits of `seed`, sometimes splicing in part of `other`.
pub fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.draw() as u8;
            }
            2 => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let d = DICT[rng.below(DICT.len())];
                v.splice(at..at, d.iter().copied());
            }
            4 if !v.is_empty() => {
                // Duplicate a range (repetition, nesting).
                let s = rng.below(v.len());
                let e = (s + 1 + rng.below(64)).min(v.len());
                let piece = v[s..e].to_vec();
                for _ in 0..1 + rng.below(4) {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let s = rng.below(other.len());
                let e = (s + 1 + rng.below(256)).min(other.len());
                v.splice(at..at, other[s..e].iter().copied());
            }
            6 => v.truncate(at),
            _ => v.insert(at, rng.draw() as u8),
        }
    }
    v
}

/// The committed seeds of `target`, sorted by name (deterministic order).
pub fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap_or_default();
            (p, b)
        })
        .collect();
    out.sort();
    out
}

/// Replay `target`'s seeds, then `mutations` mutated inputs. Panics (after saving
/// the input) on the first input the target panics on.
pub fn smoke(name: &str, target: fn(&[u8]), mutations: usize) -> usize {
    let seeds = seeds(name);
    assert!(!seeds.is_empty(), "no seeds for {name}");
    let run = |input: &[u8], what: &str| {
        if std::panic::catch_unwind(|| target(input)).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("artifacts")
                .join(name);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join("smoke-crash"), input);
            let hex: String = input.iter().take(512).map(|b| format!("{b:02x}")).collect();
            panic!(
                "{name}: target failed on {what} (saved as artifacts/{name}/smoke-crash): {hex}"
            );
        }
    };
    for (path, bytes) in &seeds {
        run(bytes, &path.display().to_string());
    }
    let mut rng = Rng(0x5eed_0000 ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 32);
    for i in 0..mutations {
        let a = &seeds[rng.below(seeds.len())].1;
        let b = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, a, b);
        run(&input, &format!("mutation {i}"));
    }
    seeds.len() + mutations
}
