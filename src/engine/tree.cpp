#include "engine/tree.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mtpserve {

TreeBlock select_tree(const std::vector<DraftNode>& nodes, int want) {
  std::vector<int> order(nodes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return nodes[x].score > nodes[y].score; });
  std::vector<char> keep(nodes.size(), 0);
  int kept = 0;
  for (int n : order) {
    if (kept >= want) break;
    std::vector<int> chain;  // n and its ancestors not yet kept
    for (int a = n; a >= 0 && !keep[a]; a = nodes[a].parent) chain.push_back(a);
    if (kept + int(chain.size()) > want) continue;
    for (int a : chain) keep[a] = 1;
    kept += int(chain.size());
  }
  std::vector<int> sel;
  for (size_t n = 0; n < nodes.size(); n++)
    if (keep[n]) sel.push_back(int(n));
  std::stable_sort(sel.begin(), sel.end(), [&](int x, int y) { return nodes[x].depth < nodes[y].depth; });
  std::vector<int> block_of(nodes.size(), 0);
  for (size_t i = 0; i < sel.size(); i++) block_of[sel[i]] = int(i) + 1;
  TreeBlock t;
  for (int n : sel) {
    t.tokens.push_back(nodes[n].token);
    t.parent.push_back(nodes[n].parent < 0 ? 0 : block_of[nodes[n].parent]);
  }
  return t;
}

// Top-t (token, log-prob) of each row of an assistant step (log-softmax over the vocabulary, or over the
// centroid head's candidates with -inf elsewhere).
std::vector<std::vector<std::pair<int32_t, float>>> top_children(Backend& be, const DraftStepOutput& o, int B,
                                                                 int t) {
  std::vector<std::vector<std::pair<int32_t, float>>> out(B);
  bool dense = o.logits.defined();
  int64_t N = dense ? o.logits.dim(1) : o.cand_ids.dim(1);
  std::vector<float> sc(size_t(B) * N);
  std::vector<int32_t> id;
  be.copy_to_host(sc.data(), dense ? o.logits : o.cand_scores);
  if (!dense) {
    id.resize(size_t(B) * N);
    be.copy_to_host(id.data(), o.cand_ids);
  }
  for (int b = 0; b < B; b++) {
    const float* r = sc.data() + size_t(b) * N;
    float mx = *std::max_element(r, r + N);
    double sum = 0;
    for (int64_t j = 0; j < N; j++) sum += std::exp(double(r[j]) - mx);
    float lse = mx + float(std::log(sum));
    std::vector<int> idx(N);
    std::iota(idx.begin(), idx.end(), 0);
    int k = int(std::min<int64_t>(t, N));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int x, int y) { return r[x] > r[y] || (r[x] == r[y] && x < y); });
    for (int i = 0; i < k; i++)
      out[b].emplace_back(dense ? idx[i] : id[size_t(b) * N + idx[i]], r[idx[i]] - lse);
  }
  return out;
}

}  // namespace mtpserve
