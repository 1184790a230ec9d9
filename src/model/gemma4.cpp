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

MetaDims meta_dims(const ForwardBatch& b) {
  MetaDims d;
  d.S = int(b.seqs.size());
  d.T = int(b.positions.size());
  d.R = int(b.output_rows.size());
  d.tokens = !b.tokens.empty();
  for (const SeqBatchEntry& e : b.seqs) {
    d.max_q = std::max(d.max_q, e.q_len);
    if (e.full_pages) d.full_width = std::max(d.full_width, int(e.full_pages->size()));
    if (e.sliding_pages) d.sliding_width = std::max(d.sliding_width, int(e.sliding_pages->size()));
  }
  if (!b.tree_mask.empty()) d.mask_q = b.tree_max_q;
  return d;
}

// Packed layout, in I32 words: cu_q [S+1], prefix_len [S], positions [T], full pages [S, Wf], sliding pages
// [S, Ws], tokens [T] (if any), output rows [R], then the tree mask [T, mask_q] as bytes.
static int64_t meta_words(const MetaDims& d) {
  int64_t n =
      (d.S + 1) + d.S + d.T + int64_t(d.S) * (d.full_width + d.sliding_width) + (d.tokens ? d.T : 0) + d.R;
  return n + (int64_t(d.T) * d.mask_q + 3) / 4;
}

void pack_meta(const ForwardBatch& b, const MetaDims& d, std::vector<int32_t>& words) {
  const MetaDims nat = meta_dims(b);
  const int S = nat.S, T = nat.T;
  MTP_CHECK(
      S == d.S && T == d.T && nat.R == d.R && nat.tokens == d.tokens && nat.max_q <= d.max_q &&
          nat.full_width <= d.full_width && nat.sliding_width <= d.sliding_width && nat.mask_q == d.mask_q,
      "forward batch: {} sequences / {} rows do not fit the metadata layout of {} / {}", S, T, d.S, d.T);
  MTP_CHECK(S > 0 && T > 0, "forward batch: no sequences");
  words.assign(size_t(meta_words(d)), 0);
  int32_t* w = words.data();
  int32_t* cu = w;
  int32_t* prefix = cu + S + 1;
  int32_t* pos = prefix + S;
  int32_t* full = pos + T;
  int32_t* slide = full + int64_t(S) * d.full_width;
  int32_t* tok = slide + int64_t(S) * d.sliding_width;
  int32_t* rows = tok + (d.tokens ? T : 0);
  uint8_t* mask = reinterpret_cast<uint8_t*>(rows + d.R);
  for (int s = 0; s < S; s++) {
    const SeqBatchEntry& e = b.seqs[s];
    cu[s + 1] = cu[s] + e.q_len;
    prefix[s] = e.prefix_len;
    int32_t* f = full + int64_t(s) * d.full_width;
    int32_t* g = slide + int64_t(s) * d.sliding_width;
    std::fill(f, f + d.full_width, -1);
    std::fill(g, g + d.sliding_width, -1);
    if (e.full_pages) std::copy(e.full_pages->begin(), e.full_pages->end(), f);
    if (e.sliding_pages) std::copy(e.sliding_pages->begin(), e.sliding_pages->end(), g);
  }
  MTP_CHECK(cu[S] == T, "forward batch: sequences cover {} rows but {} positions were given", cu[S], T);
  std::copy(b.positions.begin(), b.positions.end(), pos);
  if (d.tokens) std::copy(b.tokens.begin(), b.tokens.end(), tok);
  std::copy(b.output_rows.begin(), b.output_rows.end(), rows);
  if (d.mask_q) {
    MTP_CHECK(b.tree_max_q >= nat.max_q && b.tree_mask.size() == size_t(T) * b.tree_max_q,
              "forward batch: tree mask must be [T, max_q]");
    std::copy(b.tree_mask.begin(), b.tree_mask.end(), mask);
  }
}

DeviceMeta meta_views(const Tensor& buf, const MetaDims& d, bool block_keys) {
  MTP_ASSERT(buf.dtype == DType::I32 && buf.numel() >= meta_words(d));
  int64_t at = 0;
  auto take = [&](std::initializer_list<int64_t> shape) {
    Tensor t = buf;
    t.data = buf.ptr<int32_t>() + at;
    t.set_shape(shape);
    at += t.numel();
    return t;
  };
  DeviceMeta m;
  m.attn.num_seqs = d.S;
  m.attn.block_keys = block_keys;
  m.attn.max_q = d.mask_q ? d.mask_q : d.max_q;
  m.attn.cu_q = take({d.S + 1});
  m.attn.prefix_len = take({d.S});
  m.attn.positions = take({d.T});
  m.full.pages = take({d.S, d.full_width});
  m.sliding.pages = take({d.S, d.sliding_width});
  m.full.page_size = m.sliding.page_size = kPageSize;
  if (d.tokens) m.tokens = take({d.T});
  if (d.R) m.output_rows = take({d.R});
  if (d.mask_q) {
    m.attn.tree_mask = buf;
    m.attn.tree_mask.data = buf.ptr<int32_t>() + at;
    m.attn.tree_mask.dtype = DType::U8;
    m.attn.tree_mask.set_shape({d.T, d.mask_q});
  }
  return m;
}

Tensor alloc_meta(Backend& be, const MetaDims& d) { return be.alloc(DType::I32, {meta_words(d)}); }

DeviceMeta upload_meta(Backend& be, const ForwardBatch& b, bool block_keys) {
  MetaDims d = meta_dims(b);
  std::vector<int32_t> words;
  pack_meta(b, d, words);
  Tensor buf = alloc_meta(be, d);
  be.copy_from_host(buf, words.data());  // one transfer for the whole batch
  return meta_views(buf, d, block_keys);
}

void decoder_layer(Backend& be, Tensor x, const LayerWeights& lw, const LayerSpec& s, const TextConfig& c,
                   const LayerContext& ctx) {
  MTP_ASSERT(ctx.attn && ctx.pages && ctx.inv_freq && ctx.k_cache.defined() && ctx.h.defined());
  MTP_ASSERT(!lw.up_proj.defined() && !lw.k_proj.defined());  // fused: gate_proj = gate|up, q_proj = q|k|v
  const DType act = be.act_dtype();
  const int64_t T = x.dim(0), H = c.hidden_size, nh = c.num_attention_heads;
  const int64_t D = s.head_dim, I = s.mlp_width, P = c.hidden_size_per_layer_input;
  const float eps = float(c.rms_norm_eps);
  Tensor h = ctx.h;                  // [T, H] normed input of a sub-block (given: input_layernorm(x))
  Tensor o = be.alloc(act, {T, H});  // sub-block output

  // --- attention: q/k/v projection, per-head RMSNorm (v without weight), RoPE on q and k, KV write ---
  Tensor q = be.alloc(act, {T, nh, D});
  if (s.stores_kv) {
    const int64_t heads = lw.q_proj.dim(0) / D;  // nh + 2 kvh, or nh + kvh when V is K
    Tensor qkv = be.alloc(act, {T, heads, D});
    be.linear(qkv.view({T, heads * D}), h, lw.q_proj);
    be.qkv_norm_rope_kv(q, qkv, lw.q_norm, lw.k_norm, ctx.attn->positions, *ctx.inv_freq, eps, ctx.k_cache,
                        ctx.v_cache, *ctx.attn, *ctx.pages);
  } else {  // KV-shared or Q-only layer: reads the cache its owner wrote
    be.linear(q.view({T, nh * D}), h, lw.q_proj);
    be.qkv_norm_rope(q, Tensor(), Tensor(), lw.q_norm, Tensor(), ctx.attn->positions, *ctx.inv_freq, eps);
  }
  Tensor attn = be.alloc(act, {T, nh, D});
  be.attention(attn, q, ctx.k_cache, ctx.v_cache, *ctx.attn, *ctx.pages, ctx.window);
  be.linear(o, attn.view({T, nh * D}), lw.o_proj);
  // x = residual + post_attention_layernorm(attn_out); h = pre_feedforward_layernorm(x)
  be.rms_norm_add_norm(x, h, o, lw.post_attention_layernorm, lw.pre_feedforward_layernorm, eps, Tensor());

  // --- feed-forward: gated GELU MLP, plus the MoE block in parallel on the same residual ---
  {
    Tensor a = be.alloc(act, {T, I});
    be.linear_gelu(a, h, lw.gate_proj);  // gelu(gate_proj(h)) * up_proj(h), gate_proj = gate|up
    be.linear(o, a, lw.down_proj);
  }
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
  // The layer's last residual add: the whole residual stream is scaled by layer_scalar there, and the next
  // layer's input norm (when there is one) is taken from the new x in the same pass.
  auto last_add = [&](const Tensor& out, const Tensor& w) {
    if (ctx.next_input_norm)
      be.rms_norm_add_norm(x, h, out, w, *ctx.next_input_norm, eps, lw.layer_scalar);
    else
      be.rms_norm_add(x, out, w, eps, lw.layer_scalar);
  };
  if (P == 0) {
    last_add(o, lw.post_feedforward_layernorm);
    return;
  }
  be.rms_norm_add(x, o, lw.post_feedforward_layernorm, eps, Tensor());

  // --- per-layer embedding gate, after the FFN residual ---
  MTP_ASSERT(ctx.ple.defined());
  Tensor g = be.alloc(act, {T, P});
  be.linear_gelu(g, x, lw.per_layer_input_gate, ctx.ple);  // gelu(per_layer_input_gate(x)) * ple
  be.linear(o, g, lw.per_layer_projection);
  last_add(o, lw.post_per_layer_input_norm);
}

// dst [sum rows, K] = the tensors' rows in turn, in one weight allocation (widened to F32 when dtypes mix).
static Tensor concat_rows(Backend& be, const std::vector<const Tensor*>& parts, const char* what) {
  MTP_ASSERT(!parts.empty());
  const int64_t K = parts[0]->dim(1);
  int64_t rows = 0;
  DType dt = parts[0]->dtype;
  for (const Tensor* t : parts) {
    MTP_CHECK(t->ndim == 2 && t->dim(1) == K, "{}: projections {} and {} differ in input width", what,
              parts[0]->shape_str(), t->shape_str());
    rows += t->dim(0);
    if (t->dtype != dt) dt = DType::F32;  // mixed storage: widen all
  }
  Tensor dst = be.alloc_weight(dt, {rows, K});
  int64_t row = 0;
  for (const Tensor* t : parts) {
    Tensor part = dst.rows(row, row + t->dim(0));
    if (t->dtype == dt)
      be.copy(part, *t);
    else
      be.to_f32(part, *t);
    row += t->dim(0);
  }
  be.synchronize();  // the copies have read the parts before they are released
  return dst;
}

void fuse_projections(Backend& be, LayerWeights& lw) {
  if (lw.up_proj.defined()) {
    MTP_CHECK(lw.gate_proj.shape_str() == lw.up_proj.shape_str(), "mlp: gate_proj {} and up_proj {} differ",
              lw.gate_proj.shape_str(), lw.up_proj.shape_str());
    lw.gate_proj = concat_rows(be, {&lw.gate_proj, &lw.up_proj}, "mlp");  // the parts go with their last
    lw.up_proj = Tensor();                                                // reference
  }
  if (lw.k_proj.defined()) {
    std::vector<const Tensor*> parts{&lw.q_proj, &lw.k_proj};
    if (lw.v_proj.defined()) parts.push_back(&lw.v_proj);
    lw.q_proj = concat_rows(be, parts, "attention");
    lw.k_proj = lw.v_proj = Tensor();
  }
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
  for (LayerWeights& lw : w_.layers) fuse_projections(be_, lw);
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
  const int64_t T = int64_t(batch.tokens.size());
  MTP_CHECK(T > 0 && batch.positions.size() == size_t(T), "forward: need as many positions as tokens");
  for (int32_t id : batch.tokens)
    MTP_CHECK(id >= 0 && id < c.vocab_size, "forward: token id {} is outside the vocabulary [0, {})", id,
              c.vocab_size);
  return forward_device(upload_meta(be_, batch, /*block_keys=*/true), kv);
}

ForwardOutput Gemma4Model::forward_device(const DeviceMeta& meta, KvStorage& kv) const {
  const TextConfig& c = cfg_.text;
  Backend& be = be_;
  const DType act = be.act_dtype();
  const int64_t T = meta.tokens.numel(), H = c.hidden_size;
  const int64_t L = c.num_hidden_layers, P = c.hidden_size_per_layer_input;
  const float eps = float(c.rms_norm_eps);
  MTP_ASSERT(meta.tokens.defined() && T > 0);

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

  Tensor h = be.alloc(act, {T, H});  // the next layer's normed input (each layer writes its successor's)
  be.rms_norm(h, x, w_.layers[0].input_layernorm, eps);
  for (int64_t i = 0; i < L; i++) {
    const LayerSpec& s = c.layers[i];
    LayerContext ctx;
    ctx.h = h;
    if (i + 1 < L) ctx.next_input_norm = &w_.layers[i + 1].input_layernorm;
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
  ForwardOutput out;
  if (!meta.output_rows.defined()) return out;
  const int64_t R = meta.output_rows.numel();
  Tensor xr = be.alloc(act, {R, H});
  be.gather_rows(xr, x, meta.output_rows);
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
