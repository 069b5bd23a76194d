//! cargo-fuzz entry point; the body lives in `tollgate_fuzz::json` so the stable
//! smoke test replays the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::json(data));
