#!/usr/bin/env bash
# `mtpserve bench` on the bundled tiny models (CPU, tiny sizes): every table and row is printed and written to
# --json with finite, positive numbers. `--load-format dummy` from config-only directories for bench (centroid
# assistant), generate, logits and serve (with --tokenizer; without it serve refuses before loading).
# Usage: bench_step.sh <mtpserve binary> <build dir>   (env MTP_SOURCE_DIR: the source tree)
set -euo pipefail
bin=$(realpath "$1")
build=$(realpath "$2")
src="${MTP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
source "$src/tests/e2e/lib/serve.sh"
e2e_init bench_step
trap stop_servers EXIT
work="$SERVE_LOG_DIR"

fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}

# Rows of table $2 in $1 have numbers (finite: NaN/inf would be null or missing) in every field of $3, ms > 0.
check_rows() {
  local file=$1 table=$2 want=$3 fields=$4
  local n
  n=$(jq --arg t "$table" '.[$t] | length' "$file")
  [ "$n" = "$want" ] || fail "$file: $table has $n rows, want $want"
  jq -e --arg t "$table" --argjson f "$fields" \
    '.[$t] | all(. as $r | $f | all(. as $k | ($r[$k] | type == "number") and
                 (($k | test("ms$")) | not or $r[$k] > 0)))' "$file" >/dev/null ||
    fail "$file: $table has a missing, non-numeric or non-positive field of $fields: $(jq -c --arg t "$table" '.[$t]' "$file")"
}

# --- real weights, dense assistant: 2 contexts x 2 batches x 2 K, 2 prefills ---
runs=(--iters 2 --warmup 1)
[ -z "${MTP_E2E_LIGHT:-}" ] || runs=(--iters 1 --warmup 0) # sanitizer builds
"$bin" bench --model "$src/models/tiny-gemma4" --assistant "$src/models/tiny-gemma4-assistant" --backend cpu \
  --batch 1,3 --ctx 20,150 --k 2,3 --prefill 40,100 --chunk 32 "${runs[@]}" --json "$work/real.json" \
  >"$work/real.txt"
cat "$work/real.txt"
step='["ctx","batch","ms","weights_gb","kv_gb","gbs","roof_ms","roof_pct"]'
check_rows "$work/real.json" decode 4 "$step"
check_rows "$work/real.json" draft 4 '["ctx","batch","ms","pct_of_decode","gb","gbs","roof_ms"]'
check_rows "$work/real.json" verify 8 "$(jq -c '. + ["k","pct_of_decode"]' <<<"$step")"
check_rows "$work/real.json" mtp 8 \
  '["ctx","batch","k","draft_ms","verify_ms","accept_ms","iter_ms","draft_pct_of_iter","breakeven_al"]'
check_rows "$work/real.json" prefill 2 '["tokens","chunk","ms","tok_s"]'
jq -e '.copy_bw_gbs > 0 and .weights_gb > 0 and .layers == 8' "$work/real.json" >/dev/null ||
  fail "real.json header: $(jq -c 'del(.decode,.draft,.verify,.mtp,.prefill)' "$work/real.json")"
for t in 'target decode step' 'draft step' 'verify (target forward' 'MTP iteration' 'prefill (batch 1'; do
  grep -q "^$t" "$work/real.txt" || fail "no '$t' table in the output"
done
# Table rows: 4 decode + 4 draft + 8 verify + 8 MTP + 2 prefill, each with a number in its ms column.
rows=$(grep -cE '^ +[0-9]+ +[0-9]+ .*\| +[0-9]+\.[0-9]+ ' "$work/real.txt" || true)
[ "$rows" = 26 ] || fail "expected 26 table rows in the output, got $rows"
! grep -qiwE 'nan|inf' "$work/real.txt" || fail "a NaN or inf in the output"

# --- dummy weights from config-only directories, centroid assistant, one section, host acceptance ---
mkdir -p "$work/t" "$work/a"
cp "$src/models/tiny-gemma4/config.json" "$work/t/"
cp "$src/models/tiny-gemma4-assistant-centroid/config.json" "$work/a/"
"$bin" bench --model "$work/t" --assistant "$work/a" --load-format dummy --backend cpu --sections spec \
  --batch 2 --ctx 30 --k 3 --iters 1 --warmup 0 --accept logits --json "$work/dummy.json" >"$work/dummy.txt"
check_rows "$work/dummy.json" mtp 1 '["draft_ms","verify_ms","accept_ms","iter_ms","breakeven_al"]'
jq -e '.load_format == "dummy" and .accept == "logits" and (has("prefill") | not)' "$work/dummy.json" \
  >/dev/null || fail "dummy.json: wrong header or an unrequested prefill table"
# --layers cuts the target (6 of 8 layers) and a bad flag is an error.
"$bin" bench --model "$work/t" --load-format dummy --backend cpu --layers 6 --sections decode --batch 1 --ctx 8 \
  --iters 1 --json "$work/cut.json" >/dev/null
jq -e '.layers == 6 and (.decode | length) == 1' "$work/cut.json" >/dev/null || fail "--layers 6: $(cat "$work/cut.json")"
if "$bin" bench --model "$work/t" --load-format dummy --sections decode,nope >/dev/null 2>&1; then
  fail "--sections nope was accepted"
fi

# --- generate / logits with dummy weights (token ids in, no tokenizer) ---
out=$("$bin" generate --model "$work/t" --load-format dummy --prompt-tokens 2,10,20 --max-tokens 4 --json)
jq -e '(.tokens | length) >= 1' <<<"$out" >/dev/null || fail "generate --load-format dummy: $out"
[ "$("$bin" logits --model "$work/t" --load-format dummy --tokens 2,5,7 --top 2 | grep -c '^pos')" = 3 ] ||
  fail "logits --load-format dummy did not print 3 positions"
if err=$("$bin" generate --model "$work/t" --load-format dummy --prompt "Hi" 2>&1); then
  fail "generate --prompt without a tokenizer succeeded"
fi
grep -q 'prompt-tokens' <<<"$err" || fail "generate --prompt without a tokenizer: unclear error: $err"

# --- serve: a config-only model needs --tokenizer (refused before loading); with it, it serves ---
if err=$("$bin" serve --model "$work/t" --load-format dummy --no-spec --port 0 2>&1); then
  fail "serve of a config-only model without --tokenizer started"
fi
grep -q 'needs --tokenizer' <<<"$err" || fail "serve without a tokenizer: unclear error: $err"
start_server D "$bin" --model "$work/t" --assistant "$work/a" --load-format dummy --tokenizer "$src/models/tiny-gemma4" \
  --backend cpu --kv-memory 64M --max-running 4
expect_status 200 -H 'Content-Type: application/json' "$D_URL/v1/completions" \
  -d '{"prompt":"Hello","max_tokens":4,"temperature":0,"ignore_eos":true}'
jq -e '.usage.completion_tokens == 4' "$SERVE_LOG_DIR/body" >/dev/null || fail "dummy serve: $(cat "$SERVE_LOG_DIR/body")"

[ "$FAILS" = 0 ] || {
  echo "$FAILS check(s) failed" >&2
  exit 1
}
echo "bench_step: all checks passed"
