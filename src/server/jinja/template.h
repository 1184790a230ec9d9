// A Jinja2 subset for Hugging Face chat templates: parse once, render many times.
//
//   auto t = jinja::Template::parse(source, "chat_template.jinja");
//   std::string prompt = t.render({{"messages", messages}, {"add_generation_prompt", true}});
//
// Whitespace handling is transformers' chat-template environment (trim_blocks, lstrip_blocks). Values
// behave like Python's (truthiness, str(), equality), since templates are written against transformers.
// Every error (syntax, undefined misuse, unsupported construct, raise_exception) is an mtpserve::Error
// whose message starts with "<name>:<line>:<column>: ".
#pragma once
#include <nlohmann/json.hpp>

#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "server/jinja/ast.h"

namespace mtpserve::jinja {

struct RenderOptions {
  // Clock for strftime_now(); defaults to the system clock. Tests inject a fixed time.
  std::function<std::time_t()> now;
  // Format strftime_now in UTC instead of local time (transformers uses local time).
  bool utc = false;
};

class Template {
 public:
  static Template parse(std::string_view source, std::string name = "template");

  // `context` is a JSON object whose members become template variables. Use ordered_json so dicts keep
  // the document's key order (tojson and iteration order depend on it, as in Python).
  std::string render(const nlohmann::ordered_json& context, const RenderOptions& options = {}) const;
  std::string render(const Dict& variables, const RenderOptions& options = {}) const;

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::shared_ptr<const Body> body_;  // shared: Templates are cheap to copy
};

}  // namespace mtpserve::jinja
