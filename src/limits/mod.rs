//! Local token rate limits, sans-IO: key building, fixed-window counters in a
//! compare-and-swap store, admission, true-up and the OpenAI-style headers.
//!
//! The store is a trait so this is tested natively with an in-memory map; the
//! adapter implements it over proxy-wasm shared data, which is process-wide (every
//! worker of one gateway instance sees the same counters) and offers CAS.
//!
//! Correctness under contention: each rule's counter is read, checked and written
//! with CAS, retried on conflict, so two workers can never both spend the same
//! remaining tokens. A request is charged its prompt plus a reservation for its
//! completion; after the response the charge is trued up to real usage. So admitted
//! tokens exceed a limit only by what a request used beyond its reservation.
//!
//! Memory: one store entry (a short key, 16-byte value) per rule, window length
//! and distinct key value, for the life of the process (shared data has no TTL and
//! no delete). The window start lives in the value, not the key, so entries do not
//! multiply over time; they grow only with distinct consumers/models/routes.

use crate::config::{LimitCount, LimitKeyPart, LimitMode, Limits};

pub mod global;

/// How many times one counter update is retried when another worker wrote in
/// between. With a handful of workers a few attempts suffice; the bound keeps a
/// pathological store from spinning a worker.
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// Longest consumer id used in a key; longer ids are cut (ids are host-set, so
/// this only guards memory).
pub const MAX_KEY_VALUE_BYTES: usize = 256;

/// Why a store call did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the entry since it was read: read again and retry.
    CasMismatch,
    /// The store cannot be used (host error); limits fail open on it.
    Unavailable,
}

/// A process-wide key-value store with compare-and-swap, the shape of proxy-wasm
/// shared data: `get` returns the value and its version, `set` with a non-zero
/// `cas` succeeds only if the version is unchanged (`cas == 0`: unconditional).
pub trait Store {
    /// The value and its CAS version, `None` if the key does not exist.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Write `value` if the entry is still at version `cas` (or unconditionally for 0).
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// An in-memory [`Store`] with the same CAS semantics as Envoy's shared data
/// (creating a missing key ignores `cas`), for tests and native tools.
#[derive(Default, Debug)]
pub struct MemoryStore {
    entries: std::collections::HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl Store for MemoryStore {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.entries.get(key).cloned())
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        let next = self.next_cas;
        match self.entries.get_mut(key) {
            Some(e) => {
                if cas != 0 && cas != e.1 {
                    return Err(StoreError::CasMismatch);
                }
                *e = (value.to_vec(), next);
            }
            None => {
                self.entries.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

/// Key of the creation lock: creating a missing entry is unconditional in shared
/// data, so two workers creating the same counter at once could lose an update.
/// Creation therefore happens under this lock (a CAS-guarded odd/even word).
pub const CREATE_LOCK_KEY: &str = "tollgate/limits/v1/create-lock";

/// Make sure the creation lock exists; called once per VM at configure, before
/// any request, so the lock itself is never created concurrently with its use.
pub fn init_store(store: &mut dyn Store) {
    if let Ok(None) = store.get(CREATE_LOCK_KEY) {
        let _ = store.set(CREATE_LOCK_KEY, &0u64.to_le_bytes(), 0);
    }
}

/// One counter's state: which window it counts and how much is used in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counter {
    window_start: u64,
    used: u64,
}

impl Counter {
    fn decode(b: &[u8]) -> Option<Counter> {
        let ws: [u8; 8] = b.get(0..8)?.try_into().ok()?;
        let used: [u8; 8] = b.get(8..16)?.try_into().ok()?;
        Some(Counter {
            window_start: u64::from_le_bytes(ws),
            used: u64::from_le_bytes(used),
        })
    }

    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.window_start.to_le_bytes());
        out[8..].copy_from_slice(&self.used.to_le_bytes());
        out
    }

    /// Usage in the window starting at `ws` (a counter of an older window is empty).
    fn used_in(self, ws: u64) -> u64 {
        if self.window_start == ws {
            self.used
        } else {
            0
        }
    }
}

/// What is known about a request when it is admitted.
#[derive(Clone, Debug, Default)]
pub struct Subject<'a> {
    /// Consumer id from the trusted header, if present.
    pub consumer: Option<&'a str>,
    /// Host route name.
    pub route: &'a str,
    /// Requested model.
    pub model: &'a str,
    /// Provider label.
    pub provider: &'a str,
    /// tollgate's prompt count.
    pub prompt_tokens: u64,
    /// Completion tokens reserved (`max_tokens` or the configured default).
    pub reserve_tokens: u64,
}

/// Tokens a rule charges for a given input/output split.
fn cost(count: LimitCount, input: u64, output: u64) -> u64 {
    match count {
        LimitCount::Input => input,
        LimitCount::Output => output,
        LimitCount::Total => input.saturating_add(output),
    }
}

fn push_part(out: &mut String, tag: char, v: &str) {
    let mut end = v.len().min(MAX_KEY_VALUE_BYTES);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    let v = v.get(..end).unwrap_or("");
    // Length-prefixed, so no value can forge another key's parts.
    out.push('/');
    out.push(tag);
    out.push_str(&v.len().to_string());
    out.push(':');
    out.push_str(v);
}

/// The store key of one rule's counter for this subject. Requests without a
/// consumer header share the `anonymous` consumer's budget.
pub fn counter_key(rule_name: &str, window_ms: u64, parts: &[LimitKeyPart], s: &Subject) -> String {
    let mut k = format!("tollgate/limits/v1/{rule_name}/{window_ms}");
    for p in parts {
        match p {
            LimitKeyPart::Consumer => match s.consumer {
                Some(c) => push_part(&mut k, 'c', c),
                None => k.push_str("/anonymous"),
            },
            LimitKeyPart::Route => push_part(&mut k, 'r', s.route),
            LimitKeyPart::Model => push_part(&mut k, 'm', s.model),
            LimitKeyPart::Provider => push_part(&mut k, 'p', s.provider),
        }
    }
    k
}

/// The state of the rule that matters most to a client, for its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateState {
    /// Rule name.
    pub rule: String,
    /// Tokens per window.
    pub limit: u64,
    /// Tokens left in the current window (after this request's charge if admitted).
    pub remaining: u64,
    /// Milliseconds until the window resets.
    pub reset_ms: u64,
}

impl RateState {
    /// `x-ratelimit-*-tokens` headers, as OpenAI sends them.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-ratelimit-limit-tokens", self.limit.to_string()),
            ("x-ratelimit-remaining-tokens", self.remaining.to_string()),
            ("x-ratelimit-reset-tokens", format_duration(self.reset_ms)),
        ]
    }
}

/// A duration the way OpenAI writes `x-ratelimit-reset-*` (`250ms`, `12s`, `6m0s`, `1h2m3s`).
pub fn format_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// One counter charged at admission, remembered for the true-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    key: String,
    window_start: u64,
    count: LimitCount,
    charged: u64,
}

/// The outcome of admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Let the request through (always true in `report_only`).
    pub allowed: bool,
    /// The limits would have refused it (equals `!allowed` when enforcing).
    pub over_limit: bool,
    /// For headers: the refusing rule with the latest reset, or else the rule with
    /// the least remaining. `None` when the store was unusable.
    pub state: Option<RateState>,
    /// What was charged, for [`true_up`].
    pub charges: Vec<Charge>,
    /// Counter updates that gave up (store error or CAS attempts exhausted);
    /// those rules failed open for this request.
    pub store_errors: usize,
}

impl Admission {
    /// Whole seconds a refused client should wait (`retry-after`).
    pub fn retry_after_secs(&self) -> u64 {
        self.state
            .as_ref()
            .map_or(1, |s| s.reset_ms.div_ceil(1000).max(1))
    }
}

/// Read a counter; a missing entry is created (under the creation lock) first.
fn read(store: &mut dyn Store, key: &str, ws: u64) -> Result<(Counter, u32), StoreError> {
    for _ in 0..2 {
        match store.get(key)? {
            Some((bytes, cas)) => {
                // An unreadable value is treated as an empty counter and overwritten.
                let c = Counter::decode(&bytes).unwrap_or(Counter {
                    window_start: ws,
                    used: 0,
                });
                return Ok((c, cas));
            }
            None => create(store, key, ws),
        }
    }
    Err(StoreError::Unavailable)
}

fn create(store: &mut dyn Store, key: &str, ws: u64) {
    let fresh = Counter {
        window_start: ws,
        used: 0,
    }
    .encode();
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Ok(Some((lock, cas))) = store.get(CREATE_LOCK_KEY) else {
            break;
        };
        let word = lock
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes);
        if word % 2 == 1 {
            continue; // another worker is creating: spin (bounded)
        }
        if store
            .set(CREATE_LOCK_KEY, &(word + 1).to_le_bytes(), cas)
            .is_err()
        {
            continue;
        }
        if let Ok(None) = store.get(key) {
            let _ = store.set(key, &fresh, 0);
        }
        let _ = store.set(CREATE_LOCK_KEY, &(word + 2).to_le_bytes(), 0);
        return;
    }
    // No lock (store not initialised, or a worker died holding it): create
    // unconditionally; at worst one concurrent first update is lost.
    if let Ok(None) = store.get(key) {
        let _ = store.set(key, &fresh, 0);
    }
}

/// Add `delta` (may be negative) to a counter in window `ws` with CAS retries.
/// With `limit`, refuse (return `Ok(false)`) when the result would exceed it.
/// `seen` is a fresh read to try first, saving one hostcall when nobody wrote since.
fn add(
    store: &mut dyn Store,
    key: &str,
    ws: u64,
    delta: i128,
    limit: Option<u64>,
    mut seen: Option<(Counter, u32)>,
) -> Result<bool, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (c, cas) = match seen.take() {
            Some(s) => s,
            None => read(store, key, ws)?,
        };
        if c.window_start > ws {
            return Ok(true); // the window moved on: nothing left to adjust
        }
        let used = c.used_in(ws);
        let new = (i128::from(used) + delta).clamp(0, i128::from(u64::MAX)) as u64;
        if let Some(l) = limit {
            if delta > 0 && new > l {
                return Ok(false);
            }
        }
        let next = Counter {
            window_start: ws,
            used: new,
        };
        match store.set(key, &next.encode(), cas) {
            Ok(()) => return Ok(true),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable)
}

/// Admit a request: every rule must have room for prompt + reservation (strictest
/// wins; none is skipped). Admitted requests are charged on every rule; refused
/// ones on none. In `report_only` the request is always admitted and charged.
pub fn admit(cfg: &Limits, store: &mut dyn Store, now_ms: u64, s: &Subject) -> Admission {
    let enforce = cfg.mode == LimitMode::Enforce;
    let mut store_errors = 0;
    // Phase 1: read every rule, find the refusing ones (no writes).
    let mut plan = Vec::with_capacity(cfg.rules.len());
    for r in &cfg.rules {
        let w = r.window_ms().max(1);
        let ws = now_ms - now_ms % w;
        let key = counter_key(&r.name, w, &r.key, s);
        let want = cost(r.count, s.prompt_tokens, s.reserve_tokens);
        let used = match read(store, &key, ws) {
            Ok(seen) => Some(seen),
            Err(_) => {
                store_errors += 1;
                None
            }
        };
        plan.push((r, key, ws, w, want, used));
    }
    let state_of = |r: &crate::config::LimitRule, used: u64, ws: u64, w: u64| RateState {
        rule: r.name.clone(),
        limit: r.tokens,
        remaining: r.tokens.saturating_sub(used),
        reset_ms: ws.saturating_add(w).saturating_sub(now_ms),
    };
    let refusing = plan
        .iter()
        .filter_map(|(r, _, ws, w, want, used)| {
            let used = used.as_ref()?.0.used_in(*ws);
            (used.saturating_add(*want) > r.tokens).then(|| state_of(r, used, *ws, *w))
        })
        .max_by_key(|st| st.reset_ms);
    if let (true, Some(st)) = (enforce, &refusing) {
        return Admission {
            allowed: false,
            over_limit: true,
            state: Some(st.clone()),
            charges: Vec::new(),
            store_errors,
        };
    }
    // Phase 2: charge each rule with check-and-set; undo on a late refusal.
    let mut charges: Vec<Charge> = Vec::with_capacity(plan.len());
    let mut late_refusal = None;
    for (r, key, ws, w, want, seen) in &plan {
        if seen.is_none() {
            continue;
        }
        let limit = enforce.then_some(r.tokens);
        match add(store, key, *ws, i128::from(*want), limit, *seen) {
            Ok(true) => charges.push(Charge {
                key: key.clone(),
                window_start: *ws,
                count: r.count,
                charged: *want,
            }),
            Ok(false) => {
                // Another worker spent the room between our read and write.
                let used = read(store, key, *ws).map_or(r.tokens, |(c, _)| c.used_in(*ws));
                late_refusal = Some(state_of(r, used, *ws, *w));
                break;
            }
            Err(_) => store_errors += 1,
        }
    }
    if let Some(st) = late_refusal {
        for c in &charges {
            let _ = add(
                store,
                &c.key,
                c.window_start,
                -i128::from(c.charged),
                None,
                None,
            );
        }
        return Admission {
            allowed: false,
            over_limit: true,
            state: Some(st),
            charges: Vec::new(),
            store_errors,
        };
    }
    // Headers report the rule with the least remaining after this charge.
    let over_limit = refusing.is_some();
    let state = match refusing {
        Some(st) => Some(RateState { remaining: 0, ..st }),
        None => plan
            .iter()
            .filter_map(|(r, _, ws, w, want, used)| {
                let used = used.as_ref()?.0.used_in(*ws).saturating_add(*want);
                Some(state_of(r, used, *ws, *w))
            })
            .min_by_key(|st| (st.remaining, u64::MAX - st.reset_ms)),
    };
    Admission {
        allowed: true,
        over_limit,
        state,
        charges,
        store_errors,
    }
}

/// Replace the admission charges by what the exchange really used (the provider's
/// usage, or tollgate's count): refunds unused reservations, charges overruns.
/// Counters whose window has since ended are left alone.
pub fn true_up(store: &mut dyn Store, a: &Admission, input: u64, output: u64) {
    for c in &a.charges {
        let real = cost(c.count, input, output);
        let delta = i128::from(real) - i128::from(c.charged);
        if delta != 0 {
            let _ = add(store, &c.key, c.window_start, delta, None, None);
        }
    }
}

#[cfg(test)]
mod tests;
