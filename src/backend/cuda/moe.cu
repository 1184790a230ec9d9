// MoE (26B-A4B). moe_route: one warp per token: softmax in fp32, top-k by repeated warp argmax (largest
// first, ties to the lower index, as torch.topk), renormalise, times per_expert_scale. moe_experts, grouped
// by expert: (1) a sort kernel lists the (token, slot) pairs of every expert in pair order (deterministic),
// (2) gate|up GEMV per expert over its pairs (a warp owns intermediate row i: gate row i and up row I + i),
// epilogue bf16(bf16(gelu(bf16 g)) * bf16 u) as HF rounds, (3) down GEMV per expert, bf16 expert outputs, (4)
// combine out[t] = bf16(sum_k w[t,k] * y[t,k]) in slot order (fp32, no atomics). Each expert's weights are
// read once per step however many tokens chose it.
#include "backend/cuda/gemv_core.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

__global__ void moe_route_kernel(float* weights, int32_t* experts, const bf16* logits, const bf16* scale,
                                 int64_t T, int E, int top_k) {
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

// offsets [E+1], list [P] of pair indices (t * k + slot) per expert, in pair order.
__global__ void moe_sort_kernel(int32_t* offsets, int32_t* list, const int32_t* experts, int P, int E,
                                DevErr* err) {
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
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int o = offsets[e];
    for (int i = 0; i < P; i++)
      if (experts[i] == e) list[o++] = i;
  }
}

// Token rows of one expert in chunks of MT pairs; warp computes weight rows (r0, r1) = (i, I + i) for gate|up
// (GATE_UP) or row h of down.
template <int MT, bool GATE_UP>
__device__ void expert_chunk(bf16* dst, const bf16* src, int64_t src_div, const int32_t* list, int n,
                             const bf16* w, int64_t row, int64_t I, int64_t K, int64_t ld_dst, int lane) {
  constexpr int RW = GATE_UP ? 2 : 1;
  const uint4* wr[RW];
  wr[0] = reinterpret_cast<const uint4*>(w + row * K);
  if constexpr (GATE_UP) wr[RW - 1] = reinterpret_cast<const uint4*>(w + (I + row) * K);
  const uint4* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; m++)
    xr[m] = reinterpret_cast<const uint4*>(src + int64_t(list[min(m, n - 1)] / src_div) * K);
  float acc[MT][RW];
  warp_gemv<MT, RW>(wr, xr, K / 8, lane, acc);
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < MT; m++) {
      if (m >= n) break;
      float v;
      if constexpr (GATE_UP) {
        const float g = round_bf(acc[m][0]), u = round_bf(acc[m][RW - 1]);
        v = round_bf(gelu_tanh(g)) * u;
      } else {
        v = acc[m][0];
      }
      dst[int64_t(list[m]) * ld_dst + row] = __float2bfloat16_rn(v);
    }
  }
}

// grid (ceil(rows / 4), E); GATE_UP: rows = I, src = x (pair / top_k = token), dst = act [P, I];
// down: rows = H, src = act (pair), dst = y [P, H].
template <bool GATE_UP>
__global__ void __launch_bounds__(128)
    moe_gemv_kernel(bf16* dst, const bf16* src, int64_t src_div, const int32_t* offsets, const int32_t* list,
                    const bf16* w, int64_t rows, int64_t I, int64_t K) {
  const int e = blockIdx.y;
  const int begin = offsets[e], n_e = offsets[e + 1] - begin;
  if (n_e == 0) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * 4 + warp;
  if (row >= rows) return;
  const bf16* we = w + int64_t(e) * (GATE_UP ? 2 * I : rows) * K;
  for (int c = 0; c < n_e; c += 8) {
    const int n = min(8, n_e - c);
    const int32_t* l = list + begin + c;
    if (n == 1)
      expert_chunk<1, GATE_UP>(dst, src, src_div, l, n, we, row, I, K, rows, lane);
    else if (n == 2)
      expert_chunk<2, GATE_UP>(dst, src, src_div, l, n, we, row, I, K, rows, lane);
    else if (n <= 4)
      expert_chunk<4, GATE_UP>(dst, src, src_div, l, n, we, row, I, K, rows, lane);
    else
      expert_chunk<8, GATE_UP>(dst, src, src_div, l, n, we, row, I, K, rows, lane);
  }
}

__global__ void moe_combine_kernel(bf16* out, const bf16* y, const float* weights, int64_t T, int64_t H,
                                   int k) {
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
  moe_route_kernel<<<unsigned((T + warps - 1) / warps), 32 * warps, size_t(warps) * E * sizeof(float),
                     c.stream>>>(weights.ptr<float>(), experts.ptr<int32_t>(), cbf(logits),
                                 cbf(per_expert_scale), T, int(E), top_k);
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
  Tensor offsets = scratch(be, DType::I32, E + 1), list = scratch(be, DType::I32, P);
  Tensor act = scratch(be, DType::BF16, P * I), y = scratch(be, DType::BF16, P * H);
  moe_sort_kernel<<<1, 256, size_t(E) * sizeof(int32_t), c.stream>>>(
      offsets.ptr<int32_t>(), list.ptr<int32_t>(), experts.ptr<const int32_t>(), int(P), int(E), c.err);
  check_launch("moe_experts (sort)");
  moe_gemv_kernel<true><<<dim3(unsigned((I + 3) / 4), unsigned(E)), 128, 0, c.stream>>>(
      mbf(act), cbf(x), k, offsets.ptr<const int32_t>(), list.ptr<const int32_t>(), cbf(gate_up), I, I, H);
  check_launch("moe_experts (gate_up)");
  moe_gemv_kernel<false><<<dim3(unsigned((H + 3) / 4), unsigned(E)), 128, 0, c.stream>>>(
      mbf(y), mbf(act), 1, offsets.ptr<const int32_t>(), list.ptr<const int32_t>(), cbf(down), H, I, I);
  check_launch("moe_experts (down)");
  moe_combine_kernel<<<grid_for(T * H, 256), 256, 0, c.stream>>>(mbf(out), cbf(y), weights.ptr<const float>(),
                                                                 T, H, int(k));
  check_launch("moe_experts (combine)");
}

}  // namespace mtpserve::cuda
