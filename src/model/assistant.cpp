// One assistant drafting step (mtp-algorithm.md §1.3). Shapes: B = draft rows, Hb = target hidden size,
// Ha = assistant hidden size, V = vocabulary, C = centroids.
#include "model/assistant.h"

#include <cmath>

namespace mtpserve {

namespace {

AssistantWeights load_assistant_weights(const Checkpoint* ckpt, const AssistantConfig& a, Backend& be,
                                        DummyWeights* dummy) {
  const TextConfig& c = a.text;
  WeightBinder wb(ckpt, "", be, dummy);
  const int64_t Ha = c.hidden_size, Hb = a.backbone_hidden_size, V = c.vocab_size, nh = c.num_attention_heads;
  AssistantWeights w;
  w.embed_tokens = wb.get("model.embed_tokens.weight", {V, Ha});
  w.norm = wb.get("model.norm.weight", {Ha});
  w.pre_projection = wb.get("pre_projection.weight", {Ha, 2 * Hb});
  w.post_projection = wb.get("post_projection.weight", {Hb, Ha});
  if (a.use_ordered_embeddings) {
    w.centroids = wb.get("masked_embedding.centroids.weight", {a.num_centroids, Ha});
    Tensor ord = wb.get_permutation("masked_embedding.token_ordering", V);
    MTP_CHECK(ord.dtype == DType::I64, "{}: masked_embedding.token_ordering must be I64, got {}", wb.where(),
              dtype_name(ord.dtype));
    // A zeroed or partial ordering would map every cluster to a few tokens: insist on a permutation.
    std::vector<uint8_t> seen(size_t(V), 0);
    for (int64_t i = 0; i < V; i++) {
      int64_t id = ord.ptr<const int64_t>()[i];
      MTP_CHECK(id >= 0 && id < V && !seen[id],
                "{}: masked_embedding.token_ordering is not a permutation of "
                "[0, {}) (entry {} = {})",
                wb.where(), V, i, id);
      seen[id] = 1;
    }
    w.token_ordering = be.alloc(DType::I64, {V});
    be.copy_from_host(w.token_ordering, ord.data);
  }
  for (int64_t i = 0; i < c.num_hidden_layers; i++) {
    const LayerSpec& s = c.layers[i];
    std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights lw;
    const int64_t D = s.head_dim, I = s.mlp_width;
    lw.input_layernorm = wb.get(p + "input_layernorm.weight", {Ha});
    lw.post_attention_layernorm = wb.get(p + "post_attention_layernorm.weight", {Ha});
    lw.pre_feedforward_layernorm = wb.get(p + "pre_feedforward_layernorm.weight", {Ha});
    lw.post_feedforward_layernorm = wb.get(p + "post_feedforward_layernorm.weight", {Ha});
    lw.layer_scalar = wb.get(p + "layer_scalar", {1});
    lw.q_proj = wb.get(p + "self_attn.q_proj.weight", {nh * D, Ha});
    lw.q_norm = wb.get(p + "self_attn.q_norm.weight", {D});
    lw.o_proj = wb.get(p + "self_attn.o_proj.weight", {Ha, nh * D});
    lw.gate_proj = wb.get(p + "mlp.gate_proj.weight", {I, Ha});
    lw.up_proj = wb.get(p + "mlp.up_proj.weight", {I, Ha});
    lw.down_proj = wb.get(p + "mlp.down_proj.weight", {Ha, I});
    w.layers.push_back(std::move(lw));
  }
  return w;
}

}  // namespace

std::unique_ptr<Gemma4Assistant> Gemma4Assistant::load(const std::string& dir, const Gemma4Model& target,
                                                       int query_pos_offset, DummyWeights* dummy) {
  ModelConfig mc = load_config(dir);
  MTP_CHECK(mc.kind == ModelKind::Assistant, "{}: model_type '{}' is not an MTP assistant (gemma4_assistant)",
            dir, mc.model_type);
  std::unique_ptr<Checkpoint> ckpt;
  if (!dummy) ckpt = std::make_unique<Checkpoint>(Checkpoint::open(dir));
  AssistantWeights w = load_assistant_weights(ckpt.get(), mc.assistant, target.backend(), dummy);
  return std::make_unique<Gemma4Assistant>(mc.assistant, std::move(w), target, query_pos_offset);
}

Gemma4Assistant::Gemma4Assistant(AssistantConfig cfg, AssistantWeights w, const Gemma4Model& target,
                                 int offset)
    : cfg_(std::move(cfg)), w_(std::move(w)), target_(target), offset_(offset) {
  const TextConfig& a = cfg_.text;
  const TextConfig& t = target.config();
  MTP_CHECK(offset == 0 || offset == 1, "assistant query position offset must be 0 or 1, got {}", offset);
  MTP_CHECK(cfg_.backbone_hidden_size == t.hidden_size,
            "assistant backbone_hidden_size {} does not match the target hidden_size {}",
            cfg_.backbone_hidden_size, t.hidden_size);
  MTP_CHECK(a.vocab_size == t.vocab_size, "assistant vocab_size {} does not match the target vocab_size {}",
            a.vocab_size, t.vocab_size);
  // Bind each layer to the target's KV owner of its type and check that the query geometry fits the keys.
  for (int l = 0; l < a.num_hidden_layers; l++) {
    const LayerSpec& s = a.layers[l];
    int owner = t.kv_owner(s.type);
    MTP_CHECK(owner >= 0, "assistant layer {} ({}) has no target layer of that type to read KV from", l,
              layer_type_name(s.type));
    const LayerSpec& o = t.layers[owner];
    MTP_CHECK(
        s.head_dim == o.head_dim && s.num_kv_heads == o.num_kv_heads,
        "assistant layer {} ({}) expects {} KV heads of dim {}, but target owner layer {} has {} of dim {}",
        l, layer_type_name(s.type), s.num_kv_heads, s.head_dim, owner, o.num_kv_heads, o.head_dim);
    MTP_CHECK(a.rope(s.type) == t.rope(s.type),
              "assistant layer {} ({}) uses different rope_parameters from the target's {} layers", l,
              layer_type_name(s.type), layer_type_name(s.type));
    MTP_CHECK(a.num_attention_heads % s.num_kv_heads == 0,
              "assistant num_attention_heads {} is not a multiple of the {} KV heads of target layer {}",
              a.num_attention_heads, s.num_kv_heads, owner);
    owner_.push_back(owner);
  }
  MTP_CHECK(a.sliding_window == t.sliding_window, "assistant sliding_window {} differs from the target's {}",
            a.sliding_window, t.sliding_window);
  inv_freq_sliding_ = target.inv_freq(LayerType::Sliding);
  inv_freq_full_ = target.inv_freq(LayerType::Full);
  for (LayerWeights& lw : w_.layers) fuse_projections(target.backend(), lw);
}

DraftStepOutput Gemma4Assistant::step(const DraftRows& rows, const Tensor& h, KvStorage& kv) const {
  Backend& be = target_.backend();
  const int64_t B = int64_t(rows.tokens.size()), Hb = cfg_.backbone_hidden_size;
  MTP_CHECK(B > 0 && h.dim(0) == B && h.dim(1) == Hb, "assistant step: h must be [{}, {}], got {}", B, Hb,
            h.shape_str());
  // Read-only queries at one constant position per row: committed_len - 1 + offset.
  ForwardBatch fb;
  fb.tokens = rows.tokens;
  fb.seqs = rows.seqs;
  for (const SeqBatchEntry& e : rows.seqs)
    for (int i = 0; i < e.q_len; i++) fb.positions.push_back(e.prefix_len - 1 + offset_);
  return step_device(upload_meta(be, fb, /*block_keys=*/false), h, kv);
}

DraftStepOutput Gemma4Assistant::step_device(const DeviceMeta& meta, const Tensor& h, KvStorage& kv) const {
  Backend& be = target_.backend();
  const TextConfig& a = cfg_.text;
  const DType act = be.act_dtype();
  const int64_t B = meta.tokens.numel(), Hb = cfg_.backbone_hidden_size, Ha = a.hidden_size;
  const int64_t V = a.vocab_size;
  MTP_ASSERT(B > 0 && h.dim(0) == B && h.dim(1) == Hb && !meta.attn.block_keys);

  // x = pre_projection(concat(target_embed(tok) * bf16(sqrt(Hb)), h))                     x: [B, Ha]
  Tensor both = be.alloc(act, {2, B, Hb});
  be.embed(both.rows(0, 1).view({B, Hb}), meta.tokens, target_.weights().embed_tokens, target_.embed_scale());
  be.copy(both.rows(1, 2).view({B, Hb}), h);
  Tensor cat = both.view({B, 2, Hb});  // one row: [2, 1, Hb] is already [embedding, hidden]
  if (B > 1) {
    cat = be.alloc(act, {B, 2, Hb});
    be.transpose01(cat, both);  // [B, 2, Hb] = per row [embedding, hidden]
  }
  Tensor x = be.alloc(act, {B, Ha});
  be.linear(x, cat.view({B, 2 * Hb}), w_.pre_projection);

  Tensor hn = be.alloc(act, {B, Ha});  // each layer's normed input, written by its predecessor
  be.rms_norm(hn, x, w_.layers[0].input_layernorm, float(a.rms_norm_eps));
  for (int l = 0; l < a.num_hidden_layers; l++) {
    const LayerSpec& s = a.layers[l];
    LayerContext ctx;
    ctx.h = hn;
    if (l + 1 < a.num_hidden_layers) ctx.next_input_norm = &w_.layers[l + 1].input_layernorm;
    ctx.attn = &meta.attn;
    ctx.pages = s.type == LayerType::Full ? &meta.full : &meta.sliding;
    ctx.k_cache = kv.k[owner_[l]];
    ctx.v_cache = kv.v[owner_[l]];
    // The last W committed keys in both conventions: q = L-1+offset sees k > q - window.
    ctx.window = s.type == LayerType::Sliding ? a.sliding_window + offset_ : 0;
    ctx.inv_freq = s.type == LayerType::Full ? &inv_freq_full_ : &inv_freq_sliding_;
    decoder_layer(be, x, w_.layers[l], s, a, ctx);
  }

  DraftStepOutput out;
  out.y = be.alloc(act, {B, Ha});
  be.rms_norm(out.y, x, w_.norm, float(a.rms_norm_eps));
  out.hidden = be.alloc(act, {B, Hb});
  be.linear(out.hidden, out.y, w_.post_projection);
  if (cfg_.use_ordered_embeddings) {
    const int64_t C = cfg_.num_centroids, N = int64_t(cfg_.centroid_intermediate_top_k) * (V / C);
    Tensor cs = be.alloc(act, {B, C});  // centroid scores, ranked in the activation dtype
    be.linear(cs, out.y, w_.centroids);
    out.cand_ids = be.alloc(DType::I32, {B, N});
    out.cand_scores = be.alloc(DType::F32, {B, N});
    be.centroid_candidates(out.cand_ids, out.cand_scores, out.y, cs, w_.token_ordering, w_.embed_tokens,
                           cfg_.centroid_intermediate_top_k);
  } else {
    Tensor logits = be.alloc(act, {B, V});
    be.linear(logits, out.y, w_.embed_tokens);  // no softcap on assistant logits (HF)
    out.logits = logits;
    if (act != DType::F32) {
      out.logits = be.alloc(DType::F32, {B, V});
      be.to_f32(out.logits, logits);
    }
  }
  return out;
}

void Gemma4Assistant::greedy_ids(Tensor ids, const DraftStepOutput& o) const {
  Backend& be = target_.backend();
  if (o.logits.defined())
    be.argmax(ids, o.logits);
  else
    be.argmax_ids(ids, o.cand_scores, o.cand_ids);
}

std::vector<int32_t> Gemma4Assistant::greedy_tokens(const DraftStepOutput& o) const {
  Backend& be = target_.backend();
  const int64_t B = o.hidden.dim(0);
  Tensor ids = be.alloc(DType::I32, {B});
  greedy_ids(ids, o);
  std::vector<int32_t> out(size_t(B), 0);
  be.copy_to_host(out.data(), ids);
  return out;
}

}  // namespace mtpserve
