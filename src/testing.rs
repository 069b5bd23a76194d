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

/// A request-path JSON node as the `serde_json::Value` it stands for (objects keep
/// the last of a repeated key, as serde_json does), so tests and the fuzz target
/// can compare the document with serde_json's reading of the same bytes. A
/// number serde_json cannot read becomes `null`, which then differs.
pub fn json_value(n: crate::dialect::doc::Node<'_>) -> serde_json::Value {
    crate::providers::node_value(n)
}
