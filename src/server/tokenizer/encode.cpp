// Encoding: added-token split -> normalizer -> normalized added-token split -> pre-tokenizer -> BPE, each
// step written after the corresponding HF `tokenizers` code (AddedVocabulary::find_matches,
// NormalizedString::split, BPE::merge_word / Word::merge_all) so that quirks are reproduced too.
#include <algorithm>

#include "core/error.h"
#include "server/tokenizer/tokenizer_data.h"

namespace mtpserve::detail {

// ---------------------------------------------------------------------------------------------------------
// UTF-8

int utf8_char_len(const uint8_t* p, size_t n) {
  if (n == 0) return 0;
  uint8_t c = p[0];
  if (c < 0x80) return 1;
  int len;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte (rules out overlongs and surrogates)
  if (c >= 0xC2 && c <= 0xDF)
    len = 2;
  else if (c == 0xE0)
    len = 3, lo = 0xA0;
  else if (c >= 0xE1 && c <= 0xEC)
    len = 3;
  else if (c == 0xED)
    len = 3, hi = 0x9F;
  else if (c >= 0xEE && c <= 0xEF)
    len = 3;
  else if (c == 0xF0)
    len = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3)
    len = 4;
  else if (c == 0xF4)
    len = 4, hi = 0x8F;
  else
    return -1;
  for (int i = 1; i < len; ++i) {
    if (size_t(i) >= n) return 0;
    uint8_t lo_i = i == 1 ? lo : 0x80, hi_i = i == 1 ? hi : 0xBF;
    if (p[i] < lo_i || p[i] > hi_i) return -1;
  }
  return len;
}

bool utf8_valid(std::string_view s) {
  auto p = reinterpret_cast<const uint8_t*>(s.data());
  for (size_t i = 0; i < s.size();) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    int len = utf8_char_len(p + i, s.size() - i);
    if (len <= 0) return false;
    i += size_t(len);
  }
  return true;
}

namespace {

size_t lead_len(uint8_t c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

uint32_t decode_at(std::string_view s, size_t i, size_t len) {
  auto p = reinterpret_cast<const uint8_t*>(s.data()) + i;
  if (len == 1) return p[0];
  uint32_t cp = p[0] & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[k] & 0x3F);
  return cp;
}

// Last character of s (valid UTF-8, non-empty): its code point and start offset.
uint32_t last_char(std::string_view s, size_t* start) {
  size_t i = s.size() - 1;
  while (i > 0 && (uint8_t(s[i]) & 0xC0) == 0x80) --i;
  *start = i;
  return decode_at(s, i, s.size() - i);
}

// Rust char::is_whitespace (the Unicode White_Space property).
bool is_whitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Rust char::is_alphanumeric, for the single_word flag. Only ASCII is implemented: the Unicode tables are
// large and no Gemma token uses single_word, so a non-ASCII neighbour is an error rather than a guess.
bool is_alphanumeric(uint32_t c) {
  MTP_CHECK(c < 0x80,
            "tokenizer: single_word added token next to non-ASCII character U+{:04X} (not implemented)", c);
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// HF AddedVocabulary::find_matches over `text`; calls emit(span, added index or -1) in order, skipping empty
// spans (PreTokenizedString::split drops them).
template <typename Emit>
void split_added(const TokenizerData& d, const TokenTrie& trie, std::string_view text, Emit&& emit) {
  if (trie.empty()) {
    if (!text.empty()) emit(text, -1);
    return;
  }
  size_t start_offset = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (!trie.may_start(uint8_t(text[pos]))) {
      ++pos;
      continue;
    }
    size_t stop = 0;
    int32_t index = trie.longest_at(text, pos, &stop);
    if (index < 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    pos = stop;  // the next search resumes after this match, whatever the flags do below
    const AddedToken& t = d.added[index];
    if (t.single_word) {
      size_t ignored;
      bool start_space = start == 0 || !is_alphanumeric(last_char(text.substr(0, start), &ignored));
      bool stop_space =
          stop == text.size() || !is_alphanumeric(decode_at(text, stop, lead_len(uint8_t(text[stop]))));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      // Leftmost position of the whitespace run ending at `start`, not before the previous match.
      size_t s = start;
      while (s > 0) {
        size_t cs;
        if (!is_whitespace(last_char(text.substr(0, s), &cs))) break;
        s = cs;
      }
      start = std::max(s, start_offset);
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        size_t len = lead_len(uint8_t(text[stop]));
        if (!is_whitespace(decode_at(text, stop, len))) break;
        stop += len;
      }
    }
    if (start_offset < start) emit(text.substr(start_offset, start - start_offset), -1);
    emit(text.substr(start, stop - start), index);
    start_offset = stop;
  }
  if (start_offset < text.size()) emit(text.substr(start_offset), -1);
}

// HF NormalizedString::split with a literal pattern, appending the resulting non-empty pieces to `out`.
void split_pattern(const PreTokenizerStep& st, std::string_view s, std::vector<std::string_view>& out) {
  struct Piece {
    size_t begin, end;
    bool flag;  // is a match (or, for Removed, "remove me")
  };
  std::vector<Piece> m;
  if (st.pattern.empty()) {
    m.push_back({0, s.size(), false});
  } else {
    size_t prev = 0;
    for (size_t hit; (hit = s.find(st.pattern, prev)) != std::string_view::npos;
         prev = hit + st.pattern.size()) {
      if (prev != hit) m.push_back({prev, hit, false});
      m.push_back({hit, hit + st.pattern.size(), true});
    }
    if (prev != s.size()) m.push_back({prev, s.size(), false});
  }
  if (st.invert) {
    for (Piece& p : m) p.flag = !p.flag;
  }
  std::vector<Piece> r;
  using B = PreTokenizerStep;
  switch (st.behavior) {
    case B::Removed:
      r = m;
      break;
    case B::Isolated:
      r = m;
      for (Piece& p : r) p.flag = false;
      break;
    case B::Contiguous: {
      bool prev_match = false;
      for (const Piece& p : m) {
        if (p.flag == prev_match && !r.empty())
          r.back().end = p.end;
        else
          r.push_back({p.begin, p.end, false});
        prev_match = p.flag;
      }
      break;
    }
    case B::MergedWithPrevious: {
      bool prev_match = false;
      for (const Piece& p : m) {
        if (p.flag && !prev_match && !r.empty())
          r.back().end = p.end;
        else
          r.push_back({p.begin, p.end, false});
        prev_match = p.flag;
      }
      break;
    }
    case B::MergedWithNext: {
      bool prev_match = false;
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->flag && !prev_match && !r.empty())
          r.back().begin = it->begin;
        else
          r.push_back({it->begin, it->end, false});
        prev_match = it->flag;
      }
      std::reverse(r.begin(), r.end());
      break;
    }
  }
  for (const Piece& p : r) {
    if (!p.flag && p.end > p.begin) out.push_back(s.substr(p.begin, p.end - p.begin));
  }
}

void pre_tokenize_and_bpe(const TokenizerData& d, std::string_view s, std::vector<int32_t>& out) {
  if (d.pre_tokenizer.empty()) {
    bpe_encode(d, s, out);
    return;
  }
  std::vector<std::string_view> pieces{s}, next;
  for (const PreTokenizerStep& st : d.pre_tokenizer) {
    next.clear();
    for (std::string_view p : pieces) split_pattern(st, p, next);
    pieces.swap(next);
  }
  for (std::string_view p : pieces) bpe_encode(d, p, out);
}

}  // namespace

void normalize(const std::vector<NormalizerStep>& steps, std::string& s) {
  for (const NormalizerStep& st : steps) {
    if (st.kind == NormalizerStep::Prepend) {
      if (!s.empty()) s.insert(0, st.content);
      continue;
    }
    size_t hit = s.find(st.pattern);
    if (hit == std::string::npos) continue;
    std::string out;
    out.reserve(s.size() + s.size() / 4);
    size_t pos = 0;
    for (; hit != std::string::npos; pos = hit + st.pattern.size(), hit = s.find(st.pattern, pos)) {
      out.append(s, pos, hit - pos).append(st.content);
    }
    out.append(s, pos);
    s = std::move(out);
  }
}

void encode_text(const TokenizerData& d, std::string_view text, std::vector<int32_t>& out) {
  std::string normalized;
  split_added(d, d.raw_trie, text, [&](std::string_view piece, int32_t added) {
    if (added >= 0) {
      out.push_back(d.added[added].id);
      return;
    }
    normalized.assign(piece);
    normalize(d.normalizer, normalized);
    split_added(d, d.normalized_trie, normalized, [&](std::string_view p, int32_t a) {
      if (a >= 0)
        out.push_back(d.added[a].id);
      else
        pre_tokenize_and_bpe(d, p, out);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// BPE

void bpe_encode(const TokenizerData& d, std::string_view w, std::vector<int32_t>& out) {
  if (w.empty()) return;
  if (d.ignore_merges) {
    int32_t id = d.vocab.find(w);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  // A doubly linked list of symbols (id -1 once merged into its left neighbour) and a min-heap of candidate
  // merges ordered by (rank, position), as in HF Word::merge_all. Whole Gemma paragraphs are one word, so
  // this must stay O(n log n).
  struct Symbol {
    int32_t id, prev, next;
  };
  struct Merge {
    int32_t rank, pos, new_id;
  };
  thread_local std::vector<Symbol> syms;
  thread_local std::vector<Merge> heap;
  syms.clear();
  heap.clear();
  auto add = [&](int32_t id) {
    auto n = int32_t(syms.size());
    syms.push_back({id, n - 1, n + 1});
  };

  // One symbol per character; unknown characters become byte tokens or (fused) unk.
  bool pending_unk = false;
  for (size_t i = 0; i < w.size();) {
    auto c = uint8_t(w[i]);
    size_t len = lead_len(c);
    int32_t id = len < 4 ? d.bmp_ids[decode_at(w, i, len)] : d.vocab.find(w.substr(i, len));
    if (id >= 0) {
      if (pending_unk) add(d.model_unk);
      pending_unk = false;
      add(id);
    } else {
      bool bytes_ok = d.byte_fallback;
      for (size_t k = 0; bytes_ok && k < len; ++k) bytes_ok = d.byte_ids[uint8_t(w[i + k])] >= 0;
      if (bytes_ok) {
        // HF does not flush a pending unk here: it lands after these bytes. Reproduced on purpose.
        for (size_t k = 0; k < len; ++k) add(d.byte_ids[uint8_t(w[i + k])]);
      } else {
        MTP_CHECK(d.model_unk >= 0,
                  "tokenizer {}: character \"{}\" is not in the vocabulary and there is no unk token",
                  d.source, w.substr(i, len));
        if (pending_unk && !d.fuse_unk) add(d.model_unk);
        pending_unk = true;
      }
    }
    i += len;
  }
  if (pending_unk) add(d.model_unk);
  if (syms.empty()) return;
  syms.back().next = -1;

  auto later = [](const Merge& a, const Merge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    if (const PairMap::Value* m = d.merges.find(syms[i].id, syms[i + 1].id))
      heap.push_back({m->rank, int32_t(i), m->new_id});
  }
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    Merge top = heap.back();
    heap.pop_back();
    Symbol& left = syms[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    int32_t right_pos = left.next;
    Symbol right = syms[right_pos];
    // Stale entry? HF compares only the merged id, not the rank; we do the same.
    const PairMap::Value* now = d.merges.find(left.id, right.id);
    if (now == nullptr || now->new_id != top.new_id) continue;
    left.id = top.new_id;
    left.next = right.next;
    syms[right_pos].id = -1;
    if (right.next >= 0) syms[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const PairMap::Value* m = d.merges.find(syms[left.prev].id, left.id)) {
        heap.push_back({m->rank, left.prev, m->new_id});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
    if (left.next >= 0) {
      if (const PairMap::Value* m = d.merges.find(left.id, syms[left.next].id)) {
        heap.push_back({m->rank, top.pos, m->new_id});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

}  // namespace mtpserve::detail
