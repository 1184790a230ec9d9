// The engine's speculative decoding on the bundled tiny pair reproduces the clean reference MTP loop
// (scripts/tiny/mtp_reference.py, HF transformers fp32 on the GPU machine): the same greedy text and the
// same number of accepted drafts in every verify round, for the dense and the centroid assistant at K = 3
// with query position offset +1 (models/*/acceptance_golden.json).
#include <gtest/gtest.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/engine.h"

namespace mtpserve {
namespace {

std::string src(const std::string& rel) { return std::string(MTP_SOURCE_DIR) + "/" + rel; }

struct RunTrace {
  std::vector<int32_t> tokens;
  std::vector<int> rounds;  // tokens committed per verify step
};

class GoldenAcceptance : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenAcceptance, EngineReproducesReferenceRounds) {
  const std::string asst = GetParam();
  std::ifstream f(src("models/" + asst + "/acceptance_golden.json"));
  std::stringstream ss;
  ss << f.rdbuf();
  auto g = nlohmann::json::parse(ss.str());
  const int K = 3, max_new = g["max_new_tokens"];
  const std::string run_name =
      std::string(asst.find("centroid") != std::string::npos ? "centroid" : "dense") +
      "/fp32/greedy/K3/off+1/chat";
  nlohmann::json ref;
  for (auto& r : g["runs"])
    if (r["run"] == run_name) ref = r;
  ASSERT_FALSE(ref.is_null()) << run_name;
  auto per_prompt_n = ref["per_prompt_n"];
  const auto& prompts = g["prompt_sets"]["chat"];
  const auto& plain = g["plain_greedy_fp32"]["chat"];

  EngineOptions o;
  o.model_dir = src("models/tiny-gemma4");
  o.assistant_dir = src("models/" + asst);
  o.backend = "cpu";
  o.num_draft = K;
  o.query_pos_offset = 1;
  o.max_running = 16;
  o.kv_memory_bytes = 96 << 20;
  auto e = Engine::create(o);

  const size_t N = std::min<size_t>(prompts.size(), 40);
  std::vector<RunTrace> runs(N);
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  for (size_t i = 0; i < N; i++) {
    GenerationRequest r;
    r.id = "g" + std::to_string(i);
    r.prompt = prompts[i]["ids"].get<std::vector<int32_t>>();
    r.sampling.temperature = 0;
    r.sampling.max_tokens = max_new;
    ASSERT_TRUE(e->submit(r, [&, i](const RequestOutput& out) {
      std::lock_guard<std::mutex> lk(mu);
      if (!runs[i].tokens.empty()) runs[i].rounds.push_back(int(out.tokens.size()));
      runs[i].tokens.insert(runs[i].tokens.end(), out.tokens.begin(), out.tokens.end());
      if (out.finish != FinishReason::None) done++, cv.notify_all();
    }));
  }
  std::unique_lock<std::mutex> lk(mu);
  ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(300), [&] { return done == N; }));

  int compared = 0, emitted = 0, rounds = 0;
  for (size_t i = 0; i < N; i++) {
    auto want = plain[i].get<std::vector<int32_t>>();
    EXPECT_EQ(runs[i].tokens, want) << "prompt " << prompts[i]["id"];
    auto ref_n = per_prompt_n[i].get<std::vector<int>>();
    // Rounds where both sides drafted all K tokens (the engine drafts fewer near max_tokens).
    int before = 1;
    for (size_t r = 0; r < runs[i].rounds.size() && r < ref_n.size(); r++) {
      if (before + K + 1 > max_new) break;
      bool last = r + 1 == runs[i].rounds.size();
      if (!last) {
        EXPECT_EQ(runs[i].rounds[r] - 1, ref_n[r]) << "prompt " << prompts[i]["id"] << " round " << r;
        compared++;
      }
      before += runs[i].rounds[r];
    }
    emitted += int(runs[i].tokens.size()) - 1;
    rounds += int(runs[i].rounds.size());
  }
  EXPECT_GT(compared, 200);
  std::printf("%s K=%d: acceptance length %.3f over %d rounds (reference, all 100 prompts: %.3f)\n",
              asst.c_str(), K, double(emitted) / rounds, rounds, ref["stats"]["AL"].get<double>());
}

INSTANTIATE_TEST_SUITE_P(Assistants, GoldenAcceptance,
                         ::testing::Values("tiny-gemma4-assistant", "tiny-gemma4-assistant-centroid"));

}  // namespace
}  // namespace mtpserve
