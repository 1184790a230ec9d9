// What a client asks of the engine and what it gets back, independent of HTTP. Requests carry counters
// (tokens computed, tokens generated), not phases.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mtpserve {

struct SamplingParams {
  float temperature = 1.0f;      // 0 = greedy
  float top_p = 1.0f;            // (0, 1]
  int top_k = 0;                 // 0 = off
  float min_p = 0.0f;            // [0, 1]
  std::optional<uint64_t> seed;  // reproducible sampling when set
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;
  int max_tokens = 256;                 // generated tokens at most
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
  bool ignore_eos = false;
  bool want_logprobs = false;  // log-prob of each emitted token
  int top_logprobs = 0;        // and this many best alternatives
  bool greedy() const { return temperature <= 0.0f || top_k == 1; }
  // The next token is the plain argmax and no log-probs are wanted: the logits need not leave the device.
  bool top_only() const {
    return greedy() && presence_penalty == 0.0f && frequency_penalty == 0.0f && !want_logprobs;
  }
};

// Per-request speculation control (an extension field of the HTTP API).
struct SpecControl {
  bool enabled = true;
  int max_draft = -1;  // -1: the engine's setting; 0: off; else at most this many draft tokens per step
};

struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  SpecControl spec;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // top_logprobs alternatives, best first
};

enum class FinishReason { None, Stop, Length, Abort, Error };
inline const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Abort:
      return "abort";
    case FinishReason::Error:
      return "error";
    default:
      return "";
  }
}

// One delivery to the client: the tokens committed in one engine step (several when drafts are accepted).
struct RequestOutput {
  std::string id;
  std::vector<int32_t> tokens;         // new tokens of this step
  std::vector<TokenLogprob> logprobs;  // one per new token when requested
  FinishReason finish = FinishReason::None;
  std::string error;  // when finish == Error
  // Totals so far.
  int prompt_tokens = 0, completion_tokens = 0;
  int drafted_tokens = 0, accepted_tokens = 0, verify_steps = 0;
  double ttft_s = 0;  // time to first token (set once known)
};

using OutputCallback = std::function<void(const RequestOutput&)>;

}  // namespace mtpserve
