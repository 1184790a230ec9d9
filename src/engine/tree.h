// Draft trees for topk > 1 (mtp-algorithm.md §2.4): choosing the verify block's nodes from every expanded
// candidate (walking the verified tree is engine/accept.h). Pure host functions, separate from the engine
// loop.
#pragma once
#include <cstdint>
#include <vector>

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

// Top-t (token, log-prob) of each of the B rows of an assistant step: log-softmax over the vocabulary (dense
// head), or over the centroid head's candidates (every other token at -inf).
std::vector<std::vector<std::pair<int32_t, float>>> top_children(Backend& be, const DraftStepOutput& o, int B,
                                                                 int t);

}  // namespace mtpserve
