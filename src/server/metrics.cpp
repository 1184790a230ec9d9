#include "server/metrics.h"

#include <fmt/format.h>

namespace mtpserve {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) i++;
  counts_[i]++;
  sum_ += v;
  count_++;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); i++) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, sum_, name,
                     count_);
}

Metrics::Metrics()
    : ttft_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
             40.0, 80.0}),
      tpot_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5}),
      e2e_({0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
            240.0, 480.0}) {}

void Metrics::request_finished(const std::string& finish_reason, double ttft_s, double tpot_s, double e2e_s,
                               int completion_tokens) {
  std::lock_guard<std::mutex> lk(mu_);
  finished_[finish_reason]++;
  if (completion_tokens > 0) ttft_.observe(ttft_s);
  if (completion_tokens > 1) tpot_.observe(tpot_s);
  e2e_.observe(e2e_s);
}

void Metrics::http_response(int status) {
  std::lock_guard<std::mutex> lk(mu_);
  http_[status]++;
}

namespace {
void metric(std::string& out, const char* type, const std::string& name, const std::string& help,
            const std::vector<std::pair<std::string, double>>& samples) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  for (const auto& [labels, v] : samples) out += fmt::format("{}{} {}\n", name, labels, v);
}
}  // namespace

std::string Metrics::render(const EngineStats& s, const ModelInfo& info,
                            const std::string& model_name) const {
  std::string o;
  std::string m = fmt::format("{{model_name=\"{}\"}}", model_name);
  auto pool = [&](const char* p) { return fmt::format("{{model_name=\"{}\",pool=\"{}\"}}", model_name, p); };
  metric(o, "gauge", "mtpserve_requests_running", "Requests in the running set.", {{m, s.running}});
  metric(o, "gauge", "mtpserve_requests_waiting", "Requests in the waiting queue.", {{m, s.waiting}});
  metric(o, "gauge", "mtpserve_kv_pages_used", "KV cache pages in use, per pool.",
         {{pool("full"), s.full_pages_used}, {pool("sliding"), s.sliding_pages_used}});
  metric(o, "gauge", "mtpserve_kv_pages_free", "KV cache pages free, per pool.",
         {{pool("full"), s.full_pages_total - s.full_pages_used},
          {pool("sliding"), s.sliding_pages_total - s.sliding_pages_used}});
  metric(o, "gauge", "mtpserve_kv_pages_total", "KV cache pages, per pool.",
         {{pool("full"), s.full_pages_total}, {pool("sliding"), s.sliding_pages_total}});
  metric(o, "gauge", "mtpserve_kv_cache_usage_ratio", "Fraction of full-attention KV pages in use.",
         {{m, s.full_pages_total ? double(s.full_pages_used) / s.full_pages_total : 0.0}});
  metric(o, "gauge", "mtpserve_kv_capacity_tokens", "Tokens the KV cache holds.",
         {{m, double(info.kv_capacity_tokens)}});
  metric(o, "counter", "mtpserve_prompt_tokens_total", "Prompt tokens admitted by the engine.",
         {{m, double(s.prompt_tokens)}});
  metric(o, "counter", "mtpserve_generation_tokens_total", "Tokens generated.",
         {{m, double(s.generation_tokens)}});
  metric(o, "counter", "mtpserve_spec_drafted_tokens_total", "Tokens drafted by the MTP assistant.",
         {{m, double(s.drafted_tokens)}});
  metric(o, "counter", "mtpserve_spec_accepted_tokens_total", "Drafted tokens accepted by the target.",
         {{m, double(s.accepted_tokens)}});
  metric(o, "counter", "mtpserve_spec_verify_steps_total", "Speculative verify steps.",
         {{m, double(s.verify_steps)}});
  metric(o, "gauge", "mtpserve_spec_acceptance_length",
         "Mean tokens committed per verify step ((accepted + verify steps) / verify steps).",
         {{m, s.verify_steps ? double(s.accepted_tokens + s.verify_steps) / double(s.verify_steps) : 0.0}});
  metric(o, "counter", "mtpserve_preemptions_total", "Requests preempted (recomputed) for KV space.",
         {{m, double(s.preemptions)}});
  metric(o, "counter", "mtpserve_engine_requests_finished_total", "Requests the engine finished.",
         {{m, double(s.requests_finished)}});
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::pair<std::string, double>> fin;
  for (const auto& [r, n] : finished_)
    fin.push_back({fmt::format("{{model_name=\"{}\",finished_reason=\"{}\"}}", model_name, r), double(n)});
  metric(o, "counter", "mtpserve_request_success_total", "Choices finished, by finish reason.", fin);
  std::vector<std::pair<std::string, double>> http;
  for (const auto& [c, n] : http_) http.push_back({fmt::format("{{code=\"{}\"}}", c), double(n)});
  metric(o, "counter", "mtpserve_http_responses_total", "HTTP responses, by status code.", http);
  ttft_.render(o, "mtpserve_time_to_first_token_seconds", "Time to first token.");
  tpot_.render(o, "mtpserve_time_per_output_token_seconds", "Time per output token after the first.");
  e2e_.render(o, "mtpserve_e2e_request_latency_seconds", "End-to-end request latency.");
  return o;
}

}  // namespace mtpserve
