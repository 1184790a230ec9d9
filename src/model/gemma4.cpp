// The Gemma 4 target forward (gemma4-architecture.md §2). Shapes: T = tokens in the batch, H = hidden_size,
// nh = query heads, D = the layer's head dim, kvh = its KV heads, I = its MLP width, L = layers, P = PLE
// width.
#include "model/gemma4.h"

#include <cmath>

namespace mtpserve {

std::vector<float> rope_inv_freq(const RopeParams& p, int D) {
  MTP_ASSERT(D > 0 && D % 2 == 0);
  std::vector<float> inv(D / 2, 0.0f);
  // Both kinds use the exponent 2j / D over the full head dim; proportional RoPE rotates only the first
  // int(partial_rotary_factor * D / 2) pairs and leaves the rest as identity (inv_freq 0).
  int n_rot = p.rope_type == "proportional" ? int(p.partial_rotary_factor * D / 2) : D / 2;
  for (int j = 0; j < n_rot; j++) {
    float e = float(2 * j) / float(D);
    inv[j] = 1.0f / std::pow(float(p.rope_theta), e);
    if (p.rope_type == "proportional") inv[j] /= float(p.factor);
  }
  return inv;
}

DeviceMeta upload_meta(Backend& be, const ForwardBatch& b, bool block_keys) {
  const int S = int(b.seqs.size()), T = int(b.positions.size());
  MTP_ASSERT(S > 0 && T > 0);
  std::vector<int32_t> cu(S + 1, 0), prefix(S);
  int max_q = 0, max_full = 1, max_slide = 1;
  for (int s = 0; s < S; s++) {
    const SeqBatchEntry& e = b.seqs[s];
    cu[s + 1] = cu[s] + e.q_len;
    prefix[s] = e.prefix_len;
    max_q = std::max(max_q, e.q_len);
    if (e.full_pages) max_full = std::max(max_full, int(e.full_pages->size()));
    if (e.sliding_pages) max_slide = std::max(max_slide, int(e.sliding_pages->size()));
  }
  MTP_CHECK(cu[S] == T, "forward batch: sequences cover {} rows but {} positions were given", cu[S], T);
  auto table = [&](int width, bool full) {
    std::vector<int32_t> t(size_t(S) * width, -1);
    for (int s = 0; s < S; s++) {
      const auto* pages = full ? b.seqs[s].full_pages : b.seqs[s].sliding_pages;
      if (pages) std::copy(pages->begin(), pages->end(), t.begin() + size_t(s) * width);
    }
    return t;
  };
  auto up = [&](const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
    Tensor t = be.alloc(DType::I32, shape);
    be.copy_from_host(t, v.data());
    return t;
  };
  DeviceMeta m;
  m.attn.num_seqs = S;
  m.attn.block_keys = block_keys;
  m.attn.cu_q = up(cu, {S + 1});
  m.attn.prefix_len = up(prefix, {S});
  m.attn.positions = up(b.positions, {T});
  if (!b.tree_mask.empty()) {
    MTP_CHECK(b.tree_max_q >= max_q && b.tree_mask.size() == size_t(T) * b.tree_max_q,
              "forward batch: tree mask must be [T, max_q]");
    m.attn.max_q = b.tree_max_q;
    m.attn.tree_mask = be.alloc(DType::U8, {T, b.tree_max_q});
    be.copy_from_host(m.attn.tree_mask, b.tree_mask.data());
  } else {
    m.attn.max_q = max_q;
  }
  m.full.pages = up(table(max_full, true), {S, max_full});
  m.sliding.pages = up(table(max_slide, false), {S, max_slide});
  m.full.page_size = m.sliding.page_size = kPageSize;
  if (!b.tokens.empty()) m.tokens = up(b.tokens, {int64_t(b.tokens.size())});
  return m;
}

void decoder_layer(Backend& be, Tensor x, const LayerWeights& lw, const LayerSpec& s, const TextConfig& c,
                   const LayerContext& ctx) {
  MTP_ASSERT(ctx.attn && ctx.pages && ctx.inv_freq && ctx.k_cache.defined());
  const DType act = be.act_dtype();
  const int64_t T = x.dim(0), H = c.hidden_size, nh = c.num_attention_heads;
  const int64_t D = s.head_dim, kvh = s.num_kv_heads, I = s.mlp_width, P = c.hidden_size_per_layer_input;
  const float eps = float(c.rms_norm_eps);
  Tensor h = be.alloc(act, {T, H});  // normed input of a sub-block
  Tensor o = be.alloc(act, {T, H});  // sub-block output

  // --- attention: q/k/v projections, per-head RMSNorm (v without weight), RoPE on q and k ---
  be.rms_norm(h, x, lw.input_layernorm, eps);
  Tensor q = be.alloc(act, {T, nh, D});
  be.linear(q.view({T, nh * D}), h, lw.q_proj);
  be.rms_norm(q, q, lw.q_norm, eps);
  be.rope(q, ctx.attn->positions, *ctx.inv_freq);
  if (s.stores_kv) {
    Tensor k = be.alloc(act, {T, kvh, D}), v = be.alloc(act, {T, kvh, D});
    be.linear(k.view({T, kvh * D}), h, lw.k_proj);
    if (s.has_v_proj)
      be.linear(v.view({T, kvh * D}), h, lw.v_proj);
    else
      be.copy(v, k);  // attention_k_eq_v: V = v_norm(k_proj(x)), taken before k_norm and RoPE
    be.rms_norm(k, k, lw.k_norm, eps);
    be.rope(k, ctx.attn->positions, *ctx.inv_freq);
    be.rms_norm(v, v, Tensor(), eps);
    be.kv_write(ctx.k_cache, ctx.v_cache, k, v, *ctx.attn, *ctx.pages);
  }
  Tensor attn = be.alloc(act, {T, nh, D});
  be.attention(attn, q, ctx.k_cache, ctx.v_cache, *ctx.attn, *ctx.pages, ctx.window);
  be.linear(o, attn.view({T, nh * D}), lw.o_proj);
  be.rms_norm(o, o, lw.post_attention_layernorm, eps);
  be.add(x, x, o);  // x = residual + post_attention_layernorm(attn_out)

  // --- feed-forward: gated GELU MLP, plus the MoE block in parallel on the same residual ---
  be.rms_norm(h, x, lw.pre_feedforward_layernorm, eps);
  Tensor gate = be.alloc(act, {T, I}), up = be.alloc(act, {T, I});
  be.linear(gate, h, lw.gate_proj);
  be.linear(up, h, lw.up_proj);
  be.gelu_mul(gate, gate, up);
  be.linear(o, gate, lw.down_proj);
  if (c.enable_moe_block) {
    const int64_t E = c.num_experts, K = c.top_k_experts;
    be.rms_norm(o, o, lw.post_feedforward_layernorm_1, eps);  // h1
    // Router: RMSNorm(no weight) * scale * H^-0.5 -> logits [T, E] -> softmax, top-k, renorm, expert scale
    Tensor z = be.alloc(act, {T, H});
    be.rms_norm(z, x, Tensor(), eps);
    be.mul_bcast(z, z, lw.router_scale);
    be.scale(z, z, float(1.0 / std::sqrt(double(H))));
    Tensor logits = be.alloc(act, {T, E});
    be.linear(logits, z, lw.router_proj);
    Tensor rw = be.alloc(DType::F32, {T, K}), re = be.alloc(DType::I32, {T, K});
    be.moe_route(rw, re, logits, lw.router_per_expert_scale, int(K));
    be.rms_norm(h, x, lw.pre_feedforward_layernorm_2, eps);  // the experts read r, not the dense MLP input
    Tensor moe = be.alloc(act, {T, H});
    be.moe_experts(moe, h, rw, re, lw.experts_gate_up, lw.experts_down);
    be.rms_norm(moe, moe, lw.post_feedforward_layernorm_2, eps);  // h2
    be.add(o, o, moe);
  }
  be.rms_norm(o, o, lw.post_feedforward_layernorm, eps);
  be.add(x, x, o);

  // --- per-layer embedding gate, after the FFN residual ---
  if (P > 0) {
    MTP_ASSERT(ctx.ple.defined());
    Tensor g = be.alloc(act, {T, P});
    be.linear(g, x, lw.per_layer_input_gate);
    be.gelu_mul(g, g, ctx.ple);
    be.linear(o, g, lw.per_layer_projection);
    be.rms_norm(o, o, lw.post_per_layer_input_norm, eps);
    be.add(x, x, o);
  }
  be.mul_bcast(x, x, lw.layer_scalar);  // the whole residual stream is scaled
}

std::unique_ptr<Gemma4Model> Gemma4Model::load(const std::string& dir, Backend& be) {
  ModelConfig cfg = load_config(dir);
  MTP_CHECK(cfg.kind == ModelKind::Target,
            "{}: is an assistant checkpoint (model_type {}), not a target model", dir, cfg.model_type);
  Checkpoint ckpt = Checkpoint::open(dir);
  std::vector<std::string> unexpected;
  TargetWeights w = load_target_weights(&ckpt, cfg, be, &unexpected);
  if (!unexpected.empty())  // HF warns the same way about unexpected keys; they are not used
    fmt::print(stderr, "warning: {}: {} unused tensors in the checkpoint, e.g. '{}'\n", dir,
               unexpected.size(), unexpected.front());
  return std::make_unique<Gemma4Model>(std::move(cfg), std::move(w), be);
}

Gemma4Model::Gemma4Model(ModelConfig cfg, TargetWeights w, Backend& be)
    : cfg_(std::move(cfg)), w_(std::move(w)), be_(be) {
  const TextConfig& c = cfg_.text;
  auto upload_f32 = [&](const std::vector<float>& v) {
    Tensor t = be_.alloc(DType::F32, {int64_t(v.size())});
    be_.copy_from_host(t, v.data());
    return t;
  };
  inv_freq_sliding_ = upload_f32(rope_inv_freq(c.rope_sliding, c.head_dim));
  inv_freq_full_ = upload_f32(rope_inv_freq(c.rope_full, c.global_head_dim));
  float s = float(std::sqrt(double(c.hidden_size)));
  embed_scale_ = be_.act_dtype() == DType::BF16 ? round_bf16(s) : s;
}

KvStorage Gemma4Model::allocate_kv(int full_pages, int sliding_pages) const {
  const TextConfig& c = cfg_.text;
  KvStorage kv;
  kv.full_pages = full_pages;
  kv.sliding_pages = sliding_pages;
  kv.k.resize(c.num_hidden_layers);
  kv.v.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; i++) {
    const LayerSpec& s = c.layers[i];
    if (!s.stores_kv) continue;
    int64_t slots = int64_t(s.type == LayerType::Full ? full_pages : sliding_pages) * kPageSize;
    kv.k[i] = be_.alloc(be_.act_dtype(), {slots, s.num_kv_heads, s.head_dim});
    kv.v[i] = be_.alloc(be_.act_dtype(), {slots, s.num_kv_heads, s.head_dim});
  }
  return kv;
}

ForwardOutput Gemma4Model::forward(const ForwardBatch& batch, KvStorage& kv) const {
  const TextConfig& c = cfg_.text;
  Backend& be = be_;
  const DType act = be.act_dtype();
  const int64_t T = int64_t(batch.tokens.size()), H = c.hidden_size;
  const int64_t L = c.num_hidden_layers, P = c.hidden_size_per_layer_input;
  const float eps = float(c.rms_norm_eps);
  MTP_CHECK(T > 0 && batch.positions.size() == size_t(T), "forward: need as many positions as tokens");
  for (int32_t id : batch.tokens)
    MTP_CHECK(id >= 0 && id < c.vocab_size, "forward: token id {} is outside the vocabulary [0, {})", id,
              c.vocab_size);
  DeviceMeta meta = upload_meta(be, batch, /*block_keys=*/true);

  // Scaled token embedding: x0 = E[ids] * bf16(sqrt(H))                                     x: [T, H]
  Tensor x = be.alloc(act, {T, H});
  be.embed(x, meta.tokens, w_.embed_tokens, embed_scale_);

  // Per-layer embeddings (PLE): ((proj(x0) * H^-0.5 -> RMSNorm_P) + E_ple[ids] * sqrt(P)) * 2^-0.5
  Tensor ple;  // [L, T, P]
  if (P > 0) {
    Tensor tok = be.alloc(act, {T, L * P});
    float ple_scale = float(std::sqrt(double(P)));
    be.embed(tok, meta.tokens, w_.embed_tokens_per_layer,
             act == DType::BF16 ? round_bf16(ple_scale) : ple_scale);
    Tensor proj = be.alloc(act, {T, L * P});
    be.linear(proj, x, w_.per_layer_model_projection);
    be.scale(proj, proj, float(1.0 / std::sqrt(double(H))));
    be.rms_norm(proj.view({T * L, P}), proj.view({T * L, P}), w_.per_layer_projection_norm, eps);
    be.add(proj, proj, tok);
    be.scale(proj, proj, float(1.0 / std::sqrt(2.0)));
    ple = be.alloc(act, {L, T, P});
    be.transpose01(ple, proj.view({T, L, P}));
  }

  for (int64_t i = 0; i < L; i++) {
    const LayerSpec& s = c.layers[i];
    LayerContext ctx;
    ctx.attn = &meta.attn;
    ctx.pages = s.type == LayerType::Full ? &meta.full : &meta.sliding;
    ctx.k_cache =
        kv.k[s.kv_source];  // KV-shared layers read their owner's cache, written earlier this forward
    ctx.v_cache = kv.v[s.kv_source];
    ctx.window = s.type == LayerType::Sliding ? c.sliding_window : 0;
    ctx.inv_freq = &inv_freq(s.type);
    if (P > 0) ctx.ple = ple.rows(i, i + 1).view({T, P});
    decoder_layer(be, x, w_.layers[i], s, c, ctx);
  }

  // Final norm on the requested rows, tied head, final softcap.
  const int64_t R = int64_t(batch.output_rows.size());
  ForwardOutput out;
  if (R == 0) return out;
  Tensor rows = be.alloc(DType::I32, {R});
  be.copy_from_host(rows, batch.output_rows.data());
  Tensor xr = be.alloc(act, {R, H});
  be.gather_rows(xr, x, rows);
  out.hidden = be.alloc(act, {R, H});
  be.rms_norm(out.hidden, xr, w_.norm, eps);
  Tensor logits = be.alloc(act, {R, c.vocab_size});
  be.linear(logits, out.hidden, w_.embed_tokens);
  if (c.final_logit_softcapping) be.softcap(logits, float(*c.final_logit_softcapping));
  if (act == DType::F32) {
    out.logits = logits;
  } else {
    out.logits = be.alloc(DType::F32, {R, c.vocab_size});
    be.to_f32(out.logits, logits);
  }
  return out;
}

}  // namespace mtpserve
