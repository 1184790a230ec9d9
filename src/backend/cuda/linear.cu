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
//    MTP_PDL=0 turns PDL off (for every kernel of the backend, cuda_common.cuh).
#include <algorithm>
#include <cstdlib>

#include "backend/cuda/gemv_core.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

// Warp per row (the first GEMV): block = 4 warps; warp owns RW consecutive weight rows; blockIdx.y selects a
// chunk of MT token rows. Kept as variant 0 for comparison.
template <int MT, int RW>
__global__ void __launch_bounds__(128)
    gemv_kernel(bf16* __restrict__ out, int64_t ldo, const bf16* __restrict__ x, int64_t M,
                const bf16* __restrict__ w, int64_t N, int64_t K) {
  pdl_trigger();
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

// Split-K GEMV: a block of NT threads owns R consecutive weight rows and MT token rows; thread t reads the
// 16-byte words t, t + NT, ... of each of the R rows (coalesced across the block), R * U streaming loads in
// flight per thread per step, fp32 FMAs. Each warp folds its R * MT partial sums with a transposed shuffle
// reduction, then thread i < R * MT adds the warps' partials in warp order (a fixed order: deterministic)
// and rounds once to bf16. Unlike the warp-per-row kernel a row's bytes are requested at once (a K = 2560
// row is 320 words: one step of 128 threads with U = 4), so a matrix of a few MB is in flight in one round
// trip instead of K / (256 U) dependent ones. The first step's weight loads go out before the PDL wait.
// The epilogue E (cuda_common.cuh GemvEpi): plain sums; gate pairs (linear_gelu on the fused gate|up
// projection w [2N, K]: the block's first R/2 rows are gate rows n0.., the others the up rows N + n0.., and
// it writes gelu(gate) * up for n0..); gelu times a given up [M, N] (the PLE gate). Both round as linear and
// then gelu_mul(_fused) do, so the fused op is the unfused pair without the [M, 2N] round trip and its
// kernel.
template <int MT, int R, int U, int NT, int E>
__global__ void __launch_bounds__(NT)
    gemv_splitk_kernel(bf16* __restrict__ out, int64_t ldo, const bf16* __restrict__ x, int64_t ldx,
                       int64_t M, const bf16* __restrict__ w, int64_t N, int64_t K,
                       const bf16* __restrict__ up) {
  static_assert(E != kEpiGatePairs || R % 2 == 0, "gate pairs need an even row count");
  constexpr int NW = NT / 32, V = MT * R, P = pow2_ceil(V), H = E == kEpiGatePairs ? R / 2 : R;
  __shared__ float red[NW][V];
  pdl_trigger();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n0 = int64_t(blockIdx.x) * H, m0 = int64_t(blockIdx.y) * MT, K8 = K / 8;
  const uint4* wr[R];  // gate pairs: rows n0 + r (gate) for r < H, N + n0 + r - H (up) after
#pragma unroll
  for (int r = 0; r < R; r++)
    wr[r] = reinterpret_cast<const uint4*>(w + (r < H ? min(n0 + r, N - 1) : N + min(n0 + r - H, N - 1)) * K);
  int64_t k = tid;
  uint4 wv[U][R];
  splitk_load<R, U, NT>(wv, wr, k, K8);
  pdl_wait();           // x (and out) may come from the previous kernel
  const uint4* xr[MT];  // token rows of x: row stride ldx
#pragma unroll
  for (int m = 0; m < MT; m++) xr[m] = reinterpret_cast<const uint4*>(x + min(m0 + m, M - 1) * ldx);
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
  splitk_warp_sums<V>(acc, red[warp], lane);
  __syncthreads();
  auto sum = [&](int i) {
    float t = red[0][i];
#pragma unroll
    for (int j = 1; j < NW; j++) t += red[j][i];
    return t;
  };
  for (int i = tid; i < MT * H; i += NT) {
    const int64_t m = m0 + i / H, n = n0 + i % H;
    if (m >= M || n >= N) continue;
    const int v = (i / H) * R + i % H;  // the value of (m, r)
    if constexpr (E == kEpiPlain)
      out[m * ldo + n] = __float2bfloat16_rn(sum(v));
    else if constexpr (E == kEpiGatePairs)
      out[m * ldo + n] = gelu_mul_round(round_bf(sum(v)), round_bf(sum(v + H)));
    else
      out[m * ldo + n] = gelu_mul_round(round_bf(sum(v)), __bfloat162float(up[m * ldo + n]));
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

// The GEMV's operands: x rows (stride ldx); N outputs per row (gate pairs: w has 2N rows); up [M, N] for the
// gelu-times-up epilogue.
struct GemvArgs {
  bf16* out;
  int64_t ldo;
  const bf16* x;
  int64_t ldx, M;
  const bf16* w;
  int64_t N, K;
  const bf16* up;
};

template <int MT, int V, int E>
void launch_variant(Ctx& c, const GemvArgs& a) {
  const unsigned gy = unsigned((a.M + MT - 1) / MT);
  if constexpr (V == 0) {
    static_assert(E == kEpiPlain, "the fused epilogues use split-K variants only");
    auto k = a.N / 8 >= 2 * int64_t(c.num_sms) ? gemv_kernel<MT, 2> : gemv_kernel<MT, 1>;
    const int rows = a.N / 8 >= 2 * int64_t(c.num_sms) ? 8 : 4;
    launch(c, "linear (gemv)", k, dim3(unsigned((a.N + rows - 1) / rows), gy), dim3(128), 0, a.out, a.ldo,
           a.x, a.M, a.w, a.N, a.K);
  } else {
    constexpr SplitK s = kVariants[V];
    constexpr int H = E == kEpiGatePairs ? s.R / 2 : s.R;  // outputs per block and token row
    launch(c, "linear (gemv)", gemv_splitk_kernel<MT, s.R, s.U, s.NT, E>,
           dim3(unsigned((a.N + H - 1) / H), gy), dim3(unsigned(s.NT)), 0, a.out, a.ldo, a.x, a.ldx, a.M, a.w,
           a.N, a.K, a.up);
  }
}

// The fused epilogues (linear_gelu, at most 4 token rows) instantiate two variants each, to keep the kernel
// count down: gate pairs the picks for wide matrices (v5 at M = 1, v8 above), gelu-times-up those for the
// small PLE gate (N <= 1024: v2 at M = 1, v3 above).
constexpr bool epi_variant(int e, int v) {
  return e == kEpiPlain || (e == kEpiGatePairs ? v == 5 || v == 8 : v == 2 || v == 3);
}
int epi_pick(int e, int64_t M, int v) {
  if (epi_variant(e, v)) return v;
  return e == kEpiGatePairs ? (M == 1 ? 5 : 8) : (M == 1 ? 2 : 3);
}

template <int MT, int E, int V = 0>
void launch_gemv_mt(Ctx& c, int variant, const GemvArgs& a) {
  if constexpr (V < kNumVariants) {
    if constexpr (epi_variant(E, V))
      if (variant == V) return launch_variant<MT, V, E>(c, a);
    launch_gemv_mt<MT, E, V + 1>(c, variant, a);
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

// Token rows per block: min(M, 8); rows beyond 8 go in chunks of 8 (one grid, blockIdx.y = chunk), each chunk
// re-reading the weights. The fused epilogues take at most 4 rows (more: the caller's unfused ops), so only
// those are instantiated for them.
template <int E, int MT = 1>
void launch_gemv_rows(Ctx& c, int variant, const GemvArgs& a) {
  if constexpr (MT < 8 && (E == kEpiPlain || MT < 4)) {
    if (a.M > MT) return launch_gemv_rows<E, MT + 1>(c, variant, a);
  }
  launch_gemv_mt<MT, E>(c, variant, a);
}

template <int E>
void gemv_dispatch(Ctx& c, const GemvArgs& a) {
  MTP_ASSERT(E == kEpiPlain || a.M <= 4);
  int v =
      g_force_variant >= 0 && g_force_variant < kNumVariants ? g_force_variant : pick_variant(a.M, a.N, a.K);
  if constexpr (E != kEpiPlain) v = epi_pick(E, a.M, v);
  launch_gemv_rows<E>(c, v, a);
}

}  // namespace

void gemv_bf16(Ctx& c, bf16* out, int64_t ldo, const bf16* x, int64_t M, const bf16* w, int64_t N,
               int64_t K) {
  MTP_ASSERT(gemv_ok(x, w, K));
  gemv_dispatch<kEpiPlain>(c, GemvArgs{out, ldo, x, K, M, w, N, K, nullptr});
}

// For bench_cuda_linear and the tests: variant >= 0 forces that GEMV variant (see kVariants), -1 picks by
// shape; pdl 0 / 1 turns programmatic dependent launch off / on, -1 leaves it. Returns the number of
// variants.
// -1: MTP_PDL (default on)
static int g_pdl = -1;

int gemv_override(int variant, int pdl) {
  g_force_variant = variant;
  if (pdl >= 0) g_pdl = pdl;
  return kNumVariants;
}

bool pdl_enabled() {
  if (g_pdl < 0) {
    const char* s = std::getenv("MTP_PDL");
    g_pdl = s && std::atoi(s) == 0 ? 0 : 1;
  }
  return g_pdl == 1;
}

bool linear_gelu(Ctx& c, Tensor out, const Tensor& x, const Tensor& w, const Tensor& up) {
  need(out, DType::BF16, "linear_gelu", "out");
  need(x, DType::BF16, "linear_gelu", "x");
  need(w, DType::BF16, "linear_gelu", "w");
  if (up.defined()) need(up, DType::BF16, "linear_gelu", "up");
  const int64_t K = w.dim(-1), rows = w.numel() / K, M = x.numel() / K;
  const bool pairs = !up.defined();
  const int64_t N = pairs ? rows / 2 : rows;  // outputs per token row
  MTP_CHECK(K > 0 && x.numel() == M * K && (!pairs || rows % 2 == 0) && out.numel() == M * N &&
                (pairs || up.numel() == M * N),
            "cuda linear_gelu: x {} / w {} / up {} / out {} shapes do not agree", x.shape_str(),
            w.shape_str(), up.defined() ? up.shape_str() : "-", out.shape_str());
  if (M == 0 || N == 0) return true;
  // linear()'s choice for these rows, with the activation in the epilogue; cuBLAS rows: the caller's
  // linear + gelu_mul.
  const int epi = pairs ? kEpiGatePairs : kEpiGeluUp;
  const bf16* u = pairs ? nullptr : cbf(up);
  if (c.linear_path == 0 && M >= c.mma_min_m && gemv_mma_ok(M, K, x.data, K, w.data)) {
    gemv_mma(c, mbf(out), N, cbf(x), K, M, cbf(w), N, K, epi, u);
    return true;
  }
  if (c.linear_path == 2 || M > 4 || !gemv_ok(x.data, w.data, K)) return false;
  const GemvArgs a{mbf(out), N, cbf(x), K, M, cbf(w), N, K, u};
  if (pairs)
    gemv_dispatch<kEpiGatePairs>(c, a);
  else
    gemv_dispatch<kEpiGeluUp>(c, a);
  return true;
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
  // on small matrices (<= 4 MB: k/v projections, where cuBLAS under-fills the GPU); cuBLAS at M = 8 on larger
  // ones. Both lose to the tensor-core GEMV at 5-8 rows (E4B q/o/gate-up at M = 8: 6.0 / 5.6 / 19.8 us vs
  // cuBLAS 6.9 / 6.4 / 20.4), which splits K over 16 warps per 16 rows.
  if (c.linear_path == 0 && M >= c.mma_min_m && gemv_mma_ok(M, K, x.data, K, w.data)) {
    gemv_mma(c, mbf(out), N, cbf(x), K, M, cbf(w), N, K, kEpiPlain, nullptr);
    return;
  }
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
