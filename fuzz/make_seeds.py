#!/usr/bin/env python3
"""Regenerate fuzz/seeds/ (the committed seed corpora) from the recorded OpenAI
exchanges in /work/shared/fixtures/openai-recorded (or $TOLLGATE_FIXTURES), the
example configs and a few hand-written inputs. Seeds stay small (< 4 KB each):
libFuzzer and the smoke mutator grow them."""
import json
import os
import pathlib
import shutil
import zlib

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

    # json: the request-path document against serde_json.
    for name, body in {
        "chat": b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":2,"max_tokens":64}',
        "escapes": b'{"k\\u0065y":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude42","dup":1,"dup":2}',
        "numbers": b'[0,-0,1.5,-2e10,3E+2,4e-3,18446744073709551615,18446744073709551616,1e308]',
        "nested": b'{"a":[[[{"b":[null,true,false,{}]}]]],"c":""}',
        "unicode": '{"é🙂":"日本語","ws":[ 1 ,\t2\n]}'.encode(),
        "surrogate": b'["\\ud800"]',
        "control": b'["a\x01b"]',
        "tool-call": json.dumps({"model": "gpt-4o", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}).encode(),
    }.items():
        put("json", name, body)

    # pii: [config | api << 2, chunk seed, input]; config 0 restores everything.
    for name, (sel, text) in {
        "chat-text": (0, "Mail jane.doe@example.com or call +1 415-555-2671; card 4111 1111 1111 1111."),
        "chat-iban-ip": (0, "IBAN DE89370400440532013000 from 192.168.10.254, SSN 123-45-6789"),
        "secrets": (1, "password = hunter2 key AKIAIOSFODNN7EXAMPLE jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"),
        "hash-mask": (2, "a@b.co 5555-5555-5555-4444 10.0.0.1"),
        "placeholder": (1, "Dear <EMAIL_1>, card <CREDIT_CARD_1>"),
        "chat-body": (1, '{"model":"gpt-4o","messages":[{"role":"user","content":"I am jane@example.com \\u0061@b.co"}]}'),
        "anthropic-body": (4 | 3, '{"model":"claude-x","max_tokens":8,"system":"ops@corp.example","messages":[{"role":"user","content":[{"type":"text","text":"4111111111111111"}]}]}'),
        "chat-stream": (0, 'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hi <EMAIL_1> jo"}}]}\n\ndata: {"id":"c1","choices":[{"index":0,"delta":{"content":"e@x.io"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'),
        "anthropic-stream": (4 | 1, 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"mail a@b.co"}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'),
        "chat-answer": (1, '{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi <EMAIL_1>, mail ann\\u0040example.net or 4111 1111 1111 1111 \\ud83d\\ude00","tool_calls":[{"function":{"name":"f","arguments":"{\\"ip\\":\\"10.1.2.3\\"}"}}]},"finish_reason":"stop"}],"usage":{"total_tokens":3}}'),
        "responses-answer": (8 | 1, '{"id":"r1","output":[{"type":"message","content":[{"type":"output_text","text":"key AKIAIOSFODNN7EXAMPLE, a@b.co"}]}],"text":{"format":{"type":"text"}}}'),
        "anthropic-answer": (4 | 1, '{"type":"message","content":[{"type":"text","text":"call +1 415-555-2671"},{"type":"tool_use","input":{"to":["a@b.co",{"x":"10.0.0.1"}]}}]}'),
        "responses-stream": (8, 'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"m1","content_index":0,"delta":"call 030 12345678"}\n\nevent: response.output_text.done\ndata: {"type":"response.output_text.done","item_id":"m1","content_index":0,"text":"x"}\n\n'),
    }.items():
        put("pii", name, bytes([sel, len(text) % 251]) + text.encode())

    # eventstream: [mode, chunk seed, max frame / 16, input]; mode 1 frames
    # `[event type index, payload]` pieces split at zero bytes, mode 0 is raw bytes.
    events = [
        (0, b'{"role":"assistant"}'),
        (2, b'{"contentBlockIndex":0,"delta":{"text":"Hello"}}'),
        (1, b'{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"t1","name":"get"}}}'),
        (2, b'{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\\"a\\":1}"}}}'),
        (3, b'{"contentBlockIndex":1}'),
        (4, b'{"stopReason":"tool_use"}'),
        (5, b'{"usage":{"inputTokens":12,"outputTokens":5,"totalTokens":17},"metrics":{"latencyMs":10}}'),
    ]
    put("eventstream", "framed", bytes([1, 5, 255]) + b"\0".join(bytes([t]) + p for t, p in events))
    put("eventstream", "framed-usage-first", bytes([1, 9, 255]) + b"\0".join(bytes([t]) + p for t, p in [events[0], events[1], events[6], events[5]]))

    def frame(headers, payload):
        hb = b""
        for k, v in headers:
            hb += bytes([len(k)]) + k.encode() + b"\x07" + len(v).to_bytes(2, "big") + v.encode()
        total = 12 + len(hb) + len(payload) + 4
        prelude = total.to_bytes(4, "big") + len(hb).to_bytes(4, "big")
        prelude += zlib.crc32(prelude).to_bytes(4, "big")
        body = prelude + hb + payload
        return body + zlib.crc32(body).to_bytes(4, "big")

    ev = lambda t, p: frame([(":event-type", t), (":content-type", "application/json"), (":message-type", "event")], p)
    raw = ev("messageStart", b'{"role":"assistant"}') + ev("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}')
    put("eventstream", "raw", bytes([0, 3, 255]) + raw + ev("messageStop", b'{"stopReason":"end_turn"}') + ev("metadata", b'{"usage":{"inputTokens":3,"outputTokens":1}}'))
    put("eventstream", "raw-exception", bytes([0, 7, 255]) + raw + frame([(":exception-type", "throttlingException"), (":content-type", "application/json"), (":message-type", "exception")], b'{"message":"Too many requests"}'))
    put("eventstream", "raw-truncated", bytes([0, 11, 255]) + raw[:-5])
    put("eventstream", "raw-oversized", bytes([0, 13, 1]) + raw)


if __name__ == "__main__":
    main()
