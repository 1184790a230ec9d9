// The CPU backend: fp32 math everywhere, weights read in their stored dtype (bf16 converted tile by tile for
// the GEMM). Straightforward loops, written to be obviously correct; OpenBLAS does the matrix products.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <vector>

#include "backend/backend.h"

namespace mtpserve {
namespace {

// Rows [r0, r0 + n) of a float tensor viewed as [*, K] (K = last dim) as fp32 into dst.
void load_rows(float* dst, const Tensor& w, int64_t r0, int64_t n) {
  int64_t k = w.dim(-1);
  MTP_ASSERT((r0 + n) * k <= w.numel());
  if (w.dtype == DType::F32) {
    std::memcpy(dst, w.ptr<const float>() + r0 * k, size_t(n * k) * 4);
    return;
  }
  for (int64_t i = 0; i < n * k; i++) dst[i] = load_f32(w, r0 * k + i);
}

inline float gelu_tanh(float x) {
  const float c = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x)));
}

void check_f32(const Tensor& t, const char* what) {
  MTP_CHECK(t.dtype == DType::F32, "cpu backend: {} must be F32, got {}", what, dtype_name(t.dtype));
}

// A norm weight [D] as fp32 (all ones when undefined: the weightless RMSNorm).
std::vector<float> norm_weight(const Tensor& w, int64_t D) {
  MTP_ASSERT(!w.defined() || w.numel() == D);
  std::vector<float> wf(D, 1.0f);
  if (w.defined())
    for (int64_t i = 0; i < D; i++) wf[i] = load_f32(w, i);
  return wf;
}

// RMSNorm factor of one row: 1 / sqrt(mean(a^2) + eps), the sum of squares in double.
float rms_inv(const float* a, int64_t D, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < D; i++) ss += double(a[i]) * a[i];
  return 1.0f / std::sqrt(float(ss / double(D)) + eps);
}

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::CPU; }
  DType act_dtype() const override { return DType::F32; }
  // MemAvailable of /proc/meminfo (Linux); -1 elsewhere.
  int64_t free_memory() override {
    std::ifstream f("/proc/meminfo");
    std::string key;
    int64_t kb = 0;
    std::string unit;
    while (f >> key >> kb >> unit)
      if (key == "MemAvailable:") return kb * 1024;
    return -1;
  }

  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override {
    Tensor t(nullptr, dtype, shape);
    size_t bytes = std::max<size_t>(t.nbytes(), 1);
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    MTP_CHECK(p, "cpu backend: out of memory allocating {} bytes", bytes);
    t.holder = std::shared_ptr<void>(p, std::free);
    t.data = p;
    return t;
  }

  Tensor upload_weight(const Tensor& host) override {
    if (host.dtype == DType::F16) {  // no fp16 math here: widen once
      Tensor t = alloc(DType::F32, {host.numel()});
      for (int64_t i = 0; i < host.numel(); i++) t.ptr<float>()[i] = load_f32(host, i);
      t.ndim = host.ndim;
      t.shape = host.shape;
      return t;
    }
    return host;  // F32/BF16/ints: the mmapped bytes as they are
  }
  void copy_from_host(Tensor dst, const void* src) override { std::memcpy(dst.data, src, dst.nbytes()); }
  void copy_to_host(void* dst, const Tensor& src) override { std::memcpy(dst, src.data, src.nbytes()); }
  void copy(Tensor dst, const Tensor& src) override {
    MTP_ASSERT(dst.nbytes() == src.nbytes());
    std::memmove(dst.data, src.data, src.nbytes());
  }
  void fill_zero(Tensor dst) override { std::memset(dst.data, 0, dst.nbytes()); }

  void embed(Tensor out, const Tensor& ids, const Tensor& table, float scale) override {
    check_f32(out, "embed out");
    int64_t T = ids.numel(), H = table.dim(1), V = table.dim(0);
    MTP_ASSERT(out.numel() == T * H);
    for (int64_t t = 0; t < T; t++) {
      int32_t id = ids.ptr<const int32_t>()[t];
      MTP_CHECK(id >= 0 && id < V, "token id {} is outside the vocabulary [0, {})", id, V);
      float* o = out.ptr<float>() + t * H;
      for (int64_t h = 0; h < H; h++) o[h] = load_f32(table, id * H + h) * scale;
    }
  }

  void rms_norm(Tensor out, const Tensor& x, const Tensor& w, float eps) override {
    check_f32(out, "rms_norm out");
    check_f32(x, "rms_norm x");
    int64_t D = w.defined() ? w.numel() : x.dim(-1);
    MTP_ASSERT(x.numel() % D == 0 && out.numel() == x.numel());
    int64_t R = x.numel() / D;
    std::vector<float> wf = norm_weight(w, D);
    for (int64_t r = 0; r < R; r++) {
      const float* a = x.ptr<const float>() + r * D;
      float* o = out.ptr<float>() + r * D;
      float inv = rms_inv(a, D, eps);
      for (int64_t i = 0; i < D; i++) o[i] = a[i] * inv * wf[i];
    }
  }
  void rms_norm_add(Tensor x, const Tensor& o, const Tensor& w, float eps, const Tensor& scale) override {
    norm_add(x, o, w, eps, scale, Tensor(), Tensor());
  }
  void rms_norm_add_norm(Tensor x, Tensor h, const Tensor& o, const Tensor& w, const Tensor& hw, float eps,
                         const Tensor& scale) override {
    norm_add(x, o, w, eps, scale, h, hw);
  }
  // x = (x + rms_norm(o) * w) * scale; then, when h is defined, h = rms_norm(x) * hw.
  void norm_add(Tensor x, const Tensor& o, const Tensor& w, float eps, const Tensor& scale, Tensor h,
                const Tensor& hw) {
    check_f32(x, "rms_norm_add x");
    check_f32(o, "rms_norm_add o");
    const int64_t D = x.dim(-1), R = x.numel() / D;
    MTP_ASSERT(o.numel() == x.numel() && (!scale.defined() || scale.numel() == 1));
    const std::vector<float> wf = norm_weight(w, D);
    const float s = scale.defined() ? load_f32(scale, 0) : 1.0f;
    std::vector<float> hwf;
    if (h.defined()) {
      check_f32(h, "rms_norm_add_norm h");
      MTP_ASSERT(h.numel() == x.numel());
      hwf = norm_weight(hw, D);
    }
    for (int64_t r = 0; r < R; r++) {
      const float* a = o.ptr<const float>() + r * D;
      float* xr = x.ptr<float>() + r * D;
      const float inv = rms_inv(a, D, eps);
      for (int64_t i = 0; i < D; i++) {
        const float normed = a[i] * inv * wf[i];
        xr[i] = xr[i] + normed;
        if (scale.defined()) xr[i] = xr[i] * s;
      }
      if (!h.defined()) continue;
      const float hinv = rms_inv(xr, D, eps);
      float* hr = h.ptr<float>() + r * D;
      for (int64_t i = 0; i < D; i++) hr[i] = xr[i] * hinv * hwf[i];
    }
  }

  void add(Tensor out, const Tensor& a, const Tensor& b) override {
    MTP_ASSERT(a.numel() == b.numel() && out.numel() == a.numel());
    for (int64_t i = 0; i < a.numel(); i++)
      out.ptr<float>()[i] = a.ptr<const float>()[i] + b.ptr<const float>()[i];
  }
  void scale(Tensor out, const Tensor& x, float s) override {
    MTP_ASSERT(out.numel() == x.numel());
    for (int64_t i = 0; i < x.numel(); i++) out.ptr<float>()[i] = x.ptr<const float>()[i] * s;
  }
  void mul_bcast(Tensor out, const Tensor& x, const Tensor& w) override {
    int64_t D = w.numel();
    MTP_ASSERT(x.numel() % D == 0 && out.numel() == x.numel());
    std::vector<float> wf(D);
    for (int64_t i = 0; i < D; i++) wf[i] = load_f32(w, i);
    for (int64_t i = 0; i < x.numel(); i++) out.ptr<float>()[i] = x.ptr<const float>()[i] * wf[i % D];
  }
  void gelu_mul(Tensor out, const Tensor& gate, const Tensor& up) override {
    MTP_ASSERT(gate.numel() == up.numel() && out.numel() == gate.numel());
    for (int64_t i = 0; i < gate.numel(); i++)
      out.ptr<float>()[i] = gelu_tanh(gate.ptr<const float>()[i]) * up.ptr<const float>()[i];
  }
  void gelu_mul_fused(Tensor out, const Tensor& gu) override {
    int64_t M = gu.dim(0), I = gu.dim(1) / 2;
    MTP_ASSERT(out.numel() == M * I);
    for (int64_t m = 0; m < M; m++)
      for (int64_t i = 0; i < I; i++)
        out.ptr<float>()[m * I + i] =
            gelu_tanh(gu.ptr<const float>()[m * 2 * I + i]) * gu.ptr<const float>()[m * 2 * I + I + i];
  }
  void transpose01(Tensor out, const Tensor& x) override {
    int64_t A = x.dim(0), B = x.dim(1), C = x.numel() / (A * B);
    size_t es = dtype_size(x.dtype);
    for (int64_t a = 0; a < A; a++)
      for (int64_t b = 0; b < B; b++)
        std::memcpy(static_cast<char*>(out.data) + ((b * A + a) * C) * es,
                    static_cast<const char*>(x.data) + ((a * B + b) * C) * es, C * es);
  }
  void gather_rows(Tensor out, const Tensor& x, const Tensor& rows) override {
    int64_t C = x.row_numel(), R = rows.numel();
    size_t es = dtype_size(x.dtype);
    for (int64_t r = 0; r < R; r++) {
      int32_t src = rows.ptr<const int32_t>()[r];
      MTP_ASSERT(src >= 0 && src < x.dim(0));
      std::memcpy(static_cast<char*>(out.data) + r * C * es, static_cast<const char*>(x.data) + src * C * es,
                  C * es);
    }
  }
  void softcap(Tensor x, float cap) override {
    for (int64_t i = 0; i < x.numel(); i++) x.ptr<float>()[i] = cap * std::tanh(x.ptr<float>()[i] / cap);
  }

  void linear(Tensor out, const Tensor& x, const Tensor& w) override {
    check_f32(out, "linear out");
    check_f32(x, "linear x");
    int64_t K = w.dim(-1), N = w.numel() / K, M = x.numel() / K;
    MTP_CHECK(x.numel() == M * K && out.numel() == M * N, "linear: x {} / w {} / out {} shapes do not agree",
              x.shape_str(), w.shape_str(), out.shape_str());
    if (w.dtype == DType::F32) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, x.ptr<const float>(),
                  int(K), w.ptr<const float>(), int(K), 0.0f, out.ptr<float>(), int(N));
      return;
    }
    // Stored bf16: widen a tile of rows at a time and multiply it.
    const int64_t tile = std::max<int64_t>(16, (1 << 20) / std::max<int64_t>(K, 1));
    static thread_local std::vector<float> buf;
    for (int64_t n0 = 0; n0 < N; n0 += tile) {
      int64_t nt = std::min(tile, N - n0);
      buf.resize(size_t(nt * K));
      load_rows(buf.data(), w, n0, nt);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(nt), int(K), 1.0f,
                  x.ptr<const float>(), int(K), buf.data(), int(K), 0.0f, out.ptr<float>() + n0, int(N));
    }
  }

  void rope(Tensor x, const Tensor& positions, const Tensor& inv_freq) override {
    int64_t T = x.dim(0), D = x.dim(-1), heads = x.numel() / (T * D), half = D / 2;
    MTP_ASSERT(inv_freq.numel() == half && positions.numel() == T);
    std::vector<float> c(half), s(half);
    for (int64_t t = 0; t < T; t++) {
      float pos = float(positions.ptr<const int32_t>()[t]);
      for (int64_t j = 0; j < half; j++) {
        float a = pos * inv_freq.ptr<const float>()[j];  // fp32 angle, as HF
        c[j] = std::cos(a);
        s[j] = std::sin(a);
      }
      for (int64_t h = 0; h < heads; h++) {
        float* v = x.ptr<float>() + (t * heads + h) * D;
        for (int64_t j = 0; j < half; j++) {
          float a = v[j], b = v[j + half];
          v[j] = a * c[j] - b * s[j];
          v[j + half] = b * c[j] + a * s[j];
        }
      }
    }
  }

  void qkv_norm_rope(Tensor q, Tensor k, Tensor v, const Tensor& q_norm, const Tensor& k_norm,
                     const Tensor& positions, const Tensor& inv_freq, float eps) override {
    rms_norm(q, q, q_norm, eps);
    rope(q, positions, inv_freq);
    if (!k.defined()) return;
    rms_norm(k, k, k_norm, eps);
    rope(k, positions, inv_freq);
    rms_norm(v, v, Tensor(), eps);
  }

  static int64_t physical_slot(const KvPageTable& pt, int s, int64_t slot) {
    int64_t stride = pt.pages.dim(1);
    MTP_ASSERT(slot / pt.page_size < stride);
    int32_t page = pt.pages.ptr<const int32_t>()[s * stride + slot / pt.page_size];
    MTP_CHECK(page >= 0, "kv cache: slot {} of sequence {} lies in a page that was already freed", slot, s);
    return int64_t(page) * pt.page_size + slot % pt.page_size;
  }

  void kv_write(Tensor k_cache, Tensor v_cache, const Tensor& k, const Tensor& v, const AttnMeta& m,
                const KvPageTable& pt) override {
    int64_t row = k.row_numel();  // kv_heads * D
    MTP_ASSERT(k_cache.row_numel() == row && v_cache.row_numel() == row);
    const int32_t* cu = m.cu_q.ptr<const int32_t>();
    for (int s = 0; s < m.num_seqs; s++) {
      int32_t prefix = m.prefix_len.ptr<const int32_t>()[s];
      for (int32_t r = cu[s]; r < cu[s + 1]; r++) {
        int64_t dst = physical_slot(pt, s, prefix + (r - cu[s]));
        MTP_ASSERT(dst < k_cache.dim(0));
        std::memcpy(k_cache.ptr<float>() + dst * row, k.ptr<const float>() + r * row, row * 4);
        std::memcpy(v_cache.ptr<float>() + dst * row, v.ptr<const float>() + r * row, row * 4);
      }
    }
  }

  void attention(Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttnMeta& m,
                 const KvPageTable& pt, int window) override {
    int64_t D = q.dim(-1), nh = q.dim(1), kvh = k_cache.dim(1);
    MTP_ASSERT(k_cache.dim(-1) == D && nh % kvh == 0);
    int64_t group = nh / kvh;
    const int32_t* cu = m.cu_q.ptr<const int32_t>();
    const int32_t* pos = m.positions.ptr<const int32_t>();
    std::vector<float> scores;
    std::vector<int64_t> phys;
    std::vector<int32_t> kpos;
    for (int s = 0; s < m.num_seqs; s++) {
      int32_t prefix = m.prefix_len.ptr<const int32_t>()[s];
      int32_t nq = cu[s + 1] - cu[s];
      int32_t nslots = prefix + (m.block_keys ? nq : 0);
      for (int32_t i = 0; i < nq; i++) {
        int32_t r = cu[s] + i, qp = pos[r];
        // The visible slots of this query row and their positions.
        phys.clear();
        kpos.clear();
        for (int32_t j = 0; j < nslots; j++) {
          int32_t kp;
          if (j < prefix) {
            kp = j;
          } else {
            int32_t bj = j - prefix;
            bool vis = m.tree_mask.defined()
                           ? m.tree_mask.ptr<const uint8_t>()[int64_t(r) * m.max_q + bj] != 0
                           : bj <= i;
            if (!vis) continue;
            kp = pos[cu[s] + bj];
          }
          if (kp > qp) continue;
          if (window > 0 && qp - kp >= window) continue;
          phys.push_back(physical_slot(pt, s, j));
          kpos.push_back(kp);
        }
        MTP_CHECK(!phys.empty(), "attention: query row {} (position {}) sees no key", r, qp);
        scores.resize(phys.size());
        for (int64_t h = 0; h < nh; h++) {
          const float* qv = q.ptr<const float>() + (int64_t(r) * nh + h) * D;
          int64_t kh = h / group;
          float mx = -INFINITY;
          for (size_t j = 0; j < phys.size(); j++) {
            const float* kv = k_cache.ptr<const float>() + (phys[j] * kvh + kh) * D;
            float d = 0;
            for (int64_t e = 0; e < D; e++) d += qv[e] * kv[e];
            scores[j] = d;  // attention scale 1.0 (q and k are RMS-normalised)
            mx = std::max(mx, d);
          }
          double sum = 0;
          for (auto& sc : scores) sum += (sc = std::exp(sc - mx));
          float* o = out.ptr<float>() + (int64_t(r) * nh + h) * D;
          std::fill(o, o + D, 0.0f);
          for (size_t j = 0; j < phys.size(); j++) {
            float p = float(scores[j] / sum);
            const float* vv = v_cache.ptr<const float>() + (phys[j] * kvh + kh) * D;
            for (int64_t e = 0; e < D; e++) o[e] += p * vv[e];
          }
        }
      }
    }
  }

  void moe_route(Tensor weights, Tensor experts, const Tensor& logits, const Tensor& per_expert_scale,
                 int top_k) override {
    int64_t T = logits.dim(0), E = logits.dim(1);
    MTP_ASSERT(top_k > 0 && top_k <= E && weights.numel() == T * top_k && experts.numel() == T * top_k);
    std::vector<float> p(E);
    std::vector<int> idx(E);
    for (int64_t t = 0; t < T; t++) {
      const float* l = logits.ptr<const float>() + t * E;
      float mx = *std::max_element(l, l + E);
      double sum = 0;
      for (int64_t e = 0; e < E; e++) sum += (p[e] = std::exp(l[e] - mx));
      for (int64_t e = 0; e < E; e++) p[e] = float(p[e] / sum);
      std::iota(idx.begin(), idx.end(), 0);
      // torch.topk order: largest first; ties by lower index.
      std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(),
                        [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
      float tot = 0;
      for (int k = 0; k < top_k; k++) tot += p[idx[k]];
      for (int k = 0; k < top_k; k++) {
        weights.ptr<float>()[t * top_k + k] = p[idx[k]] / tot * load_f32(per_expert_scale, idx[k]);
        experts.ptr<int32_t>()[t * top_k + k] = idx[k];
      }
    }
  }

  void moe_experts(Tensor out, const Tensor& x, const Tensor& weights, const Tensor& experts,
                   const Tensor& gate_up, const Tensor& down) override {
    int64_t T = x.dim(0), H = x.dim(1), E = gate_up.dim(0), I2 = gate_up.dim(1), I = I2 / 2;
    int64_t top_k = weights.numel() / T;
    MTP_ASSERT(gate_up.dim(2) == H && down.dim(0) == E && down.dim(1) == H && down.dim(2) == I);
    std::fill(out.ptr<float>(), out.ptr<float>() + T * H, 0.0f);
    std::vector<float> wgu(size_t(I2 * H)), wd(size_t(H * I)), gu(I2), a(I), y(H);
    // Group tokens by expert so each expert's weights are widened once.
    for (int64_t e = 0; e < E; e++) {
      bool loaded = false;
      for (int64_t t = 0; t < T; t++) {
        for (int64_t k = 0; k < top_k; k++) {
          if (experts.ptr<const int32_t>()[t * top_k + k] != e) continue;
          if (!loaded) {
            load_rows(wgu.data(), gate_up, e * I2, I2);
            load_rows(wd.data(), down, e * H, H);
            loaded = true;
          }
          const float* xv = x.ptr<const float>() + t * H;
          cblas_sgemv(CblasRowMajor, CblasNoTrans, int(I2), int(H), 1.0f, wgu.data(), int(H), xv, 1, 0.0f,
                      gu.data(), 1);
          for (int64_t i = 0; i < I; i++) a[i] = gelu_tanh(gu[i]) * gu[I + i];
          cblas_sgemv(CblasRowMajor, CblasNoTrans, int(H), int(I), 1.0f, wd.data(), int(I), a.data(), 1, 0.0f,
                      y.data(), 1);
          float w = weights.ptr<const float>()[t * top_k + k];
          for (int64_t h = 0; h < H; h++) out.ptr<float>()[t * H + h] += w * y[h];
        }
      }
    }
  }

  void argmax(Tensor out, const Tensor& x) override {
    int64_t V = x.dim(-1), R = x.numel() / V;
    for (int64_t r = 0; r < R; r++) {
      const float* v = x.ptr<const float>() + r * V;
      out.ptr<int32_t>()[r] = int32_t(std::max_element(v, v + V) - v);
    }
  }
  void to_f32(Tensor out, const Tensor& x) override {
    for (int64_t i = 0; i < x.numel(); i++) out.ptr<float>()[i] = load_f32(x, i);
  }
  void argmax_ids(Tensor out, const Tensor& scores, const Tensor& ids) override {
    const int64_t R = scores.dim(0), N = scores.dim(1);
    MTP_ASSERT(scores.dtype == DType::F32 && ids.dtype == DType::I32 && out.dtype == DType::I32 &&
               ids.numel() == R * N && out.numel() == R);
    for (int64_t r = 0; r < R; r++) {
      const float* v = scores.ptr<const float>() + r * N;
      out.ptr<int32_t>()[r] = ids.ptr<const int32_t>()[r * N + (std::max_element(v, v + N) - v)];
    }
  }

  void sample_rows(Tensor out_pd, Tensor out_tok, const Tensor& logits, const SampleRowsArgs& a) override {
    const int64_t R = logits.dim(0), V = logits.dim(-1), C = a.drafts.dim(-1);
    MTP_CHECK(logits.dtype == DType::F32 && logits.ndim == 2 && a.params.numel() == R * 4 &&
                  a.drafts.numel() == R * C && a.uniforms.numel() == R && a.pen_off.numel() == R + 1 &&
                  out_pd.numel() == R * C && out_tok.numel() == R && a.params.dtype == DType::F32 &&
                  a.drafts.dtype == DType::I32 && a.uniforms.dtype == DType::I64 &&
                  a.pen_off.dtype == DType::I32 && out_pd.dtype == DType::F32 && out_tok.dtype == DType::I32,
              "cpu sample_rows: logits {} params {} drafts {} uniforms {} pen_off {} out_pd {} out_tok {}",
              logits.shape_str(), a.params.shape_str(), a.drafts.shape_str(), a.uniforms.shape_str(),
              a.pen_off.shape_str(), out_pd.shape_str(), out_tok.shape_str());
    const int32_t* off = a.pen_off.ptr<const int32_t>();
    MTP_CHECK(off[0] == 0 && (off[R] == 0 || (off[R] <= a.pen_ids.numel() && off[R] <= a.pen_val.numel())),
              "cpu sample_rows: pen_off ends at {} past the {} penalty entries", off[R], a.pen_ids.numel());
    for (int64_t r = 0; r < R; r++) {
      const float* row = logits.ptr<const float>() + r * V;
      std::vector<float> l(row, row + V);
      for (int32_t i = off[r]; i < off[r + 1]; i++) {
        const int32_t id = a.pen_ids.ptr<const int32_t>()[i];
        MTP_CHECK(i == off[r] || id > a.pen_ids.ptr<const int32_t>()[i - 1],
                  "cpu sample_rows: the penalty ids of row {} are not ascending and unique", r);
        if (id >= 0 && id < V) l[id] -= a.pen_val.ptr<const float>()[i];
      }
      const float* pr = a.params.ptr<const float>() + r * 4;
      std::vector<float> p = sample_probs(std::move(l), pr[0], int(pr[3]), pr[1], pr[2]);
      const int32_t* d = a.drafts.ptr<const int32_t>() + r * C;
      for (int64_t j = 0; j < C; j++) {
        MTP_CHECK(d[j] >= -1 && d[j] < V, "cpu sample_rows: draft id {} is outside [-1, {})", d[j], V);
        out_pd.ptr<float>()[r * C + j] = d[j] >= 0 ? p[d[j]] : 0.0f;
      }
      for (int64_t j = 0; j < C; j++)
        if (d[j] >= 0) p[d[j]] = 0.0f;  // the residual after rejecting every child
      const double u = double(uint64_t(a.uniforms.ptr<const int64_t>()[r]) >> 11) * 0x1p-53;
      out_tok.ptr<int32_t>()[r] = inverse_cdf(p, u);
    }
  }

  void centroid_candidates(Tensor cand_ids, Tensor cand_scores, const Tensor& y, const Tensor& cscores,
                           const Tensor& ordering, const Tensor& embed, int top_k) override {
    const int64_t B = y.dim(0), Ha = y.dim(1), C = cscores.dim(1), V = embed.dim(0), per = V / C;
    MTP_ASSERT(V % C == 0 && top_k > 0 && top_k <= C && cand_ids.numel() == B * top_k * per &&
               cand_scores.numel() == B * top_k * per && ordering.numel() == V &&
               ordering.dtype == DType::I64);
    MTP_CHECK(cscores.dtype == DType::F32 || cscores.dtype == DType::BF16,
              "cpu centroid_candidates: centroid_scores must be F32 or BF16, got {}",
              dtype_name(cscores.dtype));
    std::vector<int> idx(C);
    std::vector<float> row(Ha), cs(C);
    for (int64_t b = 0; b < B; b++) {
      load_rows(cs.data(), cscores, b, 1);
      const float* c = cs.data();
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(),
                        [&](int a, int z) { return c[a] > c[z] || (c[a] == c[z] && a < z); });
      const float* yv = y.ptr<const float>() + b * Ha;
      for (int k = 0; k < top_k; k++) {
        for (int64_t j = 0; j < per; j++) {
          int64_t id = ordering.ptr<const int64_t>()[idx[k] * per + j];
          MTP_CHECK(id >= 0 && id < V, "centroid head: token_ordering holds id {} outside [0, {})", id, V);
          load_rows(row.data(), embed, id, 1);
          float d = 0;
          for (int64_t e = 0; e < Ha; e++) d += yv[e] * row[e];
          int64_t o = b * top_k * per + k * per + j;
          cand_ids.ptr<int32_t>()[o] = int32_t(id);
          cand_scores.ptr<float>()[o] = d;
        }
      }
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

std::vector<float> sample_probs(std::vector<float> l, float temperature, int top_k, float top_p,
                                float min_p) {
  const int V = int(l.size());
  MTP_ASSERT(V > 0);
  std::vector<float> p(V, 0.0f);
  if (temperature <= 0.0f || top_k == 1) {
    p[std::max_element(l.begin(), l.end()) - l.begin()] = 1.0f;
    return p;
  }
  const float t = temperature;
  float mx = *std::max_element(l.begin(), l.end());
  double sum = 0;
  for (int v = 0; v < V; v++) sum += (p[v] = std::exp((l[v] - mx) / t));
  for (auto& x : p) x = float(x / sum);
  // top-k, then top-p (smallest set whose mass reaches top_p), then min-p (relative to the top probability).
  if ((top_k > 0 && top_k < V) || top_p < 1.0f || min_p > 0.0f) {
    std::vector<int> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
    int keep = V;
    if (top_k > 0) keep = std::min(keep, top_k);
    if (top_p < 1.0f) {
      double tot = 0;
      for (int i = 0; i < keep; i++) tot += p[idx[i]];
      double cum = 0;
      for (int i = 0; i < keep; i++) {
        cum += p[idx[i]] / tot;
        if (cum >= top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    if (min_p > 0.0f) {
      float floor = min_p * p[idx[0]];
      int k2 = 0;
      while (k2 < keep && p[idx[k2]] >= floor) k2++;
      keep = std::max(1, k2);
    }
    std::vector<float> q(V, 0.0f);
    double tot = 0;
    for (int i = 0; i < keep; i++) tot += p[idx[i]];
    for (int i = 0; i < keep; i++) q[idx[i]] = float(p[idx[i]] / tot);
    p.swap(q);
  }
  return p;
}

int32_t inverse_cdf(const std::vector<float>& p, double u) {
  double tot = 0;
  for (float x : p) tot += x;
  if (!(tot > 0)) return -1;
  double target = u * tot, cum = 0;
  int32_t last = -1;
  for (size_t v = 0; v < p.size(); v++) {
    if (p[v] <= 0) continue;
    cum += p[v];
    last = int32_t(v);
    if (target < cum) return int32_t(v);
  }
  return last;  // rounding at the top end
}

}  // namespace mtpserve
