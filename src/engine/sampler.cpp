#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/backend.h"
#include "core/error.h"

namespace mtpserve {

namespace {

// Penalised logits (OpenAI semantics): l - presence * [count > 0] - frequency * count.
std::vector<float> penalised(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen) {
  std::vector<float> l(logits, logits + V);
  if (has_penalties(sp))
    for (auto& [tok, n] : pen.counts)
      if (tok >= 0 && tok < V) l[tok] -= penalty_delta(sp, n);
  return l;
}

}  // namespace

int32_t greedy_token(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen) {
  auto l = penalised(logits, V, sp, pen);
  return int32_t(std::max_element(l.begin(), l.end()) - l.begin());
}

std::vector<float> target_probs(const float* logits, int V, const SamplingParams& sp,
                                const PenaltyState& pen) {
  return sample_probs(penalised(logits, V, sp, pen), sp.temperature, sp.top_k, sp.top_p, sp.min_p);
}

int32_t sample_from(const std::vector<float>& p, Rng& rng) {
  int32_t v = inverse_cdf(p, rng.uniform());
  MTP_ASSERT(v >= 0);
  return v;
}

TokenLogprob token_logprob(const float* logits, int V, int32_t tok, int top) {
  float mx = *std::max_element(logits, logits + V);
  double sum = 0;
  for (int v = 0; v < V; v++) sum += std::exp(double(logits[v]) - mx);
  float lse = mx + float(std::log(sum));
  TokenLogprob r;
  r.token = tok;
  r.logprob = logits[tok] - lse;
  if (top > 0) {
    std::vector<int> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    int k = std::min(top, V);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int a, int b) { return logits[a] > logits[b]; });
    for (int i = 0; i < k; i++) r.top.emplace_back(idx[i], logits[idx[i]] - lse);
  }
  return r;
}

}  // namespace mtpserve
