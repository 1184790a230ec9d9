// `mtpserve bench-spec`: speculative decoding on held-out prompts through the engine, as a table of
// acceptance length and throughput per draft length and query-position convention.
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_util.h"
#include "commands.h"
#include "engine/engine.h"

namespace mtpserve::cli {

namespace {
struct Result {
  double al = 0, tok_s = 0, accept_rate = 0;
  int rounds = 0, tokens = 0;
  std::vector<double> alpha;  // per-depth conditional acceptance
};

Result run_once(const EngineOptions& o, const std::vector<std::vector<int32_t>>& prompts, int max_tokens) {
  auto e = Engine::create(o);
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  int64_t drafted = 0, accepted = 0, verifies = 0, emitted = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < prompts.size(); i++) {
    GenerationRequest r;
    r.id = std::to_string(i);
    r.prompt = prompts[i];
    r.sampling.temperature = 0;
    r.sampling.max_tokens = max_tokens;
    while (!e->submit(r, [&](const RequestOutput& out) {
      if (out.finish == FinishReason::None) return;
      std::lock_guard<std::mutex> lk(mu);
      drafted += out.drafted_tokens, accepted += out.accepted_tokens, verifies += out.verify_steps;
      emitted += out.completion_tokens;
      done++;
      cv.notify_all();
    }))
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [&] { return done == prompts.size(); });
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Result r;
  r.rounds = int(verifies);
  r.tokens = int(emitted);
  r.al =
      verifies ? double(emitted - int64_t(prompts.size())) / double(verifies) : 1.0;  // first token: prefill
  r.accept_rate = drafted ? double(accepted) / double(drafted) : 0;
  r.tok_s = double(emitted) / s;
  EngineStats st = e->stats();
  for (size_t d = 0; d < st.drafted_at.size(); d++) {
    int64_t reached = d == 0 ? st.drafted_at[0] : st.accepted_at[d - 1];  // blocks whose depth d was in play
    r.alpha.push_back(reached ? double(st.accepted_at[d]) / double(std::min(reached, st.drafted_at[d])) : 0);
  }
  return r;
}
}  // namespace

void add_bench_spec_command(CLI::App& app) {
  auto* c =
      app.add_subcommand("bench-spec", "measure MTP acceptance length and throughput on held-out prompts");
  auto model = std::make_shared<std::string>("models/tiny-gemma4");
  auto assistant = std::make_shared<std::string>("models/tiny-gemma4-assistant");
  auto prompts_file = std::make_shared<std::string>();
  auto set = std::make_shared<std::string>("chat");
  auto ks = std::make_shared<std::string>("1,2,3,4,6");
  auto offsets = std::make_shared<std::string>("1,0");
  auto max_tokens = std::make_shared<int>(128);
  auto limit = std::make_shared<int>(100);
  auto backend = std::make_shared<std::string>("auto");
  auto load_format = std::make_shared<std::string>("auto");
  c->add_option("--model", *model, "target model directory");
  c->add_option("--assistant", *assistant, "assistant model directory");
  c->add_option("--prompts", *prompts_file,
                "acceptance_golden.json (its prompt_sets) or JSON lines with an \"ids\" list; default: the "
                "assistant's acceptance_golden.json");
  c->add_option("--set", *set, "prompt set inside acceptance_golden.json (chat, text, think)");
  c->add_option("--k", *ks, "draft lengths to measure, comma-separated (0 = no speculation)");
  c->add_option("--offsets", *offsets, "query position offsets to measure (0: SGLang/vLLM, 1: HF)");
  c->add_option("--max-tokens", *max_tokens, "tokens generated per prompt")->check(CLI::PositiveNumber);
  c->add_option("--limit", *limit, "use at most this many prompts")->check(CLI::PositiveNumber);
  c->add_option("--backend", *backend, "auto, cpu or cuda");
  c->add_option(
       "--load-format", *load_format,
       "weights: auto (the checkpoints') or dummy (seeded random, shapes from config.json; acceptance "
       "is then meaningless, throughput is not)")
      ->check(CLI::IsMember({"auto", "dummy"}));
  c->callback([=] {
    std::string pf = prompts_file->empty() ? *assistant + "/acceptance_golden.json" : *prompts_file;
    std::ifstream f(pf);
    MTP_CHECK(f.good(), "--prompts: cannot read '{}'{}", pf,
              prompts_file->empty() ? " (the assistant's default prompts; pass --prompts FILE)" : "");
    std::vector<std::vector<int32_t>> prompts;
    if (pf.size() > 5 && pf.substr(pf.size() - 5) == ".json") {
      std::stringstream ss;
      ss << f.rdbuf();
      auto g = nlohmann::json::parse(ss.str());
      MTP_CHECK(g.contains("prompt_sets") && g["prompt_sets"].contains(*set), "{}: no prompt set '{}'", pf,
                *set);
      for (auto& p : g["prompt_sets"][*set]) prompts.push_back(p["ids"].get<std::vector<int32_t>>());
    } else {
      for (std::string line; std::getline(f, line);)
        if (!line.empty()) prompts.push_back(nlohmann::json::parse(line)["ids"].get<std::vector<int32_t>>());
    }
    if (int(prompts.size()) > *limit) prompts.resize(*limit);
    fmt::print("{} prompts from {} ({}), {} tokens each\n", prompts.size(), pf, *set, *max_tokens);
    fmt::print("{:>6} {:>3} | {:>8} {:>8} {:>8} {:>9} | per-depth acceptance\n", "offset", "K", "AL",
               "accept", "rounds", "tok/s");
    for (int32_t off : parse_token_list(*offsets, "--offsets")) {
      for (int32_t k : parse_token_list(*ks, "--k")) {
        EngineOptions o;
        o.model_dir = *model;
        o.assistant_dir = k > 0 ? *assistant : "";
        o.backend = *backend;
        o.load_format = *load_format;
        o.num_draft = k;
        o.query_pos_offset = off;
        o.max_running = 32;
        Result r = run_once(o, prompts, *max_tokens);
        std::string alpha;
        for (double a : r.alpha) alpha += fmt::format(" {:.3f}", a);
        fmt::print("{:>6} {:>3} | {:>8.3f} {:>8.3f} {:>8} {:>9.1f} |{}\n", off, k, r.al, r.accept_rate,
                   r.rounds, r.tok_s, alpha);
        std::fflush(stdout);
      }
    }
  });
}

}  // namespace mtpserve::cli
