// Backend::sample_rows and the acceptance built on it (engine/accept.h), on the CPU backend: the op's outputs
// on hand-checked rows, the per-row penalty counts along chain and tree paths, the greedy argmax shortcut
// against the op's greedy rows, and the engine's sampled requests: a fixed seed gives a fixed output,
// speculation leaves the distribution of the emitted tokens unchanged (a two-sample chi-square that does
// detect a penalty change), and log-prob rows follow the accepted path.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "engine/accept.h"
#include "engine/engine.h"
#include "engine_run.h"
#include "test_util.h"

namespace mtpserve {
namespace {

Backend& cpu() {
  static auto be = make_cpu_backend();
  return *be;
}

std::vector<float> random_floats(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// sample_rows on host arrays through the CPU backend.
struct OpOut {
  std::vector<float> pd;
  std::vector<int32_t> tok;
};
OpOut run_op(std::vector<float> logits, int V, const std::vector<float>& params, std::vector<int32_t> drafts,
             std::vector<int64_t> uni, std::vector<int32_t> off, std::vector<int32_t> ids,
             std::vector<float> vals) {
  const int R = int(uni.size()), C = int(drafts.size()) / R;
  SampleRowsArgs a;
  std::vector<float> par = params;
  a.params = Tensor(par.data(), DType::F32, {R, 4});
  a.drafts = Tensor(drafts.data(), DType::I32, {R, C});
  a.uniforms = Tensor(uni.data(), DType::I64, {R});
  a.pen_off = Tensor(off.data(), DType::I32, {R + 1});
  a.pen_ids = Tensor(ids.data(), DType::I32, {int64_t(ids.size())});
  a.pen_val = Tensor(vals.data(), DType::F32, {int64_t(vals.size())});
  OpOut o{std::vector<float>(size_t(R) * C, -7.0f), std::vector<int32_t>(size_t(R), -7)};
  cpu().sample_rows(Tensor(o.pd.data(), DType::F32, {R, C}), Tensor(o.tok.data(), DType::I32, {R}),
                    Tensor(logits.data(), DType::F32, {R, V}), a);
  return o;
}

TEST(SampleRows, OutputsOnHandCheckedRows) {
  const int V = 6;
  const float l[V] = {3, 2.9f, 1, 0, -1, -2};
  std::vector<float> logits;
  for (int r = 0; r < 5; r++) logits.insert(logits.end(), l, l + V);
  const int64_t u_top = int64_t(~uint64_t(0));  // u = 1 - 2^-53
  std::vector<float> params = {1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 2, 0, 1, 0, 0, 0, 1, 0, 0};
  std::vector<int32_t> drafts = {1, -1, 0, 1, 0, 1, 1, -1, 2, -1};
  std::vector<int64_t> uni = {0, u_top, 0, 0, 0};
  // Rows 3 and 4 (greedy): token 0 penalised by 2 below token 1.
  OpOut o = run_op(logits, V, params, drafts, uni, {0, 0, 0, 0, 1, 2}, {0, 0}, {2.0f, 2.0f});
  PenaltyState none;
  SamplingParams sp;
  auto p = target_probs(l, V, sp, none);
  EXPECT_EQ(o.pd[0], p[1]);
  EXPECT_EQ(o.pd[1], 0.0f);  // padding
  EXPECT_EQ(o.tok[0], 0);    // u = 0: the first token with mass once child 1 is removed
  EXPECT_EQ(o.pd[2], p[0]);
  EXPECT_EQ(o.pd[3], p[1]);
  EXPECT_EQ(o.tok[1], 5);  // u -> 1: the last token
  sp.top_k = 2;            // row 2: only the two children are kept
  auto q = target_probs(l, V, sp, none);
  EXPECT_EQ(o.pd[4], q[0]);
  EXPECT_EQ(o.pd[5], q[1]);
  EXPECT_FLOAT_EQ(o.pd[4] + o.pd[5], 1.0f);
  EXPECT_EQ(o.tok[2], -1);   // nothing left
  EXPECT_EQ(o.pd[6], 1.0f);  // greedy: the penalised argmax is child 1
  EXPECT_EQ(o.pd[7], 0.0f);
  EXPECT_EQ(o.tok[3], -1);
  EXPECT_EQ(o.pd[8], 0.0f);  // child 2 is not the argmax, which is the sample
  EXPECT_EQ(o.tok[4], 1);
}

TEST(SampleRows, PenaltyIdsMustAscend) {
  std::vector<float> logits(8, 0.0f);
  EXPECT_ANY_THROW(run_op(logits, 8, {1, 1, 0, 0}, {-1}, {0}, {0, 2}, {5, 3}, {1.0f, 1.0f}));
  EXPECT_ANY_THROW(run_op(logits, 8, {1, 1, 0, 0}, {9}, {0}, {0, 0}, {}, {}));  // draft outside [-1, V)
}

// Each row of a block sees the request's counts plus the drafts on the path from the root to it.
TEST(SampleRows, PenaltiesCountThePathToEachRow) {
  const int V = 16;
  std::vector<float> logits = random_floats(size_t(6) * V, -2.0f, 2.0f, 5);
  SamplingParams sp;
  sp.presence_penalty = 0.7f, sp.frequency_penalty = 0.5f;
  PenaltyState pen;
  pen.add(3), pen.add(3), pen.add(9);
  Rng rng(1);
  for (bool tree : {false, true}) {
    // Chain: 5 drafts. Tree: root -> {1, 2}, 1 -> {3}, 2 -> {4}, 3 -> {5}.
    std::vector<int32_t> drafts = {3, 9, 3, 12, 3};
    std::vector<int> parent = tree ? std::vector<int>{0, 0, 1, 2, 3} : std::vector<int>{};
    Tensor lg(logits.data(), DType::F32, {6, V});
    RowDraws d = draw_rows(cpu(), lg, {{&sp, &pen, &rng, &drafts, &parent}});
    for (int n = 0; n < 6; n++) {
      PenaltyState at = pen;
      for (int a = n; a > 0; a = tree ? parent[size_t(a - 1)] : a - 1) at.add(drafts[size_t(a - 1)]);
      auto p = target_probs(logits.data() + size_t(n) * V, V, sp, at);
      int j = 0;
      for (int i = 1; i <= 5; i++) {
        if ((tree ? parent[size_t(i - 1)] : i - 1) != n) continue;
        EXPECT_EQ(d.pd[size_t(n) * d.C + j++], p[drafts[size_t(i - 1)]]) << "tree " << tree << " row " << n;
      }
    }
  }
}

// For greedy requests without penalties the argmax shortcut and sample_rows' greedy rows agree.
TEST(SampleRows, ArgmaxShortcutEqualsGreedyRows) {
  const int V = 40;
  SamplingParams sp;
  sp.temperature = 0;
  PenaltyState pen;
  Rng rng(3);
  for (int trial = 0; trial < 20; trial++) {
    std::vector<float> logits = random_floats(size_t(5) * V, -1.0f, 1.0f, 100 + trial);
    for (auto& x : logits) x = std::round(x * 4) / 4;  // many ties
    std::vector<int32_t> drafts(4);
    for (int i = 0; i < 4; i++) drafts[size_t(i)] = int32_t((trial * 7 + i * 13) % V);
    std::vector<int> parent = trial % 2 ? std::vector<int>{0, 0, 1, 1} : std::vector<int>{};
    Tensor lg(logits.data(), DType::F32, {5, V});
    std::vector<BlockRows> b{{&sp, &pen, &rng, &drafts, &parent}};
    RowDraws x = argmax_rows(cpu(), lg, b), y = draw_rows(cpu(), lg, b);
    EXPECT_EQ(x.pd, y.pd);
    EXPECT_EQ(x.tok, y.tok);
  }
}

// ---- the engine's sampled requests (tiny pair, CPU backend) ----

std::string src(const std::string& rel) { return std::string(MTP_SOURCE_DIR) + "/" + rel; }

EngineOptions tiny(int K, int topk) {
  EngineOptions o;
  o.model_dir = src("models/tiny-gemma4");
  o.assistant_dir = src("models/tiny-gemma4-assistant");
  o.backend = "cpu";
  o.num_draft = K;
  o.draft_topk = topk;
  o.kv_memory_bytes = 256 << 20;
  o.max_running = 64;
  o.max_batch_tokens = 1024;
  o.check_invariants = true;
  return o;
}

using test::Got;
using test::sampled_request;
std::vector<Got> run(Engine& e, const std::vector<GenerationRequest>& reqs) {
  return test::run_requests(e, reqs);
}

TEST(EngineSampling, FixedSeedGivesFixedOutput) {
  SamplingParams sp;
  sp.temperature = 0.9f, sp.top_p = 0.95f, sp.presence_penalty = 0.3f;
  for (int topk : {1, 2}) {
    std::vector<GenerationRequest> reqs;
    for (int i = 0; i < 6; i++) reqs.push_back(sampled_request(i, sp, 24, true));
    auto e1 = Engine::create(tiny(3, topk));
    auto a = run(*e1, reqs);
    auto e2 = Engine::create(tiny(3, topk));
    auto b = run(*e2, reqs);
    int accepted = 0;
    for (size_t i = 0; i < reqs.size(); i++) {
      EXPECT_EQ(a[i].tokens, b[i].tokens) << "topk " << topk << " request " << i;
      EXPECT_EQ(a[i].tokens.size(), 24u);
      accepted += a[i].accepted;
    }
    EXPECT_GT(accepted, 0) << "no draft was ever accepted";
    EXPECT_NE(a[0].tokens, a[1].tokens) << "different seeds, same 24 tokens";
  }
}

using test::chi2_crit;
using test::two_sample_chi2;

// A negative presence penalty (a boost: repeats become common) makes the penalty counts matter, those of the
// rows below accepted drafts included.
TEST(EngineSampling, SpeculationKeepsTheDistribution) {
  SamplingParams sp;
  sp.temperature = 1.0f, sp.top_k = 3, sp.presence_penalty = -1.5f;
  const int N = 1200;
  auto e = Engine::create(tiny(2, 1));
  auto sample = [&](const SamplingParams& s, bool spec, int seed0) {
    std::vector<GenerationRequest> reqs;
    for (int i = 0; i < N; i++) reqs.push_back(sampled_request(seed0 + i, s, 3, spec));
    return run(*e, reqs);
  };
  auto with = sample(sp, true, 0), without = sample(sp, false, 100000);
  int accepted = 0;
  for (auto& g : with) accepted += g.accepted;
  int df = 0;
  double chi = two_sample_chi2(with, without, &df);
  std::printf("speculative vs plain sampling: chi2 %.1f (df %d, critical %.1f), %d drafts accepted\n", chi,
              df, chi2_crit(df), accepted);
  EXPECT_LT(chi, chi2_crit(df));
  // The test has the power to see a change of the penalties.
  SamplingParams other = sp;
  other.presence_penalty = 0.0f;
  auto changed = sample(other, false, 200000);
  chi = two_sample_chi2(with, changed, &df);
  std::printf("speculative vs plain without the presence penalty: chi2 %.1f (df %d, critical %.1f)\n", chi,
              df, chi2_crit(df));
  EXPECT_GT(chi, chi2_crit(df));
}

// Greedy requests with log-probs go through sample_rows (their logits rows reach the host): speculation
// changes neither the tokens nor their log-probs, so each log-prob row is the accepted path's.
TEST(EngineSampling, LogprobRowsFollowTheAcceptedPath) {
  SamplingParams sp;
  sp.temperature = 0, sp.want_logprobs = true, sp.top_logprobs = 2;
  for (int topk : {1, 2}) {
    auto e = Engine::create(tiny(3, topk));
    std::vector<GenerationRequest> reqs = {sampled_request(0, sp, 20, true),
                                           sampled_request(1, sp, 20, false)};
    auto got = run(*e, reqs);
    EXPECT_GT(got[0].accepted, 0);
    ASSERT_EQ(got[0].tokens, got[1].tokens) << "topk " << topk;
    ASSERT_EQ(got[0].logprobs.size(), got[0].tokens.size());
    ASSERT_EQ(got[1].logprobs.size(), got[1].tokens.size());
    for (size_t i = 0; i < got[0].tokens.size(); i++) {
      EXPECT_EQ(got[0].logprobs[i].token, got[0].tokens[i]);
      EXPECT_NEAR(got[0].logprobs[i].logprob, got[1].logprobs[i].logprob, 1e-4) << "token " << i;
      ASSERT_EQ(got[0].logprobs[i].top.size(), 2u);
      EXPECT_EQ(got[0].logprobs[i].top[0].first, got[1].logprobs[i].top[0].first);
    }
  }
}

}  // namespace
}  // namespace mtpserve
