#!/usr/bin/env bash
# `mtpserve serve` answers every bad input with its 4xx (or 503) and an OpenAI error object, and keeps serving:
# malformed JSON, wrong types, unknown fields, bad max_tokens / temperature / top_p, empty messages, unknown
# role, prompt longer than the context, invalid UTF-8, oversized body (413), wrong or missing API key (401),
# unknown route (404), wrong method (405), unknown model (404), full waiting queue (503 + Retry-After).
# Usage: serve_errors.sh <mtpserve binary> <build dir>   (env MTP_SOURCE_DIR: the source tree)
set -euo pipefail
bin=$(realpath "$1")
build=$(realpath "$2")
src="${MTP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
source "$src/tests/e2e/lib/serve.sh"
e2e_init serve_errors
bg_pids=()
cleanup() {
  local rc=$?
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  (exit $rc)
  stop_servers
}
trap cleanup EXIT
cd "$src"

key=sekret-key
start_server E "$bin" --backend cpu --api-key "$key" --max-model-len 512 --max-running 1 --max-waiting 1 \
  --served-model-name tiny
A=(-H "Authorization: Bearer $key" -H 'Content-Type: application/json')
C="$E_URL/v1/completions"
H="$E_URL/v1/chat/completions"
ok_msg='{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4}'

expect_status 200 "${A[@]}" "$H" -d "$ok_msg"
# Auth
expect_status 401 "$H" -d "$ok_msg"
expect_status 401 -H "Authorization: Bearer wrong" "$H" -d "$ok_msg"
expect_status 401 -H "Authorization: $key" "$H" -d "$ok_msg"
expect_status 401 "$E_URL/v1/models"
expect_status 200 "$E_URL/health"
expect_status 200 "${A[@]}" "$E_URL/v1/models"
# Malformed bodies
expect_status 400 "${A[@]}" "$H" -d '{"messages": [}'
expect_status 400 "${A[@]}" "$H" -d '[1,2,3]'
expect_status 400 "${A[@]}" "$H" -d ''
printf '{"messages":[{"role":"user","content":"\xff\xfe bad"}]}' >"$SERVE_LOG_DIR/bad_utf8.json"
expect_status 400 "${A[@]}" "$H" --data-binary @"$SERVE_LOG_DIR/bad_utf8.json"
printf '{"prompt":"caf\xc3"}' >"$SERVE_LOG_DIR/bad_utf8_2.json"
expect_status 400 "${A[@]}" "$C" --data-binary @"$SERVE_LOG_DIR/bad_utf8_2.json"
head -c $((9 * 1024 * 1024)) /dev/zero | tr '\0' 'a' >"$SERVE_LOG_DIR/big.txt"
expect_status 413 "${A[@]}" "$C" --data-binary @"$SERVE_LOG_DIR/big.txt"
# Wrong types, unknown fields, bad values
expect_status 400 "${A[@]}" "$H" -d '{"messages":"hello"}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":"8"}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"stream":"yes"}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"temperatur":0.5}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"mtp":{"enable":false}}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":-1}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":0}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":99999999999999}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"max_completion_tokens":1000}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"temperature":"NaN"}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"temperature":NaN}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"temperature":1e999}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"temperature":-0.1}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"top_p":0}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"top_p":1.5}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"n":0}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"stop":[1,2]}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user","content":"Hi"}],"stream_options":{"include_usage":true}}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[]}'
expect_status 400 "${A[@]}" "$H" -d '{"model":"tiny"}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"wizard","content":"Hi"}]}'
expect_status 400 "${A[@]}" "$H" -d '{"messages":[{"role":"user"}]}'
expect_status 404 "${A[@]}" "$H" -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}'
expect_status 400 "${A[@]}" "$C" -d '{"prompt":""}'
expect_status 400 "${A[@]}" "$C" -d '{"prompt":[2, 999999]}'
expect_status 400 "${A[@]}" "$C" -d '{"prompt":"x","logprobs":true}'
# Prompt longer than the context (--max-model-len 512)
long=$(python3 -c 'print(" ".join(["history"] * 700))')
expect_status 400 "${A[@]}" "$C" -d "{\"prompt\":\"$long\",\"max_tokens\":4}"
expect_status 400 "${A[@]}" "$H" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}]}"
# Routes and methods
expect_status 404 "${A[@]}" "$E_URL/v1/nope" -d '{}'
expect_status 404 "${A[@]}" "$E_URL/v2/chat/completions" -d '{}'
expect_status 404 "$E_URL/nothing-here"
expect_status 405 "${A[@]}" "$H"
expect_status 405 "${A[@]}" "$C"
expect_status 405 "${A[@]}" -X DELETE "$H"
expect_status 405 -X POST -d '{}' "$E_URL/health"
expect_status 405 -X POST -d '{}' "$E_URL/metrics"

# Full waiting queue: --max-running 1 --max-waiting 1; two long streams fill both (the second is started once
# the first runs: a request not yet admitted counts as waiting), the third gets 503.
wait_metric() {  # NAME VALUE: poll /metrics until the gauge has the value (10 s at most)
  for _ in $(seq 1 200); do
    m=$(curl -s "$E_URL/metrics")
    # (a here-string, not a pipe: with pipefail, grep -q closing a pipe early fails the writer)
    if grep -q "^mtpserve_$1{[^}]*} $2\$" <<<"$m"; then return 0; fi
    sleep 0.05
  done
  return 1
}
for i in 1 2; do
  curl -sN --max-time 60 "${A[@]}" "$C" -d '{"prompt":"Once upon a time","max_tokens":500,"ignore_eos":true,"stream":true}' \
    >"$SERVE_LOG_DIR/bg$i.txt" 2>&1 &
  bg_pids+=($!)
  if [ $i = 1 ]; then wait_metric requests_running 1 || true; else wait_metric requests_waiting 1 || true; fi
done
grep -E '^mtpserve_requests_(running|waiting)' <<<"$m" || true
expect_status 503 "${A[@]}" -D "$SERVE_LOG_DIR/h503.txt" "$C" -d '{"prompt":"x","max_tokens":4}'
grep -qi '^Retry-After: ' "$SERVE_LOG_DIR/h503.txt" || { echo "FAIL: 503 without Retry-After" >&2; FAILS=$((FAILS + 1)); }
# The two clients go away: their requests are cancelled and the server serves again.
for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
bg_pids=()
for _ in $(seq 1 100); do
  m=$(curl -s "$E_URL/metrics")
  if grep -q '^mtpserve_requests_running{[^}]*} 0$' <<<"$m" &&
     grep -q '^mtpserve_kv_pages_used{[^}]*pool="full"} 0$' <<<"$m"; then break; fi
  sleep 0.2
done
grep -q '^mtpserve_kv_pages_used{[^}]*pool="full"} 0$' <<<"$m" || { echo "FAIL: pages not freed after disconnects" >&2; FAILS=$((FAILS + 1)); }

# Still serving, with the right answer shape.
expect_status 200 "${A[@]}" "$H" -d "$ok_msg"
expect_status 200 "${A[@]}" "$C" -d '{"prompt":"The history of","max_tokens":4,"stream":true}'
m=$(curl -s "$E_URL/metrics")
grep -q 'mtpserve_http_responses_total{code="400"} [1-9]' <<<"$m" || { echo "FAIL: metrics miss the 400s" >&2; FAILS=$((FAILS + 1)); }

if [ "$FAILS" != 0 ]; then
  echo "serve_errors: $FAILS failures" >&2
  exit 1
fi
echo "serve_errors: all passed"
