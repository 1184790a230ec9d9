// Draft trees for topk > 1 (mtp-algorithm.md §2.4): choosing the verify block's nodes from every expanded
// candidate, and walking the verified tree. Pure host functions, separate from the engine loop.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/sampler.h"
#include "model/assistant.h"

namespace mtpserve {

// One expanded draft candidate.
struct DraftNode {
  int32_t token;
  int parent;   // index into the candidate list, -1 = the root (the bonus token)
  int depth;    // 1 for children of the root
  float score;  // cumulative log-probability
  int hrow;     // the engine's row of the recurrent state this node's children are drafted from
};

// The verify block of a tree: node i+1 of the block is tokens[i]; parent[i] is its parent's block index
// (0 = the root). Nodes are ordered by depth, so a parent always precedes its children.
struct TreeBlock {
  std::vector<int32_t> tokens;
  std::vector<int> parent;
};

// The best `want` candidates by score, closed under ancestors (a child never scores above its parent, but
// ties can break closure, so ancestors are added explicitly), ordered by depth.
TreeBlock select_tree(const std::vector<DraftNode>& nodes, int want);

// Walk a verified tree from the root (rows [1 + nodes, V] of target logits, row i for block node i).
// Greedy: follow the child equal to the target's choice. Sampled: draw x from the target distribution at the
// current node; if x is a child move there, else x is the correction token — inverse-CDF sampling over
// [children..., rest], so the emitted tokens have exactly the target's distribution. Appends the accepted
// block indices to `path`, advances `pen`, and returns the token that follows them. `top`: as for
// accept_chain.
int32_t accept_tree(const TreeBlock& t, const float* rows, int V, const SamplingParams& sp, PenaltyState& pen,
                    Rng& rng, std::vector<int>& path, const int32_t* top = nullptr);

// Top-t (token, log-prob) of each of the B rows of an assistant step: log-softmax over the vocabulary (dense
// head), or over the centroid head's candidates (every other token at -inf).
std::vector<std::vector<std::pair<int32_t, float>>> top_children(Backend& be, const DraftStepOutput& o, int B,
                                                                 int t);

}  // namespace mtpserve
