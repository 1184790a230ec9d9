// RoPE, half-split (NeoX): pairs (j, j + D/2) rotated by angle float(pos) * inv_freq[j] computed in fp32 with
// accurate sinf/cosf (angles reach ~2.6e5 rad: no fast-math intrinsics), cos/sin rounded to bf16 as HF does,
// the rotation in fp32 and one bf16 rounding of each output (gemma4-architecture.md §5.3: <= 1 ulp from HF's
// three bf16 roundings). In place on x [T, heads, D]. Also qkv_norm_rope: the per-head RMSNorm of q, k, v
// and RoPE of q and k in one kernel.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

// cos/sin of one position for every pair j < half, bf16-rounded as HF: cs[j] = cos, cs[half + j] = sin.
__device__ __forceinline__ void rope_cos_sin(float* cs, float pos, const float* inv_freq, int64_t half) {
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float a = pos * inv_freq[j];
    cs[j] = round_bf(cosf(a));
    cs[half + j] = round_bf(sinf(a));
  }
}
// The rotation of one pair (a, b) = (x[j], x[j + half]); explicit products (no fma contraction), so every
// kernel that rotates gets the same bits.
__device__ __forceinline__ void rotate(bf16* v, int64_t j, int64_t half, float a, float b, const float* cs) {
  const float c = cs[j], s = cs[half + j];
  v[j] = __float2bfloat16_rn(__fmul_rn(a, c) - __fmul_rn(b, s));
  v[j + half] = __float2bfloat16_rn(__fmul_rn(b, c) + __fmul_rn(a, s));
}

__global__ void rope_kernel(bf16* x, const int32_t* positions, const float* inv_freq, int64_t heads,
                            int64_t D) {
  extern __shared__ float cs[];  // [half] cos, [half] sin
  const int64_t t = blockIdx.x, half = D / 2;
  rope_cos_sin(cs, float(positions[t]), inv_freq, half);
  __syncthreads();
  bf16* xt = x + t * heads * D;
  for (int64_t i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int64_t h = i / half, j = i % half;
    bf16* v = xt + h * D;
    rotate(v, j, half, bf(v[j]), bf(v[j + half]), cs);
  }
}

// qkv_norm_rope: one block per token, one warp per head (q heads, then k heads, then v heads). Each head is
// RMS-normalised as rms_norm_kernel<32> does (the same lanes, sum and bf16 rounding of the normed value),
// then rotated as rope_kernel does (v is only normalised): the unfused ops' bits.
__global__ void qkv_norm_rope_kernel(bf16* q, bf16* k, bf16* v, const bf16* qw, const bf16* kw,
                                     const int32_t* positions, const float* inv_freq, int64_t nh, int64_t kvh,
                                     int64_t D, float eps) {
  extern __shared__ float cs[];  // [half] cos, [half] sin
  const int64_t t = blockIdx.x, half = D / 2;
  rope_cos_sin(cs, float(positions[t]), inv_freq, half);
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t heads = nh + (k ? 2 * kvh : 0);
  for (int64_t hd = threadIdx.x / 32; hd < heads; hd += blockDim.x / 32) {
    bf16* row;
    const bf16* w = nullptr;
    if (hd < nh)
      row = q + (t * nh + hd) * D, w = qw;
    else if (hd < nh + kvh)
      row = k + (t * kvh + hd - nh) * D, w = kw;
    else
      row = v + (t * kvh + hd - nh - kvh) * D;
    float ss = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
      const float x = bf(row[i]);
      ss = fmaf(x, x, ss);
    }
    // row_sum also orders every lane's reads above before any lane's writes below.
    const float inv = 1.0f / sqrtf(row_sum<32>(ss) / float(D) + eps);
    auto normed = [&](int64_t i) {
      float x = bf(row[i]) * inv;
      if (w) x *= bf(w[i]);
      return round_bf(x);
    };
    if (hd >= nh + kvh) {  // v: no weight, no rotation
      for (int64_t i = lane; i < D; i += 32) row[i] = __float2bfloat16_rn(normed(i));
      continue;
    }
    for (int64_t j = lane; j < half; j += 32) rotate(row, j, half, normed(j), normed(j + half), cs);
  }
}

}  // namespace

void rope(Ctx& c, Tensor x, const Tensor& positions, const Tensor& inv_freq) {
  need(x, DType::BF16, "rope", "x");
  need(positions, DType::I32, "rope", "positions");
  need(inv_freq, DType::F32, "rope", "inv_freq");
  const int64_t T = x.dim(0), D = x.dim(-1);
  MTP_CHECK(
      T > 0 && D % 2 == 0 && x.numel() % (T * D) == 0 && inv_freq.numel() == D / 2 && positions.numel() == T,
      "cuda rope: x {} / positions {} / inv_freq {}", x.shape_str(), positions.shape_str(),
      inv_freq.shape_str());
  const int64_t heads = x.numel() / (T * D);
  rope_kernel<<<unsigned(T), 256, size_t(D) * sizeof(float), c.stream>>>(
      mbf(x), positions.ptr<const int32_t>(), inv_freq.ptr<const float>(), heads, D);
  check_launch("rope");
}

void qkv_norm_rope(Ctx& c, Tensor q, Tensor k, Tensor v, const Tensor& q_norm, const Tensor& k_norm,
                   const Tensor& positions, const Tensor& inv_freq, float eps) {
  need(q, DType::BF16, "qkv_norm_rope", "q");
  need(q_norm, DType::BF16, "qkv_norm_rope", "q_norm");
  need(positions, DType::I32, "qkv_norm_rope", "positions");
  need(inv_freq, DType::F32, "qkv_norm_rope", "inv_freq");
  const int64_t T = q.dim(0), D = q.dim(-1);
  MTP_CHECK(T > 0 && D % 2 == 0 && q.numel() % (T * D) == 0 && q_norm.numel() == D &&
                inv_freq.numel() == D / 2 && positions.numel() == T,
            "cuda qkv_norm_rope: q {} / q_norm {} / positions {} / inv_freq {}", q.shape_str(),
            q_norm.shape_str(), positions.shape_str(), inv_freq.shape_str());
  const int64_t nh = q.numel() / (T * D);
  int64_t kvh = 0;
  if (k.defined()) {
    need(k, DType::BF16, "qkv_norm_rope", "k");
    need(v, DType::BF16, "qkv_norm_rope", "v");
    need(k_norm, DType::BF16, "qkv_norm_rope", "k_norm");
    kvh = k.numel() / (T * D);
    MTP_CHECK(k.numel() == T * kvh * D && v.numel() == k.numel() && k_norm.numel() == D,
              "cuda qkv_norm_rope: k {} / v {} / k_norm {} for q {}", k.shape_str(), v.shape_str(),
              k_norm.shape_str(), q.shape_str());
  }
  const int64_t warps = std::min<int64_t>(nh + 2 * kvh, 16);
  qkv_norm_rope_kernel<<<unsigned(T), unsigned(32 * warps), size_t(D) * sizeof(float), c.stream>>>(
      mbf(q), k.defined() ? mbf(k) : nullptr, k.defined() ? mbf(v) : nullptr, cbf(q_norm),
      k.defined() ? cbf(k_norm) : nullptr, positions.ptr<const int32_t>(), inv_freq.ptr<const float>(), nh,
      kvh, D, eps);
  check_launch("qkv_norm_rope");
}

}  // namespace mtpserve::cuda
