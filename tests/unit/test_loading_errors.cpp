// Bad checkpoints and configs get a clear error naming the file, tensor or field and what was expected —
// never a crash or a partial load.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace mtpserve {
namespace {

// Expect `f` to throw an Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning " << *parts.begin();
  } catch (const Error& e) {
    std::string m = e.what();
    for (const auto& p : parts)
      EXPECT_NE(m.find(p), std::string::npos) << "message: " << m << "\nmissing: " << p;
  }
}

// A model directory with a valid config.json and dummy weights; `edit` may change the tensor list first.
std::string make_dir(const std::string& name,
                     const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit = {}) {
  std::string dir = test::temp_dir(name);
  auto cfg = test::small_text_config();
  test::write_file(dir + "/config.json", cfg.dump());
  auto be = make_cpu_backend();
  DummyWeights d;
  test::make_dummy_model(cfg, *be, 3, &d);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [n, t] : d.generated) tensors.emplace_back(n, t);  // names carry the "model." prefix
  if (edit) edit(tensors);
  write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

TEST(LoadingErrors, ValidDirectoryLoads) {
  auto be = make_cpu_backend();
  auto m = Gemma4Model::load(make_dir("valid"), *be);
  EXPECT_EQ(m->config().num_hidden_layers, 6);
}

TEST(LoadingErrors, MissingTensor) {
  auto dir = make_dir("missing", [](auto& t) {
    std::erase_if(t, [](auto& p) { return p.first == "model.layers.2.mlp.up_proj.weight"; });
  });
  auto be = make_cpu_backend();
  expect_error([&] { Gemma4Model::load(dir, *be); },
               {"missing tensor", "model.layers.2.mlp.up_proj.weight", "[48, 32]"});
}

TEST(LoadingErrors, WrongShape) {
  auto be = make_cpu_backend();
  auto dir = make_dir("shape", [&](auto& t) {
    for (auto& [n, x] : t)
      if (n == "model.layers.1.self_attn.q_proj.weight") x = x.view({x.dim(1), x.dim(0)});
  });
  expect_error([&] { Gemma4Model::load(dir, *be); },
               {"model.layers.1.self_attn.q_proj.weight", "has shape [32, 64]", "implies [64, 32]"});
}

TEST(LoadingErrors, NonFloatWeight) {
  std::vector<int32_t> ints(32, 1);
  auto dir = make_dir("dtype", [&](auto& t) {
    for (auto& [n, x] : t)
      if (n == "model.norm.weight") x = Tensor(ints.data(), DType::I32, {32});
  });
  auto be = make_cpu_backend();
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"model.norm.weight", "dtype I32", "float"});
}

TEST(LoadingErrors, TruncatedAndCorruptFiles) {
  auto be = make_cpu_backend();
  auto dir = make_dir("trunc");
  std::string f = dir + "/model.safetensors";
  auto size = std::filesystem::file_size(f);
  std::filesystem::resize_file(f, size - 100);
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"model.safetensors", "outside", "truncated"});
  std::filesystem::resize_file(f, 5);
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"model.safetensors", "truncated"});
  test::write_file(f, std::string("\xff\xff\xff\xff\xff\xff\x00\x00", 8) + "{}");
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"corrupt safetensors header", "header length"});
  std::string bad = "{\"a\": [1, 2";
  uint64_t n = bad.size();
  test::write_file(f, std::string(reinterpret_cast<const char*>(&n), 8) + bad);
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"invalid JSON"});
  std::filesystem::remove(f);
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"no model.safetensors"});
}

TEST(LoadingErrors, ShardIndexNamingAMissingTensor) {
  auto be = make_cpu_backend();
  auto dir = make_dir("shard");
  std::filesystem::rename(dir + "/model.safetensors", dir + "/model-00001-of-00001.safetensors");
  test::write_file(dir + "/model.safetensors.index.json",
                   R"({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors",
                                      "model.ghost.weight": "model-00001-of-00001.safetensors"}})");
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"model.ghost.weight", "does not contain it"});
}

TEST(LoadingErrors, ConfigFields) {
  auto parse = [](nlohmann::json j) { return parse_config(j.dump(), "config.json"); };
  auto c = test::small_text_config();
  expect_error([&] { parse_config("{not json", "config.json"); }, {"config.json", "invalid JSON"});
  auto a = c;
  a["model_type"] = "llama";
  expect_error([&] { parse(a); }, {"model_type 'llama' is not supported"});
  a = c;
  a.erase("model_type");
  expect_error([&] { parse(a); }, {"missing field 'model_type'"});
  a = c;
  a["layer_types"][2] = "chunked_attention";
  expect_error([&] { parse(a); }, {"layer_types[2]", "chunked_attention"});
  a = c;
  a["layer_types"].erase(0);
  expect_error([&] { parse(a); }, {"layer_types has 5 entries", "num_hidden_layers is 6"});
  a = c;
  a["rope_parameters"]["full_attention"]["rope_type"] = "yarn";
  expect_error([&] { parse(a); }, {"rope_type 'yarn'"});
  a = c;
  a["hidden_size"] = "64";
  expect_error([&] { parse(a); }, {"'hidden_size' must be an integer", "\"64\""});
  a = c;
  a["num_kv_shared_layers"] = 9;
  expect_error([&] { parse(a); }, {"num_kv_shared_layers=9"});
  a = c;
  a["enable_moe_block"] = true;
  expect_error([&] { parse(a); }, {"enable_moe_block needs num_experts"});
  a = c;
  a["num_key_value_heads"] = 3;
  expect_error([&] { parse(a); }, {"num_attention_heads=4 is not a multiple of the 3 KV heads"});
  nlohmann::json w = {{"model_type", "gemma4"}};
  expect_error([&] { parse(w); }, {"needs a 'text_config'"});
  nlohmann::json asst = {{"model_type", "gemma4_assistant"}, {"text_config", c}};
  asst["text_config"].erase("num_kv_shared_layers");
  asst["text_config"]["hidden_size_per_layer_input"] = 4;
  expect_error([&] { parse(asst); }, {"assistant must not use per-layer embeddings"});
}

TEST(LoadingErrors, AssistantIsNotATarget) {
  auto be = make_cpu_backend();
  std::string dir = std::string(MTP_SOURCE_DIR) + "/models/tiny-gemma4-assistant";
  expect_error([&] { Gemma4Model::load(dir, *be); }, {"assistant checkpoint"});
}

}  // namespace
}  // namespace mtpserve
