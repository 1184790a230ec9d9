// The Gemma 4 target model (Gemma4ForCausalLM / the text path of Gemma4ForConditionalGeneration), written
// once against the Backend op contract. Read gemma4.cpp top to bottom: it is the forward pass of
// gemma4-architecture.md §2, with the paged KV cache of DESIGN.md §5.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/weights.h"

namespace mtpserve {

inline constexpr int kPageSize = 16;

// KV cache storage: one K and one V tensor [pages * 16, kv_heads, D] per KV-owning layer, in two pools: the
// full pool (full-attention owners) and the sliding pool (sliding owners). A page id indexes the same rows in
// every layer of its pool. KV-shared layers and the assistant read their owner's tensors.
struct KvStorage {
  std::vector<Tensor> k, v;  // indexed by layer; undefined for KV-shared layers
  int full_pages = 0, sliding_pages = 0;
};

// One sequence of a forward batch: `q_len` new tokens whose KV goes to slots prefix_len ..
// prefix_len+q_len-1.
struct SeqBatchEntry {
  int q_len = 0;
  int prefix_len = 0;
  const std::vector<int32_t>* full_pages = nullptr;     // page table of the full pool
  const std::vector<int32_t>* sliding_pages = nullptr;  // page table of the sliding pool (-1: freed)
};

struct ForwardBatch {
  std::vector<int32_t> tokens;     // [T] token ids, sequences concatenated in order
  std::vector<int32_t> positions;  // [T]
  std::vector<SeqBatchEntry> seqs;
  std::vector<uint8_t> tree_mask;  // optional [T, max_q]: row r sees block key j of its sequence
  int tree_max_q = 0;
  std::vector<int32_t> output_rows;  // rows whose logits (and hidden) are returned
};

// Page ids (one per pool) that padding sequences of graph batches may write to.
struct PadPages {
  int32_t full = -1, sliding = -1;
};

struct ForwardOutput {
  Tensor logits;  // [R, V] F32 on the backend device, after the final softcap
  Tensor hidden;  // [R, H] act dtype: post-final-norm hidden (what the MTP assistant consumes)
};

// Attention metadata of a batch on the device (shared with the assistant, which reuses the target's KV
// pages). All of it lives in one I32 buffer, uploaded in one transfer.
struct DeviceMeta {
  AttnMeta attn;
  KvPageTable full, sliding;
  Tensor tokens;       // [T] I32 (undefined when the batch has no tokens)
  Tensor output_rows;  // [R] I32 rows whose logits/hidden are returned
};
// Sizes of the packed metadata. A batch packs into any layout at least as wide (page tables are padded with
// -1), so a CUDA graph can keep one layout for many batches.
struct MetaDims {
  int S = 0, T = 0, R = 0;                // sequences, query rows, output rows
  int max_q = 0;                          // largest q_len
  int full_width = 1, sliding_width = 1;  // page table widths
  int mask_q = 0;                         // tree mask row width (0: no mask)
  bool tokens = false;
};
MetaDims meta_dims(const ForwardBatch& b);
void pack_meta(const ForwardBatch& b, const MetaDims& d, std::vector<int32_t>& words);  // host image
Tensor alloc_meta(Backend& be, const MetaDims& d);                                      // device buffer
DeviceMeta meta_views(const Tensor& buf, const MetaDims& d, bool block_keys);
// pack + alloc + one copy + views. `block_keys` false = read-only queries.
DeviceMeta upload_meta(Backend& be, const ForwardBatch& b, bool block_keys);

// What one decoder layer reads besides its weights. The target and the assistant run the same layer code.
struct LayerContext {
  const AttnMeta* attn = nullptr;
  const KvPageTable* pages = nullptr;  // of the pool the layer's KV lives in
  Tensor k_cache, v_cache;             // the KV-owning layer's cache (written first if the layer owns it)
  int window = 0;                      // 0: full attention
  const Tensor* inv_freq = nullptr;    // RoPE of the layer type
  Tensor ple;                          // [T, P] per-layer input, undefined without PLE
  // [T, H] in: this layer's normed input input_layernorm(x); out: the next layer's, when next_input_norm is
  // given (its input_layernorm weight: the norm is fused into this layer's last residual add).
  Tensor h;
  const Tensor* next_input_norm = nullptr;
};

// One Gemma4TextDecoderLayer on the residual stream x [T, H] (gemma4-architecture.md §2.9), in place. `lw`
// has its projections fused (fuse_projections).
void decoder_layer(Backend& be, Tensor x, const LayerWeights& lw, const LayerSpec& s, const TextConfig& c,
                   const LayerContext& ctx);

// Concatenates projections that read the same input, so each runs as one: gate_proj [I, H] and up_proj
// [I, H] become gate_proj = [gate | up] [2I, H]; q_proj, k_proj (and v_proj) become q_proj = [q | k | v]
// [(nh + 2 kvh) D, H] (k_proj, v_proj undefined; [q | k] when V is K). The separate tensors are released.
// Both models do this once at construction; a no-op when already fused.
void fuse_projections(Backend& be, LayerWeights& lw);

// Inverse RoPE frequencies [D/2] for one layer type (default, or proportional with partial rotation).
std::vector<float> rope_inv_freq(const RopeParams& p, int head_dim);

class Gemma4Model {
 public:
  static std::unique_ptr<Gemma4Model> load(const std::string& model_dir, Backend& be);
  Gemma4Model(ModelConfig cfg, TargetWeights w, Backend& be);

  const TextConfig& config() const { return cfg_.text; }
  const ModelConfig& model_config() const { return cfg_; }
  Backend& backend() const { return be_; }
  const TargetWeights& weights() const { return w_; }
  const Tensor& inv_freq(LayerType t) const {
    return t == LayerType::Sliding ? inv_freq_sliding_ : inv_freq_full_;
  }
  // bf16(sqrt(H)) when activations are bf16, as HF rounds the scale to the model dtype; sqrt(H) in fp32.
  float embed_scale() const { return embed_scale_; }

  KvStorage allocate_kv(int full_pages, int sliding_pages) const;
  ForwardOutput forward(const ForwardBatch& batch, KvStorage& kv) const;
  // The device part of forward(): only device ops (no host transfers), so it can be recorded into a graph.
  ForwardOutput forward_device(const DeviceMeta& meta, KvStorage& kv) const;

 private:
  ModelConfig cfg_;
  TargetWeights w_;
  Backend& be_;
  Tensor inv_freq_sliding_, inv_freq_full_;
  float embed_scale_ = 1.0f;
};

}  // namespace mtpserve
