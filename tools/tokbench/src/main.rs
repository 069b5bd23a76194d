//! Tokenizer throughput, natively and as a wasm32-wasip1 command under V8.
//!
//! Envoy runs the filter in V8, so the number that matters is the wasm one:
//! `cargo build --release -p tokbench --target wasm32-wasip1` then
//! `node tools/tokbench/run.mjs target/wasm32-wasip1/release/tokbench.wasm`.
//! Natively: `cargo run --release -p tokbench`.
//!
//! Prints the first-call latency per encoding (the cost of touching the baked
//! tables), MB/s on typical text, and MB/s on adversarial 1 MB single pieces,
//! which must never drop below 10 MB/s in wasm.
//! Optional arguments: size in bytes of each input (default 1 MB), and a
//! substring selecting which inputs to run (default all).

use std::time::Instant;
use tollgate::testing::XorShift as Rng;
use tollgate::tokens::bpe::tokenizer;
use tollgate::tokens::Encoding;

fn fill(size: usize, mut part: impl FnMut() -> String) -> String {
    let mut s = String::with_capacity(size + 256);
    while s.len() < size {
        s.push_str(&part());
    }
    s
}

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
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
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
    "tokenization",
    "gateway",
    "requests",
    "throughput",
    "latency",
    "metering",
    "Envoy",
    "configuration",
    "provider",
    "unbelievably",
    "extraordinary",
    "it's",
    "don't",
    "we're",
    "1999",
    "42",
    "3.14",
];

const CODE: &str = r#"fn main() {
    let mut total: u64 = 0;
    for (i, line) in std::io::stdin().lines().enumerate() {
        let line = line.expect("read");
        if line.trim().is_empty() { continue; }
        total += line.len() as u64 * (i as u64 + 1);
    }
    println!("{total}");
}
def handler(event, context):
    items = [x for x in event.get("items", []) if x["price"] > 10.0]
    return {"statusCode": 200, "body": json.dumps({"count": len(items)})}
const res = await fetch(`${BASE_URL}/v1/chat/completions`, { method: 'POST', headers });
SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY id;
"#;

const JSON: &str = r#"{"id":"call_8f3k2","type":"function","function":{"name":"search_flights","arguments":"{\"origin\":\"SFO\",\"destination\":\"NRT\",\"date\":\"2025-03-14\",\"passengers\":2,\"cabin\":\"economy\",\"max_price_usd\":1450.5,\"flexible\":true}"}}
"#;

const CJK: &[&str] = &[
    "東京は日本の首都です。",
    "我们正在测试分词器的性能，",
    "한국어 문장도 포함됩니다. ",
    "Mixed English and 中文 text, ",
    "価格は1,980円です。",
    "Привет, как дела? ",
    "emoji 😀👍🏽 ",
    "\n",
];

fn typical(size: usize) -> Vec<(&'static str, String)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let prose = fill(size, || {
        let n = 8 + rng.next_u64() % 20;
        let mut s: String = (0..n)
            .map(|i| format!("{}{}", if i == 0 { "" } else { " " }, rng.pick(WORDS)))
            .collect();
        s.push_str(if rng.next_u64().is_multiple_of(5) {
            ".\n\n"
        } else {
            ". "
        });
        s
    });
    let code = fill(size, || CODE.to_string());
    let json = fill(size, || JSON.to_string());
    let cjk = fill(size, || rng.pick(CJK).to_string());
    vec![
        ("english prose", prose),
        ("code", code),
        ("json tool args", json),
        ("cjk mix", cjk),
    ]
}

fn adversarial(size: usize) -> Vec<(&'static str, String)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let latin: Vec<String> = (0xc0u32..=0xff)
        .chain(0x61..=0x7a)
        .filter_map(char::from_u32)
        .map(String::from)
        .collect();
    let latin: Vec<&str> = latin.iter().map(String::as_str).collect();
    let letters = fill(size, || rng.pick(&latin).to_string());
    let lower: Vec<&str> = latin
        .iter()
        .copied()
        .filter(|s| s.chars().all(char::is_lowercase))
        .collect();
    let lower = fill(size, || rng.pick(&lower).to_string());
    let emoji = fill(size, || {
        rng.pick(&["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇺🇸", "🎉", "❤️", "🔥"])
            .to_string()
    });
    vec![
        ("1MB '_'", "_".repeat(size)),
        ("1MB 'a'", "a".repeat(size)),
        ("1MB 'ab'", "ab".repeat(size / 2)),
        ("1MB spaces", " ".repeat(size)),
        ("1MB newlines", "\n".repeat(size)),
        (
            "1MB digits",
            fill(size, || (rng.next_u64() % 10).to_string()),
        ),
        ("random latin1 letters", letters),
        ("random latin1 lowercase", lower),
        ("emoji", emoji),
    ]
}

/// MB/s for `text`: the median of at least 5 timed runs and ~0.3 s of work. The
/// host is shared, so one slow run says more about the neighbours than the code.
fn mbps(enc: Encoding, text: &str) -> (f64, usize) {
    let tok = tokenizer(enc);
    let mut times = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let tokens = std::hint::black_box(tok.count(std::hint::black_box(text)));
        times.push(t.elapsed().as_secs_f64());
        let el = start.elapsed().as_secs_f64();
        if (el > 0.3 && times.len() >= 5) || times.len() >= 50 {
            times.sort_by(f64::total_cmp);
            let mid = times.get(times.len() / 2).copied().unwrap_or(el);
            return (text.len() as f64 / mid / 1e6, tokens);
        }
    }
}

fn main() {
    let size = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    // Optional second argument: only inputs whose name contains it (for profiling).
    let only = std::env::args().nth(2).unwrap_or_default();
    let target = if cfg!(target_arch = "wasm32") {
        "wasm32"
    } else {
        "native"
    };
    println!("tokbench ({target}), inputs of {size} bytes");
    for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
        let t = Instant::now();
        let n = tokenizer(enc).count("Hello, world! First call touches the tables: 東京 😀");
        println!(
            "  first call {:<12} {:>8.3} ms ({n} tokens)",
            enc.name(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut worst = f64::MAX;
    for (group, inputs) in [
        ("typical", typical(size)),
        ("adversarial", adversarial(size)),
    ] {
        println!("{group}:");
        for (name, text) in inputs.iter().filter(|(n, _)| n.contains(only.as_str())) {
            for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
                let (rate, tokens) = mbps(enc, text);
                worst = worst.min(rate);
                println!(
                    "  {name:<24} {:<12} {rate:>8.1} MB/s  ({tokens} tokens)",
                    enc.name()
                );
            }
        }
    }
    println!("slowest: {worst:.1} MB/s");
}
