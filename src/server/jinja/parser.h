// Builds the syntax tree from tokens: statements ({% %} tags, nested by their end tags) and
// expressions with Jinja's operator precedence.
#pragma once
#include <string>
#include <vector>

#include "server/jinja/ast.h"
#include "server/jinja/lexer.h"

namespace mtpserve::jinja {

// Throws mtpserve::Error naming `name`, line and column on a syntax error or an unsupported tag.
Body parse(const std::vector<Token>& tokens, const std::string& name);

}  // namespace mtpserve::jinja
