//! Hostcalls per request for the bench's metering and limits configs
//! (`benches/configs/`), on the Envoy host. In Envoy's V8 a plain hostcall costs
//! about 0.2 µs, one that hands data back about 1 µs (the host allocates in the
//! VM), a header set about 0.5 µs and a whole header-map write about 6 µs (the
//! bench's `probe-*` variants, benches/README.md), so which calls an exchange makes
//! is most of what tollgate adds beyond its own logic. The assertions below catch
//! a change that adds calls to the hot path.
//! `cargo test -p testhost --test hostcalls -- --nocapture` prints the list.
//!
//! `perf_loop` (ignored) drives steady exchanges in a loop for a profiler:
//! `TESTHOST_PERF=1 PERF_N=40000 perf record -g <test binary> perf_loop --ignored`
//! (wasmtime writes /tmp/perf-<pid>.map, so JIT'd functions get names when the
//! wasm keeps its name section: build one with `CARGO_PROFILE_RELEASE_STRIP=none`
//! into another target dir and point `TOLLGATE_WASM` at it). `PERF_CONFIG` picks
//! a file of benches/configs/.
//!
//! `fuel_per_exchange` (ignored) counts the wasm operators tollgate runs per
//! steady exchange for each bench config, with no noise:
//! `TESTHOST_FUEL=1 cargo test -p testhost --test hostcalls fuel_per_exchange -- --ignored --nocapture`.

use serde_json::json;
use testhost::{Gateway, Mode, Outcome, Request, Response};

const CHAT: &str = "/v1/chat/completions";

fn config(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/configs/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap()
}

/// About 1 KB of chat, like the bench's 1 KB body.
fn body(turn: u32) -> String {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for a hardware store. Answer briefly and name the aisle."},
            {"role": "user", "content": "I need to hang a heavy mirror on a plaster wall. What anchors should I use?"},
            {"role": "assistant", "content": "Use toggle bolts rated for the mirror's weight; two are usually enough. They are in aisle 7, next to the picture hooks."},
            {"role": "user", "content": "And if the wall turns out to be brick behind the plaster, what then? Do I need a special drill bit?"},
            {"role": "assistant", "content": "Yes: a masonry bit and sleeve anchors. Both are in aisle 9. Drill slowly and clear the dust often."},
            {"role": "user", "content": format!("Thanks. Last question {turn}: how high should the mirror hang above a dresser?")}
        ]
    })
    .to_string()
}

fn answer() -> Response {
    Response::json(
        200,
        &json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "About 8 to 10 inches above it."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 180, "completion_tokens": 12, "total_tokens": 192}
        })
        .to_string(),
    )
}

/// The hostcalls of one steady-state request (a first one warms the caches),
/// with the metrics timer's tick in between as in Envoy.
fn steady(config: &str) -> Outcome {
    let mut gw = Gateway::tollgate(Mode::Envoy, config, 1);
    for turn in 0..2 {
        let o = gw.send(0, "r", &Request::post_json(CHAT, &body(turn)), &answer());
        assert_eq!(o.status, 200, "{:?}", o.violations);
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        gw.vms[0].advance_ms(1000);
        gw.vms[0].tick().unwrap();
    }
    gw.send(0, "r", &Request::post_json(CHAT, &body(9)), &answer())
}

fn show(name: &str, o: &Outcome) {
    eprintln!("{name}: {} hostcalls", o.hostcalls.len());
    for c in &o.hostcalls {
        eprintln!("  {c}");
    }
}

fn count(o: &Outcome, f: &str) -> usize {
    o.hostcalls.iter().filter(|c| c.ends_with(f)).count()
}

#[test]
fn metering_hostcalls_per_request() {
    let o = steady(&config("tollgate-metering.json"));
    show("metering", &o);
    assert!(o.header("x-llm-total-tokens").is_some());
    // Request and response header maps each read once; the four x-llm-* headers
    // set one call each on the held response (cheaper in Envoy than writing the
    // whole map back, which removes and re-adds every header).
    assert_eq!(count(&o, ":proxy_get_header_map_pairs"), 2);
    assert_eq!(count(&o, ":proxy_set_header_map_pairs"), 0);
    assert_eq!(count(&o, ":proxy_replace_header_map_value"), 4);
    // Metric counts are batched for the timer's tick: no hostcall per request.
    assert_eq!(count(&o, ":proxy_increment_metric"), 0);
    // The host's log level is read on the tick, not per exchange.
    assert_eq!(count(&o, ":proxy_get_log_level"), 0);
    assert!(o.hostcalls.len() <= 15, "{} hostcalls", o.hostcalls.len());
}

#[test]
fn limits_hostcalls_per_request() {
    let metering = steady(&config("tollgate-metering.json"));
    let o = steady(&config("tollgate-limits.json"));
    show("limits", &o);
    assert!(o.header("x-ratelimit-remaining-tokens").is_some());
    // Right after a tick (credits returned): one clock read; the counter is read
    // once and written once (CAS, taking a credit); the refund of the unused
    // reservation is held for the tick, the `allowed` decision counted there too;
    // three x-ratelimit-* headers.
    assert_eq!(count(&o, ":proxy_get_current_time_nanoseconds"), 1);
    assert_eq!(count(&o, ":proxy_get_shared_data"), 1);
    assert_eq!(count(&o, ":proxy_set_shared_data"), 1);
    assert_eq!(count(&o, ":proxy_replace_header_map_value"), 4 + 3);
    assert_eq!(count(&o, ":proxy_increment_metric"), 0);
    let extra = o.hostcalls.len() as i64 - metering.hostcalls.len() as i64;
    eprintln!("limits adds {extra} hostcalls over metering");
    assert_eq!(extra, 6, "limits adds {extra} hostcalls");
}

#[test]
fn limits_from_credit_make_no_shared_data_calls() {
    let mut gw = Gateway::tollgate(Mode::Envoy, &config("tollgate-limits.json"), 1);
    let send =
        |gw: &mut Gateway, turn| gw.send(0, "r", &Request::post_json(CHAT, &body(turn)), &answer());
    // A tick first, so the refunds and credits are held (the timer runs).
    gw.vms[0].advance_ms(1000);
    gw.vms[0].tick().unwrap();
    // The first request creates the counter and charges it.
    let first = send(&mut gw, 0);
    assert!(count(&first, ":proxy_set_shared_data") >= 1);
    // The next requests of the same consumer on this worker are admitted from
    // the credit the first one took, on the clock reading the tick took: no clock
    // call, no shared data, the headers.
    let reset = |o: &testhost::Outcome| o.header("x-ratelimit-reset-tokens").map(str::to_string);
    for turn in 1..4 {
        let o = send(&mut gw, turn);
        assert_eq!(o.status, 200, "{:?}", o.violations);
        assert!(o.header("x-ratelimit-remaining-tokens").is_some());
        assert_eq!(count(&o, ":proxy_get_current_time_nanoseconds"), 0);
        assert_eq!(count(&o, ":proxy_get_shared_data"), 0);
        assert_eq!(count(&o, ":proxy_set_shared_data"), 0);
        // The host clock starts 20 s into a minute; the tick read it at 21 s.
        assert_eq!(reset(&o).as_deref(), Some("39s"));
    }
    // Within two tick periods of the window's end the reading no longer stands
    // in. The tick returned the credit, so the first request goes to the counter
    // (clock and shared data); the next is admitted from the new credit, but
    // reads the clock.
    gw.vms[0].advance_ms(37_500);
    gw.vms[0].tick().unwrap();
    let o = send(&mut gw, 4);
    assert_eq!(count(&o, ":proxy_get_shared_data"), 1);
    let o = send(&mut gw, 5);
    assert_eq!(o.status, 200, "{:?}", o.violations);
    assert_eq!(count(&o, ":proxy_get_shared_data"), 0);
    assert_eq!(count(&o, ":proxy_get_current_time_nanoseconds"), 1);
    assert_eq!(reset(&o).as_deref(), Some("2s"));
    // Half a second into the next window a tick's reading stands in again.
    gw.vms[0].advance_ms(2_000);
    gw.vms[0].tick().unwrap();
    let o = send(&mut gw, 6);
    assert_eq!(
        count(&o, ":proxy_get_shared_data"),
        1,
        "a new window's counter"
    );
    assert_eq!(reset(&o).as_deref(), Some("1m0s"));
    let o = send(&mut gw, 7);
    assert_eq!(count(&o, ":proxy_get_shared_data"), 0);
    assert_eq!(count(&o, ":proxy_get_current_time_nanoseconds"), 0);
    assert_eq!(reset(&o).as_deref(), Some("1m0s"));
}

#[test]
fn translate_hostcalls_per_request() {
    let mut gw = Gateway::tollgate(Mode::Envoy, &config("tollgate-translate.json"), 1);
    let anthropic = anthropic_answer();
    let mut o = gw.send(0, "r", &Request::post_json(CHAT, &body(0)), &anthropic);
    for turn in 1..3 {
        gw.vms[0].advance_ms(1000);
        gw.vms[0].tick().unwrap();
        o = gw.send(0, "r", &Request::post_json(CHAT, &body(turn)), &anthropic);
    }
    show("translate", &o);
    assert_eq!(o.status, 200, "{:?}", o.violations);
    let up = o.upstream_request.as_ref().expect("forwarded");
    assert!(up
        .0
        .iter()
        .any(|(k, v)| k == ":path" && v == "/v1/messages"));
    assert!(up.0.iter().any(|(k, _)| k == "x-api-key"));
    // Envoy: the request rewrite is one call per header, not a read and a write
    // of the whole map (which removes and re-adds every header).
    assert_eq!(count(&o, ":proxy_set_header_map_pairs"), 0);
    assert_eq!(count(&o, ":proxy_get_header_map_pairs"), 2);
}

/// The Anthropic answer the translate config's upstream gives.
fn anthropic_answer() -> Response {
    Response::json(
        200,
        &json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "About 8 to 10 inches above it."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 180, "output_tokens": 12}
        })
        .to_string(),
    )
}

/// Wasm operators per steady exchange for each bench config (see the module
/// docs): tollgate's own code, without the host's side of the hostcalls. The
/// median of 40 exchanges, with the timer ticking every 10 as in Envoy.
#[test]
#[ignore]
fn fuel_per_exchange() {
    assert!(testhost::fuel_counting(), "set TESTHOST_FUEL=1");
    for name in [
        "tollgate-metering.json",
        "tollgate-limits.json",
        "tollgate-pii.json",
        "tollgate-translate.json",
        "tollgate-pii-only.json",
        "tollgate-translate-only.json",
    ] {
        let answer = if name.contains("translate") {
            anthropic_answer()
        } else {
            answer()
        };
        let mut gw = Gateway::tollgate(Mode::Envoy, &config(name), 1);
        let mut used = Vec::new();
        let mut last = None;
        for i in 0..45u32 {
            if i % 10 == 0 {
                gw.vms[0].advance_ms(1000);
                gw.vms[0].tick().unwrap();
            }
            let before = gw.vms[0].fuel_used().unwrap_or(0);
            let o = gw.send(0, "r", &Request::post_json(CHAT, &body(i)), &answer);
            assert_eq!(o.status, 200, "{name}: {:?}", o.violations);
            if i >= 5 {
                used.push(gw.vms[0].fuel_used().unwrap_or(0) - before);
            }
            last = Some(o);
        }
        if let Some(o) = last.filter(|_| std::env::var_os("FUEL_TRACE").is_some()) {
            // Each record: what tollgate ran since the previous one.
            show(name, &o);
        }
        used.sort_unstable();
        let (lo, mid, hi) = (used[0], used[used.len() / 2], used[used.len() - 1]);
        eprintln!("{name}: {mid} wasm operators per exchange (min {lo}, max {hi})");
    }
}

/// Steady exchanges in a loop, for `perf` (see the module docs); prints the
/// time per exchange in the test host (its own cost included).
#[test]
#[ignore]
fn perf_loop() {
    let cfg = std::env::var("PERF_CONFIG").unwrap_or_else(|_| "tollgate-metering.json".into());
    let mut gw = Gateway::tollgate(Mode::Envoy, &config(&cfg), 1);
    let n: u32 = std::env::var("PERF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let b = body(1);
    let ans = if cfg.contains("translate") {
        anthropic_answer()
    } else {
        answer()
    };
    let t = std::time::Instant::now();
    for i in 0..n {
        let o = gw.send(0, "r", &Request::post_json(CHAT, &b), &ans);
        assert_eq!(o.status, 200);
        if i % 1000 == 0 {
            gw.vms[0].advance_ms(1000);
            gw.vms[0].tick().unwrap();
        }
    }
    eprintln!("{:?} per exchange", t.elapsed() / n);
}
