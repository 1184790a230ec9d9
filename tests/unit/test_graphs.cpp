// The graph runners against the eager forward. On the CPU a graph replays the recorded code, so these check
// the runners' own logic: the packed metadata layout, padding sequences in the pad pages, bucket reuse with
// new inputs, and the draft loop whose tokens never leave the device.
#include <gtest/gtest.h>

#include "engine/generate.h"
#include "engine/graphs.h"
#include "test_util.h"

namespace mtpserve {
namespace {

std::string src(const std::string& rel) { return std::string(MTP_SOURCE_DIR) + "/" + rel; }

std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> v(size_t(t.numel()));
  be.copy_to_host(v.data(), t);
  return v;
}

TEST(Graphs, BucketsOfOneTwoFourEightThenEightsThenAboutOneAndAQuarter) {
  std::vector<int> got;
  for (int n : {1, 2, 3, 5, 8, 9, 17, 25, 32, 41, 64, 65, 81, 200}) got.push_back(graph_bucket(n));
  EXPECT_EQ(got, (std::vector<int>{1, 2, 4, 8, 8, 16, 24, 32, 32, 48, 64, 80, 112, 240}));
}

// Three sequences (bucket 4: one padding sequence) of prompt lengths spanning pages, verify blocks of 4 rows
// as chains and with a tree mask, replayed with new tokens; each result equals the eager forward of the
// same batch on a copy of the cache.
TEST(Graphs, TargetVerifyMatchesEagerForward) {
  auto be = make_cpu_backend();
  auto m = Gemma4Model::load(src("tests/data/golden/e_style/text"), *be);
  const int V = m->config().vocab_size, Q = 4;
  KvCache kv(*m, 64, 64);
  std::vector<SequenceState> seqs(3);
  for (int s = 0; s < 3; s++) {
    auto p = test::random_tokens(5 + 13 * s, V, 40 + s);
    prefill(*m, kv, seqs[s], p, 64, false);
    seqs[s].tokens = p;
    ASSERT_TRUE(kv.reserve(seqs[s].pages, int(p.size()) + Q));
  }
  TargetGraphs g(*m, kv.storage(), kv.pad_pages(), 128, 8);
  for (int round = 0; round < 3; round++) {
    ForwardBatch b;
    for (int s = 0; s < 3; s++) {
      auto t = test::random_tokens(Q, V, 7 * round + s);
      const int L = int(seqs[s].tokens.size());
      for (int i = 0; i < Q; i++)
        b.tokens.push_back(t[i]), b.positions.push_back(L + (round == 2 ? i / 2 : i));
      b.seqs.push_back({Q, L, &seqs[s].pages.full, &seqs[s].pages.sliding});
    }
    if (round == 2) {  // a tree: 0 -> {1, 2}, 1 -> 3
      const uint8_t tree[Q][Q] = {{1, 0, 0, 0}, {1, 1, 0, 0}, {1, 0, 1, 0}, {1, 1, 0, 1}};
      for (int s = 0; s < 3; s++)
        for (int i = 0; i < Q; i++) b.tree_mask.insert(b.tree_mask.end(), tree[i], tree[i] + Q);
      b.tree_max_q = Q;
    }
    for (int i = 0; i < 3 * Q; i++) b.output_rows.push_back(i);
    ASSERT_TRUE(g.fits(b));
    ForwardOutput want = m->forward(b, kv.storage());
    auto wl = host(*be, want.logits), wh = host(*be, want.hidden);
    ForwardOutput got = g.forward(b);
    ASSERT_EQ(got.logits.dim(0), 4 * Q) << "bucket of 4 sequences";
    auto gl = host(*be, got.logits.rows(0, 3 * Q)), gh = host(*be, got.hidden.rows(0, 3 * Q));
    for (size_t i = 0; i < wl.size(); i++) ASSERT_NEAR(gl[i], wl[i], 1e-4 * (1 + std::abs(wl[i]))) << i;
    for (size_t i = 0; i < wh.size(); i++) ASSERT_NEAR(gh[i], wh[i], 1e-4 * (1 + std::abs(wh[i]))) << i;
  }
  EXPECT_EQ(g.graphs(), 2);  // chain and tree buckets
  ForwardBatch mixed;        // unequal q_len: not a graph batch
  mixed.tokens = {1, 2, 3};
  mixed.positions = {5, 6, 18};
  mixed.seqs = {{2, 5, &seqs[0].pages.full, &seqs[0].pages.sliding},
                {1, 18, &seqs[1].pages.full, &seqs[1].pages.sliding}};
  mixed.output_rows = {0, 1, 2};
  EXPECT_FALSE(g.fits(mixed));
}

// k greedy draft steps through the graph equal k eager assistant steps with host argmax, for the dense and
// the centroid head.
TEST(Graphs, DraftLoopMatchesEagerSteps) {
  for (const char* pair :
       {"k_eq_v_style/mm:assistant_k_eq_v_style_dense", "e_style/text:assistant_e_style_centroid"}) {
    std::string p(pair);
    auto be = make_cpu_backend();
    auto m = Gemma4Model::load(src("tests/data/golden/" + p.substr(0, p.find(':'))), *be);
    auto a = Gemma4Assistant::load(src("tests/data/golden/" + p.substr(p.find(':') + 1) + "/model"), *m);
    const int V = m->config().vocab_size, H = m->config().hidden_size, S = 3, K = 4;
    KvCache kv(*m, 64, 64);
    std::vector<SequenceState> seqs(S);
    DraftRows rows;
    for (int s = 0; s < S; s++) {
      auto t = test::random_tokens(9 + 11 * s, V, 90 + s);
      prefill(*m, kv, seqs[s], t, 64, false);
      rows.tokens.push_back(t.back());
      rows.seqs.push_back({1, int(t.size()), &seqs[s].pages.full, &seqs[s].pages.sliding});
    }
    Tensor h0 = be->alloc(DType::F32, {S, H});
    std::vector<float> hv(size_t(S) * H);
    for (size_t i = 0; i < hv.size(); i++) hv[i] = std::sin(0.37f * float(i));
    be->copy_from_host(h0, hv.data());

    std::vector<int32_t> want;  // [K][S]
    DraftRows r = rows;
    Tensor h = h0;
    for (int k = 0; k < K; k++) {
      DraftStepOutput o = a->step(r, h, kv.storage());
      std::vector<int32_t> next = a->greedy_tokens(o);
      want.insert(want.end(), next.begin(), next.end());
      r.tokens = next;
      h = o.hidden;
    }
    DraftGraphs g(*a, *m, kv.storage(), kv.pad_pages(), 128, 8);
    EXPECT_EQ(g.draft(rows, h0, K), want) << pair << " (eager first use)";
    EXPECT_EQ(g.draft(rows, h0, K), want) << pair << " (replay)";
  }
}

}  // namespace
}  // namespace mtpserve
