// The fused ops of the decoder layer on the CPU backend (the executable specification) against the unfused op
// sequences they replace: rms_norm_add(_norm), qkv_norm_rope, and the fused gate|up MLP projection. All fp32,
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
      for (int variant : {0, 1, 2}) {  // plain, scaled, with the next norm
        SCOPED_TRACE(testing::Message() << "R=" << R << " D=" << D << " variant " << variant);
        Tensor x = randn({R, D}, 1, 0.0f, 2.0f), o = randn({R, D}, 2, 0.0f, 3.0f);
        Tensor w = randn({D}, 3, 1.0f, 0.2f, wt), hw = randn({D}, 4, 1.0f, 0.2f, wt);
        Tensor sc = randn({1}, 5, 0.75f, 0.1f, wt);
        Tensor fx = clone(x), fh = cpu().alloc(DType::F32, {R, D});
        if (variant == 2)
          cpu().rms_norm_add_norm(fx, fh, o, w, hw, 1e-6f);
        else
          cpu().rms_norm_add(fx, o, w, 1e-6f, variant ? sc : Tensor());
        Tensor t = cpu().alloc(DType::F32, {R, D}), h = cpu().alloc(DType::F32, {R, D});
        cpu().rms_norm(t, o, w, 1e-6f);
        cpu().add(x, x, t);
        if (variant == 1) cpu().mul_bcast(x, x, sc);
        EXPECT_LE(rel_err(fx, x), kTol);
        if (variant == 2) {
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

// One projection onto [gate | up] then gelu_mul_fused equals two projections then gelu_mul; the separate
// weights are released, mixed storage is widened to F32, and fusing twice is a no-op.
TEST(FusedOps, FusedGateUpProjection) {
  const int64_t M = 3, I = 24, H = 32;
  for (DType up_dtype : {DType::BF16, DType::F32}) {
    LayerWeights lw;
    lw.gate_proj = randn({I, H}, 21, 0.0f, 0.2f, DType::BF16);
    lw.up_proj = randn({I, H}, 22, 0.0f, 0.2f, up_dtype);
    const Tensor gate = lw.gate_proj, up = lw.up_proj;
    Tensor x = randn({M, H}, 23);
    fuse_gate_up(cpu(), lw);
    EXPECT_FALSE(lw.up_proj.defined());
    EXPECT_EQ(lw.gate_proj.shape_str(), "[48, 32]");
    EXPECT_EQ(lw.gate_proj.dtype, up_dtype);
    EXPECT_NE(lw.gate_proj.data, gate.data);
    const void* fused = lw.gate_proj.data;
    fuse_gate_up(cpu(), lw);
    EXPECT_EQ(lw.gate_proj.data, fused);
    Tensor gu = cpu().alloc(DType::F32, {M, 2 * I}), a = cpu().alloc(DType::F32, {M, I});
    cpu().linear(gu, x, lw.gate_proj);
    cpu().gelu_mul_fused(a, gu);
    Tensor g = cpu().alloc(DType::F32, {M, I}), u = cpu().alloc(DType::F32, {M, I});
    cpu().linear(g, x, gate);
    cpu().linear(u, x, up);
    cpu().gelu_mul(g, g, u);
    EXPECT_LE(rel_err(a, g), kTol);
  }
}

}  // namespace
}  // namespace mtpserve
