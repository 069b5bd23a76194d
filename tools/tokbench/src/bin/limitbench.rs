//! What a local token limit adds to one exchange in tollgate's own code (no
//! hostcalls): the whole sans-IO exchange with the bench's metering config and with
//! its limits config, and the limit steps alone (admission, true-up, headers),
//! natively and as a wasm32-wasip1 command under V8 (Envoy's engine).
//!
//! `cargo build --release -p tokbench --bin limitbench --target wasm32-wasip1` then
//! `node tools/tokbench/run.mjs target/wasm32-wasip1/release/limitbench.wasm`.
//! Natively: `cargo run --release -p tokbench --bin limitbench`.
//!
//! The store is an in-memory map with the adapter's refund deferral and credits
//! (leases), so a store call costs a map lookup here instead of a hostcall (about
//! 1.4 µs in Envoy), and most admissions come out of the worker's credit.

use std::rc::Rc;
use std::time::Instant;

use tollgate::config::{Config, FilterStateKey};
use tollgate::limits::{Deferred, MemoryStore, Store, StoreError};
use tollgate::metering::{BodyDecision, Exchange, HeadersDecision, ResponseMode};

/// The adapter's store shape: shared data plus this worker's held refunds.
#[derive(Default)]
struct Deferring {
    inner: MemoryStore,
    deferred: Deferred,
}

impl Store for Deferring {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)
    }
    fn defer(&mut self, key: &str, window_start: u64, delta: i64) -> bool {
        self.deferred.defer(key, window_start, delta)
    }
    fn take_deferred(&mut self, key: &str, window_start: u64) -> i64 {
        self.deferred.take(key, window_start)
    }
    fn leases(&self) -> bool {
        true
    }
    fn synced_used(&mut self, key: &str, window_start: u64) -> Option<u64> {
        self.deferred.synced(key, window_start)
    }
    fn set_synced_used(&mut self, key: &str, window_start: u64, used: u64) {
        self.deferred.set_synced(key, window_start, used);
    }
    fn take_held(&mut self, key: &str, window_start: u64) -> (i64, Option<u64>) {
        self.deferred.take_with_synced(key, window_start)
    }
    fn spend_credit(&mut self, key: &str, ws: u64, want: u64) -> Option<(u64, i64)> {
        self.deferred.spend(key, ws, want)
    }
    fn drain_deferred(&mut self) -> Vec<(String, u64, i64)> {
        self.deferred.drain()
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median over 31 batches of `n` calls, in µs per call.
fn time(n: usize, mut f: impl FnMut(usize)) -> f64 {
    median(
        (0..31)
            .map(|b| {
                let t = Instant::now();
                for i in 0..n {
                    f(b * n + i);
                }
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            })
            .collect(),
    )
}

const RESPONSE: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"About 8 to 10 inches above it."},"finish_reason":"stop"}],"usage":{"prompt_tokens":180,"completion_tokens":12,"total_tokens":192}}"#;

fn config(file: &str) -> Config {
    let path = format!(
        "{}/../../benches/configs/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read(&path).unwrap_or_else(|_| {
        // Under node's WASI nothing is preopened: the configs, inline.
        match file {
            "tollgate-metering.json" => b"{}".to_vec(),
            _ => br#"{"defaults":{"limits":{"mode":"enforce","consumer":{"header":"x-consumer-id"},"reserve_max_tokens_default":1024,"rules":[{"name":"per-consumer-minute","key":["consumer"],"window":"1m","tokens":1000000000000,"count":"total"}]}}}"#.to_vec(),
        }
    });
    Config::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn main() {
    let mut body = String::from(
        r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#,
    );
    while body.len() < 950 {
        body.push_str("the quick brown fox jumps over the lazy dog ");
    }
    body.push_str(r#""}]}"#);
    let body = body.as_bytes();
    let mut store = Deferring::default();
    let mut now_ms = 1_790_000_000_000u64;

    let exchange = |cfg: &Config, store: &mut Deferring, now_ms: u64| {
        let mut ex = Exchange::new(cfg.route(Some("bench")), Rc::from("bench"));
        ex.set_consumer(None);
        let d = ex.on_request_headers(
            "POST",
            "/v1/chat/completions",
            Some(body.len() as u64),
            false,
        );
        assert!(matches!(d, HeadersDecision::WaitForBody));
        let d = ex.on_request_body(body);
        assert!(matches!(d, BodyDecision::Forward));
        assert!(ex.admit(store, now_ms).is_none());
        assert_eq!(
            ex.on_response_headers(200, Some("application/json"), Some(RESPONSE.len() as u64)),
            ResponseMode::Buffer
        );
        let r = ex.on_response_complete(Some(RESPONSE)).unwrap();
        ex.settle(store, &r);
        // What the adapter hands to the host, one call per header and key.
        let mut ours = r.headers();
        ours.extend(ex.rate_limit_headers());
        std::hint::black_box((ours, r.filter_state(&FilterStateKey::ALL)));
    };
    let metering = config("tollgate-metering.json");
    let limits = config("tollgate-limits.json");
    let n = 1000;
    // Batches of each, interleaved, so drift in the machine's speed cancels in
    // the per-pair difference.
    let (mut ms, mut ls, mut ds) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..41 {
        let t = Instant::now();
        for _ in 0..n {
            exchange(&metering, &mut store, now_ms);
        }
        let m = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let t = Instant::now();
        for i in 0..n {
            if (b * n + i) % 5000 == 0 {
                // The tick: held refunds written once a second or so.
                tollgate::limits::flush_deferred(&mut store);
            }
            now_ms += 1;
            exchange(&limits, &mut store, now_ms);
        }
        let l = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        ms.push(m);
        ls.push(l);
        ds.push(l - m);
    }
    let (m, l, d) = (median(ms), median(ls), median(ds));
    println!(
        "1 KB exchange: metering {m:.2} µs; with one local limit {l:.2} µs (+{d:.2} µs, median of paired batches)"
    );
    // The limit steps alone, on the same subject as the exchange.
    let rules = &limits.route(Some("bench")).limits;
    let subject = tollgate::limits::Subject {
        consumer: None,
        route: "bench",
        model: "gpt-4o-mini",
        provider: "openai",
        prompt_tokens: 250,
        reserve_tokens: 1024,
        choices: 1,
    };
    let n = 2000;
    let mut a = tollgate::limits::admit(rules, &mut store, now_ms, &subject);
    let admit = time(n, |i| {
        let a = tollgate::limits::admit(rules, &mut store, now_ms + i as u64, &subject);
        tollgate::limits::true_up(&mut store, &a, 250, 0, 1024);
        std::hint::black_box(a);
    });
    let true_up = time(n, |_| {
        let charges = std::mem::take(&mut a.charges);
        tollgate::limits::true_up_charges(&mut store, &charges, None, 250, 0, 12);
        a.charges = charges;
    });
    let headers = time(n, |_| {
        std::hint::black_box(a.headers());
    });
    println!(
        "alone: admission {admit:.2} µs (charge as reserved: no refund); true-up with a refund {true_up:.2} µs; x-ratelimit headers {headers:.2} µs"
    );
}
