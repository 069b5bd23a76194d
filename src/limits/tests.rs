use super::*;
use crate::config::{Config, LimitCount, LimitKeyPart, LimitRule, Limits, Window};

fn limits(json: &str) -> Limits {
    let c = Config::parse(format!(r#"{{"defaults":{{"limits":{json}}}}}"#).as_bytes()).unwrap();
    c.route(None).limits.clone()
}

fn subject(consumer: Option<&str>, prompt: u64, reserve: u64) -> Subject<'_> {
    Subject {
        consumer,
        route: "chat",
        model: "gpt-4o",
        provider: "openai",
        prompt_tokens: prompt,
        reserve_tokens: reserve,
        choices: 1,
    }
}

/// The token counter key of a rule with this name, window and key.
fn counter_key(name: &str, window_ms: u64, parts: &[LimitKeyPart], s: &Subject) -> String {
    let rule = LimitRule {
        name: name.to_string(),
        key: parts.to_vec(),
        window: format!("{}s", window_ms.div_ceil(1000)),
        tokens: Some(1),
        requests: None,
        usd: None,
        count: LimitCount::Total,
        prepared: Default::default(),
    };
    super::counter_key(&rule, Unit::Tokens, s)
}

const T0: u64 = 1_699_999_200_000; // an hour boundary

fn store() -> MemoryStore {
    let mut s = MemoryStore::default();
    init_store(&mut s);
    s
}

#[test]
fn admits_until_prompt_plus_reservation_does_not_fit() {
    let l = limits(r#"{"rules":[{"name":"m","key":["consumer"],"window":"1m","tokens":100}]}"#);
    let mut st = store();
    let a = admit(&l, &mut st, T0, &subject(Some("alice"), 30, 20));
    assert!(a.allowed && !a.over_limit);
    let s = a.state().cloned().unwrap();
    assert_eq!((s.limit, s.remaining, s.reset_ms), (100, 50, 60_000));
    let a2 = admit(&l, &mut st, T0 + 1000, &subject(Some("alice"), 30, 20));
    assert!(a2.allowed);
    assert_eq!(a2.state().cloned().unwrap().remaining, 0);
    let a3 = admit(&l, &mut st, T0 + 2000, &subject(Some("alice"), 1, 0));
    assert!(!a3.allowed && a3.over_limit);
    assert_eq!(a3.state().cloned().unwrap().remaining, 0);
    assert_eq!(a3.retry_after_secs(), 58);
    // Another consumer has its own budget.
    assert!(admit(&l, &mut st, T0 + 2000, &subject(Some("bob"), 30, 20)).allowed);
    // The next window starts empty.
    assert!(admit(&l, &mut st, T0 + 60_000, &subject(Some("alice"), 30, 20)).allowed);
}

#[test]
fn strictest_rule_wins_and_refusal_charges_nothing() {
    let l = limits(
        r#"{"rules":[{"name":"min","window":"1m","tokens":1000},
                     {"name":"hour","window":"1h","tokens":150}]}"#,
    );
    let mut st = store();
    let a = admit(&l, &mut st, T0, &subject(None, 50, 50));
    assert!(a.allowed);
    let s = a.state().cloned().unwrap();
    assert_eq!((&*s.rule, s.remaining), ("hour", 50));
    let refused = admit(&l, &mut st, T0, &subject(None, 50, 50));
    assert!(!refused.allowed);
    assert_eq!(&*refused.state().unwrap().rule, "hour");
    assert_eq!(refused.retry_after_secs(), 3600);
    // The minute rule was not charged for the refused request.
    let minute = limits(r#"{"rules":[{"name":"min","window":"1m","tokens":1000}]}"#);
    let a = admit(&minute, &mut st, T0, &subject(None, 0, 0));
    assert_eq!(a.state().cloned().unwrap().remaining, 900);
}

#[test]
fn true_up_replaces_the_reservation_with_real_usage() {
    let l = limits(
        r#"{"rules":[{"name":"t","window":"1m","tokens":1000},
                     {"name":"o","window":"1m","tokens":1000,"count":"output"},
                     {"name":"i","window":"1m","tokens":1000,"count":"input"}]}"#,
    );
    let mut st = store();
    let a = admit(&l, &mut st, T0, &subject(None, 10, 500));
    true_up(&mut st, &a, 10, 0, 7);
    let probe = admit(&l, &mut st, T0, &subject(None, 0, 0));
    let remaining: Vec<_> = probe
        .charges
        .iter()
        .map(|c| (c.key.clone(), c.charged))
        .collect();
    assert_eq!(remaining.len(), 3);
    // Least remaining is the total rule: 1000 - 17.
    assert_eq!(probe.state().cloned().unwrap().remaining, 983);
    // An overrun is charged too.
    let a = admit(&l, &mut st, T0, &subject(None, 10, 5));
    true_up(&mut st, &a, 10, 0, 400);
    let probe = admit(&l, &mut st, T0, &subject(None, 0, 0));
    assert_eq!(probe.state().cloned().unwrap().remaining, 1000 - 17 - 410);
}

#[test]
fn report_only_never_refuses_but_says_it_would() {
    let l = limits(r#"{"mode":"report_only","rules":[{"name":"m","window":"1m","tokens":10}]}"#);
    let mut st = store();
    let a = admit(&l, &mut st, T0, &subject(None, 8, 0));
    assert!(a.allowed && !a.over_limit);
    let a = admit(&l, &mut st, T0, &subject(None, 8, 0));
    assert!(a.allowed && a.over_limit);
    assert_eq!(a.state().cloned().unwrap().remaining, 0);
}

#[test]
fn keys_are_unforgeable_and_bounded() {
    let parts = [LimitKeyPart::Consumer, LimitKeyPart::Model];
    let a = counter_key("r", 60_000, &parts, &subject(Some("a/m1:x"), 0, 0));
    let mut s = subject(Some("a"), 0, 0);
    s.model = "x";
    let b = counter_key("r", 60_000, &parts, &s);
    assert_ne!(a, b);
    let long = "é".repeat(1000);
    let k = counter_key("r", 1000, &parts, &subject(Some(&long), 0, 0));
    assert!(k.len() < 400, "{}", k.len());
    let anon = counter_key("r", 1000, &parts, &subject(None, 0, 0));
    assert!(anon.contains("/anonymous"));
}

#[test]
fn durations_look_like_openai_ones() {
    assert_eq!(format_duration(250), "250ms");
    assert_eq!(format_duration(1000), "1s");
    assert_eq!(format_duration(59_001), "1m0s");
    assert_eq!(format_duration(3_723_000), "1h2m3s");
}

/// A store where another worker writes between every read and write of one key,
/// `conflicts` times: admission must retry and never double-spend.
struct Contended {
    inner: MemoryStore,
    conflicts: usize,
    victim: String,
}

impl Store for Contended {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if key == self.victim && cas != 0 && self.conflicts > 0 {
            self.conflicts -= 1;
            // The other worker spends 40 tokens in the same window.
            let (cur, c) = self.inner.get(key)?.unwrap();
            let mut counter = Counter::decode(&cur).unwrap();
            counter.used += 40;
            self.inner.set(key, &counter.encode(), c)?;
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn cas_conflicts_are_retried_and_never_overshoot() {
    let l = limits(r#"{"rules":[{"name":"m","window":"1m","tokens":100}]}"#);
    let key = counter_key("m", 60_000, &[], &subject(None, 0, 0));
    let mut st = Contended {
        inner: store(),
        conflicts: 1,
        victim: key.clone(),
    };
    // Read sees 0 used; the write conflicts (other worker: +40); retry sees 40,
    // 40 + 50 fits: admitted, counter 90.
    let a = admit(&l, &mut st, T0, &subject(None, 50, 0));
    assert!(a.allowed);
    let (v, _) = st.inner.get(&key).unwrap().unwrap();
    assert_eq!(Counter::decode(&v).unwrap().used, 90);
    // Now the conflict pushes it over: 90 read, write conflicts (+40 = 130 > 100):
    // the retry refuses instead of overwriting the other worker's spend.
    st.conflicts = 1;
    let l2 = limits(r#"{"rules":[{"name":"m","window":"1m","tokens":100}]}"#);
    let a = admit(&l2, &mut st, T0, &subject(None, 5, 0));
    assert!(!a.allowed);
    let (v, _) = st.inner.get(&key).unwrap().unwrap();
    assert_eq!(
        Counter::decode(&v).unwrap().used,
        130,
        "nothing of ours added"
    );
}

#[test]
fn late_refusal_refunds_earlier_rules() {
    let l = limits(
        r#"{"rules":[{"name":"a","window":"1m","tokens":1000,"count":"input"},
                     {"name":"b","window":"1m","tokens":100}]}"#,
    );
    let kb = counter_key("b", 60_000, &[], &subject(None, 0, 0));
    let ka = counter_key("a", 60_000, &[], &subject(None, 0, 0));
    let mut st = Contended {
        inner: store(),
        conflicts: 2,
        victim: kb,
    };
    let a = admit(&l, &mut st, T0, &subject(None, 50, 0));
    assert!(!a.allowed, "b filled up concurrently");
    let (v, _) = st.inner.get(&ka).unwrap().unwrap();
    assert_eq!(Counter::decode(&v).unwrap().used, 0, "rule a refunded");
}

#[test]
fn unusable_store_fails_open_and_says_so() {
    struct Broken;
    impl Store for Broken {
        fn get(&mut self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            Err(StoreError::Unavailable)
        }
        fn set(&mut self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
            Err(StoreError::Unavailable)
        }
    }
    let l = limits(r#"{"rules":[{"name":"m","window":"1m","tokens":1}]}"#);
    let a = admit(&l, &mut Broken, T0, &subject(None, 50, 0));
    assert!(a.allowed);
    assert_eq!(a.store_errors, 1);
    assert!(a.state().is_none());
}

#[test]
fn creation_is_serialised_by_the_lock() {
    let mut st = store();
    create(&mut st, "k", 5);
    let (v, _) = st.get("k").unwrap().unwrap();
    assert_eq!(Counter::decode(&v).unwrap().window_start, 5);
    let (lock, _) = st.get(CREATE_LOCK_KEY).unwrap().unwrap();
    assert_eq!(lock, 2u64.to_le_bytes(), "lock released (even)");
    // A lock stuck odd (a worker died holding it) degrades, never hangs.
    st.set(CREATE_LOCK_KEY, &3u64.to_le_bytes(), 0).unwrap();
    create(&mut st, "k2", 7);
    assert!(st.get("k2").unwrap().is_some());
}

fn priced(json_rules: &str) -> Limits {
    limits(&format!(
        r#"{{"prices":[{{"model":"gpt-4o","input":2.5,"output":10,"cached_input":1.25}}],"rules":{json_rules}}}"#
    ))
}

#[test]
fn request_budgets_count_one_per_request_and_show_their_own_headers() {
    let l = limits(
        r#"{"rules":[{"name":"rpm","key":["consumer"],"window":"1m","requests":2,"tokens":1000}]}"#,
    );
    let mut st = store();
    let a = admit(&l, &mut st, T0, &subject(Some("a"), 10, 10));
    let h = a.headers();
    let get =
        |h: &[(&str, String)], k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    assert_eq!(get(&h, "x-ratelimit-limit-requests").as_deref(), Some("2"));
    assert_eq!(
        get(&h, "x-ratelimit-remaining-requests").as_deref(),
        Some("1")
    );
    assert_eq!(
        get(&h, "x-ratelimit-reset-requests").as_deref(),
        Some("1m0s")
    );
    assert_eq!(
        get(&h, "x-ratelimit-remaining-tokens").as_deref(),
        Some("980")
    );
    // True-up never changes a request count.
    true_up(&mut st, &a, 10, 0, 500);
    let a = admit(&l, &mut st, T0 + 30_000, &subject(Some("a"), 10, 10));
    assert!(a.allowed);
    assert_eq!(
        get(&a.headers(), "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert_eq!(
        get(&a.headers(), "x-ratelimit-reset-requests").as_deref(),
        Some("30s")
    );
    let refused = admit(&l, &mut st, T0 + 30_000, &subject(Some("a"), 1, 1));
    assert!(!refused.allowed);
    let s = refused.state().unwrap();
    assert_eq!((s.unit, &*s.rule, s.remaining), (Unit::Requests, "rpm", 0));
    // A refused request's headers still show both units.
    assert_eq!(
        get(&refused.headers(), "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert!(get(&refused.headers(), "x-ratelimit-remaining-tokens").is_some());
}

#[test]
fn usd_budgets_charge_prompt_and_reservation_then_true_up_to_real_cost() {
    // $0.01 budget; gpt-4o: $2.50/M input, $10/M output, $1.25/M cached.
    let l = priced(r#"[{"name":"spend","key":["consumer"],"window":"1d","usd":0.01}]"#);
    let mut st = store();
    // 1000 prompt + 500 reserved = 2500 + 5000 micro-dollars.
    let a = admit(&l, &mut st, T0, &subject(Some("a"), 1000, 500));
    assert!(a.allowed);
    let s = a.state().unwrap();
    assert_eq!(
        (s.unit, s.limit, s.remaining),
        (Unit::MicroUsd, 10_000, 2_500)
    );
    let h = a.headers();
    assert!(
        h.contains(&("x-ratelimit-remaining-usd", "0.002500".to_string())),
        "{h:?}"
    );
    // Real: 1000 input of which 800 cached, 100 output:
    // 200 * 2.5 + 800 * 1.25 + 100 * 10 = 2500 micro-dollars.
    true_up(&mut st, &a, 1000, 800, 100);
    let probe = admit(&l, &mut st, T0, &subject(Some("a"), 0, 0));
    assert_eq!(probe.state().unwrap().remaining, 10_000 - 2500);
    // Too expensive now: 3000 prompt (7500) + 500 output (5000).
    assert!(!admit(&l, &mut st, T0, &subject(Some("a"), 3000, 500)).allowed);
    // A model without a price cannot be counted: a usd budget refuses it.
    let mut s = subject(Some("a"), 1, 1);
    s.model = "llama-3";
    let r = admit(&l, &mut st, T0, &s);
    assert!(!r.allowed);
    assert_eq!(&*r.state().unwrap().rule, "spend");
    assert_eq!(
        usd_micros(LimitCount::Total, (2500, 10_000, 1250), 1, 0, 0),
        3
    );
}

#[test]
fn month_and_week_windows() {
    // 2026-02-14T12:00:00Z -> February 2026.
    let now = 1_771_070_400_000;
    let (start, end) = window_bounds(Window::Month, now);
    assert_eq!(start, 1_769_904_000_000, "2026-02-01");
    assert_eq!(end, 1_772_323_200_000, "2026-03-01");
    let (s2, e2) = window_bounds(Window::Month, 1_798_675_200_000); // 2026-12-31
    assert_eq!(
        (s2, e2),
        (1_796_083_200_000, 1_798_761_600_000),
        "Dec 2026 .. Jan 2027"
    );
    // Weeks start on Mondays: 2026-02-09 00:00 UTC.
    let (ws, we) = window_bounds(Window::Weeks(7 * 86_400_000), now);
    assert_eq!((ws, we), (1_770_595_200_000, 1_771_200_000_000));
    let l = limits(r#"{"rules":[{"name":"m","window":"month","tokens":100}]}"#);
    let mut st = store();
    assert!(admit(&l, &mut st, now, &subject(None, 60, 0)).allowed);
    assert!(!admit(&l, &mut st, end - 1, &subject(None, 60, 0)).allowed);
    let next = admit(&l, &mut st, end, &subject(None, 60, 0));
    assert!(next.allowed, "a new month starts empty");
}

#[test]
fn clamp_lowers_the_reservation_to_what_fits_and_never_below_the_minimum() {
    let l = limits(
        r#"{"clamp_max_tokens":true,"clamp_min_tokens":10,
            "rules":[{"name":"t","window":"1m","tokens":100},
                     {"name":"o","window":"1h","tokens":70,"count":"output"}]}"#,
    );
    let mut st = store();
    // 30 prompt + 500 reserved: total room 70, output room 70 -> clamped to 70.
    let a = admit(&l, &mut st, T0, &subject(None, 30, 500));
    assert!(a.allowed);
    assert_eq!(a.clamped_to, Some(70));
    assert_eq!(a.output_allowance, Some(70));
    assert!(a
        .headers()
        .contains(&("x-tollgate-max-tokens-clamped", "70".to_string())));
    true_up(&mut st, &a, 30, 0, 60);
    // Used: total 90, output 60. Room for 5 output tokens < minimum 10: refused.
    let r = admit(&l, &mut st, T0, &subject(None, 5, 100));
    assert!(!r.allowed && r.clamped_to.is_none());
    // A prompt that does not fit is refused, not clamped.
    let r = admit(&l, &mut st, T0, &subject(None, 20, 1));
    assert!(!r.allowed);
    // Without clamping, the reservation must fit as asked.
    let plain = limits(r#"{"rules":[{"name":"t","window":"1m","tokens":100}]}"#);
    let mut st = store();
    let a = admit(&plain, &mut st, T0, &subject(None, 30, 500));
    assert!(!a.allowed && a.clamped_to.is_none());
    let a = admit(&plain, &mut st, T0, &subject(None, 30, 50));
    assert_eq!(
        a.output_allowance,
        Some(70),
        "what the stream may use before a cut"
    );
}

#[test]
fn clamp_splits_the_room_between_choices() {
    let l = limits(
        r#"{"clamp_max_tokens":true,"clamp_min_tokens":10,
            "rules":[{"name":"t","window":"1m","tokens":100}]}"#,
    );
    let with_n = |prompt, per_choice: u64, n: u64| Subject {
        choices: n,
        ..subject(None, prompt, per_choice * n)
    };
    // 30 prompt, room 70 for output; n = 2 asking 500 each: 35 per choice, so
    // the provider's worst case (2 x 35) fits the budget.
    let mut st = store();
    let a = admit(&l, &mut st, T0, &with_n(30, 500, 2));
    assert!(a.allowed);
    assert_eq!(a.clamped_to, Some(35));
    assert_eq!(a.state().unwrap().remaining, 0, "charged 30 + 2 x 35");
    // An odd room rounds down: 71 / 2 = 35, one token stays unspent.
    let mut st = store();
    let a = admit(&l, &mut st, T0, &with_n(29, 500, 2));
    assert_eq!(a.clamped_to, Some(35));
    assert_eq!(a.state().unwrap().remaining, 1);
    // 70 / 8 = 8 per choice, under clamp_min_tokens: refused, not clamped.
    let mut st = store();
    let a = admit(&l, &mut st, T0, &with_n(30, 500, 8));
    assert!(!a.allowed && a.clamped_to.is_none());
    // More choices than room: 0 per choice is refused even at the lowest minimum.
    let mut low = l.clone();
    low.clamp_min_tokens = 1;
    let mut st = store();
    let a = admit(&low, &mut st, T0, &with_n(30, 500, 71));
    assert!(!a.allowed && a.clamped_to.is_none());
    // A reservation that fits is left alone, whatever n is; 0 counts as 1.
    let mut st = store();
    let a = admit(&l, &mut st, T0, &with_n(30, 35, 2));
    assert!(a.allowed && a.clamped_to.is_none());
    let mut st = store();
    let zero = Subject {
        choices: 0,
        ..subject(None, 30, 500)
    };
    assert_eq!(admit(&l, &mut st, T0, &zero).clamped_to, Some(70));
}

#[test]
fn usd_clamp_converts_room_to_output_tokens() {
    let l = priced(r#"[{"name":"spend","window":"1d","usd":0.01}]"#);
    let mut l = l;
    l.clamp_max_tokens = true;
    let mut st = store();
    // 1000 prompt = 2500 micro; 7500 left / 10 micro per output token = 750.
    let a = admit(&l, &mut st, T0, &subject(None, 1000, 5000));
    assert_eq!(a.clamped_to, Some(750));
    assert_eq!(a.state().unwrap().remaining, 0);
}

/// One worker's store, as the adapter's shared-data store is when its timer runs:
/// the counters are shared (one process), the held refunds and credits are the
/// worker's own; credits only with `leases`. Counts store calls and writes.
struct Worker {
    shared: std::rc::Rc<std::cell::RefCell<MemoryStore>>,
    held: Deferred,
    leases: bool,
    calls: usize,
    sets: usize,
}

impl Worker {
    fn new(shared: &std::rc::Rc<std::cell::RefCell<MemoryStore>>, leases: bool) -> Worker {
        Worker {
            shared: shared.clone(),
            held: Deferred::default(),
            leases,
            calls: 0,
            sets: 0,
        }
    }
}

impl Store for Worker {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.calls += 1;
        self.shared.borrow_mut().get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.calls += 1;
        self.sets += 1;
        self.shared.borrow_mut().set(key, value, cas)
    }
    fn defer(&mut self, key: &str, ws: u64, delta: i64) -> bool {
        self.held.defer(key, ws, delta)
    }
    fn take_deferred(&mut self, key: &str, ws: u64) -> i64 {
        self.held.take(key, ws)
    }
    fn drain_deferred(&mut self) -> Vec<(String, u64, i64)> {
        self.held.drain()
    }
    fn leases(&self) -> bool {
        self.leases
    }
    fn synced_used(&mut self, key: &str, ws: u64) -> Option<u64> {
        self.held.synced(key, ws)
    }
    fn set_synced_used(&mut self, key: &str, ws: u64, used: u64) {
        self.held.set_synced(key, ws, used);
    }
    fn take_held(&mut self, key: &str, ws: u64) -> (i64, Option<u64>) {
        self.held.take_with_synced(key, ws)
    }
    fn spend_credit(&mut self, key: &str, ws: u64, want: u64) -> Option<(u64, i64)> {
        self.held.spend(key, ws, want)
    }
}

fn shared_store() -> std::rc::Rc<std::cell::RefCell<MemoryStore>> {
    std::rc::Rc::new(std::cell::RefCell::new(store()))
}

fn used_in_store(shared: &std::rc::Rc<std::cell::RefCell<MemoryStore>>, key: &str) -> u64 {
    let (v, _) = shared.borrow_mut().get(key).unwrap().unwrap();
    Counter::decode(&v).unwrap().used
}

#[test]
fn deferred_refunds_ride_on_the_next_charge_and_are_exact() {
    let l = limits(r#"{"rules":[{"name":"m","window":"1m","tokens":1000}]}"#);
    let shared = shared_store();
    let mut st = Worker::new(&shared, false);
    let a = admit(&l, &mut st, T0, &subject(None, 10, 500));
    let sets = st.sets;
    true_up(&mut st, &a, 10, 0, 20);
    assert_eq!(st.sets, sets, "the refund costs no hostcall now");
    assert!(!st.held.is_empty());
    // The next admission sees the refund: 1000 - 30 - (10 + 100).
    let b = admit(&l, &mut st, T0 + 1, &subject(None, 10, 100));
    assert_eq!(b.state().unwrap().remaining, 1000 - 30 - 110);
    assert_eq!(st.sets, sets + 1, "one write for charge and refund");
    assert!(st.held.is_empty());
    let key = counter_key("m", 60_000, &[], &subject(None, 0, 0));
    assert_eq!(used_in_store(&shared, &key), 140);
    // A refused request puts the refund back; a flush writes it.
    true_up(&mut st, &b, 10, 0, 0);
    assert!(!admit(&l, &mut st, T0 + 2, &subject(None, 10, 5000)).allowed);
    flush_deferred(&mut st);
    assert_eq!(used_in_store(&shared, &key), 40);
    assert!(st.held.is_empty());
    // Overruns are never deferred.
    let c = admit(&l, &mut st, T0 + 3, &subject(None, 10, 0));
    true_up(&mut st, &c, 10, 0, 300);
    assert!(st.held.is_empty());
    assert_eq!(used_in_store(&shared, &key), 350);
    // A refund for a window that has ended is dropped.
    let d = admit(&l, &mut st, T0 + 4, &subject(None, 10, 100));
    true_up(&mut st, &d, 10, 0, 0);
    let e = admit(&l, &mut st, T0 + 60_000, &subject(None, 10, 0));
    assert_eq!(e.state().unwrap().remaining, 990);
}

#[test]
fn credits_admit_without_store_calls_and_the_figures_stay_exact() {
    let l = limits(r#"{"rules":[{"name":"m","window":"1m","tokens":100000}]}"#);
    let shared = shared_store();
    let mut w = Worker::new(&shared, true);
    let key = counter_key("m", 60_000, &[], &subject(None, 0, 0));
    // The first request reads and writes the counter, and takes a credit of
    // LEASE_REQUESTS charges on top of its own.
    let a = admit(&l, &mut w, T0, &subject(None, 10, 90));
    assert!(a.allowed);
    assert_eq!(a.state().unwrap().remaining, 100_000 - 100);
    assert_eq!(used_in_store(&shared, &key), 100 + LEASE_REQUESTS * 100);
    // The next ones come out of the credit: no store call, exact remaining.
    let calls = w.calls;
    let mut charged = 100;
    for i in 1..=LEASE_REQUESTS {
        let b = admit(&l, &mut w, T0 + i, &subject(None, 10, 90));
        assert!(b.allowed && !b.over_limit);
        charged += 100;
        assert_eq!(b.state().unwrap().remaining, 100_000 - charged);
        // A refund goes back into the credit (really used: 10 + 5).
        true_up(&mut w, &b, 10, 0, 5);
        charged -= 85;
    }
    assert_eq!(w.calls, calls, "no store call while the credit lasts");
    // Once the refunds are spent too, the store again (one read, one write).
    let mut n = 0;
    while w.calls == calls {
        let c = admit(&l, &mut w, T0 + 100 + n, &subject(None, 10, 90));
        assert!(c.allowed);
        charged += 100;
        assert_eq!(c.state().unwrap().remaining, 100_000 - charged);
        n += 1;
        assert!(n < 100);
    }
    assert_eq!(w.calls, calls + 2);
    // The timer's flush returns the unspent credit: the counter is exact.
    flush_deferred(&mut w);
    assert_eq!(used_in_store(&shared, &key), charged);
    // A route that clamps (or cuts streams) needs the live room: no credit.
    let clamp =
        limits(r#"{"clamp_max_tokens":true,"rules":[{"name":"m","window":"1m","tokens":100000}]}"#);
    let before = used_in_store(&shared, &key);
    assert!(admit(&clamp, &mut w, T0 + 500, &subject(None, 10, 90)).allowed);
    assert_eq!(used_in_store(&shared, &key), before + 100);
}

#[test]
fn credits_shrink_near_the_limit_so_workers_never_overshoot_nor_refuse_early() {
    let limit = 10_000;
    let l = limits(&format!(
        r#"{{"rules":[{{"name":"m","window":"1h","tokens":{limit}}}]}}"#
    ));
    let shared = shared_store();
    let mut workers = [
        Worker::new(&shared, true),
        Worker::new(&shared, true),
        Worker::new(&shared, true),
    ];
    let key = counter_key("m", 3_600_000, &[], &subject(None, 0, 0));
    let want = 100;
    let mut admitted = 0;
    let mut refused_in_a_row = 0;
    for i in 0..10_000u64 {
        let w = &mut workers[(i % 3) as usize];
        if admit(&l, w, T0 + i, &subject(None, 40, 60)).allowed {
            admitted += want;
            refused_in_a_row = 0;
        } else {
            refused_in_a_row += 1;
        }
        assert!(admitted <= limit, "admitted {admitted} past the limit");
        // The counter never holds more than the limit, credits included.
        assert!(used_in_store(&shared, &key) <= limit);
        if refused_in_a_row == 3 {
            break;
        }
    }
    assert_eq!(refused_in_a_row, 3);
    // Every worker refused while the others could still hold credit; what they
    // hold is at most a sliver of the budget, far less than one request each.
    assert!(admitted > limit - 3 * want, "refused early: {admitted}");
    for w in workers.iter_mut() {
        flush_deferred(w);
    }
    assert_eq!(used_in_store(&shared, &key), admitted);
}

#[test]
fn held_refunds_never_mix_keys_whose_hashes_collide() {
    let mut d = Deferred::default();
    assert!(d.defer("tollgate/limits/v2/a/t60000/c1:x", 60_000, -5));
    assert_eq!(d.synced("tollgate/limits/v2/a/t60000/c1:x", 60_000), None);
    d.set_synced("tollgate/limits/v2/a/t60000/c1:x", 60_000, 40);
    assert_eq!(
        d.synced("tollgate/limits/v2/a/t60000/c1:x", 60_000),
        Some(40)
    );
    // Another key in the slot `y` hashes to: `y` is not held (written at once by
    // the caller) and reads nothing of the other key's entry.
    d.plant_collision("tollgate/limits/v2/a/t60000/c1:y", "other", 60_000, -9);
    assert!(!d.defer("tollgate/limits/v2/a/t60000/c1:y", 60_000, -3));
    assert_eq!(d.take("tollgate/limits/v2/a/t60000/c1:y", 60_000), 0);
    assert_eq!(d.synced("tollgate/limits/v2/a/t60000/c1:y", 60_000), None);
    d.set_synced("tollgate/limits/v2/a/t60000/c1:y", 60_000, 99);
    let mut held = d.drain();
    held.sort();
    assert_eq!(
        held,
        vec![
            ("other".to_string(), 60_000, -9),
            ("tollgate/limits/v2/a/t60000/c1:x".to_string(), 60_000, -5),
        ]
    );
    // A new window replaces what an entry held for the old one.
    assert!(d.defer("k", 60_000, -4));
    assert!(d.defer("k", 120_000, -1));
    assert_eq!(d.take("k", 60_000), 0);
    assert!(d.defer("k", 120_000, -2));
    assert_eq!(d.take("k", 120_000), -2);
}

#[test]
fn taking_held_and_synced_together_gives_both_and_empties_the_hold() {
    // (setup, [(window, held, synced)]) — `take` is this call's first half.
    type Case = (fn(&mut Deferred), [(u64, i64, Option<u64>); 2]);
    let cases: [Case; 4] = [
        (|_| {}, [(0, 0, None), (60_000, 0, None)]),
        (
            |d| {
                d.defer("k", 60_000, -7);
            },
            [(0, 0, None), (60_000, -7, None)],
        ),
        (
            |d| {
                d.defer("k", 60_000, -7);
                d.set_synced("k", 60_000, 40);
            },
            [(0, 0, None), (60_000, -7, Some(40))],
        ),
        (
            |d| {
                d.set_synced("k", 0, 40);
                d.defer("other", 60_000, -1);
            },
            [(0, 0, Some(40)), (60_000, 0, None)],
        ),
    ];
    for (setup, wants) in cases {
        for (ws, held, synced) in wants {
            let mut d = Deferred::default();
            setup(&mut d);
            assert_eq!(d.take_with_synced("k", ws), (held, synced), "window {ws}");
            // Taken: nothing is held for the key any more, in any window, and the
            // synced usage stays.
            assert_eq!(d.take_with_synced("k", ws), (0, synced), "window {ws}");
            assert!(d.drain().iter().all(|(k, _, _)| k != "k"), "window {ws}");
        }
    }
}

#[test]
fn a_budget_short_of_credit_gives_back_what_the_others_took() {
    // Two budgets: tokens (credit for 16 requests) and requests (a limit so small
    // that its credit is soon spent). Once the requests credit runs out, the
    // credit path must leave the tokens credit as it found it.
    // 50 requests an hour: a credit of (50 - 1) / 8 = 6 requests, against 16
    // requests' worth of tokens.
    let l = limits(r#"{"rules":[{"name":"m","window":"1h","tokens":1000000,"requests":50}]}"#);
    let shared = shared_store();
    let mut w = Worker::new(&shared, true);
    let s = subject(None, 10, 90);
    let tokens_key = counter_key("m", 3_600_000, &[], &s);
    let held = |w: &mut Worker| {
        let d = w.held.take(&tokens_key, T0);
        w.held.defer(&tokens_key, T0, d);
        d
    };
    assert!(admit(&l, &mut w, T0, &s).allowed);
    let mut n = 1;
    loop {
        let before = held(&mut w);
        let taken = admit_from_credits(&l, &mut w, T0 + n, &s);
        n += 1;
        if taken.is_none() {
            // The tokens budget had credit and was spent from first: given back.
            assert!(before <= -100, "tokens credit left: {before}");
            assert_eq!(held(&mut w), before);
            break;
        }
        assert_eq!(held(&mut w), before + 100);
        assert!(n < 100, "credits never ran out");
    }
    assert_eq!(n, 8, "the first request and six from the requests credit");
    // The store path then admits, and the counters stay exact after the flush.
    let calls = w.calls;
    let a = admit(&l, &mut w, T0 + n, &s);
    assert!(a.allowed);
    assert!(w.calls > calls);
    flush_deferred(&mut w);
    assert_eq!(used_in_store(&shared, &tokens_key), n * 100);
}

#[test]
fn a_recent_clock_reading_stands_in_only_well_inside_every_window() {
    let minute = Window::Fixed(60_000);
    let hour = Window::Fixed(3_600_000);
    // T0 is on an hour boundary: the minute window ends at T0 + 60 s.
    assert_eq!(
        recent_time_usable_until(&[minute, hour], T0 + 1_000, 1_000),
        T0 + 58_000
    );
    // Two periods before the end: the clock, up to a period later, is still inside.
    assert!(T0 + 58_000 <= recent_time_usable_until(&[minute], T0 + 58_000, 1_000));
    assert!(T0 + 58_001 > recent_time_usable_until(&[minute], T0 + 58_001, 1_000));
    // A window of two periods takes it only at its first millisecond.
    let two_s = Window::Fixed(2_000);
    assert_eq!(recent_time_usable_until(&[two_s], T0, 1_000), T0);
    for t in [T0 + 1, T0 + 999, T0 + 1_999] {
        assert!(recent_time_usable_until(&[minute, two_s], t, 1_000) < t.max(1));
    }
    // A month: usable up to two periods before its last millisecond.
    let m = recent_time_usable_until(&[Window::Month], T0, 1_000);
    let (_, end) = window_bounds(Window::Month, T0);
    assert_eq!(m, end - 2_000);
}

#[test]
fn admission_from_credits_at_a_recent_reading_matches_the_clock() {
    // The same request admitted from credit at the tick's reading or at the clock
    // a moment later charges the same counter and shows the same figures, but
    // for the reset, which is late by at most the reading's age.
    let l = limits(r#"{"rules":[{"name":"m","window":"1m","tokens":100000}]}"#);
    let shared = shared_store();
    let mut w = Worker::new(&shared, true);
    let s = subject(None, 10, 90);
    assert!(admit(&l, &mut w, T0, &s).allowed);
    let read = T0 + 10_000;
    let by_reading = admit_from_credits(&l, &mut w, read, &s).expect("credit");
    let by_clock = admit_from_credits(&l, &mut w, read + 900, &s).expect("credit");
    let (r, c) = (by_reading.state().unwrap(), by_clock.state().unwrap());
    assert_eq!(r.remaining, c.remaining + 100);
    assert_eq!(r.reset_ms, c.reset_ms + 900);
    assert_eq!(by_reading.charges.len(), 1);
    assert_eq!(
        by_reading.charges[0].window_start,
        by_clock.charges[0].window_start
    );
    // Report-only, clamp and cut-off routes never take credits.
    for json in [
        r#"{"mode":"report_only","rules":[{"name":"m","window":"1m","tokens":100000}]}"#,
        r#"{"clamp_max_tokens":true,"rules":[{"name":"m","window":"1m","tokens":100000}]}"#,
    ] {
        assert!(admit_from_credits(&limits(json), &mut w, read, &s).is_none());
    }
}
