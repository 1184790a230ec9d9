// Splits template source into text and tag tokens, applying whitespace control the way transformers
// configures Jinja for chat templates: trim_blocks and lstrip_blocks on, `-` modifiers, and the single
// trailing newline of the source dropped (keep_trailing_newline off).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace mtpserve::jinja {

enum class TokenKind {
  Text,       // literal output
  ExprOpen,   // {{
  ExprClose,  // }}
  StmtOpen,   // {%
  StmtClose,  // %}
  Name,       // identifier or keyword
  String,     // string literal, escapes decoded
  Int,
  Float,
  Op,  // punctuation and operators: ( ) [ ] { } , . : | = + - * / // % ** ~ == != < > <= >=
  End,
};

struct Token {
  TokenKind kind;
  std::string text;
  int line = 1;  // 1-based position of the token's first character in the source
  int col = 1;
};

// Throws mtpserve::Error naming `name`, line and column on malformed input (unterminated tag,
// string or comment, unexpected character).
std::vector<Token> tokenize(std::string_view source, const std::string& name);

}  // namespace mtpserve::jinja
