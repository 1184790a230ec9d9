#!/usr/bin/env bash
# On the GPU machine, from the repo root with the bundle of scripts/gpu/cuda_build.sh in .gpu/cuda: every CUDA
# test and memcheck on the op tests (tests), the decode table (decode), `mtpserve bench` decode / draft /
# verify / MTP iteration / prefill for the four model configs (bench). Logs go to the log dir (default $OUT,
# else ./gpu-logs) and a summary is printed. Each part fits one 10-minute device call.
#   usage: scripts/gpu/measure_all.sh tests|decode|bench|all [log_dir]
set -uo pipefail
part=${1:-all}
out=${2:-${OUT:-gpu-logs}}
mkdir -p "$out"
export MTP_SOURCE_DIR=$PWD
R=.gpu/cuda/run.sh
if [ "$part" = tests ] || [ "$part" = all ]; then
  $R mtpserve_cuda_tests >"$out/tests.log" 2>&1
  echo "tests: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/tests.log" | tr '\n' ' ')"
  LD_LIBRARY_PATH=.gpu/cuda/lib /usr/local/cuda/bin/compute-sanitizer --tool memcheck --leak-check full \
    .gpu/cuda/mtpserve_cuda_tests --gtest_filter='CudaOps.*:CudaFused.Qkv*:CudaFused.LinearGelu*:CudaPrefill*' \
    >"$out/memcheck.log" 2>&1
  echo "memcheck: $(grep -E 'ERROR SUMMARY|LEAK SUMMARY|PASSED|FAILED' "$out/memcheck.log" | tr '\n' ' ')"
fi
if [ "$part" = decode ] || [ "$part" = all ]; then
  $R bench_cuda_decode configs 8 >"$out/decode.log" 2>&1
  grep -E "^(E2B|E4B|31B|26B)" "$out/decode.log" | grep -E " (1|8) \|"
fi
if [ "$part" = bench ] || [ "$part" = all ]; then
  for m in E2B E4B 31B 26B-A4B; do
    pre=2048,8192
    [ "$m" = 31B ] && pre=2048  # an 8k prompt's activations do not fit beside the 31B weights on 80 GB
    $R mtpserve bench --backend cuda --load-format dummy --iters 5 --k 3,4,6 --batch 1,8 --prefill $pre \
      --model configs/gemma-4-$m --assistant configs/gemma-4-$m-assistant >"$out/bench-$m.log" 2>&1
    echo "== $m draft step: $(grep -A2 '^draft step' "$out/bench-$m.log" | grep ' 1 |' | head -1)"
    grep -A3 '^prefill' "$out/bench-$m.log" | tail -2
  done
fi
