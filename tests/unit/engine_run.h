// Engine test helpers shared by the CPU and CUDA engine tests: submit requests (waiting while the queue is
// full), collect each one's tokens, log-probs and counters until all finish; a seeded sampled request; the
// two-sample chi-square that compares speculative with plain sampling.
#pragma once
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace mtpserve::test {

struct Got {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  int accepted = 0;
  FinishReason finish = FinishReason::None;
};

inline std::vector<Got> run_requests(Engine& e, const std::vector<GenerationRequest>& reqs,
                                     std::chrono::seconds timeout = std::chrono::seconds(600)) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Got> out(reqs.size());
  size_t done = 0;
  for (size_t i = 0; i < reqs.size(); i++)
    while (!e.submit(reqs[i], [&, i](const RequestOutput& o) {
      std::lock_guard<std::mutex> lk(mu);
      out[i].tokens.insert(out[i].tokens.end(), o.tokens.begin(), o.tokens.end());
      out[i].logprobs.insert(out[i].logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      out[i].accepted = o.accepted_tokens;
      if (o.finish != FinishReason::None) out[i].finish = o.finish, done++, cv.notify_all();
    }))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the waiting queue is full
  std::unique_lock<std::mutex> lk(mu);
  EXPECT_TRUE(cv.wait_for(lk, timeout, [&] { return done == reqs.size(); }));
  return out;
}

// Request i: a fixed 5-token prompt, seed i, max_tokens new tokens ignoring EOS, speculation on or off.
inline GenerationRequest sampled_request(int i, const SamplingParams& sp, int max_tokens, bool spec) {
  GenerationRequest r;
  r.id = std::to_string(i);
  r.prompt = {2, 651, 12, 9, 300};
  r.sampling = sp;
  r.sampling.seed = uint64_t(i);
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  r.spec.enabled = spec;
  return r;
}

// Quantile of chi-square(df) at 1 - 0.001 (Wilson-Hilferty).
inline double chi2_crit(int df) {
  const double z = 3.090232, k = 2.0 / (9.0 * df);
  return df * std::pow(1 - k + z * std::sqrt(k), 3);
}

// Two-sample chi-square of the joint distribution of the first three tokens of equally many outputs a and b
// (categories seen fewer than 10 times in both samples together pooled into one); *df its degrees of freedom.
inline double two_sample_chi2(const std::vector<Got>& a, const std::vector<Got>& b, int* df) {
  std::map<std::vector<int32_t>, std::pair<int, int>> n;
  for (auto& g : a) n[std::vector<int32_t>(g.tokens.begin(), g.tokens.begin() + 3)].first++;
  for (auto& g : b) n[std::vector<int32_t>(g.tokens.begin(), g.tokens.begin() + 3)].second++;
  std::vector<std::pair<int, int>> cat;
  std::pair<int, int> rest{0, 0};
  for (auto& [k, c] : n)
    if (c.first + c.second >= 10)
      cat.push_back(c);
    else
      rest.first += c.first, rest.second += c.second;
  if (rest.first + rest.second > 0) cat.push_back(rest);
  double chi = 0;
  for (auto [x, y] : cat) chi += double(x - y) * (x - y) / (x + y);  // equal sample sizes
  *df = int(cat.size()) - 1;
  return chi;
}

}  // namespace mtpserve::test
