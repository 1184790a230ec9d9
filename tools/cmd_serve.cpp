// `mtpserve serve`: the OpenAI-compatible HTTP server on the serving engine.
#include <fmt/format.h>
#include <semaphore.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "server/http_server.h"

#ifndef MTP_SOURCE_DIR
#define MTP_SOURCE_DIR ""
#endif

namespace mtpserve::cli {
namespace fs = std::filesystem;

namespace {

sem_t g_stop_sem;
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_stop_signal(int s) {
  g_signal = s;
  sem_post(&g_stop_sem);  // async-signal-safe
}

struct ServeOpts {
  std::string model, assistant, backend = "auto", kv_memory, load_format = "auto", tokenizer, graphs = "auto";
  bool no_spec = false, check_invariants = false;
  double mem_fraction = 0.0;
  int max_running = 64, max_waiting = 256, max_batch_tokens = 2048, prefill_chunk = 512;
  int num_draft = 3, draft_topk = 1, query_pos_offset = 1, max_model_len = 0, http_threads = 0;
  int64_t max_body_mb = 8;
  ServerOptions server;
};

// A bundled model: ./models/<name>, <exe dir>/../models/<name>, then the source tree this binary was built
// from.
std::string bundled(const std::string& name) {
  std::vector<fs::path> candidates = {fs::path("models") / name};
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back(exe.parent_path() / ".." / "models" / name);
  if (std::string(MTP_SOURCE_DIR).size()) candidates.push_back(fs::path(MTP_SOURCE_DIR) / "models" / name);
  for (const auto& p : candidates)
    if (fs::exists(p / "config.json", ec)) return fs::weakly_canonical(p, ec).string();
  return (fs::path("models") / name).string();  // the error then names the expected place
}

// "512M", "2G", "1.5GiB", "1048576" -> bytes.
int64_t parse_bytes(const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    used = 0;
  }
  std::string unit = s.substr(used);
  for (auto& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  if (unit.size() > 1 && unit.back() == 'B') unit.pop_back();
  if (unit.size() > 1 && unit.back() == 'I') unit.pop_back();
  double mul = unit.empty()  ? 1
               : unit == "K" ? 1024.0
               : unit == "M" ? 1048576.0
               : unit == "G" ? 1073741824.0
                             : -1;
  MTP_CHECK(used > 0 && mul > 0 && v > 0 && std::isfinite(v),
            "--kv-memory: '{}' is not a size (examples: 512M, 2G, 1073741824)", s);
  return int64_t(v * mul);
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* c =
      app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat/completions, streaming, metrics)");
  auto o = std::make_shared<ServeOpts>();
  c->add_option("--model", o->model,
                "target model directory (default: the bundled models/tiny-gemma4, looked up in ./models, "
                "<exe dir>/../models, then the source tree)");
  auto* asst =
      c->add_option("--assistant", o->assistant,
                    "MTP assistant (drafter) directory (default: the bundled models/tiny-gemma4-assistant "
                    "when serving the bundled target)");
  c->add_flag("--no-spec", o->no_spec, "serve without speculative decoding (no assistant)")->excludes(asst);
  c->add_option("--backend", o->backend, "compute backend")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  c->add_option(
       "--load-format", o->load_format,
       "weights: auto (the checkpoints') or dummy (seeded random, shapes from config.json: --model and "
       "--assistant may hold only config.json; needs a tokenizer, see --tokenizer)")
      ->check(CLI::IsMember({"auto", "dummy"}));
  c->add_option(
      "--tokenizer", o->tokenizer,
      "directory with tokenizer.json (and chat_template.jinja) when --model has none (default: --model)");
  c->add_option("--host", o->server.host, "address to bind (default 127.0.0.1: local clients only)");
  c->add_option("--port", o->server.port, "TCP port (0: any free port; the bound one is printed)")
      ->check(CLI::Range(0, 65535));
  c->add_option("--api-key", o->server.api_key, "require 'Authorization: Bearer <key>' on /v1/* routes");
  c->add_option("--served-model-name", o->server.served_model_name,
                "model name in the API (default: the model directory's name)");
  c->add_option("--max-running", o->max_running, "requests in the running set at most")
      ->check(CLI::PositiveNumber);
  c->add_option("--max-waiting", o->max_waiting,
                "waiting-queue bound; beyond it requests get 503 + Retry-After")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--max-batch-tokens", o->max_batch_tokens, "token budget of one engine step")
      ->check(CLI::PositiveNumber);
  c->add_option("--prefill-chunk", o->prefill_chunk, "prefill chunk size in tokens")
      ->check(CLI::PositiveNumber);
  auto* kvm =
      c->add_option("--kv-memory", o->kv_memory, "KV cache memory, e.g. 512M or 2G (default: derived)");
  c->add_option("--mem-fraction", o->mem_fraction,
                "fraction of the device memory free after loading the weights to give the KV cache (CUDA: "
                "leave room for activations and recorded graphs, e.g. 0.8)")
      ->check(CLI::Range(0.0, 1.0))
      ->excludes(kvm);
  c->add_option("--num-draft", o->num_draft, "MTP draft tokens per verify step")->check(CLI::Range(0, 16));
  c->add_option(
       "--graphs", o->graphs,
       "decode/verify steps and the draft loop from recorded graphs, recorded for every batch size up to "
       "--max-running at startup: auto (where the backend has device graphs: CUDA), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  c->add_option("--draft-topk", o->draft_topk, "draft candidates per position (>1: tree drafting)")
      ->check(CLI::PositiveNumber);
  c->add_option("--query-pos-offset", o->query_pos_offset,
                "assistant query position offset (committed_len - 1 + offset; the bundled pair uses 1)");
  c->add_option("--max-model-len", o->max_model_len, "context limit in tokens (0: the model's, capped by KV)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--max-body-mb", o->max_body_mb, "request body size limit in MiB (larger: 413)")
      ->check(CLI::Range(1, 1024));
  c->add_option(
       "--http-threads", o->http_threads,
       "HTTP worker threads, one per open connection (0: max-running + max-waiting + 32, at most 1024)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("--check-invariants", o->check_invariants,
              "check the KV pools after every engine step (tests)");
  c->add_flag(
      "--no-request-log", [o](int64_t) { o->server.log_requests = false; },
      "do not log one line per finished request");
  c->callback([o] {
    EngineOptions e;
    bool bundled_target = o->model.empty();
    e.model_dir = bundled_target ? bundled("tiny-gemma4") : o->model;
    if (!o->no_spec)
      e.assistant_dir =
          o->assistant.empty() && bundled_target ? bundled("tiny-gemma4-assistant") : o->assistant;
    e.backend = o->backend;
    e.load_format = o->load_format;
    e.max_running = o->max_running;
    e.max_waiting = o->max_waiting;
    e.max_batch_tokens = o->max_batch_tokens;
    e.prefill_chunk = o->prefill_chunk;
    if (!o->kv_memory.empty()) e.kv_memory_bytes = parse_bytes(o->kv_memory);
    e.mem_fraction = o->mem_fraction;
    e.num_draft = o->num_draft;
    e.graphs = o->graphs;
    e.draft_topk = o->draft_topk;
    e.query_pos_offset = o->query_pos_offset;
    e.max_model_len = o->max_model_len;
    e.check_invariants = o->check_invariants;
    ServerOptions so = o->server;
    so.tokenizer_dir = o->tokenizer;
    // Fail before a long model load when the server would have no tokenizer.
    const std::string tok_dir = o->tokenizer.empty() ? e.model_dir : o->tokenizer;
    MTP_CHECK(fs::exists(fs::path(tok_dir) / "tokenizer.json"),
              "{}/tokenizer.json is missing: the server needs the model's tokenizer{}", tok_dir,
              o->tokenizer.empty()
                  ? " (a config-only --model, as with --load-format dummy, needs --tokenizer DIR)"
                  : "");
    so.max_body_bytes = size_t(o->max_body_mb) << 20;
    so.http_threads =
        o->http_threads > 0 ? o->http_threads : std::min(1024, o->max_running + o->max_waiting + 32);

    // Signals: SIGPIPE off (a vanished client is a failed write). SIGINT/SIGTERM: the handler (in whichever
    // thread gets it; OpenBLAS starts threads before main) posts a semaphore that a watcher thread waits on.
    std::signal(SIGPIPE, SIG_IGN);
    sem_init(&g_stop_sem, 0, 0);
    struct sigaction sa = {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    auto t0 = std::chrono::steady_clock::now();
    auto engine = Engine::create(e);
    HttpServer server(*engine, so);
    const auto& info = engine->info();
    double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print(stderr, "mtpserve serve: model {} ({}), loaded in {:.2f} s\n", server.model_name(),
               info.model_dir, load_s);
    fmt::print(stderr, "  backend {}, vocab {}, context {} tokens, KV capacity {} tokens ({:.1f} MiB)\n",
               info.backend, info.vocab_size, info.max_model_len, info.kv_capacity_tokens,
               double(info.kv_memory_bytes) / (1 << 20));
    if (info.graphs)
      fmt::print(stderr, "  graphs: {} recorded at startup in {:.2f} s\n", info.graph_count,
                 info.graph_warmup_s);
    if (info.assistant_dir.empty())
      fmt::print(stderr, "  speculation: off\n");
    else
      fmt::print(stderr, "  speculation: MTP assistant {}, {} draft tokens, top-k {}, query offset {}\n",
                 info.assistant_dir, e.num_draft, e.draft_topk, e.query_pos_offset);
    fmt::print(stderr,
               "  scheduling: max running {}, max waiting {}, batch tokens {}, prefill chunk {}, graphs {}\n",
               e.max_running, e.max_waiting, e.max_batch_tokens, e.prefill_chunk, info.graphs ? "on" : "off");
    if (!so.api_key.empty()) fmt::print(stderr, "  auth: bearer API key required on /v1/*\n");

    // A signal can arrive before the server listens, when stop() has nothing to stop yet: keep stopping it
    // until run() has returned.
    auto running = std::make_shared<std::atomic<bool>>(true);
    std::thread watcher([&server, running] {
      while (sem_wait(&g_stop_sem) != 0) {
      }
      if (!running->load()) return;
      fmt::print(stderr, "mtpserve serve: signal {}, shutting down\n", int(g_signal));
      while (running->load()) {
        server.stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    server.run([&](int port) {
      std::string host = so.host.find(':') != std::string::npos ? "[" + so.host + "]" : so.host;
      fmt::print(stderr, "listening on http://{}:{}\n", host, port);
      std::fflush(stderr);
    });
    running->store(false);
    sem_post(&g_stop_sem);  // wakes the watcher if no signal did
    watcher.join();
    engine->shutdown();
    fmt::print(stderr, "mtpserve serve: stopped\n");
  });
}

}  // namespace mtpserve::cli
