#include "engine/generate.h"

#include <algorithm>

namespace mtpserve {

std::vector<float> prefill(const Gemma4Model& m, KvCache& kv, SequenceState& seq,
                           const std::vector<int32_t>& tokens, int chunk, bool all_logits) {
  MTP_CHECK(!tokens.empty(), "prefill: no tokens");
  MTP_ASSERT(chunk > 0);
  const int V = m.config().vocab_size;
  std::vector<float> out;
  for (size_t start = 0; start < tokens.size(); start += chunk) {
    size_t n = std::min(tokens.size() - start, size_t(chunk));
    int prefix = int(seq.tokens.size());
    MTP_CHECK(kv.reserve(seq.pages, prefix + int(n)), "prefill: the KV cache has no room for {} tokens",
              prefix + n);
    ForwardBatch b;
    b.tokens.assign(tokens.begin() + start, tokens.begin() + start + n);
    for (size_t i = 0; i < n; i++) b.positions.push_back(prefix + int(i));
    b.seqs.push_back({int(n), prefix, &seq.pages.full, &seq.pages.sliding});
    bool last_chunk = start + n == tokens.size();
    if (all_logits) {
      for (size_t i = 0; i < n; i++) b.output_rows.push_back(int(i));
    } else if (last_chunk) {
      b.output_rows.push_back(int(n) - 1);
    }
    ForwardOutput o = m.forward(b, kv.storage());
    if (!b.output_rows.empty()) {
      size_t old = out.size();
      out.resize(old + b.output_rows.size() * size_t(V));
      m.backend().copy_to_host(out.data() + old, o.logits);
    }
    seq.tokens.insert(seq.tokens.end(), b.tokens.begin(), b.tokens.end());
    // Sliding pages that no later query can see: keys older than (next position - window).
    kv.trim_sliding(seq.pages, int(seq.tokens.size()) - kv.sliding_window());
  }
  return out;
}

GreedyResult greedy_generate(const Gemma4Model& m, KvCache& kv, SequenceState& seq,
                             const std::vector<int32_t>& prompt, int max_tokens,
                             const std::vector<int>& eos_ids, int chunk) {
  GreedyResult r;
  const int V = m.config().vocab_size;
  std::vector<float> logits = prefill(m, kv, seq, prompt, chunk, false);
  for (int step = 0; step < max_tokens; step++) {
    auto best = std::max_element(logits.begin(), logits.begin() + V);
    int32_t tok = int32_t(best - logits.begin());
    float top1 = *best, top2 = -INFINITY;
    for (int v = 0; v < V; v++)
      if (v != tok) top2 = std::max(top2, logits[v]);
    r.tokens.push_back(tok);
    r.margins.push_back(top1 - top2);
    if (std::find(eos_ids.begin(), eos_ids.end(), tok) != eos_ids.end() || step + 1 == max_tokens) break;
    logits = prefill(m, kv, seq, {tok}, 1, false);
  }
  return r;
}

}  // namespace mtpserve
