"""Smoke: Envoy (with and without tollgate) in front of the mock provider,
driven by raw HTTP and by the official openai / anthropic SDKs."""
from __future__ import annotations

import json
import time

import anthropic
import pytest
import requests
from openai import OpenAI

CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there, how are you today? Ça va?"},
    ],
}


def sse_events(resp: requests.Response, timeout: float = 20.0):
    """Yields (arrival time, data) for each `data:` line of an SSE response."""
    deadline = time.monotonic() + timeout
    for line in resp.iter_lines(decode_unicode=True):
        if time.monotonic() > deadline:
            raise TimeoutError("SSE stream too slow")
        if line and line.startswith("data: "):
            yield time.monotonic(), line[len("data: "):]


# ---------------------------------------------------------------- plain Envoy


def test_plain_envoy_proxies_to_mock(plain_envoy, mock):
    mark = plain_envoy.mark()
    r = requests.post(plain_envoy.base_url + "/v1/chat/completions", json=CHAT,
                      headers={"x-mock-reply-words": "7"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert len(body["choices"][0]["message"]["content"].split()) == 7
    seen = mock.last()
    assert seen["path"] == "/v1/chat/completions"
    assert json.loads(seen["body"]) == CHAT
    # Envoy really was in the path.
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert "x-envoy-expected-rq-timeout-ms" in seen["headers"]
    (entry,) = plain_envoy.new_entries(mark)
    assert entry["route"] == "openai" and entry["status"] == 200 and entry["upstream_cluster"] == "mock_llm"


def test_plain_envoy_routes_by_name(plain_envoy, mock):
    mark = plain_envoy.mark()
    r = requests.post(plain_envoy.base_url + "/v1/messages",
                      json={"model": "claude-opus-4-5", "max_tokens": 50,
                            "messages": [{"role": "user", "content": "Hi"}]}, timeout=10)
    assert r.status_code == 200 and r.json()["type"] == "message"
    r = requests.get(plain_envoy.base_url + "/unmetered/v1/models", timeout=10)
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert mock.last()["path"] == "/v1/models"  # prefix_rewrite applied
    routes = [e["route"] for e in plain_envoy.new_entries(mark, 2)]
    assert routes == ["anthropic", "unmetered"]


# ---------------------------------------------------------------- tollgate


def test_tollgate_vm_is_running(envoy):
    stats = envoy.admin_stats()
    # Canary VM + one per worker were created; at least the worker's is live.
    assert stats.get("wasm.envoy.wasm.runtime.v8.created", 0) >= 2, stats
    assert stats.get("wasm.envoy.wasm.runtime.v8.active", 0) >= 1, stats
    assert stats.get("wasm.tollgate.vm_reload_failure", 0) == 0
    log = envoy.logs()
    assert "Wasm VM failed" not in log and "Unable to create Wasm" not in log


def test_request_passes_through_tollgate(envoy, mock):
    r = requests.post(envoy.base_url + "/v1/chat/completions", json=CHAT,
                      headers={"x-mock-reply-words": "12"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "gpt-4o"
    assert len(body["choices"][0]["message"]["content"].split()) == 12
    forwarded = mock.last_body()
    assert forwarded["messages"] == CHAT["messages"]
    assert forwarded["model"] == "gpt-4o"


def test_provider_errors_pass_through(envoy):
    r = requests.post(envoy.base_url + "/v1/chat/completions", json=CHAT,
                      headers={"x-mock-status": "429"}, timeout=10)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_openai_sdk_non_stream(envoy, mock):
    client = OpenAI(base_url=envoy.base_url + "/v1", api_key="test", max_retries=0, timeout=20)
    resp = client.chat.completions.create(**CHAT)
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    u = resp.usage
    assert u.prompt_tokens > 10 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert mock.last()["headers"]["authorization"] == "Bearer test"


def test_openai_sdk_stream(envoy, mock):
    client = OpenAI(base_url=envoy.base_url + "/v1", api_key="test", max_retries=0, timeout=20)
    stream = client.chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-reply-words": "30"},
    )
    text, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    reply = "".join(text)
    assert len(reply.split()) == 30
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0
    # The non-stream reply to the same messages is the same text.
    again = OpenAI(base_url=envoy.base_url + "/v1", api_key="test", max_retries=0, timeout=20)
    same = again.chat.completions.create(**CHAT, extra_headers={"x-mock-reply-words": "30"})
    assert same.choices[0].message.content == reply
    assert same.usage.completion_tokens == usage.completion_tokens


def test_stream_is_not_buffered(envoy):
    # 6 events 300 ms apart: the first must arrive long before the last.
    with requests.post(envoy.base_url + "/v1/chat/completions",
                       json={**CHAT, "stream": True},
                       headers={"x-mock-reply-words": "4", "x-mock-chunk-delay-ms": "300"},
                       stream=True, timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        times = [t for t, data in sse_events(r)]
    assert len(times) == 7  # role, 4 words, finish, [DONE]
    assert times[-1] - times[0] > 1.0


def test_anthropic_sdk(envoy, mock):
    client = anthropic.Anthropic(base_url=envoy.base_url, api_key="test", max_retries=0, timeout=20)
    msg = client.messages.create(
        model="claude-opus-4-5", max_tokens=200, system="Be brief.",
        messages=[{"role": "user", "content": "Hi Claude, what is new?"}],
        extra_headers={"x-mock-reply-words": "9"},
    )
    assert msg.stop_reason == "end_turn"
    assert len(msg.content[0].text.split()) == 9
    assert msg.usage.input_tokens > 5 and msg.usage.output_tokens > 0
    h = mock.last()["headers"]
    assert h.get("x-api-key") == "test" or h.get("authorization") == "Bearer test"
    assert "anthropic-version" in h

    with client.messages.stream(
        model="claude-opus-4-5", max_tokens=200, system="Be brief.",
        messages=[{"role": "user", "content": "Hi Claude, what is new?"}],
        extra_headers={"x-mock-reply-words": "9"},
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == msg.content[0].text
    assert final.usage.output_tokens == msg.usage.output_tokens
    assert final.usage.input_tokens == msg.usage.input_tokens


def test_unmetered_route_bypasses_tollgate(envoy, mock):
    mark = envoy.mark()
    r = requests.post(envoy.base_url + "/unmetered/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200
    assert mock.last()["path"] == "/v1/chat/completions"
    (entry,) = envoy.new_entries(mark)
    assert entry["route"] == "unmetered"
    # tollgate never ran on this route, so it recorded nothing.
    assert entry["prompt_tokens"] in (None, "-")


def test_token_counts_reach_stats_and_access_log(envoy):
    # A model no other test uses, so the counters start at zero.
    body = {**CHAT, "model": "gpt-4o-mini"}
    mark = envoy.mark()
    r = requests.post(envoy.base_url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200
    usage = r.json()["usage"]
    (entry,) = envoy.new_entries(mark)
    assert entry["model"] == "gpt-4o-mini"
    assert int(entry["prompt_tokens"]) == usage["prompt_tokens"]
    assert int(entry["completion_tokens"]) == usage["completion_tokens"]
    assert int(entry["total_tokens"]) == usage["total_tokens"]
    # stats_tags turn the name-encoded labels into Prometheus labels.
    stats = envoy.stats()
    labels = dict(gen_ai_request_model="gpt-4o-mini", route="openai", gen_ai_provider_name="openai")
    assert stats.get("tollgate_gen_ai_client_token_usage", gen_ai_token_type="input", **labels) == usage["prompt_tokens"]
    assert stats.get("tollgate_gen_ai_client_token_usage", gen_ai_token_type="output", **labels) == usage["completion_tokens"]


def test_stream_request_is_rewritten_for_usage(envoy, mock):
    # The client did not ask for usage; what reached the provider did.
    mark = envoy.mark()
    with requests.post(envoy.base_url + "/v1/chat/completions", json={**CHAT, "stream": True},
                       headers={"accept-encoding": "gzip"}, stream=True, timeout=20) as r:
        assert r.status_code == 200
        datas = [d for _, d in sse_events(r)]
    assert datas[-1] == "[DONE]"
    seen = mock.last()
    assert json.loads(seen["body"])["stream_options"]["include_usage"] is True
    assert "accept-encoding" not in seen["headers"]
    (entry,) = envoy.new_entries(mark)
    assert int(entry["completion_tokens"]) > 0 and entry["estimated"] == "false"
