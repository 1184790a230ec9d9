// `mtpserve bench`: what one step of the target and of the MTP assistant costs, measured on the models
// directly (Gemma4Model::forward and Gemma4Assistant::step on a paged KV cache filled with random values; not
// through the engine), with real or dummy weights, on the CPU or CUDA backend:
//   decode   target decode step (one token per sequence) by context and batch: median time, bytes moved
//            (weights + KV read, see bench_step_util.h), GB/s, roofline (bytes / measured copy bandwidth);
//   spec     with --assistant: one draft step (assistant step + greedy pick on the device + ids to the host)
//            as % of a decode step, one verify (target forward of K+1 rows per sequence), and a whole MTP
//            iteration by K: draft (K steps) + verify + accept (--accept device: greedy, row argmaxes on the
//            device and the ids to the host; sampled (or logits, its former name): the engine's path for
//            sampled requests, sample_rows on the device and [R, 2] numbers to the host, then host
//            acceptance; host: the path it replaced, every logit to the host and the same math row by row on
//            the CPU; both sampled modes at temperature 1, top-k 64, top-p 0.95) + other (building the
//            batches: the rest of the wall time);
//            break-even AL = iteration / decode step, the tokens per iteration speculation must commit to
//            beat plain decoding;
//   prefill  tokens/s of a whole-prompt prefill at batch 1, chunked.
// Every timed region ends with a synchronize, so device parts are wall time of finished work.
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "backend/select.h"
#include "bench_step_util.h"
#include "cli_util.h"
#include "commands.h"
#include "engine/accept.h"
#include "engine/graphs.h"
#include "model/loader.h"

namespace mtpserve::cli {
namespace {

using namespace bench;
using json = nlohmann::json;

struct StepOpts {
  std::string model, assistant, backend = "auto", load_format = "auto", json_path, accept = "device";
  std::string graphs = "auto";
  std::string batches = "1,8,32,64", ctxs = "1024,8192", ks = "3,4,5,6", prefills = "2048,8192";
  std::string sections = "decode,spec,prefill";
  int chunk = 2048, iters = 10, warmup = 2, layers = 0, offset = 1;
  uint64_t seed = 1234;
};

std::vector<int> positive_list(const std::string& s, const char* flag) {
  std::vector<int> out;
  if (s.empty()) return out;
  for (int32_t v : parse_token_list(s, flag)) {
    MTP_CHECK(v > 0, "{}: values must be positive, got {}", flag, v);
    out.push_back(v);
  }
  return out;
}

// A paged KV cache big enough for every measured point, filled once; sequences take pages from it.
struct KvPool {
  KvStorage kv;
  int full_per = 0, slide_per = 0;  // pages per sequence in each pool (decode / spec points)
  int full_pages = 0, slide_pages = 0;
};

// Pages one sequence needs at context ctx with up to `extra` rows past it: every full page, and the sliding
// pages that hold a slot any query can still see (from ctx - W - 1 on).
int full_pages_for(int ctx, int extra) { return (ctx + extra + kPageSize - 1) / kPageSize; }
int first_visible_page(const TextConfig& c, int ctx) {
  return std::max(0, ctx - c.sliding_window - 1) / kPageSize;
}

struct SeqPages {
  std::vector<int32_t> full, sliding;
};

// Page tables of B sequences at context ctx (sequence s owns a fixed range of each pool).
std::vector<SeqPages> page_tables(const KvPool& p, const TextConfig& c, int B, int ctx, int extra) {
  std::vector<SeqPages> t(B);
  const int n = full_pages_for(ctx, extra), first = first_visible_page(c, ctx);
  MTP_ASSERT(n <= p.full_per && n - first <= p.slide_per);
  for (int s = 0; s < B; s++) {
    for (int i = 0; i < n; i++) t[s].full.push_back(s * p.full_per + i);
    for (int i = 0; i < n; i++) t[s].sliding.push_back(i < first ? -1 : s * p.slide_per + (i - first));
  }
  return t;
}

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(3 + g() % uint32_t(std::max(1, vocab - 3)));
  return t;
}

// B sequences of q rows each after ctx committed tokens; every row's logits returned.
ForwardBatch block_batch(const std::vector<SeqPages>& pt, int ctx, int q,
                         const std::vector<int32_t>& tokens) {
  ForwardBatch fb;
  const int B = int(pt.size());
  for (int s = 0; s < B; s++) {
    for (int i = 0; i < q; i++) {
      fb.tokens.push_back(tokens[size_t(s * q + i) % tokens.size()]);
      fb.positions.push_back(ctx + i);
      fb.output_rows.push_back(s * q + i);
    }
    fb.seqs.push_back({q, ctx, &pt[s].full, &pt[s].sliding});
  }
  return fb;
}

bool all_finite(const json& j) {
  if (j.is_number_float()) return std::isfinite(j.get<double>());
  if (j.is_array() || j.is_object())
    for (auto& v : j)
      if (!all_finite(v)) return false;
  return true;
}

class StepBench {
 public:
  StepBench(const StepOpts& o) : o_(o) {
    // The flags first: a typo fails before a long load.
    batches_ = positive_list(o.batches, "--batch");
    ctxs_ = positive_list(o.ctxs, "--ctx");
    ks_ = positive_list(o.ks, "--k");
    prefills_ = positive_list(o.prefills, "--prefill");
    for (size_t i = 0; i <= o.sections.size();) {
      size_t j = std::min(o.sections.find(',', i), o.sections.size());
      std::string s = o.sections.substr(i, j - i);
      MTP_CHECK(s == "decode" || s == "spec" || s == "prefill",
                "--sections: '{}' is not a section (decode, spec, prefill)", s);
      sec_.insert(s);
      i = j + 1;
    }
    be_ = make_backend(o.backend);
    LoadOptions lo;
    lo.format = o.load_format;
    lo.seed = o.seed;
    lo.layers = o.layers;
    lo.verbose = true;
    auto t0 = Clock::now();
    target_ = load_target(o.model, *be_, lo);
    if (!o.assistant.empty()) assistant_ = load_assistant(o.assistant, *target_, o.offset, lo);
    be_->synchronize();
    load_s_ = ms_since(t0) / 1e3;
    elem_ = double(dtype_size(be_->act_dtype()));
  }

  json run() {
    const TextConfig& c = target_->config();
    const auto &batches = batches_, &ctxs = ctxs_, &ks = ks_, &prefills = prefills_;
    const std::set<std::string>& sec = sec_;
    const bool spec = sec.count("spec") && assistant_ && !ks.empty();
    const bool step_points = sec.count("decode") || spec;
    TargetBytes tb(*target_);
    bw_ = measure_copy_bw(*be_);

    json out;
    out["device"] = be_->name();
    out["model"] = o_.model;
    out["assistant"] = o_.assistant;
    out["load_format"] = o_.load_format;
    out["layers"] = c.num_hidden_layers;
    out["weights_gb"] = tb.all / 1e9;
    out["load_s"] = load_s_;
    out["copy_bw_gbs"] = bw_ / 1e9;
    out["iters"] = o_.iters;
    out["accept"] = o_.accept;
    graphs_ = o_.graphs == "on" || (o_.graphs == "auto" && be_->native_graphs());
    out["graphs"] = graphs_;
    fmt::print(
        "device {}: copy bandwidth {:.1f} GB/s (read + write); target {} ({} layers{}, {:.2f} GB of "
        "weights{}){}; loaded in {:.1f} s\n",
        be_->name(), bw_ / 1e9, o_.model, c.num_hidden_layers, o_.layers > 0 ? " (--layers: cut)" : "",
        tb.all / 1e9, o_.load_format == "dummy" ? ", dummy" : "",
        assistant_ ? fmt::format(", assistant {} ({} head)", o_.assistant,
                                 assistant_->centroid_head() ? "centroid" : "dense")
                   : "",
        load_s_);
    fmt::print(
        "medians of {} runs after {} warm-up runs; every timed region ends with a synchronize; decode, "
        "verify "
        "and the draft loop {}\n",
        o_.iters, o_.warmup,
        graphs_ ? "replay recorded graphs (as the engine runs them)" : "launch their ops one by one");

    // One KV allocation for every decode/spec point and the prefills.
    const int kmax = ks.empty() || !spec ? 0 : *std::max_element(ks.begin(), ks.end());
    KvPool& pool = pool_;
    int bmax = 0;
    if (step_points && !batches.empty() && !ctxs.empty()) {
      bmax = *std::max_element(batches.begin(), batches.end());
      for (int ctx : ctxs) {
        pool.full_per = std::max(pool.full_per, full_pages_for(ctx, kmax + 1));
        pool.slide_per = std::max(pool.slide_per, full_pages_for(ctx, kmax + 1) - first_visible_page(c, ctx));
      }
    }
    pool.full_pages = std::max(1, bmax * pool.full_per);
    pool.slide_pages = std::max(1, bmax * pool.slide_per);
    if (sec.count("prefill"))
      for (int p : prefills) {
        pool.full_pages = std::max(pool.full_pages, full_pages_for(p, 0));
        pool.slide_pages = std::max(pool.slide_pages, full_pages_for(p, 0));
      }
    try {
      pool.kv = target_->allocate_kv(pool.full_pages + 1, pool.slide_pages + 1);  // + the graphs' pad pages
    } catch (const Error& e) {
      fail(
          "{}\nbench: the KV cache for batch {} at context {} (+{} rows) does not fit next to {:.2f} GB of "
          "weights: use a smaller --batch/--ctx, or --layers N",
          e.what(), bmax, ctxs.empty() ? 0 : *std::max_element(ctxs.begin(), ctxs.end()), kmax + 1,
          tb.all / 1e9);
    }
    double kv_gb = 0;
    for (size_t i = 0; i < pool.kv.k.size(); i++)
      if (pool.kv.k[i].defined()) {
        fill_random(*be_, pool.kv.k[i], 1000 + i);
        fill_random(*be_, pool.kv.v[i], 2000 + i);
        kv_gb += 2 * bytes_of(pool.kv.k[i]) / 1e9;
      }
    be_->synchronize();
    fmt::print("KV cache: {:.2f} GB ({} full + {} sliding pages of {} tokens)\n\n", kv_gb, pool.full_pages,
               pool.slide_pages, kPageSize);
    out["kv_gb"] = kv_gb;
    if (graphs_ && bmax > 0) {
      const PadPages pad{pool.full_pages, pool.slide_pages};
      const int max_len = *std::max_element(ctxs.begin(), ctxs.end()) + kmax + 1;
      tgraphs_ = std::make_unique<TargetGraphs>(*target_, pool.kv, pad, max_len, bmax);
      if (assistant_)
        dgraphs_ = std::make_unique<DraftGraphs>(*assistant_, *target_, pool.kv, pad, max_len, bmax);
    }

    if (step_points) {
      // Each table is printed as it is measured; the spec tables reuse the decode step times.
      std::map<std::pair<int, int>, double> decode_ms;
      json decode = json::array();
      fmt::print("target decode step (1 token per sequence)\n");
      print_step_header(false);
      for (int ctx : ctxs)
        for (int B : batches) {
          Point p = make_point(ctx, B, kmax);
          ForwardBatch fb = block_batch(p.pt, ctx, 1, p.toks);
          ForwardOutput lo;
          const double ms = time_median(*be_, o_.warmup, o_.iters, [&] { lo = forward(fb); });
          if (decode.empty()) check_finite(lo.logits, "target logits");
          decode.push_back(point(ctx, B, 1, ms, tb));
          print_step_row(decode.back(), false);
          decode_ms[{ctx, B}] = ms;
        }
      fmt::print("\n");
      out["decode"] = decode;
      if (spec) {
        json draft = json::array(), verify = json::array(), mtp = json::array();
        print_draft_header();
        for (int ctx : ctxs)
          for (int B : batches) {
            draft.push_back(run_draft(make_point(ctx, B, kmax), decode_ms[{ctx, B}]));
            print_draft_row(draft.back());
          }
        fmt::print("\nverify (target forward of K+1 tokens per sequence)\n");
        print_step_header(true);
        for (int ctx : ctxs)
          for (int B : batches)
            for (int K : ks) {
              Point p = make_point(ctx, B, kmax);
              ForwardBatch vb = block_batch(p.pt, ctx, K + 1, p.toks);
              const double vms = time_median(*be_, o_.warmup, o_.iters, [&] { forward(vb); });
              json v = point(ctx, B, K + 1, vms, tb);
              v["k"] = K;
              v["pct_of_decode"] = 100 * vms / decode_ms[{ctx, B}];
              verify.push_back(v);
              print_step_row(v, true);
            }
        fmt::print("\n");
        print_mtp_header();
        for (int ctx : ctxs)
          for (int B : batches)
            for (int K : ks) {
              mtp.push_back(run_mtp(make_point(ctx, B, kmax), K, decode_ms[{ctx, B}]));
              print_mtp_row(mtp.back());
            }
        fmt::print("\n");
        out["draft"] = draft;
        out["verify"] = verify;
        out["mtp"] = mtp;
      }
    }
    if (sec.count("spec") && !assistant_) fmt::print("spec: skipped (no --assistant)\n\n");
    if (sec.count("prefill") && !prefills.empty()) out["prefill"] = run_prefill(prefills);
    MTP_CHECK(all_finite(out), "bench: a measurement is not a finite number: {}", out.dump());
    return out;
  }

 private:
  // The target forward as the engine runs it: from a graph when the batch fits one.
  ForwardOutput forward(const ForwardBatch& fb) {
    if (tgraphs_ && tgraphs_->fits(fb)) return tgraphs_->forward(fb);
    return target_->forward(fb, pool_.kv);
  }
  // k greedy drafts per row, [k][B]: one graph replay, or k eager steps with the ids read after each.
  std::vector<int32_t> draft_loop(const DraftRows& dr, const Tensor& h0, int k) {
    if (dgraphs_ && dgraphs_->fits(dr)) return dgraphs_->draft(dr, h0, k);
    std::vector<int32_t> all;
    DraftRows r = dr;
    Tensor h = h0;
    for (int s = 0; s < k; s++) {
      DraftStepOutput o = assistant_->step(r, h, pool_.kv);
      r.tokens = assistant_->greedy_tokens(o);
      h = o.hidden;
      all.insert(all.end(), r.tokens.begin(), r.tokens.end());
    }
    return all;
  }

  json point(int ctx, int B, int q, double ms, const TargetBytes& tb) const {
    const double w = tb.weights(int64_t(B) * q), kv = kv_read_bytes(target_->config(), B, ctx, q, elem_);
    const double roof = (w + kv) / bw_ * 1e3;
    return {{"ctx", ctx},
            {"batch", B},
            {"q", q},
            {"ms", ms},
            {"weights_gb", w / 1e9},
            {"kv_gb", kv / 1e9},
            {"gbs", (w + kv) / (ms * 1e-3) / 1e9},
            {"roof_ms", roof},
            {"roof_pct", 100 * roof / ms}};
  }

  void check_finite(const Tensor& logits, const char* what) {
    std::vector<float> h(size_t(logits.numel()));
    be_->copy_to_host(h.data(), logits);
    for (float x : h) MTP_CHECK(std::isfinite(x), "bench: {} are not finite ({})", what, x);
  }

  DraftRows draft_rows(const std::vector<SeqPages>& pt, int ctx, const std::vector<int32_t>& tokens) {
    DraftRows dr;
    dr.tokens = tokens;
    for (const SeqPages& p : pt) dr.seqs.push_back({1, ctx, &p.full, &p.sliding});
    return dr;
  }

  // One (ctx, batch) point of the spec tables: page tables, block tokens, the bonus tokens and the seed
  // state of the drafts (the target's post-norm hidden of a decode step).
  struct Point {
    int ctx = 0, B = 0;
    std::vector<SeqPages> pt;
    std::vector<int32_t> toks, bonus;
    Tensor seed_h;
  };
  Point make_point(int ctx, int B, int kmax) {
    Point p;
    p.ctx = ctx;
    p.B = B;
    p.pt = page_tables(pool_, target_->config(), B, ctx, kmax + 1);
    p.toks = random_ids(B * (kmax + 1), target_->config().vocab_size, uint32_t(ctx * 131 + B));
    p.bonus.assign(p.toks.begin(), p.toks.begin() + B);
    return p;
  }
  void seed(Point& p) {
    ForwardBatch fb = block_batch(p.pt, p.ctx, 1, p.toks);
    Tensor h = target_->forward(fb, pool_.kv).hidden;
    p.seed_h = be_->alloc(h.dtype, {h.dim(0), h.dim(1)});
    be_->copy(p.seed_h, h);
  }

  json run_draft(Point p, double decode_ms) {
    seed(p);
    DraftRows dr = draft_rows(p.pt, p.ctx, p.bonus);
    const double ms = time_median(*be_, o_.warmup, o_.iters, [&] { draft_loop(dr, p.seed_h, 1); });
    const double bytes = draft_step_bytes(*assistant_, *target_, p.B, p.ctx, elem_);
    return {{"ctx", p.ctx},
            {"batch", p.B},
            {"ms", ms},
            {"pct_of_decode", 100 * ms / decode_ms},
            {"gb", bytes / 1e9},
            {"gbs", bytes / (ms * 1e-3) / 1e9},
            {"roof_ms", bytes / bw_ * 1e3}};
  }

  // Whole MTP iterations: draft K, verify, accept; the parts timed between synchronize boundaries.
  json run_mtp(Point p, int K, double decode_ms) {
    seed(p);
    const int B = p.B, V = target_->config().vocab_size;
    std::vector<double> td, tv, ta, tx, tot;
    SamplingParams sampled;  // Gemma 4's generation_config
    sampled.temperature = 1.0f, sampled.top_k = 64, sampled.top_p = 0.95f;
    int64_t accepted = 0, rounds = 0;
    for (int it = 0; it < o_.warmup + o_.iters; it++) {
      auto t0 = Clock::now();
      std::vector<std::vector<int32_t>> drafts(B);
      const std::vector<int32_t> d = draft_loop(draft_rows(p.pt, p.ctx, p.bonus), p.seed_h, K);
      for (int s = 0; s < K; s++)
        for (int b = 0; b < B; b++) drafts[b].push_back(d[size_t(s) * B + b]);
      const double d_ms = ms_since(t0);  // ends with the last ids on the host
      std::vector<int32_t> blk;
      for (int b = 0; b < B; b++) {
        blk.push_back(p.bonus[b]);
        blk.insert(blk.end(), drafts[b].begin(), drafts[b].end());
      }
      ForwardBatch fb = block_batch(p.pt, p.ctx, K + 1, blk);
      auto t1 = Clock::now();
      ForwardOutput vo = forward(fb);
      be_->synchronize();
      const Tensor logits_v = vo.logits.rows(0, int64_t(B) * (K + 1));  // a graph's bucket may have more
      const double v_ms = ms_since(t1);
      auto t2 = Clock::now();
      if (o_.accept == "device") {  // greedy: row argmaxes on the device, B * (K+1) ids to the host
        Tensor top = be_->alloc(DType::I32, {int64_t(B) * (K + 1)});
        be_->argmax(top, logits_v);
        std::vector<int32_t> t(size_t(B) * (K + 1));
        be_->copy_to_host(t.data(), top);
        for (int b = 0; b < B; b++) {
          const int32_t* row = t.data() + size_t(b) * (K + 1);
          int n = 0;
          while (n < K && drafts[b][n] == row[n]) n++;
          accepted += n;
        }
      } else {  // sampled requests: their acceptance numbers from sample_rows, then host acceptance
        std::vector<PenaltyState> pens(static_cast<size_t>(B));
        std::vector<Rng> rngs;
        std::vector<BlockRows> blocks;
        for (int b = 0; b < B; b++) rngs.emplace_back(uint64_t(it) * 1000 + uint64_t(b));
        for (int b = 0; b < B; b++)
          blocks.push_back({&sampled, &pens[size_t(b)], &rngs[size_t(b)], &drafts[b]});
        RowDraws dr;
        if (o_.accept != "host") {  // sampled (logits: its former name): [R, 2] numbers to the host
          dr = draw_rows(*be_, logits_v, blocks);
        } else {  // every logit to the host and the same math row by row on the CPU (the replaced path)
          std::vector<float> logits(size_t(B) * (K + 1) * V);
          be_->copy_to_host(logits.data(), logits_v);
          dr = draw_rows(*host_, Tensor(logits.data(), DType::F32, {int64_t(B) * (K + 1), V}), blocks);
        }
        for (int b = 0; b < B; b++)
          accepted +=
              accept_chain(dr, b * (K + 1), drafts[b].data(), K, pens[size_t(b)], rngs[size_t(b)]).accepted;
      }
      rounds += B;
      const double a_ms = ms_since(t2), all = ms_since(t0);
      if (it < o_.warmup) continue;
      td.push_back(d_ms), tv.push_back(v_ms), ta.push_back(a_ms), tot.push_back(all);
      tx.push_back(all - d_ms - v_ms - a_ms);
    }
    const double iter = median(tot);
    return {{"ctx", p.ctx},
            {"batch", B},
            {"k", K},
            {"draft_ms", median(td)},
            {"verify_ms", median(tv)},
            {"accept_ms", median(ta)},
            {"other_ms", median(tx)},
            {"iter_ms", iter},
            {"draft_pct_of_iter", 100 * median(td) / iter},
            {"breakeven_al", iter / decode_ms},
            {"accepted_per_seq", double(accepted) / double(std::max<int64_t>(1, rounds))}};
  }

  json run_prefill(const std::vector<int>& prefills) {
    const TextConfig& c = target_->config();
    json res = json::array();
    fmt::print("prefill (batch 1, chunks of {} tokens)\n{:>8} {:>6} | {:>10} | {:>10}\n", o_.chunk, "tokens",
               "chunk", "ms", "tokens/s");
    const int runs = std::max(1, std::min(o_.iters, 3));
    for (int P : prefills) {
      SeqPages pg;
      for (int i = 0; i < full_pages_for(P, 0); i++) pg.full.push_back(i), pg.sliding.push_back(i);
      const auto toks = random_ids(P, c.vocab_size, uint32_t(P));
      auto once = [&] {
        for (int done = 0; done < P;) {
          const int n = std::min(o_.chunk, P - done);
          ForwardBatch fb;
          fb.tokens.assign(toks.begin() + done, toks.begin() + done + n);
          for (int i = 0; i < n; i++) fb.positions.push_back(done + i);
          fb.seqs.push_back({n, done, &pg.full, &pg.sliding});
          if (done + n == P) fb.output_rows.push_back(n - 1);
          target_->forward(fb, pool_.kv);
          done += n;
        }
      };
      const double ms = time_median(*be_, std::min(o_.warmup, 1), runs, once);
      res.push_back({{"tokens", P}, {"chunk", o_.chunk}, {"ms", ms}, {"tok_s", P / (ms * 1e-3)}});
      fmt::print("{:>8} {:>6} | {:>10.2f} | {:>10.0f}\n", P, o_.chunk, ms, P / (ms * 1e-3));
      std::fflush(stdout);
    }
    fmt::print("\n");
    return res;
  }

  static void print_step_header(bool with_k) {
    fmt::print("{:>6} {:>5}{} | {:>9} | {:>8} {:>8} {:>8} | {:>8} | {:>9} {:>6}{}\n", "ctx", "batch",
               with_k ? fmt::format(" {:>2}", "K") : "", "ms", "wts GB", "KV GB", "total GB", "GB/s",
               "roof ms", "%roof", with_k ? fmt::format(" | {:>8}", "%decode") : "");
  }
  static void print_step_row(const json& r, bool with_k) {
    fmt::print("{:>6} {:>5}{} | {:>9.3f} | {:>8.3f} {:>8.3f} {:>8.3f} | {:>8.1f} | {:>9.3f} {:>5.1f}%{}\n",
               r["ctx"].get<int>(), r["batch"].get<int>(),
               with_k ? fmt::format(" {:>2}", r["k"].get<int>()) : "", r["ms"].get<double>(),
               r["weights_gb"].get<double>(), r["kv_gb"].get<double>(),
               r["weights_gb"].get<double>() + r["kv_gb"].get<double>(), r["gbs"].get<double>(),
               r["roof_ms"].get<double>(), r["roof_pct"].get<double>(),
               with_k ? fmt::format(" | {:>7.1f}%", r["pct_of_decode"].get<double>()) : "");
    std::fflush(stdout);
  }
  static void print_draft_header() {
    fmt::print(
        "draft step (one assistant step + greedy pick on the device, ids to the host)\n{:>6} {:>5} | "
        "{:>9} | {:>8} | {:>8} {:>8} {:>9}\n",
        "ctx", "batch", "ms", "%decode", "GB", "GB/s", "roof ms");
  }
  static void print_draft_row(const json& r) {
    fmt::print("{:>6} {:>5} | {:>9.3f} | {:>7.1f}% | {:>8.4f} {:>8.1f} {:>9.4f}\n", r["ctx"].get<int>(),
               r["batch"].get<int>(), r["ms"].get<double>(), r["pct_of_decode"].get<double>(),
               r["gb"].get<double>(), r["gbs"].get<double>(), r["roof_ms"].get<double>());
    std::fflush(stdout);
  }
  void print_mtp_header() const {
    fmt::print("MTP iteration (draft K steps + verify + accept ({}) + other)\n",
               o_.accept == "device" ? "greedy, argmax on the device"
               : o_.accept == "host" ? "sampled T=1 top-k 64 top-p 0.95, all logits to the host"
                                     : "sampled T=1 top-k 64 top-p 0.95, sample_rows on the device");
    fmt::print("{:>6} {:>5} {:>2} | {:>9} {:>9} {:>9} {:>9} | {:>9} | {:>6} | {:>13}\n", "ctx", "batch", "K",
               "draft ms", "verify ms", "accept ms", "other ms", "iter ms", "draft%", "break-even AL");
  }
  static void print_mtp_row(const json& r) {
    fmt::print("{:>6} {:>5} {:>2} | {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} | {:>9.3f} | {:>5.1f}% | {:>13.2f}\n",
               r["ctx"].get<int>(), r["batch"].get<int>(), r["k"].get<int>(), r["draft_ms"].get<double>(),
               r["verify_ms"].get<double>(), r["accept_ms"].get<double>(), r["other_ms"].get<double>(),
               r["iter_ms"].get<double>(), r["draft_pct_of_iter"].get<double>(),
               r["breakeven_al"].get<double>());
    std::fflush(stdout);
  }

  StepOpts o_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Backend> host_ = make_cpu_backend();  // --accept host: the CPU definition on host logits
  std::unique_ptr<Gemma4Model> target_;
  std::unique_ptr<Gemma4Assistant> assistant_;
  KvPool pool_;
  std::unique_ptr<TargetGraphs> tgraphs_;  // after pool_: destroyed before the KV it writes
  std::unique_ptr<DraftGraphs> dgraphs_;
  bool graphs_ = false;
  std::vector<int> batches_, ctxs_, ks_, prefills_;
  std::set<std::string> sec_;
  double load_s_ = 0, bw_ = 0, elem_ = 4;
};

}  // namespace

void add_bench_step_command(CLI::App& app) {
  auto* c = app.add_subcommand(
      "bench", "time the target's decode/verify/prefill steps and the assistant's draft step on the models");
  auto o = std::make_shared<StepOpts>();
  c->add_option("--model", o->model, "target model directory (config.json alone with --load-format dummy)")
      ->required();
  c->add_option("--assistant", o->assistant,
                "MTP assistant directory: adds the draft, verify and MTP tables");
  c->add_option("--backend", o->backend, "compute backend")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  c->add_option("--load-format", o->load_format,
                "weights: auto (the checkpoints') or dummy (seeded random, shapes from config.json)")
      ->check(CLI::IsMember({"auto", "dummy"}))
      ->capture_default_str();
  c->add_option("--seed", o->seed, "seed of the dummy weights")->capture_default_str();
  c->add_option("--layers", o->layers,
                "keep only the target's first N decoder layers (0: all): for models whose weights and KV "
                "do not fit (31B on 80 GB); every number is then of the cut model")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->add_option("--batch", o->batches, "batch sizes (sequences), comma-separated")->capture_default_str();
  c->add_option("--ctx", o->ctxs, "context lengths (committed tokens per sequence), comma-separated")
      ->capture_default_str();
  c->add_option("--k", o->ks, "draft lengths K for verify and MTP iterations, comma-separated")
      ->capture_default_str();
  c->add_option("--prefill", o->prefills, "prompt lengths of the prefill table, comma-separated")
      ->capture_default_str();
  c->add_option("--chunk", o->chunk, "prefill chunk size in tokens")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  c->add_option("--sections", o->sections, "tables to run: decode, spec (needs --assistant), prefill")
      ->capture_default_str();
  c->add_option("--iters", o->iters, "timed runs per point (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  c->add_option("--warmup", o->warmup, "untimed runs before each point")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->add_option("--query-pos-offset", o->offset, "assistant query position offset (0 or 1)")
      ->check(CLI::Range(0, 1))
      ->capture_default_str();
  c->add_option(
       "--accept", o->accept,
       "MTP acceptance: device (greedy: row argmaxes on the device, ids to the host), sampled (the engine's "
       "path for sampled requests: sample_rows on the device, a few numbers per row to the host, host "
       "acceptance; T=1, top-k 64, top-p 0.95; logits is its former name) or host (the path it replaced: "
       "every logit to the host, the same math on the CPU)")
      ->check(CLI::IsMember({"device", "sampled", "logits", "host"}))
      ->capture_default_str();
  c->add_option(
       "--graphs", o->graphs,
       "decode/verify forwards and the draft loop from recorded graphs as the engine runs them: auto "
       "(where the backend has device graphs: CUDA), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  c->add_option("--json", o->json_path, "also write every measurement as JSON to this file");
  c->callback([o] {
    StepBench b(*o);
    json j = b.run();
    if (!o->json_path.empty()) {
      std::ofstream f(o->json_path);
      MTP_CHECK(f.good(), "--json: cannot write '{}'", o->json_path);
      f << j.dump(2) << "\n";
    }
  });
}

}  // namespace mtpserve::cli
