// Helpers of `mtpserve bench` (tools/cmd_bench_step.cpp): bytes a step moves, timing with synchronize
// boundaries, the copy bandwidth behind the roofline, random KV contents, shared by nothing else yet.
//
// Byte accounting (as bench/bench_cuda_decode.cpp): weights read by one forward = every layer matrix and
// norm, the tied head (V x H, read in full), the embedding rows of the batch's tokens (and their PLE rows),
// and for MoE the expected number of distinct experts that T tokens touch under uniform routing,
// E * (1 - ((E - k) / E)^T) per layer. KV read = per layer (KV-shared layers read their owner's cache), per
// sequence, the visible keys: min(ctx + q, W + q - 1) on sliding layers, ctx + q on full ones, for q query
// rows after ctx committed tokens.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "model/assistant.h"
#ifdef MTPSERVE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace mtpserve::cli::bench {

inline double bytes_of(const Tensor& t) { return t.defined() ? double(t.nbytes()) : 0.0; }

// Every tensor of a layer but the MoE experts.
inline double layer_dense_bytes(const LayerWeights& l) {
  double b = 0;
  for (const Tensor* t : {&l.input_layernorm,
                          &l.post_attention_layernorm,
                          &l.pre_feedforward_layernorm,
                          &l.post_feedforward_layernorm,
                          &l.layer_scalar,
                          &l.q_proj,
                          &l.q_norm,
                          &l.k_proj,
                          &l.k_norm,
                          &l.v_proj,
                          &l.o_proj,
                          &l.gate_proj,
                          &l.up_proj,
                          &l.down_proj,
                          &l.per_layer_input_gate,
                          &l.per_layer_projection,
                          &l.post_per_layer_input_norm,
                          &l.router_proj,
                          &l.router_scale,
                          &l.router_per_expert_scale,
                          &l.pre_feedforward_layernorm_2,
                          &l.post_feedforward_layernorm_1,
                          &l.post_feedforward_layernorm_2})
    b += bytes_of(*t);
  return b;
}

struct TargetBytes {
  double fixed = 0;      // read once per forward, whatever the batch
  double per_token = 0;  // embedding (+ PLE) row of one token
  double expert = 0;     // one expert's gate_up + down, per MoE layer
  int moe_layers = 0, experts = 0, top_k = 0;
  double all = 0;  // every weight byte (the memory the model holds)

  explicit TargetBytes(const Gemma4Model& m) {
    const TargetWeights& w = m.weights();
    const TextConfig& c = m.config();
    fixed = bytes_of(w.embed_tokens) + bytes_of(w.norm) + bytes_of(w.per_layer_model_projection) +
            bytes_of(w.per_layer_projection_norm);
    per_token = bytes_of(w.embed_tokens) / double(c.vocab_size);
    if (w.embed_tokens_per_layer.defined())
      per_token += bytes_of(w.embed_tokens_per_layer) / double(w.embed_tokens_per_layer.dim(0));
    all = fixed + bytes_of(w.embed_tokens_per_layer);
    for (const LayerWeights& l : w.layers) {
      fixed += layer_dense_bytes(l);
      all += layer_dense_bytes(l) + bytes_of(l.experts_gate_up) + bytes_of(l.experts_down);
      if (l.experts_gate_up.defined()) {
        moe_layers++;
        expert = (bytes_of(l.experts_gate_up) + bytes_of(l.experts_down)) / double(c.num_experts);
      }
    }
    experts = c.num_experts;
    top_k = c.top_k_experts;
  }
  // Weights read by one forward over `tokens` rows.
  double weights(int64_t tokens) const {
    double b = fixed + double(tokens) * per_token;
    if (moe_layers > 0) {
      const double E = experts, k = top_k;
      b += moe_layers * E * (1 - std::pow((E - k) / E, double(tokens))) * expert;
    }
    return b;
  }
};

// KV bytes read by `layers` (each reading its own geometry) for B sequences of q rows after ctx tokens.
inline double kv_read_bytes(const TextConfig& c, int B, int ctx, int q, double elem_bytes,
                            int window_extra = 0) {
  double b = 0;
  for (const LayerSpec& s : c.layers) {
    const double keys = s.type == LayerType::Sliding
                            ? std::min<double>(ctx + q, c.sliding_window + window_extra + q - 1)
                            : ctx + q;
    b += double(B) * keys * s.num_kv_heads * s.head_dim * 2 * elem_bytes;
  }
  return b;
}

// One assistant step over B rows, from its config (weights in the target's weight dtype): its matrices and
// norms (the dense head reads V x Ha; the centroid head the centroids and the candidates' rows), the target
// embedding rows, and the target KV its layers read (ctx committed keys, a window's worth on sliding layers).
inline double draft_step_bytes(const Gemma4Assistant& a, const Gemma4Model& t, int B, int ctx,
                               double elem_bytes) {
  const AssistantConfig& ac = a.config();
  const TextConfig& c = ac.text;
  const double Ha = c.hidden_size, Hb = ac.backbone_hidden_size, V = c.vocab_size, nh = c.num_attention_heads;
  double n = Ha + 3 * Ha * Hb;  // norm, pre_projection [Ha, 2Hb], post_projection [Hb, Ha]
  for (const LayerSpec& s : c.layers)
    n += 4 * Ha + 1 + 2 * nh * s.head_dim * Ha + s.head_dim + 3 * double(s.mlp_width) * Ha;
  if (ac.use_ordered_embeddings) {
    const double cand = double(ac.centroid_intermediate_top_k) * (c.vocab_size / ac.num_centroids);
    n += ac.num_centroids * Ha + std::min(double(B) * cand, V) * Ha;
  } else {
    n += V * Ha;
  }
  const double wbytes = double(dtype_size(t.weights().embed_tokens.dtype));
  return n * wbytes + double(B) * bytes_of(t.weights().embed_tokens) / double(t.config().vocab_size) +
         kv_read_bytes(c, B, ctx, 0, elem_bytes, 1);
}

using Clock = std::chrono::steady_clock;
inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Median wall time of `fn` (device work finished: synchronize on both sides) after `warmup` runs.
template <typename F>
double time_median(Backend& be, int warmup, int iters, F&& fn) {
  for (int i = 0; i < warmup; i++) fn();
  be.synchronize();
  std::vector<double> t;
  for (int i = 0; i < iters; i++) {
    auto t0 = Clock::now();
    fn();
    be.synchronize();
    t.push_back(ms_since(t0));
  }
  return median(t);
}

// Device-to-device copy bandwidth through the backend (read + write bytes per second): the roofline's
// denominator. 1 GiB buffers on a GPU, 256 MiB on the host (a memcpy).
inline double measure_copy_bw(Backend& be) {
  const int64_t n = be.device() == Device::CPU ? int64_t(256) << 20 : int64_t(1) << 30;
  Tensor a = be.alloc(DType::U8, {n}), b = be.alloc(DType::U8, {n});
  be.fill_zero(a);
  be.fill_zero(b);
  be.copy(b, a);
  be.synchronize();
  const int reps = be.device() == Device::CPU ? 4 : 10;
  auto t0 = Clock::now();
  for (int i = 0; i < reps; i++) be.copy(b, a);
  be.synchronize();
  return 2.0 * double(n) * reps / (ms_since(t0) * 1e-3);
}

// Random N(0, 1) contents for a KV cache tensor (so attention and MoE routing see realistic values).
inline void fill_random(Backend& be, Tensor t, uint64_t seed) {
#ifdef MTPSERVE_HAVE_CUDA
  if (be.device() == Device::CUDA) {
    cuda_fill_random(be, t, seed, 0.0f, 1.0f, true);
    return;
  }
#endif
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n = t.numel(), chunk = int64_t(1) << 20;
  std::vector<float> f;
  std::vector<uint16_t> h;
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t m = std::min(chunk, n - i);
    Tensor part(static_cast<char*>(t.data) + i * int64_t(dtype_size(t.dtype)), t.dtype, {m}, t.device);
    f.resize(m);
    for (auto& x : f) x = nd(g);
    if (t.dtype == DType::F32) {
      be.copy_from_host(part, f.data());
    } else {
      MTP_ASSERT(t.dtype == DType::BF16);
      h.resize(m);
      for (int64_t j = 0; j < m; j++) h[j] = f32_to_bf16(f[j]);
      be.copy_from_host(part, h.data());
    }
  }
}

}  // namespace mtpserve::cli::bench
