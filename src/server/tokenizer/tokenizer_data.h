// Internal tables of the tokenizer (server/tokenizer.h). Built once by load.cpp, then read-only, so one
// Tokenizer can be shared by every request thread.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mtpserve::detail {

// Token string -> id, open addressing over the ids (the strings live in one arena). The vocabulary has
// 262k entries and is hit once per input character, so std::unordered_map<std::string, ...> is too slow.
class StringIdMap {
 public:
  void reserve(size_t n);
  // Inserts or overwrites (HF builds the vocab as a map: a duplicate key keeps the last id).
  void insert(std::string_view s, int32_t id);
  int32_t find(std::string_view s) const;  // -1 when absent
  size_t size() const { return size_; }

 private:
  static uint64_t hash(std::string_view s);
  struct Slot {
    uint32_t off = 0, len = 0;
    int32_t id = -1;
  };
  std::string arena_;
  std::vector<Slot> slots_;
  size_t size_ = 0;
};

// (left id, right id) -> (merge rank, merged id), open addressing. Key and value share a 16-byte slot: the
// table is 16 MB for Gemma, so each lookup is a cache miss, and one miss is better than two.
class PairMap {
 public:
  struct Value {
    int32_t rank = -1, new_id = -1;
  };
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, Value v);  // overwrites: HF collects merges into a map, last one wins
  const Value* find(int32_t a, int32_t b) const {
    uint64_t key = pack(a, b);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].value;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    Value value;
  };
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }
  std::vector<Slot> slots_{Slot{}};
  size_t mask_ = 0;
  int shift_ = 63;
  size_t size_ = 0;
};

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};

// Byte trie over added-token contents for leftmost-longest matching (what HF's aho-corasick does).
class TokenTrie {
 public:
  TokenTrie() { root_.fill(-1); }
  void insert(std::string_view s, int32_t added_index);
  bool empty() const { return nodes_.empty(); }
  // Longest token starting at text[pos]: returns its added index and sets *end, or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t* end) const;
  bool may_start(uint8_t c) const { return root_[c] >= 0; }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t token = -1;
  };
  int32_t child(int32_t node, uint8_t c) const;
  std::array<int32_t, 256> root_;
  std::vector<Node> nodes_;
};

struct NormalizerStep {
  enum Kind { Replace, Prepend } kind;
  std::string pattern, content;
};

struct PreTokenizerStep {  // only Split with a string pattern
  enum Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous } behavior;
  std::string pattern;
  bool invert = false;
};

struct DecoderStep {
  enum Kind { Replace, ByteFallback, Fuse, Strip } kind;
  std::string pattern, content;  // Replace; Strip: content is the (one character) to strip
  int start = 0, stop = 0;       // Strip
};

struct TemplatePiece {
  bool is_sequence = false;  // $A
  std::vector<int32_t> ids;  // a special token's ids
};

struct TokenizerData {
  std::string source;  // file name, for error messages

  // Model (BPE).
  StringIdMap vocab;  // the model vocabulary only (BPE looks characters up here)
  PairMap merges;
  std::array<int32_t, 256> byte_ids;  // id of <0xHH>, -1 if missing
  std::vector<int32_t>
      bmp_ids;  // vocab id of each character U+0000..U+FFFF (BPE's hot lookup), -1 if missing
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int32_t model_unk = -1;

  // Added tokens: matched in the raw text (normalized=false) or in the normalized text (normalized=true).
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> added_by_content;  // content -> id
  TokenTrie raw_trie, normalized_trie;

  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  bool has_decoder = false;
  std::vector<DecoderStep> decoder;
  bool has_template = false;
  std::vector<TemplatePiece> single_template;

  // id -> token text (added tokens first, as HF's id_to_token), and per-id flags.
  std::vector<std::string> id_token;
  std::vector<uint8_t> id_known;  // 1 where id_token[id] is a token (ids may have gaps)
  std::vector<uint8_t> id_special;

  std::unordered_map<std::string, int32_t> named;  // tokenizer_config.json "*_token" names -> id
  int32_t bos = -1, eos = -1, pad = -1, unk = -1;
};

// Parses tokenizer.json (+ optional tokenizer_config.json text) into `d`; throws Error on anything
// unsupported.
void load_tokenizer_data(TokenizerData& d, std::string_view tokenizer_json, std::string_view config_json);

// Everything before the post-processor: added tokens, normalizer, pre-tokenizer, BPE. Appends ids.
void encode_text(const TokenizerData& d, std::string_view text, std::vector<int32_t>& out);

// BPE over one pre-tokenized word, appending ids (HF `BPE::tokenize`).
void bpe_encode(const TokenizerData& d, std::string_view word, std::vector<int32_t>& out);

// Applies the normalizer steps to s (HF normalizers; Replace replaces every occurrence, left to right).
void normalize(const std::vector<NormalizerStep>& steps, std::string& s);

// UTF-8 helpers. utf8_char_len: length of the valid character at p (n bytes available), 0 if the bytes so far
// are a valid but incomplete prefix, -1 if invalid (the rules of Rust's String::from_utf8, as HF uses).
int utf8_char_len(const uint8_t* p, size_t n);
bool utf8_valid(std::string_view s);

}  // namespace mtpserve::detail
