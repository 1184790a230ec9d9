// Heads and sampling: argmax over the last dim (first index on ties; bf16 or fp32 input, so greedy runs on
// the same bf16 softcapped values HF compares), and casts to fp32.
#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

template <typename E>
__device__ __forceinline__ float ld(const E* p, int64_t i) {
  if constexpr (std::is_same_v<E, float>)
    return p[i];
  else if constexpr (std::is_same_v<E, __half>)
    return __half2float(p[i]);
  else
    return __bfloat162float(p[i]);
}

// Block argmax of row[lo, hi) (first index on ties); the result is valid in thread 0.
template <typename E>
__device__ void block_argmax(const E* row, int64_t lo, int64_t hi, float& bv, int64_t& bi) {
  bv = -INFINITY;
  bi = INT64_MAX;  // sentinel larger than every index
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    float v = ld(row, i);
    if (v > bv || bi == INT64_MAX) bv = v, bi = i;  // ascending i per thread: first maximum kept
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
  }
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : INT64_MAX;
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
  }
}

// Pass 1: block (c, r) reduces chunk c of row r to (value, index) partials [R, nchunk].
template <typename E>
__global__ void argmax_partial_kernel(float* pv, int64_t* pi, const E* x, int64_t V, int64_t chunk) {
  pdl_begin();
  const E* row = x + int64_t(blockIdx.y) * V;
  const int64_t lo = int64_t(blockIdx.x) * chunk;
  float bv;
  int64_t bi;
  block_argmax(row, lo, min(V, lo + chunk), bv, bi);
  if (threadIdx.x == 0) {
    pv[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = bv;
    pi[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = bi;
  }
}

// Pass 2: one block per row over its partials; ids [R, V] optional: write ids[r, argmax] (the greedy pick
// among candidates) instead of the index.
__global__ void argmax_final_kernel(int32_t* out, const float* pv, const int64_t* pi, int nchunk,
                                    const int32_t* ids, int64_t V) {
  pdl_begin();
  const int64_t r = blockIdx.x;
  float bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int c = threadIdx.x; c < nchunk; c += blockDim.x) {
    const float v = pv[r * nchunk + c];
    const int64_t i = pi[r * nchunk + c];
    if (i == INT64_MAX) continue;
    if (v > bv || (v == bv && i < bi) || bi == INT64_MAX) bv = v, bi = i;
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (oi != INT64_MAX && (ov > bv || (ov == bv && oi < bi) || bi == INT64_MAX)) bv = ov, bi = oi;
  }
  if (threadIdx.x == 0) {
    const int64_t j = bi < V ? bi : 0;
    out[r] = ids ? ids[r * V + j] : int32_t(j);
  }
}

// Rows of V split into chunks of >= 4096 so that a few rows still fill the GPU; two passes.
template <typename E>
void launch_argmax(Backend& be, Ctx& c, int32_t* out, const E* x, int64_t R, int64_t V, const int32_t* ids) {
  int64_t chunk = 4096;
  while (R * ((V + chunk - 1) / chunk) > 8 * int64_t(c.num_sms) && chunk < V) chunk *= 2;
  const int nchunk = int((V + chunk - 1) / chunk);
  Tensor pv = scratch(be, DType::F32, R * nchunk), pi = scratch(be, DType::I64, R * nchunk);
  launch(c.stream, "argmax_partial_kernel", argmax_partial_kernel<E>, dim3(unsigned(nchunk), unsigned(R)),
         dim3(256), 0, pv.ptr<float>(), pi.ptr<int64_t>(), x, V, chunk);
  launch(c.stream, "argmax_final_kernel", argmax_final_kernel, dim3(unsigned(R)), dim3(32), 0, out,
         pv.ptr<const float>(), pi.ptr<const int64_t>(), nchunk, ids, V);
}

template <typename E>
__global__ void to_f32_kernel(float* out, const E* x, int64_t n) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = ld(x, i);
}

}  // namespace

void argmax(Backend& be, Ctx& c, Tensor out, const Tensor& x) {
  need(out, DType::I32, "argmax", "out");
  need_cuda(x, "argmax", "x");
  const int64_t V = x.dim(-1), R = x.numel() / V;
  MTP_CHECK(V > 0 && out.numel() == R, "cuda argmax: x {} / out {}", x.shape_str(), out.shape_str());
  if (R == 0) return;
  if (x.dtype == DType::BF16)
    launch_argmax<bf16>(be, c, out.ptr<int32_t>(), cbf(x), R, V, nullptr);
  else if (x.dtype == DType::F32)
    launch_argmax<float>(be, c, out.ptr<int32_t>(), x.ptr<const float>(), R, V, nullptr);
  else
    fail("cuda argmax: x must be BF16 or F32, got {}", dtype_name(x.dtype));
  check_launch("argmax");
}

void argmax_ids(Backend& be, Ctx& c, Tensor out, const Tensor& scores, const Tensor& ids) {
  need(out, DType::I32, "argmax_ids", "out");
  need(scores, DType::F32, "argmax_ids", "scores");
  need(ids, DType::I32, "argmax_ids", "ids");
  const int64_t R = scores.dim(0), N = scores.dim(-1);
  MTP_CHECK(scores.ndim == 2 && N > 0 && ids.numel() == R * N && out.numel() == R,
            "cuda argmax_ids: scores {} / ids {} / out {}", scores.shape_str(), ids.shape_str(),
            out.shape_str());
  if (R == 0) return;
  launch_argmax<float>(be, c, out.ptr<int32_t>(), scores.ptr<const float>(), R, N, ids.ptr<const int32_t>());
  check_launch("argmax_ids");
}

void to_f32(Ctx& c, Tensor out, const Tensor& x) {
  need(out, DType::F32, "to_f32", "out");
  need_cuda(x, "to_f32", "x");
  const int64_t n = x.numel();
  MTP_CHECK(out.numel() == n, "cuda to_f32: x {} / out {}", x.shape_str(), out.shape_str());
  if (!n) return;
  const unsigned g = grid_for(n, 256);
  switch (x.dtype) {
    case DType::BF16:
      launch(c.stream, "to_f32_kernel", to_f32_kernel<bf16>, dim3(g), dim3(256), 0, out.ptr<float>(), cbf(x),
             n);
      break;
    case DType::F16:
      launch(c.stream, "to_f32_kernel", to_f32_kernel<__half>, dim3(g), dim3(256), 0, out.ptr<float>(),
             x.ptr<const __half>(), n);
      break;
    case DType::F32:
      CUDA_OK(cudaMemcpyAsync(out.data, x.data, size_t(n) * 4, cudaMemcpyDeviceToDevice, c.stream), "to_f32");
      return;
    default:
      fail("cuda to_f32: x must be a float tensor, got {}", dtype_name(x.dtype));
  }
  check_launch("to_f32");
}

}  // namespace mtpserve::cuda
