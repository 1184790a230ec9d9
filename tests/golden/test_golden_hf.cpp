// Parity with HF transformers 5.17 (fp32, eager attention) on tiny random checkpoints of every Gemma 4 text
// variant, in both the text-only and the multimodal-wrapper layout. Reference data: scripts/make_golden.py,
// run on the GPU machine, committed under tests/data/golden/.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../unit/test_util.h"
#include "engine/generate.h"

namespace mtpserve {
namespace {

std::string golden_dir() { return std::string(MTP_SOURCE_DIR) + "/tests/data/golden/"; }

// DESIGN.md §9: fp32 CPU vs HF fp32: |Δlogit| <= 1e-3 * max(1, |logit|).
constexpr double kLogitTol = 1e-3;

struct Case {
  std::string variant, form;
};
std::ostream& operator<<(std::ostream& o, const Case& c) { return o << c.variant << "/" << c.form; }

class GoldenHF : public ::testing::TestWithParam<Case> {};

TEST_P(GoldenHF, LogitsHiddenAndGreedyMatchTransformers) {
  const Case& c = GetParam();
  std::string dir = golden_dir() + c.variant;
  auto g = test::read_json(dir + "/golden.json");
  auto be = make_cpu_backend();
  auto model = Gemma4Model::load(dir + "/" + c.form, *be);
  const int V = g["vocab_size"], H = g["hidden_size"];
  ASSERT_EQ(model->config().vocab_size, V);
  for (size_t p = 0; p < g["prompts"].size(); p++) {
    const auto& pr = g["prompts"][p];
    std::vector<int32_t> ids = pr["ids"].get<std::vector<int32_t>>();
    const int T = int(ids.size());
    KvCache kv(*model, 16, 16);
    SequenceState seq;
    // Whole-prompt prefill returning every position's logits and the post-norm hidden of each row.
    ForwardBatch b;
    b.tokens = ids;
    for (int i = 0; i < T; i++) b.positions.push_back(i), b.output_rows.push_back(i);
    ASSERT_TRUE(kv.reserve(seq.pages, T));
    b.seqs = {{T, 0, &seq.pages.full, &seq.pages.sliding}};
    ForwardOutput o = model->forward(b, kv.storage());
    std::vector<float> logits(size_t(T) * V), hidden(size_t(T) * H);
    be->copy_to_host(logits.data(), o.logits);
    be->copy_to_host(hidden.data(), o.hidden);
    auto ref = test::read_f32(dir + "/" + pr["fp32"]["logits"].get<std::string>());
    auto ref_h = test::read_f32(dir + "/" + pr["fp32"]["hidden"].get<std::string>());
    ASSERT_EQ(ref.size(), logits.size());
    ASSERT_EQ(ref_h.size(), hidden.size());
    double worst = 0, worst_h = 0;
    for (size_t i = 0; i < ref.size(); i++)
      worst = std::max(worst, std::abs(double(logits[i]) - ref[i]) / std::max(1.0, std::abs(double(ref[i]))));
    for (size_t i = 0; i < ref_h.size(); i++)
      worst_h = std::max(worst_h,
                         std::abs(double(hidden[i]) - ref_h[i]) / std::max(1.0, std::abs(double(ref_h[i]))));
    EXPECT_LT(worst, kLogitTol) << c << " prompt " << p << " (length " << T << ")";
    EXPECT_LT(worst_h, kLogitTol) << c << " prompt " << p << " hidden";

    if (!pr["fp32"].contains("greedy")) continue;
    // Greedy continuation: equal to HF's until the first step where HF's own top-2 margin is within the
    // tolerance (a near-tie that either side may break differently).
    auto ref_tok = pr["fp32"]["greedy"].get<std::vector<int32_t>>();
    auto ref_margin = pr["fp32"]["greedy_margin"].get<std::vector<float>>();
    KvCache kv2(*model, 16, 16);
    SequenceState s2;
    auto r = greedy_generate(*model, kv2, s2, ids, int(ref_tok.size()), {});
    for (size_t i = 0; i < ref_tok.size(); i++) {
      if (ref_margin[i] < 2 * kLogitTol * 30) break;  // logits are softcapped to |z| <= 30
      ASSERT_LT(i, r.tokens.size());
      ASSERT_EQ(r.tokens[i], ref_tok[i]) << c << " prompt " << p << " greedy step " << i;
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (const char* var : {"e_style", "k_eq_v_style", "moe_style", "irregular"})
    for (const char* form : {"text", "mm"}) v.push_back({var, form});
  return v;
}
INSTANTIATE_TEST_SUITE_P(Variants, GoldenHF, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.variant + "_" + info.param.form; });

TEST(GoldenHF, FlatAndPerLayerConfigFormsGiveTheSameLayers) {
  for (const char* var : {"e_style", "k_eq_v_style", "moe_style", "irregular"}) {
    std::string dir = golden_dir() + var;
    std::ifstream f1(dir + "/config_flat.json");
    std::stringstream s1;
    s1 << f1.rdbuf();
    ModelConfig flat = parse_config(s1.str(), "config_flat.json");
    ModelConfig text = load_config(dir + "/text"), mm = load_config(dir + "/mm");
    ASSERT_EQ(flat.text.layers.size(), text.text.layers.size()) << var;
    for (size_t i = 0; i < flat.text.layers.size(); i++) {
      for (const ModelConfig* m : {&text, &mm}) {
        const LayerSpec &a = flat.text.layers[i], &b = m->text.layers[i];
        EXPECT_EQ(a.head_dim, b.head_dim) << var << " layer " << i;
        EXPECT_EQ(a.num_kv_heads, b.num_kv_heads) << var << " layer " << i;
        EXPECT_EQ(a.kv_source, b.kv_source) << var << " layer " << i;
        EXPECT_EQ(a.has_v_proj, b.has_v_proj) << var << " layer " << i;
        EXPECT_EQ(a.mlp_width, b.mlp_width) << var << " layer " << i;
      }
    }
    // The layer structure HF reports (golden.json "layers", "kv_source_layers") is what we derived.
    auto g = test::read_json(dir + "/golden.json");
    const auto& hl = g["layers"];
    ASSERT_EQ(hl.size(), text.text.layers.size()) << var;
    for (size_t i = 0; i < hl.size(); i++) {
      const LayerSpec& s = text.text.layers[i];
      EXPECT_EQ(hl[i]["type"].get<std::string>(), layer_type_name(s.type)) << var << " layer " << i;
      EXPECT_EQ(hl[i]["head_dim"].get<int>(), s.head_dim) << var << " layer " << i;
      EXPECT_EQ(hl[i]["kv_heads"].get<int>(), s.num_kv_heads) << var << " layer " << i;
      EXPECT_EQ(hl[i]["shared"].get<bool>(), s.kv_shared) << var << " layer " << i;
      EXPECT_EQ(hl[i]["mlp_width"].get<int>(), s.mlp_width) << var << " layer " << i;
      EXPECT_EQ(hl[i]["has_v_proj"].get<bool>(), s.has_v_proj) << var << " layer " << i;
    }
    for (auto& [type, owner] : g["kv_source_layers"].items())
      EXPECT_EQ(text.text.kv_owner(type == "full_attention" ? LayerType::Full : LayerType::Sliding),
                owner.get<int>())
          << var << " " << type;
  }
}

TEST(GoldenHF, RopeInverseFrequenciesMatchTransformers) {
  for (const char* var : {"e_style", "irregular"}) {
    std::string dir = golden_dir() + var;
    auto g = test::read_json(dir + "/golden.json");
    ModelConfig mc = load_config(dir + "/text");
    for (auto [name, type] :
         {std::pair{"sliding_attention", LayerType::Sliding}, {"full_attention", LayerType::Full}}) {
      auto ref = g["rope_inv_freq"][name].get<std::vector<double>>();
      int D = type == LayerType::Full ? mc.text.global_head_dim : mc.text.head_dim;
      auto ours = rope_inv_freq(mc.text.rope(type), D);
      ASSERT_EQ(ours.size(), ref.size()) << var << " " << name;
      for (size_t j = 0; j < ref.size(); j++)
        EXPECT_NEAR(ours[j], ref[j], 1e-7 * std::max(1.0, ref[j])) << var << name << j;
    }
  }
}

}  // namespace
}  // namespace mtpserve
