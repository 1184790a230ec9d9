// The warp-level GEMV core shared by linear.cu and moe.cu: a warp computes RW weight rows against MT token
// rows, lanes striding K with 16-byte streaming loads (L1 no-allocate), U * RW weight loads in flight per
// lane before the FMAs, fp32 accumulation, and an xor-shuffle reduction so every lane ends with the full
// sums.
#pragma once
#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {

__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ __forceinline__ float dot8(const uint4& a, const uint4& b) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 fa = __bfloat1622float2(pa[i]), fb = __bfloat1622float2(pb[i]);
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}

// acc[m][r] = sum_k w_r[k] * x_m[k] over K8 groups of 8 (rows 16-byte aligned). All lanes get the sums.
template <int MT, int RW>
__device__ __forceinline__ void warp_gemv(const uint4* const (&wr)[RW], const uint4* const (&xr)[MT],
                                          int64_t K8, int lane, float (&acc)[MT][RW]) {
  constexpr int U = RW == 1 ? 4 : 2;
#pragma unroll
  for (int m = 0; m < MT; m++)
#pragma unroll
    for (int r = 0; r < RW; r++) acc[m][r] = 0.f;
  for (int64_t k = lane; k < K8; k += 32 * U) {
    uint4 wv[U][RW];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int r = 0; r < RW; r++)
        wv[u][r] = (k + u * 32 < K8) ? ld_stream(wr[r] + k + u * 32) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (k + u * 32 >= K8) break;
#pragma unroll
      for (int m = 0; m < MT; m++) {
        const uint4 xv = __ldg(xr[m] + k + u * 32);
#pragma unroll
        for (int r = 0; r < RW; r++) acc[m][r] += dot8(wv[u][r], xv);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; m++)
#pragma unroll
    for (int r = 0; r < RW; r++) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      acc[m][r] = v;
    }
}

}  // namespace mtpserve::cuda
