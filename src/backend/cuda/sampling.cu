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

// ids [R, V] optional: write ids[r, argmax] instead of the index (the greedy pick among candidates).
template <typename E>
__global__ void argmax_kernel(int32_t* out, const E* x, int64_t V, const int32_t* ids) {
  const E* row = x + int64_t(blockIdx.x) * V;
  float bv = -INFINITY;
  int64_t bi = V;  // sentinel larger than every index
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    float v = ld(row, i);
    if (v > bv || bi == V) bv = v, bi = i;  // ascending i per thread: first maximum kept
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
    bi = lane < nw ? si[lane] : V;
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) {
      const int64_t j = bi < V ? bi : 0;
      out[blockIdx.x] = ids ? ids[int64_t(blockIdx.x) * V + j] : int32_t(j);
    }
  }
}

template <typename E>
__global__ void to_f32_kernel(float* out, const E* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = ld(x, i);
}

}  // namespace

void argmax(Ctx& c, Tensor out, const Tensor& x) {
  need(out, DType::I32, "argmax", "out");
  need_cuda(x, "argmax", "x");
  const int64_t V = x.dim(-1), R = x.numel() / V;
  MTP_CHECK(V > 0 && out.numel() == R, "cuda argmax: x {} / out {}", x.shape_str(), out.shape_str());
  if (R == 0) return;
  if (x.dtype == DType::BF16)
    argmax_kernel<bf16><<<unsigned(R), 512, 0, c.stream>>>(out.ptr<int32_t>(), cbf(x), V, nullptr);
  else if (x.dtype == DType::F32)
    argmax_kernel<float>
        <<<unsigned(R), 512, 0, c.stream>>>(out.ptr<int32_t>(), x.ptr<const float>(), V, nullptr);
  else
    fail("cuda argmax: x must be BF16 or F32, got {}", dtype_name(x.dtype));
  check_launch("argmax");
}

void argmax_ids(Ctx& c, Tensor out, const Tensor& scores, const Tensor& ids) {
  need(out, DType::I32, "argmax_ids", "out");
  need(scores, DType::F32, "argmax_ids", "scores");
  need(ids, DType::I32, "argmax_ids", "ids");
  const int64_t R = scores.dim(0), N = scores.dim(-1);
  MTP_CHECK(scores.ndim == 2 && N > 0 && ids.numel() == R * N && out.numel() == R,
            "cuda argmax_ids: scores {} / ids {} / out {}", scores.shape_str(), ids.shape_str(),
            out.shape_str());
  if (R == 0) return;
  argmax_kernel<float><<<unsigned(R), 512, 0, c.stream>>>(out.ptr<int32_t>(), scores.ptr<const float>(), N,
                                                          ids.ptr<const int32_t>());
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
      to_f32_kernel<bf16><<<g, 256, 0, c.stream>>>(out.ptr<float>(), cbf(x), n);
      break;
    case DType::F16:
      to_f32_kernel<__half><<<g, 256, 0, c.stream>>>(out.ptr<float>(), x.ptr<const __half>(), n);
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
