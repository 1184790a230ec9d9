#!/usr/bin/env bash
# Golden chat-template renders: `mtpserve render-chat` must match @huggingface/jinja byte for byte on
# the Gemma 4 template (and the other templates tests/node/chat_template_golden.js knows).
#   bash chat_template_golden.sh <mtpserve-binary> <build-dir>     (env MTP_SOURCE_DIR: the source tree)
set -euo pipefail
bin="$1"
build="$2"
src="${MTP_SOURCE_DIR:?MTP_SOURCE_DIR must point at the source tree}"
if [[ ! -d "$src/tests/node/node_modules/@huggingface/jinja" ]]; then
  echo "missing tests/node/node_modules/@huggingface/jinja: run scripts/setup --test" >&2
  exit 1
fi
work="$build/e2e-chat-template"
rm -rf "$work"
mkdir -p "$work"
node "$src/tests/node/chat_template_golden.js" "$bin" "$src" "$work"
