// Single-sequence helpers on top of the paged KV cache: prefill (optionally in chunks) and greedy decoding.
// The serving engine batches many sequences; these are for the CLI, tests and parity checks.
#pragma once
#include <vector>

#include "engine/kv_cache.h"

namespace mtpserve {

struct SequenceState {
  SeqPages pages;
  std::vector<int32_t> tokens;  // committed tokens (their KV is in the cache)
};

// Run the target over `tokens` appended to `seq` in chunks of at most `chunk` tokens. Returns the logits
// [n, V] (host, fp32) of every new token if all_logits, else only of the last one [1, V].
std::vector<float> prefill(const Gemma4Model& m, KvCache& kv, SequenceState& seq,
                           const std::vector<int32_t>& tokens, int chunk, bool all_logits);

struct GreedyResult {
  std::vector<int32_t> tokens;  // generated ids (stops after an EOS id, which is included)
  std::vector<float> margins;   // top-1 minus top-2 logit at each step
};

GreedyResult greedy_generate(const Gemma4Model& m, KvCache& kv, SequenceState& seq,
                             const std::vector<int32_t>& prompt, int max_tokens,
                             const std::vector<int>& eos_ids, int chunk = 512);

}  // namespace mtpserve
