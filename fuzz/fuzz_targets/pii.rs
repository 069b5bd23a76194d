//! cargo-fuzz entry point; the body lives in `tollgate_fuzz::pii` so the stable
//! smoke test replays the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::pii(data));
