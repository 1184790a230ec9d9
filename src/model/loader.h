// Loading a target model and its MTP assistant from a directory, with the checkpoint's weights
// (--load-format auto) or with seeded random weights of the config's shapes (--load-format dummy: the
// directory needs only config.json, e.g. configs/gemma-4-E2B). Dummy weights are generated directly on the
// device with the CUDA backend (no host copy), and multi-threaded on the host otherwise.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/assistant.h"

namespace mtpserve {

struct LoadOptions {
  std::string format = "auto";  // auto | dummy
  uint64_t seed = 1234;         // dummy weights
  int layers = 0;               // > 0: keep only the target's first `layers` decoder layers (benchmarks)
  bool verbose = false;         // dummy generation: a summary line, and progress lines for long loads
};

// Throws unless `format` is "auto" or "dummy"; `flag` names the option in the message.
void check_load_format(const std::string& format, const char* flag = "--load-format");

// The target's config.json, optionally cut to its first `layers` decoder layers: the layer pattern is kept,
// num_kv_shared_layers shrinks with the layers past the first shared one, per_layer_config entries of removed
// layers are dropped.
ModelConfig load_target_config(const std::string& dir, int layers = 0);

std::unique_ptr<Gemma4Model> load_target(const std::string& dir, Backend& be, const LoadOptions& o = {});
// `o.layers` does not apply (it cuts the target, which the assistant binds to).
std::unique_ptr<Gemma4Assistant> load_assistant(const std::string& dir, const Gemma4Model& target,
                                                int query_pos_offset, const LoadOptions& o = {});

}  // namespace mtpserve
