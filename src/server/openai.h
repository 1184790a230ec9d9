// The OpenAI-compatible request and response layer, independent of HTTP and of the engine: request JSON ->
// validated ApiRequest (-> GenerationRequest), results -> response / SSE chunk JSON, and OpenAI error
// objects.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/request.h"

namespace mtpserve::api {

using ojson = nlohmann::ordered_json;

// An error answered with an OpenAI error object: {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::string param = "", std::string code = "")
      : std::runtime_error(std::move(message)),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
};
[[noreturn]] void invalid(const std::string& param, const std::string& message, const std::string& code = "");
ojson error_body(const ApiError& e);
ojson error_body(const std::string& message, const std::string& type, const std::string& param = "",
                 const std::string& code = "");

// Parses a request body; malformed JSON (including invalid UTF-8) and non-object bodies are ApiError 400.
ojson parse_body(const std::string& body);

struct ApiRequest {
  bool chat = true;
  std::string model;  // empty: not given
  // /v1/chat/completions
  ojson messages = ojson::array();
  ojson tools = nullptr;
  ojson chat_template_kwargs = ojson::object();
  bool add_generation_prompt = true;
  // /v1/completions: text, or token ids when prompt_is_tokens
  std::string prompt_text;
  std::vector<int32_t> prompt_tokens;
  bool prompt_is_tokens = false;
  bool echo = false;

  int n = 1;
  bool stream = false, include_usage = false;
  std::optional<int64_t> max_tokens;  // validated >= 1 when set
  SamplingParams sampling;            // max_tokens is filled in by resolve_max_tokens()
  SpecControl spec;
  std::vector<std::string> stop;
  bool logprobs = false;  // chat: logprobs=true; completions: logprobs=k given
  int top_logprobs = 0;
  bool skip_special_tokens = true;
  bool return_token_ids = false;  // extension: choices[i].token_ids
};

// Validate a chat / completions request body. Throws ApiError (400) naming the offending field.
ApiRequest parse_chat_request(const ojson& body);
ApiRequest parse_completion_request(const ojson& body);

// Sets sampling.max_tokens from the request and the prompt length: throws ApiError 400
// (code context_length_exceeded) when the prompt plus max_tokens does not fit in max_model_len.
void resolve_max_tokens(ApiRequest& r, int prompt_len, int max_model_len);

// The engine request of choice `index` (of n): seed + index when a seed is given.
GenerationRequest make_generation_request(const ApiRequest& r, const std::string& id, int index,
                                          const std::vector<int32_t>& prompt);

// Totals of one finished choice (or summed over choices).
struct Usage {
  int prompt_tokens = 0, completion_tokens = 0;
  int drafted_tokens = 0, accepted_tokens = 0, verify_steps = 0;
};
ojson usage_json(const Usage& u);

// One choice's logprobs in the endpoint's format. token_text(id) gives a token's text.
using TokenText = std::function<std::string(int32_t)>;
ojson chat_logprobs_json(const std::vector<TokenLogprob>& lps, const TokenText& token_text);
ojson completion_logprobs_json(const std::vector<TokenLogprob>& lps, const TokenText& token_text,
                               size_t text_offset);

struct ChoiceResult {
  std::string text;
  std::string finish_reason;  // "stop" | "length" | "abort" ...
  std::vector<TokenLogprob> logprobs;
  std::vector<int32_t> token_ids;
};

ojson chat_response(const std::string& id, int64_t created, const std::string& model,
                    const std::vector<ChoiceResult>& choices, const Usage& usage, bool with_logprobs,
                    bool with_token_ids, const TokenText& token_text);
ojson completion_response(const std::string& id, int64_t created, const std::string& model,
                          const std::vector<ChoiceResult>& choices, const Usage& usage, bool with_logprobs,
                          bool with_token_ids, const TokenText& token_text);

// Streaming chunks. `role_chunk`: the first chat chunk of a choice (delta {role, content ""}).
ojson chat_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                 const std::optional<std::string>& content, const std::optional<std::string>& finish_reason,
                 bool role_chunk, const ojson& logprobs = nullptr);
ojson completion_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                       const std::string& text, const std::optional<std::string>& finish_reason,
                       const ojson& logprobs = nullptr);
// The final usage chunk of stream_options.include_usage: choices [] and the usage object.
ojson usage_chunk(bool chat, const std::string& id, int64_t created, const std::string& model,
                  const Usage& usage);

// Server-sent events framing: "data: <json>\n\n", and the terminating "data: [DONE]\n\n".
std::string sse_event(const ojson& j);
std::string sse_done();

// True when s is valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool valid_utf8(std::string_view s);

}  // namespace mtpserve::api
