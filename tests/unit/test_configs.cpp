// The real-size configs in configs/ (targets and their MTP assistants) parse, have the geometry of
// gemma4-architecture.md §1.3/§1.6, and every assistant binds to its target (the constructor's checks run
// on weightless models: no weights are generated).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/assistant.h"

namespace mtpserve {
namespace {

std::string cfg_dir(const std::string& name) {
  return std::string(MTP_SOURCE_DIR) + "/configs/gemma-4-" + name;
}

struct Expect {
  const char* name;
  int hidden, layers, sliding_kv, full_kv;
  bool moe, ple;
  int asst_hidden, asst_heads, asst_inter;
  bool centroid;
  int owner_sliding, owner_full;  // target layers the assistant reads
};

const Expect kModels[] = {
    {"E2B", 1536, 35, 1, 1, false, true, 256, 4, 2048, true, 13, 14},
    {"E4B", 2560, 42, 2, 2, false, true, 256, 4, 2048, true, 22, 23},
    {"31B", 5376, 60, 16, 4, false, false, 1024, 32, 8192, false, 58, 59},
    {"26B-A4B", 2816, 30, 8, 2, true, false, 1024, 16, 8192, false, 28, 29},
};

TEST(Configs, TargetsAndAssistantsParseAndBind) {
  auto be = make_cpu_backend();
  for (const Expect& e : kModels) {
    SCOPED_TRACE(e.name);
    ModelConfig t = load_config(cfg_dir(e.name));
    ModelConfig a = load_config(cfg_dir(std::string(e.name) + "-assistant"));
    ASSERT_EQ(t.kind, ModelKind::Target);
    ASSERT_EQ(a.kind, ModelKind::Assistant);
    EXPECT_EQ(a.model_type, "gemma4_assistant");
    const TextConfig& tc = t.text;
    EXPECT_EQ(tc.hidden_size, e.hidden);
    EXPECT_EQ(tc.num_hidden_layers, e.layers);
    EXPECT_EQ(tc.vocab_size, 262144);
    EXPECT_EQ(tc.enable_moe_block, e.moe);
    EXPECT_EQ(tc.hidden_size_per_layer_input > 0, e.ple);
    for (const LayerSpec& s : tc.layers) {
      const bool full = s.type == LayerType::Full;
      EXPECT_EQ(s.head_dim, full ? 512 : 256);
      EXPECT_EQ(s.num_kv_heads, full ? e.full_kv : e.sliding_kv);
    }

    const AssistantConfig& ac = a.assistant;
    EXPECT_EQ(ac.backbone_hidden_size, tc.hidden_size);
    EXPECT_EQ(ac.text.vocab_size, tc.vocab_size);
    EXPECT_EQ(ac.use_ordered_embeddings, e.centroid);
    EXPECT_EQ(ac.num_centroids, 2048);
    EXPECT_EQ(ac.centroid_intermediate_top_k, 32);
    EXPECT_EQ(ac.text.hidden_size, e.asst_hidden);
    EXPECT_EQ(ac.text.num_attention_heads, e.asst_heads);
    EXPECT_EQ(ac.text.intermediate_size, e.asst_inter);
    EXPECT_EQ(ac.text.sliding_window, tc.sliding_window);
    EXPECT_FALSE(ac.text.final_logit_softcapping.has_value());
    ASSERT_EQ(ac.text.num_hidden_layers, 4);
    for (int l = 0; l < 4; l++) {
      const LayerSpec& s = ac.text.layers[l];
      EXPECT_EQ(s.type, l == 3 ? LayerType::Full : LayerType::Sliding);
      EXPECT_TRUE(s.kv_shared);
      EXPECT_EQ(s.head_dim, l == 3 ? 512 : 256);
      EXPECT_EQ(s.num_kv_heads, l == 3 ? e.full_kv : e.sliding_kv);
      EXPECT_EQ(s.mlp_width, e.asst_inter);
    }

    // The load-time binding checks (geometry, RoPE, window, hidden and vocab sizes) on weightless models.
    Gemma4Model target(t, TargetWeights{}, *be);
    std::unique_ptr<Gemma4Assistant> asst;
    ASSERT_NO_THROW(asst = std::make_unique<Gemma4Assistant>(ac, AssistantWeights{}, target, 1));
    for (int l = 0; l < 4; l++) EXPECT_EQ(asst->owner_layer(l), l == 3 ? e.owner_full : e.owner_sliding);
  }
}

// An assistant bound to the wrong target is refused at load time (here E2B's drafter on the 31B).
TEST(Configs, MismatchedPairIsRefused) {
  auto be = make_cpu_backend();
  Gemma4Model target(load_config(cfg_dir("31B")), TargetWeights{}, *be);
  ModelConfig a = load_config(cfg_dir("E2B-assistant"));
  EXPECT_THROW(Gemma4Assistant(a.assistant, AssistantWeights{}, target, 1), Error);
}

// HF's save_pretrained writes per_layer_config keys zero-padded ("04"): they are layer indices too.
TEST(Configs, ZeroPaddedPerLayerConfigKeys) {
  std::ifstream f(cfg_dir("E2B") + "/config.json");
  ASSERT_TRUE(f.good());
  nlohmann::json j = nlohmann::json::parse(f);
  auto& tc = j.contains("text_config") ? j["text_config"] : j;
  const int L = tc["num_hidden_layers"];
  int full = -1;
  for (int i = 0; i < L && full < 0; i++)
    if (tc["layer_types"][i] == "full_attention") full = i;
  ASSERT_GE(full, 0);
  ModelConfig plain = parse_config(j.dump(), "E2B");
  tc["per_layer_config"] = nlohmann::json::object();
  const int hd = plain.text.layers[full].head_dim / 2;  // visibly applied, to every full layer
  for (int i = 0; i < L; i++)
    if (tc["layer_types"][i] == "full_attention")
      tc["per_layer_config"][fmt::format("{:02d}", i)] = {{"head_dim", hd}};
  ModelConfig padded = parse_config(j.dump(), "E2B, zero-padded keys");
  EXPECT_EQ(padded.text.layers[full].head_dim, hd);
  tc["per_layer_config"] = {{"4x", {{"head_dim", 256}}}};
  EXPECT_THROW(parse_config(j.dump(), "bad key"), Error);
}

}  // namespace
}  // namespace mtpserve
