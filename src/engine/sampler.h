// Host-side token sampling and exact speculative acceptance (DESIGN.md §6, mtp-algorithm.md §2.6).
// The target distribution at a row is: logits -> presence/frequency penalties -> / temperature -> top-k ->
// top-p -> min-p, renormalised. Greedy (temperature 0 or top_k 1) is the argmax of the penalised logits.
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

 private:
  std::mt19937_64 g_;
};

// The processed distribution of one row: probabilities over the vocabulary (zeros outside the kept set).
std::vector<float> target_probs(const float* logits, int V, const SamplingParams& sp,
                                const PenaltyState& pen);
// Index of the largest penalised logit (lowest index on ties).
int32_t greedy_token(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen);
// Inverse-CDF sample from p (need not be normalised).
int32_t sample_from(const std::vector<float>& p, Rng& rng);
// Sample the next token of one row (greedy when sp.greedy()).
int32_t sample_token(const float* logits, int V, const SamplingParams& sp, const PenaltyState& pen, Rng& rng);

// Log-probability of `tok` under log_softmax(logits) and the `top` best alternatives.
TokenLogprob token_logprob(const float* logits, int V, int32_t tok, int top);

// Verification of a chain of k drafts against target logits rows [k+1, V] (row i predicts the token after
// the i-th block token). Greedy: accept while the draft equals the target's argmax. Sampled: exact
// target-only rejection sampling (drafts are deterministic): accept d_i with probability p_i(d_i); on a
// reject sample from p_i with d_i removed; after k accepts sample the bonus from p_k. The output
// distribution is exactly the target's. `pen` is advanced with the accepted tokens.
struct ChainAccept {
  int accepted = 0;   // drafts accepted (0..k)
  int32_t next = -1;  // the token that follows them (correction or bonus)
};
// `top` (optional): each row's argmax computed on the device, for greedy requests without penalties
// (top_only()); `logits` is then not read and may be null.
ChainAccept accept_chain(const float* logits, int V, const int32_t* drafts, int k, const SamplingParams& sp,
                         PenaltyState& pen, Rng& rng, const int32_t* top = nullptr);

}  // namespace mtpserve
