#!/usr/bin/env python3
"""Soak: a long, bounded run of mixed traffic through real Envoy + tollgate on
loopback, checking that nothing is lost, corrupted or leaked.

    make soak                                   # 200k requests (the full run)
    .venv/bin/python benches/soak.py --requests 20000 --max-seconds 60

Traffic (round-robin over the templates below, from several client processes
on keep-alive connections): OpenAI chat (plain, streamed with and without
`include_usage`, long prompt), legacy completions, embeddings, Responses,
Anthropic messages (plain and streamed), an unmetered route, headers-only GETs,
a route whose per-consumer token limit is kept at its edge (so a steady
share is refused with 429s), a route with PII redaction whose requests carry
an e-mail address (the mock echoes what it received, so the client's answer shows
the placeholder the provider got), and a route that translates OpenAI chat to
Anthropic Messages and back (plain and streamed; the reference is the first answer,
checked for shape and usage, and every later one must equal it).

Checks and figures (printed, and written as JSON with --json):
- requests, throughput, p50/p99 latency;
- outcomes by cause: ok, limited (tollgate 429 in the OpenAI dialect), upstream
  errors (answered by the mock), and errors caused by Envoy/tollgate (a 5xx not
  from the mock, a reset, a timeout): must be zero;
- bodies: every 200 is compared with the mock's answer to the same request sent
  directly (tollgate must change nothing the client sees: streams included,
  where tollgate injects and strips `include_usage`; on the PII route the
  reference is the mock's answer to the request with the address already replaced
  by its placeholder), after blanking the fields
  the mock makes fresh per call (ids, timestamps, stream padding): mismatches
  must be zero;
- Envoy RSS and the wasm VMs' linear memory (the V8 wasm memory mappings in
  /proc/PID/smaps) at each quarter; growth from the 2nd to the last quarter
  must stay under 2%.
Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import re
import sys
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

def config(limit_tokens: int) -> dict:
    return {
        "defaults": {"provider": "openai", "metering": {"tokenize_byte_budget": 262144}},
        "routes": {
            "anthropic": {"provider": "anthropic"},
            "limited": {"limits": {
                "consumer": {"header": "x-consumer-id"},
                "reserve_max_tokens_default": 64,
                "rules": [{"name": "edge", "key": ["consumer"], "window": "1m", "tokens": limit_tokens}],
            }},
            "pii": {"pii": {"enabled": True, "detectors": {"email": "redact"}}},
            # OpenAI clients, Anthropic behind: tollgate translates both ways.
            "translate": {"provider": {"kind": "anthropic", "api_key": {"inline": "sk-ant-soak"},
                                       "model_map": {"gpt-4o": "claude-sonnet-4-5"}}},
        },
    }


def add_limited_route(doc):
    """/limited/v1/... and /pii/v1/... -> /v1/... on routes called `limited` (its
    own limits) and `pii` (PII redaction)."""
    vh = harness.hcm(doc)["route_config"]["virtual_hosts"][0]
    for name in ("limited", "pii", "translate"):
        vh["routes"].insert(0, {"name": name, "match": {"prefix": f"/{name}/"},
                                "route": {"cluster": "mock_llm", "prefix_rewrite": "/", "timeout": "60s"}})


def chat(content, **kw):
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **kw}


LONG = " ".join(f"Paragraph {i}: the soak test sends a longer prompt so tokenizing is real work." for i in range(40))

PII_EMAIL = "jane.doe@example.com"
# What the provider must receive instead on the `pii` route (first e-mail of the request).
PII_PLACEHOLDER = "<EMAIL_1>"

# (name, method, path, body or None, extra headers, path used for the direct mock call)
TEMPLATES = [
    ("chat", "POST", "/v1/chat/completions", chat("Hello there, soak."), {}),
    ("chat-stream", "POST", "/v1/chat/completions", chat("Stream to me.", stream=True), {}),
    ("chat-stream-usage", "POST", "/v1/chat/completions",
     chat("Stream with usage.", stream=True, stream_options={"include_usage": True}), {}),
    ("chat-long", "POST", "/v1/chat/completions", chat(LONG, max_tokens=40), {"x-mock-reply-words": "40"}),
    ("completions", "POST", "/v1/completions",
     {"model": "gpt-3.5-turbo-instruct", "prompt": "Say something", "max_tokens": 16}, {}),
    ("embeddings", "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "embed me"}, {}),
    ("responses", "POST", "/v1/responses", {"model": "gpt-4o", "input": "Respond, please."}, {}),
    ("anthropic", "POST", "/v1/messages",
     {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi Claude"}]}, {}),
    ("anthropic-stream", "POST", "/v1/messages",
     {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
      "messages": [{"role": "user", "content": "Stream, Claude"}]}, {}),
    ("unmetered", "POST", "/unmetered/v1/chat/completions", chat("Not metered."), {}),
    ("models", "GET", "/v1/models", None, {}),
    ("limited", "POST", "/limited/v1/chat/completions", chat("Near the edge.", max_tokens=32),
     {"x-mock-reply-words": "30"}),
    ("pii", "POST", "/pii/v1/chat/completions", chat(f"Please mail {PII_EMAIL} the report."), {"x-mock-echo": "1"}),
    ("translate", "POST", "/translate/v1/chat/completions", chat("Translate me, Claude."), {}),
    ("translate-stream", "POST", "/translate/v1/chat/completions",
     chat("Stream me, Claude.", stream=True, stream_options={"include_usage": True}), {}),
]
# Answers tollgate rewrites (another provider's wire format): the reference is the
# first answer through Envoy, checked for shape and usage before the run.
TRANSLATED = ("translate", "translate-stream")
CONSUMERS = 4

_VOLATILE = re.compile(rb'"(id|created|created_at|obfuscation|system_fingerprint)":("[^"]*"|\d+)')


def stable(body: bytes) -> bytes:
    return _VOLATILE.sub(rb'"\1":_', body)


def direct_path(path: str) -> str:
    for prefix in ("/unmetered", "/limited", "/pii", "/translate"):
        if path.startswith(prefix + "/"):
            return path[len(prefix):]
    return path


def fetch(conn: http.client.HTTPConnection, method, path, body, headers):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def encode(t):
    name, method, path, body, extra = t
    raw = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json", **extra} if raw is not None else dict(extra)
    return name, method, path, raw, headers


def translated_reference(port: int, name: str) -> bytes:
    """The first translated answer through Envoy, after checking it is a well-formed
    OpenAI answer whose usage adds up; later answers must equal it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    _, method, path, raw, headers = encode(next(t for t in TEMPLATES if t[0] == name))
    status, _, data = fetch(conn, method, path, raw, headers)
    conn.close()
    if status != 200:
        raise SystemExit(f"translated template {name}: {status} {data[:200]!r}")
    if name == "translate":
        doc = json.loads(data)
        usage = doc["usage"]
        ok = (doc["object"] == "chat.completion" and doc["choices"][0]["message"]["content"]
              and usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"])
    else:
        events = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
        chunks = [json.loads(e) for e in events[:-1]]
        usage = chunks[-1].get("usage") or {}
        ok = (events[-1] == "[DONE]" and all(c["object"] == "chat.completion.chunk" for c in chunks)
              and usage.get("prompt_tokens", 0) > 0
              and usage.get("total_tokens") == usage["prompt_tokens"] + usage["completion_tokens"])
    if not ok:
        raise SystemExit(f"translated template {name}: malformed answer {data[:300]!r}")
    return stable(data)


def expected_bodies(mock_port: int, envoy_port: int) -> dict[str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", mock_port, timeout=30)
    out = {}
    for t in TEMPLATES:
        name, method, path, raw, headers = encode(t)
        if name in TRANSLATED:
            out[name] = translated_reference(envoy_port, name)
            continue
        if name == "pii":
            # The reference: what the mock echoes when it gets the placeholder.
            raw = raw.replace(PII_EMAIL.encode(), PII_PLACEHOLDER.encode())
            assert PII_EMAIL.encode() not in raw
        status, _, data = fetch(conn, method, direct_path(path), raw, headers)
        if status != 200:
            raise SystemExit(f"mock answered {status} to template {name}: {data[:200]!r}")
        out[name] = stable(data)
    conn.close()
    return out


def worker(wid, port, start, count, expected, progress, result_q):
    """Send `count` requests (template index = global request number mod len)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat = array("f")
    outcomes: dict[str, int] = {}
    by_template: dict[str, int] = {}
    mismatches: list[str] = []
    encoded = [encode(t) for t in TEMPLATES]
    for i in range(start, start + count):
        name, method, path, raw, headers = encoded[i % len(encoded)]
        if name == "limited":
            headers = {**headers, "x-consumer-id": f"edge-{(i // len(encoded)) % CONSUMERS}"}
        t0 = time.perf_counter()
        try:
            status, h, data = fetch(conn, method, path, raw, headers)
        except (OSError, http.client.HTTPException) as e:
            outcomes[f"error: {type(e).__name__} (envoy/tollgate)"] = outcomes.get(
                f"error: {type(e).__name__} (envoy/tollgate)", 0) + 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        finally:
            lat.append((time.perf_counter() - t0) * 1000.0)
            with progress.get_lock():
                progress.value += 1
        by_template[name] = by_template.get(name, 0) + 1
        if status == 200:
            if stable(data) == expected[name]:
                cause = "ok"
            else:
                cause = "ok but body differs"
                if len(mismatches) < 3:
                    mismatches.append(f"{name}: got {data[:300]!r}")
        elif status == 429 and name == "limited":
            try:
                err = json.loads(data)["error"]
                cause = "limited (tollgate 429)" if err.get("code") == "rate_limit_exceeded" else "429 malformed"
            except (ValueError, KeyError, TypeError):
                cause = "429 malformed"
        elif status >= 500:
            upstream = h.get("x-request-id", "").startswith("req_")  # the mock's own ids
            cause = f"{status} from upstream" if upstream else f"{status} (envoy/tollgate)"
        else:
            cause = f"{status} unexpected"
        outcomes[cause] = outcomes.get(cause, 0) + 1
    conn.close()
    result_q.put({"wid": wid, "lat": lat.tobytes(), "outcomes": outcomes, "by_template": by_template,
                  "mismatches": mismatches})


def memory(pid: int) -> dict[str, int]:
    """Envoy's RSS and the wasm VMs' linear memory (KiB). V8 reserves 8 GiB per
    wasm memory and makes the used part read-write, so a VM's memory is the rw
    mapping that ends where a >1 GiB inaccessible reservation begins."""
    maps = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ", line)
            if m:
                cur = [int(m.group(1), 16), int(m.group(2), 16), m.group(3), 0]
                maps.append(cur)
            elif line.startswith("Rss:") and cur is not None:
                cur[3] = int(line.split()[1])
    wasm_size = wasm_rss = vms = 0
    for a, b in zip(maps, maps[1:]):
        if a[2].startswith("rw") and b[2] == "---p" and b[1] - b[0] > (1 << 30) and a[1] == b[0]:
            vms += 1
            wasm_size += (a[1] - a[0]) >> 10
            wasm_rss += a[3]
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"envoy_rss_kib": rss, "wasm_vms": vms, "wasm_memory_kib": wasm_size, "wasm_rss_kib": wasm_rss}


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def run(args) -> dict:
    mock = harness.MockProvider.start()
    env = None
    try:
        env = harness.Envoy.start(upstream_port=mock.port, config=config(args.limit_tokens), concurrency=args.concurrency,
                                  name="soak", mock=mock, mutate=add_limited_route)
        expected = expected_bodies(mock.port, env.port)
        base_vm = {k: v for k, v in env.admin_stats().items() if k.startswith("wasm.envoy.wasm.runtime.")}
        total = args.requests
        progress = mp.Value("q", 0)
        q: mp.Queue = mp.Queue()
        per = [total // args.clients + (1 if w < total % args.clients else 0) for w in range(args.clients)]
        starts = [sum(per[:w]) for w in range(args.clients)]
        procs = [mp.Process(target=worker, args=(w, env.port, starts[w], per[w], expected, progress, q), daemon=True)
                 for w in range(args.clients)]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        quarters = []
        next_q = 1
        deadline = t0 + args.max_seconds
        results = []
        while len(results) < len(procs):
            done = progress.value
            while next_q <= 4 and done >= total * next_q // 4:
                quarters.append({"quarter": next_q, "requests": done,
                                 "seconds": round(time.monotonic() - t0, 1), **memory(env.proc.pid)})
                next_q += 1
            try:
                results.append(q.get(timeout=0.2))
            except Exception:  # queue.Empty
                pass
            if time.monotonic() > deadline:
                for p in procs:
                    p.terminate()
                break
        elapsed = time.monotonic() - t0
        for p in procs:
            p.join(timeout=10)
        while next_q <= 4:  # stopped early by --max-seconds: record where it got to
            quarters.append({"quarter": next_q, "requests": progress.value,
                             "seconds": round(time.monotonic() - t0, 1), **memory(env.proc.pid)})
            next_q += 1
        lat = array("f")
        outcomes: dict[str, int] = {}
        by_template: dict[str, int] = {}
        mismatches: list[str] = []
        for r in results:
            lat.frombytes(r["lat"])
            for k, v in r["outcomes"].items():
                outcomes[k] = outcomes.get(k, 0) + v
            for k, v in r["by_template"].items():
                by_template[k] = by_template.get(k, 0) + v
            mismatches += r["mismatches"]
        vals = sorted(lat)
        vm_now = {k: v for k, v in env.admin_stats().items() if k.startswith("wasm.envoy.wasm.runtime.")}
        log = env.logs()
        q2, q4 = quarters[1], quarters[3]

        def growth(key):
            return (q4[key] - q2[key]) / q2[key] * 100.0 if q2[key] else 0.0

        summary = {
            "requests": len(vals),
            "planned": total,
            "finished": len(results) == len(procs),
            "seconds": round(elapsed, 1),
            "rps": round(len(vals) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(percentile(vals, 50), 2),
            "p99_ms": round(percentile(vals, 99), 2),
            "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
            "by_template": by_template,
            "mismatch_examples": mismatches,
            "quarters": quarters,
            "envoy_rss_growth_q2_q4_pct": round(growth("envoy_rss_kib"), 2),
            "wasm_memory_growth_q2_q4_pct": round(growth("wasm_memory_kib"), 2),
            "wasm_vm_stats_before": base_vm,
            "wasm_vm_stats_after": vm_now,
            "panics_in_log": log.count("panicked at"),
        }
        tollgate_errors = sum(v for k, v in outcomes.items() if "envoy/tollgate" in k or "malformed" in k)
        checks = {
            "all requests done": summary["finished"] and len(vals) == total,
            "zero errors caused by envoy/tollgate": tollgate_errors == 0,
            "bodies bit-identical (after blanking per-call ids)": outcomes.get("ok but body differs", 0) == 0,
            "limits at their edge refuse some and admit some":
                outcomes.get("limited (tollgate 429)", 0) > 0 and by_template.get("limited", 0)
                > outcomes.get("limited (tollgate 429)", 0),
            "no VM restart (wasm runtime stats unchanged)": base_vm == vm_now,
            "no panic in Envoy's log": summary["panics_in_log"] == 0,
            f"Envoy RSS growth q2->q4 < {args.max_growth}%": summary["envoy_rss_growth_q2_q4_pct"] < args.max_growth,
            f"wasm memory growth q2->q4 < {args.max_growth}%":
                summary["wasm_memory_growth_q2_q4_pct"] < args.max_growth,
        }
        summary["checks"] = checks
        summary["ok"] = all(checks.values())
        return summary
    finally:
        if env is not None:
            env.stop()
        mock.stop()


def show(s: dict) -> None:
    print(f"soak: {s['requests']} requests in {s['seconds']} s ({s['rps']} req/s), "
          f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms")
    print("outcomes:")
    for k, v in s["outcomes"].items():
        print(f"  {v:>9}  {k}")
    print("memory at each quarter (KiB):")
    print("  quarter  requests  seconds  envoy_rss  wasm_vms  wasm_memory  wasm_rss")
    for q in s["quarters"]:
        print(f"  {q['quarter']:>7}  {q['requests']:>8}  {q['seconds']:>7}  {q['envoy_rss_kib']:>9}  "
              f"{q['wasm_vms']:>8}  {q['wasm_memory_kib']:>11}  {q['wasm_rss_kib']:>8}")
    print(f"growth q2->q4: Envoy RSS {s['envoy_rss_growth_q2_q4_pct']}%, "
          f"wasm memory {s['wasm_memory_growth_q2_q4_pct']}%")
    for m in s["mismatch_examples"]:
        print("  mismatch:", m)
    for name, ok in s["checks"].items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=4, help="client processes (one keep-alive connection each)")
    ap.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads")
    ap.add_argument("--max-seconds", type=float, default=1800, help="hard stop for the whole run")
    ap.add_argument("--max-growth", type=float, default=2.0, help="allowed memory growth q2->q4, percent")
    ap.add_argument("--limit-tokens", type=int, default=36000,
                    help="per-consumer tokens a minute on the limited route (4 consumers share its traffic)")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)
    s = run(args)
    show(s)
    if args.json:
        args.json.write_text(json.dumps(s, indent=2))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
