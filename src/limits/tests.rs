use super::*;
use crate::config::{Config, Limits};

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
    }
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
    let s = a.state.clone().unwrap();
    assert_eq!((s.limit, s.remaining, s.reset_ms), (100, 50, 60_000));
    let a2 = admit(&l, &mut st, T0 + 1000, &subject(Some("alice"), 30, 20));
    assert!(a2.allowed);
    assert_eq!(a2.state.unwrap().remaining, 0);
    let a3 = admit(&l, &mut st, T0 + 2000, &subject(Some("alice"), 1, 0));
    assert!(!a3.allowed && a3.over_limit);
    assert_eq!(a3.state.clone().unwrap().remaining, 0);
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
    let s = a.state.unwrap();
    assert_eq!((s.rule.as_str(), s.remaining), ("hour", 50));
    let refused = admit(&l, &mut st, T0, &subject(None, 50, 50));
    assert!(!refused.allowed);
    assert_eq!(refused.state.as_ref().unwrap().rule, "hour");
    assert_eq!(refused.retry_after_secs(), 3600);
    // The minute rule was not charged for the refused request.
    let minute = limits(r#"{"rules":[{"name":"min","window":"1m","tokens":1000}]}"#);
    let a = admit(&minute, &mut st, T0, &subject(None, 0, 0));
    assert_eq!(a.state.unwrap().remaining, 900);
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
    true_up(&mut st, &a, 10, 7);
    let probe = admit(&l, &mut st, T0, &subject(None, 0, 0));
    let remaining: Vec<_> = probe
        .charges
        .iter()
        .map(|c| (c.key.clone(), c.charged))
        .collect();
    assert_eq!(remaining.len(), 3);
    // Least remaining is the total rule: 1000 - 17.
    assert_eq!(probe.state.unwrap().remaining, 983);
    // An overrun is charged too.
    let a = admit(&l, &mut st, T0, &subject(None, 10, 5));
    true_up(&mut st, &a, 10, 400);
    let probe = admit(&l, &mut st, T0, &subject(None, 0, 0));
    assert_eq!(probe.state.unwrap().remaining, 1000 - 17 - 410);
}

#[test]
fn report_only_never_refuses_but_says_it_would() {
    let l = limits(r#"{"mode":"report_only","rules":[{"name":"m","window":"1m","tokens":10}]}"#);
    let mut st = store();
    let a = admit(&l, &mut st, T0, &subject(None, 8, 0));
    assert!(a.allowed && !a.over_limit);
    let a = admit(&l, &mut st, T0, &subject(None, 8, 0));
    assert!(a.allowed && a.over_limit);
    assert_eq!(a.state.unwrap().remaining, 0);
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
    let k = counter_key("r", 1, &parts, &subject(Some(&long), 0, 0));
    assert!(k.len() < 400, "{}", k.len());
    let anon = counter_key("r", 1, &parts, &subject(None, 0, 0));
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
        r#"{"rules":[{"name":"a","window":"1m","tokens":1000},
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
    assert!(a.state.is_none());
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
