// The assistant's centroid head on the GPU against the CPU backend: the chosen clusters (ranked, ties to the
// lower index) and their members' ids must be identical; the candidate logits are fp32 dot products of
// bf16-exact inputs, so they differ only by summation order (relative 1e-5 of the row's scale).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "backend/cuda/cuda_backend.h"
#include "core/dtype.h"

namespace mtpserve {
namespace {

TEST(CudaHeads, CentroidCandidatesMatchCpu) {
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t B : {1, 3})
    for (int top_k : {1, 5}) {
      const int64_t C = 64, per = 16, V = C * per, Ha = 40, N = top_k * per;
      std::mt19937 g(uint32_t(B * 10 + top_k));
      std::normal_distribution<float> nd;
      auto bf = [&](size_t n) {
        std::vector<float> v(n);
        for (float& x : v) x = round_bf16(nd(g));
        return v;
      };
      std::vector<float> y = bf(size_t(B * Ha)), emb = bf(size_t(V * Ha)), cs = bf(size_t(B * C));
      for (int64_t b = 0; b < B; b++) cs[b * C + 7] = cs[b * C + 3] = 9.0f;  // a tie: cluster 3 ranks first
      std::vector<int64_t> order(V);
      for (int64_t i = 0; i < V; i++) order[i] = i;
      std::shuffle(order.begin(), order.end(), g);
      auto cpu_t = [&](DType d, std::initializer_list<int64_t> shape, const void* src) {
        Tensor t = cpu->alloc(d, shape);
        std::memcpy(t.data, src, t.nbytes());
        return t;
      };
      auto gpu_t = [&](DType d, std::initializer_list<int64_t> shape, const void* src) {
        Tensor t = gpu->alloc(d, shape);
        gpu->copy_from_host(t, src);
        return t;
      };
      std::vector<uint16_t> yb(y.size()), eb(emb.size());
      for (size_t i = 0; i < y.size(); i++) yb[i] = f32_to_bf16(y[i]);
      for (size_t i = 0; i < emb.size(); i++) eb[i] = f32_to_bf16(emb[i]);

      Tensor ci = cpu->alloc(DType::I32, {B, N}), cv = cpu->alloc(DType::F32, {B, N});
      cpu->centroid_candidates(ci, cv, cpu_t(DType::F32, {B, Ha}, y.data()),
                               cpu_t(DType::F32, {B, C}, cs.data()), cpu_t(DType::I64, {V}, order.data()),
                               cpu_t(DType::F32, {V, Ha}, emb.data()), top_k);
      Tensor gi = gpu->alloc(DType::I32, {B, N}), gv = gpu->alloc(DType::F32, {B, N});
      gpu->centroid_candidates(gi, gv, gpu_t(DType::BF16, {B, Ha}, yb.data()),
                               gpu_t(DType::F32, {B, C}, cs.data()), gpu_t(DType::I64, {V}, order.data()),
                               gpu_t(DType::BF16, {V, Ha}, eb.data()), top_k);
      std::vector<int32_t> gids(size_t(B * N));
      std::vector<float> gsc(size_t(B * N));
      gpu->copy_to_host(gids.data(), gi);
      gpu->copy_to_host(gsc.data(), gv);
      for (int64_t i = 0; i < B * N; i++) {
        ASSERT_EQ(gids[i], ci.ptr<int32_t>()[i]) << "B=" << B << " top_k=" << top_k << " candidate " << i;
        EXPECT_NEAR(gsc[i], cv.ptr<float>()[i], 1e-5 * (1 + std::abs(cv.ptr<float>()[i])));
      }
      for (int64_t b = 0; b < B; b++)  // the tied pair: cluster 3 first, then 7
        EXPECT_EQ(gids[b * N], int32_t(order[3 * per]));
    }
}

}  // namespace
}  // namespace mtpserve
