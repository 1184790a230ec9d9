#!/usr/bin/env bash
# HF transformers vs mtpserve, side by side on one GPU: the same checkpoint, the same prompts, batch 1, greedy,
# bf16, the same number of new tokens; tokens/s, acceptance length and the ratios as a markdown table.
#
# On the GPU machine, from the repo root, with the CUDA bundle carried (scripts/gpu/cuda_build.sh builds it into
# .gpu/cuda here) and python3 + torch + transformers 5.17 installed there:
#     scripts/gpu/side_by_side.sh                       # bundled tiny pair, 16 chat prompts x 128 tokens (~2-3 min)
#     scripts/gpu/side_by_side.sh --e2b-random          # + Gemma 4 E2B-shaped random weights, raw decode (+3-4 min)
# Locally, the mtpserve half on the CPU (no torch needed):
#     scripts/gpu/side_by_side.sh --mtpserve-only --backend cpu --num-prompts 4 --max-new 32
#
# HF (scripts/gpu/hf_generate.py): generate() plain, with assistant_model= (K draft tokens), and with a static
# cache (transformers then torch.compiles the decode step; optional, reported as failed if it breaks).
# mtpserve: `mtpserve serve` once without the assistant (--no-spec) and once with it; one HTTP request at a time
# (POST /v1/completions with prompt token ids, temperature 0, return_token_ids, the "mtp" extension for K).
# Outputs in $OUT (default .gpu/out): side_by_side.md, side_by_side.json, side_by_side_raw/ (prompts, per-mode
# JSON with every generated token id, server logs).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=scripts/gpu

usage() {
  cat <<'EOF'
usage: scripts/gpu/side_by_side.sh [options]
  --target DIR          target checkpoint (default models/tiny-gemma4)
  --assistant DIR       Gemma 4 MTP assistant (default models/tiny-gemma4-assistant)
  --prompts FILE        acceptance_golden.json (prompt_sets) or JSON lines with "ids"
                        (default: <assistant>/acceptance_golden.json)
  --set NAME            prompt set in that file (default chat)
  --num-prompts N       prompts to run (default 16)
  --max-new N           new tokens per prompt (default 128)
  --k LIST              draft lengths, comma-separated (default 3)
  --stop none|eos       none: ignore EOS, every prompt generates exactly --max-new tokens (default);
                        eos: stop at the model's EOS ids (<eos>, <turn|>, ...) as a chat server would
  --hf-modes LIST       HF modes among plain,assisted,static (default plain,assisted,static)
  --no-static           same as dropping static from --hf-modes
  --static-timeout S    give up on an HF static-cache run (torch.compile included) after S seconds (default 240)
  --backend B           mtpserve backend: cuda (default), cpu, auto
  --bundle DIR          GPU bundle with run.sh (default .gpu/cuda; from scripts/gpu/cuda_build.sh)
  --mtpserve EXE        mtpserve executable to use instead of the bundle (default for --backend cpu:
                        build/mtpserve)
  --mtpserve-only       skip HF (no torch needed)
  --hf-only             skip mtpserve
  --hf-json FILE        reuse the HF results of an earlier run (side_by_side_raw/hf.json) instead of running HF
  --e2b-random          also: a Gemma 4 E2B-shaped random-weight checkpoint built and saved by HF (bf16),
                        plain decode only, HF vs mtpserve (needs torch even with --mtpserve-only)
  --e2b-only            only that (skip the tiny pair), e.g. to keep each command under 10 minutes
  --e2b-config FILE     config for it (default configs/gemma-4-E2B/config.json)
  --e2b-dir DIR         where it is saved / reused (default ${TMPDIR:-/tmp}/mtpserve-e2b-random)
  --e2b-prompts N       prompts for it (default 4)
  --e2b-hf-modes LIST   HF modes for it (default plain,static)
  --warmup N            untimed warm-up requests per mtpserve mode (default 2)
  --out DIR             output folder (default $OUT, else .gpu/out)
  -h, --help
environment: PYTHON (default python3)
EOF
}

die() {
  echo "side_by_side.sh: error: $*" >&2
  exit 1
}

target=models/tiny-gemma4
assistant=models/tiny-gemma4-assistant
prompts_file=""
set_name=chat
num_prompts=16
max_new=128
ks=3
stop=none
hf_modes=plain,assisted,static
backend=cuda
bundle=${BUNDLE:-.gpu/cuda}
mtpserve_exe=""
bundle_set=0
do_hf=1
hf_json=""
do_mtp=1
do_tiny=1
e2b=0
static_timeout=240
e2b_config=configs/gemma-4-E2B/config.json
e2b_dir=${TMPDIR:-/tmp}/mtpserve-e2b-random
e2b_prompts=4
e2b_hf_modes=plain,static
warmup=2
out=${OUT:-.gpu/out}
py=${PYTHON:-python3}
server_timeout=${SERVER_TIMEOUT:-300}

need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --target) need "$@"; target=$2; shift 2 ;;
    --assistant) need "$@"; assistant=$2; shift 2 ;;
    --prompts) need "$@"; prompts_file=$2; shift 2 ;;
    --set) need "$@"; set_name=$2; shift 2 ;;
    --num-prompts) need "$@"; num_prompts=$2; shift 2 ;;
    --max-new) need "$@"; max_new=$2; shift 2 ;;
    --k) need "$@"; ks=$2; shift 2 ;;
    --stop) need "$@"; stop=$2; shift 2 ;;
    --hf-modes) need "$@"; hf_modes=$2; shift 2 ;;
    --no-static) hf_modes=$(echo ",$hf_modes," | sed 's/,static,/,/; s/^,//; s/,$//'); shift ;;
    --backend) need "$@"; backend=$2; shift 2 ;;
    --bundle) need "$@"; bundle=$2; bundle_set=1; shift 2 ;;
    --mtpserve) need "$@"; mtpserve_exe=$2; shift 2 ;;
    --mtpserve-only) do_hf=0; shift ;;
    --hf-json) hf_json=$2; do_hf=0; shift 2 ;;
    --hf-only) do_mtp=0; shift ;;
    --e2b-random) e2b=1; shift ;;
    --e2b-only) e2b=1; do_tiny=0; shift ;;
    --static-timeout) need "$@"; static_timeout=$2; shift 2 ;;
    --e2b-config) need "$@"; e2b_config=$2; shift 2 ;;
    --e2b-dir) need "$@"; e2b_dir=$2; shift 2 ;;
    --e2b-prompts) need "$@"; e2b_prompts=$2; shift 2 ;;
    --e2b-hf-modes) need "$@"; e2b_hf_modes=$2; shift 2 ;;
    --warmup) need "$@"; warmup=$2; shift 2 ;;
    --out) need "$@"; out=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

# ---------------------------------------------------------------------------------------------- checks
[ $do_hf = 1 ] || [ $do_mtp = 1 ] || die "--mtpserve-only and --hf-only exclude each other"
[[ $num_prompts =~ ^[1-9][0-9]*$ ]] || die "--num-prompts must be a positive integer, got '$num_prompts'"
[[ $max_new =~ ^[1-9][0-9]*$ ]] || die "--max-new must be a positive integer, got '$max_new'"
[[ $e2b_prompts =~ ^[1-9][0-9]*$ ]] || die "--e2b-prompts must be a positive integer, got '$e2b_prompts'"
[[ $static_timeout =~ ^[1-9][0-9]*$ ]] || die "--static-timeout must be a positive integer, got '$static_timeout'"
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer, got '$warmup'"
[[ $ks =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--k must be a comma-separated list of positive integers, got '$ks'"
case $stop in none | eos) ;; *) die "--stop must be none or eos, got '$stop'" ;; esac
case $backend in cuda | cpu | auto) ;; *) die "--backend must be cuda, cpu or auto, got '$backend'" ;; esac
for m in ${hf_modes//,/ } ${e2b_hf_modes//,/ }; do
  case $m in plain | assisted | static) ;; *) die "unknown HF mode '$m' (plain, assisted, static)" ;; esac
done
[ -f "$target/config.json" ] || die "--target '$target' has no config.json"
[ -f "$assistant/config.json" ] || die "--assistant '$assistant' has no config.json"
[ -n "$prompts_file" ] || prompts_file=$assistant/acceptance_golden.json
[ -f "$prompts_file" ] || die "prompts file '$prompts_file' not found (pass --prompts)"
kmax=0
for k in ${ks//,/ }; do if ((k > kmax)); then kmax=$k; fi; done
((kmax <= 16)) || die "--k: mtpserve allows at most 16 draft tokens"

command -v "$py" >/dev/null || die "python ('$py') not found; set PYTHON"
if [ $do_hf = 1 ] || [ $e2b = 1 ]; then
  "$py" -c 'import torch, transformers; assert torch.cuda.is_available(), "torch sees no CUDA device"' 2>/dev/null ||
    die "HF runs need $py with torch (CUDA) and transformers 5.17: $("$py" -c 'import torch, transformers; print(torch.cuda.is_available())' 2>&1 | tail -1)"
fi

MTP=()
if [ $do_mtp = 1 ]; then
  if [ -n "$mtpserve_exe" ]; then
    MTP=("$mtpserve_exe")
  elif [ "$backend" = cpu ] && [ $bundle_set = 0 ] && [ -x build/mtpserve ]; then
    MTP=(build/mtpserve)
  else
    [ -x "$bundle/run.sh" ] && [ -x "$bundle/mtpserve" ] ||
      die "no mtpserve CUDA bundle at $bundle (build it with scripts/gpu/cuda_build.sh on the dev machine and carry .gpu/cuda; or pass --mtpserve EXE / --bundle DIR)"
    MTP=("$bundle/run.sh" mtpserve)
  fi
  "${MTP[@]}" serve --help >/dev/null 2>&1 || die "'${MTP[*]} serve --help' fails: $("${MTP[@]}" serve --help 2>&1 | tail -3)"
fi

raw=$out/side_by_side_raw
rm -rf "$raw"
mkdir -p "$raw"
rm -f "$out/side_by_side.md" "$out/side_by_side.json"
t_start=$SECONDS
phase() { echo "=== $* ($((SECONDS - t_start)) s)" >&2; }

gpu_name=""
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$raw/gpu.txt" 2>&1 || true
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
fi

# ---------------------------------------------------------------------------------------------- servers
SERVER_PID=""
BASE=""
SERVER_INFO=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

start_server() { # name, serve args...
  local name=$1 log line
  shift
  log=$raw/server_$name.log
  "${MTP[@]}" serve --backend "$backend" --port 0 --no-request-log "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  local deadline=$((SECONDS + server_timeout))
  while :; do
    line=$(grep -m1 -o 'listening on http://[^ ]*' "$log" || true)
    [ -n "$line" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      local rc=0
      wait "$SERVER_PID" || rc=$?
      SERVER_PID=""
      tail -20 "$log" >&2
      die "mtpserve serve ($name) exited with status $rc before listening (log: $log)"
    fi
    ((SECONDS < deadline)) || { tail -20 "$log" >&2; die "mtpserve serve ($name) not listening after ${server_timeout} s (log: $log)"; }
    sleep 0.2
  done
  BASE=${line#listening on }
  local be
  be=$(sed -n 's/^  backend \([a-z]*\).*/\1/p' "$log" | head -1)
  [ "$backend" = auto ] || [ "$be" = "$backend" ] || die "mtpserve serve ($name) runs on backend '$be', not '$backend'"
  SERVER_INFO=$(printf '{"backend": "%s", "device": "%s", "log": "%s"}' "$be" "$gpu_name" "$log")
  echo "  mtpserve serve ($name): $BASE, backend $be" >&2
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local rc=0
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  # 143 = killed by our SIGTERM before its handler was installed; anything else is worth a look
  [ $rc = 0 ] || [ $rc = 143 ] || echo "  warning: mtpserve serve exited with status $rc" >&2
}

client() { # name k group prompts
  "$py" $here/side_by_side.py client --base "$BASE" --prompts "$4" --max-new "$max_new" --k "$2" --stop "$stop" \
    --warmup "$warmup" --name "$1" --group "$3" --server-info "$SERVER_INFO" --out "$raw/${3:+$3_}$1.json"
}

# ---------------------------------------------------------------------------------------------- run
phase "prompts"
"$py" $here/side_by_side.py prompts --golden "$prompts_file" --set "$set_name" --n "$num_prompts" --out "$raw/prompts.json"

hf_files=()
if [ $do_tiny = 1 ] && [ $do_hf = 1 ]; then
  phase "HF transformers: $hf_modes"
  "$py" $here/hf_generate.py --target "$target" --assistant "$assistant" --prompts "$raw/prompts.json" \
    --max-new "$max_new" --k "$ks" --modes "$hf_modes" --stop "$stop" --static-timeout "$static_timeout" \
    --out "$raw/hf.json" 2>&1 | tee "$raw/hf.log"
  hf_files+=("$raw/hf.json")
fi
if [ -n "$hf_json" ]; then
  [ -f "$hf_json" ] || die "--hf-json '$hf_json' not found"
  hf_files+=("$hf_json")
fi

if [ $do_tiny = 1 ] && [ $do_mtp = 1 ]; then
  phase "mtpserve: no speculation"
  start_server plain --model "$target" --no-spec
  client mtpserve_plain -1 "" "$raw/prompts.json"
  stop_server
  phase "mtpserve: MTP assistant, K in $ks"
  start_server mtp --model "$target" --assistant "$assistant" --num-draft "$kmax"
  for k in ${ks//,/ }; do
    client "mtpserve_mtp_k$k" "$k" "" "$raw/prompts.json"
  done
  stop_server
fi

if [ $e2b = 1 ]; then
  phase "E2B-shaped random weights: checkpoint + HF ($e2b_hf_modes)"
  [ -f "$e2b_config" ] || die "--e2b-config '$e2b_config' not found"
  "$py" $here/side_by_side.py prompts --golden "$prompts_file" --set "$set_name" --n "$e2b_prompts" --out "$raw/prompts_e2b.json"
  m=$e2b_hf_modes
  [ $do_hf = 1 ] || m=""  # --mtpserve-only: only build (or reuse) the checkpoint
  "$py" $here/hf_generate.py --random-config "$e2b_config" --model-dir "$e2b_dir" --prompts "$raw/prompts_e2b.json" \
    --max-new "$max_new" --modes "$m" --stop "$stop" --static-timeout "$static_timeout" --group e2b \
    --out "$raw/hf_e2b.json" 2>&1 | tee "$raw/hf_e2b.log"
  if [ $do_hf = 1 ]; then hf_files+=("$raw/hf_e2b.json"); fi
  # `mtpserve serve` wants a tokenizer next to the weights; ids beyond its vocabulary only decode to nothing.
  for f in tokenizer.json tokenizer_config.json; do
    if [ -f "$target/$f" ] && [ ! -f "$e2b_dir/$f" ]; then cp "$target/$f" "$e2b_dir/$f"; fi
  done
  if [ $do_mtp = 1 ]; then
    phase "E2B-shaped random weights: mtpserve"
    start_server e2b --model "$e2b_dir" --no-spec
    client mtpserve_plain -1 e2b "$raw/prompts_e2b.json"
    stop_server
  fi
fi

phase "report"
mtp_files=()
for f in "$raw"/mtpserve_*.json "$raw"/e2b_mtpserve_*.json; do [ -e "$f" ] && mtp_files+=("$f"); done
"$py" $here/side_by_side.py report --hf "${hf_files[@]}" --mtp "${mtp_files[@]}" --target "$target" \
  --assistant "$assistant" --max-new "$max_new" --stop "$stop" --md "$out/side_by_side.md" --json "$out/side_by_side.json"
phase "done: $out/side_by_side.md, $out/side_by_side.json, $raw/"
