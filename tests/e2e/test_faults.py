"""Fault matrix through real Envoy on loopback: broken upstreams, huge bodies,
odd clients and a bad config pushed under traffic. Each case must end in a
defined outcome (a pass-through, a dialect error or Envoy's own upstream error)
within a bounded time, and leave the wasm VM alive: no new VM instance, no
reload, no panic or trap in Envoy's log, and the next metered request works.

The upstream faults come from the mock's `x-mock-fault` header
(tools/mock-provider/src/faults.rs)."""
from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import requests
import yaml

import harness

ROUTE_TIMEOUT_S = 3
# The access-log fields the assertions read (tollgate writes only the listed keys).
FILTER_STATE = ["prompt_tokens", "completion_tokens", "total_tokens", "counted_prompt_tokens", "estimated",
                "usage_source"]
CONFIG = {"defaults": {"metering": {"tokenize_byte_budget": 65536, "filter_state": FILTER_STATE}}}


def short_timeouts(doc):
    for name in ("openai", "anthropic"):
        harness.route(doc, name)["route"]["timeout"] = f"{ROUTE_TIMEOUT_S}s"


@pytest.fixture(scope="module")
def env(envoy_with):
    e = envoy_with(CONFIG, name="faults", mutate=short_timeouts)
    e.vm_baseline = vm_state(e)
    return e


def chat(content="hello there", **extra):
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}


def vm_state(env) -> dict:
    s = env.admin_stats()
    return {k: v for k, v in s.items()
            if k.startswith("wasm.envoy.wasm.runtime.") or k.startswith("wasm.tollgate.vm_reload")}


def assert_vm_healthy(env):
    """The VM that served before the fault still serves: same instance counts, no
    reloads, no panic/trap logged, and a metered request succeeds."""
    r = requests.post(env.base_url + "/v1/chat/completions", json=chat("still alive?"), timeout=10)
    assert r.status_code == 200, r.text[:200]
    assert r.headers.get("x-llm-prompt-tokens"), "the next request is metered"
    now = vm_state(env)
    assert now == env.vm_baseline, f"wasm VM state changed: {env.vm_baseline} -> {now}"
    assert all(v == 0 for k, v in now.items() if "vm_reload" in k), now
    log = env.logs()
    for bad in ("panicked at", "Uncaught RuntimeError", "wasm trap", "Plugin configured to fail closed failed"):
        assert bad not in log, f"{bad!r} in Envoy's log"


def post(env, body, headers=None, stream=False, timeout=15, path="/v1/chat/completions"):
    return requests.post(env.base_url + path, json=body, headers=headers or {}, stream=stream, timeout=timeout)


# ------------------------------------------------------------------ upstream faults


@pytest.mark.parametrize("n", [1, 150, 400, 1200])
def test_upstream_reset_mid_stream(env, n):
    mark = env.mark()
    t0 = time.monotonic()
    got = b""
    try:
        r = post(env, chat(stream=True), headers={"x-mock-fault": f"reset-after-bytes={n}",
                                                  "x-mock-reply-words": "200"}, stream=True)
        status = r.status_code
        try:
            for piece in r.iter_content(None):
                got += piece
        except requests.exceptions.ChunkedEncodingError:
            pass  # the stream was cut: expected
    except requests.exceptions.ConnectionError:
        status = None
    assert time.monotonic() - t0 < 10
    # Reset before the response head: Envoy's 502. After it: a cut stream.
    assert status in (200, 502), status
    if status == 200:
        assert b"[DONE]" not in got, "the stream cannot be complete"
    (entry,) = env.new_entries(mark, 1)
    # Reported once, from what was counted.
    assert entry["counted_prompt_tokens"] not in ("-", "", None)
    assert_vm_healthy(env)


def test_upstream_reset_non_streaming(env):
    r = post(env, chat(), headers={"x-mock-fault": "reset-after-bytes=200"})
    assert r.status_code == 502  # Envoy's upstream-reset answer
    assert_vm_healthy(env)


def test_stalled_upstream_hits_the_route_timeout(env):
    t0 = time.monotonic()
    r = post(env, chat(), headers={"x-mock-fault": "stall"}, timeout=ROUTE_TIMEOUT_S + 10)
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text[:200]
    assert ROUTE_TIMEOUT_S - 0.5 < elapsed < ROUTE_TIMEOUT_S + 5
    assert_vm_healthy(env)


def test_stream_stalled_after_some_events_ends_at_the_route_timeout(env):
    t0 = time.monotonic()
    got = b""
    r = post(env, chat(stream=True), headers={"x-mock-fault": "stall-after-bytes=700"},
             stream=True, timeout=ROUTE_TIMEOUT_S + 10)
    assert r.status_code == 200
    try:
        for piece in r.iter_content(None):
            got += piece
    except requests.exceptions.RequestException:
        pass
    assert time.monotonic() - t0 < ROUTE_TIMEOUT_S + 5
    assert got.startswith(b"data: ") and b"[DONE]" not in got
    assert_vm_healthy(env)


def test_truncated_http_body_is_an_upstream_error(env):
    # Content-Length promises more than arrives: tollgate holds a small JSON answer
    # to add its headers, so the client gets Envoy's 502 rather than half a body.
    r = post(env, chat(), headers={"x-mock-fault": "truncate"})
    assert r.status_code == 502
    assert_vm_healthy(env)


def test_truncated_json_passes_through_and_is_counted(env):
    mark = env.mark()
    r = post(env, chat(), headers={"x-mock-fault": "truncate-json"})
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)  # what the upstream sent, untouched
    assert r.content.startswith(b'{"id":"chatcmpl-')
    (entry,) = env.new_entries(mark, 1)
    assert entry["usage_source"] == "counted"
    assert int(entry["prompt_tokens"]) == int(entry["counted_prompt_tokens"]) > 0
    assert_vm_healthy(env)


_VOLATILE = re.compile(rb'"(id|created|obfuscation)":("[^"]*"|\d+)')


def _stable(b: bytes) -> bytes:
    """The body without the mock's per-call fields (ids, timestamps, padding)."""
    return _VOLATILE.sub(rb'"\1":_', b)


@pytest.mark.parametrize("stream", [False, True])
def test_gzip_upstream_answer_passes_through_intact(env, stream):
    mark = env.mark()
    r = post(env, chat("gzip please", stream=stream), headers={"x-mock-fault": "gzip"}, stream=True)
    raw = r.raw.read(decode_content=False)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    # The same request as the provider got it (tollgate may have added
    # include_usage), sent to the mock directly: the gzip bytes must match.
    sent = env.mock.last()
    direct = requests.post(env.mock_url + "/v1/chat/completions", data=sent["body"].encode(), timeout=10,
                           headers={"content-type": "application/json", "x-mock-fault": "gzip"}, stream=True)
    direct_raw = direct.raw.read(decode_content=False)
    plain = gzip.decompress(raw)  # a valid gzip stream: CRC and length check out
    assert _stable(plain) == _stable(gzip.decompress(direct_raw))
    if not stream:
        assert json.loads(plain)["object"] == "chat.completion"
    else:
        assert plain.rstrip().endswith(b"data: [DONE]")
    (entry,) = env.new_entries(mark, 1)
    # The provider's usage is unreadable to tollgate: its own prompt count is
    # reported, labelled as counted and estimated (the completion is unknown).
    assert entry["usage_source"] == "counted"
    assert entry["estimated"] == "true"
    assert int(entry["prompt_tokens"]) == int(entry["counted_prompt_tokens"]) > 0
    assert_vm_healthy(env)


# ------------------------------------------------------------------ big bodies


def _send_until_answer(env, head: bytes, total: int, piece: int = 256 * 1024) -> tuple[int, bytes, int]:
    """Upload `total` body bytes after `head` until the server answers; returns
    (status, body, bytes sent). A raw socket, so the upload stops as soon as an
    answer is readable, as real clients do."""
    sock = socket.create_connection(("127.0.0.1", env.port), timeout=30)
    sent = 0
    try:
        sock.sendall(head)
        chunk = b"x" * piece
        deadline = time.monotonic() + 60
        while sent < total and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk[: min(piece, total - sent)])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += min(piece, total - sent)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read(), sent
    finally:
        sock.close()


def test_100mb_request_with_content_length_gets_a_dialect_413(env):
    total = 100 * 1024 * 1024
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % total)
    status, body, sent = _send_until_answer(env, head, total)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert sent < total, "refused before the whole upload"
    assert_vm_healthy(env)


def test_100mb_chunked_request_gets_a_dialect_413(env):
    total = 100 * 1024 * 1024
    # Chunked framing: each 256 KiB piece is one chunk.
    sock = socket.create_connection(("127.0.0.1", env.port), timeout=30)
    try:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        piece = b"y" * (256 * 1024)
        sent = 0
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
    finally:
        sock.close()
    assert resp.status == 413
    assert sent < total
    # Usually tollgate's Anthropic-shaped 413. When several chunks arrive in one
    # read, Envoy's own buffer limit (1 MiB, just above the 960 KiB cap) can trip
    # first and answer a plain-text 413: also a refusal before buffering more.
    if body != b"Payload Too Large":
        err = json.loads(body)
        assert err["type"] == "error" and err["error"]["type"] == "request_too_large"
    assert_vm_healthy(env)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_100mb_response_passes_through_without_buffering(env):
    total = 100 * 1024 * 1024
    # Warm up the path first so the RSS baseline includes the connection buffers.
    post(env, chat(), headers={"x-mock-fault": "pad-bytes=2000000"}).content
    before = rss_kib(env.proc.pid)
    mark = env.mark()
    r = post(env, chat(), headers={"x-mock-fault": f"pad-bytes={total}"}, stream=True, timeout=60)
    assert r.status_code == 200
    declared = int(r.headers["content-length"])
    received = 0
    peak = before
    tail = b""
    for i, piece in enumerate(r.iter_content(1 << 20)):
        received += len(piece)
        tail = (tail + piece)[-4096:]
        if i % 8 == 0:
            peak = max(peak, rss_kib(env.proc.pid))
    assert received == declared >= total - 4096
    # The upstream's own JSON ends it, unmodified.
    assert tail.rstrip().endswith(b"}") and b'"usage"' in tail
    # Streamed through: Envoy never held a meaningful part of the 100 MB.
    assert peak - before < 48 * 1024, f"Envoy RSS grew {(peak - before) // 1024} MiB"
    assert "x-llm-prompt-tokens" not in r.headers  # too big to hold for headers
    (entry,) = env.new_entries(mark, 1)
    assert entry["status"] == 200 and int(entry["bytes_sent"]) == declared
    assert int(entry["counted_prompt_tokens"]) > 0
    assert_vm_healthy(env)


# ------------------------------------------------------------------ odd requests


def test_headers_only_requests_pass_through(env):
    r = requests.get(env.base_url + "/v1/models", timeout=10)
    assert r.status_code == 200 and r.json()["object"] == "list"
    r = requests.head(env.base_url + "/v1/models", timeout=10)
    assert r.status_code in (200, 404, 405)
    # A POST with no body at all: nothing to meter, the provider answers.
    r = requests.post(env.base_url + "/v1/chat/completions", timeout=10)
    assert r.status_code == 400 and "x-llm-prompt-tokens" not in r.headers
    assert env.mock.last()["body_len"] == 0
    r = requests.post(env.base_url + "/v1/chat/completions", data=b"", timeout=10,
                      headers={"content-type": "application/json", "content-length": "0"})
    assert r.status_code == 400
    assert_vm_healthy(env)


@pytest.mark.parametrize("http2", [False, True])
def test_http1_and_http2_clients(env, http2):
    with httpx.Client(http1=not http2, http2=http2, timeout=15) as c:
        r = c.post(env.base_url + "/v1/chat/completions", json=chat("over h2?" if http2 else "over h1?"))
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert r.status_code == 200
        assert int(r.headers["x-llm-prompt-tokens"]) == r.json()["usage"]["prompt_tokens"]
        # A stream, read event by event.
        with c.stream("POST", env.base_url + "/v1/chat/completions",
                      json=chat("stream over h2" if http2 else "stream over h1", stream=True)) as s:
            assert s.status_code == 200
            text = b"".join(s.iter_bytes()).decode()
        assert text.rstrip().endswith("data: [DONE]")
        assert '"usage"' not in text.replace('"usage":null', "")  # the injected usage chunk is stripped
        # Several requests multiplexed on one h2 connection at once.
        results = []

        def one(i):
            results.append(c.post(env.base_url + "/v1/chat/completions", json=chat(f"parallel {i}")).status_code)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=20)
        assert results == [200] * 8
        # Headers-only and a 413 over the same client.
        assert c.get(env.base_url + "/v1/models").status_code == 200
        big = c.post(env.base_url + "/v1/chat/completions", content=b"x" * (2 * 1024 * 1024),
                     headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert_vm_healthy(env)


# ------------------------------------------------------------------ config pushed under traffic


def _lds_doc(listener: dict) -> dict:
    return {"version_info": str(time.monotonic_ns()),
            "resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}


def _tollgate_filter(listener: dict) -> dict:
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f for f in hcm["http_filters"] if f["name"] == "tollgate")


def _push(path: Path, doc: dict) -> None:
    """Write next to the watched file and move it into place (atomic, as the
    filesystem watch expects)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def test_bad_config_pushed_under_traffic_is_refused_and_the_old_one_serves(envoy_with, tmp_path):
    lds = tmp_path / "lds.yaml"
    state = {}

    def to_lds(doc):
        listener = doc["static_resources"].pop("listeners")[0]
        state["listener"] = listener
        lds.write_text(yaml.safe_dump(_lds_doc(listener)))
        doc["node"] = {"id": "tollgate-faults", "cluster": "tollgate-faults"}
        doc["dynamic_resources"] = {"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(lds), "watched_directory": {"path": str(tmp_path)}},
        }}

    e = envoy_with(CONFIG, name="lds", mutate=to_lds)
    base = vm_state(e)
    listener = state["listener"]

    def lds_stat(name):
        return e.admin_stats().get(f"listener_manager.lds.{name}", 0)

    stop = threading.Event()
    outcomes: list[tuple[int, bool]] = []

    def traffic():
        with requests.Session() as s:
            while not stop.is_set() and len(outcomes) < 5000:
                try:
                    r = s.post(e.base_url + "/v1/chat/completions", json=chat("during the push"), timeout=10)
                    outcomes.append((r.status_code, "x-llm-prompt-tokens" in r.headers))
                except requests.RequestException:
                    outcomes.append((0, False))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        rejected0, success0 = lds_stat("update_rejected"), lds_stat("update_success")
        bad = json.loads(json.dumps(listener))
        _tollgate_filter(bad)["typed_config"]["config"]["configuration"]["value"] = json.dumps(
            {"defaults": {"metering": {"tokenize_byte_budget": "lots"}}})
        _push(lds, _lds_doc(bad))
        deadline = time.monotonic() + 15
        while lds_stat("update_rejected") == rejected0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lds_stat("update_rejected") == rejected0 + 1, "the bad config was not refused"
        assert lds_stat("update_success") == success0
        time.sleep(0.5)
        served_during_bad = len(outcomes)
        # A good change afterwards is taken: the watch works, so the refusal meant it.
        good = json.loads(json.dumps(listener))
        _tollgate_filter(good)["typed_config"]["config"]["configuration"]["value"] = json.dumps(
            {"defaults": {"metering": {"tokenize_byte_budget": 65536, "response_headers": False,
                                       "filter_state": FILTER_STATE}}})
        _push(lds, _lds_doc(good))
        deadline = time.monotonic() + 15
        while lds_stat("update_success") == success0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lds_stat("update_success") == success0 + 1
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(timeout=30)
    assert served_during_bad > 20, "traffic flowed while the config was pushed"
    failed = [o for o in outcomes if o[0] != 200]
    assert failed == [], f"{len(failed)} of {len(outcomes)} requests failed"
    # The old config served until the good one drained in (headers on, then off).
    assert outcomes[0][1] and outcomes[served_during_bad - 1][1]
    r = requests.post(e.base_url + "/v1/chat/completions", json=chat("after"), timeout=10)
    assert r.status_code == 200 and "x-llm-prompt-tokens" not in r.headers
    assert "panicked at" not in e.logs()
    # The good update started a VM for the new config; none failed or reloaded.
    assert all(v == 0 for k, v in vm_state(e).items() if "vm_reload" in k)
    assert vm_state(e)["wasm.envoy.wasm.runtime.v8.created"] >= base["wasm.envoy.wasm.runtime.v8.created"]


# ------------------------------------------------------------------ hostile prompts under concurrency

HOSTILE_BUDGET = 65536  # tokenize_byte_budget of this Envoy: bytes tokenized exactly per request
HOSTILE = {
    "900 KB run without breaks": json.dumps(chat("a" * 900_000)).encode(),
    "880 KB run of emoji": json.dumps(chat("\U0001F642" * 220_000), ensure_ascii=False).encode(),
    "100k-deep nesting": b'{"model":"gpt-4o","messages":[{"role":"user","content":' + b"[" * 100_000
                         + b"]" * 100_000 + b"}]}",
    "900 KB invalid UTF-8": b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + b"\xff\xfe\xc3" * 300_000
                            + b'"}]}',
    "20k one-word messages": json.dumps({"model": "gpt-4o",
                                         "messages": [{"role": "user", "content": "m"}] * 20_000}).encode(),
}
NORMAL = json.dumps(chat("hi there")).encode()


def sinks(doc):
    """Hostile requests go to routes answered by Envoy itself (direct_response), so
    the mock's own parsing of 900 KB bodies does not compete for the CPU: one route
    with tollgate, one with it disabled (Envoy's own cost of the upload)."""
    vh = harness.hcm(doc)["route_config"]["virtual_hosts"][0]
    for name, on in (("sink", True), ("sink-off", False)):
        r = {"name": name, "match": {"prefix": f"/{name}/"},
             "direct_response": {"status": 200, "body": {"inline_string": "{}"}}}
        if not on:
            r["typed_per_filter_config"] = {"tollgate": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}
        vh["routes"].insert(0, r)


def _post_raw(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        t0 = time.perf_counter()
        c.request("POST", path, body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status, (time.perf_counter() - t0) * 1000
    finally:
        c.close()


def _window(env, hostile: bytes | None, path: str, seconds: float = 0.25) -> tuple[float, float]:
    """p99 latency (ms) of normal requests from two clients while hostile requests
    are sent one after another for `seconds` (at least 3 of them), or idle; and the
    median latency of the hostile requests under that same load (0 when idle)."""
    lats: list[float] = []
    hostile_lats: list[float] = []
    stop = threading.Event()

    def normal():
        c = http.client.HTTPConnection("127.0.0.1", env.port, timeout=30)
        while not stop.is_set() and len(lats) < 5000:
            t0 = time.perf_counter()
            c.request("POST", "/v1/chat/completions", body=NORMAL, headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            lats.append((time.perf_counter() - t0) * 1000)
        c.close()

    ts = [threading.Thread(target=normal) for _ in range(2)]
    for t in ts:
        t.start()
    time.sleep(0.1)
    n0 = len(lats)
    # At least `seconds` and 30 normal requests (a loaded machine is slower), at
    # most 10 s.
    t0 = time.monotonic()
    sent = 0
    while (time.monotonic() - t0 < seconds or len(lats) - n0 < 30 or sent < 3) and time.monotonic() - t0 < 10:
        if hostile is None:
            time.sleep(0.02)
        else:
            status, ms = _post_raw(env.port, path, hostile)
            assert status == 200
            hostile_lats.append(ms)
        sent += 1
    stop.set()
    for t in ts:
        t.join(timeout=30)
    s = sorted(lats[n0:])
    assert len(s) >= 10, "normal traffic flowed during the window"
    hostile_median = sorted(hostile_lats)[len(hostile_lats) // 2] if hostile_lats else 0.0
    return s[min(len(s) - 1, int(0.99 * (len(s) - 1) + 0.5))], hostile_median


@pytest.fixture(scope="module")
def hostile_env(envoy_with):
    cfg = {"defaults": {"metering": {"tokenize_byte_budget": HOSTILE_BUDGET, "filter_state": FILTER_STATE}}}
    e = envoy_with(cfg, name="hostile", concurrency=1, mutate=sinks)
    e.vm_baseline = vm_state(e)
    return e


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_prompt_stays_in_budget_and_spares_concurrent_requests(hostile_env, kind):
    env = hostile_env
    body = HOSTILE[kind]
    # Within the per-request budget: the whole hostile request (upload included)
    # takes a few milliseconds more than on the route without tollgate (there
    # Envoy answers without reading the body at all).
    on = sorted(_post_raw(env.port, "/sink/v1/chat/completions", body)[1] for _ in range(5))[2]
    off = sorted(_post_raw(env.port, "/sink-off/v1/chat/completions", body)[1] for _ in range(5))[2]
    assert on < 2 * off + 60, f"{kind}: {on:.1f} ms with tollgate vs {off:.1f} ms without"
    # And tollgate did its work on it: counted (estimated past the budget), or
    # passed through as not-JSON-it-can-read.
    mark = env.mark()
    _post_raw(env.port, "/sink/v1/chat/completions", body)
    (entry,) = env.new_entries(mark, 1)
    try:
        json.loads(body)
        parses = True
    except (ValueError, RecursionError):
        parses = False
    if parses:
        assert int(entry["counted_prompt_tokens"]) > 0
        # One text far over the budget, or messages far past the walk budget (one
        # message per 64 bytes of it), is estimated.
        assert entry["estimated"] == "true"
        if kind == "20k one-word messages":
            # 1024 messages read, the rest priced by size: never under the real 5 each.
            assert int(entry["counted_prompt_tokens"]) >= 20_000 * 5
    else:
        assert entry["counted_prompt_tokens"] in ("-", "", None)
    # One worker (--concurrency 1) serves both. Reading a hostile body is linear work
    # tollgate cannot skip (a 680 KB body of 100k JSON values takes about a
    # millisecond to parse here, a few on a slow CI core), and a normal request that
    # arrives meanwhile waits for it. What must not happen is more than that: work
    # left over after the hostile answer (logs, timers, freeing), a stall, or a cost
    # that grows faster than the body. So the p99 of normal requests beside hostile
    # ones may rise over the same with tollgate out of the way by at most three
    # times the hostile request's own extra time (the wait for one hostile parse,
    # the second client queued behind the first, and the CPU the parse takes from
    # the clients on a 2-core machine), measured in the same windows under the same
    # load; and that extra time itself stays small per byte.
    # Medians of interleaved rounds absorb a noisy machine.
    rounds = [(_window(env, None, ""), _window(env, body, "/sink-off/v1/chat/completions"),
               _window(env, body, "/sink/v1/chat/completions")) for _ in range(7)]
    idle, off_p99, on_p99 = (sorted(r[i][0] for r in rounds)[3] for i in range(3))
    off_own, on_own = (sorted(r[i][1] for r in rounds)[3] for i in (1, 2))
    own = max(0.0, on_own - off_own)
    print(f"{kind}: normal p99 idle {idle:.2f} ms, beside hostile (tollgate off) {off_p99:.2f} ms, "
          f"(tollgate on) {on_p99:.2f} ms; hostile request {on:.1f} ms vs {off:.1f} ms idle, "
          f"{on_own:.1f} ms vs {off_own:.1f} ms under load")
    # At most 30 ns a byte under load (about fifteen times what it costs here): a
    # quadratic step or an unbudgeted tokenizer pass on these bodies costs far more.
    assert own < len(body) * 30e-6, (kind, own, rounds)
    # (Scheduler noise on a loaded 2-core machine adds up to 3 ms to that.)
    ref = max(off_p99, idle)
    assert on_p99 <= 2 * ref or on_p99 - ref < 3.0 + 3 * own, rounds
    assert_vm_healthy(env)


def test_huge_message_counts_cost_is_bounded_by_the_body_cap(hostile_env):
    """20k one-word messages (720 KB, under the 960 KiB cap): the body is parsed into
    the flat document (no tree of 20k objects), 1024 messages are read one by one
    (one per 64 bytes of the 65536-byte budget) and the rest is priced by its size in
    one step. The whole request costs about a millisecond of worker time more than
    without tollgate; the p99 test above covers its effect on other requests."""
    env = hostile_env
    tiny = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "m"}] * 20_000}).encode()
    # Tool results name their call by id: 4k calls then 4k results (a search per
    # result would be 16M comparisons), 700 KB.
    calls = [{"role": "assistant", "tool_calls": [{"id": f"c{i}", "type": "function",
                                                   "function": {"name": "f", "arguments": "{}"}}]}
             for i in range(4_000)]
    results = [{"role": "tool", "tool_call_id": f"c{i}", "content": "ok"} for i in range(4_000)]
    tools = json.dumps({"model": "gpt-5", "messages": calls + results}).encode()
    for name, body in (("20k one-word messages", tiny), ("4k tool calls + 4k results", tools)):
        assert _post_raw(env.port, "/sink/v1/chat/completions", body)[0] == 200, name
        on = sorted(_post_raw(env.port, "/sink/v1/chat/completions", body)[1] for _ in range(5))[2]
        off = sorted(_post_raw(env.port, "/sink-off/v1/chat/completions", body)[1] for _ in range(5))[2]
        print(f"{name}: {on:.1f} ms with tollgate, {off:.1f} ms without")
        # A few ms here; 25 ms leaves room for a loaded 2-core machine.
        assert on < off + 25, f"{name}: per-request work stays bounded"
    body = tiny
    mark = env.mark()
    assert _post_raw(env.port, "/sink/v1/chat/completions", body)[0] == 200
    (entry,) = env.new_entries(mark, 1)
    assert int(entry["counted_prompt_tokens"]) > 20_000 * 3
    assert_vm_healthy(env)
