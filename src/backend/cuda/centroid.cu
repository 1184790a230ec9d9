// The assistant's centroid head (E2B/E4B drafters): per row, the top_k clusters by centroid score (largest
// first, lower index on ties, as the CPU backend), then the logits of their member tokens only —
// cand_scores[j] = y . embed[token_ordering[c * per + i]] — so a [B, V] row is never built.
// Two kernels: the chosen clusters (one block per row: a bitonic sort, or for more than kSortMax clusters a
// rank count), then one block per chosen cluster and row.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSortMax = 4096;  // clusters sorted in shared memory (8-byte keys, 32 KB)

template <typename T>
__device__ __forceinline__ float score(const T* s, int64_t i) {
  if constexpr (std::is_same_v<T, float>)
    return s[i];
  else
    return __bfloat162float(s[i]);
}

// Phase 1, one block per row, C <= kSortMax: a bitonic sort of the clusters, descending, on 64-bit keys
// (order-preserving bits of the score, then the complemented index, so equal scores put the lower index
// first); the first top_k keys are the chosen clusters in order. log2(N)^2 / 2 barrier steps (66 for 2048
// clusters) instead of the rank count's C^2 compares in one block (127 us for 2048 on the H100).
template <typename T>
__global__ void centroid_sort_kernel(int32_t* chosen, const T* cscores, int C, int N, int top_k) {
  pdl_begin();
  extern __shared__ unsigned long long key[];  // [N], N = the power of two >= C
  const int b = blockIdx.x;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    unsigned long long k = 0;  // padding sorts last
    if (i < C) {
      float v = score(cscores, int64_t(b) * C + i);
      if (v == 0.f) v = 0.f;  // -0 ties with +0 (the comparison the CPU sorts with)
      uint32_t u = __float_as_uint(v);
      u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
      k = (static_cast<unsigned long long>(u) << 32) | (0xFFFFFFFFu - uint32_t(i));
    }
    key[i] = k;
  }
  __syncthreads();
  for (int size = 2; size <= N; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < N / 2; t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1)), j = i + stride;  // the pair t compares
        const bool desc = (i & size) == 0;
        const unsigned long long x = key[i], y = key[j];
        if ((x < y) == desc) {
          key[i] = y;
          key[j] = x;
        }
      }
      __syncthreads();
    }
  for (int r = threadIdx.x; r < top_k; r += blockDim.x)
    chosen[int64_t(b) * top_k + r] = int32_t(0xFFFFFFFFu - uint32_t(key[r]));
}

// Phase 1 for C > kSortMax, one block per row: the rank of every cluster (how many score higher, or equal
// with a lower index); the top_k ranks are the chosen clusters in order.
template <typename T>
__global__ void centroid_rank_kernel(int32_t* chosen, const T* cscores, int C, int top_k) {
  pdl_begin();
  extern __shared__ float sc[];  // [C]
  const int b = blockIdx.x;
  for (int i = threadIdx.x; i < C; i += blockDim.x) sc[i] = score(cscores, int64_t(b) * C + i);
  __syncthreads();
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const float v = sc[i];
    int rank = 0;
    for (int j = 0; j < C; j++) {
      const float u = sc[j];
      rank += (u > v) | ((u == v) & (j < i));
    }
    if (rank < top_k) chosen[int64_t(b) * top_k + rank] = i;
  }
}

// Phase 2, blocks (chosen cluster, row, group of 8 members): the member tokens' logits, one warp per token
// (its Ha / 32 loads per lane independent), so the candidates of a row spread over the whole GPU.
__global__ void centroid_cand_kernel(int32_t* cand_ids, float* cand_scores, const __nv_bfloat16* y,
                                     const int32_t* chosen, const int64_t* ordering,
                                     const __nv_bfloat16* embed, int Ha, int per, int top_k) {
  pdl_begin();
  extern __shared__ float yv[];  // [Ha]
  const int k = blockIdx.x, b = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarp = blockDim.x >> 5;
  for (int i = threadIdx.x; i < Ha; i += blockDim.x) yv[i] = __bfloat162float(y[int64_t(b) * Ha + i]);
  __syncthreads();
  const int c = chosen[int64_t(b) * top_k + k];
  for (int j = blockIdx.z * nwarp + warp; j < per; j += gridDim.z * nwarp) {
    const int64_t id = ordering[int64_t(c) * per + j];
    const __nv_bfloat16* e = embed + id * Ha;
    float d = 0;
    for (int i = lane; i < Ha; i += 32) d += yv[i] * __bfloat162float(e[i]);
    for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
    if (lane == 0) {
      const int64_t o = int64_t(b) * top_k * per + int64_t(k) * per + j;
      cand_ids[o] = int32_t(id);
      cand_scores[o] = d;
    }
  }
}

}  // namespace

void centroid_candidates(Backend& be, Ctx& c, Tensor cand_ids, Tensor cand_scores, const Tensor& y,
                         const Tensor& cscores, const Tensor& ordering, const Tensor& embed, int top_k) {
  need(cand_ids, DType::I32, "centroid_candidates", "cand_ids");
  need(cand_scores, DType::F32, "centroid_candidates", "cand_scores");
  MTP_CHECK(cscores.dtype == DType::F32 || cscores.dtype == DType::BF16,
            "cuda centroid_candidates: centroid_scores must be F32 or BF16, got {}",
            dtype_name(cscores.dtype));
  need(ordering, DType::I64, "centroid_candidates", "token_ordering");
  need(y, DType::BF16, "centroid_candidates", "y");
  need(embed, DType::BF16, "centroid_candidates", "embed");
  const int64_t B = y.dim(0), Ha = y.dim(1), C = cscores.dim(1), V = embed.dim(0), per = V / C;
  MTP_CHECK(V % C == 0 && top_k > 0 && top_k <= C && cand_ids.numel() == B * top_k * per &&
                cand_scores.numel() == B * top_k * per && ordering.numel() == V && embed.dim(1) == Ha,
            "cuda centroid_candidates: bad shapes y {} scores {} embed {} cand {}", y.shape_str(),
            cscores.shape_str(), embed.shape_str(), cand_ids.shape_str());
  if (B == 0) return;
  MTP_CHECK(size_t(std::max(C, Ha)) * sizeof(float) <= 48 * 1024,
            "cuda centroid_candidates: {} centroids or hidden {} exceed shared memory", C, Ha);
  Tensor chosen = scratch(be, DType::I32, B * top_k);
  auto choose = [&](auto* cs) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(cs)>>;
    if (C <= kSortMax) {
      int N = 1;
      while (N < C) N *= 2;
      launch(c.stream, "centroid_sort_kernel", centroid_sort_kernel<T>, dim3(unsigned(B)),
             dim3(unsigned(std::clamp(N / 2, 32, 1024))), size_t(N) * 8, chosen.ptr<int32_t>(), cs, int(C), N,
             top_k);
    } else {
      launch(c.stream, "centroid_rank_kernel", centroid_rank_kernel<T>, dim3(unsigned(B)), dim3(1024),
             size_t(C) * sizeof(float), chosen.ptr<int32_t>(), cs, int(C), top_k);
    }
  };
  if (cscores.dtype == DType::F32)
    choose(cscores.ptr<const float>());
  else
    choose(cscores.ptr<const __nv_bfloat16>());
  check_launch("centroid_candidates (choose)");
  const unsigned groups = unsigned((per + kThreads / 32 - 1) / (kThreads / 32));
  launch(c.stream, "centroid_cand_kernel", centroid_cand_kernel, dim3(unsigned(top_k), unsigned(B), groups),
         dim3(kThreads), size_t(Ha) * sizeof(float), cand_ids.ptr<int32_t>(), cand_scores.ptr<float>(),
         cbf(y), chosen.ptr<const int32_t>(), ordering.ptr<const int64_t>(), cbf(embed), int(Ha), int(per),
         top_k);
  check_launch("centroid_candidates");
}

}  // namespace mtpserve::cuda
