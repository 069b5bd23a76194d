//! mock-provider: a test-only stand-in for the OpenAI and Anthropic HTTP
//! APIs, used by tollgate's e2e tests and benchmarks.
//!
//! std-only HTTP/1.1 (a thread per connection, keep-alive, Content-Length and
//! chunked request bodies, chunked SSE replies flushed per event). `usage` is
//! computed with tiktoken-rs, independently of tollgate's own tokenizer.
//!
//! Test controls (request headers):
//!   x-mock-reply-words: N          reply length in words (default 24)
//!   x-mock-no-usage: 1             omit usage everywhere
//!   x-mock-status: 429|500|...     answer with a provider-shaped error
//!   x-mock-chunk-delay-ms: N       sleep between streamed events
//!   x-mock-cached-tokens: N        report N prompt tokens as cached
//!   x-mock-cache-creation-tokens: N  (Anthropic cache_creation_input_tokens)
//!   x-mock-reasoning-tokens: N     add N reasoning tokens to the output
//!   x-mock-echo: 1                 chat and Responses replies echo the last user message
//!   x-mock-reply-text: T           chat and Responses replies are T (overrides echo)
//!   x-mock-reply-repeat: N         the echoed or scripted reply N times, one per line
//! Gemini (`/v1beta/models/{m}:generateContent`) and Bedrock Converse
//! (`/model/{id}/converse[-stream]`, SigV4-checked) live in gemini.rs / bedrock.rs.
//!   x-mock-fault: reset-after-bytes=N|stall|truncate|gzip|...  (see faults.rs)
//! Introspection: GET /_mock/last, GET /_mock/requests, POST /_mock/reset,
//! GET /_mock/health.

mod anthropic;
mod bedrock;
mod common;
mod faults;
mod gemini;
mod http;
mod json;
mod openai;
mod text;

use common::{Ctl, Reply};
use http::{ReadError, Request};
use json::J;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const MAX_CONNECTIONS: usize = 2048;
const HISTORY: usize = 256;

static SEQ: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static REQUESTS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    OpenAi,
    Anthropic,
}

fn provider_of(path: &str) -> Provider {
    if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    }
}

fn bad_request(p: Provider, msg: &str) -> Reply {
    match p {
        Provider::OpenAi => openai::invalid(msg, None, None),
        Provider::Anthropic => anthropic::invalid(msg),
    }
}

/// The recorded form of a request, served by /_mock/last.
fn record(req: &Request) -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
    let mut headers: Vec<(String, J)> = Vec::new();
    for (k, v) in &req.headers {
        match headers.iter_mut().find(|(hk, _)| hk == k) {
            Some((_, J::Str(prev))) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => headers.push((k.clone(), J::Str(v.clone()))),
        }
    }
    let list: Vec<J> = req
        .headers
        .iter()
        .map(|(k, v)| arr![k.as_str(), v.as_str()])
        .collect();
    let body = String::from_utf8_lossy(&req.body).into_owned();
    obj! {
        "seq" => seq,
        "method" => req.method.as_str(),
        "path" => req.target.as_str(),
        "headers" => J::Obj(headers),
        "header_list" => J::Arr(list),
        "body" => body,
        "body_len" => req.body.len(),
    }
    .to_json()
}

fn text_reply(status: u16, body: &str) -> Reply {
    Reply::Full {
        status,
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: body.into(),
    }
}

fn raw_json(status: u16, body: String) -> Reply {
    Reply::Full {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    }
}

fn introspect(req: &Request) -> Option<Reply> {
    let path = req.path();
    if !path.starts_with("/_mock/") {
        return None;
    }
    let hist = || REQUESTS.lock().unwrap_or_else(|e| e.into_inner());
    Some(match (req.method.as_str(), path) {
        ("GET", "/_mock/health") => text_reply(200, "ok"),
        ("GET", "/_mock/last") => match hist().back() {
            Some(r) => raw_json(200, r.clone()),
            None => openai::error(404, "no request recorded yet", "not_found", None, None),
        },
        ("GET", "/_mock/requests") => {
            let all: Vec<String> = hist().iter().cloned().collect();
            raw_json(200, format!("[{}]", all.join(",")))
        }
        ("POST", "/_mock/reset") => {
            hist().clear();
            text_reply(200, "ok")
        }
        _ => openai::error(
            404,
            &format!("Invalid URL ({} {})", req.method, path),
            "invalid_request_error",
            None,
            None,
        ),
    })
}

/// Routes a request to its handler. Pure apart from the request history.
pub fn dispatch(req: &Request) -> Reply {
    if let Some(r) = introspect(req) {
        return r;
    }
    {
        let mut h = REQUESTS.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() >= HISTORY {
            h.pop_front();
        }
        h.push_back(record(req));
    }
    if let Some(r) = gemini::route(req).or_else(|| bedrock::route(req)) {
        return r;
    }
    let path = req.path();
    let provider = provider_of(path);
    let ctl = match Ctl::from_request(req) {
        Ok(c) => c,
        Err(e) => return bad_request(provider, &e),
    };
    if let Some(s) = ctl.status {
        return match provider {
            Provider::OpenAi => openai::status_error(s),
            Provider::Anthropic => anthropic::status_error(s),
        };
    }
    let method = req.method.as_str();
    if method == "GET" {
        if path.ends_with("/v1/models") {
            return openai::models();
        }
        if let Some(id) = path.strip_prefix("/v1/models/") {
            return openai::model(id);
        }
    }
    let endpoint = [
        "/chat/completions",
        "/completions",
        "/embeddings",
        "/responses",
        "/messages/count_tokens",
        "/messages",
    ]
    .into_iter()
    .find(|e| path.ends_with(e));
    let Some(endpoint) = endpoint else {
        return openai::error(
            404,
            &format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
            None,
            None,
        );
    };
    if method != "POST" {
        return match provider {
            Provider::OpenAi => openai::error(
                405,
                &format!("Invalid method for URL ({method} {path})"),
                "invalid_request_error",
                None,
                None,
            ),
            Provider::Anthropic => anthropic::error(
                405,
                "invalid_request_error",
                &format!("Method {method} not allowed"),
            ),
        };
    }
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request(provider, "The request body must be a JSON object."),
        Err(e) => {
            let msg = match provider {
                Provider::OpenAi => format!(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.) ({e})"
                ),
                Provider::Anthropic => format!("There was an error parsing the body: {e}"),
            };
            return bad_request(provider, &msg);
        }
    };
    match endpoint {
        "/chat/completions" => openai::chat(&body, &ctl),
        "/completions" => openai::completions(&body, &ctl),
        "/embeddings" => openai::embeddings(&body, &ctl),
        "/responses" => openai::responses(&body, &ctl),
        "/messages/count_tokens" => anthropic::count_tokens(&body),
        _ => anthropic::messages(&body, &ctl),
    }
}

fn serve_one(req: &Request, w: &mut TcpStream, verbose: bool) -> std::io::Result<()> {
    let keep_alive = req.keep_alive();
    if let Some(done) = bedrock::serve_stream(req, w, keep_alive) {
        return done;
    }
    let reply = std::panic::catch_unwind(|| dispatch(req)).unwrap_or_else(|_| {
        openai::error(
            500,
            "mock-provider handler panicked",
            "server_error",
            None,
            None,
        )
    });
    let delay = Ctl::from_request(req).map(|c| c.delay).unwrap_or_default();
    if verbose {
        eprintln!("mock-provider: {} {}", req.method, req.target);
    }
    if let Some(outcome) = faults::serve(req, &reply, w) {
        return outcome;
    }
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => http::write_full(
            w,
            status,
            &headers,
            body.as_bytes(),
            keep_alive,
            req.method == "HEAD",
        ),
        Reply::Stream { headers, events } => {
            http::write_stream(w, 200, &headers, &events, delay, keep_alive)
        }
    }?;
    if keep_alive {
        Ok(())
    } else {
        Err(std::io::Error::other("close"))
    }
}

fn handle(stream: TcpStream, verbose: bool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut w = stream;
    loop {
        match http::read_request(&mut reader, &mut w) {
            Ok(req) => {
                if serve_one(&req, &mut w, verbose).is_err() {
                    break;
                }
            }
            Err(ReadError::Closed) | Err(ReadError::Io(_)) => break,
            Err(ReadError::Bad(status, msg)) => {
                let Reply::Full { headers, body, .. } =
                    openai::error(status, &msg, "invalid_request_error", None, None)
                else {
                    break;
                };
                let _ = http::write_full(&mut w, status, &headers, body.as_bytes(), false, false);
                break;
            }
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: mock-provider [--listen 127.0.0.1:10001] [--verbose]\n  --listen with port 0 picks a free port; the bound address is printed on stdout.");
    std::process::exit(2)
}

fn main() {
    let mut listen = "127.0.0.1:10001".to_string();
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--verbose" | "-v" => verbose = true,
            "--help" | "-h" => usage(),
            other => match other.strip_prefix("--listen=") {
                Some(v) => listen = v.to_string(),
                None => usage(),
            },
        }
    }
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-provider: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    // Load the common vocabularies before the first request needs them.
    std::thread::spawn(|| {
        text::count("gpt-4o", "warm up");
        text::count("gpt-4", "warm up");
    });
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    println!("mock-provider listening on {addr}");
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if LIVE.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            let mut s = stream;
            let _ = http::write_full(&mut s, 503, &[], b"too many connections", false, false);
            continue;
        }
        LIVE.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new().spawn(move || {
            handle(stream, verbose);
            LIVE.fetch_sub(1, Ordering::Relaxed);
        });
        if spawned.is_err() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
