// The OpenAI layer: request validation (every bad-input case -> ApiError with status and param), the mapping
// to GenerationRequest, response/chunk JSON, SSE framing, and the metrics text.
#include <gtest/gtest.h>

#include "server/metrics.h"
#include "server/openai.h"

namespace mtpserve::api {
namespace {

ojson chat(ojson extra = ojson::object()) {
  ojson b = {{"model", "m"}, {"messages", ojson::array({{{"role", "user"}, {"content", "hi"}}})}};
  for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
  return b;
}
ojson completion(ojson extra = ojson::object()) {
  ojson b = {{"prompt", "The history of"}};
  for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
  return b;
}

// Expects an ApiError with `status` naming `param`.
template <typename F>
void expect_error(F f, int status, const std::string& param, const std::string& what = "") {
  try {
    f();
    ADD_FAILURE() << "no error (want " << status << " for '" << param << "')";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, status) << e.what();
    EXPECT_EQ(e.param, param) << e.what();
    if (!what.empty()) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    auto j = error_body(e);
    EXPECT_TRUE(j["error"].contains("message") && j["error"].contains("type") &&
                j["error"].contains("param") && j["error"].contains("code"));
  }
}

TEST(ServerOpenAI, ParsesBody) {
  expect_error([] { parse_body("{bad"); }, 400, "");
  expect_error([] { parse_body("[1,2]"); }, 400, "");
  expect_error([] { parse_body("{\"a\": 1e999}"); }, 400, "");
  expect_error([] { parse_body("{\"a\": \"\xff\"}"); }, 400, "", "UTF-8");
  expect_error([] { parse_body("{\"a\": \"\\ud800\"}"); }, 400, "");
  EXPECT_EQ(parse_body("{\"b\": 1, \"a\": 2}").begin().key(), "b");  // key order survives
}

TEST(ServerOpenAI, ChatValidation) {
  auto C = [](ojson e) { return [e] { parse_chat_request(chat(e)); }; };
  expect_error([] { parse_chat_request(ojson{{"model", "m"}}); }, 400, "messages");
  expect_error(C({{"messages", ojson::array()}}), 400, "messages");
  expect_error(C({{"messages", "hi"}}), 400, "messages");
  expect_error(C({{"messages", {{{"role", "robot"}, {"content", "x"}}}}}), 400, "messages[0].role");
  expect_error(C({{"messages", {{{"role", 3}, {"content", "x"}}}}}), 400, "messages[0].role");
  expect_error(C({{"messages", {{{"content", "x"}}}}}), 400, "messages[0].role");
  expect_error(C({{"messages", {{{"role", "user"}}}}}), 400, "messages[0].content");
  expect_error(C({{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}}), 400,
               "messages[0].content[0].type");
  expect_error(C({{"max_tokens", -5}}), 400, "max_tokens");
  expect_error(C({{"max_tokens", 0}}), 400, "max_tokens");
  expect_error(C({{"max_tokens", "10"}}), 400, "max_tokens");
  expect_error(C({{"max_tokens", 1.5}}), 400, "max_tokens");
  expect_error(C({{"max_completion_tokens", -1}}), 400, "max_completion_tokens");
  expect_error(C({{"temperature", -0.5}}), 400, "temperature");
  expect_error(C({{"temperature", "NaN"}}), 400, "temperature");
  expect_error(C({{"temperature", 2.5}}), 400, "temperature");
  expect_error(C({{"top_p", 0}}), 400, "top_p");
  expect_error(C({{"top_p", 1.01}}), 400, "top_p");
  expect_error(C({{"min_p", 2}}), 400, "min_p");
  expect_error(C({{"top_k", -2}}), 400, "top_k");
  expect_error(C({{"presence_penalty", 3}}), 400, "presence_penalty");
  expect_error(C({{"n", 0}}), 400, "n");
  expect_error(C({{"stream", "yes"}}), 400, "stream");
  expect_error(C({{"stream_options", {{"include_usage", true}}}}), 400, "stream_options");
  expect_error(C({{"stream", true}, {"stream_options", {{"foo", true}}}}), 400, "foo");
  expect_error(C({{"stop", 5}}), 400, "stop");
  expect_error(C({{"stop", {"a", 1}}}), 400, "stop");
  expect_error(C({{"stop", ""}}), 400, "stop");
  expect_error(C({{"top_logprobs", 3}}), 400, "top_logprobs");  // needs logprobs
  expect_error(C({{"logprobs", true}, {"top_logprobs", 21}}), 400, "top_logprobs");
  expect_error(C({{"frobnicate", 1}}), 400, "frobnicate");
  expect_error(C({{"mtp", {{"enabled", "no"}}}}), 400, "enabled");
  expect_error(C({{"mtp", {{"depth", 2}}}}), 400, "depth");
  expect_error(C({{"mtp", {{"max_draft", -1}}}}), 400, "max_draft");
  expect_error(C({{"logit_bias", {{"5", 10}}}}), 400, "logit_bias");
  expect_error(C({{"response_format", {{"type", "json_object"}}}}), 400, "response_format");
  expect_error(C({{"model", 7}}), 400, "model");
}

TEST(ServerOpenAI, ChatMapping) {
  auto r = parse_chat_request(chat({{"max_completion_tokens", 7},
                                    {"temperature", 0},
                                    {"top_p", 0.5},
                                    {"top_k", -1},
                                    {"min_p", 0.1},
                                    {"seed", 42},
                                    {"n", 3},
                                    {"stop", "END"},
                                    {"stream", true},
                                    {"stream_options", {{"include_usage", true}}},
                                    {"logprobs", true},
                                    {"top_logprobs", 2},
                                    {"presence_penalty", 0.5},
                                    {"frequency_penalty", -0.5},
                                    {"mtp", {{"enabled", true}, {"max_draft", 2}}},
                                    {"user", nullptr}}));
  EXPECT_TRUE(r.chat);
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_TRUE(r.sampling.greedy());
  auto rn = parse_chat_request(chat({{"temperature", nullptr}, {"max_tokens", nullptr}}));  // null == absent
  EXPECT_FLOAT_EQ(rn.sampling.temperature, 1.0f);
  EXPECT_FALSE(rn.max_tokens.has_value());
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.stop, std::vector<std::string>{"END"});
  EXPECT_TRUE(r.stream && r.include_usage && r.logprobs);
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_EQ(r.spec.max_draft, 2);
  EXPECT_TRUE(r.spec.enabled);
  auto g1 = make_generation_request(r, "x-1", 1, {2, 5, 6});
  EXPECT_EQ(g1.sampling.seed, std::optional<uint64_t>(43));
  EXPECT_TRUE(g1.sampling.want_logprobs);
  EXPECT_EQ(g1.sampling.top_logprobs, 2);
  EXPECT_EQ(g1.prompt.size(), 3u);

  // mtp via a literal extra_body object; developer -> system; content parts joined.
  auto r2 = parse_chat_request(
      ojson{{"messages",
             {{{"role", "developer"}, {"content", "be brief"}},
              {{"role", "user"},
               {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
            {"extra_body", {{"mtp", {{"enabled", false}}}}}});
  EXPECT_FALSE(r2.spec.enabled);
  EXPECT_EQ(r2.spec.max_draft, 0);
  EXPECT_EQ(r2.messages[0]["role"], "system");
  EXPECT_EQ(r2.messages[1]["content"], "a\nb");
  EXPECT_FALSE(r2.max_tokens.has_value());
}

TEST(ServerOpenAI, CompletionValidationAndMapping) {
  auto P = [](ojson e) { return [e] { parse_completion_request(completion(e)); }; };
  expect_error([] { parse_completion_request(ojson{{"max_tokens", 3}}); }, 400, "prompt");
  expect_error(P({{"prompt", ""}}), 400, "prompt");
  expect_error(P({{"prompt", ojson::array()}}), 400, "prompt");
  expect_error(P({{"prompt", {1, -2}}}), 400, "prompt");
  expect_error(P({{"prompt", {"a", "b"}}}), 400, "prompt");
  expect_error(P({{"prompt", 12}}), 400, "prompt");
  expect_error(P({{"logprobs", true}}), 400, "logprobs");
  expect_error(P({{"logprobs", 21}}), 400, "logprobs");
  expect_error(P({{"echo", true}}), 400, "echo");
  expect_error(P({{"messages", ojson::array()}}), 400, "messages");  // a chat field on completions
  auto r =
      parse_completion_request(completion({{"prompt", {2, 651, 7}}, {"logprobs", 3}, {"stop", {"a", "b"}}}));
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{2, 651, 7}));
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.stop.size(), 2u);
  auto r2 = parse_completion_request(completion({{"prompt", {{4, 5}}}, {"mtp", {{"max_draft", 1}}}}));
  EXPECT_EQ(r2.prompt_tokens, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(r2.spec.max_draft, 1);
}

TEST(ServerOpenAI, MaxTokensAgainstContext) {
  auto r = parse_completion_request(completion());
  resolve_max_tokens(r, 10, 100);
  EXPECT_EQ(r.sampling.max_tokens, 90);  // default: the rest of the context
  auto r2 = parse_completion_request(completion({{"max_tokens", 91}}));
  expect_error([&] { resolve_max_tokens(r2, 10, 100); }, 400, "max_tokens", "maximum context length");
  auto r3 = parse_completion_request(completion({{"max_tokens", 90}}));
  resolve_max_tokens(r3, 10, 100);
  EXPECT_EQ(r3.sampling.max_tokens, 90);
  auto r4 = parse_completion_request(completion({{"max_tokens", int64_t(1) << 40}}));
  expect_error([&] { resolve_max_tokens(r4, 10, 100); }, 400, "max_tokens");
  expect_error([&] { resolve_max_tokens(r3, 100, 100); }, 400, "prompt", "maximum context length");
}

TEST(ServerOpenAI, SseFraming) {
  ojson j = {{"text", "line one\nline two\r\n\n"}, {"x", 1}};
  std::string e = sse_event(j);
  ASSERT_EQ(e.rfind("data: ", 0), 0u);
  ASSERT_GE(e.size(), 8u);
  EXPECT_EQ(e.substr(e.size() - 2), "\n\n");
  EXPECT_EQ(e.find('\n'), e.size() - 2);  // the payload is one line
  EXPECT_EQ(ojson::parse(e.substr(6)), j);
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  // Invalid UTF-8 inside a payload is replaced, never an exception mid-stream.
  EXPECT_NO_THROW(sse_event(ojson{{"t", std::string("\xe4\xbd")}}));
}

TEST(ServerOpenAI, ResponsesAndChunks) {
  auto tt = [](int32_t id) {
    std::string s = std::to_string(id);
    s.insert(s.begin(), 't');
    return s;
  };
  std::vector<ChoiceResult> cs = {{"hello", "stop", {{5, -0.5f, {{5, -0.5f}, {6, -1.5f}}}}, {5}}};
  Usage u{4, 1, 6, 3, 2};
  auto r = chat_response("id1", 7, "m", cs, u, true, true, tt);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "hello");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["choices"][0]["logprobs"]["content"][0]["token"], "t5");
  EXPECT_EQ(r["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"], "t6");
  EXPECT_EQ(r["choices"][0]["token_ids"], ojson::array({5}));
  EXPECT_EQ(r["usage"]["total_tokens"], 5);
  EXPECT_EQ(r["usage"]["completion_tokens_details"]["accepted_prediction_tokens"], 3);
  EXPECT_EQ(r["usage"]["completion_tokens_details"]["rejected_prediction_tokens"], 3);
  EXPECT_DOUBLE_EQ(r["usage"]["mtp"]["acceptance_length"].get<double>(), 2.5);
  auto c = completion_response("id2", 7, "m", cs, u, true, false, tt);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "hello");
  EXPECT_EQ(c["choices"][0]["logprobs"]["tokens"][0], "t5");
  EXPECT_EQ(c["choices"][0]["logprobs"]["top_logprobs"][0]["t6"], -1.5f);
  EXPECT_FALSE(c["choices"][0].contains("token_ids"));
  auto ch = chat_chunk("id1", 7, "m", 2, std::string(), std::nullopt, true);
  EXPECT_EQ(ch["object"], "chat.completion.chunk");
  EXPECT_EQ(ch["choices"][0]["index"], 2);
  EXPECT_EQ(ch["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(ch["choices"][0]["finish_reason"].is_null());
  auto fin = chat_chunk("id1", 7, "m", 0, std::nullopt, std::string("length"), false);
  EXPECT_TRUE(fin["choices"][0]["delta"].empty());
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
  auto uc = usage_chunk(false, "id2", 7, "m", u);
  EXPECT_TRUE(uc["choices"].empty());
  EXPECT_EQ(uc["usage"]["prompt_tokens"], 4);
}

TEST(ServerOpenAI, Utf8Validation) {
  EXPECT_TRUE(valid_utf8("plain ascii"));
  EXPECT_TRUE(valid_utf8("caf\xc3\xa9 \xe4\xbd\xa0 \xf0\x9f\x98\x80"));
  EXPECT_FALSE(valid_utf8("\xc3"));
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(valid_utf8("\xff"));
}

TEST(ServerMetrics, PrometheusText) {
  Metrics m;
  m.request_finished("stop", 0.05, 0.01, 0.5, 10);
  m.request_finished("length", 0.2, 0.02, 1.0, 20);
  m.http_response(200);
  m.http_response(400);
  EngineStats s;
  s.running = 2;
  s.full_pages_used = 3;
  s.full_pages_total = 10;
  s.sliding_pages_total = 8;
  s.verify_steps = 4;
  s.accepted_tokens = 6;
  ModelInfo info;
  std::string t = m.render(s, info, "tiny");
  EXPECT_NE(t.find("mtpserve_requests_running{model_name=\"tiny\"} 2\n"), std::string::npos) << t;
  EXPECT_NE(t.find("mtpserve_kv_pages_free{model_name=\"tiny\",pool=\"full\"} 7\n"), std::string::npos);
  EXPECT_NE(t.find("mtpserve_kv_pages_free{model_name=\"tiny\",pool=\"sliding\"} 8\n"), std::string::npos);
  EXPECT_NE(t.find("mtpserve_spec_acceptance_length{model_name=\"tiny\"} 2.5\n"), std::string::npos);
  EXPECT_NE(t.find("mtpserve_time_to_first_token_seconds_bucket{le=\"0.06\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("mtpserve_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("mtpserve_time_to_first_token_seconds_count 2\n"), std::string::npos);
  EXPECT_NE(t.find("mtpserve_http_responses_total{code=\"400\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("finished_reason=\"length\"} 1\n"), std::string::npos);
}

}  // namespace
}  // namespace mtpserve::api
