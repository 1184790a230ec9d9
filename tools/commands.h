// The mtpserve subcommands. Each lives in its own tools/cmd_*.cpp and registers itself on the CLI11 app.
#pragma once
#include <CLI/CLI.hpp>

namespace mtpserve::cli {
void add_logits_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);     // tokenizer: encode/decode files (tests, parity checks)
void add_render_chat_command(CLI::App& app);  // chat template rendering (tests, debugging)
void add_bench_spec_command(CLI::App& app);   // MTP acceptance and throughput on held-out prompts
void add_bench_step_command(CLI::App& app);   // `bench`: step costs of the target and the assistant
void add_serve_command(CLI::App& app);        // the OpenAI-compatible HTTP server
}  // namespace mtpserve::cli
