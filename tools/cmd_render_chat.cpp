// `mtpserve render-chat`: renders a chat template for each request of a JSON-lines file. Used by the
// golden tests against @huggingface/jinja and for debugging templates.
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "server/chat_template.h"

namespace mtpserve::cli {

void add_render_chat_command(CLI::App& app) {
  struct Options {
    std::string template_path, input_path, output_path;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* cmd =
      app.add_subcommand("render-chat", "Render a chat template for each request of a JSON-lines file");
  cmd->add_option("--template", opts->template_path, "Chat template file (e.g. <model>/chat_template.jinja)")
      ->required();
  cmd->add_option(
         "--input", opts->input_path,
         "JSON lines, each {\"messages\": [...], \"tools\": [...]?, \"add_generation_prompt\": bool, "
         "\"kwargs\": {...}?, \"bos_token\": \"<bos>\"?, \"eos_token\": ...?}")
      ->required();
  cmd->add_option("--output", opts->output_path,
                  "JSON lines written here, one {\"text\": ...} or {\"error\": ...} per input line")
      ->required();
  cmd->callback([opts] {
    std::ifstream tin(opts->template_path, std::ios::binary);
    MTP_CHECK(tin.good(), "cannot open template {}", opts->template_path);
    std::stringstream source;
    source << tin.rdbuf();
    std::ifstream in(opts->input_path);
    MTP_CHECK(in.good(), "cannot open input {}", opts->input_path);
    std::ofstream out(opts->output_path, std::ios::binary);
    MTP_CHECK(out.good(), "cannot write output {}", opts->output_path);

    // Parse once; a syntax error is reported for every line so the output stays aligned with the input.
    std::optional<ChatTemplate> tmpl;
    std::string parse_error;
    try {
      tmpl = ChatTemplate::from_source(source.str(), opts->template_path);
    } catch (const Error& e) {
      parse_error = e.what();
    }
    std::string line;
    size_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::ordered_json result;
      try {
        if (!tmpl) throw Error(parse_error);
        auto req = nlohmann::ordered_json::parse(line);
        auto special = nlohmann::ordered_json::object();
        for (auto it = req.begin(); it != req.end(); ++it)
          if (it.key().size() > 6 && it.key().ends_with("_token")) special[it.key()] = it.value();
        tmpl->set_special_tokens(special);
        result["text"] = tmpl->render(req.value("messages", nlohmann::ordered_json::array()),
                                      req.value("tools", nlohmann::ordered_json()),
                                      req.value("add_generation_prompt", false),
                                      req.value("kwargs", nlohmann::ordered_json::object()));
      } catch (const Error& e) {
        result["error"] = e.what();
      } catch (const nlohmann::json::exception& e) {
        result["error"] = fmt::format("{}:{}: invalid request: {}", opts->input_path, line_no, e.what());
      }
      out << result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    }
  });
}

}  // namespace mtpserve::cli
