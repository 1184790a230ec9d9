// The tensor-core prefill attention (attention_prefill.cu) against the CPU backend's attention, and proof
// that the CUDA dispatch takes it (launch counter) exactly where it should.
//
// Inputs are bf16 values given to both backends exactly (CPU as fp32). The kernel rounds twice: the softmax
// weights P to bf16 before P x V (relative error <= 2^-9 per weight, independent across keys, so it adds
// about 2^-9 / sqrt(3) = 1.1e-3 to the normalised error of a weighted mean of many values) and the output
// once
// (<= u = 2^-8). Scores are exact bf16 products summed in fp32. So the normalised error stays under kTol1 =
// 5e-3, the bound the other attention tests use (test_cuda_ops.cpp).
//
// Cache pages no table entry references (freed pages, spares) and the unwritten slots past each sequence's
// block are NaN: reading one would poison the output, so a pass also shows that they are never read.
#include <cuda_runtime.h>

#include "cuda_test_util.h"

namespace mtpserve {
namespace cuda {
// attention_prefill.cu: 0 off, 1 auto (the dispatch rule), 2 force for any max_q; launches so far.
void attention_prefill_mode(int mode);
int64_t attention_prefill_calls();
}  // namespace cuda
namespace {

constexpr int kPage = 16;

struct PrefillCase {
  std::vector<int> prefix, q_len;
  int nh, kvh, D, window;
  const char* name;
};

// One batch of causal blocks: page tables from a shuffled pool (pages below every row's window freed, -1),
// caches, positions prefix + i. Built for either backend.
struct Batch {
  int S = 0, T = 0, max_q = 0, max_pages = 1;
  int64_t slots = 0;
  std::vector<int32_t> cu, pos, pre, table;
  std::vector<float> kc, vc, q, k, v;  // caches poisoned where nothing may read
};

Batch make_batch(const PrefillCase& pc, bool random_data = true) {
  Batch b;
  b.S = int(pc.prefix.size());
  std::mt19937 g(next_seed());
  std::vector<int> npages(b.S);
  int total = 3;  // spare pages never referenced
  for (int s = 0; s < b.S; s++) {
    npages[s] = (pc.prefix[s] + pc.q_len[s] + kPage - 1) / kPage;
    b.max_pages = std::max(b.max_pages, npages[s]);
    total += npages[s];
  }
  std::vector<int32_t> perm(total);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g);
  b.table.assign(size_t(b.S) * b.max_pages, -1);
  std::vector<uint8_t> used(total, 0);
  int next = 0;
  for (int s = 0; s < b.S; s++)
    for (int p = 0; p < npages[s]; p++) {
      // The first row (position prefix) sees slots >= prefix - window + 1; older pages are returned.
      const bool freed = pc.window > 0 && (p + 1) * kPage <= pc.prefix[s] - pc.window + 1;
      const int32_t page = perm[next++];
      if (!freed) b.table[size_t(s) * b.max_pages + p] = page, used[page] = 1;
    }
  b.cu.assign(b.S + 1, 0);
  for (int s = 0; s < b.S; s++) {
    b.cu[s + 1] = b.cu[s] + pc.q_len[s];
    b.max_q = std::max(b.max_q, pc.q_len[s]);
    b.pre.push_back(pc.prefix[s]);
    for (int i = 0; i < pc.q_len[s]; i++) b.pos.push_back(pc.prefix[s] + i);
  }
  b.T = b.cu[b.S];
  b.slots = int64_t(total) * kPage;
  const int64_t row = int64_t(pc.kvh) * pc.D;
  if (!random_data) return b;
  b.kc = randn_bf16(size_t(b.slots * row), 0.3f);
  b.vc = randn_bf16(size_t(b.slots * row));
  b.q = randn_bf16(size_t(b.T) * pc.nh * pc.D, 0.3f);
  b.k = randn_bf16(size_t(b.T * row), 0.3f);
  b.v = randn_bf16(size_t(b.T * row));
  auto poison = [&](int64_t phys) {
    std::fill_n(b.kc.begin() + phys * row, row, NAN);
    std::fill_n(b.vc.begin() + phys * row, row, NAN);
  };
  for (int p = 0; p < total; p++)
    if (!used[p])
      for (int j = 0; j < kPage; j++) poison(int64_t(p) * kPage + j);
  for (int s = 0; s < b.S; s++)
    for (int j = pc.prefix[s] + pc.q_len[s]; j < npages[s] * kPage; j++)
      poison(int64_t(b.table[size_t(s) * b.max_pages + j / kPage]) * kPage + j % kPage);
  return b;
}

AttnMeta make_meta(const Batch& b, bool on_gpu) {
  auto up = [&](const std::vector<int32_t>& x, std::initializer_list<int64_t> sh) {
    return on_gpu ? gpu_i32(x, sh) : cpu_i32(x, sh);
  };
  AttnMeta m;
  m.num_seqs = b.S;
  m.max_q = b.max_q;
  m.cu_q = up(b.cu, {b.S + 1});
  m.prefix_len = up(b.pre, {b.S});
  m.positions = up(b.pos, {b.T});
  m.block_keys = true;
  return m;
}

// Runs the case on both backends (GPU in the given dispatch mode); returns whether the prefill kernel ran.
bool run_case(const PrefillCase& pc, int mode) {
  SCOPED_TRACE(testing::Message() << pc.name << " (mode " << mode << ")");
  const Batch b = make_batch(pc);
  const int64_t nh = pc.nh, kvh = pc.kvh, D = pc.D, T = b.T;
  AttnMeta cm = make_meta(b, false), gm = make_meta(b, true);
  KvPageTable cpt{cpu_i32(b.table, {b.S, b.max_pages}), kPage},
      gpt{gpu_i32(b.table, {b.S, b.max_pages}), kPage};
  Tensor ckc = cpu_f32(b.kc, {b.slots, kvh, D}), cvc = cpu_f32(b.vc, {b.slots, kvh, D});
  Tensor gkc = gpu_bf16(b.kc, {b.slots, kvh, D}), gvc = gpu_bf16(b.vc, {b.slots, kvh, D});
  cpu().kv_write(ckc, cvc, cpu_f32(b.k, {T, kvh, D}), cpu_f32(b.v, {T, kvh, D}), cm, cpt);
  gpu().kv_write(gkc, gvc, gpu_bf16(b.k, {T, kvh, D}), gpu_bf16(b.v, {T, kvh, D}), gm, gpt);
  Tensor c_out = cpu().alloc(DType::F32, {T, nh, D});
  cpu().attention(c_out, cpu_f32(b.q, {T, nh, D}), ckc, cvc, cm, cpt, pc.window);

  cuda::attention_prefill_mode(mode);
  const int64_t before = cuda::attention_prefill_calls();
  Guarded o(DType::BF16, {T, nh, D});
  gpu().attention(o.t, gpu_bf16(b.q, {T, nh, D}), gkc, gvc, gm, gpt, pc.window);
  gpu().synchronize();
  const bool took = cuda::attention_prefill_calls() != before;
  cuda::attention_prefill_mode(1);
  o.check("attention");
  EXPECT_NERR(host_f32(o.t), host_f32(c_out), kTol1, "attention");
  return took;
}

// Prefill chunks: odd lengths 1..300, first chunks and later chunks (prefix 37..700), windows 0 / 512 / 40,
// D 256 / 512, GQA groups 1..8 (non powers of two too). The dispatch rule takes them all (max_q >= 64).
TEST(CudaPrefill, MatchesCpuAndIsDispatched) {
  const std::vector<PrefillCase> cases = {
      {{0}, {127}, 8, 1, 256, 512, "first chunk 127, E2B sliding shape"},
      {{0, 37, 700}, {1, 129, 300}, 8, 1, 512, 0, "ragged chunks, E2B full shape D=512 GQA 8"},
      {{0, 45, 600}, {33, 257, 61}, 8, 2, 256, 512, "E4B sliding, window 512 with freed pages"},
      {{5, 700}, {211, 19}, 8, 2, 512, 0, "E4B full D=512 GQA 4"},
      {{0, 300}, {77, 199}, 32, 16, 256, 40, "31B sliding shape GQA 2, window 40 (freed pages)"},
      {{0, 123}, {41, 113}, 32, 4, 512, 0, "31B full shape D=512 GQA 8"},
      {{63, 0}, {97, 23}, 16, 2, 512, 40, "26B full shape GQA 8, D=512 window 40"},
      {{37, 500}, {65, 17}, 6, 2, 256, 0, "GQA 3 (M rows not a multiple of the group)"},
      {{90, 0}, {67, 31}, 4, 4, 512, 33, "MHA D=512 window 33"},
      {{640}, {300}, 16, 8, 256, 512, "long chunk after a long prefix, window 512"},
  };
  for (const auto& c : cases) EXPECT_TRUE(run_case(c, 1)) << c.name << ": prefill kernel not dispatched";
}

// Below the dispatch threshold (64 rows), for other head dims, with a tree mask or for read-only queries the
// split-KV kernel stays.
TEST(CudaPrefill, OtherShapesKeepTheSplitKernel) {
  EXPECT_FALSE(run_case({{300, 17}, {3, 5}, 8, 2, 256, 0, "verify-sized blocks"}, 1));
  EXPECT_FALSE(run_case({{4096, 0}, {63, 9}, 8, 2, 256, 512, "63-row chunk after a long prefix"}, 1));
  EXPECT_FALSE(run_case({{20}, {80}, 8, 2, 128, 0, "head dim 128"}, 1));
  const int64_t before = cuda::attention_prefill_calls();
  const Batch b = make_batch({{20}, {96}, 4, 1, 256, 0, ""}, true);
  AttnMeta m = make_meta(b, true);
  m.tree_mask = gpu().alloc(DType::U8, {b.T, b.max_q});
  std::vector<uint8_t> mask(size_t(b.T) * b.max_q, 0);
  for (int i = 0; i < b.T; i++)
    for (int j = 0; j <= i; j++) mask[size_t(i) * b.max_q + j] = 1;
  gpu().copy_from_host(m.tree_mask, mask.data());
  KvPageTable pt{gpu_i32(b.table, {b.S, b.max_pages}), kPage};
  Tensor kc = gpu_bf16(b.kc, {b.slots, 1, 256}), vc = gpu_bf16(b.vc, {b.slots, 1, 256});
  gpu().kv_write(kc, vc, gpu_bf16(b.k, {b.T, 1, 256}), gpu_bf16(b.v, {b.T, 1, 256}), m, pt);
  Tensor o = gpu().alloc(DType::BF16, {b.T, 4, 256}), q = gpu_bf16(b.q, {b.T, 4, 256});
  gpu().attention(o, q, kc, vc, m, pt, 0);
  m.tree_mask = Tensor();
  m.block_keys = false;
  gpu().attention(o, q, kc, vc, m, pt, 0);
  gpu().synchronize();
  EXPECT_EQ(cuda::attention_prefill_calls(), before)
      << "tree mask / read-only queries took the prefill kernel";
}

// Forced for any block size (a mixed batch gives it decode-sized sequences too): still the CPU result.
TEST(CudaPrefill, ForcedOnSmallBlocks) {
  const std::vector<PrefillCase> cases = {
      {{300, 17, 0, 1000}, {3, 5, 1, 2}, 8, 2, 256, 0, "verify-sized blocks, GQA 4"},
      {{1023, 511, 40}, {1, 3, 7}, 8, 1, 256, 512, "window 512 at page edges"},
      {{2049, 40}, {1, 9}, 32, 4, 512, 0, "long prefix D=512 GQA 8"},
      {{100, 3, 700}, {1, 17, 4}, 8, 2, 512, 33, "window 33, freed pages, D=512"},
  };
  for (const auto& c : cases) EXPECT_TRUE(run_case(c, 2)) << c.name;
}

// A visible slot in a freed page is reported (never read), as by the split kernel.
TEST(CudaPrefill, FreedVisiblePageIsAnError) {
  for (int D : {256, 512}) {
    Batch b = make_batch({{40}, {80}, 8, 2, D, 0, ""}, false);
    b.table[1] = -1;  // slots 16..31: visible to every row
    AttnMeta m = make_meta(b, true);
    KvPageTable pt{gpu_i32(b.table, {b.S, b.max_pages}), kPage};
    Tensor kc = gpu().alloc(DType::BF16, {b.slots, 2, D}), vc = gpu().alloc(DType::BF16, {b.slots, 2, D});
    gpu().fill_zero(kc);
    gpu().fill_zero(vc);
    Tensor o = gpu().alloc(DType::BF16, {b.T, 8, D});
    const int64_t before = cuda::attention_prefill_calls();
    gpu().attention(o, gpu_bf16(randn_bf16(size_t(b.T) * 8 * D), {b.T, 8, D}), kc, vc, m, pt, 0);
    EXPECT_EQ(cuda::attention_prefill_calls(), before + 1);
    try {
      gpu().synchronize();
      ADD_FAILURE() << "expected a freed-page error, D=" << D;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("freed"), std::string::npos) << e.what();
    }
    gpu().synchronize();  // reported once
  }
}

// ---------------------------------------------------------------------------------------------- benchmark

// Old (split-KV, CUDA cores) vs new kernel on model shapes, batch 1, positions prefix + i:
//   mtpserve_cuda_tests --gtest_also_run_disabled_tests --gtest_filter='*PrefillBench*'
// TFLOP/s counts 4 * heads * D per visible (query, key) pair.
TEST(CudaPrefill, DISABLED_PrefillBench) {
  struct Shape {
    const char* name;
    int nh, kvh, D, window;
  };
  const std::vector<Shape> shapes = {
      {"E2B sliding", 8, 1, 256, 512},   {"E2B full", 8, 1, 512, 0},         {"E4B sliding", 8, 2, 256, 512},
      {"E4B full", 8, 2, 512, 0},        {"31B sliding", 32, 16, 256, 1024}, {"31B full", 32, 4, 512, 0},
      {"26B sliding", 16, 8, 256, 1024}, {"26B full", 16, 2, 512, 0},
  };
  struct Len {
    int prefix, q;
  };
  const std::vector<Len> lens = {{0, 2048},  {6144, 2048}, {0, 16},    {0, 32},     {0, 64},    {0, 128},
                                 {4096, 16}, {4096, 32},   {4096, 64}, {4096, 128}, {4096, 256}};
  cudaStream_t st = static_cast<cudaStream_t>(cuda_stream(gpu()));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::printf("%-12s %6s %5s | %9s %9s | %7s %7s | %6s\n", "shape", "prefix", "q", "old ms", "new ms",
              "old TF", "new TF", "speedup");
  for (const auto& sh : shapes)
    for (const auto& ln : lens) {
      const Batch b = make_batch({{ln.prefix}, {ln.q}, sh.nh, sh.kvh, sh.D, 0, ""}, false);
      AttnMeta m = make_meta(b, true);
      KvPageTable pt{gpu_i32(b.table, {1, b.max_pages}), kPage};
      Tensor kc = gpu().alloc(DType::BF16, {b.slots, sh.kvh, sh.D}),
             vc = gpu().alloc(DType::BF16, {b.slots, sh.kvh, sh.D});
      Tensor q = gpu().alloc(DType::BF16, {b.T, sh.nh, sh.D}),
             o = gpu().alloc(DType::BF16, {b.T, sh.nh, sh.D});
      cuda_fill_random(gpu(), kc, 1, 0.f, 0.3f, true);
      cuda_fill_random(gpu(), vc, 2, 0.f, 1.f, true);
      cuda_fill_random(gpu(), q, 3, 0.f, 0.3f, true);
      double pairs = 0;
      for (int i = 0; i < ln.q; i++) {
        const int qp = ln.prefix + i, lo = sh.window > 0 ? std::max(0, qp - sh.window + 1) : 0;
        pairs += qp + 1 - lo;
      }
      const double flops = 4.0 * sh.nh * sh.D * pairs;
      double ms[2];
      for (int mode : {0, 2}) {
        cuda::attention_prefill_mode(mode);
        const int iters = ln.q >= 1024 ? 5 : 20;
        for (int w = 0; w < 2; w++) gpu().attention(o, q, kc, vc, m, pt, sh.window);
        cudaEventRecord(e0, st);
        for (int it = 0; it < iters; it++) gpu().attention(o, q, kc, vc, m, pt, sh.window);
        cudaEventRecord(e1, st);
        gpu().synchronize();
        float t = 0;
        cudaEventElapsedTime(&t, e0, e1);
        ms[mode ? 1 : 0] = t / iters;
      }
      cuda::attention_prefill_mode(1);
      std::printf("%-12s %6d %5d | %9.3f %9.3f | %7.1f %7.1f | %6.2fx\n", sh.name, ln.prefix, ln.q, ms[0],
                  ms[1], flops / ms[0] * 1e-9, flops / ms[1] * 1e-9, ms[0] / ms[1]);
    }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

}  // namespace
}  // namespace mtpserve
