//! Prompt counting against real OpenAI billing.
//!
//! Every recorded exchange in `shared/fixtures/openai-recorded` (go-vcr YAML) whose
//! prompt is text or tools must count to exactly the `usage.prompt_tokens` OpenAI
//! billed. Recordings with image/audio input are counted and reported, not asserted;
//! error responses and streams without a usage chunk are skipped. Tokenization here
//! is tiktoken-rs, so this tests the prompt rules, not the BPE.
//!
//! Fixtures: `$TOLLGATE_FIXTURES`, else `$CARGO_MANIFEST_DIR/../shared/fixtures/openai-recorded`.

use std::path::PathBuf;

use serde_json::Value;
use tollgate::dialect::doc::Doc;
use tollgate::dialect::Api;
use tollgate::tokens::models::profile;
use tollgate::tokens::prompt::{count_prompt, PromptOptions};
use tollgate::tokens::{Encoding, TextCounter};

/// tiktoken-rs behind the crate's counting interface.
struct Tiktoken(&'static tiktoken_rs::CoreBPE);

impl TextCounter for Tiktoken {
    fn count(&mut self, text: &str) -> u64 {
        self.0.encode_ordinary(text).len() as u64
    }
    fn estimated(&self) -> bool {
        false
    }
}

fn fixtures() -> PathBuf {
    match std::env::var_os("TOLLGATE_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/openai-recorded")
        }
    }
}

/// `usage.prompt_tokens` from a JSON body or the last SSE chunk that carries usage.
fn billed(body: &str) -> Option<u64> {
    let from = |v: &Value| {
        v.get("usage")
            .or_else(|| v.get("response").and_then(|r| r.get("usage")))
            .and_then(|u| u.get("prompt_tokens").or_else(|| u.get("input_tokens")))
            .and_then(Value::as_u64)
    };
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return from(&v);
    }
    body.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find_map(|v| from(&v))
}

/// Image or audio parts in any message: billed by rules we can only approximate.
fn has_media(body: &Value) -> bool {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .any(|p| {
            matches!(
                p.get("type").and_then(Value::as_str),
                Some("image_url" | "input_audio")
            )
        })
}

struct Row {
    name: String,
    model: String,
    billed: u64,
    ours: u64,
    estimated: bool,
    verdict: &'static str,
}

#[test]
fn recorded_prompt_tokens_match_billing() {
    let dir = fixtures();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect(),
        Err(e) => panic!("fixtures at {}: {e} (set TOLLGATE_FIXTURES)", dir.display()),
    };
    files.sort();
    assert!(!files.is_empty(), "no recordings in {}", dir.display());

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for path in &files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        let text = std::fs::read_to_string(path).expect("readable fixture");
        let doc: serde_norway::Value = serde_norway::from_str(&text).expect("valid YAML");
        let interactions = doc
            .get("interactions")
            .and_then(|i| i.as_sequence())
            .cloned()
            .unwrap_or_default();
        for it in &interactions {
            let url = it["request"]["url"].as_str().unwrap_or("");
            let req_body = it["request"]["body"].as_str().unwrap_or("");
            let code = it["response"]["code"].as_u64().unwrap_or(0);
            let resp_body = it["response"]["body"].as_str().unwrap_or("");
            let Some(api) = Api::from_path(url) else {
                skipped.push(format!("{name}: not a counted API ({url})"));
                continue;
            };
            if code != 200 {
                skipped.push(format!("{name}: error response {code}"));
                continue;
            }
            let body: Value = serde_json::from_str(req_body).expect("JSON request body");
            let doc = Doc::parse(req_body.as_bytes()).expect("JSON request body");
            let Some(billed) = billed(resp_body) else {
                let model = body.get("model").and_then(Value::as_str).unwrap_or("");
                let prof = profile(model);
                let bpe = tiktoken_rs::o200k_base_singleton();
                let ours = count_prompt(
                    api,
                    doc.root(),
                    &prof,
                    &mut Tiktoken(bpe),
                    &PromptOptions::default(),
                );
                skipped.push(format!(
                    "{name}: no usage in response (stream without include_usage); ours {} (estimated {})",
                    ours.tokens, ours.estimated
                ));
                continue;
            };
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let prof = profile(&model);
            let bpe = match prof.encoding {
                Some(Encoding::Cl100kBase) => tiktoken_rs::cl100k_base_singleton(),
                _ => tiktoken_rs::o200k_base_singleton(),
            };
            let got = count_prompt(
                api,
                doc.root(),
                &prof,
                &mut Tiktoken(bpe),
                &PromptOptions::default(),
            );
            let media = has_media(&body);
            let verdict = match (media, got.tokens == billed) {
                (true, _) => "media: reported",
                (false, true) => "exact match",
                (false, false) => "MISMATCH",
            };
            rows.push(Row {
                name: name.clone(),
                model,
                billed,
                ours: got.tokens,
                estimated: got.estimated,
                verdict,
            });
        }
    }

    println!("\n| recording | model | billed | ours | diff | estimated | verdict |");
    println!("|---|---|---:|---:|---:|---|---|");
    for r in &rows {
        let diff = r.ours as i64 - r.billed as i64;
        println!(
            "| {} | {} | {} | {} | {:+} | {} | {} |",
            r.name, r.model, r.billed, r.ours, diff, r.estimated, r.verdict
        );
    }
    println!("\nskipped:");
    for s in &skipped {
        println!("- {s}");
    }

    let bad: Vec<&Row> = rows.iter().filter(|r| r.verdict == "MISMATCH").collect();
    assert!(
        bad.is_empty(),
        "prompt count differs from billing: {:?}",
        bad.iter()
            .map(|r| (&r.name, r.billed, r.ours))
            .collect::<Vec<_>>()
    );
    let asserted = rows.iter().filter(|r| r.verdict == "exact match").count();
    assert!(
        asserted >= 25,
        "expected the text/tool recordings to be checked, got {asserted}"
    );
}
