"""Gemini and Bedrock routes end to end: the official `openai` Python SDK, pointed at
a real Envoy 1.40 running tollgate.wasm, talks to a Gemini route (translated to
`generateContent` / `streamGenerateContent?alt=sse`) and a Bedrock route (Converse /
ConverseStream, SigV4-signed, answered with binary eventstream frames).

The mock provider validates what it receives in each provider's documented wire
format (roles, parts and blocks, function-call pairing, API key) and, for Bedrock,
recomputes the SigV4 signature over the request exactly as it arrived (given the
secret in `x-mock-aws-secret`), with SHA-256/HMAC/CRC-32 code independent of
tollgate's. Answers and usage are checked against the mock's own answer for the
same translated request."""
from __future__ import annotations

import copy
import json
import re

import openai
import pytest
import requests

import harness

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GEMINI_KEY = "AIza-e2e-inline-key"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
CONFIG = {
    # The access-log assertions read these llm.* filter-state keys (not all default).
    "defaults": {"metering": {"filter_state": [
        "prompt_tokens", "completion_tokens", "model", "provider", "usage_source"]}},
    "routes": {
        "gemini": {"provider": {
            "kind": "gemini", "api_key": {"inline": GEMINI_KEY},
            "endpoint": {"authority": "generativelanguage.googleapis.test", "cluster": "mock_gemini"},
            "model_map": {"flash": "gemini-2.5-flash"}}},
        "bedrock": {"provider": {
            "kind": "bedrock",
            "endpoint": {"cluster": "mock_bedrock"},
            "aws": {"region": "us-east-1", "access_key_id": {"inline": AKID},
                    "secret_access_key": {"inline": SECRET}},
            "model_map": {"haiku": HAIKU}}},
    }
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
MESSAGES = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Say hello to the gateway."}]
# Lets the mock recompute the signature (a test-only header, never sent by tollgate).
VERIFY = {"x-mock-aws-secret": SECRET}


def mutate(doc):
    clusters = doc["static_resources"]["clusters"]
    base = next(c for c in clusters if c["name"] == "mock_llm")
    for name in ("mock_gemini", "mock_bedrock"):
        c = copy.deepcopy(base)
        c["name"] = name
        c["load_assignment"]["cluster_name"] = name
        clusters.append(c)
    routes = harness.hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    routes[:0] = [
        {"name": "provider_dispatch",
         "match": {"prefix": "/", "headers": [{"name": "x-tollgate-cluster", "present_match": True}]},
         "route": {"cluster_header": "x-tollgate-cluster", "timeout": "300s"}},
        {"name": "gemini", "match": {"prefix": "/gemini/"}, "route": {"cluster": "mock_llm", "timeout": "300s"}},
        {"name": "bedrock", "match": {"prefix": "/bedrock/"}, "route": {"cluster": "mock_llm", "timeout": "300s"}},
    ]


@pytest.fixture(scope="module")
def env(envoy_with, wasm):
    return envoy_with(CONFIG, name="providers-more", mutate=mutate)


def client(env, prefix: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{env.base_url}/{prefix}/v1", api_key="client-key", max_retries=0)


def direct(env, path: str, body: dict, headers: dict) -> dict:
    """The mock's own answer for `body` (it is deterministic per request content)."""
    r = requests.post(env.mock.url + path, data=json.dumps(body), headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


# A well-formed SigV4 header for direct calls (the mock checks the signature itself
# only when given x-mock-aws-secret).
DIRECT_BEDROCK = {
    "content-type": "application/json",
    "x-amz-date": "20261123T120000Z",
    "authorization": "AWS4-HMAC-SHA256 Credential=AKID/20261123/us-east-1/bedrock/aws4_request, "
                     "SignedHeaders=content-type;host;x-amz-date, Signature=" + "0" * 64,
}
DIRECT_GEMINI = {"content-type": "application/json", "x-goog-api-key": "k"}


def text_of(chunks) -> str:
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def finishes(chunks) -> list:
    return [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]


# --------------------------------------------------------------------------- Gemini


def test_gemini_non_streaming_answer_usage_and_upstream_request(env):
    c = client(env, "gemini")
    mark = env.mark()
    ctl = {"x-mock-cached-tokens": "4", "x-mock-reasoning-tokens": "7"}
    r = c.chat.completions.with_raw_response.create(
        model="flash", messages=MESSAGES, temperature=0.4, max_tokens=200, extra_headers=ctl)
    resp = r.parse()
    seen = env.mock.last()
    assert seen["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    h = seen["headers"]
    assert h["host"] == "generativelanguage.googleapis.test"
    assert h["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in h
    assert h["x-tollgate-cluster"] == "mock_gemini"
    sent = json.loads(seen["body"])
    assert sent == {
        "contents": [{"role": "user", "parts": [{"text": "Say hello to the gateway."}]}],
        "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
        "generationConfig": {"maxOutputTokens": 200, "temperature": 0.4},
    }
    raw = direct(env, seen["path"], sent, {**DIRECT_GEMINI, **ctl})
    assert resp.model == raw["modelVersion"] == "gemini-2.5-flash"
    assert resp.choices[0].message.content == raw["candidates"][0]["content"]["parts"][0]["text"]
    assert resp.choices[0].finish_reason == "stop"
    u = raw["usageMetadata"]
    assert resp.usage.prompt_tokens == u["promptTokenCount"]
    assert resp.usage.prompt_tokens_details.cached_tokens == u["cachedContentTokenCount"] == 4
    assert resp.usage.completion_tokens == u["candidatesTokenCount"] + u["thoughtsTokenCount"]
    assert resp.usage.completion_tokens_details.reasoning_tokens == 7
    assert resp.usage.total_tokens == u["totalTokenCount"]
    assert int(r.headers["x-llm-completion-tokens"]) == resp.usage.completion_tokens
    entry = env.new_entries(mark)[0]
    assert entry["route"] == "provider_dispatch", entry
    assert entry["upstream_cluster"] == "mock_gemini"
    assert entry["provider"] == "gemini"
    assert entry["model"] == "gemini-2.5-flash"
    assert int(entry["prompt_tokens"]) == resp.usage.prompt_tokens


def test_gemini_streaming_with_usage(env):
    c = client(env, "gemini")
    ctl = {"x-mock-reply-words": "40", "x-mock-cached-tokens": "2"}
    chunks = list(c.chat.completions.create(
        model="flash", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers=ctl))
    seen = env.mock.last()
    assert seen["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    raw = direct(env, "/v1beta/models/gemini-2.5-flash:generateContent", json.loads(seen["body"]),
                 {**DIRECT_GEMINI, **ctl})
    assert text_of(chunks) == raw["candidates"][0]["content"]["parts"][0]["text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finishes(chunks) == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == raw["usageMetadata"]["promptTokenCount"]
    assert chunks[-1].usage.completion_tokens == raw["usageMetadata"]["candidatesTokenCount"]
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 2
    assert all(ch.model == "gemini-2.5-flash" for ch in chunks)


def test_gemini_tools_round_trip(env):
    c = client(env, "gemini")
    first = c.chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    sent = env.mock.last_body()
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"]["required"] == ["city"]
    # Second turn: the result goes back as a functionResponse named after the call.
    second = c.chat.completions.create(
        model="flash", tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'}])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    sent = env.mock.last_body()
    assert sent["contents"][1]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert sent["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}]}


def test_gemini_streaming_tool_call(env):
    c = client(env, "gemini")
    chunks = list(c.chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL], tool_choice="required", stream=True, stream_options={"include_usage": True}))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].id
    assert isinstance(json.loads("".join(tc.function.arguments or "" for tc in calls))["city"], str)
    assert finishes(chunks) == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("status,exc,needle", [
    (429, openai.RateLimitError, "Resource has been exhausted"),
    (503, openai.InternalServerError, "overloaded"),
])
def test_gemini_errors_keep_the_providers_message(env, status, exc, needle):
    c = client(env, "gemini")
    with pytest.raises(exc) as e:
        c.chat.completions.create(model="flash", messages=MESSAGES, extra_headers={"x-mock-status": str(status)})
    assert e.value.status_code == status
    assert needle in e.value.response.json()["error"]["message"]


# --------------------------------------------------------------------------- Bedrock

SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/(\d{8})/us-east-1/bedrock/aws4_request, "
    r"SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, Signature=[0-9a-f]{64}$")


def test_bedrock_non_streaming_signed_answer_and_usage(env):
    c = client(env, "bedrock")
    mark = env.mark()
    ctl = {"x-mock-cached-tokens": "5", "x-mock-cache-creation-tokens": "3"}
    r = c.chat.completions.with_raw_response.create(
        model="haiku", messages=MESSAGES, max_tokens=300, temperature=0.2, stop=["END"],
        extra_headers={**ctl, **VERIFY})
    resp = r.parse()
    seen = env.mock.last()
    # The mock recomputed the signature over what it received: a 200 proves it matched.
    assert seen["path"] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    h = seen["headers"]
    assert h["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
    m = SIGV4.match(h["authorization"])
    assert m, h["authorization"]
    assert h["x-amz-date"].startswith(m.group(1))
    assert "x-amz-security-token" not in h
    assert h["x-tollgate-cluster"] == "mock_bedrock"
    sent = json.loads(seen["body"])
    assert sent == {
        "messages": [{"role": "user", "content": [{"text": "Say hello to the gateway."}]}],
        "system": [{"text": "Answer briefly."}],
        "inferenceConfig": {"maxTokens": 300, "temperature": 0.2, "stopSequences": ["END"]},
    }
    raw = direct(env, seen["path"], sent, {**DIRECT_BEDROCK, **ctl})
    assert resp.model == HAIKU
    assert resp.choices[0].message.content == raw["output"]["message"]["content"][0]["text"]
    assert resp.choices[0].finish_reason == "stop"
    u = raw["usage"]
    assert resp.usage.prompt_tokens == u["inputTokens"] + u["cacheReadInputTokens"] + u["cacheWriteInputTokens"]
    assert resp.usage.prompt_tokens_details.cached_tokens == 5
    assert resp.usage.completion_tokens == u["outputTokens"]
    entry = env.new_entries(mark)[0]
    assert entry["upstream_cluster"] == "mock_bedrock"
    assert entry["provider"] == "bedrock"
    assert entry["model"] == HAIKU
    assert int(entry["completion_tokens"]) == resp.usage.completion_tokens


def test_bedrock_streaming_eventstream_with_usage(env):
    c = client(env, "bedrock")
    ctl = {"x-mock-reply-words": "60", "x-mock-cached-tokens": "3"}
    chunks = list(c.chat.completions.create(
        model="haiku", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers={**ctl, **VERIFY}))
    seen = env.mock.last()
    assert seen["path"] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    assert SIGV4.match(seen["headers"]["authorization"])
    raw = direct(env, seen["path"].replace("/converse-stream", "/converse"), json.loads(seen["body"]),
                 {**DIRECT_BEDROCK, **ctl})
    assert text_of(chunks) == raw["output"]["message"]["content"][0]["text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finishes(chunks) == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == raw["usage"]["inputTokens"] + raw["usage"]["cacheReadInputTokens"]
    assert last.usage.completion_tokens == raw["usage"]["outputTokens"]
    assert all(ch.model == HAIKU for ch in chunks)


def test_bedrock_streaming_without_usage_still_meters(env):
    c = client(env, "bedrock")
    mark = env.mark()
    chunks = list(c.chat.completions.create(model="haiku", messages=MESSAGES, stream=True,
                                            extra_headers=VERIFY))
    assert all(ch.usage is None for ch in chunks), "no usage chunk for a client that did not ask"
    assert chunks[-1].choices[0].finish_reason == "stop"
    raw = direct(env, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                 env.mock.last_body(), DIRECT_BEDROCK)
    entry = env.new_entries(mark)[0]
    assert int(entry["completion_tokens"]) == raw["usage"]["outputTokens"]
    assert entry["usage_source"] == "provider"


def test_bedrock_tools_round_trip(env):
    c = client(env, "bedrock")
    first = c.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_headers=VERIFY)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("tooluse_") and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    sent = env.mock.last_body()
    assert sent["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"] == ["city"]
    second = c.chat.completions.create(
        model="haiku", tools=[WEATHER_TOOL], extra_headers=VERIFY,
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    sent = env.mock.last_body()
    assert sent["messages"][1]["content"][0]["toolUse"]["toolUseId"] == call.id
    assert sent["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": call.id, "content": [{"text": "18 C, sunny"}]}}]}


def test_bedrock_streaming_tool_call(env):
    c = client(env, "bedrock")
    chunks = list(c.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL], tool_choice="required", stream=True, stream_options={"include_usage": True},
        extra_headers=VERIFY))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].id.startswith("tooluse_") and calls[0].function.name == "get_weather"
    assert isinstance(json.loads("".join(tc.function.arguments or "" for tc in calls))["city"], str)
    assert finishes(chunks) == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens > 0


def test_bedrock_wrong_signature_is_refused_by_the_provider(env):
    """The mock's independent SigV4 check is real: with another secret it refuses,
    and the client sees the provider's message in an OpenAI-shaped 403."""
    c = client(env, "bedrock")
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="haiku", messages=MESSAGES,
                                  extra_headers={"x-mock-aws-secret": "not-the-secret"})
    assert "signature we calculated does not match" in e.value.response.json()["error"]["message"]


@pytest.mark.parametrize("status,exc,needle", [
    (429, openai.RateLimitError, "Too many requests"),
    (400, openai.BadRequestError, "Mock bad request"),
])
def test_bedrock_errors_keep_the_providers_message(env, status, exc, needle):
    c = client(env, "bedrock")
    for stream in (False, True):
        with pytest.raises(exc) as e:
            c.chat.completions.create(model="haiku", messages=MESSAGES, stream=stream,
                                      extra_headers={"x-mock-status": str(status)})
        assert e.value.status_code == status
        assert needle in e.value.response.json()["error"]["message"]


def test_bedrock_remote_image_is_refused_locally(env):
    c = client(env, "bedrock")
    before = len(env.mock.requests())
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="haiku", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "data:image" in e.value.response.json()["error"]["message"]
    assert len(env.mock.requests()) == before


@pytest.mark.parametrize("prefix,model,needle", [
    ("bedrock", "haiku", "throttlingException: Too many tokens"),
    ("gemini", "flash", "The model is overloaded"),
])
def test_mid_stream_provider_error_reaches_the_sdk(env, prefix, model, needle):
    """A provider error inside a stream (Bedrock exception frame, Gemini error
    event) becomes an OpenAI stream error: the SDK raises with the provider's
    message after the text that came before, and no [DONE] follows."""
    c = client(env, prefix)
    got = []
    headers = {"x-mock-stream-error-after": "3", "x-mock-reply-words": "40"}
    if prefix == "bedrock":
        headers.update(VERIFY)
    with pytest.raises(openai.APIError) as e:
        for ch in c.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                            extra_headers=headers):
            got.append(ch)
    assert needle in str(e.value)
    assert got and got[0].choices[0].delta.role == "assistant"
    assert not finishes(got)
