//! A second proxy-wasm host for tests, on wasmtime (the runtime Kong's
//! ngx_wasm_module embeds). It loads the real `tollgate.wasm` and drives root and
//! HTTP contexts the way either host does:
//!
//! - [`Mode::Envoy`]: Envoy 1.40 with `allow_on_headers_stop_iteration: true`
//!   (see shared HOSTS.md): binary properties, `xds.route_name`, `Pause` holds
//!   headers / buffers bodies in every phase, gRPC calls accepted.
//! - [`Mode::Kong`]: ngx_wasm_module as documented in its `docs/PROXY_WASM.md`
//!   and exercised by its `t/` suite: every property is a string,
//!   `kong.route_name` / `kong.service_name`, `end_of_stream` is always false in
//!   header callbacks (`ngx_http_proxy_wasm.c` passes `0 // TODO: eof`), the
//!   request body arrives once and whole (`eof = 1`), `Pause` with nothing to
//!   resume it hangs the request (t/03-proxy_wasm "on_request_headers -> Pause":
//!   `timeout_expected`), pausing in response phases is refused ("cannot pause in
//!   header_filter phase", 500), `proxy_http_call` is only accepted in request
//!   headers/body, `on_tick` and a call's answer (`ngx_proxy_wasm_host.c`: "can only
//!   send HTTP dispatch during ..."),
//!   NYI imports trap (`ngx_proxy_wasm_hfuncs_nop`), metrics are stored as
//!   `pw.{filter}.{name}` (`docs/METRICS.md`), request bodies over
//!   `client_body_buffer_size` are on disk and unreadable.
//!
//! Everything the filter does that a real host would refuse is recorded in
//! [`Outcome::violations`] (or traps, like the real host), so a test can assert a
//! clean run on both hosts.

pub mod abi;
mod calls;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::{Config, Engine, Instance, Linker, Memory, Module, Store, TypedFunc, Val};

use abi::action;

/// Headers as the host stores them: lower-case name, raw value.
pub type HeaderMap = Vec<(String, Vec<u8>)>;
/// Headers and body the upstream received.
pub type Forwarded = (Vec<(String, String)>, Vec<u8>);

/// Which host to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Envoy 1.40 (V8 in production; the ABI semantics are the host's, not the engine's).
    Envoy,
    /// Kong 3.4–3.10 through ngx_wasm_module.
    Kong,
}

impl Mode {
    /// Both modes, for tests that must pass on each.
    pub const ALL: [Mode; 2] = [Mode::Envoy, Mode::Kong];

    /// Prefix the host gives metric names (Envoy `wasmcustom.`; ngx_wasm_module
    /// `pw.{filter_name}.`, docs/METRICS.md "Name Prefixing").
    pub fn metric_prefix(self, filter: &str) -> String {
        match self {
            Mode::Envoy => "wasmcustom.".to_string(),
            Mode::Kong => format!("pw.{filter}."),
        }
    }
}

/// The compiled filter, shared by every VM of a test process (compiling the
/// 10 MB module is the slow part, so it happens once).
pub struct Plugin {
    engine: Engine,
    module: Module,
    /// Filter name (Kong: the `.wasm` file's stem).
    pub name: String,
}

/// Path of the release `tollgate.wasm` (`make build`), or `TOLLGATE_WASM` when set
/// (another build of it, e.g. one that keeps its name section for profiling).
pub fn tollgate_wasm_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if let Some(p) = std::env::var_os("TOLLGATE_WASM") {
        return PathBuf::from(p);
    }
    root.join("target/wasm32-wasip1/release/tollgate.wasm")
}

impl Plugin {
    /// Compile a filter.
    pub fn load(path: &Path) -> Result<Plugin, String> {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read {} ({e}); run `make build` first",
                path.display()
            )
        })?;
        let mut config = Config::new();
        // Test speed: the module is big and the tests are short.
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        if std::env::var_os("TESTHOST_PERF").is_some() {
            // Profiling (tests/hostcalls.rs `perf_loop`): optimised code as Kong
            // runs it, and a perf map naming the JIT'd functions.
            config.cranelift_opt_level(wasmtime::OptLevel::Speed);
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if fuel_counting() {
            // `tests/hostcalls.rs` `fuel_per_exchange`: count the wasm operators
            // tollgate runs per exchange, a noise-free measure of its own code.
            config.consume_fuel(true);
        }
        let engine = Engine::new(&config).map_err(|e| e.to_string())?;
        let module = compile_cached(&engine, &bytes)?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("filter")
            .to_string();
        Ok(Plugin {
            engine,
            module,
            name,
        })
    }

    /// The release `tollgate.wasm`, compiled once per process.
    pub fn tollgate() -> &'static Plugin {
        static PLUGIN: OnceLock<Plugin> = OnceLock::new();
        PLUGIN.get_or_init(|| {
            let t = std::time::Instant::now();
            let p = match Plugin::load(&tollgate_wasm_path()) {
                Ok(p) => p,
                Err(e) => panic!("{e}"),
            };
            if std::env::var_os("TESTHOST_TIMING").is_some() {
                eprintln!("testhost: compiled {} in {:?}", p.name, t.elapsed());
            }
            p
        })
    }

    /// `(module, name)` of every import.
    pub fn imports(&self) -> Vec<(String, String)> {
        self.module
            .imports()
            .map(|i| (i.module().to_string(), i.name().to_string()))
            .collect()
    }
}

/// `TESTHOST_FUEL` is set: VMs count the wasm operators they run ([`Vm::fuel_used`]).
pub fn fuel_counting() -> bool {
    std::env::var_os("TESTHOST_FUEL").is_some()
}

/// Compile, reusing machine code cached under `target/testhost-cache` for the
/// same wasm bytes (compiling the 10 MB module is seconds of CPU on every test
/// binary otherwise). The cache is keyed by the bytes and this crate's wasmtime
/// version; wasmtime itself refuses an artifact from another engine config.
fn compile_cached(engine: &Engine, bytes: &[u8]) -> Result<Module, String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/testhost-cache");
    let file = dir.join(format!("{:016x}-{}.cwasm", h.finish(), bytes.len()));
    if std::env::var_os("TESTHOST_PERF").is_some() || fuel_counting() {
        return Module::new(engine, bytes).map_err(|e| e.to_string());
    }
    if file.exists() {
        // SAFETY: the file is one this function wrote from `Module::serialize`
        // of the same engine configuration; wasmtime checks version and flags.
        if let Ok(m) = unsafe { Module::deserialize_file(engine, &file) } {
            return Ok(m);
        }
    }
    let module = Module::new(engine, bytes).map_err(|e| e.to_string())?;
    if let Ok(art) = module.serialize() {
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&tmp, art).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    Ok(module)
}

/// `(module, name)` of every function import of a wasm binary, read from its
/// import section without compiling it.
pub fn wasm_imports(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn leb(b: &[u8], at: &mut usize) -> Result<u32, String> {
        let (mut r, mut shift) = (0u32, 0);
        loop {
            let x = *b.get(*at).ok_or("truncated LEB128")?;
            *at += 1;
            r |= u32::from(x & 0x7f) << shift;
            if x & 0x80 == 0 {
                return Ok(r);
            }
            shift += 7;
            if shift > 28 {
                return Err("LEB128 too long".into());
            }
        }
    }
    fn name(b: &[u8], at: &mut usize) -> Result<String, String> {
        let len = leb(b, at)? as usize;
        let s = b.get(*at..*at + len).ok_or("truncated name")?;
        *at += len;
        String::from_utf8(s.to_vec()).map_err(|e| e.to_string())
    }
    if bytes.get(0..4) != Some(b"\0asm") {
        return Err("not a wasm binary".into());
    }
    let mut at = 8;
    let mut out = Vec::new();
    while at < bytes.len() {
        let id = bytes[at];
        at += 1;
        let size = leb(bytes, &mut at)? as usize;
        let end = at + size;
        if id == 2 {
            let mut p = at;
            for _ in 0..leb(bytes, &mut p)? {
                let module = name(bytes, &mut p)?;
                let field = name(bytes, &mut p)?;
                let kind = *bytes.get(p).ok_or("truncated import")?;
                p += 1;
                match kind {
                    0 => {
                        leb(bytes, &mut p)?;
                        out.push((module, field));
                    }
                    _ => {
                        return Err(format!(
                            "non-function import {module}.{field} (kind {kind})"
                        ))
                    }
                }
            }
        }
        at = end;
    }
    Ok(out)
}

/// State every VM of one gateway instance shares (Envoy: per vm_id; Kong: shm zones).
#[derive(Default)]
pub struct Shared {
    /// Shared data: key → (value, cas).
    pub data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
    /// Shared queues: name → items.
    pub queues: Mutex<Vec<(String, Vec<Vec<u8>>)>>,
    /// Metrics by host-visible name (with the host's prefix).
    pub metrics: Mutex<BTreeMap<String, i64>>,
}

impl Shared {
    /// A metric's value by its name as the filter defined it (host prefix added here).
    pub fn metric(&self, mode: Mode, filter: &str, name: &str) -> Option<i64> {
        let full = format!("{}{name}", mode.metric_prefix(filter));
        self.metrics.lock().ok()?.get(&full).copied()
    }

    /// Sum of every metric whose (unprefixed) name contains all of `parts`.
    pub fn metric_sum(&self, parts: &[&str]) -> i64 {
        let Ok(m) = self.metrics.lock() else { return 0 };
        m.iter()
            .filter(|(k, _)| parts.iter().all(|p| k.contains(p)))
            .map(|(_, v)| *v)
            .sum()
    }
}

/// A request as the client sends it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Headers including `:method`, `:path`, `:authority`.
    pub headers: Vec<(String, String)>,
    /// Body, delivered in `chunks` pieces on Envoy (whole on Kong).
    pub body: Vec<u8>,
    /// How many chunks Envoy delivers the body in (at least 1).
    pub chunks: usize,
}

impl Request {
    /// A POST with a JSON body.
    pub fn post_json(path: &str, body: &str) -> Request {
        Request {
            headers: vec![
                (":method".into(), "POST".into()),
                (":path".into(), path.into()),
                (":authority".into(), "llm.internal".into()),
                (":scheme".into(), "http".into()),
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
                ("accept-encoding".into(), "gzip".into()),
            ],
            body: body.as_bytes().to_vec(),
            chunks: 2,
        }
    }

    /// A request without a body.
    pub fn get(path: &str) -> Request {
        Request {
            headers: vec![
                (":method".into(), "GET".into()),
                (":path".into(), path.into()),
                (":authority".into(), "llm.internal".into()),
            ],
            body: Vec::new(),
            chunks: 1,
        }
    }

    /// Add a header.
    pub fn header(mut self, k: &str, v: &str) -> Request {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

/// The upstream's answer.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// Status.
    pub status: u32,
    /// Headers (without `:status`).
    pub headers: Vec<(String, String)>,
    /// Body chunks, in order.
    pub chunks: Vec<Vec<u8>>,
}

impl Response {
    /// A JSON answer in one chunk.
    pub fn json(status: u32, body: &str) -> Response {
        Response {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
            ],
            chunks: vec![body.as_bytes().to_vec()],
        }
    }

    /// An SSE stream, one chunk per given piece.
    pub fn sse(pieces: &[&str]) -> Response {
        Response {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: pieces.iter().map(|p| p.as_bytes().to_vec()).collect(),
        }
    }
}

/// Route identity the host exposes.
#[derive(Clone, Debug, Default)]
pub struct RouteInfo {
    /// Envoy route name / Kong route name.
    pub route: Option<String>,
    /// Kong service name.
    pub service: Option<String>,
}

/// What happened to one exchange.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// What the upstream received: headers and body (None if never forwarded).
    pub upstream_request: Option<Forwarded>,
    /// Status the client got.
    pub status: u32,
    /// Headers the client got.
    pub headers: Vec<(String, String)>,
    /// Body the client got.
    pub body: Vec<u8>,
    /// True when tollgate answered itself.
    pub local_reply: bool,
    /// Things the emulated host refused or would have hung on.
    pub violations: Vec<String>,
    /// Filter state / properties the filter set.
    pub properties: BTreeMap<String, Vec<u8>>,
    /// Outgoing HTTP / gRPC calls the filter dispatched.
    pub calls: Vec<String>,
    /// The HTTP calls in full, in dispatch order.
    pub http_calls: Vec<HttpCall>,
    /// Every proxy-wasm hostcall the filter made during the exchange (WASI calls
    /// left out), in order, as `phase:function`: what the exchange costs a host
    /// that charges per call (about 1.4 µs each in Envoy's V8).
    pub hostcalls: Vec<String>,
}

/// An HTTP call the filter dispatched (`proxy_http_call`), as the host received it.
#[derive(Clone, Debug, Default)]
pub struct HttpCall {
    /// Cluster name (Envoy) or `host:port` (Kong).
    pub upstream: String,
    /// Headers, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Timeout the filter asked for.
    pub timeout_ms: u32,
    /// The token the host handed back.
    pub token: u32,
    /// Host phase it was made in (`RequestBody`, `Tick`, `ResponseBody`, ...).
    pub phase: String,
}

impl HttpCall {
    /// A header of the call.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the called service answers to an HTTP call (see [`Vm::answer_http_calls`]
/// and [`Vm::queue_http_call_answers`]).
#[derive(Clone, Debug, Default)]
pub struct CallAnswer {
    /// HTTP status (sent as `:status`).
    pub status: u32,
    /// Further headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The call fails without an answer (connection refused, timeout). Envoy
    /// delivers `on_http_call_response` with no headers; ngx_wasm_module logs
    /// "dispatch failed", delivers nothing, and resumes the request once no call
    /// is pending (`ngx_http_proxy_wasm_dispatch.c`, resume handler).
    pub fail: bool,
}

impl CallAnswer {
    /// An answer with this status, no body.
    pub fn status(status: u32) -> CallAnswer {
        CallAnswer {
            status,
            ..CallAnswer::default()
        }
    }

    /// A JSON answer.
    pub fn json(status: u32, body: &str) -> CallAnswer {
        CallAnswer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            fail: false,
        }
    }

    /// No answer: the call fails (see [`CallAnswer::fail`]).
    pub fn failed() -> CallAnswer {
        CallAnswer {
            fail: true,
            ..CallAnswer::default()
        }
    }

    /// Add a header.
    pub fn header(mut self, k: &str, v: &str) -> CallAnswer {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    fn header_map(&self) -> HeaderMap {
        if self.fail {
            return HeaderMap::new();
        }
        std::iter::once((":status".to_string(), self.status.to_string().into_bytes()))
            .chain(
                self.headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
            )
            .collect()
    }
}

impl Outcome {
    /// A client-visible header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_request.as_ref().and_then(|(h, _)| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        })
    }

    /// The client-visible body as JSON (Null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body the upstream received, as JSON.
    pub fn upstream_json(&self) -> serde_json::Value {
        self.upstream_request
            .as_ref()
            .and_then(|(_, b)| serde_json::from_slice(b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Which phase the HTTP context is in (the host's view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Root,
    /// The root context's `on_tick`.
    Tick,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
}

/// One HTTP stream's host-side state.
#[derive(Default)]
pub(crate) struct Stream {
    pub req_headers: Vec<(String, Vec<u8>)>,
    pub req_body: Vec<u8>,
    pub req_headers_frozen: bool,
    pub resp_headers: Vec<(String, Vec<u8>)>,
    pub resp_body: Vec<u8>,
    pub resp_headers_frozen: bool,
    pub local: Option<(u32, HeaderMap, Vec<u8>)>,
    pub route: RouteInfo,
    pub status: u32,
}

/// Per-VM host state (`Store` data).
pub(crate) struct State {
    pub mode: Mode,
    pub filter: String,
    pub shared: Arc<Shared>,
    pub config: Vec<u8>,
    pub memory: Option<Memory>,
    pub phase: Phase,
    /// Fuel left at the last hostcall or callback entry (fuel counting only):
    /// each hostcall record then says what tollgate ran since the previous one.
    pub fuel_mark: u64,
    pub stream: Stream,
    pub logs: Vec<(i32, String)>,
    pub violations: Vec<String>,
    pub properties: BTreeMap<String, Vec<u8>>,
    pub calls: Vec<String>,
    pub http_calls: Vec<HttpCall>,
    /// proxy-wasm hostcalls of the current exchange (see [`Outcome::hostcalls`]).
    pub hostcalls: Vec<String>,
    /// Last call token handed out (tokens are unique for the VM's life).
    pub last_token: u32,
    /// What every HTTP call is answered with; `None`: calls stay unanswered.
    pub call_answer: Option<CallAnswer>,
    /// Answers for the next calls, in order, before `call_answer`.
    pub call_answers: std::collections::VecDeque<CallAnswer>,
    /// The answer being delivered (`on_http_call_response`): its headers and body.
    pub answering: Option<(HeaderMap, Vec<u8>)>,
    /// `proxy_continue_stream(request)` was called.
    pub request_resumed: bool,
    pub metric_names: Vec<String>,
    pub tick_ms: u32,
    pub now_ns: u64,
    pub log_level: i32,
    pub queue_ids: HashMap<String, u32>,
    pub client_body_buffer: usize,
    pub kong_partial_body: bool,
}

/// One VM: a wasm instance with its root context configured (Envoy: one per worker).
pub struct Vm {
    store: Store<State>,
    instance: Instance,
    next_ctx: i32,
    /// Startup logs and whatever `on_configure` said.
    pub configured: bool,
}

const ROOT: i32 = 1;

impl Vm {
    /// Wasm operators run by this VM so far (`None` unless [`fuel_counting`]):
    /// the difference across an exchange prices tollgate's own code for it.
    pub fn fuel_used(&self) -> Option<u64> {
        fuel_counting()
            .then(|| self.store.get_fuel().ok())
            .flatten()
            .map(|left| u64::MAX - left)
    }

    /// Instantiate `plugin`, start it and configure it with `config` (JSON text).
    pub fn new(plugin: &Plugin, mode: Mode, shared: Arc<Shared>, config: &str) -> Vm {
        let state = State {
            mode,
            filter: plugin.name.clone(),
            shared,
            config: config.as_bytes().to_vec(),
            memory: None,
            phase: Phase::Root,
            stream: Stream::default(),
            logs: Vec::new(),
            violations: Vec::new(),
            properties: BTreeMap::new(),
            calls: Vec::new(),
            http_calls: Vec::new(),
            hostcalls: Vec::new(),
            last_token: 0,
            call_answer: None,
            call_answers: std::collections::VecDeque::new(),
            answering: None,
            request_resumed: false,
            metric_names: Vec::new(),
            tick_ms: 0,
            now_ns: 1_700_000_000_000_000_000,
            log_level: 2,
            queue_ids: HashMap::new(),
            client_body_buffer: 1 << 20,
            kong_partial_body: false,
            fuel_mark: 0,
        };
        let mut store = Store::new(&plugin.engine, state);
        if fuel_counting() {
            let _ = store.set_fuel(u64::MAX);
        }
        let mut linker: Linker<State> = Linker::new(&plugin.engine);
        for import in plugin.module.imports() {
            let Some(ty) = import.ty().func().cloned() else {
                continue;
            };
            let module = import.module().to_string();
            let name = import.name().to_string();
            let (m2, n2) = (module.clone(), name.clone());
            let defined = linker.func_new(&module, &name, ty, move |caller, args, results| {
                let r = calls::dispatch(caller, &m2, &n2, args)?;
                if let Some(slot) = results.first_mut() {
                    *slot = Val::I32(r);
                }
                Ok(())
            });
            if let Err(e) = defined {
                panic!("cannot define import {module}.{name}: {e}");
            }
        }
        let instance = match linker.instantiate(&mut store, &plugin.module) {
            Ok(i) => i,
            Err(e) => panic!("instantiate: {e:?}"),
        };
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        let started = std::time::Instant::now();
        let mut vm = Vm {
            store,
            instance,
            next_ctx: ROOT + 1,
            configured: false,
        };
        if let Ok(init) = vm
            .instance
            .get_typed_func::<(), ()>(&mut vm.store, "_initialize")
        {
            if let Err(e) = init.call(&mut vm.store, ()) {
                panic!("_initialize: {e:?}");
            }
        }
        vm.call2("proxy_on_context_create", ROOT, 0);
        let _ = vm.call_ret2("proxy_on_vm_start", ROOT, 0);
        let len = vm.store.data().config.len() as i32;
        vm.configured = vm.call_ret2("proxy_on_configure", ROOT, len) == Ok(1);
        if std::env::var_os("TESTHOST_TIMING").is_some() {
            eprintln!("testhost: VM started in {:?}", started.elapsed());
        }
        vm
    }

    /// Set the Kong `client_body_buffer_size` (bodies above it are unreadable).
    pub fn set_client_body_buffer(&mut self, bytes: usize) {
        self.store.data_mut().client_body_buffer = bytes;
    }

    /// Kong: deliver the request body in `Request::chunks` parts with
    /// `end_of_stream` false on all but the last. Not what ngx_wasm_module
    /// documents (it reads the whole body first); a robustness probe.
    pub fn set_kong_partial_body(&mut self, on: bool) {
        self.store.data_mut().kong_partial_body = on;
    }

    /// Set the log level `proxy_get_log_level` reports on Envoy (0 trace … 5 critical).
    pub fn set_log_level(&mut self, level: i32) {
        self.store.data_mut().log_level = level;
    }

    /// Advance the host clock.
    pub fn advance_ms(&mut self, ms: u64) {
        self.store.data_mut().now_ns += ms * 1_000_000;
    }

    /// Run the root context's `on_tick` once (if the filter asked for ticks). HTTP
    /// calls it makes are kept for [`Vm::take_http_calls`] and, with an answer set,
    /// answered to the root context.
    pub fn tick(&mut self) -> Result<(), String> {
        if self.store.data().tick_ms == 0 {
            return Ok(());
        }
        let before = self.store.data().last_token;
        self.store.data_mut().phase = Phase::Tick;
        self.call1("proxy_on_tick", ROOT)?;
        self.answer_calls_since(ROOT, before)?;
        self.store.data_mut().phase = Phase::Root;
        Ok(())
    }

    /// Answer every HTTP call from now on with `answer` (`None`: leave them
    /// unanswered, as a service that never replies within the test).
    pub fn answer_http_calls(&mut self, answer: Option<CallAnswer>) {
        self.store.data_mut().call_answer = answer;
    }

    /// Answer the next calls with these, in order (then as [`Vm::answer_http_calls`]
    /// says). Calls made while an answer is delivered are answered too.
    pub fn queue_http_call_answers(&mut self, answers: Vec<CallAnswer>) {
        self.store.data_mut().call_answers.extend(answers);
    }

    /// HTTP calls made outside an exchange (on the tick) since the last take.
    pub fn take_http_calls(&mut self) -> Vec<HttpCall> {
        std::mem::take(&mut self.store.data_mut().http_calls)
    }

    /// The tick period the filter asked for (0: none).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_ms
    }

    /// Deliver the configured answer to context `ctx` for each HTTP call made after
    /// token `after`. Returns how many were answered.
    fn answer_calls_since(&mut self, ctx: i32, after: u32) -> Result<usize, String> {
        let mode = self.store.data().mode;
        let mut answered = 0;
        let mut seen = after;
        let mut last_failed = None;
        // Calls made while an answer is delivered (a fallback) are answered in turn;
        // bounded, so a filter calling forever fails the test instead of hanging it.
        for _round in 0..16 {
            let tokens: Vec<u32> = self
                .store
                .data()
                .http_calls
                .iter()
                .filter(|c| c.token > seen)
                .map(|c| c.token)
                .collect();
            let Some(&max) = tokens.iter().max() else {
                break;
            };
            seen = max;
            for &token in &tokens {
                let answer = {
                    let d = self.store.data_mut();
                    d.call_answers.pop_front().or_else(|| d.call_answer.clone())
                };
                let Some(answer) = answer else { continue };
                answered += 1;
                if answer.fail && mode == Mode::Kong {
                    last_failed = Some(token);
                    continue;
                }
                let headers = answer.header_map();
                let n = headers.len() as i32;
                self.store.data_mut().answering = Some((headers, answer.body.clone()));
                let f =
                    self.func::<(i32, i32, i32, i32, i32), ()>("proxy_on_http_call_response")?;
                let r = f
                    .call(
                        &mut self.store,
                        (ctx, token as i32, n, answer.body.len() as i32, 0),
                    )
                    .map_err(|e| format!("proxy_on_http_call_response trapped: {e:?}"));
                self.store.data_mut().answering = None;
                r?;
            }
        }
        let now = self.store.data().http_calls.iter().map(|c| c.token).max();
        if last_failed.is_some() && last_failed == now && ctx != ROOT {
            // ngx_wasm_module: the last call failed and none is pending: the request
            // resumes as it stands (no callback ran).
            self.store.data_mut().request_resumed = true;
        }
        Ok(answered)
    }

    /// Log lines so far (level, message).
    pub fn logs(&self) -> &[(i32, String)] {
        &self.store.data().logs
    }

    fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> Result<TypedFunc<P, R>, String> {
        self.instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| format!("{name}: {e}"))
    }

    /// Fuel counting: remember where a callback starts, so the first hostcall's
    /// record counts from there.
    fn mark_fuel(&mut self) {
        if let Ok(left) = self.store.get_fuel() {
            self.store.data_mut().fuel_mark = left;
        }
    }

    /// Fuel counting: record what ran after the callback's last hostcall.
    fn fuel_return(&mut self, name: &str) {
        let Ok(left) = self.store.get_fuel() else {
            return;
        };
        let st = self.store.data_mut();
        if fuel_counting() && !matches!(st.phase, Phase::Root | Phase::Tick) {
            let ran = st.fuel_mark.saturating_sub(left);
            st.hostcalls
                .push(format!("{:?}:[+{ran}]:(return from {name})", st.phase));
        }
    }

    fn call1(&mut self, name: &str, a: i32) -> Result<(), String> {
        self.mark_fuel();
        let f = self.func::<i32, ()>(name)?;
        let r = f
            .call(&mut self.store, a)
            .map_err(|e| format!("{name} trapped: {e:?}"));
        self.fuel_return(name);
        r
    }

    fn call2(&mut self, name: &str, a: i32, b: i32) {
        self.mark_fuel();
        if let Ok(f) = self.func::<(i32, i32), ()>(name) {
            if let Err(e) = f.call(&mut self.store, (a, b)) {
                panic!("{name} trapped: {e:?}");
            }
            self.fuel_return(name);
        }
    }

    fn call_ret2(&mut self, name: &str, a: i32, b: i32) -> Result<i32, String> {
        self.mark_fuel();
        let f = self.func::<(i32, i32), i32>(name)?;
        let r = f
            .call(&mut self.store, (a, b))
            .map_err(|e| format!("{name} trapped: {e:?}"));
        self.fuel_return(name);
        r
    }

    fn call_ret3(&mut self, name: &str, a: i32, b: i32, c: i32) -> Result<i32, String> {
        self.mark_fuel();
        let f = self.func::<(i32, i32, i32), i32>(name)?;
        let r = f
            .call(&mut self.store, (a, b, c))
            .map_err(|e| format!("{name} trapped: {e:?}"));
        self.fuel_return(name);
        r
    }

    fn violation(&mut self, what: String) {
        self.store.data_mut().violations.push(what);
    }

    fn local_reply_sent(&self) -> bool {
        self.store.data().stream.local.is_some()
    }

    /// Drive one request/response exchange through a new HTTP context.
    /// A trap fails the exchange the way the host would (500, recorded).
    pub fn exchange(&mut self, route: RouteInfo, req: &Request, resp: &Response) -> Outcome {
        let mode = self.store.data().mode;
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        {
            let d = self.store.data_mut();
            d.stream = Stream {
                req_headers: req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
                    .collect(),
                route,
                ..Stream::default()
            };
            d.violations.clear();
            d.properties.clear();
            d.calls.clear();
            d.hostcalls.clear();
            d.request_resumed = false;
        }
        let first_call = self.store.data().http_calls.len();
        self.call2("proxy_on_context_create", ctx, ROOT);
        let result = self.run(ctx, mode, req, resp);
        let mut out = Outcome::default();
        match result {
            Ok(o) => out = o,
            Err(e) => {
                out.status = 500;
                out.violations.push(e);
            }
        }
        self.store.data_mut().phase = Phase::Log;
        if let Err(e) = self.call1("proxy_on_log", ctx) {
            out.violations.push(e);
        }
        if let Err(e) = self.func::<i32, i32>("proxy_on_done").and_then(|f| {
            f.call(&mut self.store, ctx)
                .map_err(|e| format!("proxy_on_done trapped: {e:?}"))
        }) {
            out.violations.push(e);
        }
        let _ = self.call1("proxy_on_delete", ctx);
        let d = self.store.data_mut();
        out.violations.append(&mut d.violations);
        out.properties = std::mem::take(&mut d.properties);
        out.calls = std::mem::take(&mut d.calls);
        out.hostcalls = std::mem::take(&mut d.hostcalls);
        out.http_calls = d.http_calls.split_off(first_call.min(d.http_calls.len()));
        out
    }

    /// The outcome of a local reply. Kong runs the filter's response callbacks on
    /// it (ngx_wasm_module t/03-proxy_wasm/hfuncs/102-proxy_send_local_response.t:
    /// "should still run all response phases"), so tollgate sees its own reply
    /// there; Envoy's encoder path is not emulated.
    fn local_outcome(&mut self, ctx: i32) -> Result<Outcome, String> {
        if self.store.data().mode != Mode::Kong {
            return Ok(self.take_local());
        }
        let mut out = self.take_local();
        {
            let d = self.store.data_mut();
            d.phase = Phase::ResponseHeaders;
            d.stream.status = out.status;
            d.stream.resp_headers_frozen = false;
            d.stream.resp_headers =
                std::iter::once((":status".to_string(), out.status.to_string().into_bytes()))
                    .chain(
                        out.headers
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
                    )
                    .collect();
        }
        let n = self.store.data().stream.resp_headers.len() as i32;
        let a = self.call_ret3("proxy_on_response_headers", ctx, n, 0)?;
        if a == action::PAUSE {
            return Err("Kong: paused in on_response_headers of a local reply (500)".into());
        }
        {
            let d = self.store.data_mut();
            d.stream.resp_headers_frozen = true;
            d.phase = Phase::ResponseBody;
            d.stream.resp_body = std::mem::take(&mut out.body);
        }
        let len = self.store.data().stream.resp_body.len() as i32;
        let a = self.call_ret3("proxy_on_response_body", ctx, len, 1)?;
        if a == action::PAUSE {
            self.violation("Kong: paused in on_response_body of a local reply".into());
        }
        let d = self.store.data_mut();
        out.body = std::mem::take(&mut d.stream.resp_body);
        out.headers = d
            .stream
            .resp_headers
            .iter()
            .filter(|(k, _)| k != ":status")
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        Ok(out)
    }

    fn take_local(&mut self) -> Outcome {
        let (status, headers, body) = self
            .store
            .data_mut()
            .stream
            .local
            .take()
            .unwrap_or_default();
        Outcome {
            status,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect(),
            body,
            local_reply: true,
            ..Outcome::default()
        }
    }

    fn run(
        &mut self,
        ctx: i32,
        mode: Mode,
        req: &Request,
        resp: &Response,
    ) -> Result<Outcome, String> {
        // ---- request headers
        self.store.data_mut().phase = Phase::RequestHeaders;
        let n = self.store.data().stream.req_headers.len() as i32;
        let has_body = !req.body.is_empty();
        // Kong: `end_of_stream` is always false here (ngx_http_proxy_wasm.c: `0, // TODO: eof`).
        let eos = match mode {
            Mode::Envoy => i32::from(!has_body),
            Mode::Kong => 0,
        };
        let a = self.call_ret3("proxy_on_request_headers", ctx, n, eos)?;
        if self.local_reply_sent() {
            return self.local_outcome(ctx);
        }
        if a == action::PAUSE {
            match mode {
                // allow_on_headers_stop_iteration: headers held, body still delivered.
                Mode::Envoy if has_body => {}
                Mode::Envoy => {
                    return Err("Envoy: paused in on_request_headers of a headers-only request; nothing resumes it".into())
                }
                // ngx_wasm_module: the request waits for a resume (dispatch response,
                // proxy_continue_request) that never comes (t/: timeout_expected).
                Mode::Kong => {
                    return Err("Kong: paused in on_request_headers with nothing to resume it (request hangs)".into())
                }
            }
        } else {
            self.store.data_mut().stream.req_headers_frozen = mode == Mode::Envoy;
        }

        // ---- request body
        let mut forwarded_body = Vec::new();
        if has_body {
            self.store.data_mut().phase = Phase::RequestBody;
            match mode {
                Mode::Envoy => {
                    let chunks = split(&req.body, req.chunks.max(1));
                    let last = chunks.len() - 1;
                    for (i, chunk) in chunks.iter().enumerate() {
                        self.store
                            .data_mut()
                            .stream
                            .req_body
                            .extend_from_slice(chunk);
                        let size = self.store.data().stream.req_body.len() as i32;
                        let before = self.store.data().last_token;
                        let mut a = self.call_ret3(
                            "proxy_on_request_body",
                            ctx,
                            size,
                            i32::from(i == last),
                        )?;
                        if self.local_reply_sent() {
                            return self.local_outcome(ctx);
                        }
                        if a == action::PAUSE && i == last {
                            // Held for a call's answer: deliver it; the filter resumes
                            // (proxy_continue_stream) or answers itself.
                            if self.answer_calls_since(ctx, before)? > 0 {
                                if self.local_reply_sent() {
                                    return self.local_outcome(ctx);
                                }
                                if self.store.data().request_resumed {
                                    a = action::CONTINUE;
                                }
                            }
                        }
                        if a == action::CONTINUE {
                            // Buffered data (maybe rewritten) goes upstream; headers are sent now.
                            let d = self.store.data_mut();
                            forwarded_body.append(&mut d.stream.req_body);
                            d.stream.req_headers_frozen = true;
                        } else if i == last {
                            return Err(
                                "Envoy: paused on the last request body chunk; nothing resumes it"
                                    .into(),
                            );
                        }
                    }
                }
                Mode::Kong => {
                    // Read whole by nginx, one callback with eof = 1.
                    let parts = if self.store.data().kong_partial_body {
                        split(&req.body, req.chunks.max(1))
                    } else {
                        vec![&req.body[..]]
                    };
                    let last = parts.len() - 1;
                    for (i, part) in parts.iter().enumerate() {
                        self.store.data_mut().stream.req_body = part.to_vec();
                        let eos = i32::from(i == last);
                        let before = self.store.data().last_token;
                        let mut a =
                            self.call_ret3("proxy_on_request_body", ctx, part.len() as i32, eos)?;
                        if self.local_reply_sent() {
                            return self.local_outcome(ctx);
                        }
                        // A pause with a dispatch pending waits for its answer; the
                        // filter then resumes the request or answers itself
                        // (ngx_http_proxy_wasm_dispatch.c: "resume main handled by
                        // wasm callback").
                        if a == action::PAUSE && self.answer_calls_since(ctx, before)? > 0 {
                            if self.local_reply_sent() {
                                return self.local_outcome(ctx);
                            }
                            if self.store.data().request_resumed {
                                a = action::CONTINUE;
                            }
                        }
                        if a == action::PAUSE {
                            return Err("Kong: paused in on_request_body with nothing to resume it (request hangs)".into());
                        }
                        let d = self.store.data_mut();
                        forwarded_body.append(&mut d.stream.req_body);
                        d.stream.req_headers_frozen = true;
                    }
                }
            }
        }
        self.store.data_mut().stream.req_headers_frozen = true;
        let upstream_headers = self
            .store
            .data()
            .stream
            .req_headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let mut out = Outcome {
            upstream_request: Some((upstream_headers, forwarded_body)),
            ..Outcome::default()
        };

        // ---- response headers
        {
            let d = self.store.data_mut();
            d.phase = Phase::ResponseHeaders;
            d.stream.status = resp.status;
            d.stream.resp_headers =
                std::iter::once((":status".to_string(), resp.status.to_string().into_bytes()))
                    .chain(
                        resp.headers
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
                    )
                    .collect();
        }
        let n = self.store.data().stream.resp_headers.len() as i32;
        let has_body = resp.chunks.iter().any(|c| !c.is_empty());
        let eos = match mode {
            Mode::Envoy => i32::from(!has_body),
            Mode::Kong => 0,
        };
        let a = self.call_ret3("proxy_on_response_headers", ctx, n, eos)?;
        let mut headers_held = false;
        if a == action::PAUSE {
            match mode {
                Mode::Envoy => headers_held = true,
                Mode::Kong => {
                    // t/03-proxy_wasm: "cannot pause in \"header_filter\" phase" → 500.
                    return Err("Kong: paused in on_response_headers (not supported: 500)".into());
                }
            }
        }
        if !headers_held {
            self.store.data_mut().stream.resp_headers_frozen = true;
        }
        let mut client_headers: Option<Vec<(String, Vec<u8>)>> =
            (!headers_held).then(|| self.store.data().stream.resp_headers.clone());

        // ---- response body
        let mut client_body = Vec::new();
        if has_body {
            self.store.data_mut().phase = Phase::ResponseBody;
            let last = resp.chunks.len() - 1;
            for (i, chunk) in resp.chunks.iter().enumerate() {
                self.store
                    .data_mut()
                    .stream
                    .resp_body
                    .extend_from_slice(chunk);
                let size = self.store.data().stream.resp_body.len() as i32;
                let eos = i == last;
                let a = self.call_ret3("proxy_on_response_body", ctx, size, i32::from(eos))?;
                if a == action::PAUSE && mode == Mode::Kong {
                    self.violation(format!("Kong: paused in on_response_body (chunk {i}); pausing is only allowed in request phases"));
                }
                if a == action::CONTINUE || mode == Mode::Kong {
                    let d = self.store.data_mut();
                    client_body.append(&mut d.stream.resp_body);
                    if client_headers.is_none() {
                        d.stream.resp_headers_frozen = true;
                        client_headers = Some(d.stream.resp_headers.clone());
                    }
                } else if eos {
                    return Err(
                        "Envoy: paused on the last response chunk; nothing resumes it".into(),
                    );
                }
            }
        }
        let headers =
            client_headers.unwrap_or_else(|| self.store.data().stream.resp_headers.clone());
        out.status = resp.status;
        out.headers = headers
            .into_iter()
            .filter(|(k, _)| k != ":status")
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        out.body = client_body;
        Ok(out)
    }
}

fn split(b: &[u8], n: usize) -> Vec<&[u8]> {
    let size = b.len().div_ceil(n).max(1);
    let v: Vec<&[u8]> = b.chunks(size).collect();
    if v.is_empty() {
        vec![b]
    } else {
        v
    }
}

/// A gateway instance with `workers` VMs sharing one [`Shared`].
pub struct Gateway {
    /// Emulated host.
    pub mode: Mode,
    /// Shared data / metrics.
    pub shared: Arc<Shared>,
    /// VMs (workers).
    pub vms: Vec<Vm>,
}

impl Gateway {
    /// Start `workers` VMs of tollgate with `config`.
    pub fn tollgate(mode: Mode, config: &str, workers: usize) -> Gateway {
        let shared = Arc::new(Shared::default());
        let plugin = Plugin::tollgate();
        let vms = (0..workers.max(1))
            .map(|_| Vm::new(plugin, mode, shared.clone(), config))
            .collect();
        Gateway { mode, shared, vms }
    }

    /// Route identity as this host exposes it for a route called `name`.
    pub fn route(&self, name: &str) -> RouteInfo {
        RouteInfo {
            route: Some(name.to_string()),
            service: match self.mode {
                Mode::Envoy => None,
                Mode::Kong => Some(format!("{name}-service")),
            },
        }
    }

    /// One exchange on worker `w` with explicit route identity (e.g. a Kong
    /// route with no name, only a service name).
    pub fn send_as(
        &mut self,
        w: usize,
        route: RouteInfo,
        req: &Request,
        resp: &Response,
    ) -> Outcome {
        let n = self.vms.len();
        self.vms[w % n].exchange(route, req, resp)
    }

    /// One exchange on worker `w`.
    pub fn send(&mut self, w: usize, route: &str, req: &Request, resp: &Response) -> Outcome {
        let route = self.route(route);
        let n = self.vms.len();
        self.vms[w % n].exchange(route, req, resp)
    }

    /// Run every VM's timer once (tollgate writes batched metric counts and held
    /// refunds on its tick).
    pub fn tick(&mut self) {
        for (i, vm) in self.vms.iter_mut().enumerate() {
            if let Err(e) = vm.tick() {
                panic!("worker {i}: tick failed: {e}");
            }
        }
    }

    /// A metric's value (name as the filter defined it).
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.shared
            .metric(self.mode, &Plugin::tollgate().name, name)
    }
}
