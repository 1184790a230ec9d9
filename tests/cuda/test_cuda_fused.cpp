// The fused decode ops against the CUDA ops they replace (bit for bit: the same sums and roundings) and
// against the CPU ops (bounds as in test_cuda_ops.cpp): qkv_norm_rope_kv (split heads, norms, RoPE and the
// KV write in one kernel) and linear_gelu (the MLP activation made in the GEMV's epilogue). Then
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
  AttnMeta m = one_row_meta(20, 20);
  KvPageTable pt{gpu_i32({0, -1}, {1, 2}), 16};  // slot 20 lies in the freed second page
  Tensor q = gpu().alloc(DType::BF16, {1, nh, D}), qkv = gpu_bf16(randn_bf16(size_t(4 * D)), {1, 4, D});
  Tensor kc = gpu().alloc(DType::BF16, {slots, kvh, D}), vc = gpu().alloc(DType::BF16, {slots, kvh, D});
  Tensor w = gpu_bf16(rand_bf16(size_t(D), 0.8f, 1.2f), {D});
  Tensor inv = gpu_f32(std::vector<float>(size_t(D / 2), 0.01f), {D / 2});
  gpu().qkv_norm_rope_kv(q, qkv, w, w, m.positions, inv, 1e-6f, kc, vc, m, pt);
  EXPECT_THROW(gpu().synchronize(), Error);
}

// linear_gelu (the activation in the GEMV's epilogue) on the fused gate|up projection w [2I, K] and with a
// given up (w [I, K]), M = 1..8 (1-4: split-K GEMV, 5-8: tensor-core GEMV when K % 32 == 0, else cuBLAS +
// gelu_mul), against the CPU and, bit for bit, against linear + gelu_mul(_fused) on the GPU with the same
// GEMV: the epilogue rounds as gelu_mul does, and a row's sum does not depend on which block row holds it
// (forced split-K variants with equal threads and steps per row; the tensor-core tile).
TEST(CudaFused, LinearGeluEqualsLinearThenGeluMul) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{10240, 2560}, {256, 2560}, {37, 2080}, {24, 40}};
  for (auto [I, K] : shapes)
    for (int64_t M : {1, 2, 3, 4, 5, 8})
      for (bool pairs : {true, false}) {
        SCOPED_TRACE(testing::Message() << "M=" << M << " I=" << I << " K=" << K << " pairs " << pairs);
        const int64_t rows = pairs ? 2 * I : I;
        auto x = randn_bf16(size_t(M * K)),
             w = randn_bf16(size_t(rows * K), float(1.0 / std::sqrt(double(K))));
        auto up = randn_bf16(size_t(M * I));
        Tensor gx = gpu_bf16(x, {M, K}), gw = gpu_bf16(w, {rows, K}), gup = gpu_bf16(up, {M, I});
        Tensor cg = cpu().alloc(DType::F32, {M, rows}), c = cpu().alloc(DType::F32, {M, I});
        cpu().linear(cg, cpu_f32(x, {M, K}), cpu_bf16(w, {rows, K}));
        if (pairs)
          cpu().gelu_mul_fused(c, cg);
        else
          cpu().gelu_mul(c, cg, cpu_f32(up, {M, I}));
        // Forced split-K variants whose threads and steps per row match between the two matrices' picks
        // (gate pairs: v5, v8; gelu-times-up: v2, v3), and the shape's own pick (-1).
        const std::vector<int> variants = pairs ? std::vector<int>{-1, 5, 8} : std::vector<int>{-1, 2, 3};
        for (int v : variants) {
          cuda::gemv_override(v, -1);
          Guarded o(DType::BF16, {M, I});
          gpu().linear_gelu(o.t, gx, gw, pairs ? Tensor() : gup);
          o.check("linear_gelu");
          EXPECT_NERR(host_f32(o.t), host_f32(c), kTolN, "linear_gelu vs cpu, variant " << v);
          Tensor g = gpu().alloc(DType::BF16, {M, rows}), ref = gpu().alloc(DType::BF16, {M, I});
          gpu().linear(g, gx, gw);
          if (pairs)
            gpu().gelu_mul_fused(ref, g);
          else
            gpu().gelu_mul(ref, g, gup);
          if (v >= 0 || M >= 5) {
            EXPECT_EQ(host_f32(o.t), host_f32(ref)) << "differs from linear + gelu_mul, variant " << v;
          }
        }
        cuda::gemv_override(-1, -1);
      }
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
