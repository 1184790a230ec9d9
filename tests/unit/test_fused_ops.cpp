// The fused ops of the decoder layer on the CPU backend (the executable specification) against the unfused op
// sequences they replace: rms_norm_add(_norm), qkv_norm_rope(_kv), linear_gelu, and the fused q|k|v and
// gate|up projections. All fp32,
// so the results agree to rounding noise (1e-6 of the values' scale; the same operations in the same order
// give equal bits).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "model/gemma4.h"

namespace mtpserve {
namespace {

constexpr double kTol = 1e-6;

Backend& cpu() {
  static auto b = make_cpu_backend();
  return *b;
}

Tensor randn(std::initializer_list<int64_t> shape, uint32_t seed, float mean = 0.0f, float std = 1.0f,
             DType dtype = DType::F32) {
  Tensor t = cpu().alloc(dtype, shape);
  std::mt19937 g(seed);
  std::normal_distribution<float> d(mean, std);
  for (int64_t i = 0; i < t.numel(); i++) {
    if (dtype == DType::F32)
      t.ptr<float>()[i] = d(g);
    else
      t.ptr<uint16_t>()[i] = f32_to_bf16(d(g));
  }
  return t;
}
Tensor clone(const Tensor& t) {
  Tensor c = cpu().alloc(t.dtype, {t.numel()});
  std::memcpy(c.data, t.data, t.nbytes());
  c.ndim = t.ndim;
  c.shape = t.shape;
  return c;
}
// max |a - b| / max |b|
double rel_err(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.numel(); i++) {
    num = std::max(num, std::fabs(double(load_f32(a, i)) - load_f32(b, i)));
    den = std::max(den, std::fabs(double(load_f32(b, i))));
  }
  return den > 0 ? num / den : num;
}

TEST(FusedOps, RmsNormAddEqualsNormAddScale) {
  for (auto [R, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 32}, {5, 130}, {3, 2560}})
    for (DType wt : {DType::F32, DType::BF16})
      for (int variant : {0, 1, 2, 3}) {  // plain, scaled, with the next norm, scaled with the next norm
        SCOPED_TRACE(testing::Message() << "R=" << R << " D=" << D << " variant " << variant);
        Tensor x = randn({R, D}, 1, 0.0f, 2.0f), o = randn({R, D}, 2, 0.0f, 3.0f);
        Tensor w = randn({D}, 3, 1.0f, 0.2f, wt), hw = randn({D}, 4, 1.0f, 0.2f, wt);
        Tensor sc = randn({1}, 5, 0.75f, 0.1f, wt);
        Tensor fx = clone(x), fh = cpu().alloc(DType::F32, {R, D});
        const bool scaled = variant == 1 || variant == 3, next = variant >= 2;
        if (next)
          cpu().rms_norm_add_norm(fx, fh, o, w, hw, 1e-6f, scaled ? sc : Tensor());
        else
          cpu().rms_norm_add(fx, o, w, 1e-6f, scaled ? sc : Tensor());
        Tensor t = cpu().alloc(DType::F32, {R, D}), h = cpu().alloc(DType::F32, {R, D});
        cpu().rms_norm(t, o, w, 1e-6f);
        cpu().add(x, x, t);
        if (scaled) cpu().mul_bcast(x, x, sc);
        EXPECT_LE(rel_err(fx, x), kTol);
        if (next) {
          cpu().rms_norm(h, x, hw, 1e-6f);
          EXPECT_LE(rel_err(fh, h), kTol);
        }
      }
}

TEST(FusedOps, QkvNormRopeEqualsNormThenRope) {
  RopeParams rp;
  rp.rope_type = "proportional";
  rp.rope_theta = 1e6;
  rp.partial_rotary_factor = 0.25;
  for (bool kv : {true, false}) {
    const int64_t T = 5, nh = 4, kvh = 2, D = 16;
    Tensor q = randn({T, nh, D}, 11, 0.0f, 2.0f), k = randn({T, kvh, D}, 12, 0.0f, 2.0f),
           v = randn({T, kvh, D}, 13, 0.0f, 2.0f);
    Tensor qw = randn({D}, 14, 1.0f, 0.2f, DType::BF16), kw = randn({D}, 15, 1.0f, 0.2f, DType::BF16);
    Tensor pos = cpu().alloc(DType::I32, {T}), inv = cpu().alloc(DType::F32, {D / 2});
    for (int64_t t = 0; t < T; t++) pos.ptr<int32_t>()[t] = int32_t(7 + 1000 * t);
    std::vector<float> f = rope_inv_freq(rp, int(D));
    std::memcpy(inv.data, f.data(), f.size() * 4);
    Tensor fq = clone(q), fk = clone(k), fv = clone(v);
    cpu().qkv_norm_rope(fq, kv ? fk : Tensor(), kv ? fv : Tensor(), qw, kw, pos, inv, 1e-6f);
    cpu().rms_norm(q, q, qw, 1e-6f);
    cpu().rope(q, pos, inv);
    EXPECT_LE(rel_err(fq, q), kTol);
    if (!kv) {  // q only: k and v untouched
      EXPECT_EQ(rel_err(fk, k), 0.0);
      EXPECT_EQ(rel_err(fv, v), 0.0);
      continue;
    }
    cpu().rms_norm(k, k, kw, 1e-6f);
    cpu().rope(k, pos, inv);
    cpu().rms_norm(v, v, Tensor(), 1e-6f);
    EXPECT_LE(rel_err(fk, k), kTol);
    EXPECT_LE(rel_err(fv, v), kTol);
  }
}

// fuse_projections: one projection onto [gate | up] (resp. [q | k | v], [q | k] when V is K) gives the
// separate projections' columns; the separate weights are released, mixed storage is widened to F32, and
// fusing twice is a no-op.
TEST(FusedOps, FuseProjections) {
  const int64_t M = 3, I = 24, H = 32, nq = 16, nkv = 8;
  for (DType dt2 : {DType::BF16, DType::F32})
    for (bool has_v : {true, false}) {
      SCOPED_TRACE(testing::Message() << "second dtype " << dtype_name(dt2) << " v_proj " << has_v);
      LayerWeights lw;
      lw.gate_proj = randn({I, H}, 21, 0.0f, 0.2f, DType::BF16);
      lw.up_proj = randn({I, H}, 22, 0.0f, 0.2f, dt2);
      lw.q_proj = randn({nq, H}, 24, 0.0f, 0.2f, DType::BF16);
      lw.k_proj = randn({nkv, H}, 25, 0.0f, 0.2f, dt2);
      if (has_v) lw.v_proj = randn({nkv, H}, 26, 0.0f, 0.2f, DType::BF16);
      const LayerWeights sep = lw;
      Tensor x = randn({M, H}, 23);
      fuse_projections(cpu(), lw);
      EXPECT_FALSE(lw.up_proj.defined() || lw.k_proj.defined() || lw.v_proj.defined());
      EXPECT_EQ(lw.gate_proj.shape_str(), "[48, 32]");
      EXPECT_EQ(lw.q_proj.shape_str(), has_v ? "[32, 32]" : "[24, 32]");
      EXPECT_EQ(lw.gate_proj.dtype, dt2);
      EXPECT_EQ(lw.q_proj.dtype, dt2);
      const void* fused = lw.gate_proj.data;
      fuse_projections(cpu(), lw);
      EXPECT_EQ(lw.gate_proj.data, fused);
      // Each part's columns of the fused output equal its own projection.
      auto check = [&](const Tensor& w, std::vector<const Tensor*> parts) {
        Tensor y = cpu().alloc(DType::F32, {M, w.dim(0)});
        cpu().linear(y, x, w);
        int64_t col = 0;
        for (const Tensor* p : parts) {
          Tensor ref = cpu().alloc(DType::F32, {M, p->dim(0)});
          cpu().linear(ref, x, *p);
          double err = 0;
          for (int64_t m = 0; m < M; m++)
            for (int64_t j = 0; j < p->dim(0); j++)
              err = std::max(err, std::fabs(double(y.ptr<float>()[m * w.dim(0) + col + j]) -
                                            ref.ptr<float>()[m * p->dim(0) + j]));
          EXPECT_LE(err, kTol * 10) << "part at column " << col;
          col += p->dim(0);
        }
        EXPECT_EQ(col, w.dim(0));
      };
      check(lw.gate_proj, {&sep.gate_proj, &sep.up_proj});
      if (has_v)
        check(lw.q_proj, {&sep.q_proj, &sep.k_proj, &sep.v_proj});
      else
        check(lw.q_proj, {&sep.q_proj, &sep.k_proj});
    }
}

// linear_gelu (both forms: fused gate|up, and gate with a given up) against the formula in double:
// gelu_tanh(x w_g) * (x w_u). fp32 sums of 40 products and tanh: relative error below 1e-5.
TEST(FusedOps, LinearGeluIsGeluOfGateTimesUp) {
  const int64_t M = 3, I = 24, K = 40;
  Tensor x = randn({M, K}, 31), w = randn({2 * I, K}, 34, 0.0f, 0.2f, DType::BF16), u = randn({M, I}, 33);
  Tensor out = cpu().alloc(DType::F32, {M, I}), out_u = cpu().alloc(DType::F32, {M, I});
  cpu().linear_gelu(out, x, w);
  cpu().linear_gelu(out_u, x, w.rows(0, I), u);
  auto dot = [&](int64_t m, int64_t row) {
    double d = 0;
    for (int64_t k = 0; k < K; k++) d += double(x.ptr<float>()[m * K + k]) * load_f32(w, row * K + k);
    return d;
  };
  auto gelu = [](double v) {
    return 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
  };
  double e = 0, e_u = 0, n = 0, n_u = 0;
  for (int64_t m = 0; m < M; m++)
    for (int64_t j = 0; j < I; j++) {
      const double r = gelu(dot(m, j)) * dot(m, I + j), r_u = gelu(dot(m, j)) * u.ptr<float>()[m * I + j];
      e += std::pow(out.ptr<float>()[m * I + j] - r, 2), n += r * r;
      e_u += std::pow(out_u.ptr<float>()[m * I + j] - r_u, 2), n_u += r_u * r_u;
    }
  EXPECT_LE(std::sqrt(e / n), 1e-5);
  EXPECT_LE(std::sqrt(e_u / n_u), 1e-5);
}

// qkv_norm_rope_kv from the fused projection equals splitting the heads, qkv_norm_rope and kv_write: the
// same q, and the same cache rows at each token's slot (two sequences, shuffled pages), also when V is K.
TEST(FusedOps, QkvNormRopeKvEqualsSplitNormRopeWrite) {
  const int64_t nh = 4, kvh = 2, D = 16, pages = 8, slots = pages * 16;
  const std::vector<int32_t> cu{0, 2, 5}, prefix{3, 17}, table{5, 1, -1, -1, 2, 7, -1, -1};
  const int64_t T = 5;
  auto i32 = [](const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
    Tensor t = cpu().alloc(DType::I32, shape);
    std::memcpy(t.data, v.data(), v.size() * 4);
    return t;
  };
  AttnMeta m;
  m.num_seqs = 2;
  m.cu_q = i32(cu, {3});
  m.prefix_len = i32(prefix, {2});
  m.positions = i32({3, 4, 17, 18, 19}, {T});
  KvPageTable pt;
  pt.pages = i32(table, {2, 4});
  RopeParams rp;
  rp.rope_theta = 1e4;
  std::vector<float> f = rope_inv_freq(rp, int(D));
  Tensor inv = cpu().alloc(DType::F32, {D / 2});
  std::memcpy(inv.data, f.data(), f.size() * 4);
  Tensor qw = randn({D}, 41, 1.0f, 0.2f, DType::BF16), kw = randn({D}, 42, 1.0f, 0.2f, DType::BF16);
  for (bool v_is_k : {false, true}) {
    SCOPED_TRACE(testing::Message() << "V is K: " << v_is_k);
    const int64_t heads = nh + (v_is_k ? 1 : 2) * kvh;
    Tensor qkv = randn({T, heads, D}, 43, 0.0f, 2.0f);
    Tensor kc = cpu().alloc(DType::F32, {slots, kvh, D}), vc = cpu().alloc(DType::F32, {slots, kvh, D});
    Tensor kc2 = cpu().alloc(DType::F32, {slots, kvh, D}), vc2 = cpu().alloc(DType::F32, {slots, kvh, D});
    for (Tensor* c : {&kc, &vc, &kc2, &vc2}) cpu().fill_zero(*c);
    Tensor q = cpu().alloc(DType::F32, {T, nh, D});
    cpu().qkv_norm_rope_kv(q, qkv, qw, kw, m.positions, inv, 1e-6f, kc, vc, m, pt);
    // Reference: heads split by hand.
    Tensor q2 = cpu().alloc(DType::F32, {T, nh, D}), k2 = cpu().alloc(DType::F32, {T, kvh, D}),
           v2 = cpu().alloc(DType::F32, {T, kvh, D});
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < heads; h++)
        for (int64_t d = 0; d < D; d++) {
          const float val = qkv.ptr<float>()[(t * heads + h) * D + d];
          if (h < nh) q2.ptr<float>()[(t * nh + h) * D + d] = val;
          if (h >= nh && h < nh + kvh) {
            k2.ptr<float>()[(t * kvh + h - nh) * D + d] = val;
            if (v_is_k) v2.ptr<float>()[(t * kvh + h - nh) * D + d] = val;
          }
          if (h >= nh + kvh) v2.ptr<float>()[(t * kvh + h - nh - kvh) * D + d] = val;
        }
    cpu().qkv_norm_rope(q2, k2, v2, qw, kw, m.positions, inv, 1e-6f);
    cpu().kv_write(kc2, vc2, k2, v2, m, pt);
    EXPECT_EQ(rel_err(q, q2), 0.0);
    EXPECT_EQ(rel_err(kc, kc2), 0.0);
    EXPECT_EQ(rel_err(vc, vc2), 0.0);
    // The tokens' slots were written: slot 3 of sequence 0 lies in page 5, row 3.
    EXPECT_NE(kc.ptr<float>()[(5 * 16 + 3) * kvh * D], 0.0f);
  }
}

}  // namespace
}  // namespace mtpserve
