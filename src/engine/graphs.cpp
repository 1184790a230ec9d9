#include "engine/graphs.h"

#include <algorithm>

namespace mtpserve {

int graph_bucket(int n) {
  MTP_ASSERT(n > 0);
  int b = 1;
  while (b < n && b < 8) b *= 2;
  if (b >= n) return b;
  if (n <= 64) return (n + 7) / 8 * 8;  // 16, 24, ..., 64
  b = 64;
  while (b < n) b = (b + b / 4 + 15) / 16 * 16;  // 80, 112, 144, 192, 240, ...
  return b;
}

GraphPadding::GraphPadding(const Gemma4Model& m, KvStorage& kv, PadPages pad, int max_len, int max_seqs)
    : width((max_len + kPageSize - 1) / kPageSize + 1),
      max_seqs(max_seqs),
      full{pad.full},
      sliding{pad.sliding} {
  MTP_ASSERT(max_len > 0 && max_seqs > 0);
  // Zero the pad pages once so that padding rows only ever read finite keys.
  Backend& be = m.backend();
  const TextConfig& c = m.config();
  for (int l = 0; l < c.num_hidden_layers; l++) {
    if (!kv.k[l].defined()) continue;
    int64_t p = c.layers[l].type == LayerType::Full ? pad.full : pad.sliding;
    MTP_ASSERT(p >= 0 && (p + 1) * kPageSize <= kv.k[l].dim(0));
    be.fill_zero(kv.k[l].rows(p * kPageSize, (p + 1) * kPageSize));
    be.fill_zero(kv.v[l].rows(p * kPageSize, (p + 1) * kPageSize));
  }
}

bool GraphPadding::fits(const std::vector<SeqBatchEntry>& seqs) const {
  if (seqs.empty() || int(seqs.size()) > max_seqs) return false;
  for (const SeqBatchEntry& e : seqs)
    if ((e.full_pages && int(e.full_pages->size()) > width) ||
        (e.sliding_pages && int(e.sliding_pages->size()) > width))
      return false;
  return true;
}

TargetGraphs::TargetGraphs(const Gemma4Model& m, KvStorage& kv, PadPages pad, int max_len, int max_seqs)
    : m_(m), kv_(kv), pad_(m, kv, pad, max_len, max_seqs) {}

bool TargetGraphs::fits(const ForwardBatch& b) const {
  const int S = int(b.seqs.size()), T = int(b.tokens.size());
  if (!pad_.fits(b.seqs) || T == 0) return false;
  const int Q = b.seqs[0].q_len;
  if (Q < 1 || Q > kPageSize || T != S * Q || int(b.output_rows.size()) != T) return false;
  for (const SeqBatchEntry& e : b.seqs)
    if (e.q_len != Q) return false;
  for (int i = 0; i < T; i++)
    if (b.output_rows[i] != i) return false;
  return b.tree_mask.empty() || b.tree_max_q == Q;
}

void TargetGraphs::add_padding(ForwardBatch& b, int seqs, int q_len, bool tree) const {
  // Padding sequences: q_len rows each at slots 0..q_len-1 of the pad page, attending to their own rows only.
  for (int s = int(b.seqs.size()); s < seqs; s++) {
    for (int i = 0; i < q_len; i++) {
      b.tokens.push_back(0);
      b.positions.push_back(i);
      b.output_rows.push_back(s * q_len + i);
      if (tree)
        for (int j = 0; j < q_len; j++) b.tree_mask.push_back(j <= i);
    }
    b.seqs.push_back({q_len, 0, &pad_.full, &pad_.sliding});
  }
}

ForwardOutput TargetGraphs::forward(const ForwardBatch& b) {
  MTP_ASSERT(fits(b));
  Backend& be = m_.backend();
  const int S = int(b.seqs.size()), Q = b.seqs[0].q_len, Sb = graph_bucket(S), Tb = Sb * Q;
  const bool tree = !b.tree_mask.empty();
  ForwardBatch pb = b;
  add_padding(pb, Sb, Q, tree);
  auto [it, fresh] = buckets_.try_emplace({Sb, Q, tree});
  Bucket& bk = it->second;
  if (fresh) {
    MetaDims& d = bk.dims;
    d.S = Sb, d.T = d.R = Tb, d.max_q = Q, d.mask_q = tree ? Q : 0, d.tokens = true;
    d.full_width = d.sliding_width = pad_.width;
    bk.buf = alloc_meta(be, d);
    bk.meta = meta_views(bk.buf, d, /*block_keys=*/true);
  }
  pack_meta(pb, bk.dims, words_);
  be.copy_from_host(bk.buf, words_.data());
  if (!bk.graph) {
    // First use: run it eagerly (which also initialises cuBLAS and loads kernels outside the capture), then
    // record the same ops for the next batches of this bucket.
    ForwardOutput o = m_.forward_device(bk.meta, kv_);
    bk.graph = be.capture([this, &bk] { bk.out = m_.forward_device(bk.meta, kv_); });
    return o;
  }
  bk.graph->replay();
  return bk.out;
}

void TargetGraphs::warm(int seqs, int q_len, bool tree) {
  MTP_ASSERT(seqs > 0 && seqs <= pad_.max_seqs && q_len > 0 && q_len <= kPageSize);
  ForwardBatch b;  // every sequence a padding one
  add_padding(b, seqs, q_len, tree);
  if (tree) b.tree_max_q = q_len;
  forward(b);
}

void warm_step_graphs(TargetGraphs& t, DraftGraphs* d, int max_seqs, int k, bool tree, int verify_rows) {
  for (int s = 1; s <= max_seqs;) {
    const int b = graph_bucket(s), seqs = std::min(b, max_seqs);
    t.warm(seqs, 1, false);
    if (k > 0) t.warm(seqs, verify_rows, tree);
    if (k > 0 && !tree && d) d->warm(seqs, k);
    s = b + 1;
  }
}

DraftGraphs::DraftGraphs(const Gemma4Assistant& a, const Gemma4Model& target, KvStorage& kv, PadPages pad,
                         int max_len, int max_seqs)
    : a_(a), target_(target), kv_(kv), pad_(target, kv, pad, max_len, max_seqs) {}

bool DraftGraphs::fits(const DraftRows& rows) const {
  if (!pad_.fits(rows.seqs) || rows.tokens.size() != rows.seqs.size()) return false;
  for (const SeqBatchEntry& e : rows.seqs)
    if (e.q_len != 1 || e.prefix_len < 1) return false;
  return true;
}

// The k-step loop on the device: each step's greedy pick is the next step's input token.
void DraftGraphs::record(Bucket& bk, int k) {
  DeviceMeta m = bk.meta;
  Tensor h = bk.h;
  for (int s = 0; s < k; s++) {
    DraftStepOutput o = a_.step_device(m, h, kv_);
    Tensor next = bk.drafts.rows(s, s + 1).view({bk.dims.S});
    a_.greedy_ids(next, o);
    m.tokens = next;
    h = o.hidden;
  }
}

void DraftGraphs::warm(int seqs, int k) {
  MTP_ASSERT(seqs > 0 && seqs <= pad_.max_seqs && k > 0);
  Backend& be = target_.backend();
  DraftRows rows;  // padding rows: one committed slot (slot 0 of the pad page)
  for (int s = 0; s < seqs; s++) {
    rows.tokens.push_back(0);
    rows.seqs.push_back({1, 1, &pad_.full, &pad_.sliding});
  }
  Tensor h0 = be.alloc(be.act_dtype(), {seqs, target_.config().hidden_size});
  be.fill_zero(h0);
  draft(rows, h0, k);
}

std::vector<int32_t> DraftGraphs::draft(const DraftRows& rows, const Tensor& h0, int k) {
  MTP_ASSERT(fits(rows) && k > 0);
  Backend& be = target_.backend();
  const int S = int(rows.seqs.size()), Sb = graph_bucket(S);
  const int64_t Hb = target_.config().hidden_size;
  MTP_ASSERT(h0.dim(0) == S && h0.dim(1) == Hb && h0.dtype == be.act_dtype());
  // Read-only queries at committed_len - 1 + offset; padding rows sit at slot 0 of the pad page.
  ForwardBatch fb;
  fb.tokens = rows.tokens;
  fb.seqs = rows.seqs;
  for (const SeqBatchEntry& e : rows.seqs) fb.positions.push_back(e.prefix_len - 1 + a_.query_pos_offset());
  for (int s = S; s < Sb; s++) {
    fb.tokens.push_back(0);
    fb.positions.push_back(a_.query_pos_offset());
    fb.seqs.push_back({1, 1, &pad_.full, &pad_.sliding});
  }
  auto [it, fresh] = buckets_.try_emplace({Sb, k});
  Bucket& bk = it->second;
  if (fresh) {
    MetaDims& d = bk.dims;
    d.S = d.T = Sb, d.max_q = 1, d.tokens = true;
    d.full_width = d.sliding_width = pad_.width;
    bk.buf = alloc_meta(be, d);
    bk.meta = meta_views(bk.buf, d, /*block_keys=*/false);
    bk.h = be.alloc(be.act_dtype(), {Sb, Hb});
    be.fill_zero(bk.h);
    bk.drafts = be.alloc(DType::I32, {k, Sb});
  }
  pack_meta(fb, bk.dims, words_);
  be.copy_from_host(bk.buf, words_.data());
  be.copy(bk.h.rows(0, S), h0);
  if (!bk.graph) {
    record(bk, k);  // eagerly first (see TargetGraphs::forward), then into the graph
    bk.graph = be.capture([this, &bk, k] { record(bk, k); });
  } else {
    bk.graph->replay();
  }
  std::vector<int32_t> all(size_t(k) * Sb), out(size_t(k) * S);
  be.copy_to_host(all.data(), bk.drafts);
  for (int s = 0; s < k; s++) std::copy_n(all.begin() + size_t(s) * Sb, S, out.begin() + size_t(s) * S);
  return out;
}

}  // namespace mtpserve
