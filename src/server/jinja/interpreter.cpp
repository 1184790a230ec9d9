// Tree-walking evaluation of a parsed template, and the Template API.
#include <deque>
#include <unordered_map>

#include "core/error.h"
#include "server/jinja/builtins.h"
#include "server/jinja/lexer.h"
#include "server/jinja/parser.h"
#include "server/jinja/template.h"

namespace mtpserve::jinja {
namespace {

// A variable scope. For loops, macro calls and call blocks open one; if and set do not (as in Jinja).
struct Env {
  std::unordered_map<std::string, Value> vars;
  Env* parent = nullptr;

  const Value* lookup(const std::string& name) const {
    for (const Env* e = this; e; e = e->parent) {
      auto it = e->vars.find(name);
      if (it != e->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

enum class Flow { Normal, Break, Continue };

class Interpreter {
 public:
  Interpreter(const std::string& name, const RenderOptions& options) : name_(name), options_(options) {}

  std::string run(const Body& body, const Dict& variables) {
    Env* globals = new_env(nullptr);
    for (auto& [k, v] : make_globals(options_)) globals->vars[k] = v;
    Env* top = new_env(globals);
    for (const auto& [k, v] : variables) top->vars[k] = v;
    std::string out;
    Flow flow = exec(body, top, out);
    if (flow != Flow::Normal) fail("{}: 'break' or 'continue' outside a for loop", name_);
    return out;
  }

 private:
  Env* new_env(Env* parent) {
    // Envs live as long as the render: macros keep a pointer to the scope they were defined in.
    envs_.emplace_back();
    envs_.back().parent = parent;
    return &envs_.back();
  }

  template <typename Node>
  [[noreturn]] void error_at(const Node& n, const std::string& message) const {
    fail("{}:{}:{}: {}", name_, n.line, n.col, message);
  }

  // Runs `f`, turning a RuntimeFailure from a value operation into an Error located at `n`.
  template <typename Node, typename F>
  auto located(const Node& n, const std::string& what, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const RuntimeFailure& e) {
      error_at(n, what + e.message);
    }
  }

  // ---- statements ----

  Flow exec(const Body& body, Env* env, std::string& out) {
    for (const auto& s : body) {
      Flow f = exec(*s, env, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s, Env* env, std::string& out) {
    switch (s.kind) {
      case Stmt::Kind::Text:
        out += s.text;
        break;
      case Stmt::Kind::Output: {
        Value v = eval(*s.expr, env);
        out += located(s, "", [&] { return v.str(); });
        break;
      }
      case Stmt::Kind::If:
        return exec(eval(*s.expr, env).truthy() ? s.body : s.else_body, env, out);
      case Stmt::Kind::For:
        exec_for(s, env, out);
        break;
      case Stmt::Kind::Set:
        assign(s, *s.target, eval(*s.expr, env), env);
        break;
      case Stmt::Kind::SetBlock: {
        std::string text;
        exec(s.body, env, text);
        assign(s, *s.target, apply_filters(s.filters, Value(std::move(text)), env), env);
        break;
      }
      case Stmt::Kind::Macro:
        env->vars[s.text] = make_macro(s.text, s.params, s.body, env, nullptr);
        break;
      case Stmt::Kind::CallBlock: {
        // `caller()` renders the block body in the scope of the {% call %}.
        Value caller = make_macro("caller", s.params, s.body, env, nullptr);
        out += eval_call(*s.expr, env, &caller).str();
        break;
      }
      case Stmt::Kind::FilterBlock: {
        std::string text;
        exec(s.body, env, text);
        out += apply_filters(s.filters, Value(std::move(text)), env).str();
        break;
      }
      case Stmt::Kind::Break:
        return Flow::Break;
      case Stmt::Kind::Continue:
        return Flow::Continue;
      case Stmt::Kind::Do:
        eval(*s.expr, env);
        break;
    }
    return Flow::Normal;
  }

  void assign(const Stmt& s, const Expr& target, Value v, Env* env) {
    switch (target.kind) {
      case Expr::Kind::Name:
        env->vars[target.name] = std::move(v);
        return;
      case Expr::Kind::Attr: {
        Value obj = eval(*target.a, env);
        if (!obj.is_namespace())
          error_at(target, "cannot assign attribute '" + target.name + "' on a " + obj.type_name() +
                               " (only namespace() objects can be assigned to)");
        obj.set(target.name, std::move(v));
        return;
      }
      case Expr::Kind::Tuple: {
        std::vector<Value> items = located(s, "", [&] { return iterate(v); });
        if (items.size() != target.items.size())
          error_at(s, "cannot unpack " + std::to_string(items.size()) + " values into " +
                          std::to_string(target.items.size()) + " names");
        for (size_t i = 0; i < items.size(); ++i) assign(s, *target.items[i], items[i], env);
        return;
      }
      default:
        error_at(target, "cannot assign to this expression");
    }
  }

  void exec_for(const Stmt& s, Env* env, std::string& out) {
    Value seq = eval(*s.expr, env);
    if (seq.is_undefined() == false && !(seq.is_list() || seq.is_dict() || seq.is_string()))
      error_at(*s.expr, "'" + seq.type_name() + "' object is not iterable");
    std::vector<Value> items = iterate(seq);
    Env* scope = new_env(env);
    if (s.cond) {  // `for x in xs if cond`: filtered before the loop, so loop.length counts kept items
      std::vector<Value> kept;
      for (auto& item : items) {
        assign(s, *s.target, item, scope);
        if (eval(*s.cond, scope).truthy()) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      Dict loop{{"index", Value(i + 1)},
                {"index0", Value(i)},
                {"revindex", Value(n - i)},
                {"revindex0", Value(n - i - 1)},
                {"first", Value(i == 0)},
                {"last", Value(i == n - 1)},
                {"length", Value(n)},
                {"depth", Value(1)},
                {"depth0", Value(0)},
                {"previtem", i > 0 ? items[i - 1] : Value::undefined("loop.previtem")},
                {"nextitem", i + 1 < n ? items[i + 1] : Value::undefined("loop.nextitem")}};
      loop.emplace_back("cycle", Value::function("loop.cycle", [i](const CallArgs& a) {
                          if (a.positional.empty()) runtime_fail("loop.cycle() needs at least one argument");
                          return a.positional[i % a.positional.size()];
                        }));
      scope->vars["loop"] = Value(std::move(loop));
      assign(s, *s.target, items[i], scope);
      if (exec(s.body, scope, out) == Flow::Break) break;
    }
    if (n == 0) exec(s.else_body, scope, out);
  }

  // A macro (or call-block caller) as a function value. Arguments bind by position, then by name;
  // missing ones take their default (evaluated at call time) or are undefined, as in Jinja.
  Value make_macro(const std::string& name, const std::vector<Param>& params, const Body& body, Env* def_env,
                   const Value* /*unused*/) {
    return Value::function(name, [this, name, &params, &body, def_env](const CallArgs& args) {
      Env* scope = new_env(def_env);
      List varargs;
      for (size_t i = 0; i < args.positional.size(); ++i) {
        if (i < params.size())
          scope->vars[params[i].name] = args.positional[i];
        else
          varargs.push_back(args.positional[i]);
      }
      Dict kwargs;
      for (const auto& [k, v] : args.keyword) {
        bool is_param = false;
        for (const auto& p : params) is_param |= p.name == k;
        if (is_param)
          scope->vars[k] = v;
        else if (k == "caller")
          scope->vars["caller"] = v;
        else
          kwargs.emplace_back(k, v);
      }
      for (const auto& p : params) {
        if (scope->vars.count(p.name)) continue;
        scope->vars[p.name] = p.default_value
                                  ? eval(*p.default_value, scope)
                                  : Value::undefined("parameter '" + p.name + "' of macro '" + name + "'");
      }
      scope->vars["varargs"] = Value(std::move(varargs));
      scope->vars["kwargs"] = Value(std::move(kwargs));
      std::string out;
      exec(body, scope, out);
      return Value(std::move(out));
    });
  }

  Value apply_filters(const std::vector<ExprPtr>& filters, Value v, Env* env) {
    for (const auto& f : filters) v = eval_filter(*f, std::move(v), env);
    return v;
  }

  // ---- expressions ----

  CallArgs eval_args(const std::vector<Arg>& args, Env* env) {
    CallArgs out;
    for (const auto& a : args) {
      if (a.name.empty())
        out.positional.push_back(eval(*a.value, env));
      else
        out.keyword.emplace_back(a.name, eval(*a.value, env));
    }
    return out;
  }

  Value eval_filter(const Expr& f, Value operand, Env* env) {
    if (!has_filter(f.name)) error_at(f, "unknown filter '" + f.name + "'");
    CallArgs args = eval_args(f.args, env);
    return located(f, "filter '" + f.name + "': ", [&] { return apply_filter(f.name, operand, args); });
  }

  Value eval_call(const Expr& e, Env* env, const Value* caller) {
    Value fn = eval(*e.a, env);
    CallArgs args = eval_args(e.args, env);
    if (caller) args.keyword.emplace_back("caller", *caller);
    if (fn.is_undefined()) error_at(e, undefined_message(fn) + " (called as a function)");
    if (!fn.is_function()) error_at(e, "'" + fn.type_name() + "' object is not callable");
    return located(e, fn.fn_name() + "(): ", [&] { return fn.fn()(args); });
  }

  Value eval(const Expr& e, Env* env) {
    switch (e.kind) {
      case Expr::Kind::Literal:
        return e.literal;
      case Expr::Kind::Name: {
        const Value* v = env->lookup(e.name);
        return v ? *v : Value::undefined("'" + e.name + "' is undefined");
      }
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        List l;
        for (const auto& item : e.items) l.push_back(eval(*item, env));
        return Value(std::move(l));
      }
      case Expr::Kind::Dict: {
        Value d = Value(Dict{});
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          Value k = eval(*e.items[i], env);
          if (!k.is_string()) error_at(*e.items[i], "dict keys must be strings, got " + k.type_name());
          d.set(k.as_string(), eval(*e.items[i + 1], env));
        }
        return d;
      }
      case Expr::Kind::Attr: {
        Value obj = eval(*e.a, env);
        return located(e, "", [&] { return get_attr(obj, e.name); });
      }
      case Expr::Kind::Index: {
        Value obj = eval(*e.a, env);
        Value key = eval(*e.b, env);
        return located(e, "", [&] { return get_item(obj, key); });
      }
      case Expr::Kind::Slice: {
        Value obj = eval(*e.a, env);
        Value start = e.b ? eval(*e.b, env) : Value::none();
        Value stop = e.c ? eval(*e.c, env) : Value::none();
        Value step = e.d ? eval(*e.d, env) : Value::none();
        return located(e, "", [&] { return slice(obj, start, stop, step); });
      }
      case Expr::Kind::Call:
        return eval_call(e, env, nullptr);
      case Expr::Kind::Filter:
        return eval_filter(e, eval(*e.a, env), env);
      case Expr::Kind::Test: {
        if (!has_test(e.name)) error_at(e, "unknown test '" + e.name + "'");
        Value v = eval(*e.a, env);
        CallArgs args = eval_args(e.args, env);
        bool r = located(e, "test '" + e.name + "': ", [&] { return apply_test(e.name, v, args); });
        return Value(r != e.negate);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.a, env);
        if (e.name == "not") return Value(!v.truthy());
        return located(e, "", [&] {
          if (v.is_undefined()) runtime_fail(undefined_message(v));
          if (!v.is_number())
            runtime_fail("bad operand type for unary " + e.name + ": '" + v.type_name() + "'");
          if (e.name == "+") return v.is_bool() ? Value(v.as_int()) : v;
          return v.is_float() ? Value(-v.as_float()) : Value(-v.as_int());
        });
      }
      case Expr::Kind::Binary: {
        Value a = eval(*e.a, env);
        Value b = eval(*e.b, env);
        return located(e, "", [&] { return binary_op(e.name, a, b); });
      }
      case Expr::Kind::And: {
        Value a = eval(*e.a, env);
        return a.truthy() ? eval(*e.b, env) : a;
      }
      case Expr::Kind::Or: {
        Value a = eval(*e.a, env);
        return a.truthy() ? a : eval(*e.b, env);
      }
      case Expr::Kind::Cond:
        if (eval(*e.b, env).truthy()) return eval(*e.a, env);
        return e.c ? eval(*e.c, env) : Value::undefined("the else branch of a conditional expression");
    }
    error_at(e, "unsupported expression");
  }

  const std::string& name_;
  const RenderOptions& options_;
  std::deque<Env> envs_;
};

}  // namespace

Template Template::parse(std::string_view source, std::string name) {
  Template t;
  t.name_ = std::move(name);
  t.body_ = std::make_shared<const Body>(jinja::parse(tokenize(source, t.name_), t.name_));
  return t;
}

std::string Template::render(const Dict& variables, const RenderOptions& options) const {
  MTP_ASSERT(body_ != nullptr);
  return Interpreter(name_, options).run(*body_, variables);
}

std::string Template::render(const nlohmann::ordered_json& context, const RenderOptions& options) const {
  MTP_CHECK(context.is_object() || context.is_null(), "{}: the render context must be a JSON object, got {}",
            name_, context.type_name());
  Dict vars;
  if (context.is_object())
    for (auto it = context.begin(); it != context.end(); ++it)
      vars.emplace_back(it.key(), Value::from_json(it.value()));
  return render(vars, options);
}

}  // namespace mtpserve::jinja
