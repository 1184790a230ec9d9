// Prometheus text exposition for GET /metrics: the engine's gauges and counters (requests running/waiting,
// KV pages per pool, tokens, speculation, preemptions) and the server's latency histograms (TTFT, TPOT,
// end-to-end) and per-outcome request counters.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace mtpserve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // Appends the _bucket/_sum/_count lines of `name`.
  void render(std::string& out, const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); the last one is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  // One finished choice (engine request) as the server saw it.
  void request_finished(const std::string& finish_reason, double ttft_s, double tpot_s, double e2e_s,
                        int completion_tokens);
  void http_response(int status);  // every answered HTTP request
  std::string render(const EngineStats& s, const ModelInfo& info, const std::string& model_name) const;

 private:
  mutable std::mutex mu_;
  Histogram ttft_, tpot_, e2e_;
  std::map<std::string, uint64_t> finished_;  // by finish reason
  std::map<int, uint64_t> http_;              // by status code
};

}  // namespace mtpserve
