// The CUDA backend beyond single ops: argmax picks, graph capture and replay with the caching allocator,
// weight upload, and the whole trained tiny model against the CPU forward.
#include "cuda_test_util.h"

namespace mtpserve {
namespace {

// ------------------------------------------------------------------------------------------------ sampling

TEST(CudaOps, Argmax) {
  for (int64_t R : {1, 3, 17})
    for (int64_t V : {97, 262144}) {
      auto x = rand_bf16(size_t(R * V), -30.f, 30.f);
      std::mt19937 g(next_seed());
      for (int64_t r = 0; r < R; r++) {  // plant an exact tie for the maximum
        int64_t a = g() % V, b = g() % V;
        x[r * V + a] = x[r * V + b] = 31.0f;
      }
      Tensor c = cpu().alloc(DType::I32, {R});
      cpu().argmax(c, cpu_f32(x, {R, V}));
      for (bool f32 : {false, true}) {
        Guarded o(DType::I32, {R});
        gpu().argmax(o.t, f32 ? gpu_f32(x, {R, V}) : gpu_bf16(x, {R, V}));
        o.check("argmax");
        EXPECT_EQ(host_i32(o.t), host_i32(c)) << "R=" << R << " V=" << V << " f32=" << f32;
      }
    }
}

TEST(CudaOps, ArgmaxIds) {  // the pick among candidates: ids[r, argmax scores[r]]
  for (int64_t R : {1, 5})
    for (int64_t N : {1, 33, 4096}) {
      auto sc = rand_bf16(size_t(R * N), -5.f, 5.f);
      std::vector<int32_t> ids(size_t(R * N));
      std::mt19937 g(next_seed());
      for (auto& i : ids) i = int32_t(g() % 1000000);
      if (N > 1) sc[1] = sc[N - 1] = 6.0f;  // a tie in row 0: the first index wins
      Tensor ci = cpu().alloc(DType::I32, {R, N});
      std::copy(ids.begin(), ids.end(), ci.ptr<int32_t>());
      Tensor c = cpu().alloc(DType::I32, {R});
      cpu().argmax_ids(c, cpu_f32(sc, {R, N}), ci);
      Tensor gi = gpu().alloc(DType::I32, {R, N});
      gpu().copy_from_host(gi, ids.data());
      Guarded o(DType::I32, {R});
      gpu().argmax_ids(o.t, gpu_f32(sc, {R, N}), gi);
      o.check("argmax_ids");
      EXPECT_EQ(host_i32(o.t), host_i32(c)) << "R=" << R << " N=" << N;
      if (N > 1) {
        EXPECT_EQ(host_i32(c)[0], ids[1]);
      }
    }
}

// A graph records without running, replays with new inputs, and owns the scratch memory it recorded.
TEST(CudaOps, GraphReplaysWithNewInputs) {
  const int64_t n = 1000;
  Tensor a = gpu().alloc(DType::BF16, {n}), out = gpu().alloc(DType::BF16, {n});
  std::vector<uint16_t> h(n);
  auto set = [&](float v) {
    for (auto& x : h) x = f32_to_bf16(v);
    gpu().copy_from_host(a, h.data());
  };
  set(1.0f);
  auto graph = gpu().capture([&] {
    Tensor t = gpu().alloc(DType::BF16, {n});  // scratch owned by the graph
    gpu().scale(t, a, 2.0f);
    gpu().add(out, t, a);  // out = 3a
  });
  gpu().fill_zero(out);
  std::vector<uint16_t> back(n);
  gpu().copy_to_host(back.data(), out);
  EXPECT_EQ(bf16_to_f32(back[0]), 0.0f) << "capture must not run the ops";
  for (float v : {1.0f, 5.0f}) {
    set(v);
    {
      Tensor other = gpu().alloc(DType::BF16, {n});
      gpu().fill_zero(other);
    }  // must not get the graph's block
    graph->replay();
    gpu().copy_to_host(back.data(), out);
    EXPECT_EQ(bf16_to_f32(back[n - 1]), 3 * v);
  }
  {  // a tensor recorded by a graph that outlives it goes back to the pool once, when it is released
    Tensor kept;
    {
      auto g2 = gpu().capture([&] {
        kept = gpu().alloc(DType::BF16, {n});
        gpu().fill_zero(kept);
      });
    }
    kept = Tensor();
    Tensor x = gpu().alloc(DType::BF16, {n}), y = gpu().alloc(DType::BF16, {n});
    EXPECT_NE(x.data, y.data);
  }
  EXPECT_THROW(gpu().capture([&] { gpu().copy_from_host(a, h.data()); }), Error);
  set(2.0f);  // the stream is usable after a failed capture
  graph->replay();
  gpu().copy_to_host(back.data(), out);
  EXPECT_EQ(bf16_to_f32(back[0]), 6.0f);
}

TEST(CudaOps, AllocatorReusesBlocks) {
  { Tensor warm = gpu().alloc(DType::BF16, {3, 1000}); }
  size_t before = cuda_allocator_bytes(gpu());
  for (int i = 0; i < 100; i++) {
    Tensor a = gpu().alloc(DType::BF16, {3, 1000});
    Tensor b = gpu().alloc(DType::F32, {7});
  }
  EXPECT_LE(cuda_allocator_bytes(gpu()), before + 4096);
}

TEST(CudaOps, UploadWeight) {
  auto w = randn_bf16(300);
  Tensor hf = cpu_f32(w, {3, 100});
  Tensor up = gpu().upload_weight(hf);
  EXPECT_EQ(up.dtype, DType::BF16);
  EXPECT_EQ(up.shape_str(), "[3, 100]");
  EXPECT_EQ(host_f32(up), w);
  Tensor hi = cpu().alloc(DType::I64, {5});
  for (int i = 0; i < 5; i++) hi.ptr<int64_t>()[i] = 4 - i;
  Tensor ui = gpu().upload_weight(hi);
  EXPECT_EQ(ui.dtype, DType::I64);
  std::vector<int64_t> back(5);
  gpu().copy_to_host(back.data(), ui);
  EXPECT_EQ(back, (std::vector<int64_t>{4, 3, 2, 1, 0}));
}

// ------------------------------------------------------------------------------------------------ whole
// model

// bf16 activations against the fp32 CPU forward of the bundled trained tiny target (a trained model, so
// well-conditioned: random-weight models amplify bf16 rounding chaotically, see test_cuda_golden.cpp, where
// the bound comes from HF's own bf16 run). Every op rounds its output once (~u = 3.9e-3 relative), about 20
// ops per layer with residual adds: over its layers the normalised logit error stays below 5e-2 (a wrong
// mask, page or RoPE breaks it by O(1)), and top-1 agrees on >= 90% of rows. Whole prefill, token-by-token
// decode and chunks of 7 (> 2 pages, several sliding windows).
TEST(CudaModel, TinyModelLogitsMatchCpuForPrefillAndDecode) {
  const char* root = std::getenv("MTP_SOURCE_DIR");
  const std::string dir = std::string(root ? root : ".") + "/models/tiny-gemma4";
  auto mc = Gemma4Model::load(dir, cpu());
  auto mg = Gemma4Model::load(dir, gpu());
  const int V = mc->config().vocab_size, n = 300;
  auto toks = test::random_tokens(n, 8000, 5);  // common ids: the tiny model's trained part of the vocabulary
  toks[0] = mc->config().bos_token_id;
  for (int chunk : {n, 1, 7}) {
    KvCache kc(*mc, 32, 32), kg(*mg, 32, 32);
    SequenceState sc, sg;
    auto ref = prefill(*mc, kc, sc, toks, chunk, true);
    auto got = prefill(*mg, kg, sg, toks, chunk, true);
    ASSERT_EQ(ref.size(), got.size());
    double e = nerr(got, ref);
    int agree = 0;
    for (int r = 0; r < n; r++) {
      const float* a = got.data() + size_t(r) * V;
      const float* b = ref.data() + size_t(r) * V;
      agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
    }
    std::printf("[tiny model chunk %d] normalised logit error %.3e, top-1 agreement %d/%d\n", chunk, e, agree,
                n);
    EXPECT_LE(e, 5e-2) << "chunk " << chunk;
    EXPECT_GE(agree, n * 9 / 10) << "chunk " << chunk;
  }
}

}  // namespace
}  // namespace mtpserve
