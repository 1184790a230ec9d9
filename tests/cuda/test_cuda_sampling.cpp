// Backend::sample_rows on the GPU against the CPU definition (sample_probs + inverse_cdf): random softcapped
// logits (bf16 values, as the model's head produces them, so exact ties are common; and unrounded fp32 rows),
// V = 262144 and odd V, every combination of temperature (greedy included), top-k, top-p, min-p and
// penalties, with chain-like (one child), tree-like (several, padded) and childless rows. Then the engine on
// the GPU with sampled requests: fixed seeds, the greedy rows of sample_rows against the argmax shortcut, and
// speculation keeping the distribution of the emitted tokens.
//
// Bounds (kUlp = 2^-23, the largest relative spacing of fp32). Both sides compute z = (l - max) / T
// identically; then exp: CUDA's expf is within 2 ulp, glibc's within 1, so e differs by <= 3 ulp, and so do
// the normalising sums (weighted means of e); the CPU rounds p = e / S and q = p / tot (1 ulp with the
// renormalising sum), the GPU rounds pd = e / tot once and truncates masses to 2^-45 (<< 1 ulp of a sum >=
// 1): |pd_gpu - q_cpu| <= (3 + 3 + 1.5 + 0.5) ulp < 10 ulp of q. The CDF at any index is a ratio of two such
// sums of q: within 2 * 10 ulp, so the sampled tokens are equal unless u lies within 20 ulp of the CDF value
// between them. A row is left out only where the CPU's own keep decision is within rounding: a top-p cut with
// the running mass within 1e-5 of top_p, a min-p floor within 1e-5 of a boundary probability, or a top-k cut
// between two equal probabilities of different logits (the CPU orders them by index, the GPU by logit).
#include <chrono>
#include <cstdio>
#include <map>

#include "cuda_test_util.h"
#include "engine/engine.h"
#include "engine_run.h"

namespace mtpserve {
namespace {

constexpr double kUlp = 0x1p-23;
constexpr double kPdTol = 10 * kUlp, kCdfTol = 20 * kUlp;

struct Rows {
  int R = 0, V = 0, C = 4;
  std::vector<float> logits, params, pen_val;
  std::vector<int32_t> drafts, pen_off{0}, pen_ids;
  std::vector<int64_t> uni;
  std::vector<char> ambiguous;  // the CPU's keep decision of the row is within rounding
};

// One row of logits: 30 * tanh(x / 30) (Gemma's softcap) of N(0, 4), bf16-rounded, or plain fp32 N(0, 3).
std::vector<float> row_logits(int V, bool bf16, bool tie_at_max, std::mt19937& g) {
  std::normal_distribution<float> n(0.0f, bf16 ? 4.0f : 3.0f);
  std::vector<float> l(static_cast<size_t>(V));
  for (auto& x : l) x = bf16 ? round_bf16(30.0f * std::tanh(n(g) / 30.0f)) : n(g);
  if (tie_at_max) {
    const float mx = *std::max_element(l.begin(), l.end());
    l[g() % V] = mx, l[g() % V] = mx;
  }
  return l;
}

// Replays sample_probs' keep decision on the unfiltered probabilities p0 and reports whether it is within
// rounding (see the header); sets `order` (the stable sort) and `keep`.
bool keep_is_ambiguous(const std::vector<float>& l, const std::vector<float>& p0, int top_k, float top_p,
                       float min_p, std::vector<int>& order, int& keep) {
  const int V = int(p0.size());
  order.resize(size_t(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p0[a] > p0[b]; });
  bool amb = false;
  keep = V;
  if (top_k > 0 && top_k < V) {
    keep = top_k;
    const int a = order[size_t(keep - 1)], b = order[size_t(keep)];
    amb |= p0[a] == p0[b] && l[a] != l[b];
  }
  if (top_p < 1.0f) {
    double tot = 0, cum = 0;
    for (int i = 0; i < keep; i++) tot += p0[order[size_t(i)]];
    for (int i = 0; i < keep; i++) {
      const double prev = cum;
      cum += p0[order[size_t(i)]] / tot;
      if (cum >= top_p) {
        amb |= std::fabs(cum - top_p) < 1e-5 || std::fabs(prev - top_p) < 1e-5;
        keep = i + 1;
        break;
      }
    }
  }
  if (min_p > 0.0f) {
    const float floor = min_p * p0[order[0]];
    int k2 = 0;
    while (k2 < keep && p0[order[size_t(k2)]] >= floor) k2++;
    for (int i : {k2 - 1, k2})
      if (i >= 0 && i < keep) amb |= std::fabs(double(p0[order[size_t(i)]]) - floor) <= 1e-5 * floor;
    keep = std::max(1, k2);
  }
  return amb;
}

// Every combination of the sampling parameters, one row each, over vocabulary V.
Rows make_rows(int V, uint32_t seed) {
  Rows c;
  c.V = V;
  std::mt19937 g(seed);
  std::mt19937_64 g64(seed);
  int r = 0;
  for (float t : {0.0f, 0.6f, 1.0f, 1.7f})
    for (int k : {0, 1, 40, 3000})
      for (float tp : {1.0f, 0.9f, 0.3f})
        for (float mp : {0.0f, 0.05f})
          for (bool pen : {false, true}) {
            std::vector<float> l = row_logits(V, r % 3 != 2, r % 5 == 0, g);
            c.logits.insert(c.logits.end(), l.begin(), l.end());
            c.params.insert(c.params.end(), {t, tp, mp, float(k)});
            if (pen) {  // 40 tokens: half among the 100 largest logits (where they matter), half anywhere
              std::vector<int> idx(static_cast<size_t>(V));
              std::iota(idx.begin(), idx.end(), 0);
              const int top = std::min(100, V);
              std::partial_sort(idx.begin(), idx.begin() + top, idx.end(),
                                [&](int a, int b) { return l[a] > l[b]; });
              std::map<int32_t, int> cnt;
              for (int i = 0; i < 20; i++) cnt[idx[g() % top]] = 1 + int(g() % 4);
              for (int i = 0; i < 20; i++) cnt[int32_t(g() % V)] = 1 + int(g() % 4);
              for (auto [id, n] : cnt) {
                c.pen_ids.push_back(id);
                c.pen_val.push_back(0.6f + 0.35f * float(n));
                l[id] -= c.pen_val.back();
              }
            }
            c.pen_off.push_back(int32_t(c.pen_ids.size()));
            // The children: the top token, the last kept and the first dropped ones, a random one; some rows
            // with one child (a chain) or none (the bonus row).
            std::vector<float> p0 = sample_probs(l, t, 0, 1.0f, 0.0f);
            std::vector<int> order;
            int keep = 1;
            const bool amb = t > 0.0f && k != 1 && keep_is_ambiguous(l, p0, k, tp, mp, order, keep);
            if (order.empty()) {
              order.resize(size_t(V));
              std::iota(order.begin(), order.end(), 0);
              std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p0[a] > p0[b]; });
            }
            c.ambiguous.push_back(amb);
            std::vector<int32_t> d = {order[0], order[size_t(keep - 1)], order[size_t(std::min(keep, V - 1))],
                                      int32_t(g() % V)};
            if (r % 4 == 3) d = {int32_t(g() % V), -1, -1, -1};
            if (r % 8 == 7) d = {-1, -1, -1, -1};
            if (r % 6 == 1) std::swap(d[0], d[3]);
            c.drafts.insert(c.drafts.end(), d.begin(), d.end());
            c.uni.push_back(int64_t(g64()));
            r++;
          }
  c.R = r;
  return c;
}

struct Out {
  std::vector<float> pd;
  std::vector<int32_t> tok;
};

Out run_cpu(const Rows& c) {
  SampleRowsArgs a;
  a.params = cpu_f32(c.params, {c.R, 4});
  a.drafts = cpu_i32(c.drafts, {c.R, c.C});
  a.uniforms = cpu().alloc(DType::I64, {c.R});
  std::memcpy(a.uniforms.data, c.uni.data(), c.uni.size() * 8);
  a.pen_off = cpu_i32(c.pen_off, {c.R + 1});
  a.pen_ids = cpu_i32(c.pen_ids, {int64_t(c.pen_ids.size())});
  a.pen_val = cpu_f32(c.pen_val, {int64_t(c.pen_val.size())});
  Tensor pd = cpu().alloc(DType::F32, {c.R, c.C}), tok = cpu().alloc(DType::I32, {c.R});
  cpu().sample_rows(pd, tok, cpu_f32(c.logits, {c.R, c.V}), a);
  return {host_f32(pd), host_i32(tok)};
}

SampleRowsArgs gpu_args(const Rows& c) {
  SampleRowsArgs a;
  a.params = gpu_f32(c.params, {c.R, 4});
  a.drafts = gpu_i32(c.drafts, {c.R, c.C});
  a.uniforms = gpu_raw(c.uni, DType::I64, {c.R});
  a.pen_off = gpu_i32(c.pen_off, {c.R + 1});
  a.pen_ids = gpu().alloc(DType::I32, {std::max<int64_t>(1, int64_t(c.pen_ids.size()))});
  a.pen_val = gpu().alloc(DType::F32, {std::max<int64_t>(1, int64_t(c.pen_val.size()))});
  a.pen_ids.set_shape({int64_t(c.pen_ids.size())});
  a.pen_val.set_shape({int64_t(c.pen_val.size())});
  if (!c.pen_ids.empty())
    gpu().copy_from_host(a.pen_ids, c.pen_ids.data()), gpu().copy_from_host(a.pen_val, c.pen_val.data());
  return a;
}

// Token outputs inside guards, everything poisoned with an id no vocabulary here reaches (the shared
// Guarded's all-ones poison is -1, a valid output: nothing left once the children are removed).
struct GuardedTok {
  static constexpr int32_t kPoison = 0x7F7F7F7F;
  static constexpr int kG = 64;
  Tensor buf, t;
  explicit GuardedTok(int R) {
    buf = gpu().alloc(DType::I32, {R + 2 * kG});
    std::vector<int32_t> h(size_t(R + 2 * kG), kPoison);
    gpu().copy_from_host(buf, h.data());
    t = buf;
    t.data = buf.ptr<int32_t>() + kG;
    t.set_shape({R});
  }
  void check() const {
    std::vector<int32_t> h(size_t(buf.numel()));
    gpu().copy_to_host(h.data(), buf);
    for (size_t i = 0; i < h.size(); i++) {
      const bool guard = i < size_t(kG) || i >= h.size() - kG;
      if (guard)
        ASSERT_EQ(h[i], kPoison) << "sample_rows tok: guard word " << i << " overwritten";
      else
        ASSERT_NE(h[i], kPoison) << "sample_rows tok: row " << i - kG << " never written";
    }
  }
};

Out run_gpu(const Rows& c, const Tensor& logits, const SampleRowsArgs& a) {
  Guarded pd(DType::F32, {c.R, c.C});
  GuardedTok tok(c.R);
  gpu().sample_rows(pd.t, tok.t, logits, a);
  gpu().synchronize();
  pd.check("sample_rows pd");
  tok.check();
  return {host_f32(pd.t), host_i32(tok.t)};
}

void compare(const Rows& c, const Out& cpu_out, const Out& g) {
  int amb = 0, near = 0, checked = 0;
  for (int r = 0; r < c.R; r++) {
    const float* pr = &c.params[size_t(r) * 4];
    const bool greedy = pr[0] <= 0.0f || pr[3] == 1.0f;
    if (c.ambiguous[size_t(r)]) {
      amb++;
      continue;
    }
    checked++;
    std::string where =
        fmt::format("V={} row {} (T={} top_p={} min_p={} top_k={} penalties {})", c.V, r, pr[0], pr[1], pr[2],
                    pr[3], c.pen_off[size_t(r) + 1] > c.pen_off[size_t(r)]);
    for (int j = 0; j < c.C; j++) {
      const double want = cpu_out.pd[size_t(r) * c.C + j], got = g.pd[size_t(r) * c.C + j];
      if (greedy)
        EXPECT_EQ(got, want) << where << " child " << j;
      else
        EXPECT_LE(std::fabs(got - want), kPdTol * want + 1e-37)
            << where << " child " << j << " (" << c.drafts[size_t(r) * c.C + j] << ")";
    }
    const int32_t tc = cpu_out.tok[size_t(r)], tg = g.tok[size_t(r)];
    if (tc == tg) continue;
    ASSERT_FALSE(greedy) << where << ": greedy sample " << tg << " != " << tc;
    ASSERT_GE(tc, 0) << where;
    ASSERT_GE(tg, 0) << where << ": the GPU found nothing left, the CPU sampled " << tc;
    // The CPU's residual CDF at the lower of the two tokens must be within the bound of u.
    std::vector<float> l(c.logits.begin() + size_t(r) * c.V, c.logits.begin() + size_t(r + 1) * c.V);
    for (int32_t i = c.pen_off[size_t(r)]; i < c.pen_off[size_t(r) + 1]; i++) l[c.pen_ids[i]] -= c.pen_val[i];
    std::vector<float> q = sample_probs(l, pr[0], int(pr[3]), pr[1], pr[2]);
    for (int j = 0; j < c.C; j++)
      if (c.drafts[size_t(r) * c.C + j] >= 0) q[c.drafts[size_t(r) * c.C + j]] = 0.0f;
    ASSERT_GT(q[tg], 0.0f) << where << ": the GPU sampled " << tg << ", which the CPU does not keep";
    double tot = 0, cum_lo = 0;
    for (float x : q) tot += x;
    for (int v = 0; v <= std::min(tc, tg); v++) cum_lo += q[v];
    const double u = double(uint64_t(c.uni[size_t(r)]) >> 11) * 0x1p-53;
    EXPECT_LE(std::fabs(u - cum_lo / tot), kCdfTol) << where << ": GPU " << tg << " CPU " << tc;
    near++;
  }
  std::printf(
      "V=%d: %d rows compared, %d left out (CPU keep decision within rounding), %d tokens differ "
      "within the CDF bound\n",
      c.V, checked, amb, near);
  EXPECT_LE(amb, c.R / 10) << "too many rows left out";
  EXPECT_LE(near, 2) << "more tokens differ near a CDF step than the bound makes likely";
}

void check_vocab(int V) {
  Rows c = make_rows(V, 4242u + uint32_t(V));
  Out want = run_cpu(c);
  Tensor lg = gpu_f32(c.logits, {c.R, c.V});
  SampleRowsArgs a = gpu_args(c);
  Out got = run_gpu(c, lg, a);
  compare(c, want, got);
  Out again = run_gpu(c, lg, a);  // a fixed input gives the same numbers
  EXPECT_EQ(std::memcmp(again.pd.data(), got.pd.data(), got.pd.size() * 4), 0) << "V=" << V;
  EXPECT_EQ(again.tok, got.tok) << "V=" << V;
}

TEST(CudaSampling, SampleRowsMatchesCpuOddVocab) {
  for (int V : {97, 4099}) check_vocab(V);  // a row shorter than the CTA, and an odd one
}
TEST(CudaSampling, SampleRowsMatchesCpuFullVocab) { check_vocab(262144); }

// Out-of-order penalty ids are a device error, as the CPU's check is.
TEST(CudaSampling, UnsortedPenaltiesAreReported) {
  Rows c = make_rows(97, 7u);
  c.R = 1;
  c.logits.resize(97), c.params = {1.0f, 1.0f, 0.0f, 0.0f}, c.drafts.resize(4), c.uni.resize(1);
  c.pen_off = {0, 2}, c.pen_ids = {5, 3}, c.pen_val = {1.0f, 1.0f};
  EXPECT_ANY_THROW(run_cpu(c));
  Tensor pd = gpu().alloc(DType::F32, {1, 4}), tok = gpu().alloc(DType::I32, {1});
  gpu().sample_rows(pd, tok, gpu_f32(c.logits, {1, 97}), gpu_args(c));
  EXPECT_ANY_THROW(gpu().synchronize());
}

// Device time of sample_rows at the vocabulary of the real models (printed, not asserted).
TEST(CudaSampling, Timing) {
  const int V = 262144;
  std::mt19937 g(99);
  for (int R : {4, 32, 256}) {
    std::vector<float> lg;
    for (int r = 0; r < R; r++) {
      auto l = row_logits(V, true, false, g);
      lg.insert(lg.end(), l.begin(), l.end());
    }
    Tensor x = gpu_f32(lg, {R, V});
    for (auto [name, p] : std::vector<std::pair<const char*, std::vector<float>>>{
             {"T=1", {1.0f, 1.0f, 0.0f, 0.0f}},
             {"T=1 top-k 64 top-p 0.95", {1.0f, 0.95f, 0.0f, 64.0f}},
             {"T=1 top-p 0.95", {1.0f, 0.95f, 0.0f, 0.0f}},
             {"T=0.7 min-p 0.05", {0.7f, 1.0f, 0.05f, 0.0f}}}) {
      Rows c;
      c.R = R, c.V = V, c.C = 1;
      for (int r = 0; r < R; r++) c.params.insert(c.params.end(), p.begin(), p.end());
      c.drafts.assign(size_t(R), 7);
      c.uni.assign(size_t(R), 0x123456789abcdefLL);
      c.pen_off.assign(size_t(R) + 1, 0);
      SampleRowsArgs a = gpu_args(c);
      Tensor pd = gpu().alloc(DType::F32, {R, 1}), tok = gpu().alloc(DType::I32, {R});
      for (int i = 0; i < 3; i++) gpu().sample_rows(pd, tok, x, a);
      gpu().synchronize();
      const int iters = 10;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; i++) gpu().sample_rows(pd, tok, x, a);
      gpu().synchronize();
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("sample_rows R=%3d V=%d %-26s %8.3f ms\n", R, V, name, ms / iters);
    }
  }
}

// ---- the engine's sampled requests on the GPU (tiny pair) ----

std::string src(const std::string& rel) {
  const char* root = std::getenv("MTP_SOURCE_DIR");
  return std::string(root ? root : ".") + "/" + rel;
}

using test::Got;
using test::sampled_request;

std::vector<Got> run_engine(int topk, const std::vector<GenerationRequest>& reqs) {
  EngineOptions o;
  o.model_dir = src("models/tiny-gemma4");
  o.assistant_dir = src("models/tiny-gemma4-assistant");
  o.backend = "cuda";
  o.num_draft = 3;
  o.draft_topk = topk;
  o.max_running = 64;
  o.max_waiting = 4096;
  auto e = Engine::create(o);
  return test::run_requests(*e, reqs, std::chrono::seconds(120));
}

TEST(CudaEngineSampling, FixedSeedsAndGreedyRows) {
  for (int topk : {1, 2}) {
    SamplingParams sp;
    sp.temperature = 0.9f, sp.top_p = 0.95f, sp.top_k = 50, sp.presence_penalty = 0.3f;
    std::vector<GenerationRequest> reqs;
    for (int i = 0; i < 8; i++) reqs.push_back(sampled_request(i, sp, 32, true));
    auto a = run_engine(topk, reqs), b = run_engine(topk, reqs);
    int accepted = 0;
    for (size_t i = 0; i < reqs.size(); i++) {
      EXPECT_EQ(a[i].tokens, b[i].tokens) << "topk " << topk << " request " << i;
      accepted += a[i].accepted;
    }
    EXPECT_GT(accepted, 0);
    EXPECT_NE(a[0].tokens, a[1].tokens);
    // Greedy with log-probs runs sample_rows' greedy rows; without, the argmax shortcut: the same tokens.
    SamplingParams g;
    g.temperature = 0;
    SamplingParams gl = g;
    gl.want_logprobs = true;
    auto x = run_engine(topk, {sampled_request(0, g, 48, true)}),
         y = run_engine(topk, {sampled_request(0, gl, 48, true)});
    EXPECT_EQ(x[0].tokens, y[0].tokens) << "topk " << topk;
  }
}

using test::chi2_crit;

// Speculative and plain sampling give the same joint distribution of the first three tokens (a two-sample
// chi-square; a negative presence penalty makes repeats, and so the rows' penalty counts, matter).
TEST(CudaEngineSampling, SpeculationKeepsTheDistribution) {
  SamplingParams sp;
  sp.temperature = 1.0f, sp.top_k = 3, sp.presence_penalty = -1.5f;
  const int N = 3000;
  for (int topk : {1, 2}) {
    std::vector<GenerationRequest> with, without;
    for (int i = 0; i < N; i++)
      with.push_back(sampled_request(i, sp, 4, true)),
          without.push_back(sampled_request(N + i, sp, 4, false));
    auto a = run_engine(topk, with), b = run_engine(topk, without);
    int accepted = 0, df = 0;
    for (auto& g : a) accepted += g.accepted;
    const double chi = test::two_sample_chi2(a, b, &df);
    std::printf(
        "GPU engine topk %d: speculative vs plain chi2 %.1f (df %d, critical %.1f), %d drafts accepted\n",
        topk, chi, df, chi2_crit(df), accepted);
    EXPECT_GT(accepted, N / 4);
    EXPECT_LT(chi, chi2_crit(df)) << "topk " << topk;
  }
}

}  // namespace
}  // namespace mtpserve
