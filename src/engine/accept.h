// Verification of speculative blocks from a few numbers per target row (mtp-algorithm.md §2.6). For every
// output row of a step the device computes, with Backend::sample_rows, p_r(c) of each draft child c below the
// row and one sample from p_r with all of the row's children removed (greedy requests without penalties or
// log-probs: just the row's argmax). Acceptance is host logic over those numbers with the request's RNG; it
// is exact: the emitted tokens have the target's distribution.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "engine/sampler.h"
#include "engine/tree.h"

namespace mtpserve {

// The output rows of one request in a step: a verify block (the bonus, then its drafts: a chain when parent
// is empty, else tree nodes with parent[i] the block index of node i+1's parent), or one row without drafts
// (the last prefill chunk's).
struct BlockRows {
  const SamplingParams* sp = nullptr;
  const PenaltyState* pen = nullptr;  // counts so far; each row adds the drafts on its path
  Rng* rng = nullptr;
  const std::vector<int32_t>* drafts = nullptr;  // null: no drafts
  const std::vector<int>* parent = nullptr;      // null or empty: a chain
  int rows() const { return 1 + (drafts ? int(drafts->size()) : 0); }
};

// Per output row r: pd[r * C + j] = p_r(the row's j-th child, in block order) (0 past its children) and
// tok[r] = the sample from p_r with every child of the row removed (-1: nothing left).
struct RowDraws {
  int C = 1;
  std::vector<float> pd;
  std::vector<int32_t> tok;
};

// Backend::sample_rows over logits [R, V] (R = the blocks' rows, in order): one upload of every row's
// parameters, children, penalties and 64 uniform bits (drawn from the request's RNG, none for greedy
// requests), one download of [R, C + 1] numbers.
RowDraws draw_rows(Backend& be, const Tensor& logits, const std::vector<BlockRows>& blocks);
// The greedy shortcut when every request is top_only(): each row's argmax on the device, [R] ids to the host,
// as RowDraws (pd 1 for the child that is the argmax, else 0).
RowDraws argmax_rows(Backend& be, const Tensor& logits, const std::vector<BlockRows>& blocks);

// A step's rows: argmax_rows when every block's request is top_only(), else draw_rows; and in
// host_logits[i] (resized to the blocks) the logits rows of block i when its request wants log-probs.
RowDraws step_draws(Backend& be, const Tensor& logits, const std::vector<BlockRows>& blocks,
                    std::vector<std::vector<float>>& host_logits);

struct ChainAccept {
  int accepted = 0;   // drafts accepted (0..k)
  int32_t next = -1;  // the token that follows them (correction or bonus)
};
// A chain of k drafts over rows [row0, row0 + k]: accept d_i with probability pd_i (q is one-hot on d_i); on
// a reject the row's sample (the residual (p - q)+ renormalised); after k accepts the last row's sample.
// `pen` is advanced with the accepted tokens and the next one.
ChainAccept accept_chain(const RowDraws& d, int row0, const int32_t* drafts, int k, PenaltyState& pen,
                         Rng& rng);
// A tree over rows [row0, row0 + nodes]: at each node try its children in block order, child j with
// probability pd_j / (1 - sum_{l<j} pd_l); if all are rejected, the node's sample. Together that is one draw
// from p at the node. Appends the accepted block indices to `path`, advances `pen`, returns the next token.
int32_t accept_tree(const RowDraws& d, int row0, const TreeBlock& t, PenaltyState& pen, Rng& rng,
                    std::vector<int>& path);

}  // namespace mtpserve
