#!/usr/bin/env bash
# Tiny Gemma 4 target + MTP assistant pipeline, stages B..H (docs: training-tiny-models.md, scripts/tiny/README.md).
#
#   scripts/tiny/run_all.sh --smoke                       # everything tiny on a synthetic corpus, ~3 min
#   scripts/tiny/run_all.sh --fast --stages B,C,D,E       # tokenizer, packing, target training + export (<= 9 min)
#   scripts/tiny/run_all.sh --fast --stages F,G,H         # self-gen, assistant, verification (<= 9 min)
#
# Options: --corpus DIR|FILE.tar.xz (default .gpu/corpus; --smoke: a generated fake corpus unless given),
#          --retrain-tokenizer (stage B retrains even if models/tiny-gemma4/tokenizer.json exists), --no-gate.
# If $OUT is set, what must be kept is packed there at the end (see README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
STAGES="B,C,D,E,F,G,H"; FAST=0; SMOKE=0; CORPUS=""; RETRAIN_TOK=0; NO_GATE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) STAGES="$2"; shift 2;;
    --fast) FAST=1; shift;;
    --smoke) SMOKE=1; shift;;
    --corpus) CORPUS="$2"; shift 2;;
    --retrain-tokenizer) RETRAIN_TOK=1; shift;;
    --no-gate) NO_GATE="--no-gate"; shift;;
    *) echo "unknown argument $1"; exit 2;;
  esac
done
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true PYTHONDONTWRITEBYTECODE=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=${TRANSFORMERS_VERBOSITY:-error}
PY=${PYTHON:-python3}
S=scripts/tiny
if [ "$SMOKE" = 1 ]; then
  BUILD=build/tiny-smoke; MODELS=$BUILD/models; FIX=$BUILD/fixtures; NO_GATE="--no-gate"
else
  BUILD=build/tiny; MODELS=models; FIX=tests/data/tiny
fi
TGT=$MODELS/tiny-gemma4; AD=$MODELS/tiny-gemma4-assistant; AC=$MODELS/tiny-gemma4-assistant-centroid
DATA=$BUILD/data; REPORT=$BUILD/report.json; LOG=$BUILD/log.txt
mkdir -p "$BUILD" "$MODELS" "$FIX"
exec > >(tee -a "$LOG") 2>&1
echo "=== run_all $(date -u +%FT%TZ) stages=$STAGES fast=$FAST smoke=$SMOKE root=$ROOT"
has() { [[ ",$STAGES," == *",$1,"* ]]; }
T_ALL=$(date +%s)
stage_time() { echo "=== stage $1: $(( $(date +%s) - $2 ))s (total $(( $(date +%s) - T_ALL ))s)"; }

# ---------------------------------------------------------------- knobs
if [ "$SMOKE" = 1 ]; then
  TOK_ARGS="--sample-mb 5 --allow-short"; VERIFY_TOK_ARGS="--n-lines 2000 --n-chat 100"
  TT_ARGS="--seq-len 256 --batch 16 --warmup 10 --eval-every 50 --time-budget-s 20"
  SG_ARGS="--n-prompts 64 --max-new 48 --batch 32"
  TA_ARGS="--seq-len 256 --batch 16 --warmup 10 --time-budget-s 15 --centroid-fit-s 3 --kmeans-iters 5 --eval-batches 2"
  VP_ARGS="--n-chat 8 --n-think 4 --n-text 8 --max-new 32 --K 1,3,4 --bf16-K 4 --hf-prompts 4 --ppl-rows 16"
elif [ "$FAST" = 1 ]; then
  TOK_ARGS="--sample-mb 40"; VERIFY_TOK_ARGS=""
  TT_ARGS="--time-budget-s ${TT_BUDGET:-270}"
  SG_ARGS="--n-prompts 4096"
  TA_ARGS="--time-budget-s 150 --centroid-fit-s 15 --eval-batches 4"
  VP_ARGS="--hf-prompts 16 --bf16-K 4"
else
  TOK_ARGS="--sample-mb 40"; VERIFY_TOK_ARGS=""
  TT_ARGS="--time-budget-s 400"; SG_ARGS="--n-prompts 8192"; TA_ARGS="--time-budget-s 200"; VP_ARGS=""
fi

# ---------------------------------------------------------------- corpus
need_corpus=0
for s in B C F G H; do has $s && need_corpus=1; done
if [ "$need_corpus" = 1 ]; then
  T0=$(date +%s)
  if [ -z "$CORPUS" ]; then
    if [ "$SMOKE" = 1 ]; then
      CORPUS=$BUILD/fake_corpus
      [ -f "$CORPUS/heldout_prompts.jsonl" ] || $PY $S/make_fake_corpus.py --out "$CORPUS" --mb 3
    else
      CORPUS=.gpu/corpus
    fi
  fi
  [ -e "$CORPUS" ] || { echo "corpus not found: $CORPUS"; exit 1; }
  $PY $S/common.py materialize --corpus "$CORPUS" --out "$BUILD/corpus"
  CORPUS_DIR=$BUILD/corpus
  stage_time corpus "$T0"
fi

REPACK_FRAC=${REPACK_FRAC:-0.35}
ensure_data() {  # D..H need the packed data; re-pack (deterministic) on a fresh machine; $1 = train fraction
  local frac=${1:-1.0}
  if [ ! -f "$DATA/train.bin" ] || [ ! -f "$DATA/heldout.bin" ]; then
    echo "=== packed data missing: re-running stage C"
    $PY $S/pack_data.py --corpus "$CORPUS_DIR" --tokenizer "$TGT" --out "$DATA" --train-frac "$frac" \
        --report "$BUILD/report_repack.json"
  fi
}

# ---------------------------------------------------------------- B: tokenizer
if has B; then
  T0=$(date +%s)
  if [ -f "$TGT/tokenizer.json" ] && [ "$RETRAIN_TOK" = 0 ]; then
    echo "=== B: reusing $TGT/tokenizer.json sha256 $(sha256sum "$TGT/tokenizer.json" | cut -c1-64)"
  else
    $PY $S/tok_train.py --corpus "$CORPUS_DIR" --out "$TGT" --vocab 8192 $TOK_ARGS --seed 1234 --report "$REPORT"
  fi
  $PY $S/tok_verify.py --tokenizer "$TGT" --corpus "$CORPUS_DIR" --golden-out "$FIX" $VERIFY_TOK_ARGS --report "$REPORT"
  stage_time B "$T0"
fi
# ---------------------------------------------------------------- C: pack
if has C; then
  T0=$(date +%s)
  $PY $S/pack_data.py --corpus "$CORPUS_DIR" --tokenizer "$TGT" --out "$DATA" --report "$REPORT"
  stage_time C "$T0"
fi
# ---------------------------------------------------------------- D: target
if has D; then
  T0=$(date +%s)
  ensure_data 1.0
  $PY $S/train_target.py --data "$DATA" --out "$BUILD/target_fp32" $TT_ARGS --seed 1234 --report "$REPORT"
  stage_time D "$T0"
fi
# ---------------------------------------------------------------- E: export target
if has E; then
  T0=$(date +%s)
  ensure_data "$REPACK_FRAC"
  $PY $S/export_target.py --ckpt "$BUILD/target_fp32" --out "$TGT" --data "$DATA" \
      --layer-scalars 1,0.5,1,0.5,1,0.5,1,0.5 --fixtures "$FIX" --report "$REPORT"
  stage_time E "$T0"
fi
# ---------------------------------------------------------------- F: self-generation
if has F; then
  T0=$(date +%s)
  $PY $S/selfgen.py --target "$TGT" --corpus "$CORPUS_DIR" --out "$BUILD/selfgen" $SG_ARGS --seed 1234 --report "$REPORT"
  stage_time F "$T0"
fi
# ---------------------------------------------------------------- G: assistant
if has G; then
  T0=$(date +%s)
  ensure_data "$REPACK_FRAC"
  $PY $S/train_assistant.py --target "$TGT" --data "$DATA" --selfgen "$BUILD/selfgen" --out "$MODELS" \
      --fixtures "$FIX" --K 4 --qpos-offset 1 $TA_ARGS --seed 1234 --report "$REPORT"
  stage_time G "$T0"
fi
# ---------------------------------------------------------------- H: verify
if has H; then
  T0=$(date +%s)
  ensure_data "$REPACK_FRAC"
  if ! $PY -c "import json,sys; r=json.load(open('$REPORT')); sys.exit(0 if 'tokenizer_verify' in r else 1)" 2>/dev/null; then
    $PY $S/tok_verify.py --tokenizer "$TGT" --corpus "$CORPUS_DIR" --golden-out "$FIX" $VERIFY_TOK_ARGS --report "$REPORT" || true
  fi
  set +e
  $PY $S/verify_pair.py --target "$TGT" --assistants "$AD,$AC" --data "$DATA" --corpus "$CORPUS_DIR" \
      --ckpt "$BUILD/target_fp32" --fixtures "$FIX" --out-dir "$BUILD" --report "$REPORT" $VP_ARGS $NO_GATE
  VRC=$?
  set -e
  [ -f "$BUILD/samples.txt" ] && cp "$BUILD/samples.txt" "$FIX/samples.txt"
  stage_time H "$T0"
fi
echo "=== run_all done in $(( $(date +%s) - T_ALL ))s"

# ---------------------------------------------------------------- pack results into $OUT
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  if has E; then  # the target dir is ~26 MB: split into <16 MB parts
    tar -cf - "$TGT" | split -b 15000000 -d -a 1 - "$OUT/target.tar.part"
  elif has B; then
    tar -cf "$OUT/tokenizer.tar" "$TGT"/tokenizer.json "$TGT"/tokenizer_config.json "$TGT"/chat_template.jinja
  fi
  if has G || has H; then
    tar -cf "$OUT/assistants.tar" "$AD" "$AC"
  fi
  tar -cf "$OUT/fixtures.tar" "$FIX"
  cp "$REPORT" "$OUT/report.json" 2>/dev/null || true
  cp "$LOG" "$OUT/log.txt" 2>/dev/null || true
  ls -la "$OUT"
fi
if [ "${VRC:-0}" != 0 ]; then echo "=== verify gate FAILED (rc $VRC)"; exit "$VRC"; fi
