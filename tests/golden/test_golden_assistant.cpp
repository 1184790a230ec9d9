// Parity of one MTP assistant drafting step with HF transformers 5.17 (fp32): the Q-only layers reading the
// target's KV owner layers, the recurrent projection and both heads (dense tied, centroid), for a KV-shared
// E-style target and a K=V 31B-style target, with HF's convention (query position L = committed length,
// full keys [0, L), sliding keys the last W). Reference data: scripts/make_golden.py.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../unit/test_util.h"
#include "engine/generate.h"
#include "model/assistant.h"

namespace mtpserve {
namespace {

std::string gdir() { return std::string(MTP_SOURCE_DIR) + "/tests/data/golden/"; }

double rel_err(float a, float b) { return std::abs(double(a) - b) / std::max(1.0, std::abs(double(b))); }
constexpr double kTol = 1e-3;  // DESIGN.md §9, fp32 vs HF fp32

class GoldenAssistant : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenAssistant, StepsMatchTransformers) {
  std::string dir = gdir() + GetParam();
  auto g = test::read_json(dir + "/golden.json");
  auto be = make_cpu_backend();
  auto target = Gemma4Model::load(dir + "/" + g["target"].get<std::string>(), *be);
  auto asst = Gemma4Assistant::load(dir + "/" + g["assistant"].get<std::string>(), *target, /*offset=*/1);
  const int V = g["vocab_size"], Hb = g["backbone_hidden_size"];
  const bool centroid = g["kind"] == "centroid";
  ASSERT_EQ(asst->centroid_head(), centroid);
  for (auto& [type, owner] : g["target_kv_source_layers"].items())
    for (int l = 0; l < asst->config().text.num_hidden_layers; l++)
      if (layer_type_name(asst->config().text.layers[l].type) == type) {
        EXPECT_EQ(asst->owner_layer(l), owner.get<int>());
      }

  for (size_t p = 0; p < g["prompts"].size(); p++) {
    const auto& pr = g["prompts"][p];
    auto ids = pr["ids"].get<std::vector<int32_t>>();
    const int L = int(ids.size());
    ASSERT_EQ(pr["query_position"].get<int>(), L);
    KvCache kv(*target, 16, 16);
    SequenceState seq;
    auto last = prefill(*target, kv, seq, ids, L, false);
    int bonus = int(std::max_element(last.begin(), last.end()) - last.begin());
    ASSERT_EQ(bonus, pr["bonus"].get<int>()) << "prompt " << p;
    // Seed: the target's post-norm hidden at L-1, from a one-row forward over the last prompt token's slot.
    ForwardBatch fb;
    KvCache kv2(*target, 16, 16);
    SequenceState s2;
    prefill(*target, kv2, s2, std::vector<int32_t>(ids.begin(), ids.end() - 1), L, false);
    ASSERT_TRUE(kv2.reserve(s2.pages, L));
    fb.tokens = {ids.back()};
    fb.positions = {L - 1};
    fb.seqs = {{1, L - 1, &s2.pages.full, &s2.pages.sliding}};
    fb.output_rows = {0};
    Tensor h = target->forward(fb, kv2.storage()).hidden;
    auto ref_seed = test::read_f32(dir + "/" + pr["seed_hidden"].get<std::string>());
    ASSERT_EQ(ref_seed.size(), size_t(Hb));
    for (int i = 0; i < Hb; i++) ASSERT_LT(rel_err(h.ptr<float>()[i], ref_seed[i]), kTol) << "seed " << i;

    int tok = bonus;
    for (size_t st = 0; st < pr["steps"].size(); st++) {
      const auto& step = pr["steps"][st];
      ASSERT_EQ(tok, step["token_in"].get<int>());
      DraftRows rows;
      rows.tokens = {tok};
      rows.seqs = {{1, L, &seq.pages.full, &seq.pages.sliding}};
      DraftStepOutput o = asst->step(rows, h, kv.storage());
      auto ref_l = test::read_f32(dir + "/" + step["logits"].get<std::string>());
      auto ref_h = test::read_f32(dir + "/" + step["hidden_out"].get<std::string>());
      ASSERT_EQ(ref_l.size(), size_t(V));
      double worst = 0;
      int argmax = -1;
      if (centroid) {
        // Exactly the HF candidate set, with HF's logits; everything else is -inf here (min-1 in HF).
        auto want = step["candidates"].get<std::vector<int>>();
        int64_t N = o.cand_ids.numel();
        ASSERT_EQ(size_t(N), want.size());
        std::vector<int> got(o.cand_ids.ptr<int32_t>(), o.cand_ids.ptr<int32_t>() + N);
        std::vector<int> a = got, b = want;
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        EXPECT_EQ(a, b) << "prompt " << p << " step " << st << ": candidate set";
        float best = -INFINITY;
        for (int64_t j = 0; j < N; j++) {
          worst = std::max(worst, rel_err(o.cand_scores.ptr<float>()[j], ref_l[got[j]]));
          if (o.cand_scores.ptr<float>()[j] > best) best = o.cand_scores.ptr<float>()[j], argmax = got[j];
        }
      } else {
        for (int v = 0; v < V; v++) worst = std::max(worst, rel_err(o.logits.ptr<float>()[v], ref_l[v]));
        argmax =
            int(std::max_element(o.logits.ptr<float>(), o.logits.ptr<float>() + V) - o.logits.ptr<float>());
      }
      EXPECT_LT(worst, kTol) << GetParam() << " prompt " << p << " step " << st << " logits";
      double worst_h = 0;
      for (int i = 0; i < Hb; i++) worst_h = std::max(worst_h, rel_err(o.hidden.ptr<float>()[i], ref_h[i]));
      EXPECT_LT(worst_h, kTol) << GetParam() << " prompt " << p << " step " << st << " hidden";
      if (step["top2_margin"].get<double>() > 2 * kTol * 10) {
        EXPECT_EQ(argmax, step["argmax"].get<int>());
      }
      tok = step["argmax"].get<int>();  // follow HF's chain so later steps compare like for like
      h = o.hidden;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Pairs, GoldenAssistant,
                         ::testing::Values("assistant_e_style_dense", "assistant_e_style_centroid",
                                           "assistant_k_eq_v_style_dense",
                                           "assistant_k_eq_v_style_centroid"));

TEST(GoldenAssistant, MismatchedPairIsALoadError) {
  auto be = make_cpu_backend();
  // The E-style assistant reads 2 KV heads of dim 32; the irregular target's owners have other geometry.
  auto target = Gemma4Model::load(gdir() + "irregular/text", *be);
  try {
    Gemma4Assistant::load(gdir() + "assistant_e_style_dense/model", *target);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("backbone_hidden_size"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace mtpserve
