//! Helpers shared by tests and benchmarks (not part of the filter's behaviour).

/// A tiny deterministic xorshift PRNG, so tests and benchmarks draw the same
/// inputs on every run without a random-number crate.
pub struct XorShift(pub u64);

impl XorShift {
    /// Next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A pseudo-random element of `xs` (`""` when empty).
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        if xs.is_empty() {
            return "";
        }
        let i = (self.next_u64() % xs.len() as u64) as usize;
        xs.get(i).copied().unwrap_or("")
    }
}
