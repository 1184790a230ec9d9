// The fused decode ops against the CUDA ops they replace (bit for bit: the same sums and roundings) and
// against the CPU ops (bounds as in test_cuda_ops.cpp): qkv_norm_rope_kv (split heads, norms, RoPE and the
// KV write in one kernel) and gelu_linear (the MLP activation made inside the GEMV's loads). Then
// programmatic dependent launch on every kernel: the tiny model gives the same bits with PDL on (in a graph)
// and off.
#include "cuda_test_util.h"
#include "engine/kv_cache.h"

namespace mtpserve {
namespace {

TEST(CudaFused, QkvNormRopeKvEqualsSplitThenUnfusedOps) {
  struct Case {
    std::vector<int> prefix, q_len;
    int64_t nh, kvh, D;
    bool v_is_k, proportional;
  };
  const std::vector<Case> cases = {{{37}, {1}, 8, 2, 256, false, false},
                                   {{0, 20}, {3, 2}, 4, 1, 512, true, true},
                                   {{5, 16, 300}, {1, 17, 2}, 32, 16, 256, false, false},
                                   {{9}, {4}, 3, 1, 10, false, true}};
  for (const Case& cs : cases) {
    const int S = int(cs.prefix.size()), ps = 16;
    SCOPED_TRACE(testing::Message() << "S=" << S << " nh=" << cs.nh << " kvh=" << cs.kvh << " D=" << cs.D
                                    << " v_is_k=" << cs.v_is_k);
    std::mt19937 g(next_seed());
    std::vector<int32_t> cu(S + 1, 0), pre(cs.prefix.begin(), cs.prefix.end()), pos;
    int max_pages = 0;
    for (int s = 0; s < S; s++) {
      cu[s + 1] = cu[s] + cs.q_len[s];
      max_pages = std::max(max_pages, (cs.prefix[s] + cs.q_len[s] + ps - 1) / ps);
      for (int i = 0; i < cs.q_len[s]; i++) pos.push_back(cs.prefix[s] + i);
    }
    const int T = cu[S], total = S * max_pages + 3;
    std::vector<int32_t> perm(total), table(size_t(S) * max_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), g);
    for (size_t i = 0; i < table.size(); i++) table[i] = perm[i];
    const int64_t nh = cs.nh, kvh = cs.kvh, D = cs.D, heads = nh + (cs.v_is_k ? 1 : 2) * kvh;
    const int64_t slots = int64_t(total) * ps;
    RopeParams rp;
    if (cs.proportional) rp.rope_type = "proportional", rp.rope_theta = 1e6, rp.partial_rotary_factor = 0.25;
    auto inv = rope_inv_freq(rp, int(D));
    auto qkv = randn_bf16(size_t(T * heads * D), 2.0f);
    auto qw = rand_bf16(size_t(D), 0.8f, 1.2f), kw = rand_bf16(size_t(D), 0.8f, 1.2f);
    auto cache0 = randn_bf16(size_t(slots * kvh * D), 0.5f);  // slots not written must keep these

    AttnMeta gm;
    gm.num_seqs = S;
    gm.max_q = *std::max_element(cs.q_len.begin(), cs.q_len.end());
    gm.cu_q = gpu_i32(cu, {S + 1});
    gm.prefix_len = gpu_i32(pre, {S});
    gm.positions = gpu_i32(pos, {T});
    KvPageTable gpt{gpu_i32(table, {S, max_pages}), ps};
    Tensor gqw = gpu_bf16(qw, {D}), gkw = gpu_bf16(kw, {D}), ginv = gpu_f32(inv, {D / 2});
    Tensor gqkv = gpu_bf16(qkv, {T, heads, D});

    Guarded q(DType::BF16, {T, nh, D});
    Tensor kc = gpu_bf16(cache0, {slots, kvh, D}), vc = gpu_bf16(cache0, {slots, kvh, D});
    gpu().qkv_norm_rope_kv(q.t, gqkv, gqw, gkw, gm.positions, ginv, 1e-6f, kc, vc, gm, gpt);
    q.check("qkv_norm_rope_kv q");

    // Unfused on the GPU: the heads split on the host, then qkv_norm_rope and kv_write.
    std::vector<float> hq(size_t(T * nh * D)), hk(size_t(T * kvh * D)), hv(size_t(T * kvh * D));
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < heads; h++)
        for (int64_t d = 0; d < D; d++) {
          const float x = qkv[size_t((t * heads + h) * D + d)];
          if (h < nh) hq[size_t((t * nh + h) * D + d)] = x;
          if (h >= nh && h < nh + kvh) {
            hk[size_t((t * kvh + h - nh) * D + d)] = x;
            if (cs.v_is_k) hv[size_t((t * kvh + h - nh) * D + d)] = x;
          }
          if (h >= nh + kvh) hv[size_t((t * kvh + h - nh - kvh) * D + d)] = x;
        }
    Tensor uq = gpu_bf16(hq, {T, nh, D}), uk = gpu_bf16(hk, {T, kvh, D}), uv = gpu_bf16(hv, {T, kvh, D});
    Tensor ukc = gpu_bf16(cache0, {slots, kvh, D}), uvc = gpu_bf16(cache0, {slots, kvh, D});
    gpu().qkv_norm_rope(uq, uk, uv, gqw, gkw, gm.positions, ginv, 1e-6f);
    gpu().kv_write(ukc, uvc, uk, uv, gm, gpt);
    EXPECT_EQ(host_f32(q.t), host_f32(uq)) << "q differs from split + qkv_norm_rope";
    EXPECT_EQ(host_f32(kc), host_f32(ukc)) << "K cache differs from split + qkv_norm_rope + kv_write";
    EXPECT_EQ(host_f32(vc), host_f32(uvc)) << "V cache differs from split + qkv_norm_rope + kv_write";

    // And the CPU op (the fp32 specification): q within the rope bound.
    AttnMeta cm = gm;
    cm.cu_q = cpu_i32(cu, {S + 1});
    cm.prefix_len = cpu_i32(pre, {S});
    cm.positions = cpu_i32(pos, {T});
    KvPageTable cpt{cpu_i32(table, {S, max_pages}), ps};
    Tensor cq = cpu().alloc(DType::F32, {T, nh, D});
    Tensor ckc = cpu_f32(cache0, {slots, kvh, D}), cvc = cpu_f32(cache0, {slots, kvh, D});
    cpu().qkv_norm_rope_kv(cq, cpu_f32(qkv, {T, heads, D}), cpu_bf16(qw, {D}), cpu_bf16(kw, {D}),
                           cm.positions, cpu_f32(inv, {D / 2}), 1e-6f, ckc, cvc, cm, cpt);
    EXPECT_NERR(host_f32(q.t), host_f32(cq), kTolN, "qkv_norm_rope_kv q vs cpu");
    EXPECT_NERR(host_f32(kc), host_f32(ckc), kTolN, "qkv_norm_rope_kv K cache vs cpu");
    EXPECT_NERR(host_f32(vc), host_f32(cvc), kTol1, "qkv_norm_rope_kv V cache vs cpu");
  }
}

TEST(CudaFused, QkvNormRopeKvFreedPageIsAnError) {
  const int64_t nh = 2, kvh = 1, D = 16, slots = 64;
  AttnMeta m;
  m.num_seqs = 1;
  m.max_q = 1;
  m.cu_q = gpu_i32({0, 1}, {2});
  m.prefix_len = gpu_i32({20}, {1});
  m.positions = gpu_i32({20}, {1});
  KvPageTable pt{gpu_i32({0, -1}, {1, 2}), 16};  // slot 20 lies in the freed second page
  Tensor q = gpu().alloc(DType::BF16, {1, nh, D}), qkv = gpu_bf16(randn_bf16(size_t(4 * D)), {1, 4, D});
  Tensor kc = gpu().alloc(DType::BF16, {slots, kvh, D}), vc = gpu().alloc(DType::BF16, {slots, kvh, D});
  Tensor w = gpu_bf16(rand_bf16(size_t(D), 0.8f, 1.2f), {D});
  Tensor inv = gpu_f32(std::vector<float>(size_t(D / 2), 0.01f), {D / 2});
  gpu().qkv_norm_rope_kv(q, qkv, w, w, m.positions, inv, 1e-6f, kc, vc, m, pt);
  EXPECT_THROW(gpu().synchronize(), Error);
}

// gelu_linear with the fused GEMV forced on (it is off by default: MTP_GELU_MAX_M): both operand forms
// ([M, 2I] gate | up, or gate and up apart), M = 1..5 (5: the unfused fallback), against gelu_mul(_fused) +
// linear with the same GEMV variant forced (bit for bit) and the CPU.
TEST(CudaFused, GeluLinearEqualsGeluMulThenLinear) {
  cuda::gelu_fuse_override(4);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{2560, 10240}, {2560, 256}, {96, 40}, {37, 2056}};
  for (auto [N, I] : shapes)
    for (int64_t M : {1, 2, 4, 5})
      for (bool fused_operand : {true, false}) {
        SCOPED_TRACE(testing::Message()
                     << "M=" << M << " N=" << N << " I=" << I << " fused " << fused_operand);
        auto gu = randn_bf16(size_t(M * 2 * I)),
             w = randn_bf16(size_t(N * I), float(1.0 / std::sqrt(double(I))));
        std::vector<float> gate(size_t(M * I)), up(size_t(M * I));
        for (int64_t m = 0; m < M; m++)
          for (int64_t i = 0; i < I; i++)
            gate[size_t(m * I + i)] = gu[size_t(m * 2 * I + i)],
                                up[size_t(m * I + i)] = gu[size_t(m * 2 * I + I + i)];
        Tensor gw = gpu_bf16(w, {N, I});
        Tensor ggu = gpu_bf16(gu, {M, 2 * I}), gg = gpu_bf16(gate, {M, I}), gup = gpu_bf16(up, {M, I});
        Tensor c = cpu().alloc(DType::F32, {M, N}), ca = cpu().alloc(DType::F32, {M, I});
        cpu().gelu_mul_fused(ca, cpu_f32(gu, {M, 2 * I}));
        cpu().linear(c, ca, cpu_bf16(w, {N, I}));
        for (int v : {-1, 4, 5, 7}) {
          cuda::gemv_override(v, -1);
          Guarded o(DType::BF16, {M, N});
          if (fused_operand)
            gpu().gelu_linear(o.t, ggu, Tensor(), gw);
          else
            gpu().gelu_linear(o.t, gg, gup, gw);
          o.check("gelu_linear");
          EXPECT_NERR(host_f32(o.t), host_f32(c), kTolN, "gelu_linear vs cpu, variant " << v);
          Tensor a = gpu().alloc(DType::BF16, {M, I}), ref = gpu().alloc(DType::BF16, {M, N});
          gpu().gelu_mul(a, gg, gup);
          gpu().linear(ref, a, gw);
          if (v >= 0) {
            EXPECT_EQ(host_f32(o.t), host_f32(ref)) << "differs from gelu_mul + linear, variant " << v;
          }
        }
        cuda::gemv_override(-1, -1);
      }
  cuda::gelu_fuse_override(-1);
}

// Programmatic dependent launch on every kernel: a race (a kernel reading its predecessor's output before the
// wait) would change bits. The tiny model's decode steps and a chunked prefill give the same logits with PDL
// off (eager) and on (eager, and replayed from a graph).
TEST(CudaFused, PdlGivesTheSameBitsAsSerialLaunches) {
  const char* root = std::getenv("MTP_SOURCE_DIR");
  const std::string dir = std::string(root ? root : ".") + "/models/tiny-gemma4";
  auto mg = Gemma4Model::load(dir, gpu());
  auto toks = test::random_tokens(40, 8000, 9);
  std::vector<std::vector<float>> runs;
  for (int pdl : {0, 1}) {
    cuda::gemv_override(-1, pdl);
    KvCache kv(*mg, 16, 16);
    SequenceState st;
    runs.push_back(prefill(*mg, kv, st, toks, 7, true));
  }
  cuda::gemv_override(-1, 1);
  EXPECT_EQ(runs[0], runs[1]) << "chunked prefill logits differ with PDL on";

  // One decode step replayed from a graph (PDL edges) against the eager step without PDL.
  const int V = mg->config().vocab_size;
  std::vector<std::vector<float>> step(2);
  for (int pdl : {0, 1}) {
    cuda::gemv_override(-1, pdl);
    KvCache kv(*mg, 16, 16);
    SequenceState st;
    prefill(*mg, kv, st, toks, 40, false);
    const int prefix = int(st.tokens.size());
    ASSERT_TRUE(kv.reserve(st.pages, prefix + 1));
    ForwardBatch fb;  // one decode step after the prompt
    fb.tokens = {toks[3]};
    fb.positions = {prefix};
    fb.seqs.push_back({1, prefix, &st.pages.full, &st.pages.sliding});
    fb.output_rows = {0};
    DeviceMeta meta = upload_meta(gpu(), fb, true);
    ForwardOutput out;
    auto run = [&] { out = mg->forward_device(meta, kv.storage()); };
    std::unique_ptr<Graph> g;
    if (pdl) {
      g = gpu().capture(run);
      g->replay();
    } else {
      run();
    }
    step[pdl].resize(size_t(V));
    gpu().copy_to_host(step[pdl].data(), out.logits);
  }
  cuda::gemv_override(-1, 1);
  EXPECT_EQ(step[0], step[1]) << "graph decode step with PDL differs from the eager one without";
}

}  // namespace
}  // namespace mtpserve
