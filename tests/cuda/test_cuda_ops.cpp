// Every CUDA op against the CPU backend (the executable specification) on fresh random inputs with awkward
// shapes, plus whole-model logits on both backends. GPU outputs are poisoned (0xFF bytes: NaN for floats, -1
// for ints) before each run and surrounded by guard bytes that must survive.
//
// Error bound (DESIGN.md §9, style-anchors.md): inputs are bf16 values given to both backends exactly (CPU as
// fp32), so the only differences are the CUDA op's bf16 output roundings and fp32 summation order. One
// rounding to nearest bf16 (8 significant bits) has relative error <= u = 2^-8 = 3.9e-3 per element, so the
// normalised error ||out - ref|| / ||ref|| <= u for single-rounding ops: we assert kTol1 = 5e-3 (u plus
// fp32-order noise). Ops that round n times along the way (gelu_mul 2, softcap 3, rope: bf16 cos/sin +
// output, MoE experts: gate/up/gelu/product/expert output/sum) get n*u bounded by kTolN = 1e-2 (n <= 3
// effective: the roundings of intermediate values are damped by the later products). Integer outputs (argmax,
// expert ids, KV slots) exact.
#include "cuda_test_util.h"

namespace mtpserve {
namespace {

// ------------------------------------------------------------------------------------------------ row ops

TEST(CudaOps, Embed) {
  for (int64_t T : {1, 3, 17})
    for (auto [V, H] : std::vector<std::pair<int64_t, int64_t>>{{97, 96}, {1000, 130}, {300, 2560}}) {
      auto table = randn_bf16(size_t(V * H), 0.1f);
      std::vector<int32_t> ids(T);
      std::mt19937 g(next_seed());
      for (auto& i : ids) i = int32_t(g() % V);
      Tensor c_out = cpu().alloc(DType::F32, {T, H});
      cpu().embed(c_out, cpu_i32(ids, {T}), cpu_bf16(table, {V, H}), 39.25f);
      Guarded o(DType::BF16, {T, H});
      gpu().embed(o.t, gpu_i32(ids, {T}), gpu_bf16(table, {V, H}), 39.25f);
      o.check("embed");
      EXPECT_NERR(host_f32(o.t), host_f32(c_out), kTol1, "embed T=" << T << " H=" << H);
    }
  // Out-of-range ids are reported at the next synchronising call, naming the id.
  Tensor o = gpu().alloc(DType::BF16, {2, 8});
  gpu().embed(o, gpu_i32({3, 97}, {2}), gpu_bf16(randn_bf16(97 * 8), {97, 8}), 1.0f);
  try {
    gpu().synchronize();
    FAIL() << "expected an error for token id 97";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("97"), std::string::npos) << e.what();
  }
  gpu().synchronize();  // the error is reported once
}

TEST(CudaOps, RmsNorm) {
  for (auto [R, D] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 96}, {3, 130}, {17, 256}, {5, 2560}, {2, 5376}, {7, 10}})
    for (bool weighted : {true, false})
      for (bool inplace : {false, true}) {
        auto x = randn_bf16(size_t(R * D), 3.0f);
        auto w = rand_bf16(size_t(D), 0.8f, 1.2f);
        Tensor cw = weighted ? cpu_bf16(w, {D}) : Tensor();
        Tensor c_out = cpu().alloc(DType::F32, {R, D});
        cpu().rms_norm(c_out, cpu_f32(x, {R, D}), cw, 1e-6f);
        Tensor gw = weighted ? gpu_bf16(w, {D}) : Tensor();
        std::vector<float> got;
        if (inplace) {
          Tensor gx = gpu_bf16(x, {R, D});
          gpu().rms_norm(gx, gx, gw, 1e-6f);
          got = host_f32(gx);
        } else {
          Guarded o(DType::BF16, {R, D});
          gpu().rms_norm(o.t, gpu_bf16(x, {R, D}), gw, 1e-6f);
          o.check("rms_norm");
          got = host_f32(o.t);
        }
        EXPECT_NERR(got, host_f32(c_out), kTol1, "rms_norm R=" << R << " D=" << D << " w=" << weighted);
      }
}

// The fused post-norm + residual add (+ layer_scalar, + the next sub-block's norm) against the CPU op, and
// bit for bit against the unfused CUDA ops it replaces (same sums, same bf16 roundings). Three roundings
// (normed value, sum, product): kTolN.
TEST(CudaOps, RmsNormAdd) {
  for (auto [R, D] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 96}, {3, 130}, {9, 1536}, {2, 5376}, {7, 10}})
    for (int variant : {0, 1, 2, 3}) {  // plain, scaled (layer_scalar), next norm, both
      SCOPED_TRACE(testing::Message() << "R=" << R << " D=" << D << " variant " << variant);
      auto x = randn_bf16(size_t(R * D), 2.0f), o = randn_bf16(size_t(R * D), 3.0f);
      auto w = rand_bf16(size_t(D), 0.8f, 1.2f), hw = rand_bf16(size_t(D), 0.8f, 1.2f);
      auto sc = rand_bf16(1, 0.5f, 1.0f);
      Tensor cx = cpu_f32(x, {R, D}), ch = cpu().alloc(DType::F32, {R, D});
      Tensor gx = gpu_bf16(x, {R, D}), go = gpu_bf16(o, {R, D}), gw = gpu_bf16(w, {D}),
             ghw = gpu_bf16(hw, {D});
      const bool scaled = variant == 1 || variant == 3, next = variant >= 2;
      Tensor gs = scaled ? gpu_bf16(sc, {1}) : Tensor();
      Guarded fx(DType::BF16, {R, D}), fh(DType::BF16, {R, D});  // fused: x in place, h
      gpu().copy(fx.t, gx);
      if (next) {
        cpu().rms_norm_add_norm(cx, ch, cpu_f32(o, {R, D}), cpu_bf16(w, {D}), cpu_bf16(hw, {D}), 1e-6f,
                                scaled ? cpu_bf16(sc, {1}) : Tensor());
        gpu().rms_norm_add_norm(fx.t, fh.t, go, gw, ghw, 1e-6f, gs);
        fh.check("rms_norm_add_norm h");
      } else {
        cpu().rms_norm_add(cx, cpu_f32(o, {R, D}), cpu_bf16(w, {D}), 1e-6f,
                           scaled ? cpu_bf16(sc, {1}) : Tensor());
        gpu().rms_norm_add(fx.t, go, gw, 1e-6f, gs);
      }
      fx.check("rms_norm_add x");
      EXPECT_NERR(host_f32(fx.t), host_f32(cx), kTolN, "rms_norm_add x");
      if (next) EXPECT_NERR(host_f32(fh.t), host_f32(ch), kTolN, "rms_norm_add_norm h");
      Tensor t = gpu().alloc(DType::BF16, {R, D}), uh = gpu().alloc(DType::BF16, {R, D});  // unfused
      gpu().rms_norm(t, go, gw, 1e-6f);
      gpu().add(gx, gx, t);
      if (scaled) gpu().mul_bcast(gx, gx, gs);
      EXPECT_EQ(host_f32(fx.t), host_f32(gx)) << "fused x differs from rms_norm + add (+ mul_bcast)";
      if (next) {
        gpu().rms_norm(uh, gx, ghw, 1e-6f);
        EXPECT_EQ(host_f32(fh.t), host_f32(uh)) << "fused h differs from rms_norm of the new x";
      }
    }
}

TEST(CudaOps, Elementwise) {
  for (auto [R, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 96}, {3, 130}, {17, 2560}}) {
    const size_t n = size_t(R * D);
    auto a = randn_bf16(n, 2.0f), b = randn_bf16(n, 2.0f), w = rand_bf16(size_t(D), -1.5f, 1.5f);
    auto ca = cpu_f32(a, {R, D}), cb = cpu_f32(b, {R, D});
    auto ga = gpu_bf16(a, {R, D}), gb = gpu_bf16(b, {R, D});
    Tensor c = cpu().alloc(DType::F32, {R, D});
    {
      Guarded o(DType::BF16, {R, D});
      cpu().add(c, ca, cb);
      gpu().add(o.t, ga, gb);
      o.check("add");
      EXPECT_NERR(host_f32(o.t), host_f32(c), kTol1, "add");
    }
    {
      Guarded o(DType::BF16, {R, D});
      cpu().scale(c, ca, 0.70710678f);
      gpu().scale(o.t, ga, 0.70710678f);
      o.check("scale");
      EXPECT_NERR(host_f32(o.t), host_f32(c), kTol1, "scale");
    }
    for (bool scalar : {false, true}) {
      Guarded o(DType::BF16, {R, D});
      std::vector<float> ww = scalar ? std::vector<float>{w[0]} : w;
      int64_t wd = scalar ? 1 : D;
      cpu().mul_bcast(c, ca, cpu_bf16(ww, {wd}));
      gpu().mul_bcast(o.t, ga, gpu_bf16(ww, {wd}));
      o.check("mul_bcast");
      EXPECT_NERR(host_f32(o.t), host_f32(c), kTol1, "mul_bcast scalar=" << scalar);
    }
    {
      Guarded o(DType::BF16, {R, D});
      cpu().gelu_mul(c, ca, cb);
      gpu().gelu_mul(o.t, ga, gb);
      o.check("gelu_mul");
      EXPECT_NERR(host_f32(o.t), host_f32(c), kTolN, "gelu_mul");
      // in place (the forward does gelu_mul(gate, gate, up))
      Tensor g2 = gpu_bf16(a, {R, D});
      gpu().gelu_mul(g2, g2, gb);
      EXPECT_NERR(host_f32(g2), host_f32(c), kTolN, "gelu_mul in place");
    }
    if (D % 2 == 0) {
      Guarded o(DType::BF16, {R, D / 2});
      Tensor c2 = cpu().alloc(DType::F32, {R, D / 2});
      cpu().gelu_mul_fused(c2, ca);
      gpu().gelu_mul_fused(o.t, ga);
      o.check("gelu_mul_fused");
      EXPECT_NERR(host_f32(o.t), host_f32(c2), kTolN, "gelu_mul_fused");
    }
    {
      auto big = rand_bf16(n, -80.f, 80.f);
      Tensor cx = cpu_f32(big, {R, D}), gx = gpu_bf16(big, {R, D});
      cpu().softcap(cx, 30.f);
      gpu().softcap(gx, 30.f);
      EXPECT_NERR(host_f32(gx), host_f32(cx), kTolN, "softcap");
    }
  }
}

TEST(CudaOps, TransposeGatherCopy) {
  for (auto [A, B, C] : std::vector<std::array<int64_t, 3>>{{1, 3, 5}, {3, 17, 4}, {6, 2, 256}}) {
    auto x = randn_bf16(size_t(A * B * C));
    Tensor c = cpu().alloc(DType::F32, {B, A, C});
    cpu().transpose01(c, cpu_f32(x, {A, B, C}));
    Guarded o(DType::BF16, {B, A, C});
    gpu().transpose01(o.t, gpu_bf16(x, {A, B, C}));
    o.check("transpose01");
    EXPECT_EQ(host_f32(o.t), host_f32(c));
  }
  for (int64_t R : {1, 3, 17}) {
    const int64_t T = 23, C = 130;
    auto x = randn_bf16(size_t(T * C));
    std::vector<int32_t> rows(R);
    std::mt19937 g(next_seed());
    for (auto& r : rows) r = int32_t(g() % T);
    Tensor c = cpu().alloc(DType::F32, {R, C});
    cpu().gather_rows(c, cpu_f32(x, {T, C}), cpu_i32(rows, {R}));
    Guarded o(DType::BF16, {R, C});
    gpu().gather_rows(o.t, gpu_bf16(x, {T, C}), gpu_i32(rows, {R}));
    o.check("gather_rows");
    EXPECT_EQ(host_f32(o.t), host_f32(c));
  }
  // copy, fill_zero, to_f32
  auto x = randn_bf16(1000);
  Tensor gx = gpu_bf16(x, {1000});
  Guarded o(DType::BF16, {1000});
  gpu().copy(o.t, gx);
  o.check("copy");
  EXPECT_EQ(host_f32(o.t), x);
  Guarded f(DType::F32, {1000});
  gpu().to_f32(f.t, gx);
  f.check("to_f32");
  EXPECT_EQ(host_f32(f.t), x);
  gpu().fill_zero(gx);
  EXPECT_EQ(host_f32(gx), std::vector<float>(1000, 0.0f));
}

// ------------------------------------------------------------------------------------------------ linear

TEST(CudaOps, Linear) {
  // Odd row counts and K / 8 not a multiple of the GEMV block's stride (257, 513, 1025 16-byte words: one
  // thread with an extra word, one or several steps) for the split-K GEMV; K % 8 != 0 falls back to cuBLAS.
  // With K % 32 == 0, 5..8 rows take the tensor-core GEMV in Auto (N = 37: a partial block of 16 rows).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{96, 130},   {130, 96},  {512, 2560},
                                                           {1000, 264}, {2304, 64}, {37, 2056},
                                                           {13, 4104},  {67, 8200}, {37, 2080}};
  const int variants = cuda::gemv_override(-1, -1);
  for (auto [N, K] : shapes)
    for (int64_t M : {1, 2, 3, 5, 7, 8, 13, 17, 64, 130}) {
      auto x = randn_bf16(size_t(M * K)), w = randn_bf16(size_t(N * K), float(1.0 / std::sqrt(double(K))));
      Tensor c = cpu().alloc(DType::F32, {M, N});
      cpu().linear(c, cpu_f32(x, {M, K}), cpu_bf16(w, {N, K}));
      auto ref = host_f32(c);
      Tensor gx = gpu_bf16(x, {M, K}), gw = gpu_bf16(w, {N, K});
      for (CudaLinearPath path : {CudaLinearPath::Auto, CudaLinearPath::Gemv, CudaLinearPath::Cublas}) {
        cuda_set_linear_path(gpu(), path);
        // Every GEMV variant (the dispatch picks among them by shape; -1 = the one picked), with and without
        // programmatic dependent launch.
        for (int pdl : {1, 0})
          for (int v = -1; v < (path == CudaLinearPath::Gemv ? variants : 0); v++) {
            cuda::gemv_override(v, pdl);
            Guarded o(DType::BF16, {M, N});
            gpu().linear(o.t, gx, gw);
            o.check("linear");
            EXPECT_NERR(host_f32(o.t), ref, kTol1,
                        "linear M=" << M << " N=" << N << " K=" << K << " path=" << int(path)
                                    << " variant=" << v << " pdl=" << pdl);
          }
        cuda::gemv_override(-1, 1);
      }
      cuda_set_linear_path(gpu(), CudaLinearPath::Auto);
    }
  // A chain of dependent GEMVs (each reads the previous output) under PDL, in a CUDA graph: the same bits as
  // one by one without PDL.
  {
    const int64_t D = 2048;
    auto x = randn_bf16(size_t(D)), w = randn_bf16(size_t(D * D), float(1.0 / std::sqrt(double(D))));
    Tensor gw = gpu_bf16(w, {D, D});
    std::vector<Tensor> ref(6), got(6);
    cuda_set_linear_path(gpu(), CudaLinearPath::Gemv);
    for (int pdl : {0, 1}) {
      cuda::gemv_override(-1, pdl);
      std::vector<Tensor>& h = pdl ? got : ref;
      h[0] = gpu_bf16(x, {1, D});
      for (size_t i = 1; i < h.size(); i++) h[i] = gpu().alloc(DType::BF16, {1, D});
      auto run = [&] {
        for (size_t i = 1; i < h.size(); i++) gpu().linear(h[i], h[i - 1], gw);
      };
      if (pdl) {
        auto g = gpu().capture(run);
        g->replay();
      } else {
        run();
      }
    }
    for (size_t i = 1; i < ref.size(); i++)
      EXPECT_EQ(host_f32(got[i]), host_f32(ref[i])) << "chain step " << i;
    cuda::gemv_override(-1, 1);
    cuda_set_linear_path(gpu(), CudaLinearPath::Auto);
  }
}

// GEMV: the same bits on every run (fixed reduction order), for every variant.
TEST(CudaOps, LinearGemvDeterministic) {
  const int64_t M = 3, N = 300, K = 4104;
  auto x = randn_bf16(size_t(M * K)), w = randn_bf16(size_t(N * K), float(1.0 / std::sqrt(double(K))));
  Tensor gx = gpu_bf16(x, {M, K}), gw = gpu_bf16(w, {N, K});
  cuda_set_linear_path(gpu(), CudaLinearPath::Gemv);
  const int variants = cuda::gemv_override(-1, -1);
  for (int v = 0; v < variants; v++) {
    cuda::gemv_override(v, -1);
    Tensor a = gpu().alloc(DType::BF16, {M, N}), b = gpu().alloc(DType::BF16, {M, N});
    gpu().linear(a, gx, gw);
    gpu().linear(b, gx, gw);
    EXPECT_EQ(host_f32(a), host_f32(b)) << "variant " << v;
  }
  cuda::gemv_override(-1, -1);
  cuda_set_linear_path(gpu(), CudaLinearPath::Auto);
}

// ------------------------------------------------------------------------------------------------ rope

TEST(CudaOps, Rope) {
  struct Case {
    int64_t T, heads, D;
    bool proportional;
  };
  for (auto cs :
       std::vector<Case>{{1, 8, 256, false}, {3, 2, 512, true}, {17, 4, 10, false}, {5, 1, 256, false}}) {
    RopeParams rp;
    if (cs.proportional) {
      rp.rope_type = "proportional";
      rp.rope_theta = 1e6;
      rp.partial_rotary_factor = 0.25;
    }
    auto inv = rope_inv_freq(rp, int(cs.D));
    std::vector<int32_t> pos(cs.T);
    std::mt19937 g(next_seed());
    for (auto& p : pos) p = int32_t(g() % 131072);
    pos[0] = 0;
    auto x = randn_bf16(size_t(cs.T * cs.heads * cs.D));
    Tensor cx = cpu_f32(x, {cs.T, cs.heads, cs.D});
    cpu().rope(cx, cpu_i32(pos, {cs.T}), cpu_f32(inv, {cs.D / 2}));
    Tensor gx = gpu_bf16(x, {cs.T, cs.heads, cs.D});
    gpu().rope(gx, gpu_i32(pos, {cs.T}), gpu_f32(inv, {cs.D / 2}));
    EXPECT_NERR(host_f32(gx), host_f32(cx), kTolN, "rope D=" << cs.D);
  }
}

// Per-head norms + RoPE of q, k, v in one kernel: against the CPU op, and bit for bit against rms_norm and
// rope on the GPU. Head counts above the kernel's 16 warps, odd head dims, q only (KV-shared layers).
TEST(CudaOps, QkvNormRope) {
  struct Case {
    int64_t T, nh, kvh, D;  // kvh 0: q only
    bool proportional;
  };
  for (auto cs : std::vector<Case>{{1, 8, 1, 256, false},
                                   {3, 4, 2, 512, true},
                                   {17, 3, 1, 10, false},
                                   {5, 2, 0, 256, false},
                                   {2, 32, 4, 512, true}}) {
    SCOPED_TRACE(testing::Message() << "T=" << cs.T << " nh=" << cs.nh << " kvh=" << cs.kvh << " D=" << cs.D);
    RopeParams rp;
    if (cs.proportional) rp.rope_type = "proportional", rp.rope_theta = 1e6, rp.partial_rotary_factor = 0.25;
    auto inv = rope_inv_freq(rp, int(cs.D));
    std::vector<int32_t> pos(cs.T);
    std::mt19937 g(next_seed());
    for (auto& p : pos) p = int32_t(g() % 131072);
    const int64_t T = cs.T, D = cs.D, nq = T * cs.nh * D, nk = T * cs.kvh * D;
    auto q = randn_bf16(size_t(nq), 2.0f), k = randn_bf16(size_t(nk), 2.0f), v = randn_bf16(size_t(nk), 2.0f);
    auto qw = rand_bf16(size_t(D), 0.8f, 1.2f), kw = rand_bf16(size_t(D), 0.8f, 1.2f);
    const bool kv = cs.kvh > 0;
    Tensor cq = cpu_f32(q, {T, cs.nh, D}), ck, cv;
    if (kv) ck = cpu_f32(k, {T, cs.kvh, D}), cv = cpu_f32(v, {T, cs.kvh, D});
    cpu().qkv_norm_rope(cq, ck, cv, cpu_bf16(qw, {D}), cpu_bf16(kw, {D}), cpu_i32(pos, {T}),
                        cpu_f32(inv, {D / 2}), 1e-6f);
    Tensor gpos = gpu_i32(pos, {T}), ginv = gpu_f32(inv, {D / 2}), gqw = gpu_bf16(qw, {D}),
           gkw = gpu_bf16(kw, {D});
    Guarded fq(DType::BF16, {T, cs.nh, D}), fk(DType::BF16, {T, cs.kvh, D}), fv(DType::BF16, {T, cs.kvh, D});
    gpu().copy(fq.t, gpu_bf16(q, {T, cs.nh, D}));
    if (kv) gpu().copy(fk.t, gpu_bf16(k, {T, cs.kvh, D})), gpu().copy(fv.t, gpu_bf16(v, {T, cs.kvh, D}));
    gpu().qkv_norm_rope(fq.t, kv ? fk.t : Tensor(), kv ? fv.t : Tensor(), gqw, gkw, gpos, ginv, 1e-6f);
    fq.check("qkv_norm_rope q");
    EXPECT_NERR(host_f32(fq.t), host_f32(cq), kTolN, "qkv_norm_rope q");
    Tensor uq = gpu_bf16(q, {T, cs.nh, D});  // unfused
    gpu().rms_norm(uq, uq, gqw, 1e-6f);
    gpu().rope(uq, gpos, ginv);
    EXPECT_EQ(host_f32(fq.t), host_f32(uq)) << "q differs from rms_norm + rope";
    if (!kv) continue;
    fk.check("qkv_norm_rope k");
    fv.check("qkv_norm_rope v");
    EXPECT_NERR(host_f32(fk.t), host_f32(ck), kTolN, "qkv_norm_rope k");
    EXPECT_NERR(host_f32(fv.t), host_f32(cv), kTol1, "qkv_norm_rope v");
    Tensor uk = gpu_bf16(k, {T, cs.kvh, D}), uv = gpu_bf16(v, {T, cs.kvh, D});
    gpu().rms_norm(uk, uk, gkw, 1e-6f);
    gpu().rope(uk, gpos, ginv);
    gpu().rms_norm(uv, uv, Tensor(), 1e-6f);
    EXPECT_EQ(host_f32(fk.t), host_f32(uk)) << "k differs from rms_norm + rope";
    EXPECT_EQ(host_f32(fv.t), host_f32(uv)) << "v differs from rms_norm";
  }
}

// ------------------------------------------------------------------------------------------------ attention

struct AttnCase {
  std::vector<int> prefix, q_len;
  int nh, kvh, D, window;
  bool block_keys, tree;
  const char* name;
};

void run_attention_case(const AttnCase& ac) {
  SCOPED_TRACE(ac.name);
  const int S = int(ac.prefix.size()), ps = 16;
  std::mt19937 g(next_seed());
  // Page tables: every sequence gets fresh pages from a shuffled pool; windowed sequences have the pages that
  // no query row can see returned (-1).
  int max_pages = 1;
  std::vector<int> npages(S);
  for (int s = 0; s < S; s++) {
    npages[s] = (ac.prefix[s] + ac.q_len[s] + ps - 1) / ps;
    max_pages = std::max(max_pages, npages[s]);
  }
  int total_pages = 0;
  for (int n : npages) total_pages += n;
  total_pages += 3;  // spare pages never referenced
  std::vector<int32_t> perm(total_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g);
  std::vector<int32_t> table(size_t(S) * max_pages, -1);
  int next = 0;
  for (int s = 0; s < S; s++)
    for (int p = 0; p < npages[s]; p++) {
      bool freed = ac.window > 0 && (p + 1) * ps <= ac.prefix[s] - ac.window + 1;
      int32_t page = perm[next++];
      table[size_t(s) * max_pages + p] = freed ? -1 : page;
    }
  // Rows: positions, tree mask.
  std::vector<int32_t> cu(S + 1, 0), pos;
  int max_q = 0;
  for (int s = 0; s < S; s++) cu[s + 1] = cu[s] + ac.q_len[s], max_q = std::max(max_q, ac.q_len[s]);
  const int T = cu[S];
  std::vector<uint8_t> mask;
  if (ac.tree) mask.assign(size_t(T) * max_q, 0);
  for (int s = 0; s < S; s++) {
    std::vector<int> parent(ac.q_len[s], -1), depth(ac.q_len[s], 0);
    for (int i = 0; i < ac.q_len[s]; i++) {
      if (ac.tree && i > 0)
        parent[i] = int(g() % i), depth[i] = depth[parent[i]] + 1;
      else if (i > 0)
        depth[i] = i;
      int32_t p =
          ac.block_keys ? ac.prefix[s] + depth[i] : ac.prefix[s] + int32_t(g() % 2);  // read-only: p or p+1
      pos.push_back(p);
      if (ac.tree)
        for (int j = i; j >= 0; j = parent[j]) mask[size_t(cu[s] + i) * max_q + j] = 1;
    }
  }
  const int64_t slots = int64_t(total_pages) * ps, nh = ac.nh, kvh = ac.kvh, D = ac.D;
  auto kc = randn_bf16(size_t(slots * kvh * D), 0.3f), vc = randn_bf16(size_t(slots * kvh * D));
  auto q = randn_bf16(size_t(T * nh * D), 0.3f);
  auto k = randn_bf16(size_t(T * kvh * D), 0.3f), v = randn_bf16(size_t(T * kvh * D));

  auto meta = [&](Backend& be, bool on_gpu) {
    AttnMeta m;
    auto up = [&](const std::vector<int32_t>& x, std::initializer_list<int64_t> sh) {
      return on_gpu ? gpu_i32(x, sh) : cpu_i32(x, sh);
    };
    m.num_seqs = S;
    m.max_q = max_q;
    m.cu_q = up(cu, {S + 1});
    std::vector<int32_t> pre(ac.prefix.begin(), ac.prefix.end());
    m.prefix_len = up(pre, {S});
    m.positions = up(pos, {T});
    m.block_keys = ac.block_keys;
    if (ac.tree) {
      m.tree_mask = be.alloc(DType::U8, {T, max_q});
      if (on_gpu)
        be.copy_from_host(m.tree_mask, mask.data());
      else
        std::memcpy(m.tree_mask.data, mask.data(), mask.size());
    }
    return m;
  };
  AttnMeta cm = meta(cpu(), false), gm = meta(gpu(), true);
  KvPageTable cpt{cpu_i32(table, {S, max_pages}), ps}, gpt{gpu_i32(table, {S, max_pages}), ps};

  Tensor ckc = cpu_f32(kc, {slots, kvh, D}), cvc = cpu_f32(vc, {slots, kvh, D});
  Tensor gkc = gpu_bf16(kc, {slots, kvh, D}), gvc = gpu_bf16(vc, {slots, kvh, D});
  if (ac.block_keys) {
    cpu().kv_write(ckc, cvc, cpu_f32(k, {T, kvh, D}), cpu_f32(v, {T, kvh, D}), cm, cpt);
    gpu().kv_write(gkc, gvc, gpu_bf16(k, {T, kvh, D}), gpu_bf16(v, {T, kvh, D}), gm, gpt);
    EXPECT_EQ(host_f32(gkc), host_f32(ckc)) << "kv_write K cache";
    EXPECT_EQ(host_f32(gvc), host_f32(cvc)) << "kv_write V cache";
  }
  Tensor c_out = cpu().alloc(DType::F32, {T, nh, D});
  cpu().attention(c_out, cpu_f32(q, {T, nh, D}), ckc, cvc, cm, cpt, ac.window);
  Guarded o(DType::BF16, {T, nh, D});
  Tensor gq = gpu_bf16(q, {T, nh, D});
  gpu().attention(o.t, gq, gkc, gvc, gm, gpt, ac.window);
  o.check("attention");
  EXPECT_NERR(host_f32(o.t), host_f32(c_out), kTol1, "attention");
  // Replayed from a CUDA graph (PDL launches under stream capture): the same bits.
  Guarded og(DType::BF16, {T, nh, D});
  auto graph = gpu().capture([&] { gpu().attention(og.t, gq, gkc, gvc, gm, gpt, ac.window); });
  graph->replay();
  og.check("attention (graph)");
  EXPECT_EQ(host_f32(og.t), host_f32(o.t)) << "graph replay differs from the eager launch";
}

TEST(CudaOps, Attention) {
  const std::vector<AttnCase> cases = {
      {{0}, {1}, 8, 1, 256, 0, true, false, "single token, GQA 8, D=256"},
      {{0}, {17}, 8, 8, 256, 0, true, false, "prefill 17, MHA"},
      {{37}, {1}, 8, 4, 512, 0, true, false, "decode D=512 GQA 2"},
      {{5, 17, 40, 300}, {1, 3, 17, 2}, 16, 2, 256, 0, true, false, "ragged prefixes across pages, GQA 8"},
      {{5, 17, 40, 300}, {1, 3, 17, 2}, 4, 2, 512, 0, true, false, "ragged, D=512 GQA 2"},
      {{15, 16, 33}, {3, 1, 5}, 6, 2, 10, 0, true, false, "small odd head dim 10, GQA 3"},
      {{100, 3, 700}, {1, 17, 4}, 8, 2, 256, 33, true, false, "sliding window 33, freed pages"},
      {{1023, 511}, {1, 3}, 8, 1, 256, 512, true, false, "window 512 at page edges"},
      {{2049, 40}, {1, 1}, 32, 4, 512, 0, true, false, "long context split-KV, GQA 8 D=512"},
      {{4097}, {1}, 8, 1, 256, 0, true, false, "long context 4097, batch 1 (many splits)"},
      {{20, 47}, {6, 8}, 8, 2, 256, 0, true, true, "tree mask verify"},
      {{20, 47}, {6, 8}, 4, 1, 512, 16, true, true, "tree mask with window"},
      {{20, 300, 7}, {1, 4, 2}, 8, 1, 256, 0, false, false, "read-only queries (assistant)"},
      {{900, 45}, {3, 1}, 4, 2, 512, 64, false, false, "read-only queries with window"},
      // KV splits (32 keys each over the page table's width) and splits that see no keys.
      {{37}, {1}, 8, 2, 256, 0, true, false, "2 splits"},
      {{70}, {1}, 8, 2, 256, 0, true, false, "3 splits"},
      {{400}, {1}, 8, 2, 512, 0, true, false, "13 splits D=512 (E4B full layer)"},
      {{400, 3}, {1, 1}, 8, 2, 512, 0, true, false, "13 splits, a row with 12 empty ones"},
      {{700}, {1}, 8, 2, 256, 512, true, false, "16 splits, window 512, freed pages (E4B sliding)"},
      {{529}, {1}, 8, 2, 512, 0, true, false, "17 splits"},
      {{1100, 9}, {1, 1}, 8, 2, 256, 0, true, false, "35 splits, a row with 34 empty ones"},
      {{260, 30}, {5, 3}, 8, 2, 256, 0, true, true, "tree mask, 9 splits"},
      {{260, 30}, {5, 3}, 4, 1, 512, 40, true, true, "tree mask with window 40, 2 splits"},
      {{150, 2}, {2, 1}, 8, 1, 256, 0, false, false, "read-only, 5 splits, a row with 4 empty ones"},
  };
  for (const auto& c : cases) run_attention_case(c);
}

TEST(CudaOps, AttentionFreedPageIsAnError) {
  // A visible slot in a freed page must be reported, not read.
  AttnMeta m = one_row_meta(20, 20);
  KvPageTable pt{gpu_i32({-1, 0}, {1, 2}), 16};
  Tensor kc = gpu_bf16(randn_bf16(64 * 16), {64, 1, 16}), vc = gpu_bf16(randn_bf16(64 * 16), {64, 1, 16});
  Tensor o = gpu().alloc(DType::BF16, {1, 2, 16});
  gpu().attention(o, gpu_bf16(randn_bf16(32), {1, 2, 16}), kc, vc, m, pt, 0);
  EXPECT_THROW(gpu().synchronize(), Error);
  gpu().synchronize();
}

TEST(CudaOps, AttentionNoVisibleKeyIsAnError) {
  // A read-only row with no prefix sees no key: reported with 1, 2, 20 and 80 KV splits.
  for (int pages : {1, 4, 40, 160}) {
    SCOPED_TRACE(pages);
    AttnMeta m = one_row_meta(0, 0);
    m.block_keys = false;
    std::vector<int32_t> table(static_cast<size_t>(pages));
    std::iota(table.begin(), table.end(), 0);
    KvPageTable pt{gpu_i32(table, {1, pages}), 16};
    const int64_t slots = int64_t(pages) * 16;
    Tensor kc = gpu_bf16(randn_bf16(size_t(slots * 16)), {slots, 1, 16});
    Tensor vc = gpu_bf16(randn_bf16(size_t(slots * 16)), {slots, 1, 16});
    Tensor o = gpu().alloc(DType::BF16, {1, 2, 16});
    gpu().attention(o, gpu_bf16(randn_bf16(32), {1, 2, 16}), kc, vc, m, pt, 0);
    EXPECT_THROW(gpu().synchronize(), Error);
    gpu().synchronize();
  }
}

// ------------------------------------------------------------------------------------------------ MoE

TEST(CudaOps, MoeRoute) {
  for (int64_t T : {1, 3, 17})
    for (auto [E, k] : std::vector<std::pair<int64_t, int>>{{8, 2}, {128, 8}, {100, 5}}) {
      auto logits = randn_bf16(size_t(T * E), 2.0f);
      if (T > 1) logits[E + 1] = logits[E + 2] = 9.0f;  // an exact tie: lower index first
      auto scale = rand_bf16(size_t(E), 0.5f, 1.5f);
      Tensor cw = cpu().alloc(DType::F32, {T, k}), ce = cpu().alloc(DType::I32, {T, k});
      cpu().moe_route(cw, ce, cpu_f32(logits, {T, E}), cpu_bf16(scale, {E}), k);
      Guarded gw(DType::F32, {T, k}), ge(DType::I32, {T, k});
      gpu().moe_route(gw.t, ge.t, gpu_bf16(logits, {T, E}), gpu_bf16(scale, {E}), k);
      gw.check("moe_route weights");
      ge.check("moe_route experts");
      EXPECT_EQ(host_i32(ge.t), host_i32(ce)) << "T=" << T << " E=" << E;
      EXPECT_NERR(host_f32(gw.t), host_f32(cw), 1e-5, "moe_route weights");
    }
}

TEST(CudaOps, MoeExperts) {
  for (int64_t T : {1, 3, 17, 64})
    for (auto [E, k, H, I] :
         std::vector<std::array<int64_t, 4>>{{8, 2, 96, 24}, {16, 4, 256, 64}, {128, 8, 64, 704}}) {
      auto x = randn_bf16(size_t(T * H));
      auto gu = randn_bf16(size_t(E * 2 * I * H), float(1 / std::sqrt(double(H))));
      auto dn = randn_bf16(size_t(E * H * I), float(1 / std::sqrt(double(I))));
      std::vector<int32_t> ex(size_t(T * k));
      std::vector<float> wts(size_t(T * k));
      std::mt19937 g(next_seed());
      for (int64_t t = 0; t < T; t++) {
        std::vector<int32_t> all(E);
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), g);
        for (int j = 0; j < k; j++)
          ex[t * k + j] = all[j], wts[t * k + j] = 0.05f + float(g() % 1000) / 1000.f;
      }
      Tensor c = cpu().alloc(DType::F32, {T, H});
      cpu().moe_experts(c, cpu_f32(x, {T, H}), cpu_f32(wts, {T, k}), cpu_i32(ex, {T, k}),
                        cpu_bf16(gu, {E, 2 * I, H}), cpu_bf16(dn, {E, H, I}));
      Guarded o(DType::BF16, {T, H});
      gpu().moe_experts(o.t, gpu_bf16(x, {T, H}), gpu_f32(wts, {T, k}), gpu_i32(ex, {T, k}),
                        gpu_bf16(gu, {E, 2 * I, H}), gpu_bf16(dn, {E, H, I}));
      o.check("moe_experts");
      EXPECT_NERR(host_f32(o.t), host_f32(c), kTolN, "moe_experts T=" << T << " E=" << E);
    }
}

}  // namespace
}  // namespace mtpserve
