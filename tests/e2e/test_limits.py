"""Local token rate limits end to end: the official OpenAI and Anthropic SDKs through
a real Envoy 1.40 running tollgate.wasm, against the mock provider. Counters live in
proxy-wasm shared data, so they are shared by every worker of one Envoy; the
contention test runs two workers against one limit.

Each test uses its own consumer ids (the counters are keyed by consumer), so tests
do not share budgets. Windows are fixed and aligned to the clock: tests that
depend on a one-minute window first wait out the last seconds of a minute."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time

import anthropic
import openai
import pytest
import requests

RULES = [
    {"name": "per-consumer-minute", "key": ["consumer"], "window": "1m", "tokens": 1000},
    {"name": "per-consumer-model-hour", "key": ["consumer", "model"], "window": "1h", "tokens": 600},
]
CONFIG = {
    "defaults": {"limits": {"consumer": {"header": "x-consumer-id"}, "reserve_max_tokens_default": 100,
                            "rules": RULES}},
    "routes": {"anthropic": {"provider": "anthropic"}},
}
MESSAGES = [{"role": "user", "content": "Hi"}]


def fresh_minute(margin: float = 12.0) -> None:
    """Wait until at least `margin` seconds remain in the current minute, so a
    one-minute window cannot roll over in the middle of a test."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


@pytest.fixture(scope="module")
def env(envoy_with):
    return envoy_with(CONFIG, name="limits")


def oai(env, consumer: str | None) -> openai.OpenAI:
    headers = {"x-consumer-id": consumer} if consumer else {}
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0, default_headers=headers)


def chat(client, max_tokens: int, words: int = 5, model: str = "gpt-4o"):
    """A raw chat call; the mock replies with `words` words, cut at max_tokens."""
    return client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=max_tokens,
        extra_headers={"x-mock-reply-words": str(words)})


def refused(client, max_tokens: int, model: str = "gpt-4o") -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens)
    return err.value


def test_openai_429_is_in_dialect_with_headers_and_never_forwarded(env):
    client = oai(env, "c-429")
    env.mock.reset()  # the mock keeps only its last 256 requests
    e = refused(client, max_tokens=5000)
    assert len(env.mock.requests()) == 0, "a refused request never reaches the provider"
    assert e.status_code == 429
    body = e.response.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "per-consumer-model-hour" in body["error"]["message"]
    h = e.response.headers
    assert h["x-ratelimit-limit-tokens"] == "600"
    assert h["x-ratelimit-remaining-tokens"] == "600"
    assert 60 < int(h["retry-after"]) <= 3600
    assert int(h["retry-after-ms"]) == int(h["retry-after"]) * 1000
    assert h["x-ratelimit-reset-tokens"].endswith("s")


def test_anthropic_429_is_in_dialect(env):
    c = anthropic.Anthropic(base_url=env.base_url, api_key="test", max_retries=0,
                            default_headers={"x-consumer-id": "c-anthropic"})
    with pytest.raises(anthropic.RateLimitError) as err:
        c.messages.create(model="claude-sonnet-5-5", max_tokens=5000,
                          messages=[{"role": "user", "content": "Hi"}])
    body = err.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert err.value.response.headers["x-ratelimit-limit-tokens"] == "600"
    assert "retry-after" in err.value.response.headers
    ok = c.messages.with_raw_response.create(model="claude-sonnet-5-5", max_tokens=100,
                                             messages=[{"role": "user", "content": "Hi"}])
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 600


def test_allowed_responses_carry_rate_limit_headers_streaming_or_not(env):
    fresh_minute()
    client = oai(env, "c-headers")
    raw = chat(client, max_tokens=100)
    usage = raw.parse().usage
    h = raw.headers
    # The hour rule (600 per consumer and model) is the tightest: it is the one shown.
    assert h["x-ratelimit-limit-tokens"] == "600"
    assert int(h["x-ratelimit-remaining-tokens"]) == 600 - usage.prompt_tokens - 100
    assert h["x-ratelimit-reset-tokens"].endswith("s")
    # Streaming: the headers go out before the body, with what is known then
    # (the first call was trued up to its real usage).
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=100, stream=True) as s:
        hs = s.headers
        list(s.parse())
    assert int(hs["x-ratelimit-remaining-tokens"]) == 600 - usage.total_tokens - usage.prompt_tokens - 100


def test_strictest_window_wins_and_no_rule_is_ignored(env):
    fresh_minute(margin=20)
    client = oai(env, "c-multi")
    # Hour rule (600 per model) refuses while the minute rule (1000) has room.
    first = chat(client, max_tokens=100)
    assert first.parse().usage.total_tokens < 30, "trued up to a few real tokens"
    e = refused(client, max_tokens=590)
    assert "per-consumer-model-hour" in e.response.json()["error"]["message"]
    assert e.response.headers["x-ratelimit-limit-tokens"] == "600"
    assert int(e.response.headers["retry-after"]) > 60
    # Another model has its own hour budget; this call really uses 500 tokens.
    second = chat(client, max_tokens=500, words=2000, model="gpt-4o-mini")
    assert second.parse().usage.completion_tokens >= 490
    used = first.parse().usage.total_tokens + second.parse().usage.total_tokens
    assert used > 500
    # A third model: its hour budget is fresh, but the minute rule (shared by all
    # models of the consumer) no longer has 500 + prompt left.
    e = refused(client, max_tokens=500, model="gpt-4.1")
    assert "per-consumer-minute" in e.response.json()["error"]["message"]
    h = e.response.headers
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert int(h["x-ratelimit-remaining-tokens"]) == 1000 - used
    assert 1 <= int(h["retry-after"]) <= 60


def test_consumers_are_isolated_by_the_trusted_header(env):
    fresh_minute()
    a, b = oai(env, "c-iso-a"), oai(env, "c-iso-b")
    big = chat(a, max_tokens=550, words=2000)
    assert big.parse().usage.completion_tokens >= 540
    refused(a, max_tokens=200)
    ok = chat(b, max_tokens=200)
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 600 - ok.parse().usage.prompt_tokens - 200
    # No header: the anonymous consumer, a budget of its own.
    anon = chat(oai(env, None), max_tokens=200)
    assert anon.headers["x-ratelimit-limit-tokens"] == "600"


def test_streamed_usage_trues_up_the_reservation(env):
    fresh_minute()
    client = oai(env, "c-stream")
    # Reserve 580 of the 600 hour budget, really use a few tokens.
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=580, stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-mock-reply-words": "3"}))
    usage = [c.usage for c in chunks if c.usage][0]
    assert usage.completion_tokens < 20
    # Without the true-up 580 + prompt would still be charged and this would be refused.
    nxt = chat(client, max_tokens=500)
    remaining = int(nxt.headers["x-ratelimit-remaining-tokens"])
    assert remaining == 600 - usage.total_tokens - nxt.parse().usage.prompt_tokens - 500

    # Anthropic streams are trued up too.
    c = anthropic.Anthropic(base_url=env.base_url, api_key="test", max_retries=0,
                            default_headers={"x-consumer-id": "c-stream-anthropic"})
    with c.messages.stream(model="claude-sonnet-5-5", max_tokens=580,
                           messages=[{"role": "user", "content": "Hi"}],
                           extra_headers={"x-mock-reply-words": "3"}) as s:
        final = s.get_final_message()
    ok = c.messages.with_raw_response.create(model="claude-sonnet-5-5", max_tokens=500,
                                             messages=[{"role": "user", "content": "Hi"}])
    assert ok.status_code == 200
    assert final.usage.output_tokens < 20


def test_report_only_refuses_nothing_but_reports(envoy_with):
    cfg = {"defaults": {"limits": {"mode": "report_only", "rules": [
        {"name": "tiny", "key": ["consumer"], "window": "1h", "tokens": 50}]}}}
    env = envoy_with(cfg, name="limits-report-only")
    client = oai(env, "c-report")
    for _ in range(3):
        raw = chat(client, max_tokens=100)
        assert raw.http_response.status_code == 200
        assert raw.headers["x-ratelimit-remaining-tokens"] == "0"
        assert raw.headers["x-ratelimit-limit-tokens"] == "50"
    m = env.stats()
    assert m.get("tollgate_rate_limit_decisions", rule="tiny", decision="would_refuse") == 3
    assert m.get("tollgate_rate_limit_decisions", decision="refused") == 0
    deadline = time.monotonic() + 5
    while '"decision":"would_refuse"' not in env.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert '"event":"tollgate.rate_limit"' in env.logs()


def test_contention_two_workers_never_overshoot_by_more_than_one_reservation(envoy_with):
    limit, max_tokens = 3000, 60
    cfg = {"defaults": {"limits": {"rules": [
        {"name": "shared", "key": ["consumer"], "window": "1h", "tokens": limit}]}}}
    env = envoy_with(cfg, concurrency=2, name="limits-contention")
    url = env.base_url + "/v1/chat/completions"
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": max_tokens}
    # The mock is asked for more words than max_tokens: every call really uses
    # its whole reservation, the worst case for overshoot.
    headers = {"x-consumer-id": "c-contention", "x-mock-reply-words": "500"}
    admitted, refused_n, errors = [], [], []
    lock = threading.Lock()

    def worker():
        with requests.Session() as s:
            for _ in range(12):
                try:
                    r = s.post(url, json=body, headers=headers, timeout=20)
                except requests.RequestException as e:  # pragma: no cover - reported below
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    if r.status_code == 200:
                        u = r.json()["usage"]
                        admitted.append((u["prompt_tokens"], u["total_tokens"]))
                    elif r.status_code == 429:
                        refused_n.append(1)
                    else:
                        errors.append(r.status_code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert admitted and refused_n, "some admitted, then the limit was reached"
    reservation = admitted[0][0] + max_tokens  # prompt + max_tokens
    assert all(t <= reservation for _, t in admitted)
    per_request = reservation
    total = sum(t for _, t in admitted)
    assert total <= limit + per_request, (total, len(admitted))
    # And it is not refusing early: the budget is nearly used up.
    assert total > limit - 2 * per_request, (total, len(admitted))
    m = env.stats()
    assert m.get("tollgate_rate_limit_decisions", rule="shared", decision="refused") == len(refused_n)


def trusted_identity(doc):
    """The edge set-up the README documents: strip client copies of x-consumer-id
    before any filter runs, then let the 'IAM' (here a header_mutation filter
    standing in for jwt_authn claim_to_headers) set it from the credential."""
    import harness

    h = harness.hcm(doc)
    h["early_header_mutation_extensions"] = [{
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [{"remove": "x-consumer-id"}],
        },
    }]
    h["http_filters"].insert(0, {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": "x-consumer-id", "value": "%REQ(x-api-key)%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]},
        },
    })


def test_spoofed_identity_headers_are_ignored(envoy_with):
    cfg = {"defaults": {"limits": {"rules": [
        {"name": "per-consumer", "key": ["consumer"], "window": "1h", "tokens": 300}]}}}
    env = envoy_with(cfg, name="limits-trusted", mutate=trusted_identity)

    def client(api_key, spoof=None):
        h = {"x-api-key": api_key}
        if spoof:
            h["x-consumer-id"] = spoof
        return openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0, default_headers=h)

    # The victim spends most of its budget.
    big = chat(client("victim"), max_tokens=280, words=2000)
    assert big.parse().usage.completion_tokens >= 270
    # Claiming to be the victim does not charge the victim: the attacker is counted
    # as itself (fresh budget).
    ok = chat(client("attacker", spoof="victim"), max_tokens=200, words=2000)
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 300 - ok.parse().usage.prompt_tokens - 200
    # And claiming a fresh identity does not escape the attacker's own limit.
    refused(client("attacker", spoof="someone-new"), max_tokens=200)
    refused(client("victim"), max_tokens=100)


# --------------------------------------------------------------------------------------
# Request budgets, clamping, mid-stream cut-off, USD budgets, identity from a JWT.
# --------------------------------------------------------------------------------------

def header_values(h, unit: str) -> tuple[str, str, str]:
    return (h[f"x-ratelimit-limit-{unit}"], h[f"x-ratelimit-remaining-{unit}"], h[f"x-ratelimit-reset-{unit}"])


def test_request_budgets_send_the_openai_request_headers_and_refuse_in_dialect(envoy_with):
    fresh_minute()
    cfg = {"defaults": {"limits": {"rules": [
        {"name": "rpm", "key": ["consumer"], "window": "1m", "requests": 3, "tokens": 100000}]}}}
    env = envoy_with(cfg, name="limits-requests")
    client = oai(env, "c-rpm")
    seen = []
    for _ in range(3):
        raw = chat(client, max_tokens=20)
        seen.append(header_values(raw.headers, "requests"))
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    assert [s[:2] for s in seen] == [("3", "2"), ("3", "1"), ("3", "0")]
    # OpenAI's own format: "12s", "1m0s".
    assert all(re.fullmatch(r"(1m0s|[1-9][0-9]?s)", s[2]) for s in seen), seen
    e = refused(client, max_tokens=20)
    assert e.status_code == 429
    body = e.response.json()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
    assert "Rate limit reached for requests" in body["message"] and "'rpm'" in body["message"]
    h = e.response.headers
    assert header_values(h, "requests")[:2] == ("3", "0")
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["x-ratelimit-limit-tokens"] == "100000"
    # Streams carry them too, on the headers that go out before the body.
    with oai(env, "c-rpm-2").chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=5, stream=True) as s:
        assert header_values(s.headers, "requests")[:2] == ("3", "2")
        list(s.parse())


def reset_seconds(v: str) -> int:
    """OpenAI's `x-ratelimit-reset-*` text ("12s", "1m0s", "250ms") in whole seconds, rounded up."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(\d+)s", v)
    if m:
        h, mi, s = (int(x or 0) for x in m.groups())
        return h * 3600 + mi * 60 + s
    ms = re.fullmatch(r"(\d+)ms", v)
    assert ms, v
    return 1 if int(ms.group(1)) else 0


def test_credit_admissions_keep_exact_counts_and_a_reset_never_early(envoy_with):
    """After the first request a worker admits from its credit, on the clock reading
    its 1 s timer took (no clock hostcall per request). Over a few seconds of
    traffic the remaining count must stay exact, request by request, and the reset
    shown must never be earlier than the window's real end, nor more than the
    reading's age (a timer period) plus rounding later."""
    fresh_minute(margin=20)
    cfg = {"defaults": {"limits": {"consumer": {"header": "x-consumer-id"}, "rules": [
        {"name": "tpm", "key": ["consumer"], "window": "1m", "tokens": 1_000_000}]}}}
    env = envoy_with(cfg, name="limits-credit")
    client = oai(env, "c-credit")
    expected_remaining = 1_000_000
    deadline = time.time() + 5
    n = 0
    while time.time() < deadline and n < 300:
        before = time.time()
        raw = chat(client, max_tokens=50, words=3)
        after = time.time()
        usage = raw.parse().usage
        h = raw.headers
        # Charged at admission: prompt + the 50 reserved; trued up to real usage after.
        expected_remaining -= usage.prompt_tokens + 50
        assert int(h["x-ratelimit-remaining-tokens"]) == expected_remaining, (n, dict(h))
        expected_remaining += 50 - usage.completion_tokens
        shown = reset_seconds(h["x-ratelimit-reset-tokens"])
        real_latest = 60 - before % 60  # the window's real end, seen before the request
        real_earliest = 60 - after % 60
        assert shown >= int(real_earliest), (shown, real_earliest, n)
        # The reading is at most a timer period (plus its lateness) old, and the
        # header rounds up to whole seconds: a reading that stopped moving would be
        # 5 s late by the end.
        assert shown <= real_latest + 3, (shown, real_latest, n)
        n += 1
    assert n >= 20, f"only {n} requests in 5 s"


def test_limits_hold_on_a_route_with_metering_off(envoy_with):
    """`metering.enabled: false` only silences reporting: the route's limits still
    count (and refuse), and no x-llm-* header is written."""
    fresh_minute()
    cfg = {"defaults": {"metering": {"enabled": False}, "limits": {"rules": [
        {"name": "rpm", "key": ["consumer"], "window": "1m", "requests": 2, "tokens": 100000}]}}}
    env = envoy_with(cfg, name="limits-unmetered")
    client = oai(env, "c-unmetered")
    for left in ("1", "0"):
        raw = chat(client, max_tokens=20)
        assert raw.headers["x-ratelimit-remaining-requests"] == left
        assert not [h for h in raw.headers if h.lower().startswith("x-llm-")], dict(raw.headers)
    e = refused(client, max_tokens=20)
    assert e.status_code == 429 and "'rpm'" in e.response.json()["error"]["message"]


JWT_SECRET = b"tollgate-e2e-hs256-secret-0123456789"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_jwt(claims: dict, secret: bytes = JWT_SECRET) -> str:
    """An HS256 JWT, signed with the standard library (RFC 7515)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def with_jwt_authn(doc):
    """Envoy's jwt_authn in front of tollgate, verifying against a local JWKS and
    writing the verified payload to dynamic metadata (payload_in_metadata)."""
    import harness

    jwks = {"keys": [{"kty": "oct", "alg": "HS256", "kid": "k1", "k": b64url(JWT_SECRET)}]}
    harness.hcm(doc)["http_filters"].insert(0, {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"test": {
                "issuer": "https://issuer.test",
                "local_jwks": {"inline_string": json.dumps(jwks)},
                "payload_in_metadata": "jwt_payload",
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "test"}}],
        },
    })


def test_identity_from_a_verified_jwt_claim_ignores_spoofed_headers(envoy_with):
    cfg = {"defaults": {"limits": {
        "consumer": {"jwt_claim": "sub", "jwt_payload": "jwt_payload"},
        "rules": [{"name": "per-sub", "key": ["consumer"], "window": "1h", "tokens": 300}]}}}
    env = envoy_with(cfg, name="limits-jwt", mutate=with_jwt_authn)
    exp = int(time.time()) + 3600

    def client(sub, spoof=None, secret=JWT_SECRET):
        token = make_jwt({"iss": "https://issuer.test", "sub": sub, "exp": exp}, secret)
        h = {"x-consumer-id": spoof} if spoof else {}
        # The OpenAI SDK sends its api_key as `Authorization: Bearer`, where jwt_authn looks.
        return openai.OpenAI(base_url=env.base_url + "/v1", api_key=token, max_retries=0, default_headers=h)

    big = chat(client("jwt-victim"), max_tokens=280, words=2000)
    assert big.parse().usage.completion_tokens >= 270
    refused(client("jwt-victim"), max_tokens=100)
    # A header naming the victim changes nothing: the verified claim is the identity.
    ok = chat(client("jwt-attacker", spoof="jwt-victim"), max_tokens=200, words=2000)
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 300 - ok.parse().usage.prompt_tokens - 200
    refused(client("jwt-attacker", spoof="someone-new"), max_tokens=200)
    # A token not signed by the JWKS never gets as far as tollgate.
    env.mock.reset()  # the mock keeps only its last 256 requests
    with pytest.raises(openai.AuthenticationError):
        client("jwt-victim", secret=b"not-the-key-" * 3).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert len(env.mock.requests()) == 0


CUT_RULES = [{"name": "cut-hour", "key": ["consumer"], "window": "1h", "tokens": 200}]


@pytest.fixture(scope="module")
def cut_env(envoy_with):
    cfg = {"defaults": {"limits": {"stream_cutoff": "cut", "reserve_max_tokens_default": 20,
                                   "reserve_max_tokens_cap": 20, "rules": CUT_RULES}},
           "routes": {"anthropic": {"provider": "anthropic"}}}
    return envoy_with(cfg, name="limits-cut")


def test_openai_stream_is_cut_in_protocol_when_the_budget_runs_out(cut_env):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import oracle

    enc = oracle.encoding("o200k_base")
    client = oai(cut_env, "c-cut-openai")
    # No max_tokens: 20 are reserved, the mock streams 2000 words.
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-reply-words": "2000"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = chunks[-1].usage
    allowance = 200 - usage.prompt_tokens
    # Counted per delta with tollgate's tokenizer, cut right after the delta that
    # reaches the allowance (a delta may hold more than one token); tiktoken on the
    # joined text agrees within a few tokens (merges across delta boundaries).
    assert allowance <= usage.completion_tokens <= allowance + 3, (usage, allowance)
    assert abs(len(enc.encode(text)) - allowance) <= 5, (len(enc.encode(text)), allowance)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The provider's real usage (2000 words) was drained and charged: no budget left.
    e = refused(client, max_tokens=1)
    assert e.response.headers["x-ratelimit-remaining-tokens"] == "0"
    deadline = time.monotonic() + 5
    while '"decision":"stream_cut"' not in cut_env.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert '"decision":"stream_cut"' in cut_env.logs()
    assert cut_env.stats().get("tollgate_rate_limit_decisions", rule="cut-hour", decision="stream_cut") >= 1

    # Without include_usage the client gets no usage chunk, still a clean end.
    raw = requests.post(cut_env.base_url + "/v1/chat/completions", timeout=30, stream=True,
                        headers={"x-consumer-id": "c-cut-openai-2", "x-mock-reply-words": "2000"},
                        json={"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    body = raw.content.decode()
    assert body.endswith("data: [DONE]\n\n")
    events = [json.loads(line[6:]) for line in body.split("\n") if line.startswith("data: {")]
    assert not any("usage" in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_anthropic_stream_is_cut_in_protocol_when_the_budget_runs_out(cut_env):
    c = anthropic.Anthropic(base_url=cut_env.base_url, api_key="test", max_retries=0,
                            default_headers={"x-consumer-id": "c-cut-anthropic"})
    # max_tokens 4000, but only 20 reserved (reserve_max_tokens_cap): admitted.
    with c.messages.stream(model="claude-sonnet-5-5", max_tokens=4000,
                           messages=[{"role": "user", "content": "Hi"}],
                           extra_headers={"x-mock-reply-words": "2000"}) as s:
        # Admission charged tollgate's prompt estimate (Claude has no public
        # vocabulary) plus the 20 reserved: what remains after the prompt is the allowance.
        allowance = int(s.response.headers["x-ratelimit-remaining-tokens"]) + 20
        events = [e.type for e in s]
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert events[-1] == "message_stop"
    assert "content_block_stop" in events
    assert allowance <= final.usage.output_tokens <= allowance + 3, (final.usage, allowance)
    words = final.content[0].text.split()
    assert 20 < len(words) < 200, "cut far before the 2000 words the provider sent"


def test_clamp_lowers_max_tokens_instead_of_refusing(envoy_with):
    cfg = {"defaults": {"limits": {"clamp_max_tokens": True, "clamp_min_tokens": 10, "rules": [
        {"name": "clamp-hour", "key": ["consumer"], "window": "1h", "tokens": 150}]}},
        "routes": {"anthropic": {"provider": "anthropic"}}}
    env = envoy_with(cfg, name="limits-clamp")
    client = oai(env, "c-clamp")
    raw = chat(client, max_tokens=1000, words=2000)
    prompt = raw.parse().usage.prompt_tokens
    sent = env.mock.last_body()
    assert sent["max_tokens"] == 150 - prompt, "spliced into the forwarded body"
    assert sent["messages"] == MESSAGES
    assert raw.headers["x-tollgate-max-tokens-clamped"] == str(150 - prompt)
    assert raw.parse().choices[0].finish_reason == "length"
    assert raw.parse().usage.completion_tokens == 150 - prompt
    # Nothing left: too little to clamp to (clamp_min_tokens), so refused.
    refused(client, max_tokens=1000)
    # No cap in the request: the API's own one is added (the default reservation,
    # 1024, does not fit).
    c2 = oai(env, "c-clamp-2")
    raw = c2.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert env.mock.last_body()["max_completion_tokens"] == 150 - raw.parse().usage.prompt_tokens
    # n = 2: the provider applies the cap to each choice, so each gets half the
    # room (rounded down) and two full-length choices still fit the budget.
    c3 = oai(env, "c-clamp-n2")
    raw = c3.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=1000, n=2,
        extra_headers={"x-mock-reply-words": "2000"})
    room = 150 - raw.parse().usage.prompt_tokens
    sent = env.mock.last_body()
    assert sent["n"] == 2 and sent["max_tokens"] == room // 2, sent
    assert raw.headers["x-tollgate-max-tokens-clamped"] == str(room // 2)
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(room % 2), "charged 2 x the clamp"
    # Anthropic: max_tokens lowered too.
    a = anthropic.Anthropic(base_url=env.base_url, api_key="test", max_retries=0,
                            default_headers={"x-consumer-id": "c-clamp-anthropic"})
    msg = a.messages.with_raw_response.create(model="claude-sonnet-5-5", max_tokens=4000,
                                              messages=[{"role": "user", "content": "Hi"}])
    clamped = int(msg.headers["x-tollgate-max-tokens-clamped"])
    assert env.mock.last_body()["max_tokens"] == clamped
    assert 130 < clamped < 150, "150 less tollgate's estimate of the Claude prompt"
    assert msg.headers["x-ratelimit-remaining-tokens"] == "0"
    assert env.stats().get("tollgate_rate_limit_decisions", rule="clamp-hour", decision="clamped") >= 4


def test_usd_budget_admits_on_price_and_trues_up_to_real_cost(envoy_with):
    # gpt-4o at $2.50 / $10 / $1.25 (cached) per 1M tokens; $0.01 per consumer per month.
    cfg = {"defaults": {"limits": {
        "prices": [{"model": "gpt-4o", "input": 2.5, "output": 10, "cached_input": 1.25}],
        "rules": [{"name": "spend", "key": ["consumer"], "window": "month", "usd": 0.01}]}}}
    env = envoy_with(cfg, name="limits-usd")
    client = oai(env, "c-usd")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=500,
        extra_headers={"x-mock-reply-words": "100", "x-mock-cached-tokens": "4"})
    u = raw.parse().usage
    prompt_micros = (u.prompt_tokens * 2500 + 999) // 1000
    h = raw.headers
    assert h["x-ratelimit-limit-usd"] == "0.010000"
    # Admission charged the prompt (uncached: unknown yet) plus 500 output tokens.
    assert h["x-ratelimit-remaining-usd"] == f"0.{10_000 - prompt_micros - 5000:06d}"
    assert re.fullmatch(r"\d+h\d+m\d+s", h["x-ratelimit-reset-usd"]) or h["x-ratelimit-reset-usd"].endswith("s")
    # True-up: real cost with 4 cached tokens at the cached price.
    cached = u.prompt_tokens_details.cached_tokens
    assert cached == 4
    real = ((u.prompt_tokens - cached) * 2500 + cached * 1250 + u.completion_tokens * 10_000 + 999) // 1000
    nxt = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
    p2 = (nxt.parse().usage.prompt_tokens * 2500 + 999) // 1000
    assert nxt.headers["x-ratelimit-remaining-usd"] == f"0.{10_000 - real - p2 - 100:06d}"
    # A reservation the budget cannot pay for is refused, naming the budget.
    e = refused(client, max_tokens=1000)
    msg = e.response.json()["error"]["message"]
    assert "micro-USD" in msg and "'spend'" in msg
    # A model without a price cannot be counted: refused rather than let through free.
    e = refused(oai(env, "c-usd-2"), max_tokens=5, model="llama-3")
    assert "'spend'" in e.response.json()["error"]["message"]


def test_identity_from_a_generic_property_path_shares_a_tenant_budget(envoy_with):
    # Any property: here a numeric `tenant` claim (Envoy returns it as an 8-byte
    # double), so two users of one tenant share the tenant's budget.
    path = ["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", "jwt_payload", "tenant"]
    cfg = {"defaults": {"limits": {"consumer": {"property": path}, "rules": [
        {"name": "per-tenant", "key": ["consumer"], "window": "1h", "tokens": 300}]}}}
    env = envoy_with(cfg, name="limits-property", mutate=with_jwt_authn)
    exp = int(time.time()) + 3600

    def client(sub, tenant):
        token = make_jwt({"iss": "https://issuer.test", "sub": sub, "tenant": tenant, "exp": exp})
        return openai.OpenAI(base_url=env.base_url + "/v1", api_key=token, max_retries=0)

    big = chat(client("ann", 42), max_tokens=280, words=2000)
    assert big.parse().usage.completion_tokens >= 270
    # Another user of tenant 42: the same (spent) budget.
    refused(client("bob", 42), max_tokens=100)
    # Tenant 7 has its own.
    ok = chat(client("bob", 7), max_tokens=100)
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 300 - ok.parse().usage.prompt_tokens - 100
