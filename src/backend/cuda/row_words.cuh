// A row of bf16 held in registers by TPR threads (a warp or a block): thread t owns the 16-byte words t,
// t + TPR, ... (at most WPT) of the row, loaded all at once. The vectorised row kernels (norm.cu) and the
// per-head norms of qkv_norm_rope (rope.cu) share this layout and the order of the sum of squares, so their
// results agree bit for bit.
#pragma once
#include <type_traits>

#include "backend/cuda/gemv_core.cuh"  // unpack8

namespace mtpserve::cuda {

template <int TPR, int WPT>
struct RowWords {
  float v[WPT][8];
  __device__ __forceinline__ static int lane() { return int(threadIdx.x % TPR); }
  __device__ __forceinline__ static bool has(int j, int64_t W) { return lane() + int64_t(j) * TPR < W; }
  __device__ __forceinline__ void load(const __nv_bfloat16* row, int64_t W) {
    const uint4* r = reinterpret_cast<const uint4*>(row);
#pragma unroll
    for (int j = 0; j < WPT; j++)
      if (has(j, W)) unpack8(r[lane() + int64_t(j) * TPR], v[j]);
  }
  // Rounds each value to bf16.
  __device__ __forceinline__ void store(__nv_bfloat16* row, int64_t W) const {
    uint4* r = reinterpret_cast<uint4*>(row);
#pragma unroll
    for (int j = 0; j < WPT; j++) {
      if (!has(j, W)) continue;
      uint32_t u[4];
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const __nv_bfloat162 p = __floats2bfloat162_rn(v[j][2 * e], v[j][2 * e + 1]);
        u[e] = *reinterpret_cast<const uint32_t*>(&p);
      }
      r[lane() + int64_t(j) * TPR] = make_uint4(u[0], u[1], u[2], u[3]);
    }
  }
  // v = v * inv (* w when use_w), each rounded to bf16 when `round` (the normed value as rms_norm stores
  // it). A flag and a reference, not a maybe-null pointer: taking w's address put it in local memory.
  __device__ __forceinline__ void scale(float inv, const RowWords& w, bool use_w, bool round) {
#pragma unroll
    for (int j = 0; j < WPT; j++)
#pragma unroll
      for (int e = 0; e < 8; e++) {
        float x = v[j][e] * inv;
        if (use_w) x *= w.v[j][e];
        v[j][e] = round ? __bfloat162float(__float2bfloat16_rn(x)) : x;
      }
  }
  // 1 / rms of the row (sum of squares over the TPR threads in a fixed order).
  __device__ __forceinline__ float inv_rms(int64_t W, int64_t D, float eps) const {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < WPT; j++)
      if (has(j, W))
#pragma unroll
        for (int e = 0; e < 8; e++) ss = fmaf(v[j][e], v[j][e], ss);
    return 1.0f / sqrtf(row_sum<TPR>(ss) / float(D) + eps);
  }
};

// f(integral_constant<TPR>, integral_constant<WPT>) for TPR 32 or 256 and WPT 1..4: the one dispatch from
// runtime shapes to the row kernels' template arguments.
template <typename F>
void with_row_shape(int tpr, int wpt, F&& f) {
  auto words = [&](auto t) {
    switch (wpt) {
      case 1:
        return f(t, std::integral_constant<int, 1>());
      case 2:
        return f(t, std::integral_constant<int, 2>());
      case 3:
        return f(t, std::integral_constant<int, 3>());
      default:
        return f(t, std::integral_constant<int, 4>());
    }
  };
  if (tpr == 256)
    words(std::integral_constant<int, 256>());
  else
    words(std::integral_constant<int, 32>());
}

}  // namespace mtpserve::cuda
