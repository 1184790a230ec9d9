// OpenAI request validation and response JSON. Field semantics follow the OpenAI API reference (and vLLM's
// extensions top_k, min_p, ignore_eos, stop_token_ids, skip_special_tokens, chat_template_kwargs,
// return_token_ids); our own extension is "mtp": {"enabled", "max_draft"}.
#include "server/openai.h"

#include <fmt/format.h>

#include <cmath>
#include <set>

namespace mtpserve::api {

void invalid(const std::string& param, const std::string& message, const std::string& code) {
  throw ApiError(400, message, "invalid_request_error", param, code);
}

ojson error_body(const std::string& message, const std::string& type, const std::string& param,
                 const std::string& code) {
  ojson e = ojson::object();
  e["message"] = message;
  e["type"] = type;
  e["param"] = param.empty() ? ojson(nullptr) : ojson(param);
  e["code"] = code.empty() ? ojson(nullptr) : ojson(code);
  return ojson{{"error", e}};
}

ojson error_body(const ApiError& e) { return error_body(e.what(), e.type, e.param, e.code); }

bool valid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + size_t(len) > n) return false;
    for (int k = 1; k < len; k++) {
      unsigned char d = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += size_t(len);
  }
  return true;
}

ojson parse_body(const std::string& body) {
  if (!valid_utf8(body)) invalid("", "The request body is not valid UTF-8.", "invalid_utf8");
  ojson j;
  try {
    j = ojson::parse(body);
  } catch (const nlohmann::json::exception& e) {  // parse_error, out_of_range (1e999)
    invalid("", fmt::format("We could not parse the JSON body of your request: {}", e.what()),
            "invalid_json");
  }
  if (!j.is_object()) invalid("", "The request body must be a JSON object.", "invalid_json");
  return j;
}

namespace {

const char* type_name(const ojson& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  return "object";
}

[[noreturn]] void wrong_type(const std::string& param, const ojson& v, const char* want) {
  invalid(param, fmt::format("Invalid type for '{}': expected {}, but got {}.", param, want, type_name(v)),
          "invalid_type");
}

// Field readers: absent or null -> nullopt.
const ojson* field(const ojson& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<bool> get_bool(const ojson& o, const char* key) {
  const ojson* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(key, *v, "a boolean");
  return v->get<bool>();
}

std::optional<int64_t> get_int(const ojson& o, const char* key, int64_t lo, int64_t hi) {
  const ojson* v = field(o, key);
  if (!v) return std::nullopt;
  int64_t x;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    x = u > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(u);
  } else if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else {
    wrong_type(key, *v, "an integer");
  }
  if (x < lo || x > hi)
    invalid(key,
            fmt::format("Invalid value for '{}': {} is outside the allowed range [{}, {}].", key, x, lo, hi),
            "invalid_value");
  return x;
}

// lo_open: the lower bound is exclusive.
std::optional<double> get_number(const ojson& o, const char* key, double lo, double hi,
                                 bool lo_open = false) {
  const ojson* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(key, *v, "a number");
  double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    invalid(key,
            fmt::format("Invalid value for '{}': {} is outside the allowed range {}{}, {}].", key, x,
                        lo_open ? "(" : "[", lo, hi),
            "invalid_value");
  return x;
}

std::string content_text(const ojson& content, const std::string& param) {
  if (content.is_null()) return "";
  if (content.is_string()) {
    return content.get<std::string>();
  }
  if (!content.is_array()) wrong_type(param, content, "a string or an array of content parts");
  std::string out;
  for (size_t i = 0; i < content.size(); i++) {
    const auto& part = content[i];
    std::string p = fmt::format("{}[{}]", param, i);
    if (!part.is_object()) wrong_type(p, part, "a content part object");
    const ojson* type = field(part, "type");
    if (!type || !type->is_string()) invalid(p + ".type", fmt::format("Missing or invalid '{}.type'.", p));
    if (type->get<std::string>() != "text")
      invalid(p + ".type",
              fmt::format("Content part type '{}' is not supported by this model (only 'text').",
                          type->get<std::string>()),
              "unsupported_content");
    const ojson* text = field(part, "text");
    if (!text || !text->is_string()) invalid(p + ".text", fmt::format("Missing or invalid '{}.text'.", p));
    if (!out.empty()) out += "\n";
    out += text->get<std::string>();
  }
  return out;
}

void check_fields(const ojson& body, const std::set<std::string>& allowed) {
  for (auto it = body.begin(); it != body.end(); ++it)
    if (!allowed.count(it.key()))
      invalid(it.key(), fmt::format("Unrecognized request argument supplied: {}", it.key()),
              "unknown_parameter");
}

// The fields both endpoints share.
void parse_common(const ojson& body, ApiRequest& r) {
  if (const ojson* m = field(body, "model")) {
    if (!m->is_string()) wrong_type("model", *m, "a string");
    r.model = m->get<std::string>();
  }
  r.n = int(get_int(body, "n", 1, 64).value_or(1));
  r.stream = get_bool(body, "stream").value_or(false);
  if (const ojson* so = field(body, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", *so, "an object");
    if (!r.stream)
      invalid("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is true.");
    check_fields(*so, {"include_usage", "continuous_usage_stats"});
    r.include_usage = get_bool(*so, "include_usage").value_or(false);
  }
  auto& sp = r.sampling;
  sp.temperature = float(get_number(body, "temperature", 0.0, 2.0).value_or(1.0));
  sp.top_p = float(get_number(body, "top_p", 0.0, 1.0, /*lo_open=*/true).value_or(1.0));
  int64_t top_k = get_int(body, "top_k", -1, 1 << 30).value_or(0);
  sp.top_k = top_k < 0 ? 0 : int(top_k);
  sp.min_p = float(get_number(body, "min_p", 0.0, 1.0).value_or(0.0));
  sp.presence_penalty = float(get_number(body, "presence_penalty", -2.0, 2.0).value_or(0.0));
  sp.frequency_penalty = float(get_number(body, "frequency_penalty", -2.0, 2.0).value_or(0.0));
  if (auto seed = get_int(body, "seed", INT64_MIN, INT64_MAX)) sp.seed = uint64_t(*seed);
  sp.ignore_eos = get_bool(body, "ignore_eos").value_or(false);
  if (const ojson* ids = field(body, "stop_token_ids")) {
    if (!ids->is_array()) wrong_type("stop_token_ids", *ids, "an array of integers");
    for (const auto& t : *ids) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
        invalid("stop_token_ids", "'stop_token_ids' must be an array of non-negative token ids.");
      sp.stop_token_ids.push_back(t.get<int32_t>());
    }
  }
  if (const ojson* stop = field(body, "stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const auto& s : *stop) {
        if (!s.is_string()) wrong_type("stop", s, "a string or an array of strings");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      wrong_type("stop", *stop, "a string or an array of strings");
    }
    if (r.stop.size() > 16) invalid("stop", "At most 16 stop sequences are allowed.");
    for (const auto& s : r.stop)
      if (s.empty()) invalid("stop", "Stop sequences must not be empty.");
  }
  if (const ojson* lb = field(body, "logit_bias")) {
    if (!lb->is_object()) wrong_type("logit_bias", *lb, "an object");
    if (!lb->empty()) invalid("logit_bias", "'logit_bias' is not supported.", "unsupported_parameter");
  }
  if (auto ml = get_int(body, "max_tokens", INT64_MIN, INT64_MAX)) {
    if (*ml < 1) invalid("max_tokens", fmt::format("Invalid 'max_tokens': {}; it must be at least 1.", *ml));
    r.max_tokens = *ml;
  }
  r.skip_special_tokens = get_bool(body, "skip_special_tokens").value_or(true);
  r.return_token_ids = get_bool(body, "return_token_ids").value_or(false);
  if (const ojson* mtp = field(body, "mtp")) {
    if (!mtp->is_object()) wrong_type("mtp", *mtp, "an object");
    check_fields(*mtp, {"enabled", "max_draft"});
    r.spec.enabled = get_bool(*mtp, "enabled").value_or(true);
    if (auto md = get_int(*mtp, "max_draft", 0, 64)) r.spec.max_draft = int(*md);
    if (!r.spec.enabled) r.spec.max_draft = 0;
  }
}

// The OpenAI SDKs' `extra_body` lands at the top level; a literal "extra_body" object is merged in as well.
ojson merge_extra_body(const ojson& body) {
  const ojson* eb = field(body, "extra_body");
  if (!eb) return body;
  if (!eb->is_object()) wrong_type("extra_body", *eb, "an object");
  ojson out = body;
  out.erase("extra_body");
  for (auto it = eb->begin(); it != eb->end(); ++it)
    if (!out.contains(it.key())) out[it.key()] = it.value();
  return out;
}

const std::set<std::string> kCommonFields = {"model",
                                             "n",
                                             "stream",
                                             "stream_options",
                                             "temperature",
                                             "top_p",
                                             "top_k",
                                             "min_p",
                                             "seed",
                                             "stop",
                                             "presence_penalty",
                                             "frequency_penalty",
                                             "max_tokens",
                                             "logprobs",
                                             "user",
                                             "logit_bias",
                                             "mtp",
                                             "ignore_eos",
                                             "stop_token_ids",
                                             "skip_special_tokens",
                                             "return_token_ids",
                                             "metadata",
                                             "store",
                                             "service_tier"};

}  // namespace

ApiRequest parse_chat_request(const ojson& raw) {
  ojson body = merge_extra_body(raw);
  auto allowed = kCommonFields;
  for (const char* f :
       {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
        "response_format", "chat_template_kwargs", "add_generation_prompt", "reasoning_effort", "modalities"})
    allowed.insert(f);
  check_fields(body, allowed);
  ApiRequest r;
  r.chat = true;
  parse_common(body, r);
  if (auto mct = get_int(body, "max_completion_tokens", INT64_MIN, INT64_MAX)) {
    if (*mct < 1)
      invalid("max_completion_tokens",
              fmt::format("Invalid 'max_completion_tokens': {}; it must be at least 1.", *mct));
    r.max_tokens = *mct;
  }
  r.logprobs = get_bool(body, "logprobs").value_or(false);
  if (auto tl = get_int(body, "top_logprobs", 0, 20)) {
    if (!r.logprobs) invalid("top_logprobs", "'top_logprobs' requires 'logprobs' to be true.");
    r.top_logprobs = int(*tl);
  }
  const ojson* msgs = field(body, "messages");
  if (!msgs) invalid("messages", "Missing required parameter: 'messages'.", "missing_required_parameter");
  if (!msgs->is_array()) wrong_type("messages", *msgs, "an array");
  if (msgs->empty()) invalid("messages", "'messages' must contain at least one message.", "empty_array");
  static const std::set<std::string> roles = {"system", "developer", "user", "assistant", "tool"};
  for (size_t i = 0; i < msgs->size(); i++) {
    const auto& m = (*msgs)[i];
    std::string p = fmt::format("messages[{}]", i);
    if (!m.is_object()) wrong_type(p, m, "an object");
    const ojson* role = field(m, "role");
    if (!role) invalid(p + ".role", fmt::format("Missing required parameter: '{}.role'.", p));
    if (!role->is_string()) wrong_type(p + ".role", *role, "a string");
    std::string rs = role->get<std::string>();
    if (!roles.count(rs))
      invalid(
          p + ".role",
          fmt::format("Invalid value: '{}'. Supported values are: 'system', 'developer', 'user', 'assistant' "
                      "and 'tool'.",
                      rs),
          "invalid_value");
    const ojson* content = field(m, "content");
    if (!content && rs != "assistant")
      invalid(p + ".content", fmt::format("Missing required parameter: '{}.content'.", p));
    ojson msg = m;
    msg["role"] = rs == "developer" ? "system" : rs;
    msg["content"] = content_text(content ? *content : ojson(nullptr), p + ".content");
    r.messages.push_back(std::move(msg));
  }
  if (const ojson* tools = field(body, "tools")) {
    if (!tools->is_array()) wrong_type("tools", *tools, "an array");
    if (!tools->empty()) r.tools = *tools;
  }
  if (const ojson* rf = field(body, "response_format")) {
    if (!rf->is_object()) wrong_type("response_format", *rf, "an object");
    const ojson* t = field(*rf, "type");
    if (!t || !t->is_string() || t->get<std::string>() != "text")
      invalid("response_format", "Only response_format {\"type\": \"text\"} is supported.",
              "unsupported_parameter");
  }
  if (const ojson* k = field(body, "chat_template_kwargs")) {
    if (!k->is_object()) wrong_type("chat_template_kwargs", *k, "an object");
    r.chat_template_kwargs = *k;
  }
  r.add_generation_prompt = get_bool(body, "add_generation_prompt").value_or(true);
  return r;
}

ApiRequest parse_completion_request(const ojson& raw) {
  ojson body = merge_extra_body(raw);
  auto allowed = kCommonFields;
  for (const char* f : {"prompt", "echo", "suffix", "best_of"}) allowed.insert(f);
  check_fields(body, allowed);
  ApiRequest r;
  r.chat = false;
  parse_common(body, r);
  if (auto lp = get_int(body, "logprobs", 0, 20)) {
    r.logprobs = true;
    r.top_logprobs = int(*lp);
  }
  r.echo = get_bool(body, "echo").value_or(false);
  if (r.echo) invalid("echo", "'echo' is not supported.", "unsupported_parameter");
  if (const ojson* s = field(body, "suffix")) {
    if (!s->is_string()) wrong_type("suffix", *s, "a string");
    if (!s->get<std::string>().empty())
      invalid("suffix", "'suffix' is not supported.", "unsupported_parameter");
  }
  if (auto bo = get_int(body, "best_of", 1, 64); bo && *bo != r.n)
    invalid("best_of", "'best_of' must equal 'n' (best-of sampling is not supported).",
            "unsupported_parameter");
  const ojson* p = field(body, "prompt");
  if (!p) invalid("prompt", "Missing required parameter: 'prompt'.", "missing_required_parameter");
  auto set_tokens = [&](const ojson& arr) {
    for (const auto& t : arr) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
        invalid("prompt", "A token prompt must be an array of non-negative integer token ids.");
      r.prompt_tokens.push_back(t.get<int32_t>());
    }
    r.prompt_is_tokens = true;
  };
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
  } else if (p->is_array()) {
    if (p->empty()) invalid("prompt", "'prompt' must not be empty.", "empty_array");
    if ((*p)[0].is_number()) {
      set_tokens(*p);
    } else {
      if (p->size() > 1) invalid("prompt", "Batched prompts are not supported; send one prompt per request.");
      const auto& e = (*p)[0];
      if (e.is_string())
        r.prompt_text = e.get<std::string>();
      else if (e.is_array())
        set_tokens(e);
      else
        wrong_type("prompt", e, "a string or an array of token ids");
    }
  } else {
    wrong_type("prompt", *p, "a string or an array of token ids");
  }
  if (!r.prompt_is_tokens && r.prompt_text.empty()) invalid("prompt", "'prompt' must not be empty.");
  if (r.prompt_is_tokens && r.prompt_tokens.empty()) invalid("prompt", "'prompt' must not be empty.");
  return r;
}

void resolve_max_tokens(ApiRequest& r, int prompt_len, int max_model_len) {
  const char* param = r.chat ? "messages" : "prompt";
  if (prompt_len >= max_model_len)
    invalid(
        param,
        fmt::format("This model's maximum context length is {} tokens. However, your prompt has {} tokens "
                    "(at least one token must be left for the completion).",
                    max_model_len, prompt_len),
        "context_length_exceeded");
  int64_t room = int64_t(max_model_len) - prompt_len;
  if (!r.max_tokens) {
    r.sampling.max_tokens = int(room);
    return;
  }
  if (*r.max_tokens > room)
    invalid(r.chat ? "max_tokens" : "max_tokens",
            fmt::format(
                "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in "
                "the {}, {} for the completion). Please reduce the length of the {} or the completion.",
                max_model_len, int64_t(prompt_len) + *r.max_tokens, prompt_len, param, *r.max_tokens, param),
            "context_length_exceeded");
  r.sampling.max_tokens = int(*r.max_tokens);
}

GenerationRequest make_generation_request(const ApiRequest& r, const std::string& id, int index,
                                          const std::vector<int32_t>& prompt) {
  GenerationRequest g;
  g.id = id;
  g.prompt = prompt;
  g.sampling = r.sampling;
  if (g.sampling.seed) g.sampling.seed = *g.sampling.seed + uint64_t(index);
  g.sampling.want_logprobs = r.logprobs;
  g.sampling.top_logprobs = r.top_logprobs;
  g.spec = r.spec;
  return g;
}

ojson usage_json(const Usage& u) {
  ojson j = ojson::object();
  j["prompt_tokens"] = u.prompt_tokens;
  j["completion_tokens"] = u.completion_tokens;
  j["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  j["completion_tokens_details"] = {{"reasoning_tokens", 0},
                                    {"accepted_prediction_tokens", u.accepted_tokens},
                                    {"rejected_prediction_tokens", u.drafted_tokens - u.accepted_tokens}};
  // Extension: speculative decoding counters. acceptance_length = tokens per verify step.
  double al = u.verify_steps > 0 ? double(u.accepted_tokens + u.verify_steps) / u.verify_steps : 0.0;
  j["mtp"] = {{"drafted_tokens", u.drafted_tokens},
              {"accepted_tokens", u.accepted_tokens},
              {"verify_steps", u.verify_steps},
              {"acceptance_length", std::round(al * 1000) / 1000}};
  return j;
}

namespace {
ojson bytes_of(const std::string& s) {
  ojson b = ojson::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}
}  // namespace

ojson chat_logprobs_json(const std::vector<TokenLogprob>& lps, const TokenText& token_text) {
  ojson content = ojson::array();
  for (const auto& lp : lps) {
    std::string t = token_text(lp.token);
    ojson e = {
        {"token", t}, {"logprob", lp.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", ojson::array()}};
    for (const auto& [id, l] : lp.top) {
      std::string tt = token_text(id);
      e["top_logprobs"].push_back({{"token", tt}, {"logprob", l}, {"bytes", bytes_of(tt)}});
    }
    content.push_back(std::move(e));
  }
  return ojson{{"content", content}, {"refusal", nullptr}};
}

ojson completion_logprobs_json(const std::vector<TokenLogprob>& lps, const TokenText& token_text,
                               size_t text_offset) {
  ojson tokens = ojson::array(), token_logprobs = ojson::array(), top = ojson::array(),
        offsets = ojson::array();
  for (const auto& lp : lps) {
    std::string t = token_text(lp.token);
    tokens.push_back(t);
    token_logprobs.push_back(lp.logprob);
    ojson alt = ojson::object();
    for (const auto& [id, l] : lp.top) alt[token_text(id)] = l;
    top.push_back(std::move(alt));
    offsets.push_back(text_offset);
    text_offset += t.size();
  }
  return ojson{{"tokens", tokens},
               {"token_logprobs", token_logprobs},
               {"top_logprobs", top},
               {"text_offset", offsets}};
}

ojson chat_response(const std::string& id, int64_t created, const std::string& model,
                    const std::vector<ChoiceResult>& choices, const Usage& usage, bool with_logprobs,
                    bool with_token_ids, const TokenText& token_text) {
  ojson cs = ojson::array();
  for (size_t i = 0; i < choices.size(); i++) {
    const auto& c = choices[i];
    ojson ch = ojson::object();
    ch["index"] = i;
    ch["message"] = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
    ch["logprobs"] = with_logprobs ? chat_logprobs_json(c.logprobs, token_text) : ojson(nullptr);
    ch["finish_reason"] = c.finish_reason;
    if (with_token_ids) ch["token_ids"] = c.token_ids;
    cs.push_back(std::move(ch));
  }
  return ojson{
      {"id", id},      {"object", "chat.completion"}, {"created", created},           {"model", model},
      {"choices", cs}, {"usage", usage_json(usage)},  {"system_fingerprint", nullptr}};
}

ojson completion_response(const std::string& id, int64_t created, const std::string& model,
                          const std::vector<ChoiceResult>& choices, const Usage& usage, bool with_logprobs,
                          bool with_token_ids, const TokenText& token_text) {
  ojson cs = ojson::array();
  for (size_t i = 0; i < choices.size(); i++) {
    const auto& c = choices[i];
    ojson ch = ojson::object();
    ch["index"] = i;
    ch["text"] = c.text;
    ch["logprobs"] = with_logprobs ? completion_logprobs_json(c.logprobs, token_text, 0) : ojson(nullptr);
    ch["finish_reason"] = c.finish_reason;
    if (with_token_ids) ch["token_ids"] = c.token_ids;
    cs.push_back(std::move(ch));
  }
  return ojson{{"id", id},      {"object", "text_completion"}, {"created", created}, {"model", model},
               {"choices", cs}, {"usage", usage_json(usage)}};
}

// The envelope of one streamed chunk carrying a single choice.
static ojson chunk_envelope(const std::string& id, const char* object, int64_t created,
                            const std::string& model, const ojson& choice) {
  return ojson{{"id", id},
               {"object", object},
               {"created", created},
               {"model", model},
               {"choices", ojson::array({choice})}};
}

ojson chat_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                 const std::optional<std::string>& content, const std::optional<std::string>& finish_reason,
                 bool role_chunk, const ojson& logprobs) {
  ojson delta = ojson::object();
  if (role_chunk) delta["role"] = "assistant";
  if (content) delta["content"] = *content;
  ojson ch = ojson::object();
  ch["index"] = index;
  ch["delta"] = delta;
  ch["logprobs"] = logprobs;
  ch["finish_reason"] = finish_reason ? ojson(*finish_reason) : ojson(nullptr);
  return chunk_envelope(id, "chat.completion.chunk", created, model, ch);
}

ojson completion_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                       const std::string& text, const std::optional<std::string>& finish_reason,
                       const ojson& logprobs) {
  ojson ch = ojson::object();
  ch["index"] = index;
  ch["text"] = text;
  ch["logprobs"] = logprobs;
  ch["finish_reason"] = finish_reason ? ojson(*finish_reason) : ojson(nullptr);
  return chunk_envelope(id, "text_completion", created, model, ch);
}

ojson usage_chunk(bool chat, const std::string& id, int64_t created, const std::string& model,
                  const Usage& usage) {
  return ojson{{"id", id},
               {"object", chat ? "chat.completion.chunk" : "text_completion"},
               {"created", created},
               {"model", model},
               {"choices", ojson::array()},
               {"usage", usage_json(usage)}};
}

std::string sse_event(const ojson& j) {
  // dump() escapes control characters, so the payload never contains a raw newline.
  return "data: " + j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n\n";
}

std::string sse_done() { return "data: [DONE]\n\n"; }

}  // namespace mtpserve::api
