#!/usr/bin/env python3
"""Regenerate fuzz/seeds/ (the committed seed corpora) from the recorded OpenAI
exchanges in /work/shared/fixtures/openai-recorded (or $TOLLGATE_FIXTURES), the
example configs and a few hand-written inputs. Seeds stay small (< 4 KB each):
libFuzzer and the smoke mutator grow them."""
import json
import os
import pathlib
import shutil

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
FIX = pathlib.Path(os.environ.get("TOLLGATE_FIXTURES", ROOT.parent / "shared" / "fixtures" / "openai-recorded"))
SEEDS = HERE / "seeds"
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"]
LIMIT = 4096


def put(target, name, data: bytes):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    # config
    for p in sorted((ROOT / "filters" / "examples").glob("*.json")):
        put("config", p.stem, p.read_bytes())
    put("config", "empty", b"")
    put("config", "bad-type", b'{"defaults":{"metering":{"tokenize_byte_budget":"x"}}}')
    put("config", "routes", b'{"routes":{"a":{"limits":{"rules":[{"name":"r","window":"1h","tokens":1}]}},"b":{}}}')

    # exchange and sse from recordings
    for p in sorted(FIX.glob("*.yaml")):
        doc = yaml.safe_load(p.read_text())
        i = doc["interactions"][0]
        url = i["request"]["url"].replace("https://api.openai.com", "")
        if url not in PATHS:
            continue
        req = (i["request"].get("body") or "").encode()
        resp = (i["response"].get("body") or "").encode()
        try:
            req = json.dumps(json.loads(req), separators=(",", ":")).encode()
        except ValueError:
            pass
        sse = resp.startswith(b"data:") or resp.startswith(b"event:")
        if len(req) + len(resp) > LIMIT:
            if not sse:
                continue
            # Keep the head and the tail (usage) events of a long stream.
            evs = resp.split(b"\n\n")
            resp = b"\n\n".join(evs[:3] + evs[-4:])
            if len(req) + len(resp) > LIMIT:
                continue
        path = PATHS.index(url)
        ct = 0 if sse else 1
        head = bytes([path, 0, ct, len(resp) % 251]) + len(req).to_bytes(2, "little")
        put("exchange", p.stem, head + req + resp)
        put("prompt", p.stem, bytes([len(req) % 6]) + req)
        if sse:
            put("sse", p.stem, bytes([path, len(resp) % 251]) + resp)
            put("exchange", p.stem + "-limits", bytes([path, 1, ct, 7]) + len(req).to_bytes(2, "little") + req + resp)
            put("exchange", p.stem + "-strict", bytes([path, 2, ct, 3]) + len(req).to_bytes(2, "little") + req + resp)
    anthropic = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
                 b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
                 b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":{"output_tokens":5}}\n\n'
                 b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    put("sse", "anthropic", bytes([3, 9]) + anthropic)
    put("sse", "crlf", bytes([0, 2]) + b'data: {"a":1}\r\n\r\n: comment\r\rdata: x\ndata: y\n\nid: 1\n\n')
    areq = b'{"model":"claude-x","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    put("exchange", "anthropic", bytes([4, 0, 0, 5]) + len(areq).to_bytes(2, "little") + areq + anthropic)
    put("prompt", "anthropic", bytes([3]) + areq)
    put("prompt", "anthropic-parts", bytes([3]) + b'{"system":[{"type":"text","text":"Be brief"}],"tools":[{"name":"t","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}')
    put("prompt", "responses", bytes([0]) + b'{"model":"gpt-4o","instructions":"x","input":[{"role":"user","content":[{"type":"input_text","text":"hi"},{"type":"input_image","image_url":"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}]}],"tools":[{"type":"function","name":"f","parameters":{}}]}')

    # tokenizer
    for name, text in {
        "english": "Hello, world! It's a test of the tokenizer's handling of 123456 numbers.",
        "contractions": "I'm, you'RE, they've, we'll, she'd, it’s 'S",
        "whitespace": "  \t\n\n   x  \r\n\u3000 \u00a0y   ",
        "cjk": "日本語のテキストと中文文本，한국어 텍스트。",
        "emoji": "🙂👍🏽🧑‍💻 e\u0301 \U0001F600\U0001F600",
        "code": "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    }.items():
        put("tokenizer", name, text.encode())

    # inject
    for name, body in {
        "plain": b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}',
        "options-empty": b'{"model":"gpt-4o","stream":true,"stream_options":{},"messages":[]}',
        "options-false": b'{"stream":true,"stream_options":{"include_usage":false},"model":"x"}',
        "options-null": b'{ "stream" : true , "stream_options" : null }',
        "options-other": b'{"stream":true,"stream_options":{"continuous_usage_stats":true}}',
        "asked": b'{"stream":true,"stream_options":{"include_usage":true}}',
        "escaped-key": b'{"stre\\u0061m":true,"stream_options":{"include\\u005fusage":false}}',
        "ws": b' \n{\n  "stream": true,\n  "stream_options": { }\n}\n',
    }.items():
        put("inject", name, body)


if __name__ == "__main__":
    main()
