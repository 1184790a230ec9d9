#include "engine/kv_cache.h"

#include <algorithm>

namespace mtpserve {

int64_t kv_budget_bytes(int64_t kv_memory_bytes, double mem_fraction, int64_t free_bytes) {
  MTP_CHECK(kv_memory_bytes >= 0, "engine: kv_memory_bytes must be >= 0, got {}", kv_memory_bytes);
  MTP_CHECK(mem_fraction >= 0 && mem_fraction <= 1, "engine: mem_fraction must be in [0, 1], got {}",
            mem_fraction);
  if (kv_memory_bytes > 0) return kv_memory_bytes;
  if (mem_fraction == 0) return int64_t(512) << 20;
  MTP_CHECK(free_bytes >= 0,
            "engine: --mem-fraction {}: the backend cannot tell its free memory; give --kv-memory",
            mem_fraction);
  return int64_t(mem_fraction * double(free_bytes));
}

KvPoolPages kv_pool_pages(const TextConfig& c, DType act, int64_t budget, int max_running,
                          int max_batch_tokens, int max_block) {
  int64_t full_tok = 0, slide_tok = 0;  // bytes per token slot in each pool
  for (const LayerSpec& s : c.layers)
    if (s.stores_kv)
      (s.type == LayerType::Full ? full_tok : slide_tok) +=
          2 * int64_t(s.num_kv_heads) * s.head_dim * int64_t(dtype_size(act));
  KvPoolPages p;
  const int per_req = (c.sliding_window + max_block + kPageSize - 1) / kPageSize + 2;
  p.sliding = slide_tok > 0 ? max_running * per_req + max_batch_tokens / kPageSize + max_running : 1;
  const int64_t left = budget - int64_t(p.sliding) * kPageSize * slide_tok;
  MTP_CHECK(left > 0, "engine: KV memory {} bytes is too small for the sliding-window pool of {} requests",
            budget, max_running);
  p.full = full_tok > 0 ? int(std::min<int64_t>(left / (kPageSize * full_tok), 1 << 22)) : 1;
  MTP_CHECK(p.full >= 4, "engine: KV memory {} bytes leaves only {} full-attention pages", budget, p.full);
  return p;
}

PagePool::PagePool(int n) : used_(size_t(n), 0) {
  MTP_ASSERT(n >= 0);
  free_.reserve(n);
  for (int i = n - 1; i >= 0; i--) free_.push_back(i);  // hand out low page ids first
}

int PagePool::alloc() {
  if (free_.empty()) return -1;
  int p = free_.back();
  free_.pop_back();
  used_[p] = 1;
  return p;
}

void PagePool::release(int p) {
  MTP_ASSERT(is_used(p));
  used_[p] = 0;
  free_.push_back(p);
}

KvCache::KvCache(const Gemma4Model& m, int full_pages, int sliding_pages)
    : storage_(m.allocate_kv(full_pages + 1, sliding_pages + 1)),  // + the pad pages
      full_(full_pages),
      sliding_(sliding_pages),
      window_(m.config().sliding_window) {}

int KvCache::pages_needed(const SeqPages& s, int slots, LayerType t) const {
  int want = (slots + kPageSize - 1) / kPageSize;
  int have = int(t == LayerType::Full ? s.full.size() : s.sliding.size());
  return std::max(0, want - have);
}

bool KvCache::reserve(SeqPages& s, int slots) {
  int nf = pages_needed(s, slots, LayerType::Full), ns = pages_needed(s, slots, LayerType::Sliding);
  if (nf > full_.free_count() || ns > sliding_.free_count()) return false;
  for (int i = 0; i < nf; i++) s.full.push_back(full_.alloc());
  for (int i = 0; i < ns; i++) s.sliding.push_back(sliding_.alloc());
  return true;
}

void KvCache::trim_sliding(SeqPages& s, int min_visible_slot) {
  int last_dead = min_visible_slot / kPageSize;  // pages [0, last_dead) hold only slots < min_visible_slot
  for (int p = 0; p < last_dead && p < int(s.sliding.size()); p++) {
    if (s.sliding[p] < 0) continue;
    sliding_.release(s.sliding[p]);
    s.sliding[p] = -1;
  }
}

void KvCache::release(SeqPages& s) {
  for (int p : s.full) full_.release(p);
  for (int p : s.sliding)
    if (p >= 0) sliding_.release(p);
  s.full.clear();
  s.sliding.clear();
}

}  // namespace mtpserve
