#!/usr/bin/env bash
# Build the CUDA backend, its op tests and benchmarks on the development machine (nvcc 13.0, sm_90a) and bundle
# them for the GPU machine into .gpu/cuda (git-ignored; pass it in the device tool's `carry`).
#   usage: scripts/gpu/cuda_build.sh [build_dir=build-cuda]
set -euo pipefail
cd "$(dirname "$0")/../.."
bd=${1:-build-cuda}
nvcc=${CUDACXX:-/usr/local/cuda/bin/nvcc}
cmake -S . -B "$bd" -G Ninja -DMTPSERVE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$bd" mtpserve mtpserve_cuda_tests bench_cuda_linear bench_cuda_decode
rm -rf .gpu/cuda
/work/shared/tools/bundle-for-gpu.sh .gpu/cuda "$bd/mtpserve" "$bd/mtpserve_cuda_tests" "$bd/bench_cuda_linear" "$bd/bench_cuda_decode"
