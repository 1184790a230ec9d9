// `mtpserve logits` and `mtpserve generate`: run the target on token ids (parity checks, smoke tests).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli_util.h"
#include "commands.h"
#include "engine/generate.h"
#include "model/loader.h"
#include "server/tokenizer.h"

namespace mtpserve::cli {
namespace {

struct ModelOpts {
  std::string model_dir;
  std::string load_format = "auto";
  std::string tokens;
  int chunk = 512;
  int kv_pages = 0;  // 0: enough for the request
};

std::unique_ptr<Gemma4Model> load_model(const ModelOpts& o, Backend& be) {
  LoadOptions lo;
  lo.format = o.load_format;
  lo.verbose = o.load_format == "dummy";
  return load_target(o.model_dir, be, lo);
}

void add_model_opts(CLI::App* c, ModelOpts& o) {
  c->add_option("--model", o.model_dir,
                "model directory (config.json + safetensors; config.json alone with --load-format dummy)")
      ->required();
  c->add_option("--load-format", o.load_format,
                "weights: auto (the checkpoint's) or dummy (seeded random, shapes from config.json)")
      ->check(CLI::IsMember({"auto", "dummy"}));
  c->add_option("--chunk", o.chunk, "prefill chunk size in tokens")->check(CLI::PositiveNumber);
  c->add_option("--kv-pages", o.kv_pages, "KV pages (16 tokens each) per pool; 0 = sized for the request")
      ->check(CLI::NonNegativeNumber);
}

}  // namespace

void add_logits_command(CLI::App& app) {
  auto* c = app.add_subcommand("logits", "print or dump the target's logits for given token ids");
  auto o = std::make_shared<ModelOpts>();
  auto dump = std::make_shared<std::string>();
  auto top = std::make_shared<int>(5);
  add_model_opts(c, *o);
  c->add_option("--tokens", o->tokens, "comma-separated token ids, e.g. 2,651,1234")->required();
  c->add_option("--dump", *dump,
                "write all logits as raw little-endian float32 [tokens, vocab] to this file");
  c->add_option("--top", *top, "print the top-N logits per position")->check(CLI::NonNegativeNumber);
  c->callback([o, dump, top] {
    auto be = make_cpu_backend();
    auto model = load_model(*o, *be);
    auto ids = parse_token_list(o->tokens, "--tokens");
    int n = int(ids.size()), pages = o->kv_pages ? o->kv_pages : (n + kPageSize - 1) / kPageSize + 1;
    KvCache kv(*model, pages, pages);
    SequenceState seq;
    auto logits = prefill(*model, kv, seq, ids, o->chunk, true);
    const int V = model->config().vocab_size;
    if (!dump->empty()) {
      std::ofstream f(*dump, std::ios::binary);
      MTP_CHECK(f.good(), "--dump: cannot write '{}'", *dump);
      f.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * 4));
      fmt::print("wrote {} x {} float32 logits to {}\n", n, V, *dump);
    }
    for (int t = 0; t<n&& * top> 0; t++) {
      std::vector<int> idx(V);
      for (int v = 0; v < V; v++) idx[v] = v;
      int k = std::min(*top, V);
      const float* l = logits.data() + size_t(t) * V;
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return l[a] > l[b]; });
      fmt::print("pos {:4d} tok {:6d}:", t, ids[t]);
      for (int i = 0; i < k; i++) fmt::print(" {}={:.4f}", idx[i], l[idx[i]]);
      fmt::print("\n");
    }
  });
}

void add_generate_command(CLI::App& app) {
  auto* c = app.add_subcommand("generate", "greedy generation from token ids on the target");
  auto o = std::make_shared<ModelOpts>();
  auto max_tokens = std::make_shared<int>(32);
  auto as_json = std::make_shared<bool>(false);
  auto prompt = std::make_shared<std::string>();
  add_model_opts(c, *o);
  auto* pt = c->add_option("--prompt-tokens", o->tokens, "comma-separated prompt token ids, e.g. 2,651,1234");
  auto* ptext = c->add_option(
      "--prompt", *prompt, "prompt text, tokenized with the model's tokenizer.json (a <bos> is prepended)");
  pt->excludes(ptext);
  (void)pt;
  c->add_option("--max-tokens", *max_tokens, "tokens to generate")->check(CLI::PositiveNumber);
  c->add_flag("--json", *as_json, "print one JSON object instead of text");
  c->callback([o, max_tokens, as_json, prompt] {
    auto be = make_cpu_backend();
    auto t0 = std::chrono::steady_clock::now();
    auto model = load_model(*o, *be);
    std::optional<Tokenizer> tok;
    std::vector<int32_t> ids;
    if (!prompt->empty()) {
      MTP_CHECK(o->load_format != "dummy" || std::filesystem::exists(o->model_dir + "/tokenizer.json"),
                "--prompt needs {}/tokenizer.json; with --load-format dummy and a config-only directory pass "
                "--prompt-tokens instead",
                o->model_dir);
      tok = Tokenizer::load(o->model_dir);
      ids = tok->encode(*prompt, /*add_special_tokens=*/true);
      if (ids.empty() || ids[0] != model->config().bos_token_id)
        ids.insert(ids.begin(), model->config().bos_token_id);
    } else {
      ids = parse_token_list(o->tokens, "--prompt-tokens");
    }
    int total = int(ids.size()) + *max_tokens;
    int pages = o->kv_pages ? o->kv_pages : (total + kPageSize - 1) / kPageSize + 1;
    KvCache kv(*model, pages, pages);
    SequenceState seq;
    auto t1 = std::chrono::steady_clock::now();
    auto r = greedy_generate(*model, kv, seq, ids, *max_tokens, model->config().eos_token_ids, o->chunk);
    auto t2 = std::chrono::steady_clock::now();
    double load_s = std::chrono::duration<double>(t1 - t0).count();
    double gen_s = std::chrono::duration<double>(t2 - t1).count();
    if (*as_json) {
      nlohmann::json j = {{"tokens", r.tokens}, {"margins", r.margins}, {"seconds", gen_s}};
      fmt::print("{}\n", j.dump());
      return;
    }
    std::string s;
    for (size_t i = 0; i < r.tokens.size(); i++) s += (i ? "," : "") + std::to_string(r.tokens[i]);
    fmt::print("{}\n", tok ? tok->decode(r.tokens, /*skip_special_tokens=*/false) : s);
    fmt::print(stderr,
               "loaded in {:.2f} s; {} prompt + {} generated tokens in {:.3f} s ({:.1f} tokens/s) on {}\n",
               load_s, ids.size(), r.tokens.size(), gen_s, double(r.tokens.size()) / gen_s, be->name());
  });
}

}  // namespace mtpserve::cli
