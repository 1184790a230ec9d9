// The assistant's centroid head on the GPU against the CPU backend: the chosen clusters (ranked, ties to the
// lower index) and their members' ids must be identical; the candidate logits are fp32 dot products of
// bf16-exact inputs, so they differ only by summation order (relative 1e-5 of the row's scale).
#include "cuda_test_util.h"

namespace mtpserve {
namespace {

TEST(CudaHeads, CentroidCandidatesMatchCpu) {
  for (int64_t B : {1, 3})
    for (int top_k : {1, 5}) {
      const int64_t C = 64, per = 16, V = C * per, Ha = 40, N = top_k * per;
      std::vector<float> y = randn_bf16(size_t(B * Ha)), emb = randn_bf16(size_t(V * Ha));
      std::vector<float> cs = randn_bf16(size_t(B * C));
      for (int64_t b = 0; b < B; b++) cs[b * C + 7] = cs[b * C + 3] = 9.0f;  // a tie: cluster 3 ranks first
      std::vector<int64_t> order(V);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937(next_seed()));
      Tensor corder = cpu().alloc(DType::I64, {V});
      std::memcpy(corder.data, order.data(), order.size() * sizeof(int64_t));

      Tensor ci = cpu().alloc(DType::I32, {B, N}), cv = cpu().alloc(DType::F32, {B, N});
      cpu().centroid_candidates(ci, cv, cpu_f32(y, {B, Ha}), cpu_f32(cs, {B, C}), corder,
                                cpu_f32(emb, {V, Ha}), top_k);
      Guarded gi(DType::I32, {B, N}), gv(DType::F32, {B, N});
      gpu().centroid_candidates(gi.t, gv.t, gpu_bf16(y, {B, Ha}), gpu_f32(cs, {B, C}),
                                gpu_raw(order, DType::I64, {V}), gpu_bf16(emb, {V, Ha}), top_k);
      gi.check("centroid_candidates ids");
      gv.check("centroid_candidates scores");
      const std::vector<int32_t> gids = host_i32(gi.t), cids = host_i32(ci);
      const std::vector<float> gsc = host_f32(gv.t), csc = host_f32(cv);
      EXPECT_EQ(gids, cids) << "B=" << B << " top_k=" << top_k;
      for (int64_t i = 0; i < B * N; i++) EXPECT_NEAR(gsc[i], csc[i], 1e-5 * (1 + std::abs(csc[i])));
      for (int64_t b = 0; b < B; b++)  // the tied pair: cluster 3 first, then 7
        EXPECT_EQ(gids[b * N], int32_t(order[3 * per]));
    }
}

}  // namespace
}  // namespace mtpserve
