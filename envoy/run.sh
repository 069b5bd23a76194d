#!/usr/bin/env bash
# `make run`: the mock provider in the background, Envoy with tollgate in the
# foreground. Ctrl-C stops both. Called by the Makefile with ENVOY, MOCK,
# CONFIG_FILE and CONCURRENCY set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY=${ENVOY:-.venv/bin/envoy}
MOCK=${MOCK:-target/release/mock-provider}
CONFIG_FILE=${CONFIG_FILE:-envoy/envoy.yaml}
CONCURRENCY=${CONCURRENCY:-1}
# envoy/envoy.yaml is rendered with these ports (see envoy/render.py).
PORT=10000 ADMIN_PORT=9901 UPSTREAM_PORT=10001

"$MOCK" --listen "127.0.0.1:$UPSTREAM_PORT" &
mock_pid=$!
trap 'kill "$mock_pid" 2>/dev/null || true; wait "$mock_pid" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM

cat <<TRY

tollgate on Envoy: http://127.0.0.1:$PORT   admin: http://127.0.0.1:$ADMIN_PORT   mock provider: http://127.0.0.1:$UPSTREAM_PORT
Access log (one JSON line per request, with token counts) goes to this terminal
(flushed every 200 ms: --file-flush-interval-msec; Envoy's default is 10 s).

# non-stream chat
curl -s http://127.0.0.1:$PORT/v1/chat/completions -H 'content-type: application/json' \\
  -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello!"}]}'

# streamed chat (tollgate injects stream_options.include_usage if configured)
curl -sN http://127.0.0.1:$PORT/v1/chat/completions -H 'content-type: application/json' \\
  -d '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hello!"}]}'

# Anthropic Messages, streamed
curl -sN http://127.0.0.1:$PORT/v1/messages -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \\
  -d '{"model":"claude-sonnet-5-5","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Hello!"}]}'

# token counters (Prometheus)
curl -s http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep tollgate_

# what reached the provider
curl -s http://127.0.0.1:$UPSTREAM_PORT/_mock/last

# Python, official SDK (.venv/bin/python)
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:$PORT/v1", api_key="test")
r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello!"}])
print(r.choices[0].message.content, r.usage)

TRY

"$ENVOY" -c "$CONFIG_FILE" --concurrency "$CONCURRENCY" -l info --base-id 10000 \
    --file-flush-interval-msec 200 --log-format '[%Y-%m-%d %T.%e][%l] %v'
