// Linear layers at decode sizes: our GEMV kernel vs cuBLAS, M = 1..64, for E4B and 31B projection shapes.
// Prints time and % of the device-to-device copy bandwidth measured here (bytes read + written of a 1 GiB
// copy), counting weights + activations in + outputs. Cold weights: each call reads a different copy of the
// matrix (>= 256 MB of copies in rotation, > 5x L2). Each call is timed two ways: launched one by one on the
// stream (includes the launch gaps) and replayed from a CUDA graph of the same calls (as decode runs them).
// Usage: bench_cuda_linear [iters=30] [filter] [sweep]
//   filter: only shapes whose name contains it ("E4B", "q_proj"; "" or "all" = every shape)
//   sweep: time every GEMV variant (linear.cu kVariants) at M = 1, 2, 3, 4, 8 instead of GEMV vs cuBLAS
//          (PDL as MTP_PDL says: on unless 0)
#ifdef MTPSERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"

namespace mtpserve::cuda {
// linear.cu: variant -1 = pick by shape; pdl 0 / 1 = programmatic dependent launch off / on, -1 = leave.
// Returns the number of GEMV variants.
int gemv_override(int variant, int pdl);
}  // namespace mtpserve::cuda

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
  std::string filter = argc > 2 ? argv[2] : "";
  if (filter == "all") filter.clear();
  const bool sweep = argc > 3 && std::string(argv[3]) == "sweep";
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
  const std::vector<int64_t> Ms =
      sweep ? std::vector<int64_t>{1, 2, 3, 4, 8} : std::vector<int64_t>{1, 2, 3, 4, 8, 12, 16, 32, 64};
  const int nvar = cuda::gemv_override(-1, -1);
  auto st = static_cast<cudaStream_t>(cuda_stream(*be));
  cudaEvent_t e0, e1;
  ck(cudaEventCreate(&e0), "event");
  ck(cudaEventCreate(&e1), "event");
  auto elapsed_us = [&](int calls) {
    be->synchronize();
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
    return 1e3 * ms / calls;
  };
  if (sweep) {
    std::printf("us per call by GEMV variant (g = CUDA graph replay, s = stream launches); * = best\n");
    std::printf("%-12s %11s %3s %s |", "shape", "NxK", "M", " ");
    for (int v = 0; v < nvar; v++) std::printf("   v%-4d", v);
    std::printf("| cublas | best %%copy\n");
  } else {
    std::printf(
        "gemv: variant picked by shape, with programmatic dependent launch (PDL); no-PDL: the same without\n"
        "PDL, graph replay; auto: what linear picks (GEMV with PDL or cuBLAS), graph replay\n");
    std::printf("%-12s %11s %3s | %8s %6s %8s %6s | %8s %6s | %8s %6s %8s %6s | %8s %6s\n", "shape", "NxK",
                "M", "gemv us", "%copy", "graph us", "%copy", "no-PDL", "%copy", "cublas", "%copy",
                "graph us", "%copy", "auto", "%copy");
  }
  for (const Shape& s : shapes) {
    if (!filter.empty() && std::string(s.name).find(filter) == std::string::npos) continue;
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
      Tensor xm = x.rows(0, M), om = out.rows(0, M);
      // {stream, graph} us per call of the current path.
      auto time_path = [&](double(&us)[2]) {
        for (int i = 0; i < 3; i++) be->linear(om, xm, ws[i % copies]);
        ck(cudaEventRecord(e0, st), "rec");
        for (int i = 0; i < iters; i++) be->linear(om, xm, ws[i % copies]);
        ck(cudaEventRecord(e1, st), "rec");
        us[0] = elapsed_us(iters);
        auto g = be->capture([&] {
          for (int i = 0; i < iters; i++) be->linear(om, xm, ws[(i + 1) % copies]);
        });
        g->replay();
        ck(cudaEventRecord(e0, st), "rec");
        for (int r = 0; r < 3; r++) g->replay();
        ck(cudaEventRecord(e1, st), "rec");
        us[1] = elapsed_us(3 * iters);
      };
      const double bytes = double(wbytes + M * s.K * 2 + M * s.N * 2);
      auto pct = [&](double u) { return 100 * bytes / (u * 1e-6) / bw; };
      double cub[2], gem[2], aut[2];
      cuda_set_linear_path(*be, CudaLinearPath::Cublas);
      time_path(cub);
      if (sweep) {
        std::vector<double> g(static_cast<size_t>(nvar)), t(static_cast<size_t>(nvar));
        cuda_set_linear_path(*be, CudaLinearPath::Gemv);
        for (int v = 0; v < nvar; v++) {
          cuda::gemv_override(v, -1);
          time_path(gem);
          t[size_t(v)] = gem[0];
          g[size_t(v)] = gem[1];
        }
        cuda::gemv_override(-1, -1);
        for (int mode = 1; mode >= 0; mode--) {
          const std::vector<double>& u = mode ? g : t;
          const size_t best = size_t(std::min_element(u.begin(), u.end()) - u.begin());
          std::printf("%-12s %5lldx%-5lld %3lld %s |", s.name, (long long)s.N, (long long)s.K, (long long)M,
                      mode ? "g" : "s");
          for (size_t v = 0; v < u.size(); v++) std::printf(" %6.2f%s", u[v], v == best ? "*" : " ");
          std::printf("| %6.2f | v%zu %5.1f%%\n", cub[mode], best, pct(u[best]));
        }
        continue;
      }
      double nopdl[2];
      cuda_set_linear_path(*be, CudaLinearPath::Gemv);
      cuda::gemv_override(-1, 1);
      time_path(gem);
      cuda::gemv_override(-1, 0);
      time_path(nopdl);
      cuda::gemv_override(-1, 1);
      cuda_set_linear_path(*be, CudaLinearPath::Auto);
      time_path(aut);
      std::printf(
          "%-12s %5lldx%-5lld %3lld | %8.2f %5.1f%% %8.2f %5.1f%% | %8.2f %5.1f%% | %8.2f %5.1f%% %8.2f "
          "%5.1f%% | "
          "%8.2f %5.1f%%\n",
          s.name, (long long)s.N, (long long)s.K, (long long)M, gem[0], pct(gem[0]), gem[1], pct(gem[1]),
          nopdl[1], pct(nopdl[1]), cub[0], pct(cub[0]), cub[1], pct(cub[1]), aut[1], pct(aut[1]));
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
