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

// The 8 bf16 of a 16-byte word as floats (a bf16 is the top half of its float).
__device__ __forceinline__ void unpack8(const uint4& a, float (&f)[8]) {
  const uint32_t u[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// Sums each of P values (a power of two <= 32) over the 32 lanes of a warp with P - 1 + 5 - log2(P) shuffles
// instead of 5 P: each step sends half of the values to the partner lane and keeps the other half. On return
// v[0] of lane l holds the total of value l / (32 / P). A fixed order: deterministic.
template <int P>
__device__ __forceinline__ float warp_sum_transposed(float (&v)[P], int lane) {
  static_assert(P >= 1 && P <= 32 && (P & (P - 1)) == 0, "P: a power of two <= 32");
#pragma unroll
  for (int s = 0; s < 5; s++) {
    const int o = 16 >> s, n = P >> s;
    if (n > 1) {
      const bool upper = (lane & o) != 0;
#pragma unroll
      for (int i = 0; i < n / 2; i++) {
        const float send = upper ? v[i] : v[i + n / 2], keep = upper ? v[i + n / 2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
      }
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    }
  }
  return v[0];
}

}  // namespace mtpserve::cuda
