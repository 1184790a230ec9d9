#!/usr/bin/env bash
# `mtpserve serve` under load and disconnects (bundled model, CPU backend): 32 simultaneous streaming clients
# with mixed lengths all complete correctly and leave every KV page free; clients that disconnect mid-stream
# get their requests cancelled (pages freed, per /metrics) and the other requests are unaffected.
# Usage: serve_concurrency.sh <mtpserve binary> <build dir>   (env MTP_SOURCE_DIR: the source tree)
set -euo pipefail
bin=$(realpath "$1")
build=$(realpath "$2")
src="${MTP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
node_dir="$src/tests/node"
[ -d "$node_dir/node_modules/openai" ] || { echo "openai npm package missing (run scripts/setup --test)" >&2; exit 1; }
export SERVE_LOG_DIR="$build/serve_concurrency"
rm -rf "$SERVE_LOG_DIR" && mkdir -p "$SERVE_LOG_DIR"
source "$src/tests/e2e/lib/serve.sh"
# A sanitizer build runs the model much slower: lighter client checks (same kinds of checks).
if grep -q __asan_init "$bin"; then export MTP_E2E_LIGHT=1; fi
trap stop_servers EXIT
cd "$src"

start_server S "$bin" --backend cpu --check-invariants --max-running 16
node "$node_dir/serve_test.js" concurrency "$S_URL"
node "$node_dir/serve_test.js" disconnect "$S_URL"
grep -q "client disconnected" "$S_LOG" || { echo "the server did not log the disconnect" >&2; exit 1; }
echo "serve_concurrency: all passed"
