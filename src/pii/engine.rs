//! All detectors of a route in one automaton.
//!
//! Every enabled detector's pattern becomes one alternative of a single
//! `regex::bytes::Regex` (`(?P<d0>…)|(?P<d1>…)|…`), so text is scanned once
//! whatever the number of detectors: the lazy DFA finds candidates, and only on
//! a candidate are captures resolved (which alternative matched) and its
//! validator (Luhn, mod-97, SSN rules) run. A candidate its validator rejects is
//! offered to the later alternatives at the same place, within a bounded window,
//! so a failed card number can still be a phone number.

use std::cell::OnceCell;
use std::rc::Rc;

use regex::bytes::{CaptureLocations, Regex, RegexBuilder};

use super::config::{Action, PiiConfig, PiiMode};
use super::detectors::{self, Validator};

/// Bytes searched when re-offering a rejected candidate to later detectors.
const FALLBACK_WINDOW: usize = 512;

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
    /// True for the internal placeholder detector of the response side.
    pub placeholder: bool,
}

/// One compiled alternation and the mapping from its groups to detectors.
struct Automaton {
    re: Regex,
    /// (detector index, capture group of the whole alternative, group of the
    /// replaced value if not the whole match)
    slots: Vec<(usize, usize, Option<usize>)>,
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
                pattern: spec.pattern,
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
                pattern: c.pattern.clone(),
                single: OnceCell::new(),
                placeholder: false,
            });
        }
        let restores = dets.iter().any(|d| d.action == Action::Restore);
        let n_real = dets.len();
        dets.push(Det {
            name: Rc::from("placeholder"),
            tag: Rc::from("PLACEHOLDER"),
            action: Action::Restore,
            validate: None,
            pattern: PLACEHOLDER.to_string(),
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
            compile(&dets, which)
                .map(Some)
                .map_err(|e| ("custom".to_string(), format!("detectors do not compile together: {e}")))
        };
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
        })
    }

    /// True when completions need looking at (restore or scanning).
    pub fn scans_responses(&self) -> bool {
        self.response.is_some()
    }

    /// Every validated finding in `hay[from..]`, in order, not overlapping, on the
    /// request or the response side.
    pub fn scan(&self, hay: &[u8], from: usize, response: bool, out: &mut Vec<Hit>) {
        let auto = if response {
            self.response.as_ref()
        } else {
            self.request.as_ref()
        };
        let Some(a) = auto else { return };
        let mut locs = a.re.capture_locations();
        let mut pos = from;
        while pos <= hay.len() {
            let Some(m) = a.re.captures_read_at(&mut locs, hay, pos) else {
                break;
            };
            let (s, e) = (m.start(), m.end());
            let slot = a.slots.iter().position(|(_, g, _)| locs.get(*g).is_some());
            let accepted = slot.and_then(|k| self.accept(a, k, &locs, hay, s, e));
            let found = accepted.or_else(|| self.fallback(a, slot.map_or(0, |k| k + 1), hay, s));
            match found {
                Some(hit) => {
                    pos = hit.end.max(s + 1);
                    out.push(hit);
                }
                None => pos = s + 1,
            }
        }
    }

    fn accept(
        &self,
        a: &Automaton,
        k: usize,
        locs: &CaptureLocations,
        hay: &[u8],
        s: usize,
        e: usize,
    ) -> Option<Hit> {
        let (det, _, value_group) = *a.slots.get(k)?;
        let d = self.dets.get(det)?;
        let end = match d.validate {
            Some(v) => v(hay, s, e)?,
            None => e,
        };
        if end <= s {
            return None;
        }
        let (vs, ve) = match value_group.and_then(|g| locs.get(g)) {
            Some((vs, ve)) if ve <= end => (vs, ve),
            _ => (s, end),
        };
        Some(Hit {
            start: vs,
            end: ve,
            det,
            from: s,
        })
    }

    /// Offer a candidate rejected by its validator to the later alternatives,
    /// anchored at the same start, within a bounded window.
    fn fallback(&self, a: &Automaton, from_slot: usize, hay: &[u8], s: usize) -> Option<Hit> {
        let window = hay.get(..hay.len().min(s.saturating_add(FALLBACK_WINDOW)))?;
        for &(det, _, _) in a.slots.get(from_slot..)? {
            let d = self.dets.get(det)?;
            let single = d.single.get_or_init(|| {
                RegexBuilder::new(&d.pattern)
                    .unicode(false)
                    .build()
                    .ok()
            });
            let Some(re) = single else { continue };
            let Some(caps) = re.captures_at(window, s) else {
                continue;
            };
            let Some(m) = caps.get(0) else { continue };
            if m.start() != s {
                continue;
            }
            let end = match d.validate {
                Some(v) => match v(hay, s, m.end()) {
                    Some(e) => e,
                    None => continue,
                },
                None => m.end(),
            };
            let (vs, ve) = match caps.name("v") {
                Some(v) if v.end() <= end => (v.start(), v.end()),
                _ => (s, end),
            };
            if ve > vs {
                return Some(Hit {
                    start: vs,
                    end: ve,
                    det,
                    from: s,
                });
            }
        }
        None
    }
}

fn compile(dets: &[Det], which: &[usize]) -> Result<Automaton, regex::Error> {
    let mut pattern = String::new();
    for (n, &i) in which.iter().enumerate() {
        if n > 0 {
            pattern.push('|');
        }
        let p = dets.get(i).map_or("", |d| d.pattern.as_str());
        // Only the built-in `v` group is renamed; custom patterns keep theirs
        // under unique prefixes that cannot collide.
        let p = p.replace("(?P<v>", &format!("(?P<__pii_v{n}>"));
        pattern.push_str(&format!("(?P<__pii_d{n}>{p})"));
    }
    let re = RegexBuilder::new(&pattern)
        .unicode(false)
        .size_limit(32 << 20)
        .dfa_size_limit(8 << 20)
        .build()?;
    let mut slots = Vec::with_capacity(which.len());
    for (n, &i) in which.iter().enumerate() {
        let mut group = None;
        let mut value = None;
        for (g, name) in re.capture_names().enumerate() {
            if name == Some(format!("__pii_d{n}").as_str()) {
                group = Some(g);
            }
            if name == Some(format!("__pii_v{n}").as_str()) {
                value = Some(g);
            }
        }
        if let Some(g) = group {
            slots.push((i, g, value));
        }
    }
    Ok(Automaton { re, slots })
}
