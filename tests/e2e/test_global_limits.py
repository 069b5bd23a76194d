"""Shared (cross-replica) token limits end to end: two real Envoy 1.40 instances running
tollgate.wasm against ONE real rate-limit engine backed by a real Redis (Debian's
redis-server), through the official OpenAI and Anthropic SDKs.

The engine is tools/rls-limitador: the published `limitador` library (Redis storage)
serving Envoy's RLS gRPC API and Limitador's HTTP `check_and_report` API. It and Redis
are started here on 127.0.0.1 and stopped after the module. `make test` installs both
(scripts/install_rls.sh); without them these tests are skipped, saying why.

Covered: mode `rls_grpc` (tollgate calls the RLS) and mode `hits_addend` (Envoy's own
rate-limit filter charges what tollgate sets) each holding one budget across both
Envoys; the true-up after the response; mode `http` (Limitador's HTTP API, the Kong
path, here through Envoy's dispatch_http_call); and fail-open / fail-closed with the
service down, silent (accepts, never answers) and answering garbage, each bounded by
the route's timeout. Every test uses its own consumer id, so budgets are not shared
between tests (Limitador's windows start at a counter's first hit)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import anthropic
import openai
import pytest
import requests

import harness

ROOT = harness.ROOT
ENGINE_BIN = ROOT / ".cache" / "rls-limitador" / "bin" / "rls-limitador"
sys.path.insert(0, str(ROOT / "envoy" / "global-ratelimit"))
sys.path.insert(0, str(ROOT / "tests"))
import bootstrap as global_render  # noqa: E402  (envoy/global-ratelimit/bootstrap.py)
import rls_proto  # noqa: E402

LIMIT = 800  # tokens per consumer per minute, in the engine's limits file
DOMAIN = "tollgate"
MAX_TOKENS = 60
MESSAGES = [{"role": "user", "content": "Say hello to the shared budget."}]
CONSUMER = [{"key": "consumer", "from": "consumer"}]


def _need(path, what):
    if not path:
        pytest.skip(f"{what} not installed: run `bash scripts/install_rls.sh` (make test does)")


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise harness.HarnessError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if harness.port_open(port):
            return
        time.sleep(0.05)
    raise harness.HarnessError(f"{what} not listening on {port} after {timeout}s")


@pytest.fixture(scope="module")
def engine():
    """Redis + rls-limitador, both on 127.0.0.1, stopped after the module."""
    redis_bin = shutil.which("redis-server")
    _need(redis_bin, "redis-server (Debian package redis-server)")
    _need(ENGINE_BIN.exists() and ENGINE_BIN, "rls-limitador (.cache/rls-limitador/bin)")
    harness.RUN_DIR.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        rport = harness.free_port()
        rlog = harness.RUN_DIR / f"redis-{rport}.log"
        redis = subprocess.Popen(
            [redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=rlog.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(redis)
        _wait_port(rport, redis, "redis-server", rlog)
        limits = harness.RUN_DIR / f"limits-{rport}.json"
        limits.write_text(json.dumps([{
            "namespace": DOMAIN, "max_value": LIMIT, "seconds": 60, "name": "tokens-per-minute",
            "conditions": [], "variables": ["descriptors[0].consumer"]}]))
        gport, hport = harness.free_port(), harness.free_port()
        elog = harness.RUN_DIR / f"rls-limitador-{gport}.log"
        eng = subprocess.Popen(
            [str(ENGINE_BIN), "--limits", str(limits), "--grpc", f"127.0.0.1:{gport}",
             "--http", f"127.0.0.1:{hport}", "--redis", f"redis://127.0.0.1:{rport}"],
            stdout=elog.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(eng)
        _wait_port(gport, eng, "rls-limitador", elog)
        _wait_port(hport, eng, "rls-limitador", elog)
        yield {"grpc": ("127.0.0.1", gport), "http": ("127.0.0.1", hport), "log": elog}
    finally:
        for p in reversed(procs):
            harness.stop_process(p)


def used(engine, consumer: str) -> int:
    """Tokens the engine has counted for `consumer` in its current window."""
    body = requests.get(f"http://127.0.0.1:{engine['http'][1]}/counters/{DOMAIN}", timeout=5).json()
    for c in body:
        if c["set_variables"].get("descriptors[0].consumer") == consumer:
            return c["max_value"] - c["remaining"]
    return 0


def settled_used(engine, consumer: str, expect: int, timeout: float = 3.0) -> int:
    """The engine's count once it reached `expect` (true-ups land after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        n = used(engine, consumer)
        if n >= expect or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def tollgate_config(global_cfg: dict, reserve_default: int = 100) -> dict:
    return {
        "defaults": {"limits": {"consumer": {"header": "x-consumer-id"},
                                "reserve_max_tokens_default": reserve_default,
                                "global": global_cfg}},
        "routes": {"anthropic": {"provider": "anthropic"}},
    }


def oai(env, consumer: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0,
                         default_headers={"x-consumer-id": consumer})


def drain(envs, consumer: str, per_env: int = 20):
    """One client thread per Envoy, sending chats for `consumer` until refused (bounded).
    Returns (admitted [(env index, total tokens)], refusals [(env index, error)])."""
    admitted, refusals, lock = [], [], threading.Lock()
    # Rounds in lockstep: each round every client sends at once (they race for the
    # same budget), and no client can drain it alone while another is still warming up.
    rounds = threading.Barrier(len(envs))

    def run(i, env):
        client = oai(env, consumer)
        try:
            for _ in range(per_env):
                try:
                    rounds.wait(timeout=10)
                except threading.BrokenBarrierError:
                    pass
                try:
                    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=MAX_TOKENS)
                except openai.RateLimitError as e:
                    with lock:
                        refusals.append((i, e))
                    return
                with lock:
                    admitted.append((i, r.usage.total_tokens, r.usage.prompt_tokens))
        finally:
            rounds.abort()  # the other clients go on without waiting for this one

    threads = [threading.Thread(target=run, args=(i, e)) for i, e in enumerate(envs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return admitted, refusals


def check_shared_budget(engine, envs, consumer):
    admitted, refusals = drain(envs, consumer)
    assert refusals, "the shared budget never refused"
    assert {i for i, *_ in admitted} == {0, 1}, f"both Envoys should have admitted some: {admitted}"
    prompt = admitted[0][2]
    reservation = prompt + MAX_TOKENS
    total = sum(t for _, t, _ in admitted)
    # Each admission charged prompt + max_tokens; the budget holds across both Envoys,
    # overshooting by at most one reservation (two requests racing for the last room).
    assert len(admitted) * reservation <= LIMIT + reservation, (len(admitted), reservation)
    assert total <= LIMIT + reservation
    # ... and it was really spent, not refused early: another request no longer fit.
    assert (len(admitted) + 1) * reservation > LIMIT
    assert settled_used(engine, consumer, len(admitted) * reservation) == len(admitted) * reservation
    return admitted, refusals


# -- mode rls_grpc: tollgate calls the RLS itself ---------------------------------------

@pytest.fixture(scope="module")
def grpc_envs(envoy_with, engine):
    cfg = tollgate_config({"mode": "rls_grpc", "cluster": global_render.RLS_CLUSTER, "domain": DOMAIN,
                           "descriptors": CONSUMER, "timeout_ms": 1000, "failure_mode": "closed"})
    mutate = global_render.mutate_for("rls_grpc", rls=engine["grpc"])
    return [envoy_with(cfg, name=f"global-grpc-{i}", mutate=mutate) for i in range(2)]


def test_rls_grpc_one_budget_across_two_envoys(engine, grpc_envs):
    consumer = f"c-{uuid.uuid4().hex[:12]}"
    admitted, refusals = check_shared_budget(engine, grpc_envs, consumer)
    # The refusal is tollgate's 429 in the OpenAI dialect, with the engine's numbers.
    _, err = refusals[0]
    assert err.status_code == 429
    body = err.response.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    h = err.response.headers
    assert h["x-ratelimit-limit-tokens"] == str(LIMIT)
    assert 0 <= int(h["x-ratelimit-remaining-tokens"]) < admitted[0][2] + MAX_TOKENS
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["x-tollgate-ratelimit"] == "refused"
    # An Anthropic client of the same consumer is refused in its own dialect.
    client = anthropic.Anthropic(base_url=grpc_envs[1].base_url, api_key="test", max_retries=0,
                                 default_headers={"x-consumer-id": consumer})
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model="claude-sonnet-5-5", max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert e.value.response.json()["error"]["type"] == "rate_limit_error"
    # Allowed responses carry the shared limit's headers too.
    other = f"c-{uuid.uuid4().hex[:12]}"
    raw = oai(grpc_envs[0], other).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=MAX_TOKENS)
    assert raw.headers["x-ratelimit-limit-tokens"] == str(LIMIT)
    prompt = raw.parse().usage.prompt_tokens
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == LIMIT - prompt - MAX_TOKENS
    m = grpc_envs[0].stats()
    assert m.get("tollgate_rate_limit_decisions", rule="rls_grpc", decision="allowed") >= 1


def test_rls_grpc_true_up_charges_the_overrun(engine, grpc_envs):
    # No max_tokens: the reservation is reserve_max_tokens_default (100); the mock's
    # 150-word answer uses more, and the second call charges the difference.
    consumer = f"c-{uuid.uuid4().hex[:12]}"
    r = oai(grpc_envs[0], consumer).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"x-mock-reply-words": "150"})
    assert r.usage.completion_tokens > 100
    assert settled_used(engine, consumer, r.usage.total_tokens) == r.usage.total_tokens
    # Streaming: the overrun is charged from the stream's final usage.
    consumer = f"c-{uuid.uuid4().hex[:12]}"
    stream = oai(grpc_envs[1], consumer).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-reply-words": "150"})
    usage = [c.usage for c in stream if c.usage][-1]
    assert usage.completion_tokens > 100
    assert settled_used(engine, consumer, usage.total_tokens) == usage.total_tokens


# -- mode hits_addend: Envoy's own rate-limit filter charges tollgate's count -----------

@pytest.fixture(scope="module")
def addend_envs(envoy_with, engine):
    cfg = tollgate_config({"mode": "hits_addend", "domain": DOMAIN})
    mutate = global_render.mutate_for("hits_addend", rls=engine["grpc"], domain=DOMAIN, timeout="1s")
    return [envoy_with(cfg, name=f"global-addend-{i}", mutate=mutate) for i in range(2)]


def test_hits_addend_one_budget_across_two_envoys(engine, addend_envs):
    consumer = f"c-{uuid.uuid4().hex[:12]}"
    admitted, refusals = check_shared_budget(engine, addend_envs, consumer)
    # Envoy's own 429, with the OpenAI-dialect body from the local_reply_config mapper.
    _, err = refusals[0]
    assert err.response.json()["error"]["code"] == "rate_limit_exceeded"
    assert err.response.headers.get("x-envoy-ratelimited") == "true" or \
        "x-ratelimit-limit" in err.response.headers


def test_hits_addend_stream_done_charges_the_overrun(engine, addend_envs):
    consumer = f"c-{uuid.uuid4().hex[:12]}"
    r = oai(addend_envs[1], consumer).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"x-mock-reply-words": "150"})
    assert r.usage.completion_tokens > 100
    # Request time: prompt + 100 reserved; stream done: the rest.
    assert settled_used(engine, consumer, r.usage.total_tokens) == r.usage.total_tokens


# -- mode http: Limitador's check_and_report (the Kong path), via dispatch_http_call ----

def test_http_check_and_report(envoy_with, engine):
    cfg = tollgate_config({"mode": "http", "cluster": global_render.HTTP_CLUSTER, "domain": DOMAIN,
                           "authority": "limitador", "descriptors": CONSUMER, "timeout_ms": 1000})
    env = envoy_with(cfg, name="global-http", mutate=global_render.mutate_for("http", http=engine["http"]))
    consumer = f"c-{uuid.uuid4().hex[:12]}"
    admitted, refusals = drain([env], consumer)
    assert admitted and refusals
    reservation = admitted[0][2] + MAX_TOKENS
    assert len(admitted) * reservation <= LIMIT < (len(admitted) + 1) * reservation
    assert used(engine, consumer) == len(admitted) * reservation
    h = refusals[0][1].response.headers
    assert h["x-ratelimit-limit-tokens"] == str(LIMIT)
    assert int(h["x-ratelimit-remaining-tokens"]) == LIMIT - len(admitted) * reservation


# -- failures: down, silent, garbage; open and closed; always bounded --------------------

class _Silent:
    """Accepts TCP connections and never answers (a hung service)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns, self.stop = [], threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                pass

    def close(self):
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


def _garbage_rls():
    """A real gRPC server whose ShouldRateLimit answers bytes that are no RateLimitResponse,
    and records what it was sent (decoded with the official protobuf runtime)."""
    import grpc
    seen = []

    def handler(req: bytes, ctx):
        seen.append(rls_proto.RateLimitRequest.FromString(req))
        return b"\x0a\xff\xff\xff"  # field 1, length-delimited, length past the end

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "envoy.service.ratelimit.v3.RateLimitService",
        {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(handler)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, seen


@pytest.fixture(scope="module")
def failing(envoy_with):
    silent = _Silent()
    garbage, gport, seen = _garbage_rls()
    down = harness.free_port()  # nothing listens there
    scenarios = {"down": down, "silent": silent.port, "garbage": gport}
    routes, clusters = {}, []
    for name, port in scenarios.items():
        for mode in ("open", "closed"):
            route = f"{name}_{mode}"
            routes[route] = {"limits": {"consumer": {"header": "x-consumer-id"}, "global": {
                "mode": "rls_grpc", "cluster": f"rls_{name}", "domain": DOMAIN, "descriptors": CONSUMER,
                "timeout_ms": 300, "failure_mode": mode}}}
        clusters.append(global_render._cluster(f"rls_{name}", "127.0.0.1", port, http2=True))

    def mutate(doc):
        doc["static_resources"]["clusters"].extend(clusters)
        vh = harness.hcm(doc)["route_config"]["virtual_hosts"][0]
        extra = [{"name": r, "match": {"prefix": "/v1/", "headers": [
            {"name": "x-scenario", "string_match": {"exact": r}}]},
            "route": {"cluster": "mock_llm", "timeout": "30s"}} for r in routes]
        vh["routes"] = extra + vh["routes"]

    env = envoy_with({"routes": routes}, name="global-fail", mutate=mutate)
    yield env, seen
    garbage.stop(0)
    silent.close()


@pytest.mark.parametrize("scenario", ["down", "silent", "garbage"])
def test_failure_modes_are_bounded_and_visible(failing, scenario):
    env, seen = failing
    before = len(env.logs())
    for mode in ("open", "closed"):
        route = f"{scenario}_{mode}"
        client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0, timeout=10,
                               default_headers={"x-consumer-id": "failure-test", "x-scenario": route})
        t0 = time.monotonic()
        if mode == "open":
            r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
            assert r.choices[0].message.content
        else:
            with pytest.raises(openai.RateLimitError) as e:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
            assert e.value.response.headers["x-tollgate-ratelimit"] == "failed_closed"
            assert e.value.response.json()["error"]["code"] == "rate_limit_exceeded"
        elapsed = time.monotonic() - t0
        # Never longer than the 300 ms timeout plus the provider round trip; the silent
        # service is given up on at the timeout, not before.
        assert elapsed < 2.5, f"{route} took {elapsed:.2f}s"
        if scenario == "silent":
            assert elapsed >= 0.28, f"{route} gave up after {elapsed:.2f}s, before its timeout"
        m = env.stats()
        assert m.get("tollgate_rate_limit_decisions", route=route, rule="rls_grpc",
                     decision=f"failed_{mode}") == 1
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and env.logs()[before:].count("tollgate.global_rate_limit") < 2:
        time.sleep(0.05)
    lines = [l for l in env.logs()[before:].splitlines() if "tollgate.global_rate_limit" in l]
    assert any("failed_open" in l for l in lines) and any("failed_closed" in l for l in lines), lines
    if scenario in ("silent", "down"):
        # Envoy ends a timed-out or refused call with a gRPC error status.
        assert all('"reason":"gRPC status' in l for l in lines), lines
    if scenario == "garbage":
        assert any("undecodable" in l for l in lines), lines
        # What tollgate put on the wire, decoded by the official protobuf runtime.
        req = seen[-1]
        assert req.domain == DOMAIN
        assert [(e.key, e.value) for e in req.descriptors[0].entries] == [("consumer", "failure-test")]
        assert req.hits_addend > 10  # prompt + max_tokens
