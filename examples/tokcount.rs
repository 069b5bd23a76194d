//! Counts tokens for the tiktoken oracle test (`tests/tokenizer_oracle`).
//!
//! Reads JSON lines `{"enc":"o200k_base","text":"..."}` on stdin and prints one
//! count per line, so Python can compare against OpenAI's `tiktoken` without
//! Rust bindings. A line that cannot be parsed prints `error: <reason>`.

use std::io::{BufRead, BufWriter, Write};
use tollgate::tokens::bpe::tokenizer;
use tollgate::tokens::Encoding;

#[derive(serde::Deserialize)]
struct Query {
    enc: Encoding,
    text: String,
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for line in stdin.lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(out, "error: {e}");
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = match serde_json::from_str::<Query>(&line) {
            Ok(q) => writeln!(out, "{}", tokenizer(q.enc).count(&q.text)),
            Err(e) => writeln!(out, "error: {e}"),
        };
    }
    let _ = out.flush();
}
