// `mtpserve tokenize`: encode/decode text with a tokenizer.json, for golden tests against HF and debugging.
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "server/tokenizer.h"

namespace mtpserve::cli {

namespace {

struct TokenizeOptions {
  std::string tokenizer, input, output, text;
};

nlohmann::json encode_one(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/true);
  std::vector<int32_t> plain = tok.encode(text, /*add_special_tokens=*/false);
  return {
      {"ids", ids}, {"ids_nospecial", plain}, {"decoded", tok.decode(plain, /*skip_special_tokens=*/false)}};
}

void run_tokenize(const TokenizeOptions& o) {
  Tokenizer tok = Tokenizer::load(o.tokenizer);
  if (!o.text.empty()) {
    std::cout << encode_one(tok, o.text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  }
  if (o.input.empty()) return;
  MTP_CHECK(!o.output.empty(), "tokenize: --input needs --output");
  std::ifstream in(o.input);
  MTP_CHECK(in.good(), "cannot open {}", o.input);
  std::ofstream out(o.output);
  MTP_CHECK(out.good(), "cannot write {}", o.output);
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    MTP_CHECK(!j.is_discarded() && j.is_string(), "{}:{}: not a JSON string", o.input, n);
    out << encode_one(tok, j.get<std::string>()).dump() << "\n";
  }
  MTP_CHECK(out.good(), "cannot write {}", o.output);
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto opts = std::make_shared<TokenizeOptions>();
  CLI::App* cmd =
      app.add_subcommand("tokenize", "Encode and decode text with a tokenizer.json (as HF tokenizers)");
  cmd->add_option("--tokenizer", opts->tokenizer, "tokenizer.json file, or a model directory holding one")
      ->required();
  cmd->add_option("--input", opts->input, "input file: JSON lines, each line one JSON string to encode");
  cmd->add_option(
      "--output", opts->output,
      "output file: JSON lines {\"ids\":[...],\"ids_nospecial\":[...],\"decoded\":\"...\"}, one per "
      "input line (decoded = decode(ids_nospecial))");
  cmd->add_option("--text", opts->text, "encode this text and print the result as JSON on stdout");
  cmd->callback([opts] { run_tokenize(*opts); });
}

}  // namespace mtpserve::cli
