#!/usr/bin/env bash
# End-to-end corpus build: fetch pinned packages, then extract/clean/generate.
#   scripts/corpus/run.sh [OUT_DIR] [extra corpus_build.py flags...]
# Default OUT_DIR: <repo>/.gpu/corpus (git-ignored).  Downloads and unpacked
# packages go to <repo>/.gpu/corpus_src (not needed on the GPU machine).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${1:-$REPO/.gpu/corpus}"; shift || true
SRC="${CORPUS_SRC:-$REPO/.gpu/corpus_src}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

t0=$(date +%s)
"$HERE/fetch_sources.sh" "$SRC"
t1=$(date +%s)
"$PY" "$HERE/corpus_build.py" --raw "$SRC/raw" --out "$OUT" --seed 1234 "$@"
t2=$(date +%s)

echo
echo "== output: $OUT"
ls -l "$OUT"
du -sh "$OUT"
echo "compressed corpus total: $(cat "$OUT"/*.jsonl.xz | wc -c) bytes"
echo "fetch $((t1 - t0)) s, build $((t2 - t1)) s, total $((t2 - t0)) s"
