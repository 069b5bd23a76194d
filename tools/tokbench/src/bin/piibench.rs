//! PII scan throughput, natively and as a wasm32-wasip1 command under V8.
//!
//! `cargo build --release -p tokbench --bin piibench --target wasm32-wasip1` then
//! `node tools/tokbench/run.mjs target/wasm32-wasip1/release/piibench.wasm`.
//! Natively: `cargo run --release -p tokbench --bin piibench`.
//!
//! All built-in detectors on (one automaton), text of 1 MB by default. Prints MB/s
//! of the raw scan on typical prose (with and without PII sprinkled in), code,
//! multilingual text and digit-heavy text, and of the whole request stage on a
//! chat body (JSON walk + scan + splice). Optional argument: size in bytes.

use std::rc::Rc;
use std::time::Instant;

use tollgate::config::Config;
use tollgate::dialect::Api;
use tollgate::pii::engine::{Engine, Hit};
use tollgate::pii::PiiExchange;
use tollgate::testing::XorShift as Rng;

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "this",
    "are",
    "or",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "gateway",
    "requests",
    "throughput",
    "latency",
    "customer",
    "invoice",
    "2024",
    "v1.2",
    "12:30",
    "42",
    "Kubernetes",
    "Envoy",
    "filter,",
    "route.",
    "model:",
    "(see",
    "below)",
    "JSON",
    "e.g.",
    "user's",
    "-",
    "3.5%",
];
const MULTI: &[&str] = &[
    "Grüße",
    "aus",
    "München",
    "über",
    "das",
    "Straße",
    "naïve",
    "café",
    "日本語",
    "のテキスト",
    "Привет",
    "мир",
    "مرحبا",
    "😀",
    "señor",
    "niño",
    "Ελληνικά",
    "中文",
    "文本",
];
const PII: &[&str] = &[
    "jane.doe@example.com",
    "+1 415-555-2671",
    "4111 1111 1111 1111",
    "DE89370400440532013000",
    "123-45-6789",
    "192.168.1.20",
    "AKIAIOSFODNN7EXAMPLE",
    "password=hunter2!",
];
const CODE: &str = "fn main() {\n    let total: u64 = items.iter().map(|x| x.price * 2).sum();\n    println!(\"{total} at {}\", cfg.url);\n}\n";

fn fill(size: usize, mut part: impl FnMut() -> String) -> String {
    let mut s = String::with_capacity(size + 256);
    while s.len() < size {
        s.push_str(&part());
    }
    s
}

fn inputs(size: usize) -> Vec<(&'static str, String)> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let prose = fill(size, || format!("{} ", r.pick(WORDS)));
    let mut r = Rng(7);
    let mut n = 0u64;
    let with_pii = fill(size, || {
        n += 1;
        // About one value per KiB of prose.
        if n.is_multiple_of(180) {
            format!("{} ", r.pick(PII))
        } else {
            format!("{} ", r.pick(WORDS))
        }
    });
    let code = fill(size, || CODE.to_string());
    let mut r = Rng(11);
    let multi = fill(size, || format!("{} {} ", r.pick(MULTI), r.pick(WORDS)));
    let mut r = Rng(13);
    let digits = fill(size, || format!("{} ", r.next_u64() % 1_000_000_000));
    vec![
        ("prose", prose),
        ("prose+pii/KiB", with_pii),
        ("code", code),
        ("multilingual", multi),
        ("digits", digits),
    ]
}

fn engine() -> Rc<Engine> {
    let c = Config::parse(br#"{"defaults":{"pii":{"enabled":true}}}"#).expect("config");
    let e = c.route(None).pii.engine().expect("engine").clone();
    e
}

fn best_of(runs: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut out = 0;
    for _ in 0..runs {
        let t = Instant::now();
        out = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out)
}

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    let t = Instant::now();
    let e = engine();
    println!(
        "engine: {} detectors compiled in {:.1} ms (one automaton per side)",
        e.dets.len() - 1,
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut hits: Vec<Hit> = Vec::new();
    // Warm-up over every input first: a long-running VM has its per-detector
    // matchers compiled, its DFA caches filled and V8's optimising tier in place.
    let all = inputs(size);
    for (_, text) in &all {
        for _ in 0..3 {
            hits.clear();
            e.scan(text.as_bytes(), 0, false, &mut hits);
        }
    }
    for (name, text) in all {
        // First call warms the lazy DFA's cache, as the first requests of a VM do.
        let (secs, found) = best_of(5, || {
            hits.clear();
            e.scan(text.as_bytes(), 0, false, &mut hits);
            hits.len()
        });
        println!(
            "scan {name:<14} {:>8.1} MB/s  ({found} findings in {} KB)",
            text.len() as f64 / secs / 1e6,
            text.len() / 1000
        );
    }
    // The request stage as the filter runs it: a chat body, walked, scanned, spliced.
    let text = &inputs(size)[1].1;
    let mut body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":""#.to_vec();
    tollgate::pii::json::encode_into(text.as_bytes(), &mut body);
    body.extend_from_slice(br#""}]}"#);
    let (secs, _) = best_of(5, || {
        let mut ex = PiiExchange::new(e.clone(), Api::ChatCompletions);
        match ex.on_request(&body) {
            tollgate::pii::RequestOutcome::Replace(b) => b.len(),
            _ => 0,
        }
    });
    println!(
        "request stage (chat JSON, prose+pii) {:>8.1} MB/s",
        body.len() as f64 / secs / 1e6
    );
}
