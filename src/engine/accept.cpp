#include "engine/accept.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "core/error.h"

namespace mtpserve {
namespace {

// Block indices of the children of each row of a block (row 0 = the root / bonus), in block order.
std::vector<std::vector<int>> block_children(const BlockRows& b) {
  std::vector<std::vector<int>> kids(size_t(b.rows()));
  const bool tree = b.parent && !b.parent->empty();
  for (int i = 1; i < b.rows(); i++) kids[size_t(tree ? (*b.parent)[i - 1] : i - 1)].push_back(i);
  return kids;
}

int max_children(const std::vector<BlockRows>& blocks) {
  size_t C = 1;
  for (const BlockRows& b : blocks)
    for (const auto& k : block_children(b)) C = std::max(C, k.size());
  return int(C);
}

int total_rows(const std::vector<BlockRows>& blocks) {
  int R = 0;
  for (const BlockRows& b : blocks) R += b.rows();
  return R;
}

// A typed view at a byte offset of one upload buffer (shares its holder).
Tensor view_at(const Tensor& buf, size_t off, DType dt, std::initializer_list<int64_t> shape) {
  Tensor t = buf;
  t.data = static_cast<char*>(buf.data) + off;
  t.dtype = dt;
  t.set_shape(shape);
  return t;
}

// Whether a child with probability pd is accepted when `rest` is the mass its rejected elder siblings left:
// with probability pd / rest. Certain outcomes draw nothing (greedy rows stay deterministic).
bool try_child(double pd, double rest, Rng& rng) {
  if (pd <= 0) return false;
  if (pd >= rest) return true;
  return rng.uniform() * rest < pd;
}

}  // namespace

RowDraws draw_rows(Backend& be, const Tensor& logits, const std::vector<BlockRows>& blocks) {
  const int R = total_rows(blocks), C = max_children(blocks);
  MTP_ASSERT(logits.ndim == 2 && logits.dim(0) == R);
  std::vector<int64_t> uni(size_t(R), 0);
  std::vector<float> params(size_t(R) * 4);
  std::vector<int32_t> drafts(size_t(R) * C, -1), off(size_t(R) + 1, 0), ids;
  std::vector<float> vals;
  int r = 0;
  for (const BlockRows& b : blocks) {
    const SamplingParams& sp = *b.sp;
    const auto kids = block_children(b);
    const bool tree = b.parent && !b.parent->empty();
    for (int n = 0; n < b.rows(); n++, r++) {
      params[size_t(r) * 4 + 0] = sp.temperature;
      params[size_t(r) * 4 + 1] = sp.top_p;
      params[size_t(r) * 4 + 2] = sp.min_p;
      params[size_t(r) * 4 + 3] = float(std::min(sp.top_k, 1 << 24));  // exact in F32; >= V is off anyway
      if (!sp.greedy()) uni[size_t(r)] = int64_t(b.rng->bits());
      for (size_t j = 0; j < kids[size_t(n)].size(); j++)
        drafts[size_t(r) * C + j] = (*b.drafts)[size_t(kids[size_t(n)][j] - 1)];
      if (has_penalties(sp)) {
        // The counts at this row: the request's, plus the drafts on the path from the root to this row.
        std::map<int32_t, int> cnt(b.pen->counts.begin(), b.pen->counts.end());
        for (int a = n; a > 0; a = tree ? (*b.parent)[size_t(a - 1)] : a - 1)
          cnt[(*b.drafts)[size_t(a - 1)]]++;
        for (auto [tok, c] : cnt) ids.push_back(tok), vals.push_back(penalty_delta(sp, c));
      }
      off[size_t(r) + 1] = int32_t(ids.size());
    }
  }
  // One upload: uniforms (8-byte aligned, first), then the 4-byte arrays.
  const int64_t P = int64_t(ids.size());
  const size_t o_par = size_t(R) * 8, o_dr = o_par + size_t(R) * 16, o_off = o_dr + size_t(R) * C * 4,
               o_ids = o_off + (size_t(R) + 1) * 4, o_val = o_ids + size_t(P) * 4,
               bytes = o_val + size_t(P) * 4;
  std::vector<char> host(bytes);
  auto put = [&](size_t at, const void* src, size_t n) {  // empty vectors may have no storage at all
    if (n) std::memcpy(host.data() + at, src, n);
  };
  put(0, uni.data(), o_par);
  put(o_par, params.data(), o_dr - o_par);
  put(o_dr, drafts.data(), o_off - o_dr);
  put(o_off, off.data(), o_ids - o_off);
  put(o_ids, ids.data(), o_val - o_ids);
  put(o_val, vals.data(), bytes - o_val);
  Tensor buf = be.alloc(DType::U8, {int64_t(bytes)});
  be.copy_from_host(buf, host.data());
  SampleRowsArgs a;
  a.uniforms = view_at(buf, 0, DType::I64, {R});
  a.params = view_at(buf, o_par, DType::F32, {R, 4});
  a.drafts = view_at(buf, o_dr, DType::I32, {R, C});
  a.pen_off = view_at(buf, o_off, DType::I32, {R + 1});
  a.pen_ids = view_at(buf, o_ids, DType::I32, {P});
  a.pen_val = view_at(buf, o_val, DType::F32, {P});
  // One download: pd [R, C] then tok [R].
  Tensor out = be.alloc(DType::I32, {int64_t(R) * (C + 1)});
  be.sample_rows(view_at(out, 0, DType::F32, {R, C}), view_at(out, size_t(R) * C * 4, DType::I32, {R}),
                 logits, a);
  std::vector<int32_t> o(size_t(R) * (C + 1));
  be.copy_to_host(o.data(), out);
  RowDraws d;
  d.C = C;
  d.pd.resize(size_t(R) * C);
  std::memcpy(d.pd.data(), o.data(), d.pd.size() * 4);
  d.tok.assign(o.begin() + long(R) * C, o.end());
  return d;
}

RowDraws argmax_rows(Backend& be, const Tensor& logits, const std::vector<BlockRows>& blocks) {
  const int R = total_rows(blocks), C = max_children(blocks);
  MTP_ASSERT(logits.ndim == 2 && logits.dim(0) == R);
  Tensor ids = be.alloc(DType::I32, {R});
  be.argmax(ids, logits);
  std::vector<int32_t> top(static_cast<size_t>(R));
  be.copy_to_host(top.data(), ids);
  RowDraws d;
  d.C = C;
  d.pd.assign(size_t(R) * C, 0.0f);
  d.tok = top;
  int r = 0;
  for (const BlockRows& b : blocks) {
    const auto kids = block_children(b);
    for (int n = 0; n < b.rows(); n++, r++)
      for (size_t j = 0; j < kids[size_t(n)].size(); j++)
        if ((*b.drafts)[size_t(kids[size_t(n)][j] - 1)] == top[size_t(r)]) {
          d.pd[size_t(r) * C + j] = 1.0f;
          d.tok[size_t(r)] = -1;  // the argmax is a child: nothing is left once the children are removed
        }
  }
  return d;
}

RowDraws step_draws(Backend& be, const Tensor& logits, const std::vector<BlockRows>& blocks,
                    std::vector<std::vector<float>>& host_logits) {
  bool top_only = true;
  for (const BlockRows& b : blocks) top_only = top_only && b.sp->top_only();
  host_logits.assign(blocks.size(), {});
  const int64_t V = logits.dim(-1);
  int row = 0;
  for (size_t i = 0; i < blocks.size(); row += blocks[i].rows(), i++) {
    if (!blocks[i].sp->want_logprobs) continue;
    host_logits[i].resize(size_t(blocks[i].rows()) * V);
    be.copy_to_host(host_logits[i].data(), logits.rows(row, row + blocks[i].rows()));
  }
  return top_only ? argmax_rows(be, logits, blocks) : draw_rows(be, logits, blocks);
}

ChainAccept accept_chain(const RowDraws& d, int row0, const int32_t* drafts, int k, PenaltyState& pen,
                         Rng& rng) {
  MTP_ASSERT(row0 >= 0 && size_t(row0 + k) < d.tok.size());
  ChainAccept r;
  for (int i = 0; i < k; i++) {
    const int row = row0 + i;
    // tok < 0: the draft holds all of p's mass (a reject is fp32 rounding), so it is accepted.
    if (try_child(d.pd[size_t(row) * d.C], 1.0, rng) || d.tok[size_t(row)] < 0) {
      pen.add(drafts[i]);
      r.accepted++;
      continue;
    }
    r.next = d.tok[size_t(row)];
    break;
  }
  if (r.accepted == k) r.next = d.tok[size_t(row0 + k)];  // the bonus (a row without children)
  MTP_CHECK(r.next >= 0, "sampling: row {} has no probability mass (non-finite logits?)", row0 + r.accepted);
  pen.add(r.next);
  return r;
}

int32_t accept_tree(const RowDraws& d, int row0, const TreeBlock& t, PenaltyState& pen, Rng& rng,
                    std::vector<int>& path) {
  MTP_ASSERT(row0 >= 0 && row0 + t.tokens.size() < d.tok.size());
  int cur = 0;
  for (;;) {
    const size_t row = size_t(row0 + cur);
    int child = -1, last = -1;  // accepted child; the last child with mass
    double rest = 1.0;          // p's mass outside the children already rejected
    for (size_t i = 0, j = 0; i < t.parent.size() && child < 0; i++) {
      if (t.parent[i] != cur) continue;
      const double pd = d.pd[row * d.C + j++];
      if (pd > 0) last = int(i) + 1;
      if (try_child(pd, rest, rng)) child = int(i) + 1;
      rest -= pd;
    }
    // Every child rejected with nothing left outside them is fp32 rounding: the last child with mass.
    if (child < 0 && d.tok[row] < 0) child = last;
    if (child < 0) {
      const int32_t x = d.tok[row];
      MTP_CHECK(x >= 0, "sampling: tree row {} has no probability mass (non-finite logits?)", row);
      pen.add(x);
      return x;
    }
    pen.add(t.tokens[size_t(child - 1)]);
    path.push_back(child);
    cur = child;
  }
}

}  // namespace mtpserve
