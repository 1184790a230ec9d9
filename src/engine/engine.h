// The serving engine: a background loop that schedules all live requests into steps (prefill chunks and
// speculative verify blocks under a token budget), runs them on the device and delivers outputs through each
// request's callback. Thread-safe: submit/cancel may be called from any thread; callbacks run on the engine
// thread and must not block.
#pragma once
#include <atomic>
#include <memory>
#include <string>

#include "engine/request.h"

namespace mtpserve {

struct EngineOptions {
  std::string model_dir;
  std::string assistant_dir;     // empty: no speculation
  std::string backend = "auto";  // auto | cpu | cuda
  // auto: the checkpoints' weights; dummy: seeded random weights (the directories need only config.json)
  std::string load_format = "auto";
  int max_running = 64;         // concurrent requests in the running set
  int max_waiting = 256;        // bounded waiting queue (submit fails beyond it)
  int max_batch_tokens = 2048;  // token budget of one step
  int prefill_chunk = 512;
  int64_t kv_memory_bytes = 0;    // 0: mem_fraction of the free device memory, or 512 MiB without it
  double mem_fraction = 0.0;      // (0, 1]: of the memory free after the weights are loaded
  int num_draft = 3;              // draft steps per verify (chain)
  int draft_topk = 1;             // >1: tree drafting
  int num_draft_tokens = 0;       // tree nodes (0: derived)
  int query_pos_offset = 1;       // assistant query position: committed_len - 1 + offset
  int max_model_len = 0;          // 0: the model's max_position_embeddings (capped by KV capacity)
  bool check_invariants = false;  // run the KV pool checker after every step (tests)
  bool warm_graphs = true;        // with graphs: record every batch bucket's graphs at startup
  // Decode/verify steps and the chain draft loop through recorded graphs: "auto" where the backend has
  // device graphs (CUDA), "on" everywhere (the CPU replays the recorded code: for tests), "off".
  std::string graphs = "auto";
};

struct EngineStats {
  int running = 0, waiting = 0;
  int full_pages_used = 0, full_pages_total = 0, sliding_pages_used = 0, sliding_pages_total = 0;
  int64_t prompt_tokens = 0, generation_tokens = 0;
  int64_t drafted_tokens = 0, accepted_tokens = 0, verify_steps = 0;
  int64_t requests_finished = 0, preemptions = 0;
  int64_t graph_steps = 0, graph_draft_loops = 0;  // target forwards and draft loops replayed from graphs
  // Per draft depth d (0 = first draft token): verify blocks that proposed a token at depth d, and those in
  // which it was accepted. accepted_at[d] / drafted_at[d] is the per-position acceptance.
  std::vector<int64_t> drafted_at, accepted_at;
};

struct ModelInfo {
  std::string model_dir, assistant_dir, backend;
  int vocab_size = 0, max_model_len = 0;
  int64_t kv_capacity_tokens = 0;
  int64_t kv_memory_bytes = 0;  // the KV budget the pools were sized from
  std::vector<int32_t> eos_token_ids;
  int bos_token_id = 2;
  bool graphs = false;  // decode/verify steps (and the draft loop) replay recorded graphs
  int graph_count = 0;  // graphs recorded at startup (EngineOptions::warm_graphs)
  double graph_warmup_s = 0;
};

class Engine {
 public:
  static std::unique_ptr<Engine> create(const EngineOptions& opts);  // loads models; throws Error
  virtual ~Engine() = default;

  virtual const ModelInfo& info() const = 0;
  // Queue a request. Returns false (and calls nothing) when the waiting queue is full. Validation errors
  // (empty prompt, prompt longer than the context, bad token ids) throw Error before anything is queued.
  virtual bool submit(GenerationRequest req, OutputCallback cb) = 0;
  // Abort a request: its pages are freed at the next step boundary and it gets a final Abort output.
  virtual void cancel(const std::string& id) = 0;
  virtual EngineStats stats() const = 0;
  virtual void shutdown() = 0;  // aborts everything, joins the loop
};

}  // namespace mtpserve
