// The op contract: every op the Gemma 4 target and assistant forwards use, with its shapes. The model code is
// written once against this interface; the CPU backend is the executable specification (fp32 math), the CUDA
// backend is where speed lives. A new op is added here with a CPU implementation and a test first.
//
// Conventions: tensors are row-major and contiguous; "[T, H]" means T rows of H elements. Activations use
// act_dtype() (F32 on CPU, BF16 on CUDA); weights may be BF16/F32 as stored; index tensors are I32.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace mtpserve {

// Attention metadata for one batch of sequences. Query rows of sequence s are [cu_q[s], cu_q[s+1]).
// Cache slots of sequence s: [0, prefix_len[s]) are committed tokens whose position equals the slot; when
// block_keys is set, the sequence's query rows were also written to slots prefix_len[s] + i (i = row index
// within the sequence) and are visible as keys: row i sees block key j iff j <= i (causal), or, with a tree
// mask, iff tree_mask[row, j] != 0. Slot j lives at physical row page_table[s, j / page_size] * page_size +
// j % page_size of the layer's cache.
struct AttnMeta {
  int num_seqs = 0;
  int max_q = 0;           // max query rows of one sequence (tree mask row width)
  Tensor cu_q;             // [S+1] I32
  Tensor prefix_len;       // [S] I32
  Tensor positions;        // [T] I32 position of each query row (RoPE phase and masks)
  Tensor tree_mask;        // [T, max_q] U8, optional (undefined: causal within the block)
  bool block_keys = true;  // false: read-only queries (the assistant's Q-only layers)
};

struct KvPageTable {
  Tensor pages;  // [S, max_pages] I32; -1 for pages already returned to the pool
  int page_size = 16;
};

// Per-row inputs of Backend::sample_rows, on the backend's device (views of one upload are fine).
struct SampleRowsArgs {
  Tensor params;    // [R, 4] F32: temperature, top_p, min_p, top_k (an integer; 0 = off) of each row
  Tensor drafts;    // [R, C] I32: the draft ids below each row, -1 padded (a chain row 1, a tree node more)
  Tensor uniforms;  // [R] I64: 64 random bits per row; u_r = (uniforms[r] >> 11) * 2^-53 in [0, 1)
  Tensor pen_off;   // [R + 1] I32: row r's penalties are entries [pen_off[r], pen_off[r + 1]) of:
  Tensor pen_ids;   // [P] I32 token ids, ascending and unique within a row
  Tensor pen_val;   // [P] F32 amount subtracted from that logit (presence + frequency * count)
};

// A recorded sequence of ops (a CUDA graph), replayed on the same device addresses. Its inputs are the
// tensors the recorded ops read: update them (copy_from_host) before replay(); outputs are read after.
class Graph {
 public:
  virtual ~Graph() = default;
  virtual void replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  virtual DType act_dtype() const = 0;

  // --- memory ---
  virtual Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) = 0;
  // A checkpoint tensor (CPU, any float dtype) in the backend's weight storage; may alias the mmap on CPU.
  virtual Tensor upload_weight(const Tensor& host) = 0;
  virtual void copy_from_host(Tensor dst, const void* src) = 0;  // dst.nbytes() bytes
  virtual void copy_to_host(void* dst, const Tensor& src) = 0;   // src.nbytes() bytes
  virtual void copy(Tensor dst, const Tensor& src) = 0;          // same device, same dtype and size
  virtual void fill_zero(Tensor dst) = 0;
  // Uninitialised storage for a weight built from other weights on the device (e.g. a fused projection):
  // exact size, outside any activation cache, freed with its last Tensor. Default: alloc().
  virtual Tensor alloc_weight(DType dtype, std::initializer_list<int64_t> shape) {
    return alloc(dtype, shape);
  }
  virtual void synchronize() {}
  // Bytes the backend could still allocate on its device (cached free blocks included); -1: unknown.
  virtual int64_t free_memory() { return -1; }

  // --- elementwise and norms ---
  // out[T, H] = table[ids[t], :] * scale  (table [V, H]; the caller rounds scale as HF does)
  virtual void embed(Tensor out, const Tensor& ids, const Tensor& table, float scale) = 0;
  // out[R, D] = x * rsqrt(mean(x^2) + eps) * w   (w [D], or undefined for the weightless variant)
  virtual void rms_norm(Tensor out, const Tensor& x, const Tensor& w, float eps) = 0;
  virtual void add(Tensor out, const Tensor& a, const Tensor& b) = 0;  // same shapes
  virtual void scale(Tensor out, const Tensor& x, float s) = 0;        // out = x * s
  // out[R, D] = x[R, D] * w[D] (broadcast over rows; w may be a [1] scalar tensor)
  virtual void mul_bcast(Tensor out, const Tensor& x, const Tensor& w) = 0;
  // Post-norm and residual add of a sub-block: x[R, D] = (x + rms_norm(o[R, D]) * w[D]) * scale, scale a [1]
  // tensor (the layer_scalar) or undefined for 1. Rounds as rms_norm, add, mul_bcast in turn would.
  virtual void rms_norm_add(Tensor x, const Tensor& o, const Tensor& w, float eps, const Tensor& scale) = 0;
  // The same, then the next sub-block's normed input: h[R, D] = rms_norm(new x) * hw[D].
  virtual void rms_norm_add_norm(Tensor x, Tensor h, const Tensor& o, const Tensor& w, const Tensor& hw,
                                 float eps, const Tensor& scale) = 0;
  // out[M, I] = gelu_tanh(gate[M, I]) * up[M, I]
  virtual void gelu_mul(Tensor out, const Tensor& gate, const Tensor& up) = 0;
  // out[M, I] = gelu_tanh(gu[M, :I]) * gu[M, I:]   (fused gate|up projection output [M, 2I])
  virtual void gelu_mul_fused(Tensor out, const Tensor& gu) = 0;
  // out[B, A, C] = x[A, B, C]
  virtual void transpose01(Tensor out, const Tensor& x) = 0;
  // out[R, C] = x[rows[r], :]  (x [T, C], rows [R] I32)
  virtual void gather_rows(Tensor out, const Tensor& x, const Tensor& rows) = 0;
  // x = cap * tanh(x / cap), in place
  virtual void softcap(Tensor x, float cap) = 0;

  // --- linear ---
  // out[M, N] = x[M, K] @ w[N, K]^T  (PyTorch Linear layout)
  virtual void linear(Tensor out, const Tensor& x, const Tensor& w) = 0;
  // out[M, I] = gelu_tanh(x w_g^T) * (x w_u^T) for the fused gate|up projection w = [w_g | w_u] [2I, K]; with
  // up [M, I] given, gelu_tanh(x w^T) * up (w [I, K]). Rounded as linear then gelu_mul(_fused) round.
  // Default: exactly that pair of ops.
  virtual void linear_gelu(Tensor out, const Tensor& x, const Tensor& w, const Tensor& up = Tensor());

  // --- attention ---
  // In place on x [T, heads, D]: half-split (NeoX) rotation of pairs (j, j + D/2) by angle
  // positions[t] * inv_freq[j]  (inv_freq [D/2] F32; zero entries rotate nothing).
  virtual void rope(Tensor x, const Tensor& positions, const Tensor& inv_freq) = 0;
  // The per-head work between the q/k/v projections and attention, in place: q[T, nh, D] =
  // rope(rms_norm(q) * q_norm[D]); when k is defined also k[T, kvh, D] = rope(rms_norm(k) * k_norm[D]) and
  // v[T, kvh, D] = rms_norm(v) (no weight). Rounds as rms_norm then rope would.
  virtual void qkv_norm_rope(Tensor q, Tensor k, Tensor v, const Tensor& q_norm, const Tensor& k_norm,
                             const Tensor& positions, const Tensor& inv_freq, float eps) = 0;
  // qkv_norm_rope and kv_write from one fused projection qkv [T, nh + 2 kvh, D] (heads q | k | v), or
  // [T, nh + kvh, D] when V is K (attention_k_eq_v: v = rms_norm(k before its norm and RoPE)): q [T, nh, D]
  // receives the normed, rotated queries; k and v go straight to their cache slots (kvh from k_cache).
  // Default: split the heads, then qkv_norm_rope and kv_write.
  virtual void qkv_norm_rope_kv(Tensor q, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm,
                                const Tensor& positions, const Tensor& inv_freq, float eps, Tensor k_cache,
                                Tensor v_cache, const AttnMeta& m, const KvPageTable& pt);
  // Write k, v [T, kv_heads, D] of the query rows to their cache slots (prefix_len[s] + i) of
  // k_cache, v_cache [num_slots, kv_heads, D].
  virtual void kv_write(Tensor k_cache, Tensor v_cache, const Tensor& k, const Tensor& v, const AttnMeta& m,
                        const KvPageTable& pt) = 0;
  // out[T, nh, D] = softmax(q k^T * 1.0) v over the visible slots (see AttnMeta), GQA (head h reads kv head
  // h / (nh / kv_heads)); window > 0 also requires q_pos - k_pos < window. Softmax in fp32.
  virtual void attention(Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         const AttnMeta& m, const KvPageTable& pt, int window) = 0;

  // --- MoE (26B-A4B) ---
  // From router logits [T, E]: softmax (fp32), top-k, renormalise, times per_expert_scale[e].
  // weights [T, k] F32, experts [T, k] I32.
  virtual void moe_route(Tensor weights, Tensor experts, const Tensor& logits, const Tensor& per_expert_scale,
                         int top_k) = 0;
  // out[T, H] = sum_k weights[t,k] * down[e] @ (gelu(gate_up[e][:I] @ x) * (gate_up[e][I:] @ x)),
  // gate_up [E, 2I, H], down [E, H, I].
  virtual void moe_experts(Tensor out, const Tensor& x, const Tensor& weights, const Tensor& experts,
                           const Tensor& gate_up, const Tensor& down) = 0;

  // --- heads and sampling ---
  // out[R] I32 = argmax over the last dim of x [R, V] (first index on ties)
  virtual void argmax(Tensor out, const Tensor& x) = 0;
  // Cast/copy into an F32 tensor of the same shape.
  virtual void to_f32(Tensor out, const Tensor& x) = 0;
  // out[R] I32 = ids[r, argmax_j scores[r, j]]  (scores [R, N] F32, ids [R, N] I32; first j on ties): the
  // greedy pick among candidates, e.g. of the centroid head.
  virtual void argmax_ids(Tensor out, const Tensor& scores, const Tensor& ids) = 0;
  // Sampled verification, per row r of logits [R, V] F32: p_r = the row's processed target distribution
  // (sample_probs below: penalties, temperature, top-k, top-p, min-p in the stable sort's order,
  // renormalised; one-hot at the first argmax when temperature <= 0 or top_k == 1).
  // out_pd [R, C] F32 = p_r(drafts[r, j]) (0 for -1); out_tok [R] I32 = the inverse-CDF sample at u_r from
  // p_r with every draft of the row zeroed, renormalised (-1 when nothing is left). Only these numbers need
  // to reach the host: acceptance is host logic over them (engine/accept.h).
  virtual void sample_rows(Tensor out_pd, Tensor out_tok, const Tensor& logits, const SampleRowsArgs& a) = 0;

  // --- graphs ---
  // Record `ops` (which must not copy to or from the host) into a Graph without running them. Memory that
  // `ops` allocates belongs to the graph for its lifetime. The CPU backend records the closure itself:
  // replay() runs it again, so graph users run the same code on both backends.
  virtual std::unique_ptr<Graph> capture(const std::function<void()>& ops);
  // True when capture() gives real device graphs (worth their padding to batch buckets).
  virtual bool native_graphs() const { return false; }

  // --- MTP assistant ---
  // Centroid head (use_ordered_embeddings): given centroid scores [B, C] F32 or BF16 (= y @ centroids^T),
  // take the top_k clusters of each row (largest first, lower index on ties); their members are the canonical
  // ids token_ordering[c * (V/C) + j] (token_ordering [V] I64). cand_ids [B, top_k * V/C] I32 receives them
  // in cluster-rank order and cand_scores [B, top_k * V/C] F32 their logits y . embed[id] (embed [V, Ha]).
  // Never builds a [B, V] row. Non-pure so that a backend can add it after the core ops.
  virtual void centroid_candidates(Tensor cand_ids, Tensor cand_scores, const Tensor& y,
                                   const Tensor& centroid_scores, const Tensor& token_ordering,
                                   const Tensor& embed, int top_k) {
    fail("backend {}: centroid_candidates is not implemented", name());
  }
};

std::unique_ptr<Backend> make_cpu_backend();

// The definition of sample_rows' math (the CPU backend runs it; the engine's sampler reuses it).
// sample_probs: the processed distribution of one row of already-penalised logits l[V]: greedy (temperature
// <= 0 or top_k == 1) one-hot at the first argmax; else softmax(l / temperature), then top-k, top-p (the
// smallest prefix whose mass reaches top_p), min-p (relative to the top probability) over the stable sort by
// probability, renormalised when any filter is on.
std::vector<float> sample_probs(std::vector<float> l, float temperature, int top_k, float top_p, float min_p);
// The first v with u * sum(p) < p[0] + ... + p[v] (p need not be normalised); -1 when p has no mass.
int32_t inverse_cdf(const std::vector<float>& p, double u);

}  // namespace mtpserve
