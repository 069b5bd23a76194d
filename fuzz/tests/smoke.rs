//! Stable smoke run of every fuzz target (part of `cargo test --workspace`, so of
//! `make test`): the committed seeds plus a few thousand deterministic mutations
//! each. Coverage-guided runs are `make fuzz` (nightly, cargo-fuzz).

use tollgate_fuzz::mutate::smoke;

/// Mutations per target; `FUZZ_SMOKE_MUTATIONS` raises it for a longer stable run.
fn mutations(default: usize) -> usize {
    std::env::var("FUZZ_SMOKE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn config() {
    smoke("config", tollgate_fuzz::config, mutations(4000));
}

#[test]
fn exchange() {
    smoke("exchange", tollgate_fuzz::exchange, mutations(3000));
}

#[test]
fn sse() {
    smoke("sse", tollgate_fuzz::sse, mutations(4000));
}

#[test]
fn tokenizer() {
    smoke("tokenizer", tollgate_fuzz::tokenizer, mutations(1500));
}

#[test]
fn inject() {
    smoke("inject", tollgate_fuzz::inject, mutations(4000));
}

#[test]
fn prompt() {
    smoke("prompt", tollgate_fuzz::prompt, mutations(3000));
}

#[test]
fn pii() {
    smoke("pii", tollgate_fuzz::pii, mutations(1500));
}

#[test]
fn eventstream() {
    smoke("eventstream", tollgate_fuzz::eventstream, mutations(4000));
}

#[test]
fn json() {
    smoke("json", tollgate_fuzz::json, mutations(6000));
}

#[test]
fn every_target_has_a_test_and_seeds() {
    for (name, _) in tollgate_fuzz::TARGETS {
        assert!(!tollgate_fuzz::mutate::seeds(name).is_empty(), "{name}");
    }
    assert_eq!(
        tollgate_fuzz::TARGETS.len(),
        9,
        "add a #[test] for the new target"
    );
}
