# Helpers for the `mtpserve serve` e2e tests (sourced, not a test itself).
#   start_server NAME BIN [serve args...]   starts the server on a free port in the background, waits for its
#                                           "listening on http://HOST:PORT" line; sets <NAME>_PID, <NAME>_URL
#   stop_servers                            kills every server started here (called from the EXIT trap)
#   expect_status WANT CURL-ARGS...         one request; asserts the HTTP status and an OpenAI error object for 4xx/5xx
#   e2e_init NAME [openai]                  per-test log folder $build/NAME ($bin and $build set by the
#                                           caller), lighter client checks for sanitizer builds; with
#                                           "openai", insist on the npm SDK in tests/node
SERVE_PIDS=()
SERVE_LOG_DIR=${SERVE_LOG_DIR:-$(mktemp -d)}

e2e_init() {
  if [ "${2:-}" = openai ] && [ ! -d "$src/tests/node/node_modules/openai" ]; then
    echo "openai npm package missing (run scripts/setup --test)" >&2
    exit 1
  fi
  export SERVE_LOG_DIR="$build/$1"
  rm -rf "$SERVE_LOG_DIR" && mkdir -p "$SERVE_LOG_DIR"
  # A sanitizer build runs the model much slower: lighter client checks (same kinds of checks).
  if grep -q __asan_init "$bin"; then export MTP_E2E_LIGHT=1; fi
}

start_server() {
  local name=$1 bin=$2
  shift 2
  local log="$SERVE_LOG_DIR/$name.log"
  "$bin" serve --port 0 "$@" >"$log" 2>&1 &
  local pid=$!
  SERVE_PIDS+=("$pid")
  local url=""
  for _ in $(seq 1 600); do
    url=$(grep -o 'listening on http://[^ ]*' "$log" 2>/dev/null | head -1 | sed 's/listening on //' || true)
    [ -n "$url" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "server $name exited before listening:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  if [ -z "$url" ]; then
    echo "server $name did not print its listening line in 60 s:" >&2
    cat "$log" >&2
    return 1
  fi
  printf -v "${name}_PID" '%s' "$pid"
  printf -v "${name}_URL" '%s' "$url"
  printf -v "${name}_LOG" '%s' "$log"
  echo "== server $name: $url (pid $pid)"
}

stop_servers() {
  local rc=$?
  for pid in "${SERVE_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${SERVE_PIDS[@]}"; do
    local st=0
    wait "$pid" 2>/dev/null || st=$?
    # SIGTERM is a graceful shutdown (exit 0); anything else, or a sanitizer report, fails the test.
    if [ "$st" != 0 ]; then
      echo "server pid $pid exited with status $st" >&2
      [ $rc != 0 ] || rc=1
    fi
  done
  if grep -l 'ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:' "$SERVE_LOG_DIR"/*.log >&2 2>/dev/null; then
    echo "sanitizer report in the server log(s) above" >&2
    [ $rc != 0 ] || rc=1
  fi
  if [ $rc != 0 ]; then
    for f in "$SERVE_LOG_DIR"/*.log; do
      [ -f "$f" ] || continue
      echo "---- $f (last 40 lines)" >&2
      tail -40 "$f" >&2
    done
  fi
  exit $rc
}

FAILS=0
expect_status() {
  local want=$1
  shift
  local out
  out=$(curl -s -o "$SERVE_LOG_DIR/body" -w '%{http_code}' "$@")
  local body
  body=$(cat "$SERVE_LOG_DIR/body")
  if [ "$out" != "$want" ]; then
    echo "FAIL: want $want, got $out for curl $*: $body" >&2
    FAILS=$((FAILS + 1))
    return 0
  fi
  if [ "$want" -ge 400 ]; then
    if ! echo "$body" | jq -e '.error | (has("message") and has("type") and has("param") and has("code")) and (.message | type == "string")' >/dev/null 2>&1; then
      echo "FAIL: status $want without an OpenAI error object for curl $*: $body" >&2
      FAILS=$((FAILS + 1))
      return 0
    fi
  fi
  echo "ok $want: $(echo "$body" | head -c 160)"
}
