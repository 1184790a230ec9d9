// Linear layers at decode sizes: our GEMV kernel vs cuBLAS, M = 1..64, for E4B and 31B projection shapes.
// Prints time, GB/s (weights + activations in + outputs) and % of the device-to-device copy bandwidth
// measured here (bytes read + written of a 1 GiB copy). Cold weights: each call reads a different copy of the
// matrix
// (>= 256 MB of copies in rotation, > 5x L2). Usage: bench_cuda_linear [iters=30]
#ifdef MTPSERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"

using namespace mtpserve;

static void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

double measure_copy_bw(Backend& be) {
  const int64_t n = int64_t(1) << 30;
  Tensor a = cuda_alloc_exact(be, DType::U8, {n}), b = cuda_alloc_exact(be, DType::U8, {n});
  Tensor a16 = a;  // fill with random bf16 values, not zeros
  a16.dtype = DType::BF16;
  a16.set_shape({n / 2});
  cuda_fill_random(be, a16, 1, 0, 1, false);
  auto st = static_cast<cudaStream_t>(cuda_stream(be));
  cudaEvent_t e0, e1;
  ck(cudaEventCreate(&e0), "event");
  ck(cudaEventCreate(&e1), "event");
  for (int i = 0; i < 2; i++) ck(cudaMemcpyAsync(b.data, a.data, n, cudaMemcpyDeviceToDevice, st), "copy");
  const int iters = 10;
  ck(cudaEventRecord(e0, st), "rec");
  for (int i = 0; i < iters; i++)
    ck(cudaMemcpyAsync(b.data, a.data, n, cudaMemcpyDeviceToDevice, st), "copy");
  ck(cudaEventRecord(e1, st), "rec");
  ck(cudaEventSynchronize(e1), "sync");
  float ms = 0;
  ck(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
  return 2.0 * double(n) * iters / (ms * 1e-3);
}

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 30;
  auto be = make_cuda_backend(0);
  std::printf("device: %s\n", be->name().c_str());
  const double bw = measure_copy_bw(*be);
  std::printf("measured device-to-device copy bandwidth: %.0f GB/s (read + write)\n\n", bw / 1e9);
  struct Shape {
    const char* name;
    int64_t N, K;
  };
  const std::vector<Shape> shapes = {
      {"E4B q_proj", 2048, 2560},   {"E4B k_proj", 512, 2560},  {"E4B o_proj", 2560, 2048},
      {"E4B gate/up", 10240, 2560}, {"E4B down", 2560, 10240},  {"E4B head", 262144, 2560},
      {"31B q_proj", 8192, 5376},   {"31B k_proj", 4096, 5376}, {"31B o_proj", 5376, 8192},
      {"31B gate/up", 21504, 5376}, {"31B down", 5376, 21504},  {"31B head", 262144, 5376},
  };
  const std::vector<int64_t> Ms = {1, 2, 3, 4, 8, 12, 16, 32, 64};
  auto st = static_cast<cudaStream_t>(cuda_stream(*be));
  cudaEvent_t e0, e1;
  ck(cudaEventCreate(&e0), "event");
  ck(cudaEventCreate(&e1), "event");
  std::printf("%-12s %5s %6s | %9s %8s %6s | %9s %8s %6s | %s\n", "shape", "NxK", "M", "gemv us", "GB/s",
              "%copy", "cublas us", "GB/s", "%copy", "faster");
  for (const Shape& s : shapes) {
    const int64_t wbytes = s.N * s.K * 2;
    const int copies = int(std::max<int64_t>(1, (int64_t(256) << 20) / wbytes + 1));
    std::vector<Tensor> ws;
    for (int i = 0; i < copies; i++) {
      ws.push_back(cuda_alloc_exact(*be, DType::BF16, {s.N, s.K}));
      cuda_fill_random(*be, ws.back(), 100 + i, 0.0f, 0.02f, true);
    }
    Tensor x = be->alloc(DType::BF16, {64, s.K}), out = be->alloc(DType::BF16, {64, s.N});
    cuda_fill_random(*be, x, 7, 0.0f, 1.0f, true);
    for (int64_t M : Ms) {
      double us[2];
      for (int p = 0; p < 2; p++) {
        cuda_set_linear_path(*be, p == 0 ? CudaLinearPath::Gemv : CudaLinearPath::Cublas);
        Tensor xm = x.rows(0, M), om = out.rows(0, M);
        for (int i = 0; i < 3; i++) be->linear(om, xm, ws[i % copies]);
        ck(cudaEventRecord(e0, st), "rec");
        for (int i = 0; i < iters; i++) be->linear(om, xm, ws[i % copies]);
        ck(cudaEventRecord(e1, st), "rec");
        be->synchronize();
        float ms = 0;
        ck(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
        us[p] = 1e3 * ms / iters;
      }
      const double bytes = double(wbytes + M * s.K * 2 + M * s.N * 2);
      auto gbs = [&](double u) { return bytes / (u * 1e-6) / 1e9; };
      std::printf("%-12s %5lldx%-5lld %3lld | %9.2f %8.0f %5.1f%% | %9.2f %8.0f %5.1f%% | %s\n", s.name,
                  (long long)s.N, (long long)s.K, (long long)M, us[0], gbs(us[0]),
                  100 * gbs(us[0]) * 1e9 / bw, us[1], gbs(us[1]), 100 * gbs(us[1]) * 1e9 / bw,
                  us[0] < us[1] ? "gemv" : "cublas");
    }
  }
  cuda_set_linear_path(*be, CudaLinearPath::Auto);
  return 0;
}
#else
#include <cstdio>
int main() {
  std::printf("bench_cuda_linear: built without CUDA\n");
  return 0;
}
#endif
