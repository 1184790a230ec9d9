// The assistant's centroid head on the GPU against the CPU backend: the chosen clusters (ranked, ties to the
// lower index) and their members' ids must be identical; the candidate logits are fp32 dot products of
// bf16-exact inputs, so they differ only by summation order (relative 1e-5 of the row's scale).
#include "cuda_test_util.h"

namespace mtpserve {
namespace {

// Shapes: a power of two, a real head's 2048, one that pads the sort (100), one past the sort's limit (4100:
// the rank kernel). Scores are multiples of 1/4 in [-2, 2] (many ties, including -0 against +0), given to the
// GPU as F32 and as BF16 (exact either way).
TEST(CudaHeads, CentroidCandidatesMatchCpu) {
  struct Case {
    int64_t B, C;
    int top_k;
  };
  for (const Case& k : std::vector<Case>{{1, 64, 1}, {3, 64, 5}, {1, 100, 7}, {2, 2048, 32}, {2, 4100, 32}})
    for (DType sdt : {DType::F32, DType::BF16}) {
      const int64_t B = k.B, C = k.C, per = C > 1000 ? 2 : 16, V = C * per, Ha = 40, N = k.top_k * per;
      std::vector<float> y = randn_bf16(size_t(B * Ha)), emb = randn_bf16(size_t(V * Ha));
      std::vector<float> cs = randn_bf16(size_t(B * C));
      for (float& v : cs) v = std::clamp(std::round(v * 4) / 4, -2.0f, 2.0f);
      for (int64_t b = 0; b < B; b++) {
        cs[b * C + 7] = cs[b * C + 3] = 9.0f;  // a tie at the top: cluster 3 ranks first
        cs[b * C + 11] = -0.0f;                // ties with +0 (lower index first)
      }
      std::vector<int64_t> order(V);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937(next_seed()));
      Tensor corder = cpu().alloc(DType::I64, {V});
      std::memcpy(corder.data, order.data(), order.size() * sizeof(int64_t));

      Tensor ci = cpu().alloc(DType::I32, {B, N}), cv = cpu().alloc(DType::F32, {B, N});
      cpu().centroid_candidates(ci, cv, cpu_f32(y, {B, Ha}), cpu_f32(cs, {B, C}), corder,
                                cpu_f32(emb, {V, Ha}), k.top_k);
      Guarded gi(DType::I32, {B, N}), gv(DType::F32, {B, N});
      const Tensor gcs = sdt == DType::F32 ? gpu_f32(cs, {B, C}) : gpu_bf16(cs, {B, C});
      gpu().centroid_candidates(gi.t, gv.t, gpu_bf16(y, {B, Ha}), gcs, gpu_raw(order, DType::I64, {V}),
                                gpu_bf16(emb, {V, Ha}), k.top_k);
      gi.check("centroid_candidates ids");
      gv.check("centroid_candidates scores");
      const std::vector<int32_t> gids = host_i32(gi.t), cids = host_i32(ci);
      const std::vector<float> gsc = host_f32(gv.t), csc = host_f32(cv);
      const std::string what = fmt::format("B={} C={} top_k={} {}", B, C, k.top_k, dtype_name(sdt));
      EXPECT_EQ(gids, cids) << what;
      for (int64_t i = 0; i < B * N; i++)
        EXPECT_NEAR(gsc[i], csc[i], 1e-5 * (1 + std::abs(csc[i]))) << what << " i=" << i;
      for (int64_t b = 0; b < B; b++) {  // the tied pair: cluster 3 first, then 7
        EXPECT_EQ(gids[b * N], int32_t(order[3 * per])) << what;
        if (k.top_k > 1) {
          EXPECT_EQ(gids[b * N + per], int32_t(order[7 * per])) << what;
        }
      }
    }
}

}  // namespace
}  // namespace mtpserve
