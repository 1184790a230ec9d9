// The syntax tree of a parsed template. Every node keeps the line and column it starts at, so runtime
// errors can point at the construct that failed.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "server/jinja/value.h"

namespace mtpserve::jinja {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Arg {
  std::string name;  // empty for a positional argument
  ExprPtr value;
};

struct Expr {
  enum class Kind {
    Literal,  // literal
    Name,     // name
    List,     // items
    Tuple,    // items
    Dict,     // items: key, value, key, value, ...
    Attr,     // a.name
    Index,    // a[b]
    Slice,    // a[b:c:d]; absent bounds are nullptr
    Call,     // a(args)
    Filter,   // a | name(args); a is nullptr inside {% filter %} and block {% set %}
    Test,     // a is [not] name(args)
    Unary,    // name (the operator: "-", "+", "not") applied to a
    Binary,   // a name b: arithmetic, comparison, "in", "not in", "~"
    And,      // a and b
    Or,       // a or b
    Cond,     // a if b else c (c may be nullptr: undefined)
  };
  Kind kind;
  int line = 0, col = 0;
  Value literal;
  std::string name;
  std::vector<ExprPtr> items;
  std::vector<Arg> args;
  ExprPtr a, b, c, d;
  bool negate = false;
};

struct Param {
  std::string name;
  ExprPtr default_value;  // nullptr: required
};

struct Stmt {
  enum class Kind {
    Text,         // text
    Output,       // {{ expr }}
    If,           // if expr: body else else_body (elif is a nested If in else_body)
    For,          // for target in expr [if cond]: body else else_body
    Set,          // set target = expr
    SetBlock,     // set target [| filters]: body
    Macro,        // macro name(params): body
    CallBlock,    // call[(params)] expr: body
    FilterBlock,  // filter filters: body
    Break,
    Continue,
    Do,  // do expr
  };
  Kind kind;
  int line = 0, col = 0;
  std::string text;
  ExprPtr expr, target, cond;
  std::vector<ExprPtr> filters;  // Filter exprs with a == nullptr, applied in order
  Body body, else_body;
  std::vector<Param> params;
};

}  // namespace mtpserve::jinja
