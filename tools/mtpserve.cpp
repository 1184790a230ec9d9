// mtpserve: the command-line entry point. Each subcommand lives in tools/cmd_*.cpp.
#include <cstdio>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"mtpserve: a Gemma 4 serving engine with frozen-KV MTP speculative decoding"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mtpserve 0.1.0");
  mtpserve::cli::add_logits_command(app);
  mtpserve::cli::add_generate_command(app);
  mtpserve::cli::add_tokenize_command(app);
  mtpserve::cli::add_render_chat_command(app);
  mtpserve::cli::add_bench_spec_command(app);
  mtpserve::cli::add_bench_step_command(app);
  mtpserve::cli::add_serve_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mtpserve::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
