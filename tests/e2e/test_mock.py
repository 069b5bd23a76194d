"""The mock provider over real sockets: HTTP/1.1 framing, keep-alive,
chunked request bodies, SSE flushed per event, robustness, and `usage`
checked against OpenAI's own tiktoken (seeded offline from tiktoken-rs's
vocabulary files)."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import requests

import harness

CHAT = {"model": "gpt-4o", "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "name": "ana", "content": "Summarise: naïve café owners in Zürich 🚀 like <|endoftext|> tokens."},
    {"role": "assistant", "content": [{"type": "text", "text": "Sure."}, {"type": "text", "text": " Go on."}]},
]}


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends `data`, reads until the server closes or `timeout`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.fixture(scope="module")
def o200k(tmp_path_factory):
    """OpenAI's tiktoken with o200k_base, loaded offline: the vocabulary file
    of tiktoken-rs (in cargo's registry) is put where tiktoken caches it."""
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    found = sorted(glob.glob(str(cargo_home / "registry/src/*/tiktoken-rs-0.12.1/assets/o200k_base.tiktoken")))
    if not found:
        pytest.fail("tiktoken-rs 0.12.1 sources not in cargo's registry: run `make mock` first", pytrace=False)
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    shutil.copy(found[0], cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return tiktoken.get_encoding("o200k_base")


def test_usage_matches_openai_tiktoken(mock, o200k):
    r = requests.post(mock.url + "/v1/chat/completions", json=CHAT, headers={"x-mock-reply-words": "40"}, timeout=10)
    assert r.status_code == 200
    body = r.json()

    def n(s):
        return len(o200k.encode(s, disallowed_special=()))

    # OpenAI cookbook: 3 per message (+1 per name) + 3 priming.
    expected = 3
    for m in CHAT["messages"]:
        content = m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
        expected += 3 + n(m["role"]) + n(content) + (n(m["name"]) + 1 if "name" in m else 0)
    reply = body["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] == expected
    assert body["usage"]["completion_tokens"] == n(reply)
    assert any(ord(c) > 127 for c in reply)  # the replies carry non-ASCII text
    assert len(set(reply.split())) > 15  # ...and are not one repeated word


def test_keep_alive_and_chunked_request_body(mock):
    body = json.dumps(CHAT).encode()
    half = len(body) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    req1 = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    req2 = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(b'{"model":"m","input":"hi"}')) + b'{"model":"m","input":"hi"}'
    out = raw(mock.port, req1 + req2)
    # Two responses on one connection, the second closes it.
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert b'"object":"chat.completion"' in out and b'"object":"list"' in out
    assert mock.last()["path"] == "/v1/embeddings"
    first = [r for r in mock.requests() if r["path"] == "/v1/chat/completions"][-1]
    assert json.loads(first["body"]) == CHAT


def test_sse_is_flushed_per_event(mock):
    with requests.post(mock.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                       headers={"x-mock-reply-words": "3", "x-mock-chunk-delay-ms": "250"},
                       stream=True, timeout=10) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        times = [time.monotonic() for line in r.iter_lines() if line.startswith(b"data: ")]
    assert len(times) == 6  # role, 3 words, finish, [DONE]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g > 0.15 for g in gaps), gaps


@pytest.mark.parametrize("payload", [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 3\r\n\r\n{\x00}",
    b"POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]",
    b"\xff\xfe\xfd\r\n\r\n",
])
def test_bad_input_gets_400_and_server_survives(mock, payload):
    out = raw(mock.port, payload)
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert "error" in body
    assert requests.get(mock.url + "/_mock/health", timeout=5).status_code == 200


def test_error_shapes(mock):
    r = requests.post(mock.url + "/v1/chat/completions", json=CHAT, headers={"x-mock-status": "500"}, timeout=5)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    r = requests.post(mock.url + "/v1/messages", json={}, headers={"x-mock-status": "429"}, timeout=5)
    assert r.status_code == 429 and r.json() == {**r.json(), "type": "error"}
    assert r.json()["error"]["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"


def test_no_usage_control(mock):
    r = requests.post(mock.url + "/v1/chat/completions",
                      json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
                      headers={"x-mock-no-usage": "1"}, timeout=5)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events and all("usage" not in e or e["usage"] is None for e in events)
    assert all(e["choices"] for e in events)  # no usage-only chunk


def test_models_and_responses(mock):
    r = requests.get(mock.url + "/v1/models", timeout=5)
    assert "gpt-4o" in {m["id"] for m in r.json()["data"]}
    r = requests.post(mock.url + "/v1/responses", json={"model": "gpt-4o", "input": "hi", "stream": True}, timeout=5)
    kinds = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
