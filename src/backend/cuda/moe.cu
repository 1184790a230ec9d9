// MoE (26B-A4B). moe_route: one warp per token: softmax in fp32, top-k by repeated warp argmax (largest
// first, ties to the lower index, as torch.topk), renormalise, times per_expert_scale. moe_experts, grouped
// by expert: (1) a sort kernel lists the (token, slot) pairs of every expert in pair order (deterministic),
// (2) gate|up GEMV per expert with pairs (split-K blocks of kExpR rows: gate rows i.. and up rows I + i..),
// epilogue bf16(bf16(gelu(bf16 g)) * bf16 u) as HF rounds, (3) down GEMV per expert, bf16 expert outputs, (4)
// combine out[t] = bf16(sum_k w[t,k] * y[t,k]) in slot order (fp32, no atomics). Each expert's weights are
// read once per step however many tokens chose it.
#include <algorithm>

#include "backend/cuda/gemv_core.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

__global__ void moe_route_kernel(float* weights, int32_t* experts, const bf16* logits, const bf16* scale,
                                 int64_t T, int E, int top_k) {
  pdl_begin();
  extern __shared__ float sp[];  // [warps][E]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (t >= T) return;
  float* p = sp + warp * E;
  const bf16* l = logits + t * E;
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, bf(l[e]));
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
  for (int e = lane; e < E; e += 32) {
    p[e] = expf(bf(l[e]) - mx);
    sum += p[e];
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  for (int e = lane; e < E; e += 32) p[e] = p[e] / sum;
  __syncwarp();
  float tot = 0.f;
  for (int k = 0; k < top_k; k++) {
    float bv = -INFINITY;
    int be = 0x7fffffff;
    for (int e = lane; e < E; e += 32)
      if (p[e] > bv) bv = p[e], be = e;  // ascending e per lane: the first maximum is kept
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int oe = __shfl_xor_sync(0xffffffffu, be, o);
      if (ov > bv || (ov == bv && oe < be)) bv = ov, be = oe;
    }
    tot += bv;
    if (lane == 0) {
      experts[t * top_k + k] = be;
      weights[t * top_k + k] = bv;  // normalised below
      p[be] = -INFINITY;
    }
    __syncwarp();
  }
  __syncwarp();
  for (int k = lane; k < top_k; k += 32) {
    const int e = experts[t * top_k + k];
    weights[t * top_k + k] = weights[t * top_k + k] / tot * bf(scale[e]);
  }
}

// offsets [E+1], list [P] of pair indices (t * k + slot) per expert, in pair order; active [A] the experts
// that have pairs.
__global__ void moe_sort_kernel(int32_t* offsets, int32_t* list, int32_t* active, int A,
                                const int32_t* experts, int P, int E, DevErr* err) {
  pdl_begin();
  extern __shared__ int32_t cnt[];  // [E]
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int n = 0;
    for (int i = 0; i < P; i++) n += experts[i] == e;
    cnt[e] = n;
  }
  for (int i = threadIdx.x; i < P; i += blockDim.x)
    if (experts[i] < 0 || experts[i] >= E) report_error(err, kErrRowIndex, experts[i], E, 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int acc = 0;
    for (int e = 0; e < E; e++) {
      offsets[e] = acc;
      acc += cnt[e];
    }
    offsets[E] = acc;
    int a = 0;  // the experts with pairs, ascending, then -1 up to A = min(E, P)
    for (int e = 0; e < E && a < A; e++)
      if (cnt[e] > 0) active[a++] = e;
    for (; a < A; a++) active[a] = -1;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int o = offsets[e];
    for (int i = 0; i < P; i++)
      if (experts[i] == e) list[o++] = i;
  }
}

// One chunk of up to MT pairs of expert e against R weight rows from n0 (split-K, as linear.cu's
// gemv_splitk_kernel: NT threads stride the 16-byte words of the rows, U steps of loads in flight). GATE_UP:
// the block reads gate rows n0.. and up rows I + n0.. and writes act[pair, i] = bf16(bf16(gelu(bf16 g)) *
// bf16 u) as HF rounds; down: y[pair, h] = bf16(sum).
template <int MT, int R, int U, int NT, bool GATE_UP>
__device__ __forceinline__ void expert_chunk(bf16* dst, const bf16* src, int64_t src_div, const int32_t* l,
                                             int n, const uint4* const (&wr)[GATE_UP ? 2 * R : R], int64_t n0,
                                             int64_t rows, int64_t K, float* red) {
  constexpr int RR = GATE_UP ? 2 * R : R, NW = NT / 32, V = MT * RR, P = pow2_ceil(V);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t K8 = K / 8;
  const uint4* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; m++)
    xr[m] = reinterpret_cast<const uint4*>(src + int64_t(l[min(m, n - 1)] / src_div) * K);
  float acc[P];
#pragma unroll
  for (int i = 0; i < P; i++) acc[i] = 0.f;
  for (int64_t k = tid; k < K8; k += NT * U) {
    uint4 wv[U][RR];
    splitk_load<RR, U, NT>(wv, wr, k, K8);
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (k + u * NT >= K8) break;
      uint4 xv[MT];
#pragma unroll
      for (int m = 0; m < MT; m++) xv[m] = __ldg(xr[m] + k + u * NT);
      splitk_fma<MT, RR>(acc, wv[u], xv);
    }
  }
  splitk_warp_sums<V>(acc, red + warp * V, lane);
  __syncthreads();
  for (int i = tid; i < MT * R; i += NT) {
    const int m = i / R, r = i % R;
    if (m >= n || n0 + r >= rows) continue;
    float a = red[m * RR + r], b = GATE_UP ? red[m * RR + R + r] : 0.f;
    for (int j = 1; j < NW; j++) {
      a += red[j * V + m * RR + r];
      if constexpr (GATE_UP) b += red[j * V + m * RR + R + r];
    }
    const float v = GATE_UP ? round_bf(gelu_tanh(round_bf(a))) * round_bf(b) : a;
    dst[int64_t(l[m]) * rows + n0 + r] = __float2bfloat16_rn(v);
  }
  __syncthreads();  // red is reused by the next chunk
}

constexpr int kExpR = 4, kExpU = 2, kExpNT = 128;

// grid (ceil(rows / kExpR), A): block y takes the y-th expert with pairs (active[y]; -1: none left).
// GATE_UP: rows = I, src = x (pair / top_k = token), dst = act [P, I]; down: rows = H, src = act (pair),
// dst = y [P, H]. The expert ids come from the sort kernel, so no weight load can precede the PDL wait.
template <bool GATE_UP>
__global__ void __launch_bounds__(kExpNT)
    moe_gemv_kernel(bf16* dst, const bf16* src, int64_t src_div, const int32_t* offsets, const int32_t* list,
                    const int32_t* active, const bf16* w, int64_t rows, int64_t I, int64_t K) {
  constexpr int R = kExpR, RR = GATE_UP ? 2 * R : R;
  __shared__ float red[(kExpNT / 32) * 8 * RR];  // [warps][MT <= 8][RR]
  pdl_begin();
  const int e = active[blockIdx.y];
  if (e < 0) return;
  const int begin = offsets[e], n_e = offsets[e + 1] - begin;
  const int64_t n0 = int64_t(blockIdx.x) * R;
  const bf16* we = w + int64_t(e) * (GATE_UP ? 2 * I : rows) * K;
  const uint4* wr[RR];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int64_t row = min(n0 + r, rows - 1);
    wr[r] = reinterpret_cast<const uint4*>(we + row * K);
    if constexpr (GATE_UP) wr[R + r] = reinterpret_cast<const uint4*>(we + (I + row) * K);
  }
  for (int c = 0; c < n_e; c += 8) {
    const int n = min(8, n_e - c);
    const int32_t* l = list + begin + c;
    if (n == 1)
      expert_chunk<1, R, kExpU, kExpNT, GATE_UP>(dst, src, src_div, l, n, wr, n0, rows, K, red);
    else if (n == 2)
      expert_chunk<2, R, kExpU, kExpNT, GATE_UP>(dst, src, src_div, l, n, wr, n0, rows, K, red);
    else if (n <= 4)
      expert_chunk<4, R, kExpU, kExpNT, GATE_UP>(dst, src, src_div, l, n, wr, n0, rows, K, red);
    else
      expert_chunk<8, R, kExpU, kExpNT, GATE_UP>(dst, src, src_div, l, n, wr, n0, rows, K, red);
  }
}

__global__ void moe_combine_kernel(bf16* out, const bf16* y, const float* weights, int64_t T, int64_t H,
                                   int k) {
  pdl_begin();
  const int64_t n = T * H;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / H, h = i % H;
    float s = 0.f;
    for (int j = 0; j < k; j++) s += weights[t * k + j] * bf(y[(t * k + j) * H + h]);
    out[i] = __float2bfloat16_rn(s);
  }
}

}  // namespace

void moe_route(Ctx& c, Tensor weights, Tensor experts, const Tensor& logits, const Tensor& per_expert_scale,
               int top_k) {
  need(weights, DType::F32, "moe_route", "weights");
  need(experts, DType::I32, "moe_route", "experts");
  need(logits, DType::BF16, "moe_route", "logits");
  need(per_expert_scale, DType::BF16, "moe_route", "per_expert_scale");
  const int64_t T = logits.dim(0), E = logits.row_numel();
  MTP_CHECK(top_k > 0 && top_k <= E && weights.numel() == T * top_k && experts.numel() == T * top_k &&
                per_expert_scale.numel() == E,
            "cuda moe_route: logits {} / top_k {} / weights {} / experts {}", logits.shape_str(), top_k,
            weights.shape_str(), experts.shape_str());
  MTP_CHECK(E <= 2048, "cuda moe_route: {} experts (at most 2048)", E);
  if (T == 0) return;
  const int warps = 4;
  launch(c.stream, "moe_route_kernel", moe_route_kernel, dim3(unsigned((T + warps - 1) / warps)),
         dim3(32 * warps), size_t(warps) * E * sizeof(float), weights.ptr<float>(), experts.ptr<int32_t>(),
         cbf(logits), cbf(per_expert_scale), T, int(E), top_k);
  check_launch("moe_route");
}

void moe_experts(Backend& be, Ctx& c, Tensor out, const Tensor& x, const Tensor& weights,
                 const Tensor& experts, const Tensor& gate_up, const Tensor& down) {
  need(out, DType::BF16, "moe_experts", "out");
  need(x, DType::BF16, "moe_experts", "x");
  need(weights, DType::F32, "moe_experts", "weights");
  need(experts, DType::I32, "moe_experts", "experts");
  need(gate_up, DType::BF16, "moe_experts", "gate_up");
  need(down, DType::BF16, "moe_experts", "down");
  const int64_t T = x.dim(0), H = x.row_numel(), E = gate_up.dim(0), I2 = gate_up.dim(1), I = I2 / 2;
  MTP_CHECK(T > 0 && weights.numel() % T == 0, "cuda moe_experts: weights {} for {} tokens",
            weights.shape_str(), T);
  const int64_t k = weights.numel() / T, P = T * k;
  MTP_CHECK(gate_up.ndim == 3 && gate_up.dim(2) == H && down.ndim == 3 && down.dim(0) == E &&
                down.dim(1) == H && down.dim(2) == I && experts.numel() == P && out.numel() == T * H,
            "cuda moe_experts: x {} / gate_up {} / down {} / experts {} / out {}", x.shape_str(),
            gate_up.shape_str(), down.shape_str(), experts.shape_str(), out.shape_str());
  MTP_CHECK(H % 8 == 0 && I % 8 == 0,
            "cuda moe_experts: hidden {} and expert width {} must be multiples of 8", H, I);
  MTP_CHECK(P < (1LL << 31) && E <= 8192, "cuda moe_experts: too many pairs or experts");
  const int64_t A = std::min(E, P);  // experts that can have pairs: the GEMV grids' second dimension
  Tensor offsets = scratch(be, DType::I32, E + 1), list = scratch(be, DType::I32, P);
  Tensor active = scratch(be, DType::I32, A);
  Tensor act = scratch(be, DType::BF16, P * I), y = scratch(be, DType::BF16, P * H);
  launch(c, "moe_experts (sort)", moe_sort_kernel, dim3(1), dim3(256), size_t(E) * sizeof(int32_t),
         offsets.ptr<int32_t>(), list.ptr<int32_t>(), active.ptr<int32_t>(), int(A),
         experts.ptr<const int32_t>(), int(P), int(E), c.err);
  launch(c, "moe_experts (gate_up)", moe_gemv_kernel<true>,
         dim3(unsigned((I + kExpR - 1) / kExpR), unsigned(A)), dim3(kExpNT), 0, mbf(act), cbf(x), k,
         offsets.ptr<const int32_t>(), list.ptr<const int32_t>(), active.ptr<const int32_t>(), cbf(gate_up),
         I, I, H);
  launch(c, "moe_experts (down)", moe_gemv_kernel<false>,
         dim3(unsigned((H + kExpR - 1) / kExpR), unsigned(A)), dim3(kExpNT), 0, mbf(y), mbf(act), 1,
         offsets.ptr<const int32_t>(), list.ptr<const int32_t>(), active.ptr<const int32_t>(), cbf(down), H,
         I, I);
  launch(c.stream, "moe_combine_kernel", moe_combine_kernel, dim3(grid_for(T * H, 256)), dim3(256), 0,
         mbf(out), cbf(y), weights.ptr<const float>(), T, H, int(k));
  check_launch("moe_experts (combine)");
}

}  // namespace mtpserve::cuda
