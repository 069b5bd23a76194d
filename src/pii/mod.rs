//! PII and secret redaction of prompts and completions, with no host calls.
//!
//! A route's detectors are compiled once into one automaton ([`engine`]); per
//! request a [`PiiExchange`] scans only the text that goes to or comes from the
//! model ([`paths`]), splices replacements into the JSON bytes ([`json`]) and, on
//! streams, rewrites deltas with a bounded carry-over ([`stream`]). The mapping
//! from placeholders back to values (for `restore`) lives only in the exchange.
//!
//! Counts per detector and direction are kept for metrics and filter state;
//! values never leave the exchange.

pub mod config;
pub mod detectors;
pub mod engine;
pub mod json;
pub mod json_stream;
pub mod paths;
pub mod stream;

use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use crate::crypto::{hex, hmac_sha256_parts};
use crate::dialect::{error_body, Api, ErrorKind};
use crate::metering::labels::{sanitize, PREFIX};
use crate::usage::stream::Rewrite;

pub use config::{Action, PiiConfig, PiiMode};
use engine::{Engine, Hit};

/// Which way text is going: counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Prompt text on its way to the provider.
    Request,
    /// Completion text on its way to the client.
    Response,
}

impl Direction {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// What the request stage decided.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Nothing to change.
    Unchanged,
    /// Forward this body instead.
    Replace(Vec<u8>),
    /// Refuse: a JSON error body in the client's dialect (status 400).
    Block(Vec<u8>),
}

/// Placeholders and pseudonyms of one exchange.
#[derive(Default)]
struct Vault {
    next: HashMap<Rc<str>, u32>,
    by_value: HashMap<(usize, Vec<u8>), Vec<u8>>,
    restore: HashMap<Vec<u8>, Vec<u8>>,
}

/// PII state of one request/response exchange.
pub struct PiiExchange {
    engine: Rc<Engine>,
    api: Api,
    vault: Vault,
    counts: Vec<[u64; 2]>,
    restored: u64,
    blocked: Vec<usize>,
    hits: Vec<Hit>,
    stream: Option<stream::PiiStream>,
    scan: Option<json_stream::JsonScan>,
}

impl PiiExchange {
    /// Start with the route's compiled engine.
    pub fn new(engine: Rc<Engine>, api: Api) -> Self {
        let n = engine.dets.len();
        PiiExchange {
            engine,
            api,
            vault: Vault::default(),
            counts: vec![[0, 0]; n],
            restored: 0,
            blocked: Vec::new(),
            hits: Vec::new(),
            stream: None,
            scan: None,
        }
    }

    fn enforce(&self) -> bool {
        self.engine.mode == PiiMode::Enforce
    }

    /// The replacement for one finding (counting it), or `None` in detect mode or
    /// for a placeholder this exchange did not issue.
    fn replacement(&mut self, hit: Hit, text: &[u8], dir: Direction) -> Option<Vec<u8>> {
        let engine = self.engine.clone();
        let d = engine.dets.get(hit.det)?;
        let value = text.get(hit.start..hit.end)?;
        if d.placeholder {
            let v = self.vault.restore.get(value)?.clone();
            self.restored += 1;
            return Some(v);
        }
        if let Some(c) = self.counts.get_mut(hit.det) {
            if let Some(n) = c.get_mut(dir as usize) {
                *n += 1;
            }
        }
        if !self.enforce() {
            return None;
        }
        let action = match (d.action, dir) {
            (Action::Block, Direction::Request) => {
                if !self.blocked.contains(&hit.det) {
                    self.blocked.push(hit.det);
                }
                Action::Redact
            }
            (Action::Block | Action::Restore, Direction::Response) => Action::Redact,
            (a, _) => a,
        };
        let rep = match action {
            Action::Mask => mask(value),
            Action::Hash => {
                let mac = hmac_sha256_parts(&engine.hash_key, &[d.tag.as_bytes(), b"\0", value]);
                format!("<{}:{}>", d.tag, hex(mac.get(..6).unwrap_or(&[]))).into_bytes()
            }
            _ => {
                let key = (hit.det, value.to_vec());
                if let Some(p) = self.vault.by_value.get(&key) {
                    p.clone()
                } else {
                    let n = self.vault.next.entry(d.tag.clone()).or_insert(0);
                    *n += 1;
                    let p = format!("<{}_{}>", d.tag, n).into_bytes();
                    if action == Action::Restore && dir == Direction::Request {
                        self.vault.restore.insert(p.clone(), value.to_vec());
                    }
                    self.vault.by_value.insert(key, p.clone());
                    p
                }
            }
        };
        Some(rep)
    }

    /// Scan the model-text strings of a JSON body and splice replacements in.
    fn rewrite_json(&mut self, body: &[u8], dir: Direction) -> Option<Vec<u8>> {
        let api = self.api;
        self.rewrite_json_with(body, dir, |keys| match dir {
            Direction::Request => paths::request_text(api, keys),
            Direction::Response => paths::response_text(api, keys),
        })
    }

    /// [`Self::rewrite_json`] over the strings `wanted` picks by key path.
    fn rewrite_json_with(
        &mut self,
        body: &[u8],
        dir: Direction,
        wanted: impl Fn(&[&[u8]]) -> bool,
    ) -> Option<Vec<u8>> {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        json::for_each_string(body, |keys, _, r| {
            if wanted(keys) {
                ranges.push(r);
            }
        });
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
        let mut hits = std::mem::take(&mut self.hits);
        for r in ranges {
            let Some(raw) = body.get(r.clone()) else {
                continue;
            };
            let dec = json::decode(raw);
            hits.clear();
            self.engine
                .scan(&dec.text, 0, dir == Direction::Response, &mut hits);
            for &h in &hits {
                if let Some(rep) = self.replacement(h, &dec.text, dir) {
                    let mut enc = Vec::with_capacity(rep.len());
                    json::encode_into(&rep, &mut enc);
                    let at = r.start + dec.raw(h.start)..r.start + dec.raw(h.end);
                    edits.push((at, enc));
                }
            }
        }
        self.hits = hits;
        (!edits.is_empty()).then(|| json::apply_edits(body, &edits))
    }

    /// The complete request body (client dialect JSON): redact, or block.
    pub fn on_request(&mut self, body: &[u8]) -> RequestOutcome {
        if !self.engine.may_find_in_request(body) {
            return RequestOutcome::Unchanged;
        }
        let out = self.rewrite_json(body, Direction::Request);
        if !self.blocked.is_empty() {
            let names: Vec<&str> = self
                .blocked
                .iter()
                .filter_map(|&i| self.engine.dets.get(i).map(|d| &*d.name))
                .collect();
            let msg = format!(
                "Request refused by the gateway's data protection policy (tollgate pii): it contains {}. Remove these values and retry.",
                names.join(", ")
            );
            return RequestOutcome::Block(error_body(
                self.api.family(),
                ErrorKind::InvalidRequest,
                &msg,
            ));
        }
        match out {
            Some(b) => RequestOutcome::Replace(b),
            None => RequestOutcome::Unchanged,
        }
    }

    /// True when the response body must be read (restore or scanning).
    pub fn wants_response(&self) -> bool {
        // Embeddings answers are vectors, not text: never held for PII.
        self.engine.scans_responses() && self.api != Api::Embeddings
    }

    /// A whole non-streaming JSON answer: restore placeholders, scan completions.
    pub fn on_response_json(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        if !self.wants_response() || !self.engine.may_find_in_answer(body) {
            return None;
        }
        self.rewrite_json(body, Direction::Response)
    }

    /// The JSON answer will come in chunks it cannot be held whole across (too
    /// big, or of unknown length): scan it as it passes
    /// ([`Self::on_response_json_chunk`]). Nothing when answers are not read.
    pub fn start_json_scan(&mut self) {
        if self.wants_response() {
            self.scan = Some(json_stream::JsonScan::new(self.api));
        }
    }

    /// True when the answer is rewritten chunk by chunk (its length may change).
    pub fn scans_json_chunks(&self) -> bool {
        self.scan.is_some()
    }

    /// One chunk of a non-streaming JSON answer too big to hold whole (or of
    /// unknown length): completion text is restored and scanned as it passes,
    /// with the same bounded hold-back as streams; every other byte is copied as
    /// it is. `end_of_stream` releases what is held.
    /// Only after [`Self::start_json_scan`].
    pub fn on_response_json_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Rewrite {
        let Some(mut s) = self.scan.take() else {
            return Rewrite::Unchanged;
        };
        let out = s.on_chunk(self, chunk, end_of_stream);
        self.scan = Some(s);
        if out == chunk {
            Rewrite::Unchanged
        } else {
            Rewrite::Replace(out)
        }
    }

    /// One chunk of an SSE answer. Complete events come out rewritten; text near
    /// the end of each delta is held back (bounded) until the value it may begin
    /// is complete. `end_of_stream` flushes everything.
    pub fn on_stream_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Rewrite {
        if !self.wants_response() {
            return Rewrite::Unchanged;
        }
        let mut s = self
            .stream
            .take()
            .unwrap_or_else(|| stream::PiiStream::new(self.api));
        let out = s.on_chunk(self, chunk, end_of_stream);
        self.stream = Some(s);
        out
    }

    /// Findings per detector: `(name, request count, response count)`, only those seen.
    pub fn counts(&self) -> impl Iterator<Item = (&str, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| c[0] + c[1] > 0)
            .filter_map(|(i, c)| self.engine.dets.get(i).map(|d| (&*d.name, c[0], c[1])))
    }

    /// Placeholders put back in the answer.
    pub fn restored(&self) -> u64 {
        self.restored
    }

    /// Filter-state value: `email:2/0,credit_card:1/0` (request/response counts),
    /// plus the mode; never a value. `None` when nothing was found.
    pub fn filter_state(&self) -> Option<String> {
        let parts: Vec<String> = self
            .counts()
            .map(|(n, a, b)| format!("{n}:{a}/{b}"))
            .collect();
        if parts.is_empty() && self.restored == 0 {
            return None;
        }
        let mode = if self.enforce() { "enforce" } else { "detect" };
        Some(format!(
            "mode={mode};found={};restored={}",
            parts.join(","),
            self.restored
        ))
    }
}

/// Keep the last 4 characters, star the rest.
fn mask(value: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(value);
    let n = s.chars().count();
    s.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect::<String>()
        .into_bytes()
}

/// Counter of PII findings by route, detector and direction.
pub fn metric_name(route: &str, detector: &str, dir: Direction) -> String {
    format!(
        "{PREFIX}.pii_detections.route.{}.pii_category.{}.direction.{}",
        sanitize(route),
        sanitize(detector),
        dir.as_str()
    )
}

#[cfg(test)]
mod tests;
