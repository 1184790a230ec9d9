// Shared helpers for the unit tests: small synthetic Gemma 4 configs and models with seeded dummy weights.
#pragma once
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>

#include "model/gemma4.h"

namespace mtpserve::test {

// A small text config exercising every feature unless the caller overrides fields.
inline nlohmann::json small_text_config() {
  return {{"model_type", "gemma4_text"},
          {"vocab_size", 97},
          {"hidden_size", 32},
          {"intermediate_size", 48},
          {"num_hidden_layers", 6},
          {"layer_types",
           {"sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
            "sliding_attention", "full_attention"}},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"head_dim", 8},
          {"global_head_dim", 16},
          {"attention_k_eq_v", true},
          {"num_global_key_value_heads", 1},
          {"num_kv_shared_layers", 2},
          {"use_double_wide_mlp", true},
          {"hidden_size_per_layer_input", 4},
          {"vocab_size_per_layer_input", 97},
          {"sliding_window", 8},
          {"final_logit_softcapping", 30.0},
          {"rope_parameters",
           {{"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
            {"full_attention",
             {{"rope_type", "proportional"}, {"partial_rotary_factor", 0.25}, {"rope_theta", 1e6}}}}}};
}

// Named variants of it: "moe" (26B-A4B-style, no PLE or sharing), "plain" (no PLE, sharing, k_eq_v, softcap).
inline nlohmann::json small_text_config(const std::string& name) {
  auto c = small_text_config();
  if (name == "moe") {
    c["enable_moe_block"] = true;
    c["num_experts"] = 4;
    c["top_k_experts"] = 2;
    c["moe_intermediate_size"] = 8;
    c["hidden_size_per_layer_input"] = 0;
    c["num_kv_shared_layers"] = 0;
  } else if (name == "plain") {
    c["attention_k_eq_v"] = false;
    c["num_global_key_value_heads"] = nullptr;
    c["hidden_size_per_layer_input"] = 0;
    c["num_kv_shared_layers"] = 0;
    c["use_double_wide_mlp"] = false;
    c["final_logit_softcapping"] = nullptr;
  }
  return c;
}

inline std::unique_ptr<Gemma4Model> make_dummy_model(const nlohmann::json& cfg_json, Backend& be,
                                                     uint64_t seed = 7, DummyWeights* keep = nullptr) {
  ModelConfig mc = parse_config(cfg_json.dump(), "test config");
  DummyWeights local;
  DummyWeights& d = keep ? *keep : local;
  d.seed = seed;
  TargetWeights w = load_target_weights(nullptr, mc, be, nullptr, &d);
  return std::make_unique<Gemma4Model>(mc, std::move(w), be);
}

inline std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(g() % uint32_t(vocab));
  return t;
}

inline std::string temp_dir(const std::string& name) {
  auto p =
      std::filesystem::temp_directory_path() / ("mtpserve_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// Max over elements of |a - b| / max(1, |b|).
inline double max_rel_err(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++)
    m = std::max(m, std::abs(double(a[i]) - b[i]) / std::max(1.0, std::abs(double(b[i]))));
  return m;
}

// Max over rows of max|a - b| / max(1, max|b|) with rows of `width` elements: errors measured against the
// row's logit scale, so a near-zero logit does not turn rounding noise into a large relative error.
inline double max_row_err(const float* a, const float* b, size_t n, size_t width) {
  double worst = 0;
  for (size_t r = 0; r < n / width; r++) {
    double scale = 1, err = 0;
    for (size_t i = r * width; i < (r + 1) * width; i++) {
      scale = std::max(scale, std::abs(double(b[i])));
      err = std::max(err, std::abs(double(a[i]) - b[i]));
    }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f.good()) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// A raw little-endian float32 file (the golden logits and hidden states).
inline std::vector<float> read_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f.good()) throw std::runtime_error("cannot read " + path);
  std::vector<float> v(size_t(f.tellg()) / 4);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * 4));
  return v;
}

}  // namespace mtpserve::test
