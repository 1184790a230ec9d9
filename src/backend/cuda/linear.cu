// Linear layers: out[M, N] = x[M, K] @ w[N, K]^T with bf16 operands, fp32 accumulation and one bf16 rounding.
// Small M (decode): our GEMV kernel (a warp owns RW weight rows and up to 8 token rows, lanes stride K with
// 16-byte streaming loads that skip L1, fp32 FMAs, shuffle reduction). Larger M: cuBLAS GemmEx (bf16 in/out,
// CUBLAS_COMPUTE_32F). bench/bench_cuda_linear.cpp measures where the GEMV wins (cuda-kernels.md §1).
#include "backend/cuda/gemv_core.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

// Block = 4 warps; warp owns RW consecutive weight rows; blockIdx.y selects a chunk of MT token rows.
template <int MT, int RW>
__global__ void __launch_bounds__(128)
    gemv_kernel(bf16* __restrict__ out, int64_t ldo, const bf16* __restrict__ x, int64_t M,
                const bf16* __restrict__ w, int64_t N, int64_t K) {
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

// Split-K GEMV for small and mid-size matrices: a block of NT threads owns R consecutive weight rows and MT
// token rows; thread t reads the 16-byte words t, t + NT, ... of each of the R rows (coalesced across the
// block), R * U streaming loads in flight per thread per step, fp32 FMAs. Each warp folds its R * MT partial
// sums with a transposed shuffle reduction, then thread i < R * MT adds the warps' partials in warp order
// (fixed order: deterministic) and rounds once to bf16. Unlike the warp-per-row kernel, a row's bytes are all
// requested at once (a K = 2560 row is 320 words: one step of 256 threads), so a matrix of a few MB is in
// flight in one round trip instead of K / (32 * 8 * U) dependent ones.
__host__ __device__ constexpr int pow2_ceil(int v) { return v <= 1 ? 1 : 2 * pow2_ceil((v + 1) / 2); }

template <int MT, int R, int U, int NT>
__global__ void __launch_bounds__(NT)
    gemv_splitk_kernel(bf16* __restrict__ out, int64_t ldo, const bf16* __restrict__ x, int64_t M,
                       const bf16* __restrict__ w, int64_t N, int64_t K) {
  constexpr int NW = NT / 32, V = MT * R, P = pow2_ceil(V);
  __shared__ float red[NW][V];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n0 = int64_t(blockIdx.x) * R, m0 = int64_t(blockIdx.y) * MT, K8 = K / 8;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; r++) wr[r] = reinterpret_cast<const uint4*>(w + min(n0 + r, N - 1) * K);
  const uint4* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; m++) xr[m] = reinterpret_cast<const uint4*>(x + min(m0 + m, M - 1) * K);
  float acc[P];  // acc[m * R + r]; padding stays 0
#pragma unroll
  for (int i = 0; i < P; i++) acc[i] = 0.f;
  for (int64_t k = tid; k < K8; k += NT * U) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int r = 0; r < R; r++)
        wv[u][r] = k + u * NT < K8 ? ld_stream(wr[r] + k + u * NT) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (k + u * NT < K8) {
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; r++) unpack8(wv[u][r], wf[r]);
#pragma unroll
        for (int m = 0; m < MT; m++) {
          float xf[8];
          unpack8(__ldg(xr[m] + k + u * NT), xf);
#pragma unroll
          for (int r = 0; r < R; r++)
#pragma unroll
            for (int i = 0; i < 8; i++) acc[m * R + r] = fmaf(wf[r][i], xf[i], acc[m * R + r]);
        }
      }
    }
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

// GEMV variants (bench_cuda_linear sweeps them): 0 = warp per row (gemv_kernel), else split-K {R, U, NT}.
struct SplitK {
  int R, U, NT;
};
constexpr SplitK kVariants[] = {{0, 0, 0},   {1, 4, 256}, {2, 2, 256}, {2, 4, 256}, {4, 1, 256},
                                {4, 2, 256}, {8, 1, 256}, {4, 2, 128}, {2, 4, 128}, {8, 2, 256}};
constexpr int kNumVariants = int(sizeof(kVariants) / sizeof(kVariants[0]));
int g_force_variant = -1;

template <int MT, int V>
void launch_variant(Ctx& c, bf16* out, int64_t ldo, const bf16* x, int64_t M, const bf16* w, int64_t N,
                    int64_t K) {
  const unsigned gy = unsigned((M + MT - 1) / MT);
  if constexpr (V == 0) {
    if (N / 8 >= 2 * int64_t(c.num_sms)) {
      gemv_kernel<MT, 2><<<dim3(unsigned((N + 7) / 8), gy), 128, 0, c.stream>>>(out, ldo, x, M, w, N, K);
    } else {
      gemv_kernel<MT, 1><<<dim3(unsigned((N + 3) / 4), gy), 128, 0, c.stream>>>(out, ldo, x, M, w, N, K);
    }
  } else {
    constexpr SplitK s = kVariants[V];
    gemv_splitk_kernel<MT, s.R, s.U, s.NT>
        <<<dim3(unsigned((N + s.R - 1) / s.R), gy), s.NT, 0, c.stream>>>(out, ldo, x, M, w, N, K);
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

// The variant for M token rows (chunks of up to 8) against an N x K weight matrix.
int pick_variant(const Ctx& c, int64_t M, int64_t N, int64_t K) {
  (void)c;
  (void)M;
  (void)K;
  if (N >= 65536) return 0;
  return 5;
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
      g_force_variant >= 0 && g_force_variant < kNumVariants ? g_force_variant : pick_variant(c, M, N, K);
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
  check_launch("linear (gemv)");
}

// For bench_cuda_linear: force GEMV variant v (0 = warp per row, 1.. split-K, see kVariants; -1 = pick by
// shape). Returns the number of variants.
int gemv_force_variant(int v) {
  g_force_variant = v;
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
  // Measured on the H100 (bench_cuda_linear, docs/PERFORMANCE.md): the GEMV beats cuBLAS at M = 1 on most
  // decode shapes, up to M = 8 on small matrices (<= 16 MB: cuBLAS under-fills the GPU there) and up to M = 4
  // on the vocab head (103% of the copy bandwidth against 95%); cuBLAS wins on large matrices from M = 2-8.
  const bool small_matrix = N * K * 2 <= (int64_t(16) << 20);
  bool use_gemv =
      c.linear_path == 1 ||
      (c.linear_path == 0 && (M <= c.gemv_max_m || (M <= 8 && small_matrix) || (M <= 4 && N >= 65536)));
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
