// The serving engine with frozen-KV MTP on the CPU backend: lossless greedy speculation (== target-only
// greedy) at batch sizes 1-8 with ragged prompts and K = 1..6, for the bundled tiny model and the golden
// variants, plus the regressions peers hit in the field. The KV pool invariant checker runs after every step.
#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <map>
#include <mutex>

#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "test_util.h"

namespace mtpserve {
namespace {

std::string src(const std::string& rel) { return std::string(MTP_SOURCE_DIR) + "/" + rel; }

struct Collected {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::None;
  int drafted = 0, accepted = 0;
  std::string error;
};

// Submit all requests at once (they run batched) and wait for every final output.
std::vector<Collected> run_all(Engine& e, const std::vector<GenerationRequest>& reqs) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Collected> out(reqs.size());
  size_t done = 0;
  for (size_t i = 0; i < reqs.size(); i++) {
    bool ok = e.submit(reqs[i], [&, i](const RequestOutput& o) {
      std::lock_guard<std::mutex> lk(mu);
      out[i].tokens.insert(out[i].tokens.end(), o.tokens.begin(), o.tokens.end());
      out[i].drafted = o.drafted_tokens;
      out[i].accepted = o.accepted_tokens;
      if (o.finish != FinishReason::None) {
        out[i].finish = o.finish;
        out[i].error = o.error;
        done++;
        cv.notify_all();
      }
    });
    EXPECT_TRUE(ok);
  }
  std::unique_lock<std::mutex> lk(mu);
  EXPECT_TRUE(cv.wait_for(lk, std::chrono::seconds(120), [&] { return done == reqs.size(); }));
  return out;
}

GenerationRequest greedy_req(const std::string& id, std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.sampling.max_tokens = max_tokens;
  return r;
}

// Target-only greedy reference, one sequence at a time.
std::vector<int32_t> reference(const Gemma4Model& m, const std::vector<int32_t>& prompt, int n,
                               const std::vector<int>& eos) {
  KvCache kv(m, 64, 64);
  SequenceState s;
  return greedy_generate(m, kv, s, prompt, n, eos).tokens;
}

struct Pair {
  std::string name, target, assistant;
};
void PrintTo(const Pair& p, std::ostream* os) { *os << p.name; }  // readable ctest names

class GreedyLossless : public ::testing::TestWithParam<std::tuple<Pair, int, int, bool>> {};

TEST_P(GreedyLossless, SpeculativeEqualsTargetOnly) {
  auto [pair, K, topk, graphs] = GetParam();
  EngineOptions o;
  o.graphs = graphs ? "on" : "off";
  o.draft_topk = topk;
  o.model_dir = src(pair.target);
  o.assistant_dir = src(pair.assistant);
  o.backend = "cpu";
  o.num_draft = K;
  o.max_batch_tokens = 96;  // small, so long prompts prefill in several chunks beside verify blocks
  o.prefill_chunk = 40;
  o.kv_memory_bytes = 64 << 20;
  o.max_running = 8;
  o.check_invariants = true;
  auto e = Engine::create(o);
  auto be = make_cpu_backend();
  auto m = Gemma4Model::load(o.model_dir, *be);
  const int V = m->config().vocab_size;
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 8; i++) {
    auto p = test::random_tokens(3 + 11 * i, V - 16, 100 + i);  // ragged prompts, 3..80 tokens
    p[0] = m->config().bos_token_id;
    reqs.push_back(greedy_req("r" + std::to_string(i), p, 16 + 4 * i));
  }
  for (int bs : {1, 8}) {
    std::vector<GenerationRequest> batch(reqs.begin(), reqs.begin() + bs);
    auto got = run_all(*e, batch);
    int drafted = 0;
    for (int i = 0; i < bs; i++) {
      auto want = reference(*m, batch[i].prompt, batch[i].sampling.max_tokens, m->config().eos_token_ids);
      EXPECT_EQ(got[i].tokens, want) << pair.target << " K=" << K << " topk=" << topk << " batch " << bs
                                     << " request " << i;
      EXPECT_NE(got[i].finish, FinishReason::Error) << got[i].error;
      drafted += got[i].drafted;
    }
    EXPECT_GT(drafted, 0) << "speculation never ran";
  }
  auto st = e->stats();
  EXPECT_EQ(st.full_pages_used, 0);
  EXPECT_EQ(st.sliding_pages_used, 0);
  if (graphs) {
    EXPECT_GT(st.graph_steps, 0);
    if (topk == 1) {
      EXPECT_GT(st.graph_draft_loops, 0);
    }
  }
}

const auto kPairs =
    ::testing::Values(Pair{"tiny_dense", "models/tiny-gemma4", "models/tiny-gemma4-assistant"},
                      Pair{"tiny_centroid", "models/tiny-gemma4", "models/tiny-gemma4-assistant-centroid"},
                      Pair{"e_style_centroid", "tests/data/golden/e_style/text",
                           "tests/data/golden/assistant_e_style_centroid/model"},
                      Pair{"k_eq_v_style_dense", "tests/data/golden/k_eq_v_style/mm",
                           "tests/data/golden/assistant_k_eq_v_style_dense/model"});
std::string lossless_name(const ::testing::TestParamInfo<GreedyLossless::ParamType>& info) {
  return std::get<0>(info.param).name + "_K" + std::to_string(std::get<1>(info.param)) + "_topk" +
         std::to_string(std::get<2>(info.param)) + (std::get<3>(info.param) ? "_graphs" : "");
}

INSTANTIATE_TEST_SUITE_P(Pairs, GreedyLossless,
                         ::testing::Combine(kPairs, ::testing::Values(1, 3, 6), ::testing::Values(1, 3),
                                            ::testing::Values(false)),
                         lossless_name);
// The graph runners (on the CPU they replay the recorded code): padded buckets, the on-device draft loop.
INSTANTIATE_TEST_SUITE_P(Graphs, GreedyLossless,
                         ::testing::Combine(kPairs, ::testing::Values(3), ::testing::Values(1, 3),
                                            ::testing::Values(true)),
                         lossless_name);

EngineOptions tiny_opts(int K = 3) {
  EngineOptions o;
  o.model_dir = src("models/tiny-gemma4");
  o.assistant_dir = src("models/tiny-gemma4-assistant");
  o.backend = "cpu";
  o.num_draft = K;
  o.kv_memory_bytes = 64 << 20;
  o.max_running = 8;
  o.max_batch_tokens = 256;
  o.check_invariants = true;
  return o;
}

TEST(EngineRegressions, EveryRequestFinishesInVerify) {
  // max_tokens small enough that each request's last tokens arrive in one verify step together.
  auto e = Engine::create(tiny_opts(4));
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 4; i++)
    reqs.push_back(greedy_req("f" + std::to_string(i), {2, 651 + i, 12, 9, 300}, 3));
  auto got = run_all(*e, reqs);
  for (auto& g : got) EXPECT_EQ(g.finish, FinishReason::Length);
  // The engine keeps serving afterwards (no stale draft state).
  auto again = run_all(*e, {greedy_req("after", {2, 100, 200, 300}, 20)});
  EXPECT_EQ(again[0].tokens.size(), 20u);
  EXPECT_EQ(e->stats().full_pages_used, 0);
}

TEST(EngineRegressions, RequestJoiningMidFlight) {
  auto o = tiny_opts(3);
  auto e = Engine::create(o);
  auto be = make_cpu_backend();
  auto m = Gemma4Model::load(o.model_dir, *be);
  std::promise<void> started;
  std::atomic<bool> once{false};
  std::mutex mu;
  std::vector<int32_t> a_tokens;
  std::promise<void> a_done;
  auto pa = test::random_tokens(60, 8000, 5);
  pa[0] = 2;
  e->submit(greedy_req("a", pa, 60), [&](const RequestOutput& out) {
    std::lock_guard<std::mutex> lk(mu);
    a_tokens.insert(a_tokens.end(), out.tokens.begin(), out.tokens.end());
    if (!once.exchange(true)) started.set_value();
    if (out.finish != FinishReason::None) a_done.set_value();
  });
  started.get_future().wait();                  // a is decoding; b joins now
  auto pb = test::random_tokens(150, 8000, 6);  // longer than the sliding window (128)
  pb[0] = 2;
  auto b = run_all(*e, {greedy_req("b", pb, 40)});
  a_done.get_future().wait();
  EXPECT_EQ(a_tokens, reference(*m, pa, 60, m->config().eos_token_ids));
  EXPECT_EQ(b[0].tokens, reference(*m, pb, 40, m->config().eos_token_ids));
}

TEST(EngineRegressions, ZeroAcceptedTokens) {
  // A drafter for another target geometry cannot be bound; instead use the golden random assistant on its
  // random target: its drafts are essentially never accepted, and output must still be exact.
  EngineOptions o;
  o.model_dir = src("tests/data/golden/k_eq_v_style/text");
  o.assistant_dir = src("tests/data/golden/assistant_k_eq_v_style_centroid/model");
  o.backend = "cpu";
  o.num_draft = 4;
  o.kv_memory_bytes = 16 << 20;
  o.max_running = 8;
  o.check_invariants = true;
  auto e = Engine::create(o);
  auto be = make_cpu_backend();
  auto m = Gemma4Model::load(o.model_dir, *be);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 3; i++) reqs.push_back(greedy_req("z" + std::to_string(i), {2, 40 + i, 77, 300}, 16));
  auto got = run_all(*e, reqs);
  int accepted = 0;
  for (int i = 0; i < 3; i++) {
    EXPECT_EQ(got[i].tokens, reference(*m, reqs[i].prompt, 16, m->config().eos_token_ids));
    accepted += got[i].accepted;
  }
  EXPECT_LT(accepted, 6);
}

TEST(EngineRegressions, SpeculationOffPerRequestAndMixedK) {
  auto o = tiny_opts(5);
  auto e = Engine::create(o);
  auto be = make_cpu_backend();
  auto m = Gemma4Model::load(o.model_dir, *be);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 4; i++) {
    auto r = greedy_req("s" + std::to_string(i), {2, 105, 2000 + i, 106, 107}, 30);
    if (i == 0) r.spec.enabled = false;
    if (i == 1) r.spec.max_draft = 1;
    if (i == 2) r.spec.max_draft = 0;
    reqs.push_back(r);
  }
  auto got = run_all(*e, reqs);
  for (int i = 0; i < 4; i++)
    EXPECT_EQ(got[i].tokens, reference(*m, reqs[i].prompt, 30, m->config().eos_token_ids));
  EXPECT_EQ(got[0].drafted, 0);
  EXPECT_EQ(got[2].drafted, 0);
  EXPECT_GT(got[1].drafted, 0);
  EXPECT_GT(got[3].drafted, got[1].drafted);
}

TEST(EngineRegressions, PreemptionByRecomputeKeepsOutputExact) {
  // A KV budget that fits about two long requests at a time: the others are preempted and recomputed.
  auto o = tiny_opts(3);
  o.kv_memory_bytes = 13 << 20;  // ~11.5 MB sliding pool + ~33 full pages; 6 requests need 72
  o.max_running = 6;
  auto e = Engine::create(o);
  auto be = make_cpu_backend();
  auto m = Gemma4Model::load(o.model_dir, *be);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; i++) {
    auto p = test::random_tokens(100, 8000, 40 + i);
    p[0] = 2;
    reqs.push_back(greedy_req("p" + std::to_string(i), p, 80));
  }
  auto got = run_all(*e, reqs);
  for (int i = 0; i < 6; i++)
    EXPECT_EQ(got[i].tokens, reference(*m, reqs[i].prompt, 80, m->config().eos_token_ids));
  EXPECT_GT(e->stats().preemptions, 0) << "the budget was meant to force preemption";
  EXPECT_EQ(e->stats().full_pages_used, 0);
}

TEST(EngineRegressions, CancelFreesPages) {
  auto e = Engine::create(tiny_opts(3));
  std::promise<void> first;
  std::atomic<bool> once{false};
  std::promise<FinishReason> fin;
  e->submit(greedy_req("c", {2, 10, 20, 30}, 1000), [&](const RequestOutput& o) {
    if (!once.exchange(true)) first.set_value();
    if (o.finish != FinishReason::None) fin.set_value(o.finish);
  });
  first.get_future().wait();
  e->cancel("c");
  EXPECT_EQ(fin.get_future().get(), FinishReason::Abort);
  auto again = run_all(*e, {greedy_req("d", {2, 5}, 5)});
  EXPECT_EQ(again[0].tokens.size(), 5u);
  auto st = e->stats();
  EXPECT_EQ(st.full_pages_used, 0);
  EXPECT_EQ(st.sliding_pages_used, 0);
}

TEST(EngineRegressions, InvalidPromptsAreRejected) {
  auto e = Engine::create(tiny_opts(3));
  EXPECT_THROW(e->submit(greedy_req("x", {}, 4), [](const RequestOutput&) {}), Error);
  EXPECT_THROW(e->submit(greedy_req("x", {2, 99999}, 4), [](const RequestOutput&) {}), Error);
  EXPECT_THROW(e->submit(greedy_req("x", std::vector<int32_t>(100000, 5), 4), [](const RequestOutput&) {}),
               Error);
}

}  // namespace
}  // namespace mtpserve

namespace mtpserve {
namespace {

// With graphs, the engine records every batch bucket up to max_running at startup (decode, verify of the
// default draft length, the chain draft loop; a tree has no draft-loop graph), and still serves exactly.
TEST(EngineGraphs, WarmupRecordsEveryBucket) {
  struct Case {
    int max_running, topk;
    bool warm;
    int graphs;
  };
  // buckets 1, 2, 4, 8 (max_running 8) and 1, 2, 4, 8, 16 with 16 clipped to 10 sequences (max_running 10)
  const auto req = greedy_req("a", {2, 17, 40, 99, 7}, 12);
  EngineOptions ro = tiny_opts(3);
  ro.graphs = "off";
  const auto ref = run_all(*Engine::create(ro), {req});
  for (const Case& c :
       std::vector<Case>{{8, 1, true, 12}, {10, 1, true, 15}, {8, 2, true, 8}, {8, 1, false, 0}}) {
    SCOPED_TRACE(testing::Message() << "max_running " << c.max_running << " topk " << c.topk);
    EngineOptions o = tiny_opts(3);
    o.graphs = "on";
    o.max_running = c.max_running;
    o.draft_topk = c.topk;
    o.warm_graphs = c.warm;
    auto e = Engine::create(o);
    EXPECT_EQ(e->info().graph_count, c.graphs);
    EXPECT_EQ(e->info().graph_warmup_s > 0.0, c.warm);
    auto out = run_all(*e, {req});
    EXPECT_EQ(out[0].tokens, ref[0].tokens);
    EXPECT_EQ(out[0].finish, ref[0].finish);
  }
}

// The KV budget: --kv-memory wins, then --mem-fraction of the free memory, else 512 MiB; bad values and an
// unknown free memory are errors.
TEST(EngineMemory, KvBudget) {
  EXPECT_EQ(kv_budget_bytes(0, 0.0, -1), int64_t(512) << 20);
  EXPECT_EQ(kv_budget_bytes(0, 0.25, int64_t(8) << 30), int64_t(2) << 30);
  EXPECT_THROW(kv_budget_bytes(0, 0.25, -1), Error);
  EXPECT_EQ(kv_budget_bytes(3 << 20, 0.25, int64_t(8) << 30), 3 << 20);
  EXPECT_THROW(kv_budget_bytes(0, 1.5, int64_t(8) << 30), Error);
  EXPECT_THROW(kv_budget_bytes(-1, 0.0, -1), Error);
}

// --mem-fraction sizes the KV pools from the backend's free memory (the CPU backend: MemAvailable), so a
// larger fraction gives a larger cache.
TEST(EngineMemory, MemFractionSizesTheKvCache) {
  auto be = make_cpu_backend();
  const int64_t free0 = be->free_memory();
  ASSERT_GT(free0, 0) << "MemAvailable missing from /proc/meminfo";
  std::vector<int64_t> budget, cap;
  for (double f : {0.001, 0.004}) {
    EngineOptions o;
    o.model_dir = src("models/tiny-gemma4");
    o.backend = "cpu";
    o.max_running = 2;
    o.mem_fraction = f;
    auto e = Engine::create(o);
    budget.push_back(e->info().kv_memory_bytes);
    cap.push_back(e->info().kv_capacity_tokens);
    // Within a factor of two of the fraction of what was free before (other processes move it a little).
    EXPECT_GT(budget.back(), int64_t(f * double(free0) / 2)) << "fraction " << f;
    EXPECT_LT(budget.back(), int64_t(f * double(free0) * 2)) << "fraction " << f;
  }
  EXPECT_GT(cap[1], 2 * cap[0]) << "4x the fraction should give well over 2x the full-attention pool";
}

}  // namespace
}  // namespace mtpserve
