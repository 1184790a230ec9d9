#include "server/jinja/lexer.h"

#include <algorithm>

#include "core/error.h"
#include "server/jinja/value.h"

namespace mtpserve::jinja {
namespace {

class Lexer {
 public:
  Lexer(std::string_view src, const std::string& name) : src_(src), name_(name) {
    // keep_trailing_newline=False: Jinja (and @huggingface/jinja) drop one trailing newline.
    if (!src_.empty() && src_.back() == '\n') src_.remove_suffix(1);
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool strip_ws = false;      // the previous tag ended with `-`: strip all leading whitespace
    bool trim_newline = false;  // the previous tag was a block or comment: trim_blocks drops one '\n'
    while (pos < src_.size()) {
      size_t open = find_open(pos);
      size_t text_begin = pos, text_end = open;
      if (strip_ws) {
        size_t len = 0;
        while (text_begin < text_end && is_space_at(src_, text_begin, &len)) text_begin += len;
      } else if (trim_newline && text_begin < text_end && src_[text_begin] == '\n') {
        ++text_begin;
      }
      if (open < src_.size()) {
        char kind = src_[open + 1];
        bool minus = open + 2 < src_.size() && src_[open + 2] == '-';
        if (minus) {
          std::string trimmed = strip(src_.substr(text_begin, text_end - text_begin), false, true);
          text_end = text_begin + trimmed.size();
        } else if (kind == '%' || kind == '#') {
          // lstrip_blocks: spaces and tabs between the start of a line and a block tag are dropped.
          size_t run = text_end;
          while (run > text_begin && (src_[run - 1] == ' ' || src_[run - 1] == '\t')) --run;
          size_t line_start = run;
          while (line_start > 0 && (src_[line_start - 1] == ' ' || src_[line_start - 1] == '\t'))
            --line_start;
          if (line_start == 0 || src_[line_start - 1] == '\n') text_end = run;
        }
      }
      if (text_end > text_begin)
        push(TokenKind::Text, std::string(src_.substr(text_begin, text_end - text_begin)), text_begin);
      if (open >= src_.size()) break;

      char kind = src_[open + 1];
      size_t p = open + 2;
      if (p < src_.size() && src_[p] == '-') ++p;
      if (kind == '#') {
        size_t close = src_.find("#}", p);
        if (close == std::string_view::npos) error(open, "unterminated comment (missing '#}')");
        strip_ws = close > p && src_[close - 1] == '-';
        trim_newline = !strip_ws;
        pos = close + 2;
        continue;
      }
      push(kind == '{' ? TokenKind::ExprOpen : TokenKind::StmtOpen, kind == '{' ? "{{" : "{%", open);
      size_t tag_start = tokens_.size();
      pos = lex_tag(p, kind, open, &strip_ws);
      trim_newline = kind == '%' && !strip_ws;
      if (kind == '%' && tokens_.size() == tag_start + 2 && tokens_[tag_start].text == "raw") {
        pos = lex_raw(pos, &strip_ws, &trim_newline);
      }
    }
    push(TokenKind::End, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t find_open(size_t pos) const {
    for (size_t i = pos; i + 1 < src_.size(); ++i)
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return src_.size();
  }

  void push(TokenKind kind, std::string text, size_t offset) {
    auto [line, col] = location(offset);
    tokens_.push_back(Token{kind, std::move(text), line, col});
  }

  std::pair<int, int> location(size_t offset) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) - 1;
    return {static_cast<int>(it - line_starts_.begin()) + 1, static_cast<int>(offset - *it) + 1};
  }

  [[noreturn]] void error(size_t offset, const std::string& message) const {
    auto [line, col] = location(offset);
    fail("{}:{}:{}: syntax error: {}", name_, line, col, message);
  }

  // Lexes the inside of {{ }} or {% %} starting at `p`; returns the offset after the closing tag.
  size_t lex_tag(size_t p, char kind, size_t open, bool* strip_after) {
    int depth = 0;  // brackets opened inside the tag: "}}" closes a dict literal first
    while (true) {
      while (p < src_.size() && (src_[p] == ' ' || src_[p] == '\t' || src_[p] == '\n' || src_[p] == '\r'))
        ++p;
      if (p >= src_.size())
        error(open, kind == '{' ? "unterminated '{{' (missing '}}')" : "unterminated '{%' (missing '%}')");
      std::string_view rest = src_.substr(p);
      std::string_view close = kind == '{' ? "}}" : "%}";
      bool minus = rest.size() > 2 && rest[0] == '-' && rest.substr(1, 2) == close;
      if (depth == 0 && (rest.substr(0, 2) == close || minus)) {
        push(kind == '{' ? TokenKind::ExprClose : TokenKind::StmtClose, std::string(close), p);
        *strip_after = minus;
        return p + (minus ? 3 : 2);
      }
      char c = src_[p];
      if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        p = lex_number(p);
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = p;
        while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        push(TokenKind::Name, std::string(src_.substr(p, e - p)), p);
        p = e;
      } else {
        static const char* const kOps[] = {"**", "//", "==", "!=", "<=", ">=", "(", ")", "[",
                                           "]",  "{",  "}",  ",",  ".",  ":",  "|", "=", "+",
                                           "-",  "*",  "/",  "%",  "~",  "<",  ">"};
        const char* op = nullptr;
        for (const char* o : kOps)
          if (rest.substr(0, std::char_traits<char>::length(o)) == o) {
            op = o;
            break;
          }
        if (!op) error(p, std::string("unexpected character '") + c + "'");
        std::string s(op);
        if (s == "(" || s == "[" || s == "{") ++depth;
        if ((s == ")" || s == "]" || s == "}") && depth > 0) --depth;
        push(TokenKind::Op, s, p);
        p += s.size();
      }
    }
  }

  size_t lex_string(size_t p) {
    char quote = src_[p];
    std::string out;
    size_t i = p + 1;
    for (; i < src_.size() && src_[i] != quote; ++i) {
      if (src_[i] != '\\' || i + 1 >= src_.size()) {
        out += src_[i];
        continue;
      }
      char e = src_[++i];
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '0':
          out += '\0';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
        case 'u':
        case 'U': {
          size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          std::string hex(src_.substr(i + 1, n));
          if (hex.size() != n || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
            error(i - 1, std::string("invalid \\") + e + " escape in string literal");
          append_utf8(out, static_cast<uint32_t>(std::stoul(hex, nullptr, 16)));
          i += n;
          break;
        }
        default:
          out += '\\', out += e;  // Python keeps unknown escapes verbatim
      }
    }
    if (i >= src_.size()) error(p, "unterminated string literal");
    push(TokenKind::String, std::move(out), p);
    return i + 1;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  size_t lex_number(size_t p) {
    auto digits = [&](size_t i) {
      while (i < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[i])) || src_[i] == '_')) ++i;
      return i;
    };
    size_t e = digits(p);
    bool is_float = false;
    // `x.0.1` is attribute access, so a fraction only follows a number that does not follow a dot.
    bool after_dot = !tokens_.empty() && tokens_.back().kind == TokenKind::Op && tokens_.back().text == ".";
    if (!after_dot && e + 1 < src_.size() && src_[e] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      e = digits(e + 1);
      is_float = true;
    }
    if (!after_dot && e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1;
      if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
      if (x < src_.size() && std::isdigit(static_cast<unsigned char>(src_[x]))) {
        e = digits(x);
        is_float = true;
      }
    }
    std::string text(src_.substr(p, e - p));
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    push(is_float ? TokenKind::Float : TokenKind::Int, text, p);
    return e;
  }

  // After {% raw %}: everything up to {% endraw %} is text.
  size_t lex_raw(size_t pos, bool* strip_ws, bool* trim_newline) {
    tokens_.resize(tokens_.size() - 3);  // drop {% raw %}
    for (size_t i = src_.find("{%", pos); i != std::string_view::npos; i = src_.find("{%", i + 2)) {
      size_t p = i + 2;
      bool minus = p < src_.size() && src_[p] == '-';
      if (minus) ++p;
      while (p < src_.size() && src_[p] == ' ') ++p;
      if (src_.substr(p, 6) != "endraw") continue;
      p += 6;
      while (p < src_.size() && src_[p] == ' ') ++p;
      bool minus_after = src_.substr(p, 3) == "-%}";
      if (!minus_after && src_.substr(p, 2) != "%}") continue;
      size_t b = pos, e = i;
      if (*strip_ws)
        b = pos + (src_.substr(pos, e - pos).size() - strip(src_.substr(pos, e - pos), true, false).size());
      else if (*trim_newline && b < e && src_[b] == '\n')
        ++b;
      std::string text(src_.substr(b, e - b));
      if (minus) text = strip(text, false, true);
      if (!text.empty()) push(TokenKind::Text, text, b);
      *strip_ws = minus_after;
      *trim_newline = !minus_after;
      return p + (minus_after ? 3 : 2);
    }
    error(pos, "unterminated raw block (missing '{% endraw %}')");
  }

  std::string_view src_;
  const std::string& name_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source, const std::string& name) {
  return Lexer(source, name).run();
}

}  // namespace mtpserve::jinja
