// The Gemma tokenizer: an exact re-implementation of HF `tokenizers` for the components that Gemma-style
// tokenizer.json files use (BPE with byte fallback, Replace/Prepend normalizers, Split pre-tokenizer,
// Replace/ByteFallback/Fuse/Strip decoders, TemplateProcessing). Any other component is a load error, so
// a file we cannot reproduce is never tokenized wrongly in silence. Golden-tested id-for-id against the
// official HF bindings (tests/e2e/tokenizer_golden.sh).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mtpserve {

namespace detail {
struct TokenizerData;
}

class Tokenizer {
 public:
  // `path_or_dir` is a tokenizer.json file, or a model directory holding tokenizer.json (and optionally
  // tokenizer_config.json, read for the bos/eos/pad/unk names and Gemma 4's named control tokens).
  static Tokenizer load(const std::string& path_or_dir);
  // From the text of a tokenizer.json (and optionally of a tokenizer_config.json); `source` names it in
  // errors.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {},
                             const std::string& source = "<memory>");

  // HF `Tokenizer.encode(text, add_special_tokens)`. Throws Error on invalid UTF-8 input.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // HF `Tokenizer.decode(ids, skip_special_tokens)`; ids outside the vocabulary are skipped, as HF does.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  std::optional<std::string_view> id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int32_t vocab_size() const;  // largest id + 1, added tokens included
  int32_t bos_id() const;      // -1 when the tokenizer has none
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;
  // True for added tokens marked `special` (the ones decode(skip_special_tokens=true) drops).
  bool is_special(int32_t id) const;
  // A named token from tokenizer_config.json, e.g. special("eot_token") -> id of "<turn|>"; nullopt if
  // unnamed.
  std::optional<int32_t> special(std::string_view name) const;
  const std::string& source() const;

  const detail::TokenizerData& data() const { return *data_; }

 private:
  std::shared_ptr<const detail::TokenizerData> data_;
};

// Streaming detokenizer: feed generated ids, get back text that is final and valid UTF-8. A character
// spelled with byte-fallback tokens (<0xE4><0xBD><0xA0>) is held until its last byte arrives. The
// concatenation of everything returned (add... + flush) equals Tokenizer::decode(all ids) whenever the
// byte-fallback runs in the ids are valid UTF-8. For an invalid run HF replaces every byte of the whole run
// with U+FFFD; we cannot take back characters already emitted, so only the bytes not yet emitted become
// U+FFFD (still valid UTF-8, but then the concatenation differs from decode()).
class IncrementalDetokenizer {
 public:
  // Throws Error if the tokenizer's decoder chain cannot be streamed (see tokenizer.cpp).
  IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);

  std::string add(int32_t id);
  std::string add(std::span<const int32_t> ids);
  std::string flush();  // end of stream: emits whatever is held back

 private:
  void push_token(std::string_view token, std::string& out);
  void end_byte_run(std::string& out);
  void emit(std::string_view text, std::string& out);

  Tokenizer tok_;
  bool skip_special_;
  // The decoder chain, split for streaming: per-token steps, then ByteFallback, Fuse, then a final Strip.
  size_t token_steps_ = 0;
  bool byte_fallback_ = false;
  int final_strip_ = -1;      // index of a Strip step after Fuse, or -1
  bool first_token_ = true;   // no decoder: tokens are joined with " "
  std::vector<uint8_t> run_;  // the current run of byte-fallback bytes
  size_t run_emitted_ = 0;    // bytes of run_ already emitted as complete characters
  bool run_invalid_ = false;  // run_ holds an invalid sequence: the rest becomes U+FFFD at its end
  int strip_start_left_ = 0;  // Strip decoder: leading content chars still to drop
  std::string held_tail_;     // Strip decoder: trailing content chars that may yet be stripped
};

}  // namespace mtpserve
