// Linear layers: out[M, N] = x[M, K] @ w[N, K]^T with bf16 operands, fp32 accumulation and one bf16 rounding.
// Small M (decode, M <= 8): our GEMV kernels, 16-byte streaming loads that skip L1, fp32 FMAs, a fixed-order
// reduction. Larger M: cuBLAS GemmEx (bf16 in/out, CUBLAS_COMPUTE_32F). bench/bench_cuda_linear.cpp measures
// where each wins (cuda-kernels.md §1; `bench_cuda_linear 30 all sweep` times every GEMV variant).
//
// At batch 1 a GEMV of a few MB costs a fixed ~2 us (launch, first DRAM round trip, reduction, completion)
// plus bytes / ~3.2 TB/s, so small matrices are latency bound. Two things cut the fixed part:
//  - split-K blocks (gemv_splitk_kernel): all of a row's bytes are requested at once by a whole block instead
//    of one warp walking the row in dependent steps (the warp-per-row kernel, variant 0);
//  - programmatic dependent launch (PDL, ~0.3 us more per call on the E4B projections): the GEMV is launched
//    with programmatic stream serialization, lets its successor launch as soon as all its blocks run
//    (griddepcontrol.launch_dependents), and issues its first weight loads before griddepcontrol.wait (the
//    wait for the previous kernels' results). So the weights must not be written by a kernel that may still
//    be running (model weights are uploaded or generated before the model runs); x is read and out written
//    only after the wait. A successor launched without PDL waits for the whole grid as usual.
//    MTP_GEMV_PDL=0 turns PDL off.
#include <cstdlib>

#include "backend/cuda/gemv_core.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// ld_stream as a volatile asm: kept in program order with the PDL instructions (issued before the wait).
__device__ __forceinline__ uint4 ld_stream_ordered(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// Warp per row (the first GEMV): block = 4 warps; warp owns RW consecutive weight rows; blockIdx.y selects a
// chunk of MT token rows. Kept as variant 0 for comparison.
template <int MT, int RW>
__global__ void __launch_bounds__(128)
    gemv_kernel(bf16* __restrict__ out, int64_t ldo, const bf16* __restrict__ x, int64_t M,
                const bf16* __restrict__ w, int64_t N, int64_t K) {
  pdl_launch_dependents();
  pdl_wait();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n0 = (int64_t(blockIdx.x) * 4 + warp) * RW;
  if (n0 >= N) return;
  const int64_t m0 = int64_t(blockIdx.y) * MT;
  const uint4* wr[RW];
#pragma unroll
  for (int r = 0; r < RW; r++) wr[r] = reinterpret_cast<const uint4*>(w + min(n0 + r, N - 1) * K);
  const uint4* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; m++) xr[m] = reinterpret_cast<const uint4*>(x + min(m0 + m, M - 1) * K);
  float acc[MT][RW];
  warp_gemv<MT, RW>(wr, xr, K / 8, lane, acc);
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int r = 0; r < RW; r++)
        if (m0 + m < M && n0 + r < N) out[(m0 + m) * ldo + n0 + r] = __float2bfloat16_rn(acc[m][r]);
  }
}

__host__ __device__ constexpr int pow2_ceil(int v) { return v <= 1 ? 1 : 2 * pow2_ceil((v + 1) / 2); }

// One step of the split-K GEMV's loads: words k + u * NT of the R rows (zero past the row end).
template <int R, int U, int NT>
__device__ __forceinline__ void splitk_load(uint4 (&wv)[U][R], const uint4* const (&wr)[R], int64_t k,
                                            int64_t K8) {
#pragma unroll
  for (int u = 0; u < U; u++)
#pragma unroll
    for (int r = 0; r < R; r++)
      wv[u][r] = k + u * NT < K8 ? ld_stream_ordered(wr[r] + k + u * NT) : make_uint4(0, 0, 0, 0);
}

// acc[m * R + r] += w_r . x_m over one 16-byte word (8 products, in order).
template <int MT, int R, int P>
__device__ __forceinline__ void splitk_fma(float (&acc)[P], const uint4 (&w)[R], const uint4 (&x)[MT]) {
  float wf[R][8];
#pragma unroll
  for (int r = 0; r < R; r++) unpack8(w[r], wf[r]);
#pragma unroll
  for (int m = 0; m < MT; m++) {
    float xf[8];
    unpack8(x[m], xf);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int i = 0; i < 8; i++) acc[m * R + r] = fmaf(wf[r][i], xf[i], acc[m * R + r]);
  }
}

// Split-K GEMV: a block of NT threads owns R consecutive weight rows and MT token rows; thread t reads the
// 16-byte words t, t + NT, ... of each of the R rows (coalesced across the block), R * U streaming loads in
// flight per thread per step, fp32 FMAs. Each warp folds its R * MT partial sums with a transposed shuffle
// reduction, then thread i < R * MT adds the warps' partials in warp order (a fixed order: deterministic)
// and rounds once to bf16. Unlike the warp-per-row kernel a row's bytes are requested at once (a K = 2560
// row is 320 words: one step of 128 threads with U = 4), so a matrix of a few MB is in flight in one round
// trip instead of K / (256 U) dependent ones. The first step's weight loads go out before the PDL wait.
template <int MT, int R, int U, int NT>
__global__ void __launch_bounds__(NT)
    gemv_splitk_kernel(bf16* __restrict__ out, int64_t ldo, const bf16* __restrict__ x, int64_t M,
                       const bf16* __restrict__ w, int64_t N, int64_t K) {
  constexpr int NW = NT / 32, V = MT * R, P = pow2_ceil(V);
  __shared__ float red[NW][V];
  pdl_launch_dependents();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n0 = int64_t(blockIdx.x) * R, m0 = int64_t(blockIdx.y) * MT, K8 = K / 8;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; r++) wr[r] = reinterpret_cast<const uint4*>(w + min(n0 + r, N - 1) * K);
  int64_t k = tid;
  uint4 wv[U][R];
  splitk_load<R, U, NT>(wv, wr, k, K8);
  pdl_wait();  // x (and out) may come from the previous kernel
  const uint4* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; m++) xr[m] = reinterpret_cast<const uint4*>(x + min(m0 + m, M - 1) * K);
  float acc[P];  // acc[m * R + r]; the padding stays 0
#pragma unroll
  for (int i = 0; i < P; i++) acc[i] = 0.f;
  while (true) {
    if constexpr (U * MT <= 8) {  // all of the step's x words first (one L1/L2 round trip, not U)
      uint4 xv[U][MT];
#pragma unroll
      for (int u = 0; u < U; u++)
#pragma unroll
        for (int m = 0; m < MT; m++) xv[u][m] = __ldg(xr[m] + min(k + u * NT, K8 - 1));
#pragma unroll
      for (int u = 0; u < U; u++)
        if (k + u * NT < K8) splitk_fma<MT, R>(acc, wv[u], xv[u]);
    } else {
#pragma unroll
      for (int u = 0; u < U; u++) {
        if (k + u * NT < K8) {
          uint4 xv[MT];
#pragma unroll
          for (int m = 0; m < MT; m++) xv[m] = __ldg(xr[m] + k + u * NT);
          splitk_fma<MT, R>(acc, wv[u], xv);
        }
      }
    }
    k += NT * U;
    if (k >= K8) break;
    splitk_load<R, U, NT>(wv, wr, k, K8);
  }
  if constexpr (P <= 32) {
    const float s = warp_sum_transposed<P>(acc, lane);
    constexpr int L = 32 / P;  // lanes per value
    if (lane % L == 0 && lane / L < V) red[warp][lane / L] = s;
  } else {
#pragma unroll
    for (int g = 0; g < P / 32; g++) {
      float v[32];
#pragma unroll
      for (int i = 0; i < 32; i++) v[i] = acc[g * 32 + i];
      const float s = warp_sum_transposed<32>(v, lane);
      if (g * 32 + lane < V) red[warp][g * 32 + lane] = s;
    }
  }
  __syncthreads();
  for (int i = tid; i < V; i += NT) {
    float s = red[0][i];
#pragma unroll
    for (int j = 1; j < NW; j++) s += red[j][i];
    const int64_t m = m0 + i / R, n = n0 + i % R;
    if (m < M && n < N) out[m * ldo + n] = __float2bfloat16_rn(s);
  }
}

// GEMV variants (bench_cuda_linear sweeps them, CudaOps.Linear tests them all): 0 = warp per row
// (gemv_kernel), else split-K {R rows, U steps in flight, NT threads}.
struct SplitK {
  int R, U, NT;
};
constexpr SplitK kVariants[] = {{0, 0, 0},   {1, 4, 256}, {2, 2, 256}, {2, 4, 256}, {4, 1, 256},
                                {4, 2, 256}, {8, 1, 256}, {4, 2, 128}, {2, 4, 128}, {8, 2, 256}};
constexpr int kNumVariants = int(sizeof(kVariants) / sizeof(kVariants[0]));
int g_force_variant = -1;  // gemv_override
int g_pdl = -1;            // -1: MTP_GEMV_PDL (default on)

bool use_pdl() {
  if (g_pdl < 0) {
    const char* s = std::getenv("MTP_GEMV_PDL");
    g_pdl = s && std::atoi(s) == 0 ? 0 : 1;
  }
  return g_pdl == 1;
}

template <typename... Args>
void launch_kernel(Ctx& c, void (*kernel)(Args...), dim3 grid, unsigned threads, bf16* out, int64_t ldo,
                   const bf16* x, int64_t M, const bf16* w, int64_t N, int64_t K) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = c.stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = use_pdl() ? 1 : 0;
  CUDA_OK(cudaLaunchKernelEx(&cfg, kernel, out, ldo, x, M, w, N, K), "linear (gemv)");
}

template <int MT, int V>
void launch_variant(Ctx& c, bf16* out, int64_t ldo, const bf16* x, int64_t M, const bf16* w, int64_t N,
                    int64_t K) {
  const unsigned gy = unsigned((M + MT - 1) / MT);
  if constexpr (V == 0) {
    if (N / 8 >= 2 * int64_t(c.num_sms)) {
      launch_kernel(c, gemv_kernel<MT, 2>, dim3(unsigned((N + 7) / 8), gy), 128, out, ldo, x, M, w, N, K);
    } else {
      launch_kernel(c, gemv_kernel<MT, 1>, dim3(unsigned((N + 3) / 4), gy), 128, out, ldo, x, M, w, N, K);
    }
  } else {
    constexpr SplitK s = kVariants[V];
    launch_kernel(c, gemv_splitk_kernel<MT, s.R, s.U, s.NT>, dim3(unsigned((N + s.R - 1) / s.R), gy),
                  unsigned(s.NT), out, ldo, x, M, w, N, K);
  }
}

template <int MT, int V = 0>
void launch_gemv_mt(Ctx& c, int variant, bf16* out, int64_t ldo, const bf16* x, int64_t M, const bf16* w,
                    int64_t N, int64_t K) {
  if constexpr (V < kNumVariants) {
    if (variant == V) return launch_variant<MT, V>(c, out, ldo, x, M, w, N, K);
    launch_gemv_mt<MT, V + 1>(c, variant, out, ldo, x, M, w, N, K);
  }
}

// The variant for M token rows (chunks of up to 8) against an N x K weight matrix: the best or near-best of
// `bench_cuda_linear 30 all sweep` on the H100 (CUDA graph replay with PDL, as decode runs), by shape class.
// Under PDL the blocks of the next GEMV start while this one runs, so a light block (v4: 4 rows x 1 word per
// thread, 40 registers at M = 1) that leaves room on the SMs often beats a heavier one with more in flight.
int pick_variant(int64_t M, int64_t N, int64_t K) {
  static constexpr int8_t kPick[5][8] = {
      // M = 1  2  3  4  5  6  7  8
      {2, 3, 1, 1, 3, 3, 3, 3},  // N <= 1024 (k/v projections): few rows, 1-2 rows per block
      {5, 8, 8, 8, 7, 7, 7, 7},  // N >= 8192, K <= 4096 (wide: MLP up, vocab head of the small models)
      {4, 4, 4, 7, 7, 7, 7, 7},  // K <= 4096 (M = 1 with K > 2048: v5, one step of 512 words)
      {4, 4, 4, 4, 7, 7, 7, 7},  // K > 4096: long rows
      {8, 8, 8, 8, 7, 7, 7, 7},  // N >= 65536, K > 4096: vocab head of the large models
  };
  const int cls = N <= 1024 ? 0 : N >= 8192 && K <= 4096 ? 1 : K <= 4096 ? 2 : N < 65536 ? 3 : 4;
  if (cls == 2 && M == 1 && K > 2048) return 5;
  return kPick[cls][(M < 8 ? M : 8) - 1];
}

bool gemv_ok(const void* x, const void* w, int64_t K) {
  return K % 8 == 0 && (reinterpret_cast<uintptr_t>(x) % 16) == 0 &&
         (reinterpret_cast<uintptr_t>(w) % 16) == 0;
}

}  // namespace

void gemv_bf16(Ctx& c, bf16* out, int64_t ldo, const bf16* x, int64_t M, const bf16* w, int64_t N,
               int64_t K) {
  MTP_ASSERT(gemv_ok(x, w, K));
  const int v =
      g_force_variant >= 0 && g_force_variant < kNumVariants ? g_force_variant : pick_variant(M, N, K);
  // Rows beyond 8 go in chunks of 8 (one grid, blockIdx.y = chunk), each chunk re-reading the weights.
  switch (M < 8 ? M : 8) {
    case 1:
      launch_gemv_mt<1>(c, v, out, ldo, x, M, w, N, K);
      break;
    case 2:
      launch_gemv_mt<2>(c, v, out, ldo, x, M, w, N, K);
      break;
    case 3:
      launch_gemv_mt<3>(c, v, out, ldo, x, M, w, N, K);
      break;
    case 4:
      launch_gemv_mt<4>(c, v, out, ldo, x, M, w, N, K);
      break;
    case 5:
      launch_gemv_mt<5>(c, v, out, ldo, x, M, w, N, K);
      break;
    case 6:
      launch_gemv_mt<6>(c, v, out, ldo, x, M, w, N, K);
      break;
    case 7:
      launch_gemv_mt<7>(c, v, out, ldo, x, M, w, N, K);
      break;
    default:
      launch_gemv_mt<8>(c, v, out, ldo, x, M, w, N, K);
      break;
  }
}

// For bench_cuda_linear and the tests: variant >= 0 forces that GEMV variant (see kVariants), -1 picks by
// shape; pdl 0 / 1 turns programmatic dependent launch off / on, -1 leaves it. Returns the number of
// variants.
int gemv_override(int variant, int pdl) {
  g_force_variant = variant;
  if (pdl >= 0) g_pdl = pdl;
  return kNumVariants;
}

void linear(Ctx& c, Tensor out, const Tensor& x, const Tensor& w) {
  need(out, DType::BF16, "linear", "out");
  need(x, DType::BF16, "linear", "x");
  need(w, DType::BF16, "linear", "w");
  const int64_t K = w.dim(-1), N = w.numel() / K, M = x.numel() / K;
  MTP_CHECK(K > 0 && x.numel() == M * K && out.numel() == M * N,
            "cuda linear: x {} / w {} / out {} shapes do not agree", x.shape_str(), w.shape_str(),
            out.shape_str());
  if (M == 0 || N == 0) return;
  // Measured on the H100 in CUDA graphs (bench_cuda_linear): up to M = 4 the GEMV beats cuBLAS on the E4B
  // and 31B projections and vocab heads (or is within 5%: E4B gate/up and 31B q_proj at M = 4), up to M = 8
  // on small matrices (<= 4 MB: k/v projections, where cuBLAS under-fills the GPU); cuBLAS wins at M = 8 on
  // larger ones.
  const bool small_matrix = N * K * 2 <= (int64_t(4) << 20);
  const bool use_gemv =
      c.linear_path == 1 || (c.linear_path == 0 && (M <= 4 || M <= c.gemv_max_m || (M <= 8 && small_matrix)));
  if (use_gemv && gemv_ok(x.data, w.data, K)) {
    gemv_bf16(c, mbf(out), N, cbf(x), M, cbf(w), N, K);
    return;
  }
  // Row-major out[M,N] = x[M,K] w[N,K]^T  <=>  column-major out^T[N,M] = w^T(op T of the [K,N] view) x^T.
  const float alpha = 1.0f, beta = 0.0f;
  MTP_CHECK(M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31),
            "cuda linear: dimensions too large for cuBLAS");
  CUBLAS_OK(cublasGemmEx(c.cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, w.data,
                         CUDA_R_16BF, int(K), x.data, CUDA_R_16BF, int(K), &beta, out.data, CUDA_R_16BF,
                         int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "linear");
  check_launch("linear (cublas)");
}

}  // namespace mtpserve::cuda
