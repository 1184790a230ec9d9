// Reference for layer_proto.cu: the same layer math, one plain op per kernel, and the weight fill.
#pragma once
#include "layer_proto_common.cuh"

__global__ void ref_rms_add(float* h, const float* v, float* x) {  // h += rms(v) if v; x = rms(h); 1 block
  __shared__ float red[32];
  auto rms_scale = [&](const float* a) {
    float s = 0.f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) s += a[i] * a[i];
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(~0u, s, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < int(blockDim.x >> 5); w++) t += red[w];
    return rsqrtf(t / H + 1e-6f);
  };
  if (v) {
    const float sv = rms_scale(v);
    for (int i = threadIdx.x; i < H; i += blockDim.x) h[i] += v[i] * sv;
    __syncthreads();
  }
  const float sh = rms_scale(h);
  for (int i = threadIdx.x; i < H; i += blockDim.x) x[i] = h[i] * sh;
}
__global__ void ref_gemv(const bf16* W, const float* x, float* y, int N, int K) {  // a warp per row
  const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= N) return;
  float s = 0.f;
  for (int k = lane; k < K; k += 32) s += bf2f(W[int64_t(row) * K + k]) * x[k];
  for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(~0u, s, o);
  if (lane == 0) y[row] = s;
}
__global__ void ref_attention(const float* qkv, const bf16* kc, const bf16* vc,
                              float* o) {  // block per q head
  __shared__ float q[HD], kn[HD], sc[KEYS + 1], red[2];
  const int j = blockIdx.x, kh = j / (NQ / NKV), t = threadIdx.x;  // 256 threads = HD
  if (t == 0) {
    float sq = 0.f, sk = 0.f;
    for (int d = 0; d < HD; d++) {
      sq += qkv[j * HD + d] * qkv[j * HD + d];
      sk += qkv[QD + kh * HD + d] * qkv[QD + kh * HD + d];
    }
    red[0] = rsqrtf(sq / HD + 1e-6f);
    red[1] = rsqrtf(sk / HD + 1e-6f);
  }
  __syncthreads();
  q[t] = qkv[j * HD + t] * red[0];
  kn[t] = qkv[QD + kh * HD + t] * red[1];
  __syncthreads();
  for (int k = t; k <= KEYS; k += blockDim.x) {
    float s = 0.f;
    for (int d = 0; d < HD; d++) s += q[d] * (k < KEYS ? bf2f(kc[(int64_t(k) * NKV + kh) * HD + d]) : kn[d]);
    sc[k] = s;
  }
  __syncthreads();
  float m = -INFINITY, l = 0.f, acc = 0.f;
  for (int k = 0; k <= KEYS; k++) m = fmaxf(m, sc[k]);
  for (int k = 0; k <= KEYS; k++) {
    const float p = __expf(sc[k] - m);
    l += p;
    acc += p * (k < KEYS ? bf2f(vc[(int64_t(k) * NKV + kh) * HD + t]) : qkv[QD + NKV * HD + kh * HD + t]);
  }
  o[j * HD + t] = acc / l;
}
__global__ void ref_gelu_mul(const float* gu, const float* ple, float* a,
                             int n) {  // a = gelu(gu[i]) * second
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) a[i] = gelu(gu[i]) * (ple ? ple[i] : gu[n + i]);
}

__global__ void fill_bf16(bf16* p, size_t n, float scale, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t z = uint32_t(i) * 2654435761u ^ seed ^ uint32_t(i >> 32) * 40503u;
    z ^= z >> 15;
    z *= 2246822519u;
    z ^= z >> 13;
    z *= 3266489917u;
    z ^= z >> 16;
    const float u = (z >> 8) * (1.f / 16777216.f) * 2.f - 1.f;
    p[i] = bf16(__float_as_uint(u * scale) >> 16);
  }
}
