#include "server/jinja/parser.h"

#include "core/error.h"

namespace mtpserve::jinja {
namespace {

class Parser {
 public:
  Parser(const std::vector<Token>& tokens, const std::string& name) : toks_(tokens), name_(name) {}

  Body parse_template() {
    Body body = parse_body({});
    if (peek().kind != TokenKind::End) {
      const Token& t = peek(1);
      error(t, "unexpected '{% " + t.text + " %}'");
    }
    return body;
  }

 private:
  // ---- token helpers ----
  const Token& peek(size_t ahead = 0) const {
    size_t i = std::min(pos_ + ahead, toks_.size() - 1);
    return toks_[i];
  }
  const Token& next() {
    const Token& t = toks_[pos_];
    if (pos_ + 1 < toks_.size()) ++pos_;
    return t;
  }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::Op && peek(ahead).text == op;
  }
  bool is_name(const char* n, size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::Name && peek(ahead).text == n;
  }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case TokenKind::End:
        return "end of template";
      case TokenKind::Text:
        return "text";
      case TokenKind::String:
        return "string literal";
      case TokenKind::ExprClose:
      case TokenKind::StmtClose:
        return "'" + t.text + "'";
      default:
        return "'" + t.text + "'";
    }
  }
  [[noreturn]] void error(const Token& t, const std::string& message) const {
    fail("{}:{}:{}: syntax error: {}", name_, t.line, t.col, message);
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) error(peek(), std::string("expected '") + op + "', got " + describe(peek()));
  }
  std::string expect_name() {
    if (peek().kind != TokenKind::Name) error(peek(), "expected a name, got " + describe(peek()));
    return next().text;
  }
  void expect_stmt_end() {
    if (peek().kind != TokenKind::StmtClose) error(peek(), "expected '%}', got " + describe(peek()));
    next();
  }
  template <typename T>
  static std::unique_ptr<T> node(typename T::Kind kind, const Token& at) {
    auto n = std::make_unique<T>();
    n->kind = kind;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  // ---- statements ----

  // Parses until a {% tag %} whose name is in `ends` (left unconsumed: pos_ is at its name) or the end.
  Body parse_body(std::initializer_list<const char*> ends) {
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.kind == TokenKind::End) {
        if (ends.size() != 0)
          error(t, "unexpected end of template, expected '{% " + std::string(*(ends.end() - 1)) + " %}'");
        return body;
      }
      if (t.kind == TokenKind::Text) {
        auto s = node<Stmt>(Stmt::Kind::Text, t);
        s->text = next().text;
        body.push_back(std::move(s));
      } else if (t.kind == TokenKind::ExprOpen) {
        next();
        auto s = node<Stmt>(Stmt::Kind::Output, peek());
        s->expr = parse_expression();
        if (peek().kind != TokenKind::ExprClose) error(peek(), "expected '}}', got " + describe(peek()));
        next();
        body.push_back(std::move(s));
      } else if (t.kind == TokenKind::StmtOpen) {
        const Token& name = peek(1);
        for (const char* e : ends)
          if (name.kind == TokenKind::Name && name.text == e) {
            next();
            return body;
          }
        next();
        StmtPtr s = parse_statement();
        if (s) body.push_back(std::move(s));
      } else {
        error(t, "unexpected " + describe(t));
      }
    }
  }

  StmtPtr parse_statement() {
    const Token& t = peek();
    if (t.kind != TokenKind::Name) error(t, "expected a statement name, got " + describe(t));
    const std::string& kw = t.text;
    if (kw == "if") return parse_if();
    if (kw == "for") return parse_for();
    if (kw == "set") return parse_set();
    if (kw == "macro") return parse_macro();
    if (kw == "call") return parse_call_block();
    if (kw == "filter") return parse_filter_block();
    if (kw == "break" || kw == "continue") {
      auto s = node<Stmt>(kw == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, next());
      expect_stmt_end();
      return s;
    }
    if (kw == "do") {
      auto s = node<Stmt>(Stmt::Kind::Do, next());
      s->expr = parse_expression();
      expect_stmt_end();
      return s;
    }
    if (kw == "generation" || kw == "endgeneration") {
      // transformers' {% generation %} marks assistant text for masks; it renders nothing.
      next();
      expect_stmt_end();
      return nullptr;
    }
    if (kw.rfind("end", 0) == 0 || kw == "else" || kw == "elif")
      error(t, "unexpected '{% " + kw + " %}' without a matching opening tag");
    error(t, "unsupported statement '" + kw + "'");
  }

  void end_tag(const char* name) {
    next();  // the end tag's name, checked by parse_body
    (void)name;
    expect_stmt_end();
  }

  StmtPtr parse_if() {
    auto s = node<Stmt>(Stmt::Kind::If, next());
    s->expr = parse_expression();
    expect_stmt_end();
    s->body = parse_body({"elif", "else", "endif"});
    if (is_name("elif")) {
      // {% elif %} becomes a nested If in the else branch and shares its {% endif %}.
      s->else_body.push_back(parse_if());
      return s;
    }
    if (accept_name("else")) {
      expect_stmt_end();
      s->else_body = parse_body({"endif"});
    }
    end_tag("endif");
    return s;
  }

  StmtPtr parse_for() {
    auto s = node<Stmt>(Stmt::Kind::For, next());
    s->target = parse_target();
    if (!accept_name("in")) error(peek(), "expected 'in' in for loop, got " + describe(peek()));
    s->expr = parse_or();
    if (accept_name("if")) s->cond = parse_or();
    if (is_name("recursive")) error(peek(), "unsupported construct: recursive for loops");
    expect_stmt_end();
    s->body = parse_body({"else", "endfor"});
    if (accept_name("else")) {
      expect_stmt_end();
      s->else_body = parse_body({"endfor"});
    }
    end_tag("endfor");
    return s;
  }

  // A name, a tuple of names (`a, b`), or an attribute (`ns.x`, for set).
  ExprPtr parse_target() {
    const Token& t = peek();
    ExprPtr first = parse_target_item();
    if (!is_op(",")) return first;
    auto tuple = node<Expr>(Expr::Kind::Tuple, t);
    tuple->items.push_back(std::move(first));
    while (accept_op(",")) {
      if (is_name("in") || is_op("=")) break;
      tuple->items.push_back(parse_target_item());
    }
    return tuple;
  }
  ExprPtr parse_target_item() {
    const Token& t = peek();
    if (accept_op("(")) {
      ExprPtr inner = parse_target();
      expect_op(")");
      return inner;
    }
    auto n = node<Expr>(Expr::Kind::Name, t);
    n->name = expect_name();
    if (accept_op(".")) {
      auto attr = node<Expr>(Expr::Kind::Attr, peek());
      attr->name = expect_name();
      attr->a = std::move(n);
      return attr;
    }
    return n;
  }

  StmtPtr parse_set() {
    const Token& kw = next();
    ExprPtr target = parse_target();
    if (accept_op("=")) {
      auto s = node<Stmt>(Stmt::Kind::Set, kw);
      s->target = std::move(target);
      s->expr = parse_tuple_or_expression();
      expect_stmt_end();
      return s;
    }
    auto s = node<Stmt>(Stmt::Kind::SetBlock, kw);
    s->target = std::move(target);
    while (accept_op("|")) s->filters.push_back(parse_filter(nullptr));
    expect_stmt_end();
    s->body = parse_body({"endset"});
    end_tag("endset");
    return s;
  }

  std::vector<Param> parse_params() {
    std::vector<Param> params;
    expect_op("(");
    while (!is_op(")")) {
      Param p;
      p.name = expect_name();
      if (accept_op("=")) p.default_value = parse_expression();
      params.push_back(std::move(p));
      if (!accept_op(",")) break;
    }
    expect_op(")");
    return params;
  }

  StmtPtr parse_macro() {
    auto s = node<Stmt>(Stmt::Kind::Macro, next());
    s->text = expect_name();
    s->params = parse_params();
    expect_stmt_end();
    s->body = parse_body({"endmacro"});
    end_tag("endmacro");
    return s;
  }

  StmtPtr parse_call_block() {
    auto s = node<Stmt>(Stmt::Kind::CallBlock, next());
    if (is_op("(")) s->params = parse_params();
    s->expr = parse_expression();
    if (s->expr->kind != Expr::Kind::Call) error(peek(), "expected a macro call in '{% call %}'");
    expect_stmt_end();
    s->body = parse_body({"endcall"});
    end_tag("endcall");
    return s;
  }

  StmtPtr parse_filter_block() {
    auto s = node<Stmt>(Stmt::Kind::FilterBlock, next());
    do s->filters.push_back(parse_filter(nullptr));
    while (accept_op("|"));
    expect_stmt_end();
    s->body = parse_body({"endfilter"});
    end_tag("endfilter");
    return s;
  }

  // ---- expressions, lowest precedence first ----

  // `a, b` without parentheses is a tuple (used by set).
  ExprPtr parse_tuple_or_expression() {
    const Token& t = peek();
    ExprPtr first = parse_expression();
    if (!is_op(",")) return first;
    auto tuple = node<Expr>(Expr::Kind::Tuple, t);
    tuple->items.push_back(std::move(first));
    while (accept_op(",")) {
      if (peek().kind == TokenKind::StmtClose) break;
      tuple->items.push_back(parse_expression());
    }
    return tuple;
  }

  ExprPtr parse_expression() {
    const Token& t = peek();
    ExprPtr e = parse_or();
    while (is_name("if")) {
      next();
      auto c = node<Expr>(Expr::Kind::Cond, t);
      c->a = std::move(e);
      c->b = parse_or();
      if (accept_name("else")) c->c = parse_expression();
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind kind, const Token& at, ExprPtr a, ExprPtr b, std::string op = "") {
    auto e = node<Expr>(kind, at);
    e->a = std::move(a);
    e->b = std::move(b);
    e->name = std::move(op);
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Token& t = next();
      e = binary(Expr::Kind::Or, t, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Token& t = next();
      e = binary(Expr::Kind::And, t, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Token& t = next();
      auto e = node<Expr>(Expr::Kind::Unary, t);
      e->name = "not";
      e->a = parse_not();
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    while (true) {
      const Token& t = peek();
      std::string op;
      if (t.kind == TokenKind::Op && (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" ||
                                      t.text == "<=" || t.text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next(), next();
        op = "not in";
      } else {
        return e;
      }
      e = binary(Expr::Kind::Binary, t, std::move(e), parse_math1(), op);
    }
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      e = binary(Expr::Kind::Binary, t, std::move(e), parse_concat(), t.text);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token& t = next();
      e = binary(Expr::Kind::Binary, t, std::move(e), parse_math2(), "~");
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      e = binary(Expr::Kind::Binary, t, std::move(e), parse_pow(), t.text);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary();
    while (is_op("**")) {
      const Token& t = next();
      e = binary(Expr::Kind::Binary, t, std::move(e), parse_unary(), "**");
    }
    return e;
  }

  // As in Jinja, filters bind to the whole unary expression: `-3 | abs` is abs(-3).
  ExprPtr parse_unary(bool with_filters = true) {
    const Token& t = peek();
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      next();
      e = node<Expr>(Expr::Kind::Unary, t);
      e->name = t.text;
      e->a = parse_unary(false);
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filters ? parse_filters_and_tests(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    switch (t.kind) {
      case TokenKind::String: {
        auto e = node<Expr>(Expr::Kind::Literal, t);
        std::string s = next().text;
        while (peek().kind == TokenKind::String) s += next().text;  // adjacent literals concatenate
        e->literal = Value(std::move(s));
        return e;
      }
      case TokenKind::Int:
      case TokenKind::Float: {
        auto e = node<Expr>(Expr::Kind::Literal, t);
        const std::string& s = next().text;
        try {
          e->literal =
              t.kind == TokenKind::Int ? Value(static_cast<int64_t>(std::stoll(s))) : Value(std::stod(s));
        } catch (const std::exception&) {
          error(t, "number literal out of range: " + s);
        }
        return e;
      }
      case TokenKind::Name: {
        auto e = node<Expr>(Expr::Kind::Literal, t);
        const std::string& n = t.text;
        if (n == "true" || n == "True")
          e->literal = Value(true);
        else if (n == "false" || n == "False")
          e->literal = Value(false);
        else if (n == "none" || n == "None")
          e->literal = Value::none();
        else
          e->kind = Expr::Kind::Name, e->name = n;
        next();
        return e;
      }
      case TokenKind::Op:
        if (t.text == "(") {
          next();
          if (accept_op(")")) return node<Expr>(Expr::Kind::Tuple, t);
          ExprPtr first = parse_expression();
          if (accept_op(")")) return first;
          auto tuple = node<Expr>(Expr::Kind::Tuple, t);
          tuple->items.push_back(std::move(first));
          while (accept_op(",")) {
            if (is_op(")")) break;
            tuple->items.push_back(parse_expression());
          }
          expect_op(")");
          return tuple;
        }
        if (t.text == "[") {
          next();
          auto list = node<Expr>(Expr::Kind::List, t);
          while (!is_op("]")) {
            list->items.push_back(parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("]");
          return list;
        }
        if (t.text == "{") {
          next();
          auto dict = node<Expr>(Expr::Kind::Dict, t);
          while (!is_op("}")) {
            dict->items.push_back(parse_expression());
            expect_op(":");
            dict->items.push_back(parse_expression());
            if (!accept_op(",")) break;
          }
          expect_op("}");
          return dict;
        }
        break;
      default:
        break;
    }
    error(t, "expected an expression, got " + describe(t));
  }

  std::vector<Arg> parse_args() {  // after '('
    std::vector<Arg> args;
    while (!is_op(")")) {
      Arg a;
      if (peek().kind == TokenKind::Name && is_op("=", 1)) {
        a.name = next().text;
        next();
      } else if (is_op("*") || is_op("**")) {
        error(peek(), "unsupported construct: argument unpacking with '*'");
      }
      a.value = parse_expression();
      args.push_back(std::move(a));
      if (!accept_op(",")) break;
    }
    expect_op(")");
    return args;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const Token& t = peek();
      if (accept_op(".")) {
        auto attr = node<Expr>(Expr::Kind::Attr, t);
        if (peek().kind == TokenKind::Int) {  // `items.0` is items[0]
          attr->kind = Expr::Kind::Index;
          auto idx = node<Expr>(Expr::Kind::Literal, peek());
          idx->literal = Value(static_cast<int64_t>(std::stoll(next().text)));
          attr->b = std::move(idx);
        } else {
          attr->name = expect_name();
        }
        attr->a = std::move(e);
        e = std::move(attr);
      } else if (accept_op("[")) {
        e = parse_subscript(std::move(e), t);
      } else if (accept_op("(")) {
        auto call = node<Expr>(Expr::Kind::Call, t);
        call->line = e->line, call->col = e->col;  // errors point at the callee's name
        call->a = std::move(e);
        call->args = parse_args();
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object, const Token& at) {  // after '['
    ExprPtr parts[3];
    int colons = 0;
    while (!is_op("]")) {
      if (accept_op(":")) {
        if (++colons > 2) error(peek(), "too many ':' in slice");
        continue;
      }
      if (parts[colons]) error(peek(), "expected ']' or ':', got " + describe(peek()));
      parts[colons] = parse_expression();
    }
    expect_op("]");
    auto e = node<Expr>(colons ? Expr::Kind::Slice : Expr::Kind::Index, at);
    e->a = std::move(object);
    if (!colons && !parts[0]) error(at, "empty subscript");
    e->b = std::move(parts[0]);
    e->c = std::move(parts[1]);
    e->d = std::move(parts[2]);
    return e;
  }

  ExprPtr parse_filter(ExprPtr operand) {  // after '|'
    auto f = node<Expr>(Expr::Kind::Filter, peek());
    f->name = expect_name();
    if (accept_op("(")) f->args = parse_args();
    f->a = std::move(operand);
    return f;
  }

  ExprPtr parse_filters_and_tests(ExprPtr e) {
    while (true) {
      if (accept_op("|")) {
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        auto test = node<Expr>(Expr::Kind::Test, next());
        test->negate = accept_name("not");
        const Token& name = peek();
        test->name = expect_name();
        // `==`, `!=` etc. are spelled as tests too (`x is == 3` is not valid Jinja, but `eq` is).
        if (accept_op("(")) {
          test->args = parse_args();
        } else if (takes_bare_argument(name.text)) {
          Arg a;
          a.value = parse_postfix(parse_primary());
          test->args.push_back(std::move(a));
        }
        test->a = std::move(e);
        e = std::move(test);
      } else {
        return e;
      }
    }
  }

  // `x is divisibleby 3`: a test may take one argument without parentheses.
  bool takes_bare_argument(const std::string&) const {
    const Token& t = peek();
    if (t.kind == TokenKind::String || t.kind == TokenKind::Int || t.kind == TokenKind::Float) return true;
    if (t.kind == TokenKind::Op) return t.text == "[" || t.text == "{";
    if (t.kind != TokenKind::Name) return false;
    static const char* const kStop[] = {"else", "or", "and", "if", "in", "not", "is"};
    for (const char* s : kStop)
      if (t.text == s) return false;
    return true;
  }

  const std::vector<Token>& toks_;
  const std::string& name_;
  size_t pos_ = 0;
};

}  // namespace

Body parse(const std::vector<Token>& tokens, const std::string& name) {
  return Parser(tokens, name).parse_template();
}

}  // namespace mtpserve::jinja
