// The checkpoint's chat template, rendered with the variables transformers' apply_chat_template
// provides: messages, tools, documents, add_generation_prompt, the special tokens of
// tokenizer_config.json (bos_token, eos_token, ...) and caller kwargs such as enable_thinking.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

#include "server/jinja/template.h"

namespace mtpserve {

class ChatTemplate {
 public:
  // Reads <model_dir>/chat_template.jinja, or else "chat_template" from tokenizer_config.json, and the
  // special tokens from tokenizer_config.json. Throws mtpserve::Error naming the file on failure.
  static ChatTemplate load(const std::filesystem::path& model_dir);

  // A template from source text; `special_tokens` maps names like "bos_token" to their text.
  static ChatTemplate from_source(std::string_view source, std::string name,
                                  nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object());

  // `messages`: the OpenAI-style message list; `tools`: a list of tool schemas, or null when the
  // request has none (transformers passes None); `extra_kwargs`: an object of further variables.
  // Parse requests with nlohmann::ordered_json: dict key order reaches the prompt through tojson.
  std::string render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                     bool add_generation_prompt,
                     const nlohmann::ordered_json& extra_kwargs = nlohmann::ordered_json::object(),
                     const jinja::RenderOptions& options = {}) const;

  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }
  void set_special_tokens(nlohmann::ordered_json tokens) { special_tokens_ = std::move(tokens); }
  const std::string& name() const { return template_.name(); }

 private:
  jinja::Template template_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
};

}  // namespace mtpserve
