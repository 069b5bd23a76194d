"""Provider rewriting end to end: the official `openai` Python SDK, pointed at a real
Envoy 1.40 running tollgate.wasm, talks to an Anthropic route (translated to the
Messages API and back), an OpenAI-compatible route and an Azure OpenAI route. The
mock provider answers in each provider's documented wire format and validates
what it receives (content blocks, tool_use/tool_result pairing, max_tokens).

What is checked: the answer and its usage as the SDK sees them, cross-checked
against the mock's own Anthropic answer for the same translated request; what
reached the provider (path, authority, auth headers, cluster); metrics and access
log carrying the real provider and model; errors keeping the provider's message."""
from __future__ import annotations

import copy
import json

import openai
import pytest
import requests

import harness

ANTHROPIC_KEY = "sk-ant-e2e-from-env"
CONFIG = {
    "defaults": {"metering": {"filter_state": [
        "prompt_tokens", "completion_tokens", "cached_tokens", "model", "provider", "usage_source"]}},
    "routes": {
        "claude": {"provider": {
            "kind": "anthropic", "api_key": {"env": "TG_ANTHROPIC_KEY"},
            "endpoint": {"authority": "api.anthropic.test", "cluster": "mock_anthropic"},
            "model_map": {"fast": "claude-haiku-4-5"},
            "anthropic": {"max_tokens_default": 256}}},
        "mistral": {"provider": {
            "kind": "openai_compatible", "name": "mistral", "api_key": {"inline": "sk-mistral-inline"},
            "endpoint": {"authority": "api.mistral.test", "base_path": "/v1", "cluster": "mock_compat"},
            "model_map": {"small": "mistral-small-latest"}}},
        "mixed": {
            "provider": {"kind": "openai_compatible", "name": "mistral",
                         "endpoint": {"authority": "api.mistral.test", "cluster": "mock_compat"}},
            "providers": [{"kind": "anthropic", "models": ["claude-*", "fast"],
                           "api_key": {"env": "TG_ANTHROPIC_KEY"}, "model_map": {"fast": "claude-haiku-4-5"},
                           "endpoint": {"authority": "api.anthropic.test", "cluster": "mock_anthropic"}}]},
        "azure": {"provider": {
            "kind": "azure_openai", "api_key": {"inline": "azure-key-1"},
            "endpoint": {"authority": "myres.openai.azure.com", "cluster": "mock_compat"},
            "azure": {"api_version": "2024-10-21"}}},
    }
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def mutate(doc):
    """Two extra clusters (same mock, other names) and the provider routes. The first
    route matches only once tollgate set `x-tollgate-cluster`: it proves Envoy
    picks the route again after the filter rewrote the request headers."""
    clusters = doc["static_resources"]["clusters"]
    base = next(c for c in clusters if c["name"] == "mock_llm")
    for name in ("mock_anthropic", "mock_compat"):
        c = copy.deepcopy(base)
        c["name"] = name
        c["load_assignment"]["cluster_name"] = name
        clusters.append(c)
    routes = harness.hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    ours = [
        {"name": "provider_dispatch",
         "match": {"prefix": "/", "headers": [{"name": "x-tollgate-cluster", "present_match": True}]},
         "route": {"cluster_header": "x-tollgate-cluster", "timeout": "300s"},
         # Chosen the cluster; the provider need not learn our cluster names.
         "request_headers_to_remove": ["x-tollgate-cluster"]},
        {"name": "claude", "match": {"prefix": "/claude/"}, "route": {"cluster": "mock_llm", "timeout": "300s"}},
        {"name": "mistral", "match": {"prefix": "/mistral/"}, "route": {"cluster": "mock_llm", "timeout": "300s"}},
        {"name": "azure", "match": {"prefix": "/azure/"}, "route": {"cluster": "mock_llm", "timeout": "300s"}},
        {"name": "mixed", "match": {"prefix": "/mixed/"}, "route": {"cluster": "mock_llm", "timeout": "300s"}},
    ]
    routes[:0] = ours
    # The API key comes from the VM's environment (WASI environ), filled by Envoy.
    for f in harness.hcm(doc)["http_filters"]:
        if f.get("name") == "tollgate":
            f["typed_config"]["config"]["vm_config"]["environment_variables"] = {
                "key_values": {"TG_ANTHROPIC_KEY": ANTHROPIC_KEY}}


@pytest.fixture(scope="module")
def env(envoy_with, wasm):
    return envoy_with(CONFIG, name="providers", mutate=mutate)


def client(env, prefix: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{env.base_url}/{prefix}/v1", api_key="client-key", max_retries=0)


def mock_direct(env, path: str, body: dict, headers: dict | None = None) -> dict:
    """What the mock answers for `body` when called directly (it is deterministic)."""
    r = requests.post(env.mock.url + path, json=body, headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


MESSAGES = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Say hello to the gateway."}]


def test_anthropic_non_streaming_answer_usage_and_upstream_request(env):
    c = client(env, "claude")
    mark = env.mark()
    r = c.chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES, temperature=0.3,
        extra_headers={"x-mock-cached-tokens": "5", "x-mock-cache-creation-tokens": "2"})
    resp = r.parse()
    seen = env.mock.last()
    # What reached the provider.
    assert seen["path"] == "/v1/messages"
    h = seen["headers"]
    assert h["host"] == "api.anthropic.test"
    assert h["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in h
    assert h["anthropic-version"] == "2023-06-01"
    assert "x-tollgate-cluster" not in h  # used for the route, removed before the provider
    sent = json.loads(seen["body"])
    assert sent["model"] == "claude-haiku-4-5"
    assert sent["system"] == "Answer briefly."
    assert sent["max_tokens"] == 256
    assert sent["messages"] == [{"role": "user", "content": "Say hello to the gateway."}]
    # The answer, against the mock's own Anthropic answer for the same request.
    raw = mock_direct(env, "/v1/messages", sent,
                      {"x-mock-cached-tokens": "5", "x-mock-cache-creation-tokens": "2"})
    assert resp.object == "chat.completion"
    assert resp.model == raw["model"] == "claude-haiku-4-5"
    assert resp.choices[0].message.content == raw["content"][0]["text"]
    assert resp.choices[0].finish_reason == "stop"
    u = raw["usage"]
    assert resp.usage.prompt_tokens == u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
    assert resp.usage.prompt_tokens_details.cached_tokens == 5
    assert resp.usage.completion_tokens == u["output_tokens"]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # Metering saw the OpenAI-shaped answer: headers, access log, metrics.
    assert int(r.headers["x-llm-prompt-tokens"]) == resp.usage.prompt_tokens
    assert int(r.headers["x-llm-completion-tokens"]) == resp.usage.completion_tokens
    entry = env.new_entries(mark)[0]
    assert entry["route"] == "provider_dispatch", entry  # Envoy picked the route again
    assert entry["upstream_cluster"] == "mock_anthropic"
    assert entry["provider"] == "anthropic"
    assert entry["model"] == "claude-haiku-4-5"
    assert int(entry["prompt_tokens"]) == resp.usage.prompt_tokens
    stats = env.stats()
    assert stats.get("tollgate_gen_ai_client_token_usage", gen_ai_token_type="output",
                     gen_ai_request_model="claude-haiku-4-5", route="claude",
                     gen_ai_provider_name="anthropic") >= resp.usage.completion_tokens


def test_anthropic_tools_round_trip_non_streaming(env):
    c = client(env, "claude")
    first = c.chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="required", max_tokens=100)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args.get("city"), str)
    sent = env.mock.last_body()
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["tools"][0]["input_schema"]["required"] == ["city"]
    # Second turn: the tool result goes back; the mock checks the pairing.
    second = c.chat.completions.create(
        model="claude-sonnet-4-5", max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    sent = env.mock.last_body()
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}]


def test_anthropic_streaming_with_usage(env):
    c = client(env, "claude")
    chunks = list(c.chat.completions.create(
        model="fast", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-cached-tokens": "3"}))
    sent = env.mock.last_body()
    assert sent["stream"] is True
    raw = mock_direct(env, "/v1/messages", {**sent, "stream": False}, {"x-mock-cached-tokens": "3"})
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == raw["content"][0]["text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    u = raw["usage"]
    assert chunks[-1].usage.prompt_tokens == u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3
    assert chunks[-1].usage.completion_tokens == u["output_tokens"]
    assert all(ch.model == "claude-haiku-4-5" for ch in chunks)


def test_anthropic_streaming_without_usage_still_meters(env):
    c = client(env, "claude")
    mark = env.mark()
    chunks = list(c.chat.completions.create(model="fast", messages=MESSAGES, stream=True))
    assert all(ch.usage is None for ch in chunks), "no usage chunk for a client that did not ask"
    assert chunks[-1].choices[0].finish_reason == "stop"
    raw = mock_direct(env, "/v1/messages", {**env.mock.last_body(), "stream": False})
    entry = env.new_entries(mark)[0]
    assert int(entry["completion_tokens"]) == raw["usage"]["output_tokens"]
    assert entry["usage_source"] == "provider"


def test_anthropic_streaming_tool_call(env):
    c = client(env, "claude")
    chunks = list(c.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].id.startswith("toolu_") and calls[0].function.name == "get_weather"
    args = "".join(tc.function.arguments or "" for tc in calls)
    assert isinstance(json.loads(args)["city"], str)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens > 0


def test_anthropic_route_with_metering_off_translates_both_ways(envoy_with, wasm):
    """A route that only rewrites (metering off, no limits): tollgate counts nothing,
    but the translation is unchanged, the client still gets OpenAI usage from the
    provider's, and a stream hides or keeps the usage chunk as the client asked."""
    cfg = {"defaults": {"metering": {"enabled": False}},
           "routes": {"claude": CONFIG["routes"]["claude"]}}
    env = envoy_with(cfg, name="providers-unmetered", mutate=mutate)
    c = client(env, "claude")
    r = c.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    resp = r.parse()
    sent = env.mock.last_body()
    assert (sent["model"], sent["system"], sent["max_tokens"]) == ("claude-haiku-4-5", "Answer briefly.", 256)
    raw = mock_direct(env, "/v1/messages", sent)
    assert resp.choices[0].message.content == raw["content"][0]["text"]
    assert resp.usage.completion_tokens == raw["usage"]["output_tokens"]
    assert resp.usage.prompt_tokens == raw["usage"]["input_tokens"]
    assert not [h for h in r.headers if h.lower().startswith("x-llm-")], dict(r.headers)

    chunks = list(c.chat.completions.create(model="fast", messages=MESSAGES, stream=True))
    assert all(ch.usage is None for ch in chunks), "no usage chunk for a client that did not ask"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == raw["content"][0]["text"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    chunks = list(c.chat.completions.create(model="fast", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == raw["usage"]["output_tokens"]


def test_anthropic_images_reach_the_provider_as_sources(env):
    c = client(env, "claude")
    c.chat.completions.create(model="fast", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    blocks = env.mock.last_body()["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


def test_anthropic_extended_thinking_round_trip(env):
    """`reasoning_effort` becomes Anthropic `thinking`; the answer's thinking comes
    back as `reasoning_content` + `thinking_blocks` (signatures kept, as LiteLLM
    returns them), and those blocks sent back on the next turn reach Anthropic
    first in the assistant turn, as its API requires."""
    c = client(env, "claude")
    hdr = {"x-mock-redacted-thinking": "1"}
    mark = env.mark()
    r = c.chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES, reasoning_effort="low", extra_headers=hdr)
    resp = r.parse()
    sent = env.mock.last_body()
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["max_tokens"] == 256 + 1024  # the route default keeps its room for the answer
    raw = mock_direct(env, "/v1/messages", sent, hdr)
    msg = resp.choices[0].message
    extra = msg.model_extra
    assert msg.content == raw["content"][2]["text"]
    assert extra["reasoning_content"] == raw["content"][0]["thinking"]
    blocks = extra["thinking_blocks"]
    assert [b["type"] for b in blocks] == ["thinking", "redacted_thinking"]
    assert blocks[0]["thinking"] == raw["content"][0]["thinking"]
    assert blocks[0]["signature"].startswith("EqQB") and blocks[1]["data"].startswith("EmwK")
    # Thinking is billed as output; metering and the headers agree with the SDK.
    assert resp.usage.completion_tokens == raw["usage"]["output_tokens"]
    assert int(r.headers["x-llm-completion-tokens"]) == resp.usage.completion_tokens
    assert int(env.new_entries(mark)[0]["completion_tokens"]) == resp.usage.completion_tokens
    # Next turn: the SDK's own message (extras included) goes back as it came.
    c.chat.completions.create(model="fast", reasoning_effort="low", messages=[
        *MESSAGES, msg.model_dump(exclude_none=True), {"role": "user", "content": "And once more?"}])
    turn = env.mock.last_body()["messages"][1]
    assert turn["role"] == "assistant"
    assert turn["content"][0] == {"type": "thinking", "thinking": blocks[0]["thinking"],
                                  "signature": blocks[0]["signature"]}
    assert turn["content"][1] == {"type": "redacted_thinking", "data": blocks[1]["data"]}
    assert turn["content"][2] == {"type": "text", "text": msg.content}


def test_anthropic_extended_thinking_streams_as_reasoning_deltas(env):
    c = client(env, "claude")
    chunks = list(c.chat.completions.create(
        model="fast", messages=MESSAGES, reasoning_effort="medium", max_completion_tokens=4000,
        stream=True, stream_options={"include_usage": True}))
    sent = env.mock.last_body()
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048} and sent["max_tokens"] == 4000
    raw = mock_direct(env, "/v1/messages", {**sent, "stream": False})
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == raw["content"][0]["thinking"]
    assert "".join(d.content or "" for d in deltas) == raw["content"][1]["text"]
    frags = [b for d in deltas for b in (d.model_extra or {}).get("thinking_blocks") or []]
    assert "".join(b["thinking"] for b in frags) == reasoning
    assert [b["signature"] for b in frags if b.get("signature")][0].startswith("EqQB")
    assert chunks[-1].usage.completion_tokens == raw["usage"]["output_tokens"]


def test_anthropic_logprobs_are_refused_not_faked(env):
    c = client(env, "claude")
    env.mock.reset()
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="fast", messages=MESSAGES, logprobs=True, top_logprobs=2)
    assert "Anthropic does not return log probabilities" in e.value.response.json()["error"]["message"]
    assert len(env.mock.requests()) == 0
    # `logprobs: false` asks for nothing and goes through.
    assert c.chat.completions.create(model="fast", messages=MESSAGES, logprobs=False).choices[0].message.content


@pytest.mark.parametrize("status,exc,needle", [
    (429, openai.RateLimitError, "per-minute rate limit"),
    (401, openai.AuthenticationError, "invalid x-api-key"),
    (529, openai.InternalServerError, "Overloaded"),
])
def test_anthropic_errors_are_openai_shaped_with_the_providers_message(env, status, exc, needle):
    c = client(env, "claude")
    with pytest.raises(exc) as e:
        c.chat.completions.create(model="fast", messages=MESSAGES,
                                  extra_headers={"x-mock-status": str(status)})
    body = e.value.response.json()
    assert needle in body["error"]["message"]
    assert e.value.status_code == status


def test_a_2xx_answer_that_is_not_a_messages_object_is_a_502_not_a_200(env):
    """The provider said 200 but sent half a JSON document: the client must not get a
    200 carrying an error (the SDK would parse it as a completion)."""
    c = client(env, "claude")
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="fast", messages=MESSAGES,
                                  extra_headers={"x-mock-fault": "truncate-json"})
    assert e.value.status_code == 502
    assert "not a Messages object" in e.value.response.json()["error"]["message"]


def test_untranslatable_request_is_refused_locally(env):
    c = client(env, "claude")
    env.mock.reset()  # the mock keeps only its last 256 requests
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="fast", messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}])
    assert "messages[0].content[0].type" in e.value.response.json()["error"]["message"]
    assert len(env.mock.requests()) == 0


def test_openai_compatible_route_rewrites_path_authority_auth_and_model(env):
    c = client(env, "mistral")
    r = c.chat.completions.create(model="small", messages=MESSAGES, tools=[WEATHER_TOOL])
    seen = env.mock.last()
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["host"] == "api.mistral.test"
    assert seen["headers"]["authorization"] == "Bearer sk-mistral-inline"
    assert json.loads(seen["body"])["model"] == "mistral-small-latest"
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert r.usage.prompt_tokens > 0
    chunks = list(c.chat.completions.create(model="small", messages=MESSAGES, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert all(ch.usage is None for ch in chunks)


def test_one_route_picks_the_provider_from_the_model(env):
    c = client(env, "mixed")
    mark = env.mark()
    a = c.chat.completions.create(model="fast", messages=MESSAGES, stream=True,
                                  stream_options={"include_usage": True})
    chunks = list(a)
    seen = env.mock.last()
    assert seen["path"] == "/v1/messages" and seen["headers"]["host"] == "api.anthropic.test"
    assert seen["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert chunks[-1].usage.completion_tokens > 0
    o = c.chat.completions.create(model="mistral-small-latest", messages=MESSAGES)
    seen = env.mock.last()
    assert seen["path"] == "/v1/chat/completions" and seen["headers"]["host"] == "api.mistral.test"
    assert o.usage.prompt_tokens > 0
    entries = env.new_entries(mark, count=2)
    assert [(e["provider"], e["upstream_cluster"]) for e in entries] == [
        ("anthropic", "mock_anthropic"), ("mistral", "mock_compat")]


def test_azure_route_puts_the_deployment_in_the_path(env):
    c = client(env, "azure")
    r = c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    seen = env.mock.last()
    assert seen["path"] == "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    assert seen["headers"]["api-key"] == "azure-key-1"
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["host"] == "myres.openai.azure.com"
    assert r.choices[0].message.content


# The mock's Anthropic side, checked with Anthropic's own SDK (no Envoy): the wire
# format the translation is tested against must be what the reference client parses.

import anthropic  # noqa: E402

ANTHROPIC_TOOL = {"name": "get_weather", "description": "Current weather for a city",
                  "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_mock_anthropic_wire_format_parses_with_the_anthropic_sdk(mock):
    c = anthropic.Anthropic(base_url=mock.url, api_key="k", max_retries=0)
    m = c.messages.create(model="claude-haiku-4-5", max_tokens=100, tools=[ANTHROPIC_TOOL],
                          tool_choice={"type": "any"}, messages=[{"role": "user", "content": "Weather in Rome?"}])
    assert m.stop_reason == "tool_use"
    use = next(b for b in m.content if b.type == "tool_use")
    assert isinstance(use.input["city"], str)
    with c.messages.stream(model="claude-haiku-4-5", max_tokens=100, tools=[ANTHROPIC_TOOL],
                           tool_choice={"type": "any"},
                           messages=[{"role": "user", "content": "Weather in Rome?"}]) as s:
        final = s.get_final_message()
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert isinstance(streamed.input["city"], str)
    assert final.usage.output_tokens > 0 and final.stop_reason == "tool_use"
    # The tool result goes back; the mock checks the pairing like the API does.
    ok = c.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "20 C"}]}])
    assert ok.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}])
    assert "tool_use_id" in e.value.message
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model="claude-haiku-4-5", max_tokens=50,
                          messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}])


def test_limits_apply_to_translated_traffic(envoy_with, wasm):
    """A token limit on an Anthropic route: admission counts the OpenAI-dialect prompt,
    the true-up uses the translated (OpenAI-terms) usage, and the refusal is an OpenAI
    429 that never reaches the provider."""
    cfg = copy.deepcopy(CONFIG)
    cfg["routes"]["claude"]["limits"] = {
        "consumer": {"header": "x-consumer-id"},
        "rules": [{"name": "tiny", "key": ["consumer"], "window": "1h", "tokens": 400}]}
    env = envoy_with(cfg, name="providers-limits", mutate=mutate)
    c = openai.OpenAI(base_url=f"{env.base_url}/claude/v1", api_key="k", max_retries=0,
                      default_headers={"x-consumer-id": "limit-e2e"})
    r = c.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES, max_tokens=100)
    assert r.status_code == 200
    used = r.parse().usage.total_tokens
    assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 400 - r.parse().usage.prompt_tokens
    env.mock.reset()  # the mock keeps only its last 256 requests
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=400 - used + 50)
    assert e.value.response.json()["error"]["code"] == "rate_limit_exceeded", e.value.response.json()
    assert "tiny" in e.value.response.json()["error"]["message"]
    assert len(env.mock.requests()) == 0, "refused before translation and forwarding"


def test_host_fallback_retries_a_429_on_a_second_cluster(envoy_with, wasm, monkeypatch):
    """Envoy's own fallback (docs/providers.md): the route's retry policy retries a 429
    once, and an aggregate cluster with the previous_priorities retry priority sends
    the retry to the second cluster. The primary cluster's upstream filter makes the
    mock answer 429 there only. The retry resends the request tollgate already
    translated, and the client gets the fallback's translated answer."""
    def fallback(doc):
        mutate(doc)
        clusters = doc["static_resources"]["clusters"]
        base = next(c for c in clusters if c["name"] == "mock_llm")
        # The primary "provider": a listener of this Envoy answering Anthropic's 429.
        port = harness.free_port()
        limited = {"type": "error", "error": {"type": "rate_limit_error", "message": "primary is rate limited"}}
        doc["static_resources"]["listeners"].append({
            "name": "primary_429",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "primary_429",
                    "route_config": {"virtual_hosts": [{"name": "p", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 429, "body": {"inline_string": json.dumps(limited)}}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})
        primary = copy.deepcopy(base)
        primary["name"] = primary["load_assignment"]["cluster_name"] = "primary"
        primary["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"] = port
        second = copy.deepcopy(base)
        second["name"] = second["load_assignment"]["cluster_name"] = "secondary"
        clusters += [primary, second, {
            "name": "with_fallback", "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": ["primary", "secondary"]}}}]
        for r in harness.hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]:
            if r.get("name") == "provider_dispatch":
                r["route"]["retry_policy"] = {
                    "retry_on": "retriable-status-codes,5xx", "retriable_status_codes": [429], "num_retries": 1,
                    "retry_priority": {"name": "envoy.retry_priorities.previous_priorities", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                        "update_frequency": 1}}}

        # This Envoy passes the key from its own process environment (host_env_keys).
        for f in harness.hcm(doc)["http_filters"]:
            if f.get("name") == "tollgate":
                f["typed_config"]["config"]["vm_config"]["environment_variables"] = {
                    "host_env_keys": ["TG_ANTHROPIC_HOST_KEY"]}

    monkeypatch.setenv("TG_ANTHROPIC_HOST_KEY", "sk-ant-from-envoy-process-env")
    cfg = copy.deepcopy(CONFIG)
    cfg["routes"]["claude"]["provider"]["endpoint"]["cluster"] = "with_fallback"
    cfg["routes"]["claude"]["provider"]["api_key"] = {"env": "TG_ANTHROPIC_HOST_KEY"}
    del cfg["routes"]["mixed"]  # its key is in key_values, which this Envoy does not set
    env = envoy_with(cfg, name="providers-fallback", mutate=fallback)
    c = client(env, "claude")
    # The mock keeps its last 256 requests only: start from an empty history.
    env.mock.reset()
    r = c.chat.completions.create(model="fast", messages=MESSAGES)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    seen = env.mock.requests()
    assert len(seen) == 1 and seen[0]["path"] == "/v1/messages", seen
    assert seen[0]["headers"]["x-api-key"] == "sk-ant-from-envoy-process-env"
    stats = env.admin_stats()
    # One attempt on each member cluster; the 429 was retried and the retry succeeded.
    assert stats.get("cluster.primary.upstream_rq_total") == 1
    assert stats.get("cluster.secondary.upstream_rq_total") == 1
    assert stats.get("cluster.with_fallback.retry.upstream_rq_429") == 1
    assert stats.get("cluster.with_fallback.upstream_rq_retry_success") == 1

