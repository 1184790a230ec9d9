// Sampled speculative decoding is distribution-preserving: the tokens emitted by draft + exact rejection
// sampling have the target's distribution. Verification runs as the engine runs it: Backend::sample_rows (CPU
// backend) gives each row's p(children) and residual sample, engine/accept.h accepts from those numbers. A
// chi-square test over the joint distribution of the first two emitted tokens (so the accepted-draft and
// correction paths both count) does not reject at p = 0.001, with and without penalties (rows see the drafts
// on their path), and the same test does reject deliberately broken acceptance rules, so it has the power to
// fail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

#include "engine/accept.h"

namespace mtpserve {
namespace {

constexpr int V = 6;

// A Markov "target": p(next | prev), and a deterministic "drafter" that often, not always, agrees with it.
struct Toy {
  float logit[V][V];
  int draft[V];
  Toy() {
    std::mt19937 g(7);
    std::normal_distribution<float> n(0.0f, 1.2f);
    for (auto& row : logit)
      for (auto& x : row) x = n(g);
    for (int a = 0; a < V; a++) draft[a] = (a * 5 + 1) % V;
  }
};

// Quantile of chi-square(df) at 1 - 0.001 (Wilson-Hilferty).
double chi2_crit(int df) {
  const double z = 3.090232;
  double k = 2.0 / (9.0 * df);
  return df * std::pow(1 - k + z * std::sqrt(k), 3);
}

using Accept =
    std::function<ChainAccept(const float*, const int32_t*, int, const SamplingParams&, PenaltyState&, Rng&)>;

// The counts every sample starts from: none, or (with penalties on) tokens 2 and 4 already generated.
PenaltyState start_pen(const SamplingParams& sp) {
  PenaltyState pen;
  if (has_penalties(sp)) pen.add(2), pen.add(4), pen.add(4);
  return pen;
}

// The first two tokens emitted after bonus token 0, by speculative rounds of k drafts.
std::pair<int, int> two_tokens(const Toy& toy, int k, const SamplingParams& sp, Rng& rng,
                               const Accept& accept) {
  std::vector<int> out;
  int bonus = 0;
  PenaltyState pen = start_pen(sp);
  while (out.size() < 2) {
    std::vector<int32_t> d(k);
    std::vector<float> rows;
    int prev = bonus;
    rows.insert(rows.end(), toy.logit[prev], toy.logit[prev] + V);
    for (int i = 0; i < k; i++) {
      d[i] = toy.draft[prev];
      prev = d[i];
      rows.insert(rows.end(), toy.logit[prev], toy.logit[prev] + V);
    }
    ChainAccept a = accept(rows.data(), d.data(), k, sp, pen, rng);
    for (int i = 0; i < a.accepted; i++) out.push_back(d[i]);
    out.push_back(a.next);
    bonus = a.next;
  }
  return {out[0], out[1]};
}

// Expected counts of N samples of the first two tokens after bonus 0 under the target: p(x1|0) p(x2|x1), the
// second with x1 counted for the penalties.
std::vector<double> expected_pairs(const Toy& toy, const SamplingParams& sp, int N) {
  const PenaltyState pen0 = start_pen(sp);
  std::vector<double> expect(V * V, 0.0);
  auto p1 = target_probs(toy.logit[0], V, sp, pen0);
  for (int a = 0; a < V; a++) {
    PenaltyState pen = pen0;
    pen.add(a);
    auto p2 = target_probs(toy.logit[a], V, sp, pen);
    for (int b = 0; b < V; b++) expect[a * V + b] = double(p1[a]) * p2[b] * N;
  }
  return expect;
}

// Pearson chi-square of observed against expected counts; a count where nothing is expected is infinite.
double chi2_of(const std::vector<int>& seen, const std::vector<double>& expect, int* df) {
  double chi = 0;
  *df = -1;
  for (size_t c = 0; c < seen.size(); c++) {
    if (expect[c] == 0) {
      if (seen[c]) return INFINITY;  // a token the target can never produce
      continue;
    }
    chi += (seen[c] - expect[c]) * (seen[c] - expect[c]) / expect[c];
    (*df)++;
  }
  return chi;
}

// Chi-square statistic of N speculative samples against the exact target joint p(x1|0) p(x2|x1).
double chi2_stat(const SamplingParams& sp, int k, const Accept& accept, int N, int* df) {
  Toy toy;
  std::vector<int> seen(V * V, 0);
  Rng rng(12345);
  for (int i = 0; i < N; i++) {
    auto [a, b] = two_tokens(toy, k, sp, rng, accept);
    seen[a * V + b]++;
  }
  return chi2_of(seen, expected_pairs(toy, sp, N), df);
}

Backend& cpu() {
  static auto be = make_cpu_backend();
  return *be;
}

// The engine's path on the CPU backend: sample_rows over the block's rows, then host acceptance.
Accept real() {
  return
      [](const float* rows, const int32_t* d, int k, const SamplingParams& sp, PenaltyState& pen, Rng& rng) {
        std::vector<int32_t> drafts(d, d + k);
        Tensor lg(const_cast<float*>(rows), DType::F32, {k + 1, V});
        RowDraws dr = draw_rows(cpu(), lg, {{&sp, &pen, &rng, &drafts, nullptr}});
        return accept_chain(dr, 0, d, k, pen, rng);
      };
}

// Sampling configurations: plain; every filter; penalties (rows must count the drafts on their path).
std::vector<std::pair<std::string, SamplingParams>> configs() {
  SamplingParams plain, filters, pen;
  filters.temperature = 0.7f, filters.top_k = 5, filters.top_p = 0.9f, filters.min_p = 0.05f;
  pen.presence_penalty = 0.8f, pen.frequency_penalty = 0.4f;
  return {{"plain", plain}, {"filters", filters}, {"penalties", pen}};
}

TEST(SpeculativeSampling, MatchesTargetDistribution) {
  for (int k : {1, 3}) {
    for (auto& [name, sp] : configs()) {
      int df = 0;
      double chi = chi2_stat(sp, k, real(), 24000, &df);
      std::printf("k=%d %s: chi2 %.1f (df %d, critical %.1f)\n", k, name.c_str(), chi, df, chi2_crit(df));
      EXPECT_LT(chi, chi2_crit(df)) << "k=" << k << " " << name << " df=" << df;
    }
  }
}

using TreeAccept =
    std::function<int32_t(const RowDraws&, const TreeBlock&, PenaltyState&, Rng&, std::vector<int>&)>;

// The first two tokens emitted after bonus 0 by tree rounds: two siblings under the root (the drafter's token
// and the next id), each with one child.
double chi2_tree(const SamplingParams& sp, int N, const TreeAccept& accept, int* df) {
  Toy toy;
  std::vector<int> seen(V * V, 0);
  Rng rng(777);
  for (int i = 0; i < N; i++) {
    std::vector<int> out;
    int bonus = 0;
    PenaltyState pen = start_pen(sp);
    while (out.size() < 2) {
      int a = toy.draft[bonus], b = (a + 1) % V;
      TreeBlock t{{a, b, toy.draft[a], toy.draft[b]}, {0, 0, 1, 2}};
      std::vector<float> rows;  // one target row per block node: root, a, b, a's child, b's child
      for (int tok : {bonus, a, b, toy.draft[a], toy.draft[b]})
        rows.insert(rows.end(), toy.logit[tok], toy.logit[tok] + V);
      Tensor lg(rows.data(), DType::F32, {5, V});
      RowDraws dr = draw_rows(cpu(), lg, {{&sp, &pen, &rng, &t.tokens, &t.parent}});
      std::vector<int> path;
      int32_t next = accept(dr, t, pen, rng, path);
      for (int n : path) out.push_back(t.tokens[n - 1]);
      out.push_back(next);
      bonus = next;
    }
    seen[out[0] * V + out[1]]++;
  }
  return chi2_of(seen, expected_pairs(toy, sp, N), df);
}

TEST(SpeculativeSampling, TreeWalkMatchesTargetDistribution) {
  TreeAccept real_tree = [](const RowDraws& d, const TreeBlock& t, PenaltyState& pen, Rng& rng,
                            std::vector<int>& path) { return accept_tree(d, 0, t, pen, rng, path); };
  for (auto& [name, sp] : configs()) {
    int df = 0;
    double chi = chi2_tree(sp, 24000, real_tree, &df);
    std::printf("tree %s: chi2 %.1f (df %d, critical %.1f)\n", name.c_str(), chi, df, chi2_crit(df));
    EXPECT_LT(chi, chi2_crit(df)) << name;
  }
}

TEST(SpeculativeSampling, BrokenAcceptanceRuleIsRejected) {
  // Broken: accept a draft whenever the target gives it any probability at all (instead of with probability
  // p(d)): drafted tokens become far too frequent.
  Accept broken = [](const float* rows, const int32_t* d, int k, const SamplingParams& sp, PenaltyState& pen,
                     Rng& rng) {
    ChainAccept r;
    for (int i = 0; i <= k; i++) {
      auto p = target_probs(rows + size_t(i) * V, V, sp, pen);
      if (i < k && p[d[i]] > 0) {
        r.accepted++;
        continue;
      }
      r.next = sample_from(p, rng);
      break;
    }
    return r;
  };
  SamplingParams sp;
  int df = 0;
  double chi = chi2_stat(sp, 3, broken, 24000, &df);
  std::printf("broken rule: chi2 %.1f (df %d, critical %.1f)\n", chi, df, chi2_crit(df));
  EXPECT_GT(chi, chi2_crit(df));
}

TEST(SpeculativeSampling, BrokenTreeRuleIsRejected) {
  // Broken: accept child j with probability pd_j instead of pd_j / (1 - the mass of the rejected elder
  // siblings): younger siblings become too rare.
  TreeAccept broken = [](const RowDraws& d, const TreeBlock& t, PenaltyState& pen, Rng& rng,
                         std::vector<int>& path) {
    int cur = 0;
    for (;;) {
      int child = -1;
      for (size_t i = 0, j = 0; i < t.parent.size() && child < 0; i++)
        if (t.parent[i] == cur && rng.uniform() < d.pd[size_t(cur) * d.C + j++]) child = int(i) + 1;
      if (child < 0) return d.tok[size_t(cur)];
      path.push_back(child);
      cur = child;
    }
  };
  SamplingParams sp;
  int df = 0;
  double chi = chi2_tree(sp, 24000, broken, &df);
  std::printf("broken tree rule: chi2 %.1f (df %d, critical %.1f)\n", chi, df, chi2_crit(df));
  EXPECT_GT(chi, chi2_crit(df));
}

TEST(SpeculativeSampling, GreedyChainAcceptsTheMatchingPrefix) {
  float rows[3][V] = {{0, 5, 0, 0, 0, 0}, {0, 0, 7, 0, 0, 0}, {0, 0, 0, 0, 9, 0}};
  SamplingParams sp;
  sp.temperature = 0;
  Tensor lg(&rows[0][0], DType::F32, {3, V});
  for (bool device_argmax : {false, true}) {  // sample_rows' greedy rows and the argmax shortcut agree
    PenaltyState pen;
    Rng rng(1);
    std::vector<int32_t> d = {1, 3};  // first matches the target's argmax, second does not
    auto draws = [&](const std::vector<int32_t>& dd) {
      std::vector<BlockRows> b{{&sp, &pen, &rng, &dd, nullptr}};
      return device_argmax ? argmax_rows(cpu(), lg, b) : draw_rows(cpu(), lg, b);
    };
    auto a = accept_chain(draws(d), 0, d.data(), 2, pen, rng);
    EXPECT_EQ(a.accepted, 1);
    EXPECT_EQ(a.next, 2);
    std::vector<int32_t> all = {1, 2};
    auto b = accept_chain(draws(all), 0, all.data(), 2, pen, rng);
    EXPECT_EQ(b.accepted, 2);
    EXPECT_EQ(b.next, 4);  // the bonus from the last row
  }
}

TEST(SpeculativeSampling, PenaltiesAndFilters) {
  float l[V] = {3, 2.9f, 1, 0, -1, -2};
  SamplingParams sp;
  sp.temperature = 1;
  sp.top_k = 2;
  PenaltyState pen;
  auto p = target_probs(l, V, sp, pen);
  EXPECT_GT(p[0], 0);
  EXPECT_GT(p[1], 0);
  for (int v = 2; v < V; v++) EXPECT_EQ(p[v], 0);
  sp.top_k = 0;
  sp.presence_penalty = 2;
  pen.add(0);
  sp.temperature = 0;
  EXPECT_EQ(greedy_token(l, V, sp, pen), 1);  // token 0 penalised below token 1
  sp.temperature = 1;
  sp.min_p = 0.5f;
  auto q = target_probs(l, V, sp, pen);
  // Penalised logits {1, 2.9, 1, 0, -1, -2}: only token 1 keeps at least half the top probability.
  EXPECT_EQ(q[0], 0.0f);
  EXPECT_FLOAT_EQ(q[1], 1.0f);
}

}  // namespace
}  // namespace mtpserve
