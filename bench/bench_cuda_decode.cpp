// The target decode step on the GPU: one token per sequence, paged KV at a given context, dummy weights
// generated directly on the device (no host copy). For each model config, context and batch: median step time
// (wall clock: metadata upload, forward, synchronize) with eager launches and replayed from a CUDA graph
// (TargetGraphs, as the engine runs it), bytes moved (weights read + KV read), achieved GB/s and the roofline
// (bytes / the device-to-device copy bandwidth measured here).
//
// Weight bytes: every layer matrix, the tied head (V x H), norms; only the B embedding rows; for MoE the
// expected number of distinct experts touched under uniform routing, E * (1 - ((E - k) / E)^B) per layer. KV
// bytes: each layer reads K and V of its source layer for the visible keys: min(ctx + 1, W) on sliding
// layers, ctx + 1 on full.
//
// 31B and 26B-A4B do not fit with all layers and 8k x 64 KV on an 80 GB H100, so they run with their first 6
// and 12 layers (the layer pattern repeats every 6) and the step is extrapolated linearly: t(L) = t(12) + (L
// - 12) / 6 * (t(12) - t(6)); bytes likewise (exact, as per-layer bytes repeat). Lines marked "x" are
// extrapolated.
//
// Usage: bench_cuda_decode [configs_dir=configs] [iters=10] [models=E2B,E4B,31B,26B-A4B] [ctxs=1024,8192]
//        [batches=1,8,32,64]
#ifdef MTPSERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "engine/graphs.h"
#include "model/gemma4.h"

using namespace mtpserve;

static std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ',')) out.push_back(x);
  return out;
}

double measure_copy_bw(Backend& be) {
  const int64_t n = int64_t(1) << 29;  // 1 GiB of bf16
  Tensor a = cuda_alloc_exact(be, DType::BF16, {n}), b = cuda_alloc_exact(be, DType::BF16, {n});
  cuda_fill_random(be, a, 1, 0, 1, false);
  auto st = static_cast<cudaStream_t>(cuda_stream(be));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemcpyAsync(b.data, a.data, n * 2, cudaMemcpyDeviceToDevice, st);
  cudaEventRecord(e0, st);
  for (int i = 0; i < 10; i++) cudaMemcpyAsync(b.data, a.data, n * 2, cudaMemcpyDeviceToDevice, st);
  cudaEventRecord(e1, st);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  return 2.0 * double(n) * 2 * 10 / (ms * 1e-3);
}

struct WeightBytes {
  double fixed = 0;    // read every step regardless of batch (dense matrices, head, norms)
  double per_row = 0;  // embedding rows per token
  double expert = 0;   // bytes of one expert (gate_up + down) per MoE layer
  int moe_layers = 0;
};

// Dummy weights on the device, shapes as load_target_weights checks them.
TargetWeights device_weights(const TextConfig& c, Backend& be, WeightBytes& wb) {
  uint64_t seed = 1;
  auto make = [&](std::initializer_list<int64_t> shape, int kind,
                  bool count = true) {  // 0 linear, 1 norm, 2 scalar
    Tensor t = cuda_alloc_exact(be, DType::BF16, shape);
    const float fan = float(t.dim(-1));
    if (kind == 0)
      cuda_fill_random(be, t, seed++, 0.0f, 1.0f / std::sqrt(fan), true);
    else if (kind == 1)
      cuda_fill_random(be, t, seed++, 1.0f, 0.2f, false);
    else
      cuda_fill_random(be, t, seed++, 0.75f, 0.25f, false);
    if (count) wb.fixed += double(t.nbytes());
    return t;
  };
  const int64_t H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers,
                P = c.hidden_size_per_layer_input;
  const int64_t nh = c.num_attention_heads;
  TargetWeights w;
  w.embed_tokens = make({V, H}, 0);  // read in full as the tied head
  wb.per_row += double(H) * 2;
  w.norm = make({H}, 1);
  if (P > 0) {
    w.embed_tokens_per_layer = make({c.vocab_size_per_layer_input, L * P}, 0, false);
    wb.per_row += double(L * P) * 2;
    w.per_layer_model_projection = make({L * P, H}, 0);
    w.per_layer_projection_norm = make({P}, 1);
  }
  for (int64_t i = 0; i < L; i++) {
    const LayerSpec& s = c.layers[i];
    const int64_t D = s.head_dim, kvh = s.num_kv_heads, I = s.mlp_width;
    LayerWeights lw;
    lw.input_layernorm = make({H}, 1);
    lw.post_attention_layernorm = make({H}, 1);
    lw.pre_feedforward_layernorm = make({H}, 1);
    lw.post_feedforward_layernorm = make({H}, 1);
    lw.layer_scalar = make({1}, 2);
    lw.q_proj = make({nh * D, H}, 0);
    lw.q_norm = make({D}, 1);
    lw.o_proj = make({H, nh * D}, 0);
    if (s.stores_kv) {
      lw.k_proj = make({kvh * D, H}, 0);
      lw.k_norm = make({D}, 1);
      if (s.has_v_proj) lw.v_proj = make({kvh * D, H}, 0);
    }
    lw.gate_proj = make({I, H}, 0);
    lw.up_proj = make({I, H}, 0);
    lw.down_proj = make({H, I}, 0);
    if (P > 0) {
      lw.per_layer_input_gate = make({P, H}, 0);
      lw.per_layer_projection = make({H, P}, 0);
      lw.post_per_layer_input_norm = make({H}, 1);
    }
    if (c.enable_moe_block) {
      const int64_t E = c.num_experts, Ie = c.moe_intermediate_size;
      lw.router_proj = make({E, H}, 0);
      lw.router_scale = make({H}, 1);
      lw.router_per_expert_scale = make({E}, 1);
      lw.experts_gate_up = make({E, 2 * Ie, H}, 0, false);
      lw.experts_down = make({E, H, Ie}, 0, false);
      wb.expert = double(3 * Ie * H) * 2;
      wb.moe_layers++;
      lw.pre_feedforward_layernorm_2 = make({H}, 1);
      lw.post_feedforward_layernorm_1 = make({H}, 1);
      lw.post_feedforward_layernorm_2 = make({H}, 1);
    }
    w.layers.push_back(std::move(lw));
  }
  return w;
}

struct Point {
  double ms = 0, graph_ms = 0, wbytes = 0, kvbytes = 0;
};

template <typename F>
double median_ms(int iters, Backend& be, F&& step) {
  for (int i = 0; i < 2; i++) step(), be.synchronize();
  std::vector<double> t;
  for (int i = 0; i < iters; i++) {
    auto t0 = std::chrono::steady_clock::now();
    step();
    be.synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One model (possibly truncated to `layers`), all contexts and batches.
std::vector<Point> run_model(Backend& be, nlohmann::json cfg, int layers, const std::vector<int>& ctxs,
                             const std::vector<int>& batches, int iters) {
  auto& tc = cfg.contains("text_config") ? cfg["text_config"] : cfg;
  if (layers > 0) {
    tc["num_hidden_layers"] = layers;
    auto lt = tc["layer_types"];
    tc["layer_types"] = std::vector<std::string>(lt.begin(), lt.begin() + layers);
    tc["num_kv_shared_layers"] = 0;
  }
  ModelConfig mc = parse_config(cfg.dump(), "bench config");
  const TextConfig& c = mc.text;
  WeightBytes wb;
  TargetWeights w = device_weights(c, be, wb);
  Gemma4Model model(mc, std::move(w), be);
  std::vector<Point> pts;
  for (int ctx : ctxs)
    for (int B : batches) {
      const int W = c.sliding_window, ps = kPageSize;
      const int full_per = (ctx + 1 + ps - 1) / ps;
      const int slide_per = (W + 2 * ps) / ps + 1;
      KvStorage kv = model.allocate_kv(B * full_per + 1, B * slide_per + 1);  // + the pad pages
      const PadPages pad{B * full_per, B * slide_per};
      for (size_t i = 0; i < kv.k.size(); i++)
        if (kv.k[i].defined()) {
          cuda_fill_random(be, kv.k[i], 1000 + i, 0.0f, 1.0f, true);
          cuda_fill_random(be, kv.v[i], 2000 + i, 0.0f, 1.0f, true);
        }
      std::vector<std::vector<int32_t>> fullp(B), slidep(B);
      for (int s = 0; s < B; s++) {
        for (int p = 0; p < full_per; p++) fullp[s].push_back(s * full_per + p);
        int next = 0;
        for (int p = 0; p < full_per; p++) {
          bool visible = (p + 1) * ps > ctx - W + 1;  // holds a slot >= ctx - W + 1
          slidep[s].push_back(visible && next < slide_per ? s * slide_per + next++ : -1);
        }
      }
      ForwardBatch fb;
      std::mt19937 g(ctx + B);
      for (int s = 0; s < B; s++) {
        fb.tokens.push_back(int32_t(g() % uint32_t(c.vocab_size)));
        fb.positions.push_back(ctx);
        fb.seqs.push_back({1, ctx, &fullp[s], &slidep[s]});
        fb.output_rows.push_back(s);
      }
      Point p;
      p.ms = median_ms(iters, be, [&] { model.forward(fb, kv); });
      {
#ifdef MTP_TIMELINE
        timeline_clear_names();
#endif
        TargetGraphs graphs(model, kv, pad, ctx + 1, B);
        p.graph_ms = median_ms(iters, be, [&] { graphs.forward(fb); });
#ifdef MTP_TIMELINE
        if (const char* f = std::getenv("MTP_TIMELINE_OUT")) {
          timeline_begin();
          graphs.forward(fb);
          be.synchronize();
          if (FILE* o = std::fopen(f, "w")) {
            timeline_dump(o);
            std::fclose(o);
          }
        }
#endif
      }
      const double E = c.num_experts, k = c.top_k_experts;
      const double touched = c.enable_moe_block ? E * (1 - std::pow((E - k) / E, B)) : 0;
      p.wbytes = wb.fixed + B * wb.per_row + wb.moe_layers * touched * wb.expert;
      for (int i = 0; i < c.num_hidden_layers; i++) {
        const LayerSpec& s = c.layers[i];
        const double keys = s.type == LayerType::Sliding ? std::min(ctx + 1, W) : ctx + 1;
        p.kvbytes += double(B) * keys * s.num_kv_heads * s.head_dim * 2 * 2;
      }
      pts.push_back(p);
    }
  return pts;
}

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "configs";
  const int iters = argc > 2 ? std::atoi(argv[2]) : 10;
  const auto models = split(argc > 3 ? argv[3] : "E2B,E4B,31B,26B-A4B");
  std::vector<int> ctxs, batches;
  for (auto& s : split(argc > 4 ? argv[4] : "1024,8192")) ctxs.push_back(std::stoi(s));
  for (auto& s : split(argc > 5 ? argv[5] : "1,8,32,64")) batches.push_back(std::stoi(s));
  try {
    auto be = make_cuda_backend(0);
    std::printf("device: %s\n", be->name().c_str());
    const double bw = measure_copy_bw(*be);
    std::printf("measured device-to-device copy bandwidth: %.0f GB/s (read + write)\n", bw / 1e9);
    std::printf(
        "decode step = one token per sequence, median of %d steps (upload + forward + synchronize), eager "
        "launches and CUDA graph replay; GB/s and %%roof of the graph step\n\n",
        iters);
    std::printf("%-14s %6s %5s | %9s %9s | %8s %8s %8s | %8s | %9s %6s\n", "model", "ctx", "batch",
                "eager ms", "graph ms", "wts GB", "KV GB", "total GB", "GB/s", "roof ms", "%roof");
    for (const auto& name : models) {
      std::ifstream f(dir + "/gemma-4-" + name + "/config.json");
      if (!f) {
        std::printf("%s: no config in %s\n", name.c_str(), dir.c_str());
        continue;
      }
      nlohmann::json cfg = nlohmann::json::parse(f);
      const auto& tc = cfg.contains("text_config") ? cfg["text_config"] : cfg;
      const int L = tc["num_hidden_layers"];
      const bool scaled = name == "31B" || name == "26B-A4B";
      std::vector<Point> pts;
      if (scaled) {
        auto p6 = run_model(*be, cfg, 6, ctxs, batches, iters);
        auto p12 = run_model(*be, cfg, 12, ctxs, batches, iters);
        const double f = double(L - 12) / 6.0;
        for (size_t i = 0; i < p6.size(); i++) {
          Point p;
          p.ms = p12[i].ms + f * (p12[i].ms - p6[i].ms);
          p.graph_ms = p12[i].graph_ms + f * (p12[i].graph_ms - p6[i].graph_ms);
          p.wbytes = p12[i].wbytes + f * (p12[i].wbytes - p6[i].wbytes);
          p.kvbytes = p12[i].kvbytes + f * (p12[i].kvbytes - p6[i].kvbytes);
          pts.push_back(p);
        }
      } else {
        pts = run_model(*be, cfg, 0, ctxs, batches, iters);
      }
      size_t i = 0;
      for (int ctx : ctxs)
        for (int B : batches) {
          const Point& p = pts[i++];
          const double bytes = p.wbytes + p.kvbytes, roof = bytes / bw * 1e3;
          std::printf("%-14s %6d %5d | %8.3f%s %8.3f%s | %8.2f %8.2f %8.2f | %8.0f | %9.3f %5.1f%%\n",
                      name.c_str(), ctx, B, p.ms, scaled ? "x" : " ", p.graph_ms, scaled ? "x" : " ",
                      p.wbytes / 1e9, p.kvbytes / 1e9, bytes / 1e9, bytes / (p.graph_ms * 1e-3) / 1e9, roof,
                      100 * roof / p.graph_ms);
          std::fflush(stdout);
        }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_decode: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
#include <cstdio>
int main() {
  std::printf("bench_cuda_decode: built without CUDA\n");
  return 0;
}
#endif
