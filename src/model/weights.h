// Checkpoint tensors bound to the model's structure: every expected tensor checked by name, dtype and shape
// (from the LayerSpecs), then placed in the backend's weight storage. Names follow the HF checkpoint.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace mtpserve {

struct LayerWeights {
  Tensor input_layernorm, post_attention_layernorm, pre_feedforward_layernorm,
      post_feedforward_layernorm;  // [H]
  Tensor layer_scalar;             // [1]
  // As loaded; the models then fuse them (fuse_projections): q_proj = [q | k | v], gate_proj = [gate | up].
  Tensor q_proj;              // [nh*D, H]
  Tensor q_norm;              // [D]
  Tensor k_proj;              // [kvh*D, H]   (owner layers only)
  Tensor k_norm;              // [D]          (owner layers only)
  Tensor v_proj;              // [kvh*D, H]   (owner layers with has_v_proj)
  Tensor o_proj;              // [H, nh*D]
  Tensor gate_proj, up_proj;  // [I, H]
  Tensor down_proj;           // [H, I]
  // PLE (hidden_size_per_layer_input P > 0)
  Tensor per_layer_input_gate;       // [P, H]
  Tensor per_layer_projection;       // [H, P]
  Tensor post_per_layer_input_norm;  // [H]
  // MoE (enable_moe_block)
  Tensor router_proj;              // [E, H]
  Tensor router_scale;             // [H]
  Tensor router_per_expert_scale;  // [E]
  Tensor experts_gate_up;          // [E, 2*I_e, H]
  Tensor experts_down;             // [E, H, I_e]
  Tensor pre_feedforward_layernorm_2, post_feedforward_layernorm_1, post_feedforward_layernorm_2;  // [H]
};

struct TargetWeights {
  Tensor embed_tokens;                // [V, H]  (also the tied lm_head)
  Tensor embed_tokens_per_layer;      // [V_ple, L*P]
  Tensor per_layer_model_projection;  // [L*P, H]
  Tensor per_layer_projection_norm;   // [P]
  Tensor norm;                        // [H]
  std::vector<LayerWeights> layers;
};

// Seeded random weights of realistic scale (--load-format dummy, tests): linear weights ~ N(0, 1/fan_in),
// norm weights ~ 1 +- 0.2, layer_scalar in [0.5, 1], embeddings ~ N(0, 1/H). Stored as `dtype`.
// Host generation is multi-threaded for large tensors (the values do not depend on the thread count).
struct DummyWeights {
  uint64_t seed = 1234;
  DType dtype = DType::BF16;
  // Filled by the binder: every generated tensor (CPU, owning), in creation order, for writing to a file.
  std::vector<std::pair<std::string, Tensor>> generated;
  bool record = true;  // false: do not keep host tensors in `generated` (big loads onto a device)
  // Optional: generate on the backend's device instead (no host copy; values differ from the host
  // stream). device_alloc returns an uninitialised tensor of `numel` elements; device_fill fills it with
  // normal(mean, std), or uniform [mean - std, mean + std] when `normal` is false.
  std::function<Tensor(DType dtype, int64_t numel)> device_alloc;
  std::function<void(Tensor t, uint64_t seed, float mean, float std, bool normal)> device_fill;
  // Optional: called after each generated tensor with its full name; `bytes` counts all generated so far.
  std::function<void(const std::string& name)> progress;
  int64_t bytes = 0;
};

// Checks the checkpoint against the config and uploads every tensor. Throws Error naming the file and
// tensor on a missing tensor, a wrong shape or a non-float dtype; extra tensors that are known to be unused
// (k/v of KV-shared layers, vision/audio towers, a stored tied lm_head) are skipped, other extras reported.
// With `dummy` set, `ckpt` is ignored and seeded random weights are generated instead.
TargetWeights load_target_weights(const Checkpoint* ckpt, const ModelConfig& cfg, Backend& be,
                                  std::vector<std::string>* unexpected = nullptr,
                                  DummyWeights* dummy = nullptr);

// Helper shared with the assistant loader: fetch `name`, check its shape, upload.
class WeightBinder {
 public:
  WeightBinder(const Checkpoint* ckpt, std::string prefix, Backend& be, DummyWeights* dummy = nullptr)
      : ckpt_(ckpt), prefix_(prefix), be_(be), dummy_(dummy) {
    MTP_ASSERT(ckpt_ || dummy_);
  }
  Tensor get(const std::string& name, std::initializer_list<int64_t> shape, bool is_float = true);
  // Dummy mode: an int64 random permutation of [0, n) (the centroid head's token_ordering).
  Tensor get_permutation(const std::string& name, int64_t n);
  bool has(const std::string& name) const { return !dummy_ && ckpt_->has(prefix_ + name); }
  const std::vector<std::string>& used() const { return used_; }
  std::string where() const { return dummy_ ? std::string("dummy weights") : ckpt_->dir(); }

 private:
  // A generated weight, ready for use (uploaded, or made on the device).
  Tensor make_dummy(const std::string& name, std::initializer_list<int64_t> shape);
  const Checkpoint* ckpt_;
  std::string prefix_;
  Backend& be_;
  DummyWeights* dummy_;
  std::vector<std::string> used_;
};

}  // namespace mtpserve
