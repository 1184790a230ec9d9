// Loading tokenizer.json: a SAX pass streams model.vocab and model.merges (262k + 515k entries for Gemma)
// straight into the hash tables, and builds an ordinary nlohmann DOM for the rest (small). A full DOM of
// the 33 MB Gemma file takes ~0.7 s to build; the SAX pass ~0.25 s.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/error.h"
#include "server/tokenizer/tokenizer_data.h"

namespace mtpserve::detail {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------------
// Hash tables

uint64_t StringIdMap::hash(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  uint64_t w = 0;
  std::memcpy(&w, s.data() + i, s.size() - i);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

void StringIdMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  for (const Slot& s : old) {
    if (s.id < 0) continue;
    size_t i = hash(std::string_view(arena_).substr(s.off, s.len)) & (cap - 1);
    while (slots_[i].id >= 0) i = (i + 1) & (cap - 1);
    slots_[i] = s;
  }
}

void StringIdMap::insert(std::string_view s, int32_t id) {
  MTP_ASSERT(id >= 0);
  if (2 * (size_ + 1) > slots_.size()) reserve(size_ + 1 > 1024 ? 2 * size_ : 1024);
  size_t mask = slots_.size() - 1;
  for (size_t i = hash(s) & mask;; i = (i + 1) & mask) {
    Slot& slot = slots_[i];
    if (slot.id < 0) {
      slot = Slot{uint32_t(arena_.size()), uint32_t(s.size()), id};
      arena_.append(s);
      ++size_;
      return;
    }
    if (slot.len == s.size() && std::memcmp(arena_.data() + slot.off, s.data(), s.size()) == 0) {
      slot.id = id;
      return;
    }
  }
}

int32_t StringIdMap::find(std::string_view s) const {
  if (slots_.empty()) return -1;
  size_t mask = slots_.size() - 1;
  for (size_t i = hash(s) & mask;; i = (i + 1) & mask) {
    const Slot& slot = slots_[i];
    if (slot.id < 0) return -1;
    if (slot.len == s.size() && std::memcmp(arena_.data() + slot.off, s.data(), s.size()) == 0)
      return slot.id;
  }
}

void PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  shift_ = 64 - std::countr_zero(cap);
  for (const Slot& s : old) {
    if (s.key == kEmpty) continue;
    size_t i = slot(s.key);
    while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

void PairMap::insert(int32_t a, int32_t b, Value v) {
  if (2 * (size_ + 1) > slots_.size()) reserve(std::max<size_t>(1024, 2 * size_));
  uint64_t key = pack(a, b);
  for (size_t i = slot(key);; i = (i + 1) & mask_) {
    if (slots_[i].key == key) {
      slots_[i].value = v;
      return;
    }
    if (slots_[i].key == kEmpty) {
      slots_[i] = Slot{key, v};
      ++size_;
      return;
    }
  }
}

void TokenTrie::insert(std::string_view s, int32_t added_index) {
  MTP_ASSERT(!s.empty());
  auto c0 = uint8_t(s[0]);
  if (root_[c0] < 0) {
    root_[c0] = int32_t(nodes_.size());
    nodes_.emplace_back();
  }
  int32_t node = root_[c0];
  for (size_t i = 1; i < s.size(); ++i) {
    auto c = uint8_t(s[i]);
    int32_t next = child(node, c);
    if (next < 0) {
      next = int32_t(nodes_.size());
      auto& kids = nodes_[node].next;
      kids.insert(std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, int32_t>(c, -1)), {c, next});
      nodes_.emplace_back();
    }
    node = next;
  }
  nodes_[node].token = added_index;
}

int32_t TokenTrie::child(int32_t node, uint8_t c) const {
  const auto& kids = nodes_[node].next;
  auto it = std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, int32_t>(c, -1));
  return it != kids.end() && it->first == c ? it->second : -1;
}

int32_t TokenTrie::longest_at(std::string_view text, size_t pos, size_t* end) const {
  int32_t node = root_[uint8_t(text[pos])];
  int32_t best = -1;
  for (size_t i = pos + 1; node >= 0; ++i) {
    if (nodes_[node].token >= 0) {
      best = nodes_[node].token;
      *end = i;
    }
    if (i == text.size()) break;
    node = child(node, uint8_t(text[i]));
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------------
// SAX pass

namespace {

class LoadSax final : public nlohmann::json_sax<json> {
 public:
  explicit LoadSax(TokenizerData& d) : d_(d) {}

  json root;
  std::string error;
  // Merges as (a, b) string pairs, resolved to ids once the whole vocab is known (vocab may come later).
  std::string merge_arena;
  std::vector<uint32_t> merge_bounds;  // per merge: start of a, start of b (a ends there), end of b
  bool saw_vocab = false, saw_merges = false;

  bool null() override { return value(json(nullptr)); }
  bool boolean(bool b) override { return value(json(b)); }
  bool number_integer(number_integer_t v) override {
    if (mode() == Mode::Vocab) return vocab_id(v);
    return value(json(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode() == Mode::Vocab) return vocab_id(int64_t(std::min<uint64_t>(v, INT64_MAX)));
    return value(json(v));
  }
  bool number_float(number_float_t v, const string_t&) override { return value(json(v)); }
  bool binary(binary_t&) override { return bad("unexpected binary value"); }

  bool string(string_t& s) override {
    if (mode() == Mode::Merges) return legacy_merge(s);
    if (mode() == Mode::MergePair) {
      pair_.push_back(std::move(s));
      return true;
    }
    return value(json(std::move(s)));
  }

  bool start_object(std::size_t) override {
    if (at_model_field("vocab")) {
      saw_vocab = true;
      stack_.push_back(Frame{nullptr, Mode::Vocab, {}});
      return true;
    }
    if (mode() != Mode::Normal) return bad("unexpected object in model.vocab/model.merges");
    json* v = put(json::object());
    stack_.push_back(Frame{v, Mode::Normal, {}});
    return true;
  }
  bool key(string_t& k) override {
    stack_.back().key = std::move(k);
    return true;
  }
  bool end_object() override {
    stack_.pop_back();
    return true;
  }

  bool start_array(std::size_t) override {
    if (mode() == Mode::Merges) {
      if (merge_form_ == 1) return bad("model.merges mixes \"a b\" strings and [a, b] pairs");
      merge_form_ = 2;
      pair_.clear();
      stack_.push_back(Frame{nullptr, Mode::MergePair, {}});
      return true;
    }
    if (at_model_field("merges")) {
      saw_merges = true;
      stack_.push_back(Frame{nullptr, Mode::Merges, {}});
      return true;
    }
    if (mode() != Mode::Normal) return bad("unexpected array in model.vocab/model.merges");
    json* v = put(json::array());
    stack_.push_back(Frame{v, Mode::Normal, {}});
    return true;
  }
  bool end_array() override {
    if (mode() == Mode::MergePair) {
      if (pair_.size() != 2) return bad(fmt::format("merge {} is not a pair of strings", n_merges() + 1));
      add_merge(pair_[0], pair_[1]);
    }
    stack_.pop_back();
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = e.what();
    return false;
  }

 private:
  enum class Mode { Normal, Vocab, Merges, MergePair };
  struct Frame {
    json* value;  // the object/array being built (Normal mode only)
    Mode mode;
    std::string key;  // last key seen in this object
  };

  Mode mode() const { return stack_.empty() ? Mode::Normal : stack_.back().mode; }
  size_t n_merges() const { return merge_bounds.size() / 3; }

  // True when the next value is root["model"][field].
  bool at_model_field(const char* field) const {
    return stack_.size() == 2 && stack_[0].mode == Mode::Normal && stack_[0].key == "model" &&
           stack_[0].value->is_object() && stack_[1].mode == Mode::Normal && stack_[1].value->is_object() &&
           stack_[1].key == field;
  }

  bool bad(std::string msg) {
    error = std::move(msg);
    return false;
  }

  json* put(json&& v) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    Frame& f = stack_.back();
    if (f.value->is_object()) {
      json& slot = (*f.value)[f.key];
      slot = std::move(v);
      return &slot;
    }
    f.value->push_back(std::move(v));
    return &f.value->back();
  }

  bool value(json&& v) {
    switch (mode()) {
      case Mode::Normal:
        put(std::move(v));
        return true;
      case Mode::Vocab:
        return bad(fmt::format("model.vocab[\"{}\"] is not an integer id", stack_.back().key));
      default:
        return bad(fmt::format("merge {} is not a string or a pair of strings", n_merges() + 1));
    }
  }

  bool vocab_id(int64_t id) {
    // HF ids are u32; we keep them in int32 and cap the table at 2^26 entries (a corrupt file, not a vocab).
    if (id < 0 || id >= (int64_t(1) << 26))
      return bad(fmt::format("model.vocab[\"{}\"] has id {} out of range", stack_.back().key, id));
    const std::string& token = stack_.back().key;
    d_.vocab.insert(token, int32_t(id));
    if (size_t(id) >= d_.id_token.size()) {
      d_.id_token.resize(std::max<size_t>(size_t(id) + 1, d_.id_token.size() * 3 / 2));
      d_.id_known.resize(d_.id_token.size(), 0);
    }
    d_.id_token[id] = token;
    d_.id_known[id] = 1;
    return true;
  }

  // Legacy "a b" form (HF `convert_merges_to_hashmap`: "#version" lines are skipped, exactly one space).
  bool legacy_merge(const std::string& line) {
    if (merge_form_ == 2) return bad("model.merges mixes \"a b\" strings and [a, b] pairs");
    merge_form_ = 1;
    if (line.starts_with("#version")) return true;
    size_t sp = line.find(' ');
    if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
      return bad(
          fmt::format("merge {} (\"{}\") is not two tokens separated by one space", n_merges() + 1, line));
    add_merge(std::string_view(line).substr(0, sp), std::string_view(line).substr(sp + 1));
    return true;
  }

  void add_merge(std::string_view a, std::string_view b) {
    merge_bounds.push_back(uint32_t(merge_arena.size()));
    merge_arena.append(a);
    merge_bounds.push_back(uint32_t(merge_arena.size()));
    merge_arena.append(b);
    merge_bounds.push_back(uint32_t(merge_arena.size()));
  }

  TokenizerData& d_;
  std::vector<Frame> stack_;
  std::vector<std::string> pair_;
  int merge_form_ = 0;  // 0 unknown, 1 "a b" strings, 2 [a, b] pairs
};

// ---------------------------------------------------------------------------------------------------------
// Components

std::string type_of(const json& j, const char* what, const std::string& src) {
  MTP_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), "{}: {} has no \"type\" in {}", src,
            what, src);
  return j["type"].get<std::string>();
}

// A {"String": s} pattern; regex patterns would need Oniguruma-compatible regexes, which we do not have.
std::string string_pattern(const json& j, const char* what, const std::string& src) {
  MTP_CHECK(j.contains("pattern") && j["pattern"].is_object(), "{} without a pattern in {}", what, src);
  const json& p = j["pattern"];
  if (p.contains("String") && p["String"].is_string()) {
    std::string s = p["String"];
    // An empty pattern matches between every pair of characters in HF; no real file does that.
    MTP_CHECK(!s.empty(), "{} with an empty pattern in {}", what, src);
    return s;
  }
  fail("unsupported {} pattern {} in {} (only {{\"String\": ...}} patterns are supported)", what, p.dump(),
       src);
}

void parse_normalizer(const json& j, std::vector<NormalizerStep>& out, const std::string& src) {
  if (j.is_null()) return;
  std::string type = type_of(j, "normalizer", src);
  if (type == "Sequence") {
    MTP_CHECK(j.contains("normalizers") && j["normalizers"].is_array(),
              "normalizer Sequence without a list in {}", src);
    for (const json& n : j["normalizers"]) parse_normalizer(n, out, src);
  } else if (type == "Replace") {
    out.push_back({NormalizerStep::Replace, string_pattern(j, "normalizer Replace", src), j.at("content")});
  } else if (type == "Prepend") {
    out.push_back({NormalizerStep::Prepend, "", j.at("prepend")});
  } else {
    fail("unsupported normalizer type '{}' in {}", type, src);
  }
}

void parse_pre_tokenizer(const json& j, std::vector<PreTokenizerStep>& out, const std::string& src) {
  if (j.is_null()) return;
  std::string type = type_of(j, "pre_tokenizer", src);
  if (type == "Sequence") {
    MTP_CHECK(j.contains("pretokenizers") && j["pretokenizers"].is_array(),
              "pre_tokenizer Sequence without a list in {}", src);
    for (const json& p : j["pretokenizers"]) parse_pre_tokenizer(p, out, src);
  } else if (type == "Split") {
    PreTokenizerStep s;
    s.pattern = string_pattern(j, "pre_tokenizer Split", src);
    std::string b = j.at("behavior");
    if (b == "Removed")
      s.behavior = PreTokenizerStep::Removed;
    else if (b == "Isolated")
      s.behavior = PreTokenizerStep::Isolated;
    else if (b == "MergedWithPrevious")
      s.behavior = PreTokenizerStep::MergedWithPrevious;
    else if (b == "MergedWithNext")
      s.behavior = PreTokenizerStep::MergedWithNext;
    else if (b == "Contiguous")
      s.behavior = PreTokenizerStep::Contiguous;
    else
      fail("unsupported Split behavior '{}' in {}", b, src);
    s.invert = j.value("invert", false);
    out.push_back(std::move(s));
  } else {
    fail("unsupported pre_tokenizer type '{}' in {}", type, src);
  }
}

void parse_decoder(const json& j, std::vector<DecoderStep>& out, const std::string& src) {
  std::string type = type_of(j, "decoder", src);
  if (type == "Sequence") {
    MTP_CHECK(j.contains("decoders") && j["decoders"].is_array(), "decoder Sequence without a list in {}",
              src);
    for (const json& d : j["decoders"]) parse_decoder(d, out, src);
  } else if (type == "Replace") {
    out.push_back({DecoderStep::Replace, string_pattern(j, "decoder Replace", src), j.at("content"), 0, 0});
  } else if (type == "ByteFallback") {
    out.push_back({DecoderStep::ByteFallback, "", "", 0, 0});
  } else if (type == "Fuse") {
    out.push_back({DecoderStep::Fuse, "", "", 0, 0});
  } else if (type == "Strip") {
    std::string content = j.at("content");
    MTP_CHECK(!content.empty() && utf8_char_len(reinterpret_cast<const uint8_t*>(content.data()),
                                                content.size()) == int(content.size()),
              "decoder Strip content must be one character in {}", src);
    out.push_back({DecoderStep::Strip, "", content, j.at("start").get<int>(), j.at("stop").get<int>()});
  } else {
    fail("unsupported decoder type '{}' in {}", type, src);
  }
}

void parse_post_processor(const json& j, TokenizerData& d, const std::string& src) {
  if (j.is_null()) return;
  std::string type = type_of(j, "post_processor", src);
  if (type != "TemplateProcessing") fail("unsupported post_processor type '{}' in {}", type, src);
  d.has_template = true;
  const json& specials = j.value("special_tokens", json::object());
  for (const json& piece : j.at("single")) {
    TemplatePiece p;
    if (piece.contains("Sequence")) {
      std::string id = piece["Sequence"].at("id");
      MTP_CHECK(id == "A", "post_processor single template uses sequence '{}' in {}", id, src);
      p.is_sequence = true;
    } else if (piece.contains("SpecialToken")) {
      std::string id = piece["SpecialToken"].at("id");
      MTP_CHECK(specials.contains(id), "post_processor special token '{}' is not in special_tokens in {}", id,
                src);
      p.ids = specials[id].at("ids").get<std::vector<int32_t>>();
    } else {
      fail("unsupported post_processor template piece {} in {}", piece.dump(), src);
    }
    d.single_template.push_back(std::move(p));
  }
}

std::string utf8_encode(uint32_t c) {
  std::string s;
  if (c < 0x80) {
    s += char(c);
  } else if (c < 0x800) {
    s += char(0xC0 | (c >> 6));
    s += char(0x80 | (c & 0x3F));
  } else {
    s += char(0xE0 | (c >> 12));
    s += char(0x80 | ((c >> 6) & 0x3F));
    s += char(0x80 | (c & 0x3F));
  }
  return s;
}

// "<0x0A>": the byte tokens HF looks up for byte fallback (Rust's format!("<{:#04X}>")).
std::string byte_token(int b) { return fmt::format("<0x{:02X}>", b); }

int32_t lookup(const TokenizerData& d, std::string_view token) {
  auto it = d.added_by_content.find(std::string(token));
  return it != d.added_by_content.end() ? it->second : d.vocab.find(token);
}

}  // namespace

void load_tokenizer_data(TokenizerData& d, std::string_view tokenizer_json, std::string_view config_json) {
  const std::string& src = d.source;
  d.vocab.reserve(300000);
  LoadSax sax(d);
  if (!json::sax_parse(tokenizer_json, &sax)) {
    fail("cannot read {}: {}", src, sax.error.empty() ? std::string("invalid JSON") : sax.error);
  }
  const json& root = sax.root;
  MTP_CHECK(root.is_object(), "{} is not a JSON object", src);
  MTP_CHECK(root.contains("model") && root["model"].is_object(), "{} has no \"model\" object", src);
  const json& model = root["model"];

  // Options we do not implement change the ids, so they are errors rather than ignored.
  MTP_CHECK(root.value("truncation", json()).is_null(), "unsupported \"truncation\" settings in {}", src);
  const json& padding = root.value("padding", json());
  MTP_CHECK(padding.is_null() || padding.value("strategy", json()) == "BatchLongest",
            "unsupported \"padding\" settings {} in {} (padding of a single sequence)", padding.dump(), src);

  // Model.
  std::string model_type = model.value("type", std::string("BPE"));
  if (model_type != "BPE") fail("unsupported model type '{}' in {}", model_type, src);
  MTP_CHECK(sax.saw_vocab && sax.saw_merges, "BPE model without vocab/merges in {}", src);
  const json& dropout = model.value("dropout", json());
  MTP_CHECK(dropout.is_null() || (dropout.is_number() && dropout.get<double>() == 0.0),
            "unsupported BPE dropout {} in {}", dropout.dump(), src);
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json& v = model.value(affix, json());
    MTP_CHECK(v.is_null() || v == "", "unsupported BPE {} {} in {}", affix, v.dump(), src);
  }
  d.byte_fallback = model.value("byte_fallback", false);
  d.fuse_unk = model.value("fuse_unk", false);
  d.ignore_merges = model.value("ignore_merges", false);
  const json& unk = model.value("unk_token", json());
  if (unk.is_string()) d.model_unk = d.vocab.find(unk.get<std::string>());
  for (int b = 0; b < 256; ++b) d.byte_ids[b] = d.vocab.find(byte_token(b));
  d.bmp_ids.assign(0x10000, -1);
  for (uint32_t c = 0; c < 0x10000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;  // surrogates are not characters
    d.bmp_ids[c] = d.vocab.find(utf8_encode(c));
  }

  size_t n_merges = sax.merge_bounds.size() / 3;
  d.merges.reserve(n_merges);
  std::string joined;
  for (size_t m = 0; m < n_merges; ++m) {
    const uint32_t* b = &sax.merge_bounds[3 * m];
    std::string_view a(sax.merge_arena.data() + b[0], b[1] - b[0]);
    std::string_view c(sax.merge_arena.data() + b[1], b[2] - b[1]);
    int32_t ia = d.vocab.find(a), ic = d.vocab.find(c);
    MTP_CHECK(ia >= 0 && ic >= 0, "merge {} (\"{}\" \"{}\") uses a token missing from the vocab in {}", m + 1,
              a, c, src);
    joined.assign(a).append(c);
    int32_t merged = d.vocab.find(joined);
    MTP_CHECK(merged >= 0, "merge {} result \"{}\" is missing from the vocab in {}", m + 1, joined, src);
    d.merges.insert(ia, ic, {int32_t(m), merged});
  }

  // Pipeline components.
  parse_normalizer(root.value("normalizer", json()), d.normalizer, src);
  parse_pre_tokenizer(root.value("pre_tokenizer", json()), d.pre_tokenizer, src);
  const json& decoder = root.value("decoder", json());
  d.has_decoder = !decoder.is_null();
  if (d.has_decoder) parse_decoder(decoder, d.decoder, src);

  // Added tokens. HF gives an added token the model's id for its content when the vocab has it.
  const json& added = root.value("added_tokens", json::array());
  MTP_CHECK(added.is_array(), "\"added_tokens\" is not a list in {}", src);
  int32_t max_added = -1;
  for (const json& a : added) {
    AddedToken t;
    t.content = a.at("content").get<std::string>();
    t.special = a.value("special", false);
    t.normalized = a.value("normalized", !t.special);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    if (t.content.empty()) continue;                       // HF ignores empty added tokens
    if (d.added_by_content.contains(t.content)) continue;  // HF keeps the first definition
    // HF ignores the "id" field: a token in the model vocab keeps its id, any other one gets the next id
    // after the model vocab (AddedVocabulary::add_tokens).
    int32_t vid = d.vocab.find(t.content);
    if (vid >= 0) {
      t.id = vid;
    } else {
      auto vocab_len = int32_t(d.vocab.size());
      t.id = max_added >= vocab_len ? max_added + 1 : vocab_len;
    }
    max_added = std::max(max_added, t.id);
    d.added_by_content.emplace(t.content, t.id);
    d.added.push_back(std::move(t));
  }
  for (size_t i = 0; i < d.added.size(); ++i) {
    const AddedToken& t = d.added[i];
    if (size_t(t.id) >= d.id_token.size()) {
      d.id_token.resize(size_t(t.id) + 1);
      d.id_known.resize(size_t(t.id) + 1, 0);
    }
    d.id_token[t.id] = t.content;
    d.id_known[t.id] = 1;
    if (t.normalized) {
      std::string content = t.content;
      normalize(d.normalizer, content);
      if (!content.empty()) d.normalized_trie.insert(content, int32_t(i));
    } else {
      d.raw_trie.insert(t.content, int32_t(i));
    }
  }
  // vocab_id() grows the tables geometrically; trim them to the largest id.
  size_t n_ids = d.id_known.size();
  while (n_ids > 0 && !d.id_known[n_ids - 1]) --n_ids;
  d.id_token.resize(n_ids);
  d.id_known.resize(n_ids);
  d.id_special.assign(n_ids, 0);
  for (const AddedToken& t : d.added) {
    if (t.special) d.id_special[t.id] = 1;
  }

  parse_post_processor(root.value("post_processor", json()), d, src);

  // tokenizer_config.json: every "*_token" entry that names a token (a string, or an AddedToken object).
  if (!config_json.empty()) {
    json cfg = json::parse(config_json, nullptr, false);
    MTP_CHECK(!cfg.is_discarded() && cfg.is_object(), "invalid tokenizer_config.json next to {}", src);
    for (const auto& [key, v] : cfg.items()) {
      if (!key.ends_with("_token")) continue;
      std::string name;
      if (v.is_string())
        name = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v["content"].is_string())
        name = v["content"];
      else
        continue;
      int32_t id = lookup(d, name);
      if (id >= 0) d.named[key] = id;
    }
  }
  auto named_or = [&](const char* key, std::string_view fallback) {
    auto it = d.named.find(key);
    return it != d.named.end() ? it->second : lookup(d, fallback);
  };
  d.bos = named_or("bos_token", "<bos>");
  d.eos = named_or("eos_token", "<eos>");
  d.pad = named_or("pad_token", "<pad>");
  d.unk = unk.is_string() ? named_or("unk_token", unk.get<std::string>()) : named_or("unk_token", "<unk>");
}

}  // namespace mtpserve::detail
