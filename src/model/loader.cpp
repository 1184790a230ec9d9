#include "model/loader.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#ifdef MTPSERVE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace mtpserve {

namespace {

using Clock = std::chrono::steady_clock;

std::string read_text(const std::string& path, const std::string& dir) {
  std::ifstream f(path);
  MTP_CHECK(f.good(), "{}: cannot open (is '{}' a model directory?)", path, dir);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Dummy-weight settings for a backend: on the device when it can fill there, with progress reporting.
struct DummySetup {
  DummyWeights d;
  Clock::time_point t0 = Clock::now(), last = t0;
  std::string what;
  bool verbose = false, on_device = false;

  DummySetup(Backend& be, const LoadOptions& o, std::string what_) : what(std::move(what_)) {
    d.seed = o.seed;
    d.record = false;
    verbose = o.verbose;
#ifdef MTPSERVE_HAVE_CUDA
    if (be.device() == Device::CUDA) {
      on_device = true;
      Backend* b = &be;
      d.device_alloc = [b](DType dt, int64_t n) { return cuda_alloc_exact(*b, dt, {n}); };
      d.device_fill = [b](Tensor t, uint64_t seed, float mean, float sd, bool normal) {
        cuda_fill_random(*b, t, seed, mean, sd, normal);
      };
    }
#endif
    if (verbose)
      d.progress = [this](const std::string& name) {
        auto now = Clock::now();
        if (now - last < std::chrono::seconds(2)) return;
        last = now;
        fmt::print(stderr, "  {}: dummy weights {:.2f} GB so far ({})\n", what, double(d.bytes) / 1e9, name);
        std::fflush(stderr);
      };
  }
  void done(Backend& be) {
    be.synchronize();
    if (!verbose) return;
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    fmt::print(stderr, "{}: dummy weights (seed {}) {:.2f} GB generated {} in {:.1f} s\n", what, d.seed,
               double(d.bytes) / 1e9, on_device ? "on the device" : "on the host", s);
    std::fflush(stderr);
  }
};

int layer_index_of(const std::string& name, const std::string& prefix) {
  std::string p = prefix + "layers.";
  if (name.rfind(p, 0) != 0) return -1;
  size_t a = p.size(), b = name.find('.', a);
  if (b == std::string::npos || b == a || b - a > 6) return -1;
  std::string idx = name.substr(a, b - a);
  if (!std::all_of(idx.begin(), idx.end(), ::isdigit)) return -1;
  return std::stoi(idx);
}

}  // namespace

void check_load_format(const std::string& format, const char* flag) {
  MTP_CHECK(format == "auto" || format == "dummy",
            "{}: '{}' is not a load format (expected auto: the checkpoint's weights, or dummy: seeded random "
            "weights from config.json alone)",
            flag, format);
}

ModelConfig load_target_config(const std::string& dir, int layers) {
  if (layers <= 0) return load_config(dir);
  std::string path = dir + "/config.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(path, dir));
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: invalid JSON: {}", path, e.what());
  }
  MTP_CHECK(j.is_object(), "{}: config must be a JSON object", path);
  nlohmann::json& tc = j.contains("text_config") && j["text_config"].is_object() ? j["text_config"] : j;
  // Parse once as is: the full model's layer pattern and sharing, and its errors first.
  const TextConfig full = parse_config(j.dump(), path).text;
  const int L = full.num_hidden_layers;
  MTP_CHECK(layers <= L, "--layers {}: {} has only {} decoder layers", layers, path, L);
  std::vector<std::string> types;
  for (int i = 0; i < layers; i++) types.push_back(layer_type_name(full.layer_types[i]));
  tc["num_hidden_layers"] = layers;
  tc["layer_types"] = types;
  tc["num_kv_shared_layers"] = std::max(0, layers - full.first_kv_shared());
  if (tc.contains("per_layer_config") && tc["per_layer_config"].is_object()) {
    nlohmann::json kept = nlohmann::json::object();
    for (auto& [k, v] : tc["per_layer_config"].items()) {
      bool index = !k.empty() && std::all_of(k.begin(), k.end(), ::isdigit);
      if (!index || std::stoll(k) < layers) kept[k] = v;
    }
    tc["per_layer_config"] = kept;
  }
  return parse_config(j.dump(), path + fmt::format(" (first {} of {} layers)", layers, L));
}

std::unique_ptr<Gemma4Model> load_target(const std::string& dir, Backend& be, const LoadOptions& o) {
  check_load_format(o.format);
  if (o.format == "auto" && o.layers <= 0) return Gemma4Model::load(dir, be);
  ModelConfig cfg = load_target_config(dir, o.layers);
  MTP_CHECK(cfg.kind == ModelKind::Target,
            "{}: is an assistant checkpoint (model_type {}), not a target model", dir, cfg.model_type);
  if (o.format == "dummy") {
    DummySetup ds(be, o, dir);
    TargetWeights w = load_target_weights(nullptr, cfg, be, nullptr, &ds.d);
    ds.done(be);
    return std::make_unique<Gemma4Model>(std::move(cfg), std::move(w), be);
  }
  // The checkpoint's weights for the kept layers; the tensors of the cut layers are expected extras. The
  // per-layer-embedding tables interleave every layer's columns: cutting them would need a copy.
  MTP_CHECK(
      cfg.text.hidden_size_per_layer_input == 0,
      "{}: --layers with the checkpoint's weights is not supported for models with per-layer embeddings "
      "(E2B/E4B style); use --load-format dummy",
      dir);
  Checkpoint ckpt = Checkpoint::open(dir);
  std::vector<std::string> unexpected;
  TargetWeights w = load_target_weights(&ckpt, cfg, be, &unexpected);
  std::erase_if(unexpected,
                [&](const std::string& n) { return layer_index_of(n, cfg.weight_prefix) >= o.layers; });
  if (!unexpected.empty())
    fmt::print(stderr, "warning: {}: {} unused tensors in the checkpoint, e.g. '{}'\n", dir,
               unexpected.size(), unexpected.front());
  return std::make_unique<Gemma4Model>(std::move(cfg), std::move(w), be);
}

std::unique_ptr<Gemma4Assistant> load_assistant(const std::string& dir, const Gemma4Model& target,
                                                int query_pos_offset, const LoadOptions& o) {
  check_load_format(o.format);
  if (o.format == "auto") return Gemma4Assistant::load(dir, target, query_pos_offset);
  DummySetup ds(target.backend(), o, dir);
  ds.d.seed = o.seed + 1;  // not the target's stream
  auto a = Gemma4Assistant::load(dir, target, query_pos_offset, &ds.d);
  ds.done(target.backend());
  return a;
}

}  // namespace mtpserve
