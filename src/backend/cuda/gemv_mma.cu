// The GEMV of a few token rows (verify blocks: K + 1 <= 8 rows) on tensor cores. On CUDA cores 5-8 rows cost
// 5-8 FMAs per weight element plus conversions, which makes the E4B and 31B projections compute-bound;
// mma.sync does them at no cost next to the weight stream.
//
// out[m, n] = sum_k x[m, k] w[n, k]: mma.sync m16n8k16 (bf16 in, fp32 accumulate) with 16 weight rows as A
// and the (up to 8) token rows as B. A lane loads 16 contiguous bytes of its weight rows and of its token row
// per 32-wide K chunk; the chunk's K order is permuted identically for A and B (a dot product does not
// care), so the fragments come from plain 16-byte loads instead of scattered pairs. The NW warps of a block
// split K (interleaved chunks, the next chunk's loads issued before this one's mma) and reduce through shared
// memory in warp order (deterministic).
#include "backend/cuda/gemv_core.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 32-wide chunk: lane (g, t) holds elements 8t..8t+7 of the chunk for weight rows g, g + 8 (wa, wb) and
// token row g (xv). Fragment element k = 2t, 2t+1 / 2t+8, 2t+9 of the first mma is chunk element 8t, 8t+1 /
// 8t+2, 8t+3 (words .x / .y), of the second 8t+4.. / 8t+6.. (.z / .w): every chunk element once, in A and B
// alike.
__device__ __forceinline__ void mma_chunk(float (&c)[4], const uint4& wa, const uint4& wb, const uint4& xv) {
  mma_16816(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
  mma_16816(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
}

// Chunks c0, c0 + NW, ... (U of them) of one lane: its two weight rows and its token row.
template <int U>
struct Step {
  uint4 a[U], b[U], x[U];
};

// Epilogue E (GemvEpi): with gate pairs the tile's rows g are gate rows n0 + g and its rows g + 8 the
// matching up rows N + n0 + g of w [2N, K] (8 outputs per block); else 16 consecutive rows (16 outputs).
template <int NW, int U, int E>
__global__ void __launch_bounds__(NW * 32)
    gemv_mma_kernel(bf16* __restrict__ out, int64_t ldo, const bf16* __restrict__ x, int64_t ldx, int M,
                    const bf16* __restrict__ w, int64_t N, int64_t K, const bf16* __restrict__ up) {
  constexpr int kRows = E == kEpiGatePairs ? 8 : 16;  // outputs per block and token row
  __shared__ float red[NW][32][4];
  pdl_trigger();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t n0 = int64_t(blockIdx.x) * kRows, C = K / 32;  // C chunks of 32 (4 words) per row
  const int64_t ra = min(n0 + g, N - 1);
  const int64_t rb = E == kEpiGatePairs ? N + ra : min(n0 + g + 8, N - 1);
  const uint4* wa = reinterpret_cast<const uint4*>(w + ra * K) + t;
  const uint4* wb = reinterpret_cast<const uint4*>(w + rb * K) + t;
  const uint4* xr = reinterpret_cast<const uint4*>(x + int64_t(min(g, M - 1)) * ldx) + t;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto load_w = [&](Step<U>& s, int64_t c0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t cc = c0 + int64_t(u) * NW;
      s.a[u] = cc < C ? ld_stream(wa + cc * 4) : zero;
      s.b[u] = cc < C ? ld_stream(wb + cc * 4) : zero;
    }
  };
  auto load_x = [&](Step<U>& s, int64_t c0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t cc = c0 + int64_t(u) * NW;
      s.x[u] = cc < C && g < M ? __ldg(xr + cc * 4) : zero;
    }
  };
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  auto compute = [&](const Step<U>& s) {
#pragma unroll
    for (int u = 0; u < U; u++) mma_chunk(acc, s.a[u], s.b[u], s.x[u]);  // zero words past C add nothing
  };
  // Two steps in flight: the next step's loads go out before this step's mma (registers double-buffered).
  constexpr int64_t kStep = int64_t(U) * NW;
  Step<U> s0, s1;
  int64_t c = warp;
  load_w(s0, c);  // weights only: before the wait, under the previous kernel
  pdl_wait();
  load_x(s0, c);
  while (c < C) {
    load_w(s1, c + kStep);
    load_x(s1, c + kStep);
    compute(s0);
    c += kStep;
    if (c >= C) break;
    load_w(s0, c + kStep);
    load_x(s0, c + kStep);
    compute(s1);
    c += kStep;
  }
#pragma unroll
  for (int j = 0; j < 4; j++) red[warp][lane][j] = acc[j];
  __syncthreads();
  // Tile row r, token m sits in lane (r % 8) * 4 + m / 2, register (r >= 8) * 2 + m % 2 of every warp.
  auto sum = [&](int r, int m) {
    const int l = (r & 7) * 4 + (m >> 1), q = (r >> 3) * 2 + (m & 1);
    float s = 0.f;
#pragma unroll
    for (int v = 0; v < NW; v++) s += red[v][l][q];
    return s;
  };
  for (int i = threadIdx.x; i < kRows * 8; i += NW * 32) {
    const int r = i >> 3, m = i & 7;
    const int64_t n = n0 + r;
    if (m >= M || n >= N) continue;
    if constexpr (E == kEpiPlain)
      out[int64_t(m) * ldo + n] = __float2bfloat16_rn(sum(r, m));
    else if constexpr (E == kEpiGatePairs)
      out[int64_t(m) * ldo + n] = gelu_mul_round(round_bf(sum(r, m)), round_bf(sum(r + 8, m)));
    else
      out[int64_t(m) * ldo + n] =
          gelu_mul_round(round_bf(sum(r, m)), __bfloat162float(up[int64_t(m) * ldo + n]));
  }
}

}  // namespace

bool gemv_mma_ok(int64_t M, int64_t K, const void* x, int64_t ldx, const void* w) {
  return M >= 1 && M <= 8 && K % 32 == 0 && ldx % 8 == 0 &&
         ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) % 16) == 0;
}

void gemv_mma(Ctx& c, bf16* out, int64_t ldo, const bf16* x, int64_t ldx, int64_t M, const bf16* w, int64_t N,
              int64_t K, int epi, const bf16* up) {
  MTP_ASSERT(gemv_mma_ok(M, K, x, ldx, w) && N > 0 && N / 8 < (int64_t(1) << 31) &&
             (epi != kEpiGeluUp || up != nullptr));
  // 16 warps per 16-row block, one chunk per step: the most loads in flight of the shapes measured
  // (bench_cuda_linear with MTP_MMA_MIN_M=1; 8 / 32 warps, 2-4 chunks per step and 32-row blocks were
  // slower).
  constexpr int kWarps = 16;
  auto go = [&](auto kernel, int rows) {
    launch(c, "linear (gemv mma)", kernel, dim3(unsigned((N + rows - 1) / rows)), dim3(32 * kWarps), 0, out,
           ldo, x, ldx, int(M), w, N, K, up);
  };
  if (epi == kEpiGatePairs)
    go(gemv_mma_kernel<kWarps, 1, kEpiGatePairs>, 8);
  else if (epi == kEpiGeluUp)
    go(gemv_mma_kernel<kWarps, 1, kEpiGeluUp>, 16);
  else
    go(gemv_mma_kernel<kWarps, 1, kEpiPlain>, 16);
}

}  // namespace mtpserve::cuda
