// Graph runners for the steady state of decoding: the target's decode/verify forward and the assistant's
// whole K-step greedy draft loop, each recorded once per batch bucket (Backend::capture) and replayed with
// new inputs. Per iteration the host makes one metadata upload before each replay and one read after it;
// nothing is launched op by op. Batches are padded to the bucket with sequences that live in the pad pages.
#pragma once
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "model/assistant.h"

namespace mtpserve {

// Batch buckets: 1, 2, 4, 8, then multiples of 8 up to 64, then steps of about 1.25x. Padding rows cost
// real work (a MoE model routes them to experts: 26B-A4B at 32 sequences took 36.2 ms padded to 40 against
// 32.3 ms eager), so the steps stay small; each bucket's graphs hold their own activation memory.
int graph_bucket(int n);

// What both runners share: the page-table width of their layouts (from the longest sequence, `max_len`
// slots), the most sequences per batch, and the page tables of padding sequences (the pad pages, zeroed
// once so that padding rows only read finite keys).
struct GraphPadding {
  GraphPadding(const Gemma4Model& m, KvStorage& kv, PadPages pad, int max_len, int max_seqs);
  bool fits(const std::vector<SeqBatchEntry>& seqs) const;  // count and page-table widths
  int width, max_seqs;
  std::vector<int32_t> full, sliding;
};

class TargetGraphs {
 public:
  // `max_len`: longest sequence (slots) a batch may hold; fixes the page-table width of every graph.
  TargetGraphs(const Gemma4Model& m, KvStorage& kv, PadPages pad, int max_len, int max_seqs);

  // Every sequence has the same q_len (<= kPageSize), every row is an output row in order, the sequences fit
  // max_seqs and max_len, and a tree mask (if any) is [T, q_len].
  bool fits(const ForwardBatch& b) const;
  // Same result as Gemma4Model::forward(b, kv) for the batch's rows (the outputs have the bucket's rows; the
  // first T are the batch's). The tensors stay valid until the next call.
  ForwardOutput forward(const ForwardBatch& b);
  // Records the bucket of `seqs` sequences of q_len rows (a tree mask: `tree`) now, on padding sequences, so
  // that its memory is taken at startup rather than by the first batch of that size.
  void warm(int seqs, int q_len, bool tree);
  int graphs() const { return int(buckets_.size()); }

 private:
  struct Bucket {
    std::unique_ptr<Graph> graph;  // first: destroyed after the tensors it wrote
    MetaDims dims;
    Tensor buf;  // packed metadata
    DeviceMeta meta;
    ForwardOutput out;
  };
  const Gemma4Model& m_;
  KvStorage& kv_;
  GraphPadding pad_;
  std::vector<int32_t> words_;
  std::map<std::tuple<int, int, bool>, Bucket> buckets_;  // (sequences, q_len, tree mask)
  // Appends padding sequences of q_len rows to b until it has `seqs` sequences.
  void add_padding(ForwardBatch& b, int seqs, int q_len, bool tree) const;
};

class DraftGraphs {
 public:
  DraftGraphs(const Gemma4Assistant& a, const Gemma4Model& target, KvStorage& kv, PadPages pad, int max_len,
              int max_seqs);

  // One row per sequence (a chain), within max_seqs and max_len.
  bool fits(const DraftRows& rows) const;
  // k greedy draft steps for every row from its input token and recurrent state h0 [S, Hb] (act dtype, on
  // the device). Returns the drafts, [k][S] row-major.
  std::vector<int32_t> draft(const DraftRows& rows, const Tensor& h0, int k);
  // Records the k-step loop for `seqs` rows now, on padding sequences (see TargetGraphs::warm).
  void warm(int seqs, int k);
  int graphs() const { return int(buckets_.size()); }

 private:
  struct Bucket {
    std::unique_ptr<Graph> graph;  // first: destroyed after the tensors it wrote
    MetaDims dims;
    Tensor buf, h;  // packed metadata; input state [Sb, Hb]
    DeviceMeta meta;
    Tensor drafts;  // [k, Sb] I32
  };
  void record(Bucket& bk, int k);
  const Gemma4Assistant& a_;
  const Gemma4Model& target_;
  KvStorage& kv_;
  GraphPadding pad_;
  std::vector<int32_t> words_;
  std::map<std::pair<int, int>, Bucket> buckets_;  // (sequences, k)
};

// Records the graphs of every batch bucket up to max_seqs sequences on padding sequences: decode, and with
// k > 0 draft steps the verify of `verify_rows` rows per sequence (a tree mask: `tree`) and, for a chain,
// the draft loop. Their activation memory is then taken at startup, where running out is an error with
// advice, and not by the first batch of some size while serving.
void warm_step_graphs(TargetGraphs& t, DraftGraphs* d, int max_seqs, int k, bool tree, int verify_rows);

}  // namespace mtpserve
