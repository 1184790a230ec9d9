// Paged KV cache: the storage of the target's KV-owning layers in two page pools (full-attention owners,
// sliding-window owners), pages of kPageSize tokens, and per-sequence page tables. Sliding pages that fall
// out of every future query's window are returned to their pool while the sequence runs.
#pragma once
#include <cstdint>
#include <vector>

#include "model/gemma4.h"

namespace mtpserve {

class PagePool {
 public:
  explicit PagePool(int num_pages);
  int capacity() const { return int(used_.size()); }
  int free_count() const { return int(free_.size()); }
  int alloc();  // -1 when empty
  void release(int page);
  bool is_used(int page) const { return page >= 0 && page < capacity() && used_[page]; }

 private:
  std::vector<int32_t> free_;
  std::vector<uint8_t> used_;
};

// The KV cache's memory budget: kv_memory_bytes when given (> 0), else mem_fraction of free_bytes (the
// backend's free memory once the weights are loaded; -1: unknown, an error), else 512 MiB. Throws Error on
// bad values.
int64_t kv_budget_bytes(int64_t kv_memory_bytes, double mem_fraction, int64_t free_bytes);

// Pages of each pool for a KV memory budget of `budget` bytes. The sliding pool never needs more than, per
// running request, its window plus a block of rows (`max_block`: a verify block) and page rounding, plus the
// step's token budget for prefill chunks (pages behind the window are returned every step); the full pool
// gets the rest. Throws Error when the budget cannot hold that.
struct KvPoolPages {
  int full = 0, sliding = 0;
};
KvPoolPages kv_pool_pages(const TextConfig& c, DType act, int64_t budget, int max_running,
                          int max_batch_tokens, int max_block);

// The page tables of one sequence. Logical page p covers slots [p*16, p*16+16).
struct SeqPages {
  std::vector<int32_t> full, sliding;  // -1 in `sliding` = returned to the pool
};

class KvCache {
 public:
  KvCache(const Gemma4Model& model, int full_pages, int sliding_pages);

  KvStorage& storage() { return storage_; }
  PagePool& full_pool() { return full_; }
  PagePool& sliding_pool() { return sliding_; }
  int sliding_window() const { return window_; }
  // One page per pool outside the pools (the last page of the storage): padding rows of graph batches
  // write their KV there, so they never touch a request's pages.
  PadPages pad_pages() const { return {full_.capacity(), sliding_.capacity()}; }

  // Pages needed to grow `s` to hold `slots` slots (both pools), without allocating.
  int pages_needed(const SeqPages& s, int slots, LayerType t) const;
  // Grow `s` so that slots [0, slots) are backed; false (and nothing allocated) if a pool is short.
  bool reserve(SeqPages& s, int slots);
  // Return the sliding pages whose slots all lie before `min_visible_slot`.
  void trim_sliding(SeqPages& s, int min_visible_slot);
  // Return every page of `s`.
  void release(SeqPages& s);

 private:
  KvStorage storage_;
  PagePool full_, sliding_;
  int window_;
};

}  // namespace mtpserve
