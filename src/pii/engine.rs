//! All detectors of a route in one automaton.
//!
//! Every enabled detector's pattern becomes one alternative of a single
//! `regex::bytes::Regex` (`(?:…)|(?:…)|…`), so text is scanned once whatever the
//! number of detectors: the lazy DFA finds candidates, and only on a candidate
//! is the matching detector identified (anchored, a few bytes of work) and its
//! validator (Luhn, mod-97, SSN rules) run. A candidate its validator rejects is
//! offered to the later alternatives at the same place, so a failed card number
//! can still be a phone number.

use std::cell::OnceCell;
use std::rc::Rc;

use regex::bytes::{Regex, RegexBuilder};

use super::config::{Action, PiiConfig, PiiMode};
use super::detectors::{self, Validator};

/// Longest value considered (bytes from its start).
const MAX_MATCH: usize = 16 * 1024;

/// Placeholder shape put back by `restore` (and never mistaken for PII).
const PLACEHOLDER: &str = r"<[A-Z][A-Z0-9_]{0,40}_[0-9]{1,6}>";
/// Longest placeholder the pattern above can match.
const PLACEHOLDER_MAX_LEN: usize = 50;

/// One detector as the engine runs it.
pub struct Det {
    /// Config name and metric label.
    pub name: Rc<str>,
    /// Placeholder category.
    pub tag: Rc<str>,
    /// Its action on this route.
    pub action: Action,
    validate: Option<Validator>,
    pattern: String,
    single: OnceCell<Option<Regex>>,
    /// The pattern starts with an ASCII word boundary.
    word_left: bool,
    /// Bytes a match can start with.
    first: fn(u8) -> bool,
    /// Cheap pre-check of the bytes at a candidate.
    shape: fn(&[u8]) -> bool,
    /// The pattern has a `v` group (only the value is replaced).
    has_value: bool,
    /// True for the internal placeholder detector of the response side.
    pub placeholder: bool,
}

/// One compiled alternation of detectors, and their priority order.
struct Automaton {
    re: Regex,
    /// Detector indexes, in the order of the alternation.
    order: Vec<usize>,
}

/// A validated finding: the replaced span and the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Start of the bytes to replace.
    pub start: usize,
    /// End of the bytes to replace.
    pub end: usize,
    /// Index into [`Engine::dets`].
    pub det: usize,
    /// Start of the whole match (before `start` when only a value is replaced,
    /// as in `password=<value>`): a stream must hold from here.
    pub from: usize,
}

/// The compiled detectors of one route, shared by its requests.
pub struct Engine {
    /// Detectors by index (the response side adds the placeholder detector last).
    pub dets: Vec<Det>,
    request: Option<Automaton>,
    response: Option<Automaton>,
    /// Act or only report.
    pub mode: PiiMode,
    /// Key of `hash` pseudonyms.
    pub hash_key: Vec<u8>,
    /// Text a stream holds back at the end of each text so a value or placeholder
    /// split across chunks is seen whole (longest match with a non-token byte).
    pub holdback: usize,
    /// Cap on the extra hold for unfinished tokens and private-key blocks.
    pub max_hold: usize,
    /// Restore placeholders in answers (some detector restores).
    pub restores: bool,
    /// A JSON body without escapes and without a candidate anywhere in its bytes
    /// has none in its text either (see [`Engine::may_find_in_request`]).
    /// False when a custom pattern may use anchors, which a whole-body search
    /// would not honour the way a per-text search does.
    whole_body_check: bool,
}

impl Engine {
    /// Compile the route's detectors. Errors are `(field, message)` relative to `pii`.
    pub fn build(cfg: &PiiConfig) -> Result<Engine, (String, String)> {
        let mut dets = Vec::new();
        let mut holdback = PLACEHOLDER_MAX_LEN;
        for spec in detectors::builtin() {
            let action = cfg.detectors.get(spec.name);
            if action == Action::Off {
                continue;
            }
            holdback = holdback.max(spec.spaced_max_len);
            dets.push(Det {
                name: Rc::from(spec.name),
                tag: Rc::from(spec.tag),
                action,
                validate: spec.validate,
                first: spec.first,
                shape: spec.shape,
                has_value: spec.pattern.contains("(?P<v>"),
                pattern: spec.pattern,
                word_left: false,
                single: OnceCell::new(),
                placeholder: false,
            });
        }
        for c in &cfg.custom {
            if c.action == Action::Off {
                continue;
            }
            // Validated alone (own error path) by `PiiConfig::compile`.
            holdback = holdback.max(c.max_len as usize);
            dets.push(Det {
                name: Rc::from(c.name.as_str()),
                tag: Rc::from(c.name.to_ascii_uppercase().as_str()),
                action: c.action,
                validate: None,
                first: |_| true,
                shape: |_| true,
                has_value: c.pattern.contains("(?P<v>"),
                pattern: c.pattern.clone(),
                word_left: false,
                single: OnceCell::new(),
                placeholder: false,
            });
        }
        for d in &mut dets {
            d.word_left = d.pattern.starts_with(r"(?-u:\b)");
        }
        let restores = dets.iter().any(|d| d.action == Action::Restore);
        let n_real = dets.len();
        dets.push(Det {
            name: Rc::from("placeholder"),
            tag: Rc::from("PLACEHOLDER"),
            action: Action::Restore,
            validate: None,
            first: |b| b == b'<',
            shape: |_| true,
            has_value: false,
            pattern: PLACEHOLDER.to_string(),
            word_left: false,
            single: OnceCell::new(),
            placeholder: true,
        });
        let request: Vec<usize> = (0..n_real).collect();
        let mut response: Vec<usize> = Vec::new();
        if restores {
            response.push(n_real);
        }
        if cfg.scan_responses {
            response.extend(0..n_real);
        }
        let compile = |which: &[usize]| -> Result<Option<Automaton>, (String, String)> {
            if which.is_empty() {
                return Ok(None);
            }
            compile(&dets, which).map(Some).map_err(|e| {
                (
                    "custom".to_string(),
                    format!("detectors do not compile together: {e}"),
                )
            })
        };
        // A custom pattern with `^`, `$`, `\A` or `\z` (or a negated class, which
        // cannot be told apart from them this cheaply) keeps the per-text scan only.
        let whole_body_check = cfg.custom.iter().all(|c| {
            c.action == Action::Off
                || !(c.pattern.contains(['^', '$'])
                    || c.pattern.contains(r"\A")
                    || c.pattern.contains(r"\z"))
        });
        let request = compile(&request)?;
        let response = compile(&response)?;
        Ok(Engine {
            request,
            response,
            dets,
            mode: cfg.mode,
            hash_key: cfg.hash_key.as_bytes().to_vec(),
            holdback: holdback + 1,
            max_hold: usize::try_from(cfg.max_stream_hold_bytes).unwrap_or(8192),
            restores,
            whole_body_check,
        })
    }

    /// False only when no request detector can match in `body`'s model text: the
    /// body has no JSON escape (so every string's text is its raw bytes) and the
    /// automaton finds no candidate in the whole body. Each string sits between
    /// quotes, which a word boundary treats like the edge of a text, so a match in
    /// a string is a match in the body; keys and structure can only add
    /// candidates, which send the body to the full scan. One pass over the bytes
    /// instead of a walk and a search per string, for the common clean prompt.
    pub fn may_find_in_request(&self, body: &[u8]) -> bool {
        self.may_find(body, false)
    }

    /// [`Engine::may_find_in_request`] for a whole JSON answer (placeholders to
    /// restore included).
    pub fn may_find_in_answer(&self, body: &[u8]) -> bool {
        self.may_find(body, true)
    }

    fn may_find(&self, body: &[u8], response: bool) -> bool {
        let auto = if response {
            self.response.as_ref()
        } else {
            self.request.as_ref()
        };
        let Some(a) = auto else {
            return false;
        };
        !self.whole_body_check || body.contains(&b'\\') || a.re.is_match(body)
    }

    /// True when completions need looking at (restore or scanning).
    pub fn scans_responses(&self) -> bool {
        self.response.is_some()
    }

    /// Every validated finding in `hay[from..]`, in order, not overlapping, on the
    /// request or the response side.
    ///
    /// The combined automaton (a lazy DFA, no captures) finds where a candidate
    /// starts; only there are the detectors tried one by one, each anchored at that
    /// byte (so a failed attempt stops within a few bytes), in priority order, and
    /// the first whose validator accepts wins. A candidate nobody accepts moves the
    /// search on by one byte.
    pub fn scan(&self, hay: &[u8], from: usize, response: bool, out: &mut Vec<Hit>) {
        let auto = if response {
            self.response.as_ref()
        } else {
            self.request.as_ref()
        };
        let Some(a) = auto else { return };
        let mut pos = from;
        while pos <= hay.len() {
            let Some(m) = a.re.find_at(hay, pos) else {
                break;
            };
            let s = m.start();
            match self.identify(a, hay, s) {
                Some(hit) => {
                    pos = hit.end.max(s + 1);
                    out.push(hit);
                }
                None => pos = s + 1,
            }
        }
    }

    /// The first detector (in priority order) that matches at `s` and validates.
    fn identify(&self, a: &Automaton, hay: &[u8], s: usize) -> Option<Hit> {
        let word = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let left_is_word = word(s.checked_sub(1).and_then(|i| hay.get(i).copied()));
        let first = hay.get(s).copied().unwrap_or(0);
        let first_is_word = word(Some(first));
        // A match is never longer than this (a 4096-bit PEM key is ~3.3 KB);
        // bounding the slice bounds the work of an attempt whatever follows.
        let rest = hay.get(s..hay.len().min(s.saturating_add(MAX_MATCH)))?;
        for &det in &a.order {
            let Some(d) = self.dets.get(det) else {
                continue;
            };
            if !(d.first)(first)
                || (d.word_left && left_is_word && first_is_word)
                || !(d.shape)(rest)
            {
                continue; // its leading \b cannot hold here
            }
            let single = d.single.get_or_init(|| {
                RegexBuilder::new(&format!("^(?:{})", d.pattern))
                    .unicode(false)
                    .build()
                    .ok()
            });
            let Some(re) = single else { continue };
            let (m_end, value) = if d.has_value {
                let Some(caps) = re.captures(rest) else {
                    continue;
                };
                let Some(m) = caps.get(0) else { continue };
                (m.end(), caps.name("v").map(|v| (v.start(), v.end())))
            } else {
                match re.find(rest) {
                    Some(m) => (m.end(), None),
                    None => continue,
                }
            };
            let e = s + m_end;
            let end = match d.validate {
                Some(v) => match v(hay, s, e) {
                    Some(end) => end,
                    None => continue,
                },
                None => e,
            };
            let (vs, ve) = match value {
                Some((vs, ve)) if s + ve <= end => (s + vs, s + ve),
                _ => (s, end),
            };
            let (vs, ve) = whole_chars(hay, vs, ve);
            if ve > vs {
                return Some(Hit {
                    start: vs,
                    end: ve,
                    det,
                    from: s.min(vs),
                });
            }
        }
        None
    }
}

/// `start..end` widened to whole characters. The patterns match bytes, so a
/// bounded run such as `[^\s"']{4,128}` can stop inside a multi-byte character;
/// replacing half of one would leave invalid UTF-8 (a request body the provider
/// refuses, an answer the client cannot decode). Widening also takes the rest of
/// the character that held the value's edge, never less of the value.
fn whole_chars(hay: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    let inside = |i: usize| hay.get(i).is_some_and(|&b| b & 0xC0 == 0x80);
    while start > 0 && inside(start) {
        start -= 1;
    }
    while inside(end) {
        end += 1;
    }
    (start, end)
}

fn compile(dets: &[Det], which: &[usize]) -> Result<Automaton, regex::Error> {
    let mut pattern = String::new();
    for (n, &i) in which.iter().enumerate() {
        if n > 0 {
            pattern.push('|');
        }
        let p = dets.get(i).map_or("", |d| d.pattern.as_str());
        // Only where a candidate starts matters here: groups are not needed.
        pattern.push_str(&format!("(?:{p})"));
    }
    let re = RegexBuilder::new(&pattern)
        .unicode(false)
        .size_limit(32 << 20)
        .dfa_size_limit(8 << 20)
        .build()?;
    Ok(Automaton {
        re,
        order: which.to_vec(),
    })
}
