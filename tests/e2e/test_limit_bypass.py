"""A client cannot get past a token limit by omitting usage, streaming, asking
for `n > 1` choices, setting a huge `max_tokens`, or forging its identity header.
Real Envoy + tollgate, the official OpenAI SDK where it can express the request.

Each test uses its own consumer id, so budgets are not shared; the window is an
hour, so no test straddles a window boundary in practice (checked anyway)."""
from __future__ import annotations

import http.client
import json
import time

import openai
import pytest
import requests

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import oracle  # noqa: E402  (tests/oracle.py: OpenAI's tiktoken, offline)

LIMIT = 2000
RESERVE = 100
CONFIG = {"defaults": {
    "metering": {"filter_state": ["prompt_tokens", "completion_tokens", "total_tokens", "usage_source"]},
    "limits": {
        "consumer": {"header": "x-consumer-id"},
        "reserve_max_tokens_default": RESERVE,
        "rules": [{"name": "hourly", "key": ["consumer"], "window": "1h", "tokens": LIMIT}],
    },
}}
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def env(envoy_with):
    # Not across an hour boundary: the counters are per fixed hour window.
    left = 3600 - time.time() % 3600
    if left < 60:
        time.sleep(left + 0.5)
    return envoy_with(CONFIG, name="bypass")


def client(env, consumer):
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0,
                         default_headers={"x-consumer-id": consumer})


def remaining(env, consumer) -> tuple[int, int]:
    """(x-ratelimit-remaining-tokens after a probe request, the probe's charge so far)."""
    r = client(env, consumer).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "probe"}], max_tokens=1,
        extra_headers={"x-mock-reply-words": "1"})
    assert r.status_code == 200
    return int(r.headers["x-ratelimit-remaining-tokens"]), r.parse().usage.prompt_tokens + 1


def test_streaming_without_asking_for_usage_is_charged_the_real_usage(env):
    c = client(env, "bypass-stream")
    mark = env.mark()
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000, stream=True,
                                            extra_headers={"x-mock-reply-words": "400"}))
    # The client did not ask for usage and gets none (tollgate strips what it injected)...
    assert all(ch.usage is None for ch in chunks)
    (entry,) = env.new_entries(mark, 1)
    # ...but the provider's usage was read and charged.
    assert entry["usage_source"] == "provider"
    used = int(entry["total_tokens"])
    assert int(entry["completion_tokens"]) > 300
    left, probe = remaining(env, "bypass-stream")
    assert left == LIMIT - used - probe


def test_a_stream_without_any_usage_is_charged_what_was_streamed(env):
    c = client(env, "bypass-no-usage")
    mark = env.mark()
    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=1000, stream=True,
        extra_headers={"x-mock-reply-words": "400", "x-mock-no-usage": "1"}) if ch.choices)
    streamed = len(oracle.encoding("o200k_base").encode(text))
    assert streamed > 300
    (entry,) = env.new_entries(mark, 1)
    assert entry["usage_source"] == "counted"
    assert int(entry["completion_tokens"]) == streamed  # counted exactly (within budget)
    left, probe = remaining(env, "bypass-no-usage")
    assert left == LIMIT - int(entry["total_tokens"]) - probe


def test_a_client_that_hangs_up_mid_stream_is_charged_what_it_received(env):
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 1000, "stream": True}
    r = requests.post(env.base_url + "/v1/chat/completions", json=body, stream=True, timeout=30,
                      headers={"x-consumer-id": "bypass-abort", "x-mock-reply-words": "400",
                               "x-mock-chunk-delay-ms": "5"})
    got = b""
    for piece in r.iter_content(None):
        got += piece
        if got.count(b"\n\ndata: ") >= 40:
            break
    r.close()  # hang up before the end (and before any usage chunk)
    received = "".join(
        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for line in got.decode(errors="replace").split("\n")
        if line.startswith("data: {") and line.endswith("}"))
    received_tokens = len(oracle.encoding("o200k_base").encode(received))
    assert received_tokens > 10
    time.sleep(1.0)  # the abort reaches the upstream and the exchange is settled
    left, probe = remaining(env, "bypass-abort")
    charged = LIMIT - probe - left
    print(f"hang-up: charged {charged} tokens for {received_tokens} received")
    assert charged >= received_tokens, f"charged {charged} for {received_tokens} received tokens"


def test_n_choices_reserve_for_every_choice(env):
    c = client(env, "bypass-n")
    # 4 choices x 600 = 2400 > 2000: refused before forwarding, although one choice fits.
    before = env.mock.last()["seq"]
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=600, n=4)
    assert "2400 reserved" in str(err.value)
    assert env.mock.last()["seq"] == before, "never forwarded"
    # 2 x 600 fits and is reserved as 1200.
    r = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=600, n=2,
                                                    extra_headers={"x-mock-reply-words": "3"})
    assert r.status_code == 200
    prompt = r.parse().usage.prompt_tokens
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == LIMIT - prompt - 1200


def test_huge_max_tokens_is_refused_not_forwarded(env):
    c = client(env, "bypass-huge")
    before = env.mock.last()["seq"]
    for max_tokens in (LIMIT, 10**9, 2**63):
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=max_tokens)
    assert env.mock.last()["seq"] == before
    # Refusals cost nothing: the budget is untouched.
    left, probe = remaining(env, "bypass-huge")
    assert left == LIMIT - probe


def test_a_budget_once_spent_stays_spent_whatever_the_request_says(env):
    c = client(env, "bypass-spent")
    # Spend the whole budget with real completions, in smaller and smaller steps.
    spent = 0
    for step in (400, 50, 5, 1):
        for _ in range(40):
            try:
                r = c.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=step, extra_headers={"x-mock-reply-words": "400"})
            except openai.RateLimitError:
                break
            spent += r.parse().usage.total_tokens
    assert LIMIT - 20 < spent <= LIMIT
    # No shape of request gets through now.
    attempts = [
        dict(max_tokens=1),
        dict(max_tokens=1, stream=True),
        dict(max_tokens=1, n=1),
        dict(max_tokens=1, stream=True, stream_options={"include_usage": False}),
    ]
    for kw in attempts:
        with pytest.raises(openai.RateLimitError):
            out = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, **kw)
            if kw.get("stream"):
                list(out)
    # Without max_tokens the default reservation (100) applies: refused as well
    # once less than prompt + 100 is left.
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def _trusted_identity(doc):
    """The documented edge: drop client copies of x-consumer-id before anything
    runs, then set it from the credential (a stand-in for jwt_authn)."""
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


def test_forged_identity_headers_in_any_spelling_are_ignored(envoy_with):
    cfg = {"defaults": {"limits": {"consumer": {"header": "x-consumer-id"}, "rules": [
        {"name": "per-consumer", "key": ["consumer"], "window": "1h", "tokens": 500}]}}}
    e = envoy_with(cfg, name="bypass-identity", mutate=_trusted_identity)
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 300}).encode()

    def send(headers: list[tuple[str, str]]) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        try:
            conn.putrequest("POST", "/v1/chat/completions")
            for k, v in [("content-type", "application/json"), ("content-length", str(len(body)))] + headers:
                conn.putheader(k, v)
            conn.endheaders(body)
            r = conn.getresponse()
            r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()

    # The attacker spends its own budget...
    status, h = send([("x-api-key", "attacker"), ("x-mock-reply-words", "2000")])
    assert status == 200
    # ...then claims other identities: duplicated, re-cased, padded copies of the header.
    for forged in ([("x-consumer-id", "fresh-1")],
                   [("X-Consumer-ID", "fresh-2"), ("x-consumer-id", "fresh-3")],
                   [("x-consumer-id", " fresh-4 ")]):
        status, h = send([("x-api-key", "attacker")] + forged)
        assert status == 429, f"{forged}: the attacker escaped its limit"
    # The victim was never charged for any of it.
    status, h = send([("x-api-key", "victim")])
    assert status == 200
    assert int(h["x-ratelimit-remaining-tokens"]) > 500 - 300 - 50
    r = requests.get(e.admin_url + "/stats", timeout=5)
    assert "panicked" not in e.logs() and r.status_code == 200
