"""Token metering end to end: the official OpenAI and Anthropic SDKs through a real
Envoy 1.40 running tollgate.wasm, against the mock provider. Prompt counts are
checked against OpenAI's own tiktoken (offline), completion counts against the
provider's usage, and every output channel (headers, filter state in the access
log, Prometheus metrics, debug log) is read back from Envoy itself."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anthropic
import openai
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import oracle  # noqa: E402

# Every llm.* filter-state key (the default writes five; the assertions read them all).
ALL_FILTER_STATE = [
    "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
    "counted_prompt_tokens", "model", "response_model", "provider", "route", "api", "estimated",
    "usage_source",
]
CONFIG = {
    "defaults": {"max_request_bytes": 65536, "metering": {"filter_state": ALL_FILTER_STATE}},
    "routes": {"anthropic": {"provider": "anthropic"}},
}
MESSAGES = [
    {"role": "system", "content": "You are terse. Réponds en une phrase. 日本語も可。"},
    {"role": "user", "content": "How many tokens is this sentence, roughly? 🙂"},
]


@pytest.fixture(scope="module")
def env(envoy_with):
    return envoy_with(CONFIG, name="metering")


@pytest.fixture(scope="module")
def client(env):
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key="test", max_retries=0)


def one_entry(env, mark):
    (entry,) = env.new_entries(mark, 1)
    return entry


def token_counter(env, kind, model, route="openai", provider="openai"):
    return env.stats().get(
        "tollgate_gen_ai_client_token_usage",
        gen_ai_token_type=kind, gen_ai_request_model=model, route=route, gen_ai_provider_name=provider,
    )


def test_non_streaming_chat_headers_match_billed_usage_and_tiktoken(env, client):
    mark = env.mark()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    usage = raw.parse().usage
    expected_prompt = oracle.chat_prompt_tokens_gpt4o(MESSAGES)
    assert usage.prompt_tokens == expected_prompt, "mock bills what OpenAI's rule gives"
    h = raw.headers
    assert int(h["x-llm-prompt-tokens"]) == usage.prompt_tokens
    assert int(h["x-llm-completion-tokens"]) == usage.completion_tokens
    assert int(h["x-llm-total-tokens"]) == usage.total_tokens
    assert h["x-llm-model"] == "gpt-4o"
    assert "x-llm-tokens-estimated" not in h
    e = one_entry(env, mark)
    assert e["prompt_tokens"] == str(usage.prompt_tokens)
    assert e["completion_tokens"] == str(usage.completion_tokens)
    assert e["total_tokens"] == str(usage.total_tokens)
    assert e["counted_prompt_tokens"] == str(expected_prompt), "tollgate's own pre-forward count"
    assert e["usage_source"] == "provider" and e["estimated"] == "false"
    assert e["model"] == "gpt-4o"


def test_stream_usage_injection_is_invisible_to_the_sdk(env, client):
    mark = env.mark()
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert chunks, "stream delivered"
    assert all(c.usage is None for c in chunks), "no usage reached a client that did not ask"
    assert all(c.choices for c in chunks), "the usage-only chunk was removed"
    forwarded = env.mock.last_body()
    assert forwarded["stream_options"] == {"include_usage": True}, "tollgate asked the provider for usage"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    e = one_entry(env, mark)
    enc = oracle.encoding("o200k_base")
    assert e["usage_source"] == "provider"
    assert e["completion_tokens"] == str(len(enc.encode_ordinary(text)))
    assert e["prompt_tokens"] == str(oracle.chat_prompt_tokens_gpt4o(MESSAGES))


def test_stream_bytes_are_identical_to_what_the_provider_sends_without_injection(env):
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
    via = requests.post(env.base_url + "/v1/chat/completions", json=body, timeout=10)
    direct = requests.post(env.mock_url + "/v1/chat/completions", json=body, timeout=10)
    assert via.status_code == direct.status_code == 200

    def normalise(text):  # ids and timestamps differ per call; nothing else may
        out = []
        for line in text.split("\n"):
            if line.startswith("data: {"):
                v = json.loads(line[6:])
                v.pop("id", None)
                v.pop("created", None)
                line = "data: " + json.dumps(v, sort_keys=True)
            out.append(line)
        return "\n".join(out)

    assert '"usage"' not in via.text
    assert normalise(via.text) == normalise(direct.text)


def test_stream_with_usage_requested_keeps_it(env, client):
    mark = env.mark()
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and not chunks[-1].choices
    e = one_entry(env, mark)
    assert e["prompt_tokens"] == str(usage[0].prompt_tokens)
    assert e["completion_tokens"] == str(usage[0].completion_tokens)


def test_stream_without_any_usage_is_counted_from_deltas(env, client):
    mark = env.mark()
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, extra_headers={"x-mock-no-usage": "1"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    e = one_entry(env, mark)
    assert e["usage_source"] == "counted"
    assert e["estimated"] == "true"
    enc = oracle.encoding("o200k_base")
    assert e["completion_tokens"] == str(len(enc.encode_ordinary(text)))
    assert e["prompt_tokens"] == str(oracle.chat_prompt_tokens_gpt4o(MESSAGES))


def test_embeddings_and_completions_are_metered(env, client):
    mark = env.mark()
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["alpha beta", "γάμμα"])
    usage = raw.parse().usage
    enc = oracle.encoding("cl100k_base")
    assert usage.prompt_tokens == len(enc.encode_ordinary("alpha beta")) + len(enc.encode_ordinary("γάμμα"))
    assert raw.headers["x-llm-prompt-tokens"] == str(usage.prompt_tokens)
    e = one_entry(env, mark)
    assert e["counted_prompt_tokens"] == str(usage.prompt_tokens)

    mark = env.mark()
    raw = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    usage = raw.parse().usage
    assert raw.headers["x-llm-prompt-tokens"] == str(usage.prompt_tokens)
    assert raw.headers["x-llm-completion-tokens"] == str(usage.completion_tokens)
    e = one_entry(env, mark)
    assert e["counted_prompt_tokens"] == str(len(enc.encode_ordinary("Say this is a test")))


def test_anthropic_sdk_usage_is_mapped(env):
    c = anthropic.Anthropic(base_url=env.base_url, api_key="test", max_retries=0)
    mark = env.mark()
    raw = c.messages.with_raw_response.create(
        model="claude-sonnet-5-5", max_tokens=64, messages=[{"role": "user", "content": "Hello, Claude"}])
    msg = raw.parse()
    u = msg.usage
    prompt = u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
    assert raw.headers["x-llm-prompt-tokens"] == str(prompt)
    assert raw.headers["x-llm-completion-tokens"] == str(u.output_tokens)
    e = one_entry(env, mark)
    assert e["usage_source"] == "provider" and e["estimated"] == "false"
    assert e["route"] == "anthropic" and e["provider"] == "anthropic"

    mark = env.mark()
    with c.messages.stream(model="claude-sonnet-5-5", max_tokens=64,
                           messages=[{"role": "user", "content": "Stream to me"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text
    e = one_entry(env, mark)
    assert e["completion_tokens"] == str(final.usage.output_tokens)
    assert e["prompt_tokens"] == str(final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
                                     + (final.usage.cache_creation_input_tokens or 0))
    assert int(e["counted_prompt_tokens"]) > 0  # an estimate for Claude, labelled as such below
    assert token_counter(env, "output", "claude-sonnet-5-5", route="anthropic", provider="anthropic") > 0


def test_prometheus_counters_add_up_per_request(env, client):
    before_in = token_counter(env, "input", "gpt-4o-mini")
    before_out = token_counter(env, "output", "gpt-4o-mini")
    usage = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and token_counter(env, "input", "gpt-4o-mini") == before_in:
        time.sleep(0.1)
    assert token_counter(env, "input", "gpt-4o-mini") - before_in == usage.prompt_tokens
    assert token_counter(env, "output", "gpt-4o-mini") - before_out == usage.completion_tokens


def test_oversized_body_gets_413_in_each_dialect(env, client):
    big = "x" * 70000
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": big}])
    assert err.value.status_code == 413
    assert err.value.body["code"] == "request_too_large"
    c = anthropic.Anthropic(base_url=env.base_url, api_key="test", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as err:
        c.messages.create(model="claude-sonnet-5-5", max_tokens=5, messages=[{"role": "user", "content": big}])
    assert err.value.status_code == 413
    assert err.value.body["error"]["type"] == "request_too_large"


def test_non_json_body_passes_through_unmetered(env):
    mark = env.mark()
    r = requests.post(env.base_url + "/v1/chat/completions", data=b"\xff not json {",
                      headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400, "the provider's own error reached the client"
    assert env.mock.last()["body"] != "", "the body was forwarded"
    e = one_entry(env, mark)
    assert e["prompt_tokens"] in ("-", None, "")


def test_debug_log_line_per_request(env, client):
    assert requests.post(env.admin_url + "/logging?wasm=debug", timeout=5).status_code == 200
    try:
        # tollgate reads the log level on its 1 s tick (not per request): a change
        # shows within a tick, so send until the line comes (bounded).
        deadline = time.monotonic() + 5
        lines = []
        while time.monotonic() < deadline and not lines:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-test": "log"})
            time.sleep(0.25)
            lines = [l for l in env.logs().splitlines() if '"event":"tollgate.exchange"' in l]
        assert lines, "no debug line within 5 s of turning debug on"
        rec = json.loads(lines[-1][lines[-1].index("{"):])
        assert rec["model"] == "gpt-4o" and rec["prompt_tokens"] > 0 and rec["usage_source"] == "provider"
    finally:
        requests.post(env.admin_url + "/logging?wasm=info", timeout=5)


def test_invalid_config_is_refused_with_its_path(envoy_with):
    from harness import HarnessError

    with pytest.raises(HarnessError) as err:
        envoy_with({"routes": {"chat": {"metering": {"tokenize_byte_budget": "lots"}}}}, name="badconfig")
    assert "routes.chat.metering.tokenize_byte_budget" in str(err.value)
