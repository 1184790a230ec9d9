#include "server/output_processor.h"

#include <algorithm>

namespace mtpserve {

size_t stop_prefix_suffix(std::string_view text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const auto& s : stops) {
    size_t k = std::min(s.size() - 1, text.size());
    for (; k > best; k--)
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) break;
    best = std::max(best, k);
  }
  return best;
}

OutputProcessor::OutputProcessor(const Tokenizer& tok, std::vector<std::string> stop,
                                 bool skip_special_tokens)
    : detok_(tok, skip_special_tokens), stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
}

bool OutputProcessor::push(const std::string& s, std::string& out, bool final) {
  held_ += s;
  // Any stop string occurrence starts inside held_: text already emitted never ends with a stop prefix.
  size_t first = std::string::npos;
  for (const auto& st : stop_) first = std::min(first, held_.find(st));
  if (first != std::string::npos) {
    out += held_.substr(0, first);
    text_ += held_.substr(0, first);
    held_.clear();
    stopped_ = true;
    return true;
  }
  // A held suffix equal to a prefix of a (valid UTF-8) stop string starts on a character boundary.
  size_t keep = final ? 0 : stop_prefix_suffix(held_, stop_);
  size_t emit = held_.size() - keep;
  out += held_.substr(0, emit);
  text_ += held_.substr(0, emit);
  held_.erase(0, emit);
  return false;
}

OutputProcessor::Delta OutputProcessor::add(std::span<const int32_t> tokens) {
  Delta d;
  if (stopped_ || finished_) return d;
  for (size_t i = 0; i < tokens.size(); i++) {
    d.tokens_used = i + 1;
    tokens_++;
    if (push(detok_.add(tokens[i]), d.text, false)) {
      d.stopped = true;
      break;
    }
  }
  return d;
}

OutputProcessor::Delta OutputProcessor::finish() {
  Delta d;
  if (stopped_ || finished_) return d;
  finished_ = true;
  d.stopped = push(detok_.flush(), d.text, true);
  return d;
}

}  // namespace mtpserve
