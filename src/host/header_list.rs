//! The headers tollgate adds to a response, with every value written into one
//! text buffer.

use crate::decimal::push_u64;

/// Response headers tollgate adds (`x-llm-*`, `x-ratelimit-*`): static names, and
/// values written into one shared buffer. A `String` per value cost an allocation
/// and a free, about 450 wasm operators each, for a dozen numbers per exchange;
/// the adapter keeps one list per VM and clears it for each response, so the
/// steady state allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct HeaderList {
    /// Name and the value's byte range in `text`.
    entries: Vec<(&'static str, usize, usize)>,
    text: String,
}

impl HeaderList {
    /// An empty list with room for `n` headers of short values.
    pub fn with_capacity(n: usize) -> Self {
        HeaderList {
            entries: Vec::with_capacity(n),
            text: String::with_capacity(n * 16),
        }
    }

    /// Forget every header, keeping the memory for the next response.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.text.clear();
    }

    /// Add `name` with the value `write` appends to the buffer it is given.
    pub fn push_with(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        let start = self.text.len();
        write(&mut self.text);
        self.entries.push((name, start, self.text.len()));
    }

    /// Add `name: value`.
    pub fn push(&mut self, name: &'static str, value: &str) {
        self.push_with(name, |t| t.push_str(value));
    }

    /// Add `name` with `v` in decimal.
    pub fn push_u64(&mut self, name: &'static str, v: u64) {
        self.push_with(name, |t| push_u64(t, v));
    }

    /// Each header as (name, value), in the order added.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.entries
            .iter()
            .map(|&(name, start, end)| (name, self.text.get(start..end).unwrap_or("")))
    }

    /// The headers as owned pairs, for replies built once (a 429, a relayed answer).
    pub fn to_vec(&self) -> Vec<(&'static str, String)> {
        self.iter().map(|(n, v)| (n, v.to_string())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_order_and_bounds_across_clears() {
        let mut h = HeaderList::with_capacity(2);
        h.push_u64("a", 0);
        h.push("b", "text");
        h.push_with("c", |t| t.push_str("1.5"));
        h.push_u64("d", u64::MAX);
        assert_eq!(
            h.to_vec(),
            vec![
                ("a", "0".to_string()),
                ("b", "text".to_string()),
                ("c", "1.5".to_string()),
                ("d", "18446744073709551615".to_string()),
            ]
        );
        h.clear();
        assert_eq!(h.iter().count(), 0);
        h.push("b", "");
        h.push_u64("a", 42);
        assert_eq!(
            h.to_vec(),
            vec![("b", String::new()), ("a", "42".to_string())]
        );
    }
}
