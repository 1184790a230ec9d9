#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace mtpserve {

namespace {

// Penalised logits (OpenAI semantics): l - presence * [count > 0] - frequency * count.
std::vector<float> penalised(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen) {
  std::vector<float> l(logits, logits + V);
  if (sp.presence_penalty != 0 || sp.frequency_penalty != 0)
    for (auto& [tok, n] : pen.counts)
      if (tok >= 0 && tok < V) l[tok] -= sp.presence_penalty + sp.frequency_penalty * float(n);
  return l;
}

}  // namespace

int32_t greedy_token(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen) {
  auto l = penalised(logits, V, sp, pen);
  return int32_t(std::max_element(l.begin(), l.end()) - l.begin());
}

std::vector<float> target_probs(const float* logits, int V, const SamplingParams& sp,
                                const PenaltyState& pen) {
  std::vector<float> l = penalised(logits, V, sp, pen);
  std::vector<float> p(V, 0.0f);
  if (sp.greedy()) {
    p[std::max_element(l.begin(), l.end()) - l.begin()] = 1.0f;
    return p;
  }
  const float t = sp.temperature;
  float mx = *std::max_element(l.begin(), l.end());
  double sum = 0;
  for (int v = 0; v < V; v++) sum += (p[v] = std::exp((l[v] - mx) / t));
  for (auto& x : p) x = float(x / sum);
  // top-k, then top-p (smallest set whose mass reaches top_p), then min-p (relative to the top probability).
  if ((sp.top_k > 0 && sp.top_k < V) || sp.top_p < 1.0f || sp.min_p > 0.0f) {
    std::vector<int> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
    int keep = V;
    if (sp.top_k > 0) keep = std::min(keep, sp.top_k);
    if (sp.top_p < 1.0f) {
      double tot = 0;
      for (int i = 0; i < keep; i++) tot += p[idx[i]];
      double cum = 0;
      for (int i = 0; i < keep; i++) {
        cum += p[idx[i]] / tot;
        if (cum >= sp.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    if (sp.min_p > 0.0f) {
      float floor = sp.min_p * p[idx[0]];
      int k2 = 0;
      while (k2 < keep && p[idx[k2]] >= floor) k2++;
      keep = std::max(1, k2);
    }
    std::vector<float> q(V, 0.0f);
    double tot = 0;
    for (int i = 0; i < keep; i++) tot += p[idx[i]];
    for (int i = 0; i < keep; i++) q[idx[i]] = float(p[idx[i]] / tot);
    p.swap(q);
  }
  return p;
}

int32_t sample_from(const std::vector<float>& p, Rng& rng) {
  double tot = 0;
  for (float x : p) tot += x;
  MTP_ASSERT(tot > 0);
  double u = rng.uniform() * tot, cum = 0;
  int32_t last = -1;
  for (size_t v = 0; v < p.size(); v++) {
    if (p[v] <= 0) continue;
    cum += p[v];
    last = int32_t(v);
    if (u < cum) return int32_t(v);
  }
  return last;  // rounding at the top end
}

int32_t sample_token(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen,
                     Rng& rng) {
  if (sp.greedy()) return greedy_token(logits, V, sp, pen);
  return sample_from(target_probs(logits, V, sp, pen), rng);
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

ChainAccept accept_chain(const float* logits, int V, const int32_t* drafts, int k, const SamplingParams& sp,
                         PenaltyState& pen, Rng& rng, const int32_t* top) {
  MTP_ASSERT(!top || sp.top_only());
  ChainAccept r;
  for (int i = 0; i <= k; i++) {
    const float* row = top ? nullptr : logits + size_t(i) * V;
    if (sp.greedy()) {
      int32_t t = top ? top[i] : greedy_token(row, V, sp, pen);
      if (i < k && t == drafts[i]) {
        pen.add(t);
        r.accepted++;
        continue;
      }
      r.next = t;
      break;
    }
    std::vector<float> p = target_probs(row, V, sp, pen);
    if (i < k) {
      int32_t d = drafts[i];
      if (rng.uniform() < double(p[d])) {  // accept with probability p(d): q is one-hot on d
        pen.add(d);
        r.accepted++;
        continue;
      }
      p[d] = 0.0f;  // residual (p - q)+ renormalised
    }
    r.next = sample_from(p, rng);
    break;
  }
  pen.add(r.next);
  return r;
}

}  // namespace mtpserve
