// Turns the token stream of one choice into text: incremental (UTF-8-safe) detokenization and stop strings.
// Stop strings are matched on the detokenized text, across token boundaries and when several tokens arrive
// in one engine step. Text that could still be the beginning of a stop string is held back until it is known
// not to be one; when a stop string matches, the text is truncated before it and the choice is finished (the
// caller then cancels the engine request).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "server/tokenizer.h"

namespace mtpserve {

class OutputProcessor {
 public:
  OutputProcessor(const Tokenizer& tok, std::vector<std::string> stop, bool skip_special_tokens);

  struct Delta {
    std::string text;  // final text to send now (may be empty)
    size_t tokens_used =
        0;                 // tokens of this call that count (all, or up to the one completing a stop string)
    bool stopped = false;  // a stop string matched (in this call)
  };
  // Feed the tokens of one engine step. After a stop, further calls return nothing.
  Delta add(std::span<const int32_t> tokens);
  // End of generation (EOS, length, abort): flushes the detokenizer and the held-back text. A stop string
  // completed by the flush still truncates (stopped = true).
  Delta finish();

  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }  // everything emitted so far
  size_t tokens() const { return tokens_; }          // tokens counted so far

 private:
  // Appends `s` to the held text, emits what is final into `out`; true when a stop string matched.
  bool push(const std::string& s, std::string& out, bool final);

  IncrementalDetokenizer detok_;
  std::vector<std::string> stop_;
  std::string held_;  // decoded text not yet emitted (a possible stop-string prefix)
  std::string text_;
  size_t tokens_ = 0;
  bool stopped_ = false, finished_ = false;
};

// Longest k < |stop| (over all stops) such that `text` ends with the first k bytes of a stop string.
size_t stop_prefix_suffix(std::string_view text, const std::vector<std::string>& stops);

}  // namespace mtpserve
