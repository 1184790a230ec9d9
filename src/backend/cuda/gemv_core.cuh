// The warp-level GEMV core shared by linear.cu and moe.cu: a warp computes RW weight rows against MT token
// rows, lanes striding K with 16-byte streaming loads (L1 no-allocate), U * RW weight loads in flight per
// lane before the FMAs, fp32 accumulation, and an xor-shuffle reduction so every lane ends with the full
// sums. Also the pieces of linear.cu's split-K GEMV: bf16 unpacking and a transposed warp reduction of many
// values at once.
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

// p ? a : b, opaque to the compiler (a plain select of two elements of a register array can be folded into
// a select of their addresses, which puts the array in local memory).
__device__ __forceinline__ float select_f(bool p, float a, float b) {
  float r;
  asm("{\n\t.reg .pred q;\n\tsetp.ne.u32 q, %3, 0;\n\tselp.f32 %0, %1, %2, q;\n\t}"
      : "=f"(r)
      : "f"(a), "f"(b), "r"(unsigned(p)));
  return r;
}

// One step of warp_sum_transposed: N values left, partner lane^O.
template <int N, int O, int P>
__device__ __forceinline__ void warp_sum_step(float (&v)[P], int lane) {
  if constexpr (O > 0) {
    if constexpr (N > 1) {
      const bool upper = (lane & O) != 0;
#pragma unroll
      for (int i = 0; i < N / 2; i++) {
        const float lo = v[i], hi = v[i + N / 2];
        const float send = select_f(upper, lo, hi), keep = select_f(upper, hi, lo);
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
      }
      warp_sum_step<N / 2, O / 2>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
      warp_sum_step<1, O / 2>(v, lane);
    }
  }
}

// Sums each of P values (a power of two <= 32) over the 32 lanes of a warp with P - 1 + 5 - log2(P) shuffles
// instead of 5 P: each step sends half of the values to the partner lane and keeps the other half. On return
// v[0] of lane l holds the total of value l / (32 / P). A fixed order: deterministic.
template <int P>
__device__ __forceinline__ float warp_sum_transposed(float (&v)[P], int lane) {
  static_assert(P >= 1 && P <= 32 && (P & (P - 1)) == 0, "P: a power of two <= 32");
  warp_sum_step<P, 16>(v, lane);
  return v[0];
}

// --- the split-K GEMV's pieces (linear.cu's gemv_splitk_kernel, moe.cu's expert GEMV) ---

// ld_stream as a volatile asm: kept in program order with the PDL instructions (issued before the wait).
__device__ __forceinline__ uint4 ld_stream_ordered(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
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

// Each warp's partial sums of the V values acc[0, V) (padded to P = pow2_ceil(V) with zeros) into red[V]
// (this warp's row of the block's shared array), by a transposed shuffle reduction: a fixed order.
template <int V, int P>
__device__ __forceinline__ void splitk_warp_sums(float (&acc)[P], float* red, int lane) {
  if constexpr (P <= 32) {
    const float s = warp_sum_transposed<P>(acc, lane);
    constexpr int L = 32 / P;  // lanes per value
    if (lane % L == 0 && lane / L < V) red[lane / L] = s;
  } else {
#pragma unroll
    for (int g = 0; g < P / 32; g++) {
      float v[32];
#pragma unroll
      for (int i = 0; i < 32; i++) v[i] = acc[g * 32 + i];
      const float s = warp_sum_transposed<32>(v, lane);
      if (g * 32 + lane < V) red[g * 32 + lane] = s;
    }
  }
}

}  // namespace mtpserve::cuda
