#!/usr/bin/env bash
# `mtpserve serve` with real clients (the official openai npm SDK, curl) on the bundled model, CPU backend:
# chat and completions, streaming and not; streamed == non-streamed for the same seed; greedy == `mtpserve
# generate` on the same prompt tokens; greedy text with the MTP assistant == without (per-request mtp.enabled);
# n/seed, logprobs, stop strings, usage; SSE framing as curl sees it.
# Usage: serve_clients.sh <mtpserve binary> <build dir>   (env MTP_SOURCE_DIR: the source tree)
set -euo pipefail
bin=$(realpath "$1")
build=$(realpath "$2")
src="${MTP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
node_dir="$src/tests/node"
source "$src/tests/e2e/lib/serve.sh"
e2e_init serve_clients openai
trap stop_servers EXIT
cd "$src"

start_server S "$bin" --backend cpu --check-invariants
# The reference: `mtpserve generate` (greedy, single sequence, no engine) on the same prompt tokens.
prompt_tokens="2,771,3231,694"
"$bin" generate --model models/tiny-gemma4 --prompt-tokens "$prompt_tokens" --max-tokens 32 --json >"$SERVE_LOG_DIR/gen.json"
jq -c --argjson p "[$prompt_tokens]" '{prompt_tokens: $p, max_tokens: 32, tokens: .tokens}' "$SERVE_LOG_DIR/gen.json" \
  >"$SERVE_LOG_DIR/generate.json"
node "$node_dir/serve_test.js" clients "$S_URL" "$SERVE_LOG_DIR/generate.json"

# curl: SSE framing (every event "data: {json}" + blank line, ends with data: [DONE]) and the usage chunk.
curl -sN "$S_URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":12,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}' \
  >"$SERVE_LOG_DIR/sse.txt"
python3 - "$SERVE_LOG_DIR/sse.txt" <<'PY'
import json, sys
raw = open(sys.argv[1]).read()
assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
events = raw.split("\n\n")[:-1]
assert all(e.startswith("data: ") and "\n" not in e for e in events), events
payloads = [json.loads(e[6:]) for e in events[:-1]]
assert payloads[0]["choices"][0]["delta"].get("role") == "assistant"
assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] > 0
assert sum(1 for p in payloads if p["choices"] and p["choices"][0]["finish_reason"]) == 1
print(f"curl SSE: {len(events)} events, framing ok")
PY
# curl non-streaming greedy == the SDK's (same server, same seedless greedy request).
a=$(curl -s "$S_URL/v1/completions" -d '{"prompt":"The history of","max_tokens":20,"temperature":0}' | jq -r '.choices[0].text')
b=$(curl -s "$S_URL/v1/completions" -d '{"prompt":"The history of","max_tokens":20,"temperature":0,"mtp":{"enabled":false}}' | jq -r '.choices[0].text')
[ "$a" = "$b" ] || { echo "curl: MTP on/off greedy differ: '$a' vs '$b'" >&2; exit 1; }
curl -sf "$S_URL/health" >/dev/null
grep -q "^request cmpl-" "$S_LOG" || { echo "no per-request log line" >&2; exit 1; }

# A server without the assistant (--no-spec) gives the same greedy text.
start_server N "$bin" --backend cpu --no-spec
c=$(curl -s "$N_URL/v1/completions" -d '{"prompt":"The history of","max_tokens":20,"temperature":0}' | jq -r '.choices[0].text')
[ "$a" = "$c" ] || { echo "--no-spec greedy differs: '$a' vs '$c'" >&2; exit 1; }
grep -q "speculation: off" "$N_LOG"
echo "serve_clients: all passed"
