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
source "$src/tests/e2e/lib/serve.sh"
e2e_init serve_concurrency openai
trap stop_servers EXIT
cd "$src"

start_server S "$bin" --backend cpu --check-invariants --max-running 16
node "$node_dir/serve_test.js" concurrency "$S_URL"
node "$node_dir/serve_test.js" disconnect "$S_URL"
grep -q "client disconnected" "$S_LOG" || { echo "the server did not log the disconnect" >&2; exit 1; }
echo "serve_concurrency: all passed"
