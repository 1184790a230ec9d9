// The CPU backend's centroid head (Backend::centroid_candidates, the executable specification the CUDA
// kernels are tested against) against a brute-force reading of its contract: clusters ranked by score
// (largest first, lower index on ties, -0 equal to +0), members in token_ordering order, logits y .
// embed[id]; the scores given as F32 or BF16 (bf16-exact values) give the same result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "model/gemma4.h"

namespace mtpserve {
namespace {

Backend& cpu() {
  static auto b = make_cpu_backend();
  return *b;
}

TEST(CentroidHead, CandidatesFollowTheContract) {
  const int64_t B = 2, C = 40, per = 3, V = C * per, Ha = 8;
  const int top_k = 6, N = top_k * per;
  std::mt19937 g(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Tensor y = cpu().alloc(DType::F32, {B, Ha}), emb = cpu().alloc(DType::F32, {V, Ha});
  for (int64_t i = 0; i < y.numel(); i++) y.ptr<float>()[i] = nd(g);
  for (int64_t i = 0; i < emb.numel(); i++) emb.ptr<float>()[i] = nd(g);
  // Scores in quarters (bf16-exact, many ties), a tie at the top and -0 among the zeros.
  Tensor cs = cpu().alloc(DType::F32, {B, C}), cs16 = cpu().alloc(DType::BF16, {B, C});
  float* c = cs.ptr<float>();
  for (int64_t i = 0; i < B * C; i++) c[i] = std::round(nd(g) * 2) / 4;
  for (int64_t b = 0; b < B; b++) {
    c[b * C + 9] = c[b * C + 4] = 5.0f;
    c[b * C + 2] = -0.0f;
  }
  for (int64_t i = 0; i < B * C; i++) cs16.ptr<uint16_t>()[i] = f32_to_bf16(c[i]);
  std::vector<int64_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), g);
  Tensor ord = cpu().alloc(DType::I64, {V});
  std::copy(order.begin(), order.end(), ord.ptr<int64_t>());

  Tensor ids = cpu().alloc(DType::I32, {B, N}), sc = cpu().alloc(DType::F32, {B, N});
  Tensor ids16 = cpu().alloc(DType::I32, {B, N}), sc16 = cpu().alloc(DType::F32, {B, N});
  cpu().centroid_candidates(ids, sc, y, cs, ord, emb, top_k);
  cpu().centroid_candidates(ids16, sc16, y, cs16, ord, emb, top_k);
  for (int64_t b = 0; b < B; b++) {
    std::vector<int> rank(C);  // clusters in order, by counting who beats whom
    for (int i = 0; i < C; i++) {
      int r = 0;
      for (int j = 0; j < C; j++) {
        const float u = c[b * C + j], v = c[b * C + i];
        r += u > v || (u == v && j < i);
      }
      rank[r] = i;
    }
    EXPECT_EQ(rank[0], 4);
    EXPECT_EQ(rank[1], 9);
    for (int k = 0; k < top_k; k++)
      for (int64_t j = 0; j < per; j++) {
        const int64_t o = b * N + k * per + j, id = order[size_t(rank[k] * per + j)];
        EXPECT_EQ(ids.ptr<int32_t>()[o], id) << "row " << b << " rank " << k;
        double d = 0;
        for (int64_t e = 0; e < Ha; e++)
          d += double(y.ptr<float>()[b * Ha + e]) * emb.ptr<float>()[id * Ha + e];
        EXPECT_NEAR(sc.ptr<float>()[o], d, 1e-5 * (1 + std::abs(d)));
        EXPECT_EQ(ids16.ptr<int32_t>()[o], ids.ptr<int32_t>()[o]);
        EXPECT_EQ(sc16.ptr<float>()[o], sc.ptr<float>()[o]);
      }
  }
}

}  // namespace
}  // namespace mtpserve
