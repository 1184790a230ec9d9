#include "server/chat_template.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace mtpserve {

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  MTP_CHECK(in.good(), "cannot open {}", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The special tokens transformers puts in special_tokens_map. tokenizer_config.json stores each as a
// string or as an AddedToken object {"content": ...}.
nlohmann::ordered_json special_tokens_from_config(const nlohmann::ordered_json& config) {
  static const char* const kNames[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};
  auto out = nlohmann::ordered_json::object();
  for (const char* name : kNames) {
    auto it = config.find(name);
    if (it == config.end() || it->is_null()) continue;
    if (it->is_string())
      out[name] = *it;
    else if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
      out[name] = (*it)["content"];
  }
  return out;
}

}  // namespace

ChatTemplate ChatTemplate::from_source(std::string_view source, std::string name,
                                       nlohmann::ordered_json special_tokens) {
  MTP_CHECK(special_tokens.is_object(), "{}: special tokens must be a JSON object", name);
  ChatTemplate t;
  t.template_ = jinja::Template::parse(source, std::move(name));
  t.special_tokens_ = std::move(special_tokens);
  return t;
}

ChatTemplate ChatTemplate::load(const std::filesystem::path& model_dir) {
  const auto jinja_path = model_dir / "chat_template.jinja";
  const auto config_path = model_dir / "tokenizer_config.json";
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (std::filesystem::exists(config_path)) {
    try {
      config = nlohmann::ordered_json::parse(read_file(config_path));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: invalid JSON: {}", config_path.string(), e.what());
    }
  }
  if (std::filesystem::exists(jinja_path))
    return from_source(read_file(jinja_path), jinja_path.string(), special_tokens_from_config(config));

  auto it = config.find("chat_template");
  MTP_CHECK(it != config.end(),
            "{}: no chat template (neither chat_template.jinja nor \"chat_template\" in {})",
            model_dir.string(), config_path.string());
  std::string source;
  if (it->is_string()) {
    source = *it;
  } else if (it->is_array()) {
    // Several named templates: transformers uses the one named "default".
    for (const auto& entry : *it)
      if (entry.value("name", "") == "default" && entry.contains("template")) source = entry["template"];
    MTP_CHECK(!source.empty(), "{}: \"chat_template\" has no template named \"default\"",
              config_path.string());
  } else {
    fail("{}: \"chat_template\" must be a string or a list of named templates", config_path.string());
  }
  return from_source(source, config_path.string() + ":chat_template", special_tokens_from_config(config));
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                                 bool add_generation_prompt, const nlohmann::ordered_json& extra_kwargs,
                                 const jinja::RenderOptions& options) const {
  MTP_CHECK(messages.is_array(), "{}: messages must be a JSON array", name());
  MTP_CHECK(tools.is_null() || tools.is_array(), "{}: tools must be a JSON array or null", name());
  MTP_CHECK(extra_kwargs.is_null() || extra_kwargs.is_object(), "{}: template kwargs must be a JSON object",
            name());
  // The same variables, in the same precedence, as transformers: special tokens, then kwargs, with the
  // named arguments set last.
  nlohmann::ordered_json context = special_tokens_;
  if (extra_kwargs.is_object())
    for (auto it = extra_kwargs.begin(); it != extra_kwargs.end(); ++it) context[it.key()] = it.value();
  context["messages"] = messages;
  context["tools"] = tools;
  if (!context.contains("documents")) context["documents"] = nullptr;
  context["add_generation_prompt"] = add_generation_prompt;
  return template_.render(context, options);
}

}  // namespace mtpserve
