// RoPE, half-split (NeoX): pairs (j, j + D/2) rotated by angle float(pos) * inv_freq[j] computed in fp32 with
// accurate sinf/cosf (angles reach ~2.6e5 rad: no fast-math intrinsics), cos/sin rounded to bf16 as HF does,
// the rotation in fp32 and one bf16 rounding of each output (gemma4-architecture.md §5.3: <= 1 ulp from HF's
// three bf16 roundings). In place on x [T, heads, D].
#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

__global__ void rope_kernel(bf16* x, const int32_t* positions, const float* inv_freq, int64_t heads,
                            int64_t D) {
  extern __shared__ float cs[];  // [half] cos, [half] sin
  const int64_t t = blockIdx.x, half = D / 2;
  const float pos = float(positions[t]);
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float a = pos * inv_freq[j];
    cs[j] = round_bf(cosf(a));
    cs[half + j] = round_bf(sinf(a));
  }
  __syncthreads();
  bf16* xt = x + t * heads * D;
  for (int64_t i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int64_t h = i / half, j = i % half;
    bf16* v = xt + h * D;
    const float a = bf(v[j]), b = bf(v[j + half]), c = cs[j], s = cs[half + j];
    v[j] = __float2bfloat16_rn(a * c - b * s);
    v[j + half] = __float2bfloat16_rn(b * c + a * s);
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

}  // namespace mtpserve::cuda
