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
//! A worker may charge a small credit with a request (see [`admit`]) and admit the
//! next requests of that key from it without touching the store: credit is charged
//! before it is spent, so the bound is the same.
//!
//! Memory: one store entry (a short key, 16-byte value) per rule, window length
//! and distinct key value, for the life of the process (shared data has no TTL and
//! no delete). The window start lives in the value, not the key, so entries do not
//! multiply over time; they grow only with distinct consumers/models/routes.

use std::rc::Rc;

use crate::decimal::push_u64;
use crate::host::HeaderList;

use crate::config::{LimitCount, LimitKeyPart, LimitMode, LimitRule, Limits, StreamCutoff, Window};

pub mod clamp;
pub mod cutoff;
pub mod identity;

pub mod global;

/// How many times one counter update is retried when another worker wrote in
/// between. With a handful of workers a few attempts suffice; the bound keeps a
/// pathological store from spinning a worker.
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// A worker that charges a counter also takes a credit of up to this many times
/// the request's charge (see [`Store::leases`]), so the next requests of the same
/// key on that worker are admitted from the credit, without a store read and
/// write each.
pub const LEASE_REQUESTS: u64 = 16;

/// A credit is at most this fraction (1/N) of the room the counter has left after
/// the charge: near the limit credits shrink to nothing, so workers holding credit
/// cannot make another refuse early by more than a sliver of the budget.
pub const LEASE_SHARE_OF_ROOM: u64 = 8;

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
    /// Hold a refund for `key` to write with the next charge instead of now;
    /// `false` (the default): not supported, write it now.
    fn defer(&mut self, _key: &str, _window_start: u64, _delta: i64) -> bool {
        false
    }
    /// Take the refund held for `key` in this window (0 if none).
    fn take_deferred(&mut self, _key: &str, _window_start: u64) -> i64 {
        0
    }
    /// Every held refund, to write now.
    fn drain_deferred(&mut self) -> Vec<(String, u64, i64)> {
        Vec::new()
    }
    /// Whether admission may take credits (leases): refunds are held
    /// ([`Store::defer`]) and flushed on a timer. A credit is charged to the counter
    /// up front and held like a refund, so it is returned by the same flush.
    fn leases(&self) -> bool {
        false
    }
    /// The counter's usage as this worker last wrote it in window `ws` (credits
    /// included), kept with the held refund; `None` once flushed.
    fn synced_used(&mut self, _key: &str, _ws: u64) -> Option<u64> {
        None
    }
    /// Remember the counter's usage after this worker's write in window `ws`.
    fn set_synced_used(&mut self, _key: &str, _ws: u64, _used: u64) {}
    /// [`Store::take_deferred`] and [`Store::synced_used`] of one key together
    /// (the credit path needs both; a store can answer them with one lookup).
    fn take_held(&mut self, key: &str, ws: u64) -> (i64, Option<u64>) {
        (self.take_deferred(key, ws), self.synced_used(key, ws))
    }
    /// Take `want` from this worker's credit for `key` in window `ws`, in one
    /// step (the credit path's only store work): the counter's usage as this
    /// worker last wrote it and the held delta before, when the credit covers
    /// `want`; `None`, with nothing changed, otherwise. The default holds no
    /// credit ([`Deferred::spend`] is the leasing stores' answer).
    fn spend_credit(&mut self, _key: &str, _ws: u64, _want: u64) -> Option<(u64, i64)> {
        None
    }
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
    /// Consumer id from the trusted source, if present.
    pub consumer: Option<&'a str>,
    /// Host route name.
    pub route: &'a str,
    /// Requested model.
    pub model: &'a str,
    /// Provider label.
    pub provider: &'a str,
    /// tollgate's prompt count.
    pub prompt_tokens: u64,
    /// Completion tokens reserved (`max_tokens` or the configured default), for
    /// every choice together.
    pub reserve_tokens: u64,
    /// Completions the provider generates, each up to the request's cap (OpenAI's
    /// `n`); a clamp splits the room between them. 0 counts as 1.
    pub choices: u64,
}

/// What a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Tokens (input, output or total, per the rule's `count`).
    Tokens,
    /// Requests: one per admitted request.
    Requests,
    /// Cost in micro-dollars, from the route's price table.
    MicroUsd,
}

impl Unit {
    /// Every unit, in [`Unit::index`] order.
    pub const ALL: [Unit; 3] = [Unit::Tokens, Unit::Requests, Unit::MicroUsd];

    /// Position in [`Unit::ALL`], for per-unit tables.
    pub fn index(self) -> usize {
        match self {
            Unit::Tokens => 0,
            Unit::Requests => 1,
            Unit::MicroUsd => 2,
        }
    }

    fn tag(self) -> char {
        match self {
            Unit::Tokens => 't',
            Unit::Requests => 'r',
            Unit::MicroUsd => 'u',
        }
    }
}

/// The budgets of one rule, each its own counter.
fn budgets(r: &LimitRule) -> impl Iterator<Item = (Unit, u64)> {
    [
        r.tokens.map(|t| (Unit::Tokens, t)),
        r.requests.map(|n| (Unit::Requests, n)),
        r.usd_micros().map(|u| (Unit::MicroUsd, u)),
    ]
    .into_iter()
    .flatten()
}

/// A model's price in nano-dollars per token: (input, output, cached input).
pub type Price = (u64, u64, u64);

/// Tokens a rule charges for a given input/output split.
fn cost(count: LimitCount, input: u64, output: u64) -> u64 {
    match count {
        LimitCount::Input => input,
        LimitCount::Output => output,
        LimitCount::Total => input.saturating_add(output),
    }
}

/// Micro-dollars for `input` tokens (of which `cached` were cached) and `output`
/// tokens, rounded up: what a `usd` budget counts.
pub fn usd_micros(count: LimitCount, price: Price, input: u64, cached: u64, output: u64) -> u64 {
    let (pi, po, pc) = price;
    let cached = cached.min(input);
    let nano_in = u128::from(input - cached) * u128::from(pi) + u128::from(cached) * u128::from(pc);
    let nano_out = u128::from(output) * u128::from(po);
    let nano = match count {
        LimitCount::Input => nano_in,
        LimitCount::Output => nano_out,
        LimitCount::Total => nano_in + nano_out,
    };
    u64::try_from(nano.div_ceil(1000)).unwrap_or(u64::MAX)
}

/// What one request costs a counter of `unit` (`None`: a `usd` budget for a
/// model without a price; such a budget refuses, it cannot count).
fn charge_of(
    unit: Unit,
    count: LimitCount,
    price: Option<Price>,
    input: u64,
    cached: u64,
    output: u64,
) -> Option<u64> {
    match unit {
        Unit::Tokens => Some(cost(count, input, output)),
        Unit::Requests => Some(1),
        Unit::MicroUsd => Some(usd_micros(count, price?, input, cached, output)),
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
    push_u64(out, v.len() as u64);
    out.push(':');
    out.push_str(v);
}

fn window_label(out: &mut String, w: Window) {
    match w {
        Window::Fixed(ms) => push_u64(out, ms),
        Window::Weeks(ms) => {
            out.push('w');
            push_u64(out, ms);
        }
        Window::Month => out.push_str("month"),
    }
}

/// The part of a counter key that depends only on the rule (its name, the unit and
/// the window): built once at configure ([`LimitRule::prepare`]).
pub fn key_prefix(name: &str, unit: Unit, window: Window) -> String {
    let mut k = String::with_capacity(32 + name.len());
    k.push_str("tollgate/limits/v2/");
    k.push_str(name);
    k.push('/');
    k.push(unit.tag());
    window_label(&mut k, window);
    k
}

/// The store key of one rule's counter of `unit` for this subject. Requests
/// without a consumer share the `anonymous` consumer's budget.
pub fn counter_key(rule: &LimitRule, unit: Unit, s: &Subject) -> String {
    let prefix = rule.key_prefix(unit);
    let mut k = String::with_capacity(prefix.len() + 48);
    k.push_str(&prefix);
    for p in &rule.key {
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

/// Days since 1970-01-01 of a civil date (proleptic Gregorian, UTC).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a day count since 1970-01-01.
fn civil_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// Start and end (ms since the epoch) of the window holding `now_ms`.
pub fn window_bounds(w: Window, now_ms: u64) -> (u64, u64) {
    match w {
        Window::Fixed(ms) => {
            let ms = ms.max(1);
            let start = now_ms - now_ms % ms;
            (start, start.saturating_add(ms))
        }
        Window::Weeks(ms) => {
            // 1970-01-05, the first Monday after the epoch.
            const MONDAY: u64 = 4 * 86_400_000;
            let ms = ms.max(1);
            let start = now_ms - now_ms.saturating_sub(MONDAY) % ms;
            (start, start.saturating_add(ms))
        }
        Window::Month => {
            let day = i64::try_from(now_ms / 86_400_000).unwrap_or(0);
            let (y, m) = civil_month(day);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let ms = |d: i64| u64::try_from(d).unwrap_or(0).saturating_mul(86_400_000);
            (ms(days_from_civil(y, m, 1)), ms(days_from_civil(ny, nm, 1)))
        }
    }
}

/// Until when (ms since the epoch) a clock reading taken at `read_ms`, on a timer
/// that ticks every `period_ms`, may stand in for the clock when admitting from
/// credits (see [`admit_from_credits`]): while the reading is at least two
/// periods before the end of the window it falls in, for each of `windows`, the
/// clock (at most one period, plus the timer's lateness, ahead of the reading)
/// is in the same windows, so the reading picks the same counters. Windows of
/// two periods or less leave the reading unusable (but at a window's very start).
pub fn recent_time_usable_until(windows: &[Window], read_ms: u64, period_ms: u64) -> u64 {
    let margin = period_ms.saturating_mul(2);
    windows
        .iter()
        .map(|w| window_bounds(*w, read_ms).1.saturating_sub(margin))
        .min()
        .unwrap_or(0)
}

/// The state of one budget, for headers and messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateState {
    /// Rule name (shared with the config: no copy per request).
    pub rule: Rc<str>,
    /// What the budget counts.
    pub unit: Unit,
    /// Budget per window (tokens, requests or micro-dollars).
    pub limit: u64,
    /// What is left in the current window (after this request's charge if admitted).
    pub remaining: u64,
    /// Milliseconds until the window resets.
    pub reset_ms: u64,
}

impl RateState {
    /// `x-ratelimit-{limit,remaining,reset}-{tokens,requests}` as OpenAI sends
    /// them (`-usd` for cost budgets, in dollars: tollgate's own extension).
    pub fn push_headers(&self, out: &mut HeaderList) {
        let names = match self.unit {
            Unit::Tokens => [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
            Unit::Requests => [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            Unit::MicroUsd => [
                "x-ratelimit-limit-usd",
                "x-ratelimit-remaining-usd",
                "x-ratelimit-reset-usd",
            ],
        };
        let usd = self.unit == Unit::MicroUsd;
        let amount = |t: &mut String, v: u64| {
            if usd {
                push_micros_as_units(t, v);
            } else {
                push_u64(t, v);
            }
        };
        let [limit, remaining, reset] = names;
        out.push_with(limit, |t| amount(t, self.limit));
        out.push_with(remaining, |t| amount(t, self.remaining));
        out.push_with(reset, |t| push_duration(t, self.reset_ms));
    }

    /// What the budget counts, for messages.
    pub fn what(&self) -> &'static str {
        match self.unit {
            Unit::Tokens => "tokens",
            Unit::Requests => "requests",
            Unit::MicroUsd => "micro-USD",
        }
    }
}

/// `micros` millionths as a decimal with six places (`1.000250` for 1,000,250).
fn push_micros_as_units(out: &mut String, micros: u64) {
    push_u64(out, micros / 1_000_000);
    out.push('.');
    let frac = micros % 1_000_000;
    let mut div = 100_000;
    while div > 0 {
        out.push(char::from(b'0' + ((frac / div) % 10) as u8));
        div /= 10;
    }
}

/// A duration the way OpenAI writes `x-ratelimit-reset-*` (`250ms`, `12s`, `6m0s`, `1h2m3s`).
pub fn format_duration(ms: u64) -> String {
    let mut out = String::with_capacity(16);
    push_duration(&mut out, ms);
    out
}

/// [`format_duration`], appended to `out`.
pub fn push_duration(out: &mut String, ms: u64) {
    if ms < 1000 {
        push_u64(out, ms);
        out.push_str("ms");
        return;
    }
    let s = ms.div_ceil(1000);
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        push_u64(out, h);
        out.push('h');
    }
    if h > 0 || m > 0 {
        push_u64(out, m);
        out.push('m');
    }
    push_u64(out, s);
    out.push('s');
}

/// One counter charged at admission, remembered for the true-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    key: String,
    window_start: u64,
    unit: Unit,
    count: LimitCount,
    charged: u64,
    /// Credit taken with the charge (held by this worker, not used by the request).
    leased: u64,
}

/// The outcome of admission.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Admission {
    /// Let the request through (always true in `report_only`).
    pub allowed: bool,
    /// The limits would have refused it (equals `!allowed` when enforcing).
    pub over_limit: bool,
    /// The refusing budget (the one with the latest reset), if any.
    pub refused_by: Option<RateState>,
    /// Per unit (tokens, requests, USD), the budget that matters most to the
    /// client: the refusing one, else the one with the least remaining. `None`
    /// when the store was unusable.
    pub states: Vec<RateState>,
    /// What was charged, for [`true_up`].
    pub charges: Vec<Charge>,
    /// Counter updates that gave up (store error or CAS attempts exhausted);
    /// those rules failed open for this request.
    pub store_errors: usize,
    /// The per-choice completion cap was lowered to this to fit (clamp mode); the
    /// reservation is then this times [`Subject::choices`].
    pub clamped_to: Option<u64>,
    /// Output tokens this request may produce before some budget runs out
    /// (`None`: unbounded), for the mid-stream cut-off. Computed from the counters
    /// as read at admission, before this request's own charge.
    pub output_allowance: Option<u64>,
    /// The price used for `usd` budgets, kept for the true-up.
    pub price: Option<Price>,
}

impl Admission {
    /// The budget a client sees in messages and logs: the refusing one, else the
    /// one with the least remaining.
    pub fn state(&self) -> Option<&RateState> {
        self.refused_by.as_ref().or_else(|| {
            self.states.iter().min_by_key(|s| {
                (
                    s.remaining.saturating_mul(1000) / s.limit.max(1),
                    s.remaining,
                )
            })
        })
    }

    /// Whole seconds a refused client should wait (`retry-after`).
    pub fn retry_after_secs(&self) -> u64 {
        self.state().map_or(1, |s| s.reset_ms.div_ceil(1000).max(1))
    }

    /// The `x-ratelimit-*` headers, one set per unit with budgets.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = HeaderList::with_capacity(self.states.len() * 3 + 1);
        self.push_headers(&mut out);
        out.to_vec()
    }

    /// [`Admission::headers`], appended to a list of the caller's.
    pub fn push_headers(&self, out: &mut HeaderList) {
        for s in &self.states {
            s.push_headers(out);
        }
        if let Some(n) = self.clamped_to {
            out.push_u64("x-tollgate-max-tokens-clamped", n);
        }
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
    seen: Option<(Counter, u32)>,
) -> Result<bool, StoreError> {
    charge(store, key, ws, delta, limit, seen, 0).map(|c| c.is_some())
}

/// What a successful [`charge`] wrote.
#[derive(Clone, Copy, Debug)]
struct Charged {
    /// Credit taken on top of the delta.
    leased: u64,
    /// The counter's usage after the write (credit included).
    used: u64,
}

/// [`add`], also taking a credit of up to `lease_max` on top of a positive
/// `delta` when there is room: at most [`LEASE_SHARE_OF_ROOM`]'s share of what the
/// limit leaves after the delta. `Ok(None)`: refused by `limit`.
fn charge(
    store: &mut dyn Store,
    key: &str,
    ws: u64,
    delta: i128,
    limit: Option<u64>,
    mut seen: Option<(Counter, u32)>,
    lease_max: u64,
) -> Result<Option<Charged>, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (c, cas) = match seen.take() {
            Some(s) => s,
            None => read(store, key, ws)?,
        };
        if c.window_start > ws {
            // The window moved on: nothing left to adjust.
            return Ok(Some(Charged { leased: 0, used: 0 }));
        }
        let used = c.used_in(ws);
        let mut new = (i128::from(used) + delta).clamp(0, i128::from(u64::MAX)) as u64;
        let mut leased = 0;
        if let Some(l) = limit {
            if delta > 0 && new > l {
                return Ok(None);
            }
            if delta > 0 {
                leased = lease_max.min((l - new) / LEASE_SHARE_OF_ROOM);
                new += leased;
            }
        }
        let next = Counter {
            window_start: ws,
            used: new,
        };
        match store.set(key, &next.encode(), cas) {
            Ok(()) => return Ok(Some(Charged { leased, used: new })),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable)
}

/// One budget of one rule, as read at admission.
struct Planned<'r> {
    rule: &'r LimitRule,
    unit: Unit,
    limit: u64,
    key: String,
    start: u64,
    end: u64,
    /// The counter as read (`None`: store error, this budget fails open).
    seen: Option<(Counter, u32)>,
    /// This worker's deferred refund for the counter, taken out of the store's
    /// deferral map: written with this request's charge, or put back.
    deferred: i64,
    /// Usage before this request and whether its charge would go over the limit
    /// (`None`: store error).
    before: Option<(u64, bool)>,
    /// Usage after this request's charge and whether it is over the limit
    /// (`None`: not charged).
    after: Option<(u64, bool)>,
    /// The charge to take from this worker's credit (credit path only).
    want: u64,
}

impl<'r> Planned<'r> {
    /// A budget as read: its counter (`seen`) and this worker's held delta.
    fn new(
        rule: &'r LimitRule,
        unit: Unit,
        limit: u64,
        key: String,
        (start, end): (u64, u64),
        seen: Option<(Counter, u32)>,
        deferred: i64,
    ) -> Planned<'r> {
        Planned {
            rule,
            unit,
            limit,
            key,
            start,
            end,
            seen,
            deferred,
            before: None,
            after: None,
            want: 0,
        }
    }

    /// The charge to remember for the true-up; the key moves into it.
    fn take_charge(&mut self, charged: u64, leased: u64) -> Charge {
        Charge {
            key: std::mem::take(&mut self.key),
            window_start: self.start,
            unit: self.unit,
            count: self.rule.count,
            charged,
            leased,
        }
    }

    /// Usage before this request, deferred refunds included.
    fn used(&self) -> Option<u64> {
        let (c, _) = self.seen.as_ref()?;
        Some(
            u64::try_from(i128::from(c.used_in(self.start)) + i128::from(self.deferred))
                .unwrap_or(0),
        )
    }

    fn state(&self, used: u64, now_ms: u64) -> RateState {
        RateState {
            rule: self.rule.shared_name(),
            unit: self.unit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_ms: self.end.saturating_sub(now_ms),
        }
    }

    /// Output tokens that still fit in this budget on top of the prompt (`None`:
    /// unbounded); `Some(0)` also when the prompt alone does not fit.
    fn output_room(&self, prompt: u64, price: Option<Price>) -> Option<u64> {
        let used = self.used()?;
        let room = self.limit.saturating_sub(used);
        let count = self.rule.count;
        match self.unit {
            Unit::Requests => (room == 0).then_some(0),
            Unit::Tokens => match count {
                LimitCount::Input => (prompt > room).then_some(0),
                LimitCount::Output => Some(room),
                LimitCount::Total => Some(room.saturating_sub(prompt)),
            },
            Unit::MicroUsd => {
                let Some(p) = price else { return Some(0) };
                let prompt_micros = usd_micros(count, p, prompt, 0, 0);
                if prompt_micros > room {
                    return Some(0);
                }
                if count == LimitCount::Input || p.1 == 0 {
                    return None;
                }
                let prompt_nano = match count {
                    LimitCount::Total => u128::from(prompt) * u128::from(p.0),
                    _ => 0,
                };
                let nano_room = (u128::from(room) * 1000).saturating_sub(prompt_nano);
                Some(u64::try_from(nano_room / u128::from(p.1)).unwrap_or(u64::MAX))
            }
        }
    }
}

/// Per unit, the budget that matters most to a client, from each budget's
/// `(usage, over the limit)` as `seen` picks it: an over-limit one (latest reset
/// first), else the least remaining. Only the chosen ones become [`RateState`]s.
fn pick_states(
    plan: &[Planned],
    seen: impl Fn(&Planned) -> Option<(u64, bool)>,
    now_ms: u64,
) -> Vec<RateState> {
    let mut out = Vec::with_capacity(1);
    for unit in [Unit::Tokens, Unit::Requests, Unit::MicroUsd] {
        let best = plan
            .iter()
            .filter(|p| p.unit == unit)
            .filter_map(|p| {
                let (used, over) = seen(p)?;
                Some((p, used, over))
            })
            .max_by_key(|(p, used, over)| {
                let reset = p.end.saturating_sub(now_ms);
                (
                    *over,
                    if *over { reset } else { 0 },
                    u64::MAX - p.limit.saturating_sub(*used),
                    reset,
                )
            });
        if let Some((p, used, _)) = best {
            out.push(p.state(used, now_ms));
        }
    }
    out
}

/// Put back the deferred refunds admission took but did not write (written now
/// if the store will not hold them).
fn restore_deferred(store: &mut dyn Store, plan: &[Planned]) {
    for p in plan.iter().filter(|p| p.deferred != 0) {
        hold_or_write(store, &p.key, p.start, p.deferred);
    }
}

/// Hold `delta` for `key` in window `ws` with this worker's refunds and credits
/// ([`Store::defer`]); where the store will not hold it, write it to the counter
/// now. `true`: held.
fn hold_or_write(store: &mut dyn Store, key: &str, ws: u64, delta: i64) -> bool {
    if store.defer(key, ws, delta) {
        return true;
    }
    let _ = add(store, key, ws, i128::from(delta), None, None);
    false
}

/// Whether admission may take and spend credits on this route with this store:
/// enforcing, a store that leases, and neither clamp nor mid-stream cut-off (they
/// need the counters' live room).
fn takes_credits(cfg: &Limits, store: &dyn Store) -> bool {
    cfg.mode == LimitMode::Enforce
        && store.leases()
        && !cfg.clamp_max_tokens
        && cfg.stream_cutoff != StreamCutoff::Cut
}

/// The model's price for `usd` budgets (`None` when the route has none, or the
/// model no price).
fn price_for_usd(cfg: &Limits, s: &Subject) -> Option<Price> {
    (cfg.rules.iter().any(|r| r.usd.is_some()))
        .then(|| cfg.price_for(s.model).map(|p| p.nano_per_token()))
        .flatten()
}

/// Admit a request: every budget of every rule must have room for prompt +
/// reservation (strictest wins; none is skipped). Admitted requests are charged on
/// every budget; refused ones on none. In `report_only` the request is always
/// admitted and charged. With `clamp_max_tokens`, a request whose prompt fits but
/// whose reservation does not is admitted with the reservation lowered to what
/// fits, split evenly between its choices (at least `clamp_min_tokens` each); see
/// [`Admission::clamped_to`].
///
/// Hostcalls: per budget one `get` and one CAS `set` (more only on contention or
/// when a counter is created). Refunds this worker deferred ([`Store::defer`]) are
/// folded into the same `set`. Where the store leases ([`Store::leases`]) and the
/// route enforces without clamp or mid-stream cut, that `set` also takes a credit
/// (up to [`LEASE_REQUESTS`] charges, at most 1/[`LEASE_SHARE_OF_ROOM`] of the room
/// left), and the next requests of the same keys on this worker are admitted from
/// it with no store call at all. Credits are charged before they are spent, so
/// admitted usage still never passes a limit by more than one request's overrun;
/// what a worker holds unspent is returned with its refunds on the timer.
pub fn admit(cfg: &Limits, store: &mut dyn Store, now_ms: u64, s: &Subject) -> Admission {
    let price = price_for_usd(cfg, s);
    let from_credit = takes_credits(cfg, store)
        .then(|| admit_from_credit(cfg, store, now_ms, s, price))
        .flatten();
    from_credit.unwrap_or_else(|| charge_store(cfg, store, now_ms, s, price))
}

/// [`admit`] against the shared counters, without first trying this worker's
/// credits (for a caller that just tried them, see [`admit_from_credits`]).
pub fn admit_from_store(
    cfg: &Limits,
    store: &mut dyn Store,
    now_ms: u64,
    s: &Subject,
) -> Admission {
    charge_store(cfg, store, now_ms, s, price_for_usd(cfg, s))
}

/// [`admit_from_store`] with the `usd` price already looked up.
fn charge_store(
    cfg: &Limits,
    store: &mut dyn Store,
    now_ms: u64,
    s: &Subject,
    price: Option<Price>,
) -> Admission {
    let enforce = cfg.mode == LimitMode::Enforce;
    let mut store_errors = 0;
    let lease = takes_credits(cfg, store);
    // Phase 1: read every budget (no writes).
    let mut plan: Vec<Planned> = Vec::with_capacity(cfg.rules.len());
    for r in &cfg.rules {
        let (start, end) = window_bounds(r.window(), now_ms);
        for (unit, limit) in budgets(r) {
            let key = counter_key(r, unit, s);
            let (seen, deferred) = match read(store, &key, start) {
                Ok(seen) => (Some(seen), store.take_deferred(&key, start)),
                Err(_) => {
                    store_errors += 1;
                    (None, 0)
                }
            };
            plan.push(Planned::new(
                r,
                unit,
                limit,
                key,
                (start, end),
                seen,
                deferred,
            ));
        }
    }
    let prompt = s.prompt_tokens;
    let output_allowance = plan
        .iter()
        .filter_map(|p| p.output_room(prompt, price))
        .min();
    let mut reserve = s.reserve_tokens;
    let mut clamped_to = None;
    if cfg.clamp_max_tokens && enforce {
        if let Some(room) = output_allowance {
            // The cap written into the body holds per choice, and every choice may
            // use all of it: `n` choices share the room (0 per choice refuses, as
            // `clamp_min_tokens` is at least 1).
            let choices = s.choices.max(1);
            let per_choice = room / choices;
            if room < reserve && per_choice >= cfg.clamp_min_tokens {
                reserve = per_choice.saturating_mul(choices);
                clamped_to = Some(per_choice);
            }
        }
    }
    let want_of = |p: &Planned| charge_of(p.unit, p.rule.count, price, prompt, 0, reserve);
    for p in plan.iter_mut() {
        p.before = p.used().map(|used| {
            let over = want_of(p).is_none_or(|w| used.saturating_add(w) > p.limit);
            (used, over)
        });
    }
    let refusing = plan
        .iter()
        .filter_map(|p| match p.before {
            Some((used, true)) => Some((p, used)),
            _ => None,
        })
        .max_by_key(|(p, _)| p.end)
        .map(|(p, used)| p.state(used, now_ms));
    if let (true, Some(st)) = (enforce, &refusing) {
        restore_deferred(store, &plan);
        return Admission {
            allowed: false,
            over_limit: true,
            refused_by: Some(st.clone()),
            states: pick_states(&plan, |p| p.before, now_ms),
            store_errors,
            price,
            ..Admission::default()
        };
    }
    // Phase 2: charge each budget with check-and-set; undo on a late refusal.
    let mut charges: Vec<Charge> = Vec::with_capacity(plan.len());
    let mut late_refusal = None;
    for p in plan.iter_mut() {
        let Some(seen) = p.seen.take() else { continue };
        let want = want_of(p).unwrap_or(0);
        let limit = enforce.then_some(p.limit);
        let delta = i128::from(want) + i128::from(p.deferred);
        let lease_max = if lease {
            want.saturating_mul(LEASE_REQUESTS)
        } else {
            0
        };
        match charge(store, &p.key, p.start, delta, limit, Some(seen), lease_max) {
            Ok(Some(done)) => {
                let used = p.used_after(seen, want);
                p.deferred = 0;
                p.after = Some((used, used > p.limit));
                let mut leased = done.leased;
                if leased > 0 {
                    // The credit is held like a refund (returned by the flush);
                    // should it not be held, it goes back at once.
                    let credit = i64::try_from(leased).unwrap_or(i64::MAX);
                    if !hold_or_write(store, &p.key, p.start, -credit) {
                        leased = 0;
                    }
                }
                if lease {
                    store.set_synced_used(&p.key, p.start, done.used);
                }
                // Nothing deferred is left to restore under this key.
                charges.push(p.take_charge(want, leased));
            }
            Ok(None) => {
                // Another worker spent the room between our read and write.
                let used =
                    read(store, &p.key, p.start).map_or(p.limit, |(c, _)| c.used_in(p.start));
                late_refusal = Some(p.state(used, now_ms));
                break;
            }
            Err(_) => store_errors += 1,
        }
    }
    restore_deferred(store, &plan);
    if let Some(st) = late_refusal {
        for c in &charges {
            // Give back the charge and the credit taken with it.
            if c.leased > 0 {
                let _ = store.take_deferred(&c.key, c.window_start);
            }
            let _ = add(
                store,
                &c.key,
                c.window_start,
                -i128::from(c.charged) - i128::from(c.leased),
                None,
                None,
            );
        }
        return Admission {
            allowed: false,
            over_limit: true,
            states: vec![st.clone()],
            refused_by: Some(st),
            store_errors,
            price,
            ..Admission::default()
        };
    }
    Admission {
        allowed: true,
        over_limit: refusing.is_some(),
        // Report-only: it went through, and took what it would have been refused.
        refused_by: refusing.map(|st| RateState { remaining: 0, ..st }),
        states: pick_states(&plan, |p| p.after, now_ms),
        charges,
        store_errors,
        clamped_to,
        output_allowance: if enforce { output_allowance } else { None },
        price,
    }
}

/// Admit from this worker's credits alone, with no store call and no refusal:
/// `None` when the route cannot take credits (report-only, clamp or mid-stream
/// cut, a store that does not lease) or a budget lacks credit; then call
/// [`admit`]. `now_ms` may be a recent reading of the clock rather than the clock
/// (see [`recent_time_usable_until`]): it picks the windows and the reset shown
/// in the headers, which is then late by at most the reading's age (so never
/// tells a client to come back too early).
pub fn admit_from_credits(
    cfg: &Limits,
    store: &mut dyn Store,
    now_ms: u64,
    s: &Subject,
) -> Option<Admission> {
    if !takes_credits(cfg, store) {
        return None;
    }
    admit_from_credit(cfg, store, now_ms, s, price_for_usd(cfg, s))
}

/// Admit from this worker's credits alone when every budget of every rule holds
/// enough for this request's charge: no store call. `None` (nothing changed): go
/// to the store. The charge is taken from the credit; the usage shown in the
/// headers is the counter as this worker last wrote it, less its unspent credit.
fn admit_from_credit(
    cfg: &Limits,
    store: &mut dyn Store,
    now_ms: u64,
    s: &Subject,
    price: Option<Price>,
) -> Option<Admission> {
    let mut plan: Vec<Planned> = Vec::with_capacity(cfg.rules.len());
    let mut enough = true;
    'rules: for r in &cfg.rules {
        let (start, end) = window_bounds(r.window(), now_ms);
        for (unit, limit) in budgets(r) {
            let Some(want) = charge_of(unit, r.count, price, s.prompt_tokens, 0, s.reserve_tokens)
            else {
                enough = false;
                break 'rules;
            };
            let key = counter_key(r, unit, s);
            let Some((synced, held)) = store.spend_credit(&key, start, want) else {
                enough = false;
                break 'rules;
            };
            let seen = Counter {
                window_start: start,
                used: synced,
            };
            let mut p = Planned::new(r, unit, limit, key, (start, end), Some((seen, 0)), held);
            p.want = want;
            plan.push(p);
        }
    }
    if !enough || plan.is_empty() {
        // Give back what the budgets before the one short of credit took.
        for p in &plan {
            hold_or_write(
                store,
                &p.key,
                p.start,
                -i64::try_from(p.want).unwrap_or(i64::MAX),
            );
        }
        return None;
    }
    let output_allowance = plan
        .iter()
        .filter_map(|p| p.output_room(s.prompt_tokens, price))
        .min();
    let mut charges = Vec::with_capacity(plan.len());
    for p in plan.iter_mut() {
        let want = p.want;
        let used = p.used().map_or(0, |u| u.saturating_add(want));
        p.after = Some((used, used > p.limit));
        charges.push(p.take_charge(want, 0));
    }
    Some(Admission {
        allowed: true,
        over_limit: false,
        refused_by: None,
        states: pick_states(&plan, |p| p.after, now_ms),
        charges,
        store_errors: 0,
        clamped_to: None,
        output_allowance,
        price,
    })
}

impl Planned<'_> {
    /// Usage after this request's charge (deferred refunds included).
    fn used_after(&self, seen: (Counter, u32), want: u64) -> u64 {
        u64::try_from(
            i128::from(seen.0.used_in(self.start)) + i128::from(self.deferred) + i128::from(want),
        )
        .unwrap_or(0)
    }
}

/// Replace the admission charges by what the exchange really used (the provider's
/// usage, or tollgate's count): overruns are charged at once; refunds of unused
/// reservation are deferred when the store supports it ([`Store::defer`]: folded
/// into this worker's next write of the counter, or [`flush_deferred`]), else
/// written at once. `cached` is the part of `input` read from the provider's cache
/// (priced apart). Counters whose window has since ended are left alone.
pub fn true_up(store: &mut dyn Store, a: &Admission, input: u64, cached: u64, output: u64) {
    true_up_charges(store, &a.charges, a.price, input, cached, output);
}

/// [`true_up`] for charges taken out of their [`Admission`] (`price`: its
/// [`Admission::price`]).
pub fn true_up_charges(
    store: &mut dyn Store,
    charges: &[Charge],
    price: Option<Price>,
    input: u64,
    cached: u64,
    output: u64,
) {
    for c in charges {
        let Some(real) = charge_of(c.unit, c.count, price, input, cached, output) else {
            continue;
        };
        let delta = i128::from(real) - i128::from(c.charged);
        if delta < 0 {
            let d = i64::try_from(delta).unwrap_or(i64::MIN);
            if store.defer(&c.key, c.window_start, d) {
                continue;
            }
        }
        if delta != 0 && add(store, &c.key, c.window_start, delta, None, None) == Ok(true) {
            // An overrun written now: the usage this worker last saw grows with it.
            if let Some(u) = store.synced_used(&c.key, c.window_start) {
                let grown = i128::from(u).saturating_add(delta).max(0);
                store.set_synced_used(&c.key, c.window_start, grown as u64);
            }
        }
    }
}

/// Write every deferred refund (called on a timer, so a refund never waits
/// longer than the timer period when the counter sees no further request).
pub fn flush_deferred(store: &mut dyn Store) {
    for (key, ws, delta) in store.drain_deferred() {
        let _ = add(store, &key, ws, i128::from(delta), None, None);
    }
}

/// Refunds held back per counter: a refund is written together with this worker's
/// next charge of the same counter, saving the `get` + `set` a separate write
/// costs. Held refunds only make a counter read higher than it is (never lower),
/// so the overshoot bound is unaffected; another worker sees them once this one
/// writes or flushes.
///
/// Looked up about four times per limited request, so it is keyed by a seeded
/// 64-bit hash of the counter key (std's SipHash and byte-wise key compares cost
/// thousands of wasm operators per lookup). The entry keeps its key and is used
/// only when the key matches: on a hash collision the second key is simply not
/// held (its refunds are written at once), never mixed with the first.
#[derive(Default, Debug)]
pub struct Deferred {
    hashes: crate::hash::FastState,
    map: crate::hash::FastMap<u64, Held>,
}

/// One counter's entry in [`Deferred`].
#[derive(Debug)]
struct Held {
    key: String,
    /// Window start, held delta (refunds and credit, negative) and the counter's
    /// usage as this worker last wrote it (see [`Store::synced_used`]).
    window_start: u64,
    delta: i64,
    synced: Option<u64>,
}

/// Equal bytes, compared eight at a time (a slice `==` is a byte loop in wasm).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_le_bytes(w)
    };
    for (p, q) in (&mut x).zip(&mut y) {
        if word(p) != word(q) {
            return false;
        }
    }
    x.remainder() == y.remainder()
}

impl Deferred {
    fn hash(&self, key: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hashes, key)
    }

    /// The entry of `key`, if it holds that key.
    fn entry_ref(&self, key: &str) -> Option<&Held> {
        let h = self.hash(key);
        self.map
            .get(&h)
            .filter(|e| same_bytes(e.key.as_bytes(), key.as_bytes()))
    }

    /// The entry of `key`, if it holds that key, to change.
    fn entry(&mut self, key: &str) -> Option<&mut Held> {
        let h = self.hash(key);
        self.map
            .get_mut(&h)
            .filter(|e| same_bytes(e.key.as_bytes(), key.as_bytes()))
    }

    /// The entry of `key`, made if absent; `None` when another key has its hash.
    fn entry_or_new(&mut self, key: &str, window_start: u64) -> Option<&mut Held> {
        let h = self.hash(key);
        let e = self.map.entry(h).or_insert_with(|| Held {
            key: key.to_string(),
            window_start,
            delta: 0,
            synced: None,
        });
        same_bytes(e.key.as_bytes(), key.as_bytes()).then_some(e)
    }

    /// Hold `delta` (a refund or credit, negative) for `key` in window `ws`.
    /// `false`: not held (another key's entry has its hash); write it now.
    pub fn defer(&mut self, key: &str, ws: u64, delta: i64) -> bool {
        let Some(e) = self.entry_or_new(key, ws) else {
            return false;
        };
        if e.window_start == ws {
            e.delta = e.delta.saturating_add(delta);
        } else {
            *e = Held {
                key: std::mem::take(&mut e.key),
                window_start: ws,
                delta,
                synced: None,
            };
        }
        true
    }

    /// The counter's usage as last written by this worker in window `ws`.
    pub fn synced(&self, key: &str, ws: u64) -> Option<u64> {
        self.entry_ref(key)
            .filter(|e| e.window_start == ws)
            .and_then(|e| e.synced)
    }

    /// Remember the counter's usage after this worker's write in window `ws`.
    pub fn set_synced(&mut self, key: &str, ws: u64, used: u64) {
        let Some(e) = self.entry_or_new(key, ws) else {
            return;
        };
        if e.window_start == ws {
            e.synced = Some(used);
        } else {
            e.window_start = ws;
            e.delta = 0;
            e.synced = Some(used);
        }
    }

    /// Take what is held for `key` in window `ws` (a refund for an older window is
    /// dropped). The emptied entry stays until the next [`Deferred::drain`], so the
    /// refund this request leaves is added in place: no allocation per request.
    pub fn take(&mut self, key: &str, ws: u64) -> i64 {
        self.take_with_synced(key, ws).0
    }

    /// [`Deferred::take`] and [`Deferred::synced`] in one lookup.
    pub fn take_with_synced(&mut self, key: &str, ws: u64) -> (i64, Option<u64>) {
        if self.map.is_empty() {
            return (0, None);
        }
        match self.entry(key) {
            Some(e) if e.window_start == ws => (std::mem::take(&mut e.delta), e.synced),
            Some(e) => {
                e.delta = 0;
                (0, None)
            }
            None => (0, None),
        }
    }

    /// [`Store::spend_credit`] in one lookup: the credit is the held delta when
    /// negative; a held refund for an older window is left to the next
    /// [`Deferred::take`].
    pub fn spend(&mut self, key: &str, ws: u64, want: u64) -> Option<(u64, i64)> {
        if self.map.is_empty() {
            return None;
        }
        let e = self.entry(key).filter(|e| e.window_start == ws)?;
        let synced = e.synced?;
        let credit = u64::try_from(-i128::from(e.delta)).unwrap_or(0);
        if credit < want {
            return None;
        }
        let before = e.delta;
        e.delta = before.saturating_add(i64::try_from(want).unwrap_or(i64::MAX));
        Some((synced, before))
    }

    /// Test hook: an entry for `other` stored where `key` hashes, as a hash
    /// collision would leave it.
    #[cfg(test)]
    fn plant_collision(&mut self, key: &str, other: &str, ws: u64, delta: i64) {
        let h = self.hash(key);
        self.map.insert(
            h,
            Held {
                key: other.to_string(),
                window_start: ws,
                delta,
                synced: Some(7),
            },
        );
    }

    /// Everything held, emptying the map.
    pub fn drain(&mut self) -> Vec<(String, u64, i64)> {
        self.map
            .drain()
            .filter(|(_, e)| e.delta != 0)
            .map(|(_, e)| (e.key, e.window_start, e.delta))
            .collect()
    }

    /// Nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.values().all(|e| e.delta == 0)
    }
}

#[cfg(test)]
mod tests;
