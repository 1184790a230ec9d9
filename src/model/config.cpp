#include "model/config.h"

#include <algorithm>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace mtpserve {
using json = nlohmann::json;

namespace {

// Typed field readers that name the file and field on error.
struct Reader {
  const json& j;
  std::string where;

  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  int get_int(const char* k, int def) const {
    if (!has(k)) return def;
    MTP_CHECK(j[k].is_number_integer(), "{}: field '{}' must be an integer, got {}", where, k, j[k].dump());
    return j[k].get<int>();
  }
  double get_num(const char* k, double def) const {
    if (!has(k)) return def;
    MTP_CHECK(j[k].is_number(), "{}: field '{}' must be a number, got {}", where, k, j[k].dump());
    return j[k].get<double>();
  }
  bool get_bool(const char* k, bool def) const {
    if (!has(k)) return def;
    MTP_CHECK(j[k].is_boolean(), "{}: field '{}' must be true or false, got {}", where, k, j[k].dump());
    return j[k].get<bool>();
  }
  std::optional<double> get_opt_num(const char* k) const {
    if (!has(k)) return std::nullopt;
    return get_num(k, 0);
  }
  std::optional<int> get_opt_int(const char* k) const {
    if (!has(k)) return std::nullopt;
    return get_int(k, 0);
  }
};

std::vector<int> parse_id_list(const json& v, const std::string& where, const char* field) {
  std::vector<int> out;
  if (v.is_null()) return out;
  if (v.is_number_integer()) return {v.get<int>()};
  MTP_CHECK(v.is_array(), "{}: field '{}' must be an integer or a list of integers", where, field);
  for (auto& e : v) {
    MTP_CHECK(e.is_number_integer(), "{}: field '{}' must hold integers, got {}", where, field, e.dump());
    out.push_back(e.get<int>());
  }
  return out;
}

LayerType parse_layer_type(const json& v, const std::string& where, size_t i) {
  MTP_CHECK(v.is_string(), "{}: layer_types[{}] must be a string", where, i);
  auto s = v.get<std::string>();
  if (s == "sliding_attention") return LayerType::Sliding;
  if (s == "full_attention") return LayerType::Full;
  fail("{}: layer_types[{}] = '{}' is not supported (expected sliding_attention or full_attention)", where, i,
       s);
}

RopeParams parse_rope(const json& v, const std::string& where) {
  MTP_CHECK(v.is_object(), "{}: must be an object", where);
  Reader r{v, where};
  RopeParams p;
  if (r.has("rope_type")) p.rope_type = v["rope_type"].get<std::string>();
  MTP_CHECK(p.rope_type == "default" || p.rope_type == "proportional",
            "{}: rope_type '{}' is not supported (expected default or proportional)", where, p.rope_type);
  p.rope_theta = r.get_num("rope_theta", 10000.0);
  p.partial_rotary_factor = r.get_num("partial_rotary_factor", 1.0);
  p.factor = r.get_num("factor", 1.0);
  MTP_CHECK(p.partial_rotary_factor > 0 && p.partial_rotary_factor <= 1,
            "{}: partial_rotary_factor {} must be in (0, 1]", where, p.partial_rotary_factor);
  MTP_CHECK(p.factor > 0, "{}: factor {} must be positive", where, p.factor);
  return p;
}

// Per-layer overrides of head_dim / num_key_value_heads from `per_layer_config` (transformers >= 5.15 form).
struct LayerOverride {
  std::optional<int> head_dim, num_key_value_heads, num_attention_heads;
};

TextConfig parse_text(const json& j, const std::string& where) {
  MTP_CHECK(j.is_object(), "{}: text config must be a JSON object", where);
  Reader r{j, where};
  if (r.has("model_type")) {
    auto mt = j["model_type"].get<std::string>();
    MTP_CHECK(mt == "gemma4_text", "{}: text_config.model_type '{}' is not supported (expected gemma4_text)",
              where, mt);
  }
  TextConfig c;
  c.vocab_size = r.get_int("vocab_size", c.vocab_size);
  c.hidden_size = r.get_int("hidden_size", c.hidden_size);
  c.intermediate_size = r.get_int("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = r.get_int("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = r.get_int("num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = r.get_int("num_key_value_heads", c.num_key_value_heads);
  c.head_dim = r.get_int("head_dim", c.head_dim);
  c.global_head_dim = r.get_int("global_head_dim", c.global_head_dim);
  c.num_global_key_value_heads = r.get_opt_int("num_global_key_value_heads");
  c.attention_k_eq_v = r.get_bool("attention_k_eq_v", false);
  c.num_kv_shared_layers = r.get_int("num_kv_shared_layers", 0);
  c.use_double_wide_mlp = r.get_bool("use_double_wide_mlp", false);
  c.hidden_size_per_layer_input = r.get_int("hidden_size_per_layer_input", 256);
  c.vocab_size_per_layer_input = r.get_int("vocab_size_per_layer_input", 262144);
  c.enable_moe_block = r.get_bool("enable_moe_block", false);
  c.num_experts = r.get_int("num_experts", 0);
  c.top_k_experts = r.get_int("top_k_experts", 0);
  c.moe_intermediate_size = r.get_int("moe_intermediate_size", r.get_int("expert_intermediate_size", 0));
  c.sliding_window = r.get_int("sliding_window", c.sliding_window);
  c.rms_norm_eps = r.get_num("rms_norm_eps", 1e-6);
  c.final_logit_softcapping = r.get_opt_num("final_logit_softcapping");
  c.max_position_embeddings = r.get_int("max_position_embeddings", c.max_position_embeddings);
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", true);
  c.pad_token_id = r.get_int("pad_token_id", 0);
  c.bos_token_id = r.get_int("bos_token_id", 2);
  if (r.has("eos_token_id")) c.eos_token_ids = parse_id_list(j["eos_token_id"], where, "eos_token_id");
  MTP_CHECK(c.tie_word_embeddings, "{}: tie_word_embeddings=false is not supported (Gemma 4 ties lm_head)",
            where);

  if (r.has("use_bidirectional_attention")) {
    auto& v = j["use_bidirectional_attention"];
    MTP_CHECK(v.is_string() && (v == "vision"),
              "{}: use_bidirectional_attention={} is not supported for text (expected null or \"vision\")",
              where, v.dump());
  }

  // layer_types: explicit, or HF's default pattern (every 6th full, last forced full).
  if (r.has("layer_types")) {
    auto& lt = j["layer_types"];
    MTP_CHECK(lt.is_array(), "{}: layer_types must be a list", where);
    for (size_t i = 0; i < lt.size(); i++) c.layer_types.push_back(parse_layer_type(lt[i], where, i));
  } else {
    for (int i = 0; i < c.num_hidden_layers; i++)
      c.layer_types.push_back((i + 1) % 6 == 0 ? LayerType::Full : LayerType::Sliding);
    if (!c.layer_types.empty()) c.layer_types.back() = LayerType::Full;
  }
  MTP_CHECK(int(c.layer_types.size()) == c.num_hidden_layers,
            "{}: layer_types has {} entries but num_hidden_layers is {}", where, c.layer_types.size(),
            c.num_hidden_layers);

  // rope_parameters per layer type (HF default when absent).
  c.rope_sliding = RopeParams{"default", 10000.0, 1.0, 1.0};
  c.rope_full = RopeParams{"proportional", 1e6, 0.25, 1.0};
  if (r.has("rope_parameters")) {
    auto& rp = j["rope_parameters"];
    MTP_CHECK(rp.is_object(), "{}: rope_parameters must be an object", where);
    if (rp.contains("rope_type"))
      fail(
          "{}: rope_parameters must be given per layer type "
          "(sliding_attention / full_attention), got a single entry",
          where);
    for (auto& [k, v] : rp.items()) {
      if (k == "sliding_attention")
        c.rope_sliding = parse_rope(v, where + ": rope_parameters.sliding_attention");
      else if (k == "full_attention")
        c.rope_full = parse_rope(v, where + ": rope_parameters.full_attention");
      else
        fail("{}: rope_parameters has unknown layer type '{}'", where, k);
    }
  }

  // per_layer_config (transformers 5.15+): {"<layer index>" or "<layer type>": {head_dim,
  // num_key_value_heads}}.
  std::map<int, LayerOverride> by_index;
  std::map<LayerType, LayerOverride> by_type;
  if (r.has("per_layer_config")) {
    auto& plc = j["per_layer_config"];
    MTP_CHECK(plc.is_object(), "{}: per_layer_config must be an object", where);
    for (auto& [k, v] : plc.items()) {
      std::string w = where + ": per_layer_config[" + k + "]";
      MTP_CHECK(v.is_object(), "{}: must be an object", w);
      Reader rv{v, w};
      LayerOverride o{rv.get_opt_int("head_dim"), rv.get_opt_int("num_key_value_heads"),
                      rv.get_opt_int("num_attention_heads")};
      if (k == "sliding_attention")
        by_type[LayerType::Sliding] = o;
      else if (k == "full_attention")
        by_type[LayerType::Full] = o;
      else {
        // A layer index, possibly zero-padded: HF's save_pretrained writes "04" for layer 4.
        int idx = -1;
        if (!k.empty() && k.size() <= 6 &&
            std::all_of(k.begin(), k.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
          idx = std::stoi(k);
        MTP_CHECK(idx >= 0 && idx < c.num_hidden_layers,
                  "{}: key is neither a layer index in [0, {}) nor a layer type", w, c.num_hidden_layers);
        by_index[idx] = o;
      }
    }
  }

  derive_layers(c, where);

  // Apply per-layer overrides on top of the derived geometry, then recheck consistency per type.
  for (int i = 0; i < c.num_hidden_layers; i++) {
    LayerSpec& s = c.layers[i];
    for (const LayerOverride* o :
         {by_type.count(s.type) ? &by_type[s.type] : nullptr, by_index.count(i) ? &by_index[i] : nullptr}) {
      if (!o) continue;
      if (o->head_dim) s.head_dim = *o->head_dim;
      if (o->num_key_value_heads) s.num_kv_heads = *o->num_key_value_heads;
      if (o->num_attention_heads)
        MTP_CHECK(*o->num_attention_heads == c.num_attention_heads,
                  "{}: per_layer_config[{}].num_attention_heads={} differs from num_attention_heads={} "
                  "(per-layer query head counts are not supported)",
                  where, i, *o->num_attention_heads, c.num_attention_heads);
    }
  }
  // Keep the scalar fields in sync with what the layers say, so both config forms give one TextConfig.
  for (int i = 0; i < c.num_hidden_layers; i++) {
    const LayerSpec& s = c.layers[i];
    if (s.type == LayerType::Full) {
      c.global_head_dim = s.head_dim;
      if (c.attention_k_eq_v) c.num_global_key_value_heads = s.num_kv_heads;
    } else {
      c.head_dim = s.head_dim;
      c.num_key_value_heads = s.num_kv_heads;
    }
  }
  for (int i = 0; i < c.num_hidden_layers; i++) {
    const LayerSpec& s = c.layers[i];
    int want_d = s.type == LayerType::Full ? c.global_head_dim : c.head_dim;
    MTP_CHECK(s.head_dim == want_d, "{}: layer {} ({}) has head_dim {} but other {} layers have {}", where, i,
              layer_type_name(s.type), s.head_dim, layer_type_name(s.type), want_d);
    if (s.kv_shared) {  // a shared layer must match its owner's geometry
      const LayerSpec& o = c.layers[s.kv_source];
      MTP_CHECK(o.head_dim == s.head_dim && o.num_kv_heads == s.num_kv_heads,
                "{}: KV-shared layer {} does not match the geometry of its owner layer {}", where, i,
                s.kv_source);
    }
  }
  return c;
}

}  // namespace

int TextConfig::kv_owner(LayerType t) const {
  for (int j = first_kv_shared() - 1; j >= 0; j--)
    if (layer_types[j] == t) return j;
  return -1;
}

void derive_layers(TextConfig& c, const std::string& where) {
  MTP_CHECK(c.num_hidden_layers > 0, "{}: num_hidden_layers must be positive", where);
  MTP_CHECK(c.hidden_size > 0 && c.vocab_size > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0,
            "{}: hidden_size, vocab_size, num_attention_heads and num_key_value_heads must be positive",
            where);
  MTP_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0 && c.global_head_dim > 0 && c.global_head_dim % 2 == 0,
            "{}: head_dim ({}) and global_head_dim ({}) must be positive and even", where, c.head_dim,
            c.global_head_dim);
  MTP_CHECK(c.num_kv_shared_layers >= 0 && c.num_kv_shared_layers <= c.num_hidden_layers,
            "{}: num_kv_shared_layers={} must be in [0, num_hidden_layers={}]", where, c.num_kv_shared_layers,
            c.num_hidden_layers);
  MTP_CHECK(c.sliding_window > 0, "{}: sliding_window must be positive, got {}", where, c.sliding_window);
  MTP_CHECK(c.hidden_size_per_layer_input >= 0, "{}: hidden_size_per_layer_input must be >= 0", where);
  if (c.hidden_size_per_layer_input > 0)
    MTP_CHECK(c.vocab_size_per_layer_input > 0, "{}: vocab_size_per_layer_input must be positive with PLE",
              where);
  if (c.enable_moe_block)
    MTP_CHECK(c.num_experts > 0 && c.top_k_experts > 0 && c.top_k_experts <= c.num_experts &&
                  c.moe_intermediate_size > 0,
              "{}: enable_moe_block needs num_experts > 0, 0 < top_k_experts <= num_experts and "
              "moe_intermediate_size > 0 (got {}, {}, {})",
              where, c.num_experts, c.top_k_experts, c.moe_intermediate_size);
  if (c.final_logit_softcapping)
    MTP_CHECK(*c.final_logit_softcapping > 0, "{}: final_logit_softcapping must be positive or null", where);

  int full_kv = c.num_key_value_heads;
  if (c.attention_k_eq_v && c.num_global_key_value_heads) full_kv = *c.num_global_key_value_heads;
  int first_shared = c.first_kv_shared();
  c.layers.assign(c.num_hidden_layers, {});
  for (int i = 0; i < c.num_hidden_layers; i++) {
    LayerSpec& s = c.layers[i];
    s.type = c.layer_types[i];
    bool full = s.type == LayerType::Full;
    s.head_dim = full ? c.global_head_dim : c.head_dim;
    s.num_kv_heads = full ? full_kv : c.num_key_value_heads;
    s.has_v_proj = !(full && c.attention_k_eq_v);
    s.kv_shared = c.num_kv_shared_layers > 0 && i >= first_shared;
    s.stores_kv = !s.kv_shared;
    s.kv_source = i;
    if (s.kv_shared) {
      s.kv_source = c.kv_owner(s.type);
      MTP_CHECK(s.kv_source >= 0, "{}: KV-shared layer {} ({}) has no earlier non-shared layer of that type",
                where, i, layer_type_name(s.type));
    }
    bool wide =
        c.use_double_wide_mlp && i >= first_shared && first_shared > 0;  // G4M:1064-1066 (note the > 0)
    s.mlp_width = c.intermediate_size * (wide ? 2 : 1);
    MTP_CHECK(c.num_attention_heads % s.num_kv_heads == 0,
              "{}: num_attention_heads={} is not a multiple of the {} KV heads of layer {}", where,
              c.num_attention_heads, s.num_kv_heads, i);
  }
}

ModelConfig parse_config(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail("{}: invalid JSON: {}", where, e.what());
  }
  MTP_CHECK(j.is_object(), "{}: config must be a JSON object", where);
  MTP_CHECK(j.contains("model_type") && j["model_type"].is_string(), "{}: missing field 'model_type'", where);
  ModelConfig mc;
  mc.model_type = j["model_type"].get<std::string>();
  Reader top{j, where};
  if (mc.model_type == "gemma4") {
    MTP_CHECK(top.has("text_config"), "{}: model_type gemma4 needs a 'text_config' object", where);
    mc.text = parse_text(j["text_config"], where + ": text_config");
    mc.weight_prefix = "model.language_model.";
    if (top.has("eos_token_id"))
      mc.text.eos_token_ids = parse_id_list(j["eos_token_id"], where, "eos_token_id");
  } else if (mc.model_type == "gemma4_text") {
    mc.text = parse_text(j, where);
    mc.weight_prefix = "model.";
  } else if (mc.model_type == "gemma4_assistant") {
    mc.kind = ModelKind::Assistant;
    MTP_CHECK(top.has("text_config"), "{}: model_type gemma4_assistant needs a 'text_config' object", where);
    AssistantConfig& a = mc.assistant;
    a.backbone_hidden_size = top.get_int("backbone_hidden_size", a.backbone_hidden_size);
    a.use_ordered_embeddings = top.get_bool("use_ordered_embeddings", false);
    a.num_centroids = top.get_int("num_centroids", a.num_centroids);
    a.centroid_intermediate_top_k = top.get_int("centroid_intermediate_top_k", a.centroid_intermediate_top_k);
    json tc = j["text_config"];
    // G4AC:80-83: every assistant layer is KV-shared (Q-only).
    if (!tc.contains("num_kv_shared_layers") || tc["num_kv_shared_layers"].is_null() ||
        tc["num_kv_shared_layers"] == 0)
      tc["num_kv_shared_layers"] = tc.value("num_hidden_layers", 4);
    // The assistant owns no KV: derive_layers needs an owner for every type, so parse with sharing off and
    // mark every layer shared afterwards (its KV comes from the target, bound at load time).
    int nl = tc.value("num_hidden_layers", 4);
    int shared = tc["num_kv_shared_layers"].get<int>();
    MTP_CHECK(shared == nl, "{}: assistant num_kv_shared_layers={} must equal num_hidden_layers={}", where,
              shared, nl);
    tc["num_kv_shared_layers"] = 0;
    if (!tc.contains("hidden_size_per_layer_input")) tc["hidden_size_per_layer_input"] = 0;
    a.text = parse_text(tc, where + ": text_config");
    a.text.num_kv_shared_layers = nl;
    for (auto& s : a.text.layers) {
      s.kv_shared = true;
      s.stores_kv = false;
      s.kv_source = -1;
    }
    const TextConfig& t = a.text;
    MTP_CHECK(t.hidden_size_per_layer_input == 0,
              "{}: assistant must not use per-layer embeddings "
              "(hidden_size_per_layer_input={})",
              where, t.hidden_size_per_layer_input);
    MTP_CHECK(!t.enable_moe_block, "{}: assistant must not use a MoE block", where);
    MTP_CHECK(!t.use_double_wide_mlp, "{}: assistant must not use the double-wide MLP", where);
    MTP_CHECK(a.backbone_hidden_size > 0, "{}: backbone_hidden_size must be positive", where);
    if (a.use_ordered_embeddings)
      MTP_CHECK(a.num_centroids > 0 && t.vocab_size % a.num_centroids == 0 &&
                    a.centroid_intermediate_top_k > 0 && a.centroid_intermediate_top_k <= a.num_centroids,
                "{}: centroid head needs vocab_size ({}) divisible by num_centroids ({}) and 0 < "
                "centroid_intermediate_top_k ({}) <= num_centroids",
                where, t.vocab_size, a.num_centroids, a.centroid_intermediate_top_k);
    mc.text = a.text;
    mc.weight_prefix = "";
  } else {
    fail("{}: model_type '{}' is not supported (expected gemma4, gemma4_text or gemma4_assistant)", where,
         mc.model_type);
  }
  return mc;
}

ModelConfig load_config(const std::string& model_dir) {
  std::string path = model_dir + "/config.json";
  std::ifstream f(path);
  MTP_CHECK(f.good(), "{}: cannot open (is '{}' a model directory?)", path, model_dir);
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), path);
}

}  // namespace mtpserve
