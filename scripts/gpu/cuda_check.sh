#!/usr/bin/env bash
# On the GPU machine, from the repo root, after scripts/gpu/cuda_build.sh (here) and with .gpu/cuda carried:
# runs the CUDA op tests, then the benchmarks; every log is tee'd into $OUT (default .gpu/out).
#   usage: scripts/gpu/cuda_check.sh [tests|linear|decode]...   (default: all three)
set -uo pipefail
cd "$(dirname "$0")/../.."
b=${BUNDLE:-.gpu/cuda}
out=${OUT:-.gpu/out}
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests linear decode)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
rc=0
for s in "${steps[@]}"; do
  case $s in
    tests) ${TESTS_TIMEOUT:+timeout $TESTS_TIMEOUT} "$b/run.sh" mtpserve_cuda_tests --gtest_color=no 2>&1 | tee "$out/cuda_tests.log"; rc=$((rc | PIPESTATUS[0])) ;;
    linear) ${LINEAR_TIMEOUT:+timeout $LINEAR_TIMEOUT} "$b/run.sh" bench_cuda_linear ${LINEAR_ITERS:-30} 2>&1 | tee "$out/bench_linear.log"; rc=$((rc | PIPESTATUS[0])) ;;
    decode) ${DECODE_TIMEOUT:+timeout $DECODE_TIMEOUT} "$b/run.sh" bench_cuda_decode configs ${DECODE_ITERS:-10} ${DECODE_MODELS:-E2B,E4B,31B,26B-A4B} \
              ${DECODE_CTXS:-1024,8192} ${DECODE_BATCHES:-1,8,32,64} 2>&1 | tee "$out/bench_decode.log"
            rc=$((rc | PIPESTATUS[0])) ;;
    *) echo "unknown step $s"; rc=1 ;;
  esac
done
exit $rc
