// Gemma 4 configuration as HF transformers 5.17 writes it (config.json), and the per-layer structure derived
// from it (gemma4-architecture.md §1.4). Field names follow the HF config.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mtpserve {

enum class LayerType : uint8_t { Sliding, Full };
inline const char* layer_type_name(LayerType t) {
  return t == LayerType::Sliding ? "sliding_attention" : "full_attention";
}

struct RopeParams {
  std::string rope_type = "default";  // "default" or "proportional"
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;  // proportional only
  double factor = 1.0;                 // proportional only: inv_freq /= factor
  bool operator==(const RopeParams&) const = default;
};

// One decoder layer's geometry, precomputed once (gemma4-architecture.md §1.4).
struct LayerSpec {
  LayerType type = LayerType::Sliding;
  int head_dim = 0;        // D(i)
  int num_kv_heads = 0;    // kv_heads(i)
  bool has_v_proj = true;  // false on attention_k_eq_v full layers: V = v_norm(k_proj(x))
  bool kv_shared = false;  // reads the cache of kv_source, computes only Q
  int kv_source = 0;       // layer whose KV cache this layer reads (itself unless shared)
  bool stores_kv = true;   // owns a KV cache (== !kv_shared)
  int mlp_width = 0;       // intermediate size (doubled on shared layers with use_double_wide_mlp)
};

struct TextConfig {
  int vocab_size = 262144;
  int hidden_size = 2304;
  int intermediate_size = 9216;
  int num_hidden_layers = 30;
  int num_attention_heads = 8;
  int num_key_value_heads = 4;
  int head_dim = 256;
  int global_head_dim = 512;
  std::optional<int> num_global_key_value_heads;
  bool attention_k_eq_v = false;
  int num_kv_shared_layers = 0;
  bool use_double_wide_mlp = false;
  int hidden_size_per_layer_input = 0;  // P; 0 disables PLE
  int vocab_size_per_layer_input = 262144;
  bool enable_moe_block = false;
  int num_experts = 0;
  int top_k_experts = 0;
  int moe_intermediate_size = 0;
  int sliding_window = 512;
  double rms_norm_eps = 1e-6;
  std::optional<double> final_logit_softcapping;
  int max_position_embeddings = 131072;
  bool tie_word_embeddings = true;
  std::vector<LayerType> layer_types;
  RopeParams rope_sliding, rope_full;
  int pad_token_id = 0, bos_token_id = 2;
  std::vector<int> eos_token_ids;

  std::vector<LayerSpec> layers;  // derived

  const RopeParams& rope(LayerType t) const { return t == LayerType::Sliding ? rope_sliding : rope_full; }
  int first_kv_shared() const { return num_hidden_layers - num_kv_shared_layers; }
  // The last non-shared layer of type t (the owner the shared layers and the assistant read), or -1.
  int kv_owner(LayerType t) const;
};

// Gemma4AssistantConfig (model_type "gemma4_assistant").
struct AssistantConfig {
  int backbone_hidden_size = 1536;
  bool use_ordered_embeddings = false;
  int num_centroids = 2048;
  int centroid_intermediate_top_k = 32;
  TextConfig text;
};

enum class ModelKind { Target, Assistant };

// Where a checkpoint's text weights live, from the wrapper form of its config.
struct ModelConfig {
  ModelKind kind = ModelKind::Target;
  std::string model_type;     // "gemma4", "gemma4_text" or "gemma4_assistant"
  std::string weight_prefix;  // "model.language_model.", "model." or "" (assistant)
  TextConfig text;            // for the assistant: its own text_config
  AssistantConfig assistant;  // valid when kind == Assistant
};

// Parse config.json text. `where` names the file in error messages.
ModelConfig parse_config(const std::string& json_text, const std::string& where);
ModelConfig load_config(const std::string& model_dir);
// Derive LayerSpecs and validate; called by parse_config.
void derive_layers(TextConfig& c, const std::string& where);

}  // namespace mtpserve
