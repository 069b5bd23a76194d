"""Local token rate limits end to end: the official OpenAI and Anthropic SDKs through
a real Envoy 1.40 running tollgate.wasm, against the mock provider. Counters live in
proxy-wasm shared data, so they are shared by every worker of one Envoy; the
contention test runs two workers against one limit.

Each test uses its own consumer ids (the counters are keyed by consumer), so tests
do not share budgets. Windows are fixed and aligned to the clock: tests that
depend on a one-minute window first wait out the last seconds of a minute."""
from __future__ import annotations

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
    before = len(env.mock.requests())
    e = refused(client, max_tokens=5000)
    assert len(env.mock.requests()) == before, "a refused request never reaches the provider"
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
