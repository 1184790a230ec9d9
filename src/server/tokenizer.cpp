// Tokenizer public API, decoding and streaming detokenization. Loading is in tokenizer/load.cpp, encoding
// in tokenizer/encode.cpp.
#include "server/tokenizer.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "server/tokenizer/tokenizer_data.h"

namespace mtpserve {

using detail::DecoderStep;
using detail::TokenizerData;

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  MTP_CHECK(f.good(), "cannot open {}", path.string());
  f.seekg(0, std::ios::end);
  std::string s(size_t(f.tellg()), '\0');
  f.seekg(0);
  f.read(s.data(), std::streamsize(s.size()));
  MTP_CHECK(f.good(), "cannot read {}", path.string());
  return s;
}

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos).append(to);
  }
  out.append(s, pos);
  s = std::move(out);
}

// HF ByteFallback's test: a 6-byte "<0xHH>" whose HH parses as Rust's u8::from_str_radix(.., 16), which
// accepts a leading '+' (so "<0x+A>" is byte 10).
bool parse_byte_token(std::string_view t, uint8_t* byte) {
  if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return false;
  std::string_view digits = t.substr(3, 2);
  if (digits[0] == '+') digits.remove_prefix(1);
  int v = 0;
  for (char c : digits) {
    int x = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (x < 0) return false;
    v = v * 16 + x;
  }
  *byte = uint8_t(v);
  return true;
}

// HF Strip decoder on one token: drop up to `start` leading and `stop` trailing `content` characters.
std::string strip_token(std::string_view t, const DecoderStep& st) {
  const std::string& c = st.content;
  size_t begin = 0;
  for (int i = 0; i < st.start && t.substr(begin).starts_with(c); ++i) begin += c.size();
  size_t end = t.size();
  for (int i = 0; i < st.stop && end >= begin + c.size() && t.substr(0, end).ends_with(c); ++i)
    end -= c.size();
  return std::string(t.substr(begin, end - begin));
}

bool is_byte_run_valid(const std::vector<uint8_t>& run) {
  return detail::utf8_valid(std::string_view(reinterpret_cast<const char*>(run.data()), run.size()));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Tokenizer

Tokenizer Tokenizer::load(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  fs::path path = path_or_dir;
  if (fs::is_directory(path)) path /= "tokenizer.json";
  MTP_CHECK(fs::is_regular_file(path), "tokenizer file {} does not exist", path.string());
  // tokenizer_config.json sits next to tokenizer.json in every HF checkpoint.
  fs::path config = path.parent_path() / "tokenizer_config.json";
  std::string config_text = fs::is_regular_file(config) ? read_file(config) : std::string();
  return from_json(read_file(path), config_text, path.string());
}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json,
                               const std::string& source) {
  auto d = std::make_shared<TokenizerData>();
  d->source = source;
  detail::load_tokenizer_data(*d, tokenizer_json, config_json);
  Tokenizer t;
  t.data_ = std::move(d);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const TokenizerData& d = *data_;
  MTP_CHECK(detail::utf8_valid(text), "tokenizer: input text is not valid UTF-8");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  detail::encode_text(d, text, ids);
  if (!add_special_tokens || !d.has_template) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const detail::TemplatePiece& p : d.single_template) {
    if (p.is_sequence)
      out.insert(out.end(), ids.begin(), ids.end());
    else
      out.insert(out.end(), p.ids.begin(), p.ids.end());
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const TokenizerData& d = *data_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= d.id_token.size() || !d.id_known[id]) continue;  // HF skips unknown ids
    if (skip_special_tokens && d.id_special[id]) continue;
    toks.push_back(d.id_token[id]);
  }
  std::string out;
  if (!d.has_decoder) {  // HF joins the raw tokens with spaces
    for (size_t i = 0; i < toks.size(); ++i) out.append(i ? " " : "").append(toks[i]);
    return out;
  }
  for (const DecoderStep& st : d.decoder) {
    switch (st.kind) {
      case DecoderStep::Replace:
        for (std::string& t : toks) replace_all(t, st.pattern, st.content);
        break;
      case DecoderStep::Strip:
        for (std::string& t : toks) t = strip_token(t, st);
        break;
      case DecoderStep::Fuse: {
        std::string all;
        for (const std::string& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case DecoderStep::ByteFallback: {
        // A run of byte tokens becomes its UTF-8 text, or one U+FFFD per byte if the run is invalid.
        std::vector<std::string> next;
        std::vector<uint8_t> run;
        auto flush = [&] {
          if (run.empty()) return;
          if (is_byte_run_valid(run))
            next.emplace_back(run.begin(), run.end());
          else
            next.insert(next.end(), run.size(), std::string(kReplacementChar));
          run.clear();
        };
        for (std::string& t : toks) {
          uint8_t b;
          if (parse_byte_token(t, &b)) {
            run.push_back(b);
          } else {
            flush();
            next.push_back(std::move(t));
          }
        }
        flush();
        toks = std::move(next);
        break;
      }
    }
  }
  for (const std::string& t : toks) out += t;
  return out;
}

std::optional<std::string_view> Tokenizer::id_to_token(int32_t id) const {
  const TokenizerData& d = *data_;
  if (id < 0 || size_t(id) >= d.id_token.size() || !d.id_known[id]) return std::nullopt;
  return d.id_token[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const TokenizerData& d = *data_;
  auto it = d.added_by_content.find(std::string(token));
  if (it != d.added_by_content.end()) return it->second;
  int32_t id = d.vocab.find(token);
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

int32_t Tokenizer::vocab_size() const { return int32_t(data_->id_token.size()); }
int32_t Tokenizer::bos_id() const { return data_->bos; }
int32_t Tokenizer::eos_id() const { return data_->eos; }
int32_t Tokenizer::pad_id() const { return data_->pad; }
int32_t Tokenizer::unk_id() const { return data_->unk; }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < data_->id_special.size() && data_->id_special[id];
}
std::optional<int32_t> Tokenizer::special(std::string_view name) const {
  auto it = data_->named.find(std::string(name));
  return it != data_->named.end() ? std::optional<int32_t>(it->second) : std::nullopt;
}
const std::string& Tokenizer::source() const { return data_->source; }

// ---------------------------------------------------------------------------------------------------------
// IncrementalDetokenizer
//
// Streaming works because the decoder chains Gemma files use are local: Replace and Strip act on one token,
// ByteFallback on one run of byte tokens, Fuse concatenates, and a Strip after Fuse only touches the two ends
// of the whole text. Chains of any other shape are rejected here rather than streamed wrongly.

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(tokenizer), skip_special_(skip_special_tokens) {
  const TokenizerData& d = tok_.data();
  const auto& steps = d.decoder;
  size_t i = 0;
  while (i < steps.size() && (steps[i].kind == DecoderStep::Replace || steps[i].kind == DecoderStep::Strip))
    ++i;
  token_steps_ = i;
  if (i < steps.size() && steps[i].kind == DecoderStep::ByteFallback) {
    byte_fallback_ = true;
    ++i;
  }
  if (i < steps.size() && steps[i].kind == DecoderStep::Fuse) {
    ++i;
    if (i < steps.size() && steps[i].kind == DecoderStep::Strip) final_strip_ = int(i++);
  }
  MTP_CHECK(i == steps.size(), "tokenizer {}: streaming detokenization does not support this decoder chain",
            d.source);
  if (final_strip_ >= 0) strip_start_left_ = steps[final_strip_].start;
}

std::string IncrementalDetokenizer::add(int32_t id) {
  const TokenizerData& d = tok_.data();
  std::string out;
  if (id < 0 || size_t(id) >= d.id_token.size() || !d.id_known[id]) return out;
  if (skip_special_ && d.id_special[id]) return out;
  push_token(d.id_token[id], out);
  return out;
}

std::string IncrementalDetokenizer::add(std::span<const int32_t> ids) {
  std::string out;
  for (int32_t id : ids) out += add(id);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out;
  end_byte_run(out);
  held_tail_.clear();  // what a final Strip removes from the end of the text
  return out;
}

void IncrementalDetokenizer::push_token(std::string_view token, std::string& out) {
  const TokenizerData& d = tok_.data();
  if (!d.has_decoder) {
    if (!first_token_) emit(" ", out);
    first_token_ = false;
    emit(token, out);
    return;
  }
  std::string t(token);
  for (size_t i = 0; i < token_steps_; ++i) {
    const DecoderStep& st = d.decoder[i];
    if (st.kind == DecoderStep::Replace)
      replace_all(t, st.pattern, st.content);
    else
      t = strip_token(t, st);
  }
  uint8_t byte;
  if (byte_fallback_ && parse_byte_token(t, &byte)) {
    run_.push_back(byte);
    // Emit every character the run now completes; stop at an incomplete one, or for good at an invalid one.
    while (!run_invalid_ && run_emitted_ < run_.size()) {
      int len = detail::utf8_char_len(run_.data() + run_emitted_, run_.size() - run_emitted_);
      if (len == 0) break;
      if (len < 0) {
        run_invalid_ = true;
        break;
      }
      emit(std::string_view(reinterpret_cast<const char*>(run_.data()) + run_emitted_, size_t(len)), out);
      run_emitted_ += size_t(len);
    }
    return;
  }
  end_byte_run(out);
  emit(t, out);
}

void IncrementalDetokenizer::end_byte_run(std::string& out) {
  // Bytes never completed into a character: HF turns an invalid run into U+FFFD per byte.
  for (size_t i = run_emitted_; i < run_.size(); ++i) emit(kReplacementChar, out);
  run_.clear();
  run_emitted_ = 0;
  run_invalid_ = false;
}

void IncrementalDetokenizer::emit(std::string_view text, std::string& out) {
  if (final_strip_ < 0) {
    out += text;
    return;
  }
  const DecoderStep& st = tok_.data().decoder[final_strip_];
  const std::string& c = st.content;
  while (strip_start_left_ > 0 && !text.empty()) {
    if (!text.starts_with(c)) {
      strip_start_left_ = 0;
      break;
    }
    text.remove_prefix(c.size());
    --strip_start_left_;
  }
  if (text.empty()) return;
  strip_start_left_ = 0;
  // Hold back the trailing content characters the final Strip could still remove (at most `stop`).
  held_tail_ += text;
  size_t end = held_tail_.size();
  for (int i = 0; i < st.stop && end >= c.size() && std::string_view(held_tail_).substr(0, end).ends_with(c);
       ++i)
    end -= c.size();
  out.append(held_tail_, 0, end);
  held_tail_.erase(0, end);
}

}  // namespace mtpserve
