// The Gemma 4 MTP assistant (Gemma4AssistantForCausalLM): a small drafter with no KV cache of its own. Each
// step projects concat(target_embed(token), h) down, runs Q-only decoder layers that attend to the target's
// committed KV (the last non-shared target layer of each type), and projects back up into the recurrent
// state; logits come from its own tied embedding or from the centroid head (mtp-algorithm.md §1).
// A model class of its own: nothing of the target's set-up is inherited.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/gemma4.h"

namespace mtpserve {

struct AssistantWeights {
  Tensor embed_tokens;     // [V, Ha]  the output head only (never an input table)
  Tensor norm;             // [Ha]
  Tensor pre_projection;   // [Ha, 2*Hb]
  Tensor post_projection;  // [Hb, Ha]
  Tensor centroids;        // [C, Ha]  (use_ordered_embeddings)
  Tensor token_ordering;   // [V] I64  (use_ordered_embeddings)
  std::vector<LayerWeights> layers;
};

// Rows to draft for: each row belongs to one target sequence (several rows per sequence for trees) and
// attends to that sequence's committed KV [0, committed_len).
struct DraftRows {
  std::vector<int32_t> tokens;      // [B] input token of each row
  std::vector<SeqBatchEntry> seqs;  // q_len = rows of the sequence, prefix_len = its committed length
};

struct DraftStepOutput {
  Tensor hidden;  // [B, Hb] post_projection(norm(x)): the next recurrent state
  Tensor y;       // [B, Ha] norm(x): what the head reads
  // Dense head: logits [B, V] F32. Centroid head: cand_ids [B, N] I32 and cand_scores [B, N] F32, N = top_k
  // clusters * tokens per cluster (every other token has logit -inf).
  Tensor logits, cand_ids, cand_scores;
};

class Gemma4Assistant {
 public:
  // Loads the checkpoint and binds every layer to the target's KV owner layer of its type; a geometry or RoPE
  // mismatch with the target is a load-time error naming both layers.
  static std::unique_ptr<Gemma4Assistant> load(const std::string& dir, const Gemma4Model& target,
                                               int query_pos_offset = 1, DummyWeights* dummy = nullptr);
  Gemma4Assistant(AssistantConfig cfg, AssistantWeights w, const Gemma4Model& target, int query_pos_offset);

  const AssistantConfig& config() const { return cfg_; }
  bool centroid_head() const { return cfg_.use_ordered_embeddings; }
  int query_pos_offset() const { return offset_; }
  // Target layer whose KV assistant layer l reads.
  int owner_layer(int l) const { return owner_[l]; }

  // One drafting step for all rows. `h` [B, Hb] is the recurrent state (the target's post-norm hidden at the
  // last committed position for the first step). Query position: committed_len - 1 + query_pos_offset.
  DraftStepOutput step(const DraftRows& rows, const Tensor& h, KvStorage& target_kv) const;
  // The device part of step(): `meta` from upload_meta(..., block_keys=false) of the rows' batch (tokens =
  // the rows' input tokens, positions = committed_len - 1 + offset). Only device ops: graph-recordable.
  DraftStepOutput step_device(const DeviceMeta& meta, const Tensor& h, KvStorage& target_kv) const;
  // The greedy draft token of each row of a step, picked on the device: the argmax of the dense logits or of
  // the centroid head's candidates. ids [B] I32.
  void greedy_ids(Tensor ids, const DraftStepOutput& o) const;
  std::vector<int32_t> greedy_tokens(const DraftStepOutput& o) const;  // the same, read to the host

 private:
  AssistantConfig cfg_;
  AssistantWeights w_;
  const Gemma4Model& target_;
  int offset_;
  std::vector<int> owner_;
  Tensor inv_freq_sliding_, inv_freq_full_;
};

}  // namespace mtpserve
