// Default graph support: a graph that re-runs the recorded closure. Backends without device graphs (the CPU)
// still run graph users' code paths, so the CPU tests cover them. Default fused ops: the unfused ops in turn.
#include "backend/backend.h"

namespace mtpserve {

namespace {
class ClosureGraph final : public Graph {
 public:
  explicit ClosureGraph(std::function<void()> ops) : ops_(std::move(ops)) {}
  void replay() override { ops_(); }

 private:
  std::function<void()> ops_;
};
}  // namespace

std::unique_ptr<Graph> Backend::capture(const std::function<void()>& ops) {
  MTP_ASSERT(ops);
  return std::make_unique<ClosureGraph>(ops);
}

void Backend::linear_gelu(Tensor out, const Tensor& x, const Tensor& w, const Tensor& up) {
  const int64_t K = w.dim(-1), rows = w.numel() / K, M = x.numel() / K;
  MTP_ASSERT(M > 0 && rows > 0 && x.numel() == M * K && (up.defined() || rows % 2 == 0));
  Tensor g = alloc(act_dtype(), {M, rows});  // [M, 2I] gate | up, or [M, I] gate
  linear(g, x, w);
  if (up.defined())
    gelu_mul(out, g, up);
  else
    gelu_mul_fused(out, g);
}

void Backend::qkv_norm_rope_kv(Tensor q, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm,
                               const Tensor& positions, const Tensor& inv_freq, float eps, Tensor k_cache,
                               Tensor v_cache, const AttnMeta& m, const KvPageTable& pt) {
  const int64_t T = q.dim(0), nh = q.dim(1), D = q.dim(2), kvh = k_cache.dim(1);
  const int64_t heads = qkv.numel() / (T * D);
  MTP_ASSERT(q.ndim == 3 && qkv.numel() == T * heads * D && (heads == nh + kvh || heads == nh + 2 * kvh));
  Tensor k = alloc(act_dtype(), {T, kvh, D}), v = alloc(act_dtype(), {T, kvh, D});  // [T, kvh, D]
  for (int64_t t = 0; t < T; t++) {  // row t of qkv is contiguous: q heads, k heads, (v heads)
    Tensor row = qkv.rows(t, t + 1).view({heads * D});
    copy(q.rows(t, t + 1).view({nh * D}), row.rows(0, nh * D));
    copy(k.rows(t, t + 1).view({kvh * D}), row.rows(nh * D, (nh + kvh) * D));
    const int64_t v0 = heads == nh + kvh ? nh : nh + kvh;  // V is K: the raw k heads again
    copy(v.rows(t, t + 1).view({kvh * D}), row.rows(v0 * D, (v0 + kvh) * D));
  }
  qkv_norm_rope(q, k, v, q_norm, k_norm, positions, inv_freq, eps);
  kv_write(k_cache, v_cache, k, v, m, pt);
}

}  // namespace mtpserve
