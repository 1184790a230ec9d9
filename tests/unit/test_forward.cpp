// The forward pass is independent of how a sequence is split into steps: whole-prompt prefill, chunked
// prefill, one-token decode steps and multi-sequence batches must give the same logits, including across
// the sliding-window edge and page boundaries, and with sliding pages returned to the pool.
#include <gtest/gtest.h>

#include "engine/generate.h"
#include "test_util.h"

namespace mtpserve {
namespace {

// Both sides are fp32; they differ only in summation order (BLAS picks gemv or gemm kernels by row count) and
// the RMSNorms (PLE's is 4 wide here) amplify that to ~3e-5 of the logit scale. An indexing or masking bug
// moves logits by O(1).
constexpr double kTol = 1e-4;

std::vector<float> run_chunks(const Gemma4Model& m, const std::vector<int32_t>& toks, int chunk) {
  KvCache kv(m, 16, 16);
  SequenceState s;
  return prefill(m, kv, s, toks, chunk, true);
}

class ForwardSplit : public ::testing::TestWithParam<const char*> {};

TEST_P(ForwardSplit, ChunksAndDecodeMatchWholePrefill) {
  auto be = make_cpu_backend();
  auto m = test::make_dummy_model(test::small_text_config(GetParam()), *be);
  const int V = m->config().vocab_size, n = 45;  // > 2 pages, > 5 windows of 8
  auto toks = test::random_tokens(n, V, 3);
  auto whole = run_chunks(*m, toks, n);
  ASSERT_EQ(whole.size(), size_t(n) * V);
  for (int chunk : {1, 5, 16}) {
    auto split = run_chunks(*m, toks, chunk);
    EXPECT_LT(test::max_row_err(split.data(), whole.data(), whole.size(), V), kTol) << "chunk " << chunk;
  }
}

TEST_P(ForwardSplit, BatchedSequencesMatchSeparateRuns) {
  auto be = make_cpu_backend();
  auto m = test::make_dummy_model(test::small_text_config(GetParam()), *be);
  const int V = m->config().vocab_size;
  KvCache kv(*m, 32, 32);
  // Two sequences with different committed prefixes step together: A decodes 3 tokens, B prefills 20.
  SequenceState a, b;
  auto ta = test::random_tokens(30, V, 11), tb = test::random_tokens(40, V, 12);
  prefill(*m, kv, a, std::vector<int32_t>(ta.begin(), ta.begin() + 27), 27, false);
  prefill(*m, kv, b, std::vector<int32_t>(tb.begin(), tb.begin() + 20), 20, false);
  ASSERT_TRUE(kv.reserve(a.pages, 30));
  ASSERT_TRUE(kv.reserve(b.pages, 40));
  ForwardBatch fb;
  for (int i = 27; i < 30; i++) fb.tokens.push_back(ta[i]), fb.positions.push_back(i);
  for (int i = 20; i < 40; i++) fb.tokens.push_back(tb[i]), fb.positions.push_back(i);
  fb.seqs = {{3, 27, &a.pages.full, &a.pages.sliding}, {20, 20, &b.pages.full, &b.pages.sliding}};
  for (int r = 0; r < 23; r++) fb.output_rows.push_back(r);
  ForwardOutput o = m->forward(fb, kv.storage());
  std::vector<float> got(size_t(23) * V);
  be->copy_to_host(got.data(), o.logits);
  auto ra = run_chunks(*m, ta, 30), rb = run_chunks(*m, tb, 40);
  EXPECT_LT(test::max_row_err(got.data(), ra.data() + size_t(27) * V, size_t(3) * V, V), kTol);
  EXPECT_LT(test::max_row_err(got.data() + size_t(3) * V, rb.data() + size_t(20) * V, size_t(20) * V, V),
            kTol);
}

INSTANTIATE_TEST_SUITE_P(Variants, ForwardSplit, ::testing::Values("all_features", "moe", "plain"));

TEST(Forward, SlidingPagesAreReturnedWhileDecoding) {
  auto be = make_cpu_backend();
  auto m = test::make_dummy_model(test::small_text_config(), *be);
  KvCache kv(*m, 8, 3);  // 3 sliding pages suffice for a window of 8 at any length
  SequenceState s;
  auto r = greedy_generate(*m, kv, s, test::random_tokens(10, 97, 5), 100, {});
  EXPECT_EQ(r.tokens.size(), 100u);
  EXPECT_LE(3 - kv.sliding_pool().free_count(), 2);  // live sliding pages stay bounded
  kv.release(s.pages);
  EXPECT_EQ(kv.full_pool().free_count(), 8);
  EXPECT_EQ(kv.sliding_pool().free_count(), 3);
}

TEST(Forward, TreeMaskEqualsSeparateChains) {
  // A verify block [root, a, b] where a and b are siblings (both children of root) must give, for b, the
  // logits of the chain [root, b].
  auto be = make_cpu_backend();
  auto m = test::make_dummy_model(test::small_text_config(), *be);
  const int V = 97;
  auto prompt = test::random_tokens(20, V, 9);
  int root = 5, x = 17, y = 33;
  KvCache kv(*m, 16, 16);
  SequenceState s;
  prefill(*m, kv, s, prompt, 20, false);
  ASSERT_TRUE(kv.reserve(s.pages, 23));
  ForwardBatch fb;
  fb.tokens = {root, x, y};
  fb.positions = {20, 21, 21};
  fb.seqs = {{3, 20, &s.pages.full, &s.pages.sliding}};
  fb.tree_max_q = 3;
  fb.tree_mask = {1, 0, 0, /**/ 1, 1, 0, /**/ 1, 0, 1};
  fb.output_rows = {0, 1, 2};
  auto o = m->forward(fb, kv.storage());
  std::vector<float> got(size_t(3) * V);
  be->copy_to_host(got.data(), o.logits);
  auto chain_x = prompt, chain_y = prompt;
  chain_x.insert(chain_x.end(), {root, x});
  chain_y.insert(chain_y.end(), {root, y});
  auto rx = run_chunks(*m, chain_x, 22), ry = run_chunks(*m, chain_y, 22);
  EXPECT_LT(test::max_row_err(got.data(), rx.data() + size_t(20) * V, V, V), kTol);
  EXPECT_LT(test::max_row_err(got.data() + V, rx.data() + size_t(21) * V, V, V), kTol);
  EXPECT_LT(test::max_row_err(got.data() + 2 * V, ry.data() + size_t(21) * V, V, V), kTol);
}

}  // namespace
}  // namespace mtpserve
