#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>
#include <thread>
#include <type_traits>

namespace mtpserve {

namespace {
// splitmix64: a small, seedable generator whose stream does not depend on the platform.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
  double normal() {
    double u1 = std::max(uniform(), 1e-300), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};
uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The value of element i of a tensor whose stream starts at `s0`: every element draws `per` numbers (2 for a
// normal, 1 for a uniform) from one splitmix64 stream, so element i starts at state s0 + per * i * gamma and
// any range of elements can be generated independently, with the values of a serial pass.
template <typename T>
void fill_dummy_range(T* out, int64_t begin, int64_t end, uint64_t s0, int kind, double sd) {
  const int per = kind == 0 ? 2 : 1;
  for (int64_t i = begin; i < end; i++) {
    Rng rng{s0 + uint64_t(per) * uint64_t(i) * 0x9e3779b97f4a7c15ull};
    double v = kind == 2   ? 0.5 + 0.5 * rng.uniform()
               : kind == 1 ? 1.0 + 0.2 * (2 * rng.uniform() - 1)
                           : sd * rng.normal();
    if constexpr (std::is_same_v<T, uint16_t>)
      out[i] = f32_to_bf16(float(v));
    else
      out[i] = float(v);
  }
}
}  // namespace

Tensor WeightBinder::make_dummy(const std::string& name, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dummy_->dtype, shape);
  // Scale by the tensor's role, so activations stay O(1) through the stack as in a trained model: linear
  // weights and embeddings ~ N(0, 1/fan_in) (kind 0), norm gains 1 +- 0.2 (kind 1), layer_scalar [0.5, 1]
  // (kind 2).
  bool norm = ends_with(name, "norm.weight") || ends_with(name, "router.scale") ||
              ends_with(name, "per_expert_scale");
  bool scalar = ends_with(name, "layer_scalar");
  const int kind = scalar ? 2 : norm ? 1 : 0;
  const double sd = 1.0 / std::sqrt(double(t.dim(-1)));
  const uint64_t s0 = dummy_->seed ^ hash_name(name);
  dummy_->bytes += int64_t(t.nbytes());
  if (dummy_->device_alloc && dummy_->device_fill) {
    Tensor d = dummy_->device_alloc(t.dtype, t.numel());
    d.set_shape(shape);
    if (kind == 0)
      dummy_->device_fill(d, s0, 0.0f, float(sd), true);
    else if (kind == 1)
      dummy_->device_fill(d, s0, 1.0f, 0.2f, false);
    else
      dummy_->device_fill(d, s0, 0.75f, 0.25f, false);
    if (dummy_->progress) dummy_->progress(prefix_ + name);
    return d;
  }
  auto buf = std::shared_ptr<void>(std::malloc(std::max<size_t>(t.nbytes(), 1)), std::free);
  MTP_CHECK(buf, "dummy weights: cannot allocate {} bytes of host memory for '{}'", t.nbytes(), name);
  t.data = buf.get();
  t.holder = buf;
  const int64_t n = t.numel();
  auto run = [&](int64_t b, int64_t e) {
    if (t.dtype == DType::BF16)
      fill_dummy_range(t.ptr<uint16_t>(), b, e, s0, kind, sd);
    else
      fill_dummy_range(t.ptr<float>(), b, e, s0, kind, sd);
  };
  const int64_t nthreads =
      std::min<int64_t>({int64_t(std::max(1u, std::thread::hardware_concurrency())), 64, n >> 18});
  if (nthreads <= 1) {
    run(0, n);
  } else {
    std::vector<std::thread> pool;
    for (int64_t k = 0; k < nthreads; k++) pool.emplace_back(run, n * k / nthreads, n * (k + 1) / nthreads);
    for (auto& th : pool) th.join();
  }
  if (dummy_->record) dummy_->generated.emplace_back(prefix_ + name, t);
  Tensor up = be_.upload_weight(t);
  if (dummy_->progress) dummy_->progress(prefix_ + name);
  return up;
}

Tensor WeightBinder::get_permutation(const std::string& name, int64_t n) {
  if (!dummy_) return get(name, {n}, /*is_float=*/false);
  Tensor t(nullptr, DType::I64, {n});
  auto buf = std::shared_ptr<void>(std::malloc(size_t(n) * 8), std::free);
  t.data = buf.get();
  t.holder = buf;
  Rng rng{dummy_->seed ^ hash_name(name)};
  for (int64_t i = 0; i < n; i++) t.ptr<int64_t>()[i] = i;
  for (int64_t i = n - 1; i > 0; i--)
    std::swap(t.ptr<int64_t>()[i], t.ptr<int64_t>()[rng.next() % uint64_t(i + 1)]);
  if (dummy_->record) dummy_->generated.emplace_back(prefix_ + name, t);
  used_.push_back(prefix_ + name);
  return t;
}

Tensor WeightBinder::get(const std::string& name, std::initializer_list<int64_t> shape, bool is_float) {
  std::string full = prefix_ + name;
  if (dummy_) {
    used_.push_back(full);
    return make_dummy(name, shape);
  }
  const Checkpoint& ckpt_ = *this->ckpt_;
  MTP_CHECK(ckpt_.has(full), "{}: missing tensor '{}' (expected shape {})", ckpt_.dir(), full,
            Tensor(nullptr, DType::F32, shape).shape_str());
  const TensorInfo& info = ckpt_.info(full);
  std::vector<int64_t> want(shape);
  MTP_CHECK(info.shape == want, "{}: tensor '{}' has shape {} but the config implies {}", ckpt_.file_of(full),
            full, ckpt_.get(full).shape_str(), Tensor(nullptr, DType::F32, shape).shape_str());
  if (is_float)
    MTP_CHECK(info.dtype == DType::F32 || info.dtype == DType::BF16 || info.dtype == DType::F16,
              "{}: tensor '{}' has dtype {}, expected a float type (F32, BF16 or F16)", ckpt_.file_of(full),
              full, dtype_name(info.dtype));
  used_.push_back(full);
  Tensor t = ckpt_.get(full);
  return is_float ? be_.upload_weight(t) : t;
}

TargetWeights load_target_weights(const Checkpoint* ckpt, const ModelConfig& mc, Backend& be,
                                  std::vector<std::string>* unexpected, DummyWeights* dummy) {
  const TextConfig& c = mc.text;
  WeightBinder wb(ckpt, mc.weight_prefix, be, dummy);
  MTP_CHECK(mc.kind == ModelKind::Target, "{}: expected a target model, got model_type '{}'", wb.where(),
            mc.model_type);
  const int64_t H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers,
                P = c.hidden_size_per_layer_input;
  const int64_t nh = c.num_attention_heads;
  TargetWeights w;
  w.embed_tokens = wb.get("embed_tokens.weight", {V, H});
  w.norm = wb.get("norm.weight", {H});
  if (P > 0) {
    w.embed_tokens_per_layer = wb.get("embed_tokens_per_layer.weight", {c.vocab_size_per_layer_input, L * P});
    w.per_layer_model_projection = wb.get("per_layer_model_projection.weight", {L * P, H});
    w.per_layer_projection_norm = wb.get("per_layer_projection_norm.weight", {P});
  }
  for (int64_t i = 0; i < L; i++) {
    const LayerSpec& s = c.layers[i];
    std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights lw;
    const int64_t D = s.head_dim, kvh = s.num_kv_heads, I = s.mlp_width;
    lw.input_layernorm = wb.get(p + "input_layernorm.weight", {H});
    lw.post_attention_layernorm = wb.get(p + "post_attention_layernorm.weight", {H});
    lw.pre_feedforward_layernorm = wb.get(p + "pre_feedforward_layernorm.weight", {H});
    lw.post_feedforward_layernorm = wb.get(p + "post_feedforward_layernorm.weight", {H});
    lw.layer_scalar = wb.get(p + "layer_scalar", {1});
    lw.q_proj = wb.get(p + "self_attn.q_proj.weight", {nh * D, H});
    lw.q_norm = wb.get(p + "self_attn.q_norm.weight", {D});
    lw.o_proj = wb.get(p + "self_attn.o_proj.weight", {H, nh * D});
    if (s.stores_kv) {
      lw.k_proj = wb.get(p + "self_attn.k_proj.weight", {kvh * D, H});
      lw.k_norm = wb.get(p + "self_attn.k_norm.weight", {D});
      if (s.has_v_proj) lw.v_proj = wb.get(p + "self_attn.v_proj.weight", {kvh * D, H});
    }
    lw.gate_proj = wb.get(p + "mlp.gate_proj.weight", {I, H});
    lw.up_proj = wb.get(p + "mlp.up_proj.weight", {I, H});
    lw.down_proj = wb.get(p + "mlp.down_proj.weight", {H, I});
    if (P > 0) {
      lw.per_layer_input_gate = wb.get(p + "per_layer_input_gate.weight", {P, H});
      lw.per_layer_projection = wb.get(p + "per_layer_projection.weight", {H, P});
      lw.post_per_layer_input_norm = wb.get(p + "post_per_layer_input_norm.weight", {H});
    }
    if (c.enable_moe_block) {
      const int64_t E = c.num_experts, Ie = c.moe_intermediate_size;
      // transformers 5.x names (router.*, experts.*); older exports used moe.* for the expert tensors.
      std::string mp = wb.has(p + "experts.gate_up_proj") ? p + "experts." : p + "moe.";
      lw.router_proj = wb.get(p + "router.proj.weight", {E, H});
      lw.router_scale = wb.get(p + "router.scale", {H});
      lw.router_per_expert_scale = wb.has(p + "router.per_expert_scale")
                                       ? wb.get(p + "router.per_expert_scale", {E})
                                       : wb.get(p + "moe.per_expert_scale", {E});
      lw.experts_gate_up = wb.get(mp + "gate_up_proj", {E, 2 * Ie, H});
      lw.experts_down = wb.get(mp + "down_proj", {E, H, Ie});
      lw.pre_feedforward_layernorm_2 = wb.get(p + "pre_feedforward_layernorm_2.weight", {H});
      lw.post_feedforward_layernorm_1 = wb.get(p + "post_feedforward_layernorm_1.weight", {H});
      lw.post_feedforward_layernorm_2 = wb.get(p + "post_feedforward_layernorm_2.weight", {H});
    }
    w.layers.push_back(std::move(lw));
  }

  // Everything else in the checkpoint: skip what is known to be unused for text serving, report the rest.
  if (!ckpt) return w;
  std::set<std::string> used(wb.used().begin(), wb.used().end());
  for (const auto& name : ckpt->names()) {
    if (used.count(name)) continue;
    bool known = name == "lm_head.weight" || name.rfind("model.vision_tower.", 0) == 0 ||
                 name.rfind("model.embed_vision.", 0) == 0 || name.rfind("model.audio_tower.", 0) == 0 ||
                 name.rfind("model.embed_audio.", 0) == 0;
    if (!known && name.rfind(mc.weight_prefix + "layers.", 0) == 0) {
      // k/v projections and k_norm that Google's checkpoints still carry on KV-shared layers.
      size_t a = mc.weight_prefix.size() + 7, b = name.find('.', a);
      std::string idx = b == std::string::npos ? "" : name.substr(a, b - a);
      bool numeric = !idx.empty() && idx.size() < 6 && std::all_of(idx.begin(), idx.end(), ::isdigit);
      int li = numeric ? std::stoi(idx) : -1;
      std::string rest = numeric ? name.substr(b + 1) : "";
      known = numeric && li < L && c.layers[li].kv_shared &&
              (rest == "self_attn.k_proj.weight" || rest == "self_attn.v_proj.weight" ||
               rest == "self_attn.k_norm.weight");
    }
    if (!known && unexpected) unexpected->push_back(name);
  }
  return w;
}

}  // namespace mtpserve
