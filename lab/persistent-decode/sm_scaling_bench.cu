// Can a subset of the SMs stream the weights at full bandwidth? A persistent decode kernel would keep some
// SMs on the latency-bound ops (attention, norms, merges) while the others stream the next projections, so
// the question is how HBM read bandwidth scales with the number of streaming SMs. One CTA of 1024 threads per
// SM (a large shared-memory request keeps it to one per SM), each thread with U 16-byte streaming loads in
// flight, grid-striding over a 2 GiB buffer; bandwidth for N = 132 down to 16 SMs, and for a few U.
//   nvcc -O3 -arch=sm_90a -std=c++17 -o sm_scaling_bench sm_scaling_bench.cu && ./sm_scaling_bench
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                         \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

template <int U>
__global__ void __launch_bounds__(1024) stream(const uint4* w, long words, unsigned* sink) {
  extern __shared__ unsigned char pad[];  // only to keep one CTA per SM
  unsigned acc = 0;
  const long step = long(gridDim.x) * blockDim.x;
  for (long i = long(blockIdx.x) * blockDim.x + threadIdx.x; i < words; i += U * step) {
    uint4 r[U];
#pragma unroll
    for (int u = 0; u < U; u++)
      r[u] = i + u * step < words ? ld_stream(w + i + u * step) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; u++) acc ^= r[u].x ^ r[u].y ^ r[u].z ^ r[u].w;
  }
  if (acc == 0x12345678u) sink[0] = acc + pad[0];  // keeps the loads
}

template <int U>
float gbps(const uint4* w, long words, unsigned* sink, int sms, size_t smem) {
  CK(cudaFuncSetAttribute(stream<U>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  stream<U><<<sms, 1024, smem>>>(w, words, sink);  // warm-up
  CK(cudaEventRecord(a));
  const int reps = 5;
  for (int r = 0; r < reps; r++) stream<U><<<sms, 1024, smem>>>(w, words, sink);
  CK(cudaEventRecord(b));
  CK(cudaEventSynchronize(b));
  CK(cudaGetLastError());
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  return float(double(words) * 16 * reps / (ms * 1e-3) / 1e9);
}

int main() {
  const size_t bytes = size_t(2) << 30;
  const long words = long(bytes / 16);
  uint4* w;
  unsigned* sink;
  CK(cudaMalloc(&w, bytes));
  CK(cudaMemset(w, 1, bytes));
  CK(cudaMalloc(&sink, 4));
  int dev = 0, nsm = 0, smem_max = 0;
  CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
  CK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  const size_t smem = size_t(smem_max) - 1024;  // one CTA per SM
  std::printf("HBM read bandwidth (GB/s) by streaming SMs (1 CTA x 1024 threads each) and loads in flight\n");
  std::printf("%6s %10s %10s %10s\n", "SMs", "U=2", "U=4", "U=8");
  for (int sms : {nsm, 124, 116, 108, 100, 88, 66, 33, 16}) {
    if (sms > nsm) continue;
    std::printf("%6d %10.0f %10.0f %10.0f\n", sms, gbps<2>(w, words, sink, sms, smem),
                gbps<4>(w, words, sink, sms, smem), gbps<8>(w, words, sink, sms, smem));
  }
  return 0;
}
