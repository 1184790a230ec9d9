// The serving engine loop (DESIGN.md §6-§7). Each step:
//   1. admit waiting requests and apply cancellations;
//   2. schedule under the token budget: a verify block [bonus, drafts...] for every running request past
//      prefill, and prefill chunks for the others; reserve KV pages (preempting the newest request by
//      recompute when a pool runs out);
//   3. draft with the assistant for the verify blocks (batched, K steps);
//   4. one target forward over all blocks and chunks;
//   5. accept (greedy or exact rejection sampling), commit, stream outputs, retire finished requests.
// A request's counters: `tokens` = prompt + emitted output; the KV holds tokens[0, computed). Past prefill,
// computed == tokens.size() - 1: the last emitted token (the bonus) has no KV yet.
#include "engine/engine.h"
#include "backend/select.h"
#include "engine/graphs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <thread>

#include "engine/accept.h"
#include "engine/kv_cache.h"
#include "model/assistant.h"
#include "model/loader.h"

namespace mtpserve {
namespace {

using Clock = std::chrono::steady_clock;

struct Req {
  GenerationRequest r;
  OutputCallback cb;
  std::vector<int32_t> tokens;  // prompt + emitted
  int prompt_len = 0;
  int computed = 0;  // tokens with KV
  int emitted = 0;   // output tokens delivered
  SeqPages pages;
  std::vector<float> seed_h;  // target post-norm hidden at computed-1 (valid past prefill)
  PenaltyState pen;
  Rng rng{0};
  bool cancelled = false;
  std::optional<RequestOutput> final_out;  // delivered by retire(), after the pages are free
  Clock::time_point arrival;
  double ttft = -1;
  int drafted = 0, accepted = 0, verifies = 0;
  bool prefilling() const { return computed < int(tokens.size()) - (emitted > 0 ? 1 : 0); }
};

// What one request does in a step.
struct Work {
  Req* q = nullptr;
  int q_len = 0;  // rows in the forward
  int k = 0;      // drafts (verify blocks)
  std::vector<int32_t> drafts;
  bool verify = false;
  bool last_chunk = false;  // a prefill chunk that completes the prompt
  // Tree blocks (draft_topk > 1): drafts[i] is node i+1 of the block, parent[i] its parent's block index
  // (0 = the root, the bonus token); nodes are ordered by depth.
  std::vector<int> parent;
  int row0 = 0;  // first row in the forward batch
  int out0 = 0;  // first output row
};

class EngineImpl final : public Engine {
 public:
  explicit EngineImpl(const EngineOptions& o) : opts_(o) {
    MTP_CHECK(o.max_running > 0 && o.max_waiting >= 0 && o.max_batch_tokens > 0 && o.prefill_chunk > 0,
              "engine: max_running, max_batch_tokens and prefill_chunk must be positive");
    MTP_CHECK(o.num_draft >= 0 && o.num_draft <= 16, "engine: num_draft must be in [0, 16], got {}",
              o.num_draft);
    MTP_CHECK(o.draft_topk >= 1 && o.draft_topk <= 8, "engine: draft_topk must be in [1, 8], got {}",
              o.draft_topk);
    MTP_CHECK(o.num_draft_tokens >= 0, "engine: num_draft_tokens must be >= 0");
    be_ = make_backend(o.backend);
    LoadOptions lo{.format = o.load_format, .verbose = o.load_format == "dummy"};
    target_ = load_target(o.model_dir, *be_, lo);
    if (!o.assistant_dir.empty())
      assistant_ = load_assistant(o.assistant_dir, *target_, o.query_pos_offset, lo);
    const TextConfig& c = target_->config();
    const int64_t budget =
        kv_budget_bytes(o.kv_memory_bytes, o.mem_fraction,
                        o.kv_memory_bytes == 0 && o.mem_fraction > 0 ? be_->free_memory() : -1);
    const KvPoolPages pages =
        kv_pool_pages(c, be_->act_dtype(), budget, o.max_running, o.max_batch_tokens, max_block());
    const int full_pages = pages.full, slide_pages = pages.sliding;
    kv_ = std::make_unique<KvCache>(*target_, full_pages, slide_pages);
    info_.model_dir = o.model_dir;
    info_.assistant_dir = o.assistant_dir;
    info_.backend = be_->name();
    info_.vocab_size = c.vocab_size;
    info_.kv_capacity_tokens = int64_t(full_pages) * kPageSize;
    info_.kv_memory_bytes = budget;
    int cap = int(std::min<int64_t>(info_.kv_capacity_tokens - kPageSize, c.max_position_embeddings));
    info_.max_model_len = o.max_model_len > 0 ? std::min(o.max_model_len, cap) : cap;
    info_.eos_token_ids = c.eos_token_ids;
    info_.bos_token_id = c.bos_token_id;
    MTP_CHECK(o.graphs == "auto" || o.graphs == "on" || o.graphs == "off",
              "engine: graphs must be auto, on or off, got '{}'", o.graphs);
    if (o.graphs == "on" || (o.graphs == "auto" && be_->native_graphs())) {
      const int max_len = info_.max_model_len + max_block();
      info_.graphs = true;
      tgraphs_ =
          std::make_unique<TargetGraphs>(*target_, kv_->storage(), kv_->pad_pages(), max_len, o.max_running);
      if (assistant_)
        dgraphs_ = std::make_unique<DraftGraphs>(*assistant_, *target_, kv_->storage(), kv_->pad_pages(),
                                                 max_len, o.max_running);
      if (o.warm_graphs) warm_graphs();
    }
    worker_ = std::thread([this] { loop(); });
  }
  ~EngineImpl() override { shutdown(); }

  const ModelInfo& info() const override { return info_; }

  bool submit(GenerationRequest r, OutputCallback cb) override {
    const int V = info_.vocab_size;
    MTP_CHECK(!r.prompt.empty(), "the prompt is empty");
    for (int32_t t : r.prompt)
      MTP_CHECK(t >= 0 && t < V, "prompt token id {} is outside the vocabulary [0, {})", t, V);
    MTP_CHECK(
        int(r.prompt.size()) < info_.max_model_len,
        "the prompt has {} tokens but the context limit is {} (prompt plus at least one generated token)",
        r.prompt.size(), info_.max_model_len);
    MTP_CHECK(r.sampling.max_tokens >= 1, "max_tokens must be at least 1, got {}", r.sampling.max_tokens);
    auto q = std::make_unique<Req>();
    q->r = std::move(r);
    q->cb = std::move(cb);
    q->tokens = q->r.prompt;
    q->prompt_len = int(q->tokens.size());
    q->rng = Rng(q->r.sampling.seed ? *q->r.sampling.seed : std::random_device{}() * 0x9e3779b97f4a7c15ull);
    q->arrival = Clock::now();
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_ || int(inbox_.size() + waiting_.size()) >= opts_.max_waiting) return false;
      inbox_.push_back(std::move(q));
    }
    cv_.notify_one();
    return true;
  }

  void cancel(const std::string& id) override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      cancels_.insert(id);
    }
    cv_.notify_one();
  }

  EngineStats stats() const override {
    std::lock_guard<std::mutex> lk(stats_mu_);
    return stats_;
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_ && !worker_.joinable()) return;
      stopping_ = true;
    }
    cv_.notify_one();
    if (worker_.joinable()) worker_.join();
  }

 private:
  // ---- the loop -------------------------------------------------------------------------------------
  void loop() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] {
          return stopping_ || !inbox_.empty() || !cancels_.empty() || !running_.empty() || !waiting_.empty();
        });
        if (stopping_) break;
        for (auto& q : inbox_) waiting_.push_back(std::move(q));
        inbox_.clear();
        for (const auto& id : cancels_) pending_cancels_.insert(id);
        cancels_.clear();
      }
      try {
        step();
      } catch (const std::exception& e) {
        // A failed step poisons only the requests in it: finish them with an error, keep serving.
        for (auto& q : running_) finish(*q, FinishReason::Error, e.what());
        retire();
      }
      publish_stats();
    }
    // Shutdown: every live request ends with Abort.
    for (auto& q : running_) finish(*q, FinishReason::Abort);
    retire();
    for (auto& q : waiting_) finish(*q, FinishReason::Abort), deliver_final(*q);
    waiting_.clear();
  }

  void apply_cancels() {
    if (pending_cancels_.empty()) return;
    for (auto& q : running_)
      if (pending_cancels_.count(q->r.id)) q->cancelled = true;
    for (auto& q : waiting_)
      if (pending_cancels_.count(q->r.id)) q->cancelled = true;
    pending_cancels_.clear();
    for (auto& q : running_)
      if (q->cancelled) finish(*q, FinishReason::Abort);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if ((*it)->cancelled) {
        finish(**it, FinishReason::Abort);
        deliver_final(**it);  // owns no pages
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    retire();
  }

  // Tree nodes per block (root excluded) for depth k: num_draft_tokens, default k * topk, at most what k
  // steps of top-k expansion can produce.
  int tree_nodes(int k) const {
    int t = opts_.draft_topk, most = t + (k - 1) * t * t;
    int n = opts_.num_draft_tokens > 0 ? opts_.num_draft_tokens - 1 : k * t;
    return std::min(n, most);
  }
  // The step graphs of every batch size, recorded before serving (warm_step_graphs).
  void warm_graphs() {
    const auto t0 = Clock::now();
    const int k = assistant_ ? opts_.num_draft : 0;
    try {
      warm_step_graphs(*tgraphs_, dgraphs_.get(), opts_.max_running, k, opts_.draft_topk > 1, max_block());
    } catch (const Error& e) {
      fail("engine: recording the step graphs for up to {} sequences failed ({}); {}", opts_.max_running,
           e.what(),
           "give the KV cache less memory (--kv-memory / --mem-fraction), lower --max-running, or use "
           "--graphs off");
    }
    info_.graph_count = tgraphs_->graphs() + (dgraphs_ ? dgraphs_->graphs() : 0);
    info_.graph_warmup_s = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  int max_block() const { return 1 + (opts_.draft_topk > 1 ? tree_nodes(opts_.num_draft) : opts_.num_draft); }

  int draft_len(const Req& q) const {
    if (!assistant_ || !q.r.spec.enabled || q.r.spec.max_draft == 0) return 0;
    int k = opts_.num_draft;
    if (q.r.spec.max_draft > 0) k = std::min(k, q.r.spec.max_draft);
    int left_tokens = q.r.sampling.max_tokens - q.emitted;  // tokens still allowed (drafts + next)
    k = std::min(k, left_tokens - 1);
    k = std::min(k, info_.max_model_len - int(q.tokens.size()) - 1);
    return std::max(k, 0);
  }

  // Free pages of the newest running request and send it back to the front of the waiting queue.
  void preempt(Req& q) {
    kv_->release(q.pages);
    q.computed = 0;
    std::lock_guard<std::mutex> lk(stats_mu_);
    stats_.preemptions++;
  }

  void step() {
    apply_cancels();
    // Admit while there is room in the running set.
    while (!waiting_.empty() && int(running_.size()) < opts_.max_running) {
      running_.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
    }
    if (running_.empty()) return;

    // ---- schedule: verify blocks first (they are latency-critical), then prefill chunks ----
    std::vector<Work> work;
    int budget = opts_.max_batch_tokens;
    for (auto& qp : running_) {
      Req& q = *qp;
      if (q.prefilling()) continue;
      int k = draft_len(q);
      if (budget < 1) break;
      int nodes = opts_.draft_topk > 1 && k > 0 ? tree_nodes(k) : k;
      if (1 + nodes > budget) k = nodes = 0;  // no room for drafts this step: plain decode
      Work w;
      w.q = &q;
      w.q_len = 1 + nodes;
      w.k = k;
      w.verify = true;
      work.push_back(std::move(w));
      budget -= 1 + nodes;
    }
    for (auto& qp : running_) {
      Req& q = *qp;
      if (!q.prefilling() || budget <= 0) continue;
      int target_len = int(q.tokens.size()) - (q.emitted > 0 ? 1 : 0);  // recompute after preemption too
      int n = std::min({target_len - q.computed, opts_.prefill_chunk, budget});
      Work w;
      w.q = &q;
      w.q_len = n;
      w.last_chunk = q.computed + n == target_len;
      work.push_back(w);
      budget -= n;
    }
    // ---- reserve KV. A prefill chunk that does not fit waits; a verify block that does not fit preempts the
    // newest other request (recomputed later from its tokens) ----
    for (size_t i = 0; i < work.size();) {
      Req& q = *work[i].q;
      if (kv_->reserve(q.pages, q.computed + work[i].q_len)) {
        i++;
        continue;
      }
      if (!work[i].verify) {
        work.erase(work.begin() + long(i));
        continue;
      }
      Req* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it)
        if (it->get() != &q && !(*it)->pages.full.empty()) {
          victim = it->get();
          break;
        }
      MTP_CHECK(victim, "the KV cache is too small for one request of {} tokens", q.computed + work[i].q_len);
      preempt(*victim);
      for (size_t j = 0; j < work.size(); j++)
        if (work[j].q == victim) {
          work.erase(work.begin() + long(j));
          if (j < i) i--;
          break;
        }
    }
    if (work.empty()) return;

    // ---- draft ----
    draft(work);

    // ---- one target forward over every block and chunk ----
    ForwardBatch fb;
    int out_rows = 0;
    for (Work& w : work) {
      Req& q = *w.q;
      w.row0 = int(fb.tokens.size());
      w.out0 = out_rows;
      if (w.verify) {
        fb.tokens.push_back(q.tokens.back());
        for (int32_t d : w.drafts) fb.tokens.push_back(d);
      } else {
        fb.tokens.insert(fb.tokens.end(), q.tokens.begin() + q.computed,
                         q.tokens.begin() + q.computed + w.q_len);
      }
      if (w.parent.empty()) {
        for (int i = 0; i < w.q_len; i++) fb.positions.push_back(q.computed + i);
      } else {  // tree nodes sit at L + depth
        std::vector<int> depth(w.q_len, 0);
        for (int i = 1; i < w.q_len; i++) depth[i] = depth[w.parent[i - 1]] + 1;
        for (int i = 0; i < w.q_len; i++) fb.positions.push_back(q.computed + depth[i]);
      }
      fb.seqs.push_back({w.q_len, q.computed, &q.pages.full, &q.pages.sliding});
      if (w.verify) {
        for (int i = 0; i < w.q_len; i++) fb.output_rows.push_back(w.row0 + i);
        out_rows += w.q_len;
      } else if (w.last_chunk) {
        fb.output_rows.push_back(w.row0 + w.q_len - 1);
        out_rows += 1;
      }
    }
    build_tree_mask(work, fb);
    const bool graph = tgraphs_ && tgraphs_->fits(fb);
    ForwardOutput o = graph ? tgraphs_->forward(fb) : target_->forward(fb, kv_->storage());
    if (graph) {
      std::lock_guard<std::mutex> lk(stats_mu_);
      stats_.graph_steps++;
    }
    const int V = info_.vocab_size;
    const int64_t H = target_->config().hidden_size;
    // What acceptance needs of each output row, and the logits rows of requests that want log-probs
    // (engine/accept.h): no [R, V] copy otherwise.
    std::vector<BlockRows> blocks;
    std::vector<int> block_of(work.size(), -1);
    for (size_t i = 0; i < work.size(); i++) {
      if (!work[i].verify && !work[i].last_chunk) continue;
      Req& q = *work[i].q;
      block_of[i] = int(blocks.size());
      blocks.push_back({&q.r.sampling, &q.pen, &q.rng, &work[i].drafts, &work[i].parent});
    }
    RowDraws draws;
    std::vector<float> hidden(size_t(out_rows) * H);
    std::vector<std::vector<float>> lp_rows;  // per block: its rows' logits when its request wants log-probs
    if (out_rows > 0) {  // a graph's outputs have the rows of its bucket: the first out_rows are ours
      draws = step_draws(*be_, o.logits.rows(0, out_rows), blocks, lp_rows);
      read_act(hidden.data(), o.hidden.rows(0, out_rows));
    }

    // ---- accept, commit, emit ----
    for (size_t wi = 0; wi < work.size(); wi++) {
      Work& w = work[wi];
      Req& q = *w.q;
      auto lrow = [&](int b) -> const float* {
        const int k = block_of[wi];
        return k < 0 || lp_rows[size_t(k)].empty() ? nullptr : lp_rows[size_t(k)].data() + size_t(b) * V;
      };
      if (!w.verify) {
        q.computed += w.q_len;
        if (!w.last_chunk) continue;
        q.seed_h.assign(hidden.begin() + size_t(w.out0) * H, hidden.begin() + size_t(w.out0 + 1) * H);
        if (q.emitted > 0) continue;  // recomputed after preemption: the next token is already the bonus
        const int32_t t = draws.tok[size_t(w.out0)];
        MTP_CHECK(t >= 0, "sampling: the prompt's last row has no probability mass (non-finite logits?)");
        q.pen.add(t);
        emit(q, {t}, {lrow(0)});
      } else {
        std::vector<int> path;  // block indices of the committed nodes after the root
        int32_t next;
        if (w.parent.empty()) {
          ChainAccept a = accept_chain(draws, w.out0, w.drafts.data(), w.k, q.pen, q.rng);
          for (int i = 1; i <= a.accepted; i++) path.push_back(i);
          next = a.next;
        } else {
          next = accept_tree(draws, w.out0, {w.drafts, w.parent}, q.pen, q.rng, path);
          compact_kv(q, path);
        }
        const int accepted = int(path.size());
        int last = path.empty() ? 0 : path.back();
        q.computed += 1 + accepted;  // the bonus and the accepted drafts now have KV
        q.seed_h.assign(hidden.begin() + size_t(w.out0 + last) * H,
                        hidden.begin() + size_t(w.out0 + last + 1) * H);
        std::vector<int32_t> toks;
        std::vector<const float*> lrows{lrow(0)};
        for (int b : path) toks.push_back(w.drafts[b - 1]), lrows.push_back(lrow(b));
        toks.push_back(next);
        q.drafted += int(w.drafts.size());
        q.accepted += accepted;
        q.verifies++;
        {
          std::lock_guard<std::mutex> lk(stats_mu_);
          stats_.drafted_tokens += int64_t(w.drafts.size());
          stats_.accepted_tokens += accepted;
          if (stats_.drafted_at.size() < size_t(w.k))
            stats_.drafted_at.resize(w.k), stats_.accepted_at.resize(w.k);
          for (int d = 0; d < w.k; d++) stats_.drafted_at[d]++;
          for (int d = 0; d < accepted; d++) stats_.accepted_at[d]++;
          stats_.verify_steps++;
        }
        emit(q, toks, lrows);
      }
      // Sliding pages no future query (target or assistant) can see any more.
      kv_->trim_sliding(q.pages, q.computed - target_->config().sliding_window);
    }
    retire();
  }

  // Draft w.k tokens for every verify block, batched across requests (rows drop out as their k is reached).
  void draft(std::vector<Work>& work) {
    if (opts_.draft_topk > 1) return draft_trees(work);
    std::vector<Work*> rows;
    int kmax = 0;
    for (Work& w : work)
      if (w.verify && w.k > 0) rows.push_back(&w), kmax = std::max(kmax, w.k);
    if (rows.empty()) return;
    const int64_t Hb = target_->config().hidden_size;
    std::vector<float> h(rows.size() * Hb);
    for (size_t i = 0; i < rows.size(); i++)
      std::copy(rows[i]->q->seed_h.begin(), rows[i]->q->seed_h.end(), h.begin() + i * Hb);
    std::vector<int32_t> tok;
    for (Work* w : rows) tok.push_back(w->q->tokens.back());
    if (dgraphs_) {  // the whole loop in one graph; rows with a smaller k ignore the extra drafts
      DraftRows dr;
      dr.tokens = tok;
      for (Work* w : rows) dr.seqs.push_back({1, w->q->computed, &w->q->pages.full, &w->q->pages.sliding});
      if (dgraphs_->fits(dr)) {
        std::vector<int32_t> d = dgraphs_->draft(dr, upload_act(h, {int64_t(rows.size()), Hb}), kmax);
        {
          std::lock_guard<std::mutex> lk(stats_mu_);
          stats_.graph_draft_loops++;
        }
        for (size_t i = 0; i < rows.size(); i++)
          for (int s = 0; s < rows[i]->k; s++) rows[i]->drafts.push_back(d[s * rows.size() + i]);
        return;
      }
    }
    for (int s = 0; s < kmax; s++) {
      // Rows still drafting at this step.
      std::vector<size_t> live;
      for (size_t i = 0; i < rows.size(); i++)
        if (rows[i]->k > s) live.push_back(i);
      DraftRows dr;
      std::vector<float> hl(live.size() * Hb);
      for (size_t j = 0; j < live.size(); j++) {
        Req& q = *rows[live[j]]->q;
        dr.tokens.push_back(tok[live[j]]);
        dr.seqs.push_back({1, q.computed, &q.pages.full, &q.pages.sliding});
        std::copy(h.begin() + live[j] * Hb, h.begin() + (live[j] + 1) * Hb, hl.begin() + j * Hb);
      }
      Tensor ht = upload_act(hl, {int64_t(live.size()), Hb});
      DraftStepOutput o = assistant_->step(dr, ht, kv_->storage());
      std::vector<float> hn(live.size() * Hb);
      read_act(hn.data(), o.hidden);
      std::vector<int32_t> next = assistant_->greedy_tokens(o);
      for (size_t j = 0; j < live.size(); j++) {
        rows[live[j]]->drafts.push_back(next[j]);
        tok[live[j]] = next[j];
        std::copy(hn.begin() + j * Hb, hn.begin() + (j + 1) * Hb, h.begin() + live[j] * Hb);
      }
    }
  }

  // ---- tree drafting (draft_topk > 1), mtp-algorithm.md §2.4 ----
  // Per request: step 0 expands the seed into the top-k tokens; each later step runs the assistant on the k
  // frontier nodes (each with its parent's recurrent state) and keeps the k best of their k*k children by
  // cumulative log-probability. The block takes the best `tree_nodes(k)` of all expanded nodes (a child
  // never scores above its parent, so the set is ancestor-closed), ordered by depth.

  void draft_trees(std::vector<Work>& work) {
    const int T = opts_.draft_topk;
    const int64_t Hb = target_->config().hidden_size;
    for (Work& w : work) {  // one request at a time: its frontier rows share one KV view
      if (!w.verify || w.k == 0) continue;
      Req& q = *w.q;
      std::vector<DraftNode> nodes;
      std::vector<float> hs(q.seed_h);  // row 0: the seed state
      std::vector<int> frontier;        // node indices
      std::vector<int32_t> in_tok{q.tokens.back()};
      std::vector<int> in_hrow{0};
      for (int s = 0; s < w.k; s++) {
        int B = int(in_tok.size());
        DraftRows dr;
        dr.tokens = in_tok;
        dr.seqs.push_back({B, q.computed, &q.pages.full, &q.pages.sliding});
        std::vector<float> h(size_t(B) * Hb);
        for (int b = 0; b < B; b++)
          std::copy_n(hs.begin() + size_t(in_hrow[b]) * Hb, Hb, h.begin() + size_t(b) * Hb);
        DraftStepOutput o = assistant_->step(dr, upload_act(h, {B, Hb}), kv_->storage());
        std::vector<float> hn(size_t(B) * Hb);
        read_act(hn.data(), o.hidden);
        int base_row = int(hs.size() / Hb);
        hs.insert(hs.end(), hn.begin(), hn.end());
        auto kids = top_children(*be_, o, B, T);
        // Expand every input row; children of row b continue from row b's new state.
        std::vector<int> cand;
        for (int b = 0; b < B; b++) {
          int par = s == 0 ? -1 : frontier[b];
          float ps = s == 0 ? 0.0f : nodes[par].score;
          for (auto& [tok, lp] : kids[b]) {
            nodes.push_back({tok, par, s + 1, ps + lp, base_row + b});
            cand.push_back(int(nodes.size()) - 1);
          }
        }
        // The next frontier: the T best children of this step.
        std::stable_sort(cand.begin(), cand.end(),
                         [&](int x, int y) { return nodes[x].score > nodes[y].score; });
        if (int(cand.size()) > T) cand.resize(T);
        frontier = cand;
        in_tok.clear();
        in_hrow.clear();
        for (int n : frontier) in_tok.push_back(nodes[n].token), in_hrow.push_back(nodes[n].hrow);
      }
      TreeBlock t = select_tree(nodes, w.q_len - 1);
      w.drafts = t.tokens;
      w.parent = t.parent;
      w.q_len = 1 + int(t.tokens.size());
    }
  }

  // Batch-wide mask when any block is a tree: a tree node sees the root, its ancestors and itself; every
  // other row is causal within its sequence's block.
  void build_tree_mask(const std::vector<Work>& work, ForwardBatch& fb) {
    bool any = false;
    for (const Work& w : work) any |= !w.parent.empty();
    if (!any) return;
    int max_q = 0;
    for (const Work& w : work) max_q = std::max(max_q, w.q_len);
    fb.tree_max_q = max_q;
    fb.tree_mask.assign(fb.tokens.size() * size_t(max_q), 0);
    for (const Work& w : work) {
      for (int i = 0; i < w.q_len; i++) {
        uint8_t* row = fb.tree_mask.data() + size_t(w.row0 + i) * max_q;
        if (w.parent.empty()) {
          for (int j = 0; j <= i; j++) row[j] = 1;
        } else {
          for (int a = i; a > 0; a = w.parent[a - 1]) row[a] = 1;
          row[0] = 1;
        }
      }
    }
  }

  // Move the KV of the accepted path (block indices `path`) to the slots right after the root.
  void compact_kv(Req& q, const std::vector<int>& path) {
    const TextConfig& c = target_->config();
    KvStorage& kv = kv_->storage();
    int L = q.computed;  // the root sits at slot L
    for (size_t i = 0; i < path.size(); i++) {
      int dst = L + 1 + int(i), src = L + path[i];
      if (dst == src) continue;
      for (int l = 0; l < c.num_hidden_layers; l++) {
        if (!c.layers[l].stores_kv) continue;
        const auto& pages = c.layers[l].type == LayerType::Full ? q.pages.full : q.pages.sliding;
        int64_t ps = int64_t(pages[src / kPageSize]) * kPageSize + src % kPageSize;
        int64_t pd = int64_t(pages[dst / kPageSize]) * kPageSize + dst % kPageSize;
        be_->copy(kv.k[l].rows(pd, pd + 1), kv.k[l].rows(ps, ps + 1));
        be_->copy(kv.v[l].rows(pd, pd + 1), kv.v[l].rows(ps, ps + 1));
      }
    }
  }

  // Activations <-> host fp32.
  void read_act(float* dst, const Tensor& t) {
    if (t.dtype == DType::F32) {
      be_->copy_to_host(dst, t);
      return;
    }
    Tensor f = be_->alloc(DType::F32, {t.numel()});
    be_->to_f32(f, t);
    be_->copy_to_host(dst, f);
  }
  Tensor upload_act(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
    Tensor t = be_->alloc(be_->act_dtype(), shape);
    if (t.dtype == DType::F32) {
      be_->copy_from_host(t, v.data());
    } else {
      std::vector<uint16_t> b(v.size());
      for (size_t i = 0; i < v.size(); i++) b[i] = f32_to_bf16(v[i]);
      be_->copy_from_host(t, b.data());
    }
    return t;
  }

  // Deliver tokens committed for q in this step; stop at EOS / stop ids / max_tokens / context limit.
  void emit(Req& q, std::vector<int32_t> toks, const std::vector<const float*>& rows) {
    const auto& sp = q.r.sampling;
    RequestOutput out;
    out.id = q.r.id;
    FinishReason fin = FinishReason::None;
    for (size_t i = 0; i < toks.size(); i++) {
      int32_t t = toks[i];
      q.tokens.push_back(t);
      q.emitted++;
      out.tokens.push_back(t);
      if (sp.want_logprobs)
        out.logprobs.push_back(token_logprob(rows[i], info_.vocab_size, t, sp.top_logprobs));
      bool eos = !sp.ignore_eos && std::find(info_.eos_token_ids.begin(), info_.eos_token_ids.end(), t) !=
                                       info_.eos_token_ids.end();
      bool stop_id =
          std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), t) != sp.stop_token_ids.end();
      if (eos || stop_id) {
        fin = FinishReason::Stop;
        break;
      }
      if (q.emitted >= sp.max_tokens || int(q.tokens.size()) >= info_.max_model_len) {
        fin = FinishReason::Length;
        break;
      }
    }
    if (q.ttft < 0) q.ttft = std::chrono::duration<double>(Clock::now() - q.arrival).count();
    fill_totals(q, out);
    out.finish = fin;
    {
      std::lock_guard<std::mutex> lk(stats_mu_);
      stats_.generation_tokens += int64_t(out.tokens.size());
    }
    if (fin != FinishReason::None) {
      q.cancelled = true;  // retire() frees the pages, then delivers this final output
      q.final_out = out;
    } else {
      deliver(q, out);
    }
  }

  void deliver_final(Req& q) {
    if (q.final_out) deliver(q, *q.final_out);
    q.final_out.reset();
    q.cb = nullptr;
  }

  void fill_totals(const Req& q, RequestOutput& out) const {
    out.prompt_tokens = q.prompt_len;
    out.completion_tokens = q.emitted;
    out.drafted_tokens = q.drafted;
    out.accepted_tokens = q.accepted;
    out.verify_steps = q.verifies;
    out.ttft_s = std::max(q.ttft, 0.0);
  }

  void deliver(Req& q, const RequestOutput& out) {
    if (!q.cb) return;
    try {
      q.cb(out);
    } catch (...) {
      // A client callback failing must not take the engine down; the request is aborted.
      q.cancelled = true;
      q.cb = nullptr;
    }
  }

  // End q with `why` (unless it already has a final output); delivered by retire() / deliver_final().
  void finish(Req& q, FinishReason why, const std::string& err = "") {
    q.cancelled = true;
    if (!q.cb || q.final_out) return;
    RequestOutput out;
    out.id = q.r.id;
    out.finish = why;
    out.error = err;
    fill_totals(q, out);
    q.final_out = out;
  }

  // Remove cancelled/finished requests from the running set, free their pages, publish the stats, and only
  // then deliver their final outputs: a client that sees its request end also sees its pages free.
  void retire() {
    std::vector<std::unique_ptr<Req>> done;
    for (auto it = running_.begin(); it != running_.end();) {
      if ((*it)->cancelled) {
        kv_->release((*it)->pages);
        {
          std::lock_guard<std::mutex> lk(stats_mu_);
          stats_.requests_finished++;
          stats_.prompt_tokens += (*it)->prompt_len;
        }
        done.push_back(std::move(*it));
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    // Preempted requests (no pages, not prefilled) go back to the front of the waiting queue.
    for (auto it = running_.begin(); it != running_.end();) {
      if ((*it)->pages.full.empty() && (*it)->computed == 0 && (*it)->emitted > 0) {
        waiting_.push_front(std::move(*it));
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    if (opts_.check_invariants) check_invariants();
    if (done.empty()) return;
    publish_stats();
    for (auto& q : done) deliver_final(*q);
  }

  // Pool invariant: pages in use == pages owned by live requests, each owned once.
  void check_invariants() {
    std::set<int> full, slide;
    auto own = [&](const Req& q) {
      for (int p : q.pages.full) MTP_ASSERT(full.insert(p).second && kv_->full_pool().is_used(p));
      for (int p : q.pages.sliding)
        if (p >= 0) MTP_ASSERT(slide.insert(p).second && kv_->sliding_pool().is_used(p));
    };
    for (auto& q : running_) own(*q);
    for (auto& q : waiting_) own(*q);
    MTP_ASSERT(int(full.size()) == kv_->full_pool().capacity() - kv_->full_pool().free_count());
    MTP_ASSERT(int(slide.size()) == kv_->sliding_pool().capacity() - kv_->sliding_pool().free_count());
  }

  void publish_stats() {
    std::lock_guard<std::mutex> lk(stats_mu_);
    stats_.running = int(running_.size());
    {
      std::lock_guard<std::mutex> lk2(mu_);
      stats_.waiting = int(waiting_.size() + inbox_.size());
    }
    stats_.full_pages_total = kv_->full_pool().capacity();
    stats_.full_pages_used = stats_.full_pages_total - kv_->full_pool().free_count();
    stats_.sliding_pages_total = kv_->sliding_pool().capacity();
    stats_.sliding_pages_used = stats_.sliding_pages_total - kv_->sliding_pool().free_count();
  }

  EngineOptions opts_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Gemma4Model> target_;
  std::unique_ptr<Gemma4Assistant> assistant_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<TargetGraphs> tgraphs_;  // set when graphs are on
  std::unique_ptr<DraftGraphs> dgraphs_;
  ModelInfo info_;

  mutable std::mutex mu_;  // inbox_, cancels_, stopping_, (waiting_ size for stats)
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Req>> inbox_;
  std::set<std::string> cancels_;
  bool stopping_ = false;

  // Engine-thread state.
  std::deque<std::unique_ptr<Req>> waiting_;
  std::vector<std::unique_ptr<Req>> running_;
  std::set<std::string> pending_cancels_;

  mutable std::mutex stats_mu_;
  EngineStats stats_;
  std::thread worker_;
};

}  // namespace

std::unique_ptr<Engine> Engine::create(const EngineOptions& opts) {
  return std::make_unique<EngineImpl>(opts);
}

}  // namespace mtpserve
