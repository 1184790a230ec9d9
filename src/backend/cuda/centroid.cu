// The assistant's centroid head (E2B/E4B drafters): per row, the top_k clusters by centroid score (largest
// first, lower index on ties, as the CPU backend), then the logits of their member tokens only —
// cand_scores[j] = y . embed[token_ordering[c * per + i]] — so a [B, V] row is never built.
// One block per row: a k-step block argmax over the C scores, then one warp per candidate dot product.
#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void centroid_kernel(int32_t* cand_ids, float* cand_scores, const __nv_bfloat16* y,
                                const float* cscores, const int64_t* ordering, const __nv_bfloat16* embed,
                                int C, int Ha, int per, int top_k) {
  extern __shared__ float smem[];  // [C] scores (consumed clusters set to -inf), then [Ha] y as fp32
  float* sc = smem;
  float* yv = smem + C;
  __shared__ float red_v[kThreads / 32];
  __shared__ int red_i[kThreads / 32];
  __shared__ int chosen;
  const int b = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
  for (int i = threadIdx.x; i < C; i += blockDim.x) sc[i] = cscores[int64_t(b) * C + i];
  for (int i = threadIdx.x; i < Ha; i += blockDim.x) yv[i] = __bfloat162float(y[int64_t(b) * Ha + i]);
  __syncthreads();
  for (int k = 0; k < top_k; k++) {
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
      if (sc[i] > bv || (sc[i] == bv && i < bi)) bv = sc[i], bi = i;
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_down_sync(0xffffffffu, bv, o);
      int oi = __shfl_down_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) red_v[warp] = bv, red_i[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
      float v = red_v[0];
      int ix = red_i[0];
      for (int w = 1; w < nwarp; w++)
        if (red_v[w] > v || (red_v[w] == v && red_i[w] < ix)) v = red_v[w], ix = red_i[w];
      chosen = ix;
      sc[ix] = -INFINITY;
    }
    __syncthreads();
    const int c = chosen;
    // Member tokens of cluster c: one warp per token.
    for (int j = warp; j < per; j += nwarp) {
      int64_t id = ordering[int64_t(c) * per + j];
      const __nv_bfloat16* e = embed + id * Ha;
      float d = 0;
      for (int i = lane; i < Ha; i += 32) d += yv[i] * __bfloat162float(e[i]);
      for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
      if (lane == 0) {
        int64_t o = int64_t(b) * top_k * per + int64_t(k) * per + j;
        cand_ids[o] = int32_t(id);
        cand_scores[o] = d;
      }
    }
    __syncthreads();
  }
}

}  // namespace

void centroid_candidates(Ctx& c, Tensor cand_ids, Tensor cand_scores, const Tensor& y, const Tensor& cscores,
                         const Tensor& ordering, const Tensor& embed, int top_k) {
  need(cand_ids, DType::I32, "centroid_candidates", "cand_ids");
  need(cand_scores, DType::F32, "centroid_candidates", "cand_scores");
  need(cscores, DType::F32, "centroid_candidates", "centroid_scores");
  need(ordering, DType::I64, "centroid_candidates", "token_ordering");
  need(y, DType::BF16, "centroid_candidates", "y");
  need(embed, DType::BF16, "centroid_candidates", "embed");
  const int64_t B = y.dim(0), Ha = y.dim(1), C = cscores.dim(1), V = embed.dim(0), per = V / C;
  MTP_CHECK(V % C == 0 && top_k > 0 && top_k <= C && cand_ids.numel() == B * top_k * per &&
                cand_scores.numel() == B * top_k * per && ordering.numel() == V && embed.dim(1) == Ha,
            "cuda centroid_candidates: bad shapes y {} scores {} embed {} cand {}", y.shape_str(),
            cscores.shape_str(), embed.shape_str(), cand_ids.shape_str());
  if (B == 0) return;
  size_t shm = size_t(C + Ha) * sizeof(float);
  MTP_CHECK(shm <= 48 * 1024, "cuda centroid_candidates: {} centroids + hidden {} exceed shared memory", C,
            Ha);
  centroid_kernel<<<unsigned(B), kThreads, shm, c.stream>>>(
      cand_ids.ptr<int32_t>(), cand_scores.ptr<float>(), cbf(y), cscores.ptr<const float>(),
      ordering.ptr<const int64_t>(), cbf(embed), int(C), int(Ha), int(per), top_k);
  check_launch("centroid_candidates");
}

}  // namespace mtpserve::cuda
