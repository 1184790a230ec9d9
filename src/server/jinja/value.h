// The runtime value of the Jinja subset used by chat templates. Semantics follow Python Jinja2 (what
// transformers renders with): Python truthiness, equality by value, Python str() when printed.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mtpserve::jinja {

class Value;
using List = std::vector<Value>;
// Insertion-ordered like a Python dict; chat-template dicts are small, so lookups are linear scans.
using Dict = std::vector<std::pair<std::string, Value>>;

// Arguments of a call: positional then keyword (in call order).
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;

  // The argument at `index` or named `name`, or nullptr. Marks nothing; unknown keywords are not checked.
  const Value* get(size_t index, std::string_view name) const;
};
using Function = std::function<Value(const CallArgs&)>;

// A failure inside a value operation, filter or function. The interpreter catches it at the node that
// invoked the operation and rethrows it as mtpserve::Error with the template name, line and column.
struct RuntimeFailure {
  std::string message;
};
[[noreturn]] void runtime_fail(std::string message);

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Function, Namespace };

  Value() = default;  // undefined
  static Value undefined(std::string name = "") {
    Value v;
    v.str_ = std::move(name);
    return v;
  }
  static Value none() { return Value(Kind::None); }
  Value(bool b) : kind_(Kind::Bool), int_(b) {}
  Value(int i) : kind_(Kind::Int), int_(i) {}
  Value(int64_t i) : kind_(Kind::Int), int_(i) {}
  Value(double d) : kind_(Kind::Float), float_(d) {}
  Value(std::string s) : kind_(Kind::String), str_(std::move(s)) {}
  Value(const char* s) : kind_(Kind::String), str_(s) {}
  Value(List l) : kind_(Kind::List), list_(std::make_shared<List>(std::move(l))) {}
  Value(Dict d) : kind_(Kind::Dict), dict_(std::make_shared<Dict>(std::move(d))) {}
  static Value function(std::string name, Function f);
  static Value namespace_(Dict attrs);

  // nlohmann::json (keys sorted) or nlohmann::ordered_json (keys in document order, as Python keeps them).
  static Value from_json(const nlohmann::json& j);
  static Value from_json(const nlohmann::ordered_json& j);
  nlohmann::ordered_json to_json() const;

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_function() const { return kind_ == Kind::Function; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const;   // Int or Bool (Python bools are ints)
  double as_float() const;  // any number
  const std::string& as_string() const { return str_; }
  // The name an undefined value was looked up by, for error messages ("" if unknown).
  const std::string& undefined_name() const { return str_; }
  List& list() const { return *list_; }
  Dict& dict() const { return *dict_; }  // Dict or Namespace attributes
  const Function& fn() const { return *fn_; }
  const std::string& fn_name() const { return str_; }

  // Python semantics.
  bool truthy() const;
  std::string str() const;        // str(): what {{ value }} prints
  std::string repr() const;       // repr(): how values print inside lists and dicts
  std::string type_name() const;  // Python type name for messages: 'str', 'dict', ...
  bool equals(const Value& other) const;
  int compare(const Value& other) const;   // <0, 0, >0; RuntimeFailure for unorderable types
  bool contains(const Value& item) const;  // `item in this`

  const Value* find(std::string_view key) const;    // dict / namespace key; nullptr if absent
  void set(const std::string& key, Value v) const;  // dict / namespace; inserts or replaces

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::Undefined;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;  // String contents, undefined name, or function name
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

// JSON text as transformers' tojson filter writes it: json.dumps(ensure_ascii=False) separators
// (", ", ": "), or ("," , ": ") with an indent, keys in insertion order unless sort_keys.
struct JsonStyle {
  int indent = -1;  // <0: single line
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::string item_sep;  // empty: the default for the indent
  std::string key_sep = ": ";
};
std::string to_json_text(const Value& v, const JsonStyle& style);

// Python float repr: shortest round-trip digits, always with a '.' or exponent ("1.0", "1e-07").
std::string format_float(double d);

// UTF-8 helpers: Python string operations count and strip code points, not bytes.
size_t utf8_length(std::string_view s);
std::vector<std::string> utf8_chars(std::string_view s);
bool is_space_at(std::string_view s, size_t pos, size_t* len);  // Unicode whitespace (Python isspace)
std::string strip(std::string_view s, bool left, bool right);
std::string strip_chars(std::string_view s, std::string_view chars, bool left, bool right);
std::string ascii_lower(std::string s);
std::string ascii_upper(std::string s);

}  // namespace mtpserve::jinja
