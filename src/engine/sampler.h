// Host-side sampling pieces (DESIGN.md §6, mtp-algorithm.md §2.6): penalty counts, the per-request RNG, the
// target distribution of one row and log-probs. The target distribution at a row is: logits ->
// presence/frequency penalties -> / temperature -> top-k -> top-p -> min-p, renormalised; greedy
// (temperature 0 or top_k 1) is the argmax of the penalised logits. Its one definition is sample_probs
// (backend/backend.h), which Backend::sample_rows runs per row; verification over sample_rows' per-row
// numbers is engine/accept.h.
#pragma once
#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "engine/request.h"

namespace mtpserve {

// Counts of generated tokens, for presence/frequency penalties.
struct PenaltyState {
  std::unordered_map<int32_t, int> counts;
  void add(int32_t tok) { counts[tok]++; }
};

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(g_); }
  uint64_t bits() { return g_(); }  // 64 uniform random bits (sample_rows' per-row uniform)

 private:
  std::mt19937_64 g_;
};

// What a penalty takes off the logit of a token generated n times (OpenAI): presence + frequency * n.
inline float penalty_delta(const SamplingParams& sp, int n) {
  return sp.presence_penalty + sp.frequency_penalty * float(n);
}
inline bool has_penalties(const SamplingParams& sp) {
  return sp.presence_penalty != 0.0f || sp.frequency_penalty != 0.0f;
}

// The processed distribution of one row: probabilities over the vocabulary (zeros outside the kept set).
std::vector<float> target_probs(const float* logits, int V, const SamplingParams& sp,
                                const PenaltyState& pen);
// Index of the largest penalised logit (lowest index on ties).
int32_t greedy_token(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen);
// Inverse-CDF sample from p (need not be normalised, must have mass).
int32_t sample_from(const std::vector<float>& p, Rng& rng);

// Log-probability of `tok` under log_softmax(logits) and the `top` best alternatives.
TokenLogprob token_logprob(const float* logits, int V, int32_t tok, int top);

}  // namespace mtpserve
