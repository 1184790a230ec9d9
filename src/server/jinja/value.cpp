#include "server/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace mtpserve::jinja {

void runtime_fail(std::string message) { throw RuntimeFailure{std::move(message)}; }

const Value* CallArgs::get(size_t index, std::string_view name) const {
  if (index < positional.size()) return &positional[index];
  for (const auto& [k, v] : keyword)
    if (k == name) return &v;
  return nullptr;
}

Value Value::function(std::string name, Function f) {
  Value v(Kind::Function);
  v.str_ = std::move(name);
  v.fn_ = std::make_shared<Function>(std::move(f));
  return v;
}

Value Value::namespace_(Dict attrs) {
  Value v(Kind::Namespace);
  v.dict_ = std::make_shared<Dict>(std::move(attrs));
  return v;
}

template <typename Json>
static Value value_from_json(const Json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return Value(static_cast<int64_t>(j.template get<uint64_t>()));
    case nlohmann::json::value_t::number_float:
      return Value(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      l.reserve(j.size());
      for (const auto& e : j) l.push_back(value_from_json(e));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      d.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) d.emplace_back(it.key(), value_from_json(it.value()));
      return Value(std::move(d));
    }
    default:
      return Value::undefined();  // binary / discarded: not produced by JSON text
  }
}

Value Value::from_json(const nlohmann::json& j) { return value_from_json(j); }
Value Value::from_json(const nlohmann::ordered_json& j) { return value_from_json(j); }

nlohmann::ordered_json Value::to_json() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None:
      return nullptr;
    case Kind::Bool:
      return as_bool();
    case Kind::Int:
      return int_;
    case Kind::Float:
      return float_;
    case Kind::String:
      return str_;
    case Kind::List: {
      auto a = nlohmann::ordered_json::array();
      for (const auto& e : *list_) a.push_back(e.to_json());
      return a;
    }
    case Kind::Dict:
    case Kind::Namespace: {
      auto o = nlohmann::ordered_json::object();
      for (const auto& [k, v] : *dict_) o[k] = v.to_json();
      return o;
    }
    case Kind::Function:
      runtime_fail("cannot convert function " + str_ + " to JSON");
  }
  return nullptr;
}

int64_t Value::as_int() const {
  if (kind_ == Kind::Float) return static_cast<int64_t>(float_);
  return int_;
}

double Value::as_float() const { return kind_ == Kind::Float ? float_ : static_cast<double>(int_); }

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None:
      return false;
    case Kind::Bool:
    case Kind::Int:
      return int_ != 0;
    case Kind::Float:
      return float_ != 0;
    case Kind::String:
      return !str_.empty();
    case Kind::List:
      return !list_->empty();
    case Kind::Dict:
      return !dict_->empty();
    case Kind::Function:
    case Kind::Namespace:
      return true;
  }
  return false;
}

std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // Shortest round-trip digits in scientific form, then laid out the way Python's repr does:
  // positional for exponents in [-4, 16), scientific otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exp = std::stoi(sci.substr(e + 1));
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(-exp - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
      out = digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return negative ? "-" + out : out;
}

// Python repr of a string: single quotes unless the text has a single quote and no double quote.
static std::string repr_string(const std::string& s) {
  char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == q)
      out += std::string("\\") + static_cast<char>(q);
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else
      out += static_cast<char>(c);
  }
  return out + q;
}

std::string Value::str() const {
  switch (kind_) {
    case Kind::Undefined:
      return "";
    case Kind::String:
      return str_;
    default:
      return repr();
  }
}

std::string Value::repr() const {
  switch (kind_) {
    case Kind::Undefined:
      return "";
    case Kind::None:
      return "None";
    case Kind::Bool:
      return int_ ? "True" : "False";
    case Kind::Int:
      return std::to_string(int_);
    case Kind::Float:
      return format_float(float_);
    case Kind::String:
      return repr_string(str_);
    case Kind::List: {
      std::string out = "[";
      for (size_t i = 0; i < list_->size(); ++i) out += (i ? ", " : "") + (*list_)[i].repr();
      return out + "]";
    }
    case Kind::Dict: {
      std::string out = "{";
      for (size_t i = 0; i < dict_->size(); ++i)
        out += (i ? ", " : "") + repr_string((*dict_)[i].first) + ": " + (*dict_)[i].second.repr();
      return out + "}";
    }
    case Kind::Function:
      return "<function " + str_ + ">";
    case Kind::Namespace:
      return "<Namespace>";
  }
  return "";
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined:
      return "undefined";
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::List:
      return "list";
    case Kind::Dict:
      return "dict";
    case Kind::Function:
      return "function";
    case Kind::Namespace:
      return "Namespace";
  }
  return "?";
}

bool Value::equals(const Value& o) const {
  if (is_number() && o.is_number()) {
    if (kind_ == Kind::Float || o.kind_ == Kind::Float) return as_float() == o.as_float();
    return int_ == o.int_;
  }
  if (kind_ != o.kind_) return false;
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None:
      return true;
    case Kind::String:
      return str_ == o.str_;
    case Kind::List: {
      if (list_->size() != o.list_->size()) return false;
      for (size_t i = 0; i < list_->size(); ++i)
        if (!(*list_)[i].equals((*o.list_)[i])) return false;
      return true;
    }
    case Kind::Dict: {
      if (dict_->size() != o.dict_->size()) return false;
      for (const auto& [k, v] : *dict_) {
        const Value* ov = o.find(k);
        if (!ov || !v.equals(*ov)) return false;
      }
      return true;
    }
    case Kind::Function:
      return fn_ == o.fn_;
    case Kind::Namespace:
      return dict_ == o.dict_;
    default:
      return false;
  }
}

int Value::compare(const Value& o) const {
  if (is_number() && o.is_number()) {
    double a = as_float(), b = o.as_float();
    if (kind_ != Kind::Float && o.kind_ != Kind::Float) return int_ < o.int_ ? -1 : int_ > o.int_ ? 1 : 0;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  if (is_string() && o.is_string())
    return str_ < o.str_ ? -1 : str_ > o.str_ ? 1 : 0;  // UTF-8 bytes order = code points
  if (is_list() && o.is_list()) {
    for (size_t i = 0; i < list_->size() && i < o.list_->size(); ++i) {
      int c = (*list_)[i].compare((*o.list_)[i]);
      if (c) return c;
    }
    return list_->size() < o.list_->size() ? -1 : list_->size() > o.list_->size() ? 1 : 0;
  }
  runtime_fail("'<' not supported between instances of '" + type_name() + "' and '" + o.type_name() + "'");
}

bool Value::contains(const Value& item) const {
  switch (kind_) {
    case Kind::Undefined:
      return false;  // iterating Undefined yields nothing
    case Kind::String:
      if (!item.is_string())
        runtime_fail("'in <string>' requires string as left operand, not " + item.type_name());
      return str_.find(item.str_) != std::string::npos;
    case Kind::List:
      for (const auto& e : *list_)
        if (e.equals(item)) return true;
      return false;
    case Kind::Dict:
    case Kind::Namespace:
      return item.is_string() && find(item.str_) != nullptr;
    default:
      runtime_fail("argument of type '" + type_name() + "' is not iterable");
  }
}

const Value* Value::find(std::string_view key) const {
  if (kind_ != Kind::Dict && kind_ != Kind::Namespace) return nullptr;
  for (const auto& [k, v] : *dict_)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(const std::string& key, Value v) const {
  for (auto& [k, old] : *dict_)
    if (k == key) {
      old = std::move(v);
      return;
    }
  dict_->emplace_back(key, std::move(v));
}

// ---- JSON text ------------------------------------------------------------------------------------

static void append_json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = s[i];
    switch (c) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    char buf[16];
    if (c < 0x20) {
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else if (c >= 0x80 && ensure_ascii) {
      // Decode one UTF-8 sequence and write it as \uXXXX (a surrogate pair above the BMP).
      int n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
      uint32_t cp = c & (0x3f >> (n - 1));
      for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (s[i + k] & 0x3f);
      i += n - 1;
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      }
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

static void append_json(std::string& out, const Value& v, const JsonStyle& st, int depth) {
  const std::string item_sep = !st.item_sep.empty() ? st.item_sep : st.indent >= 0 ? "," : ", ";
  auto newline = [&](int d) {
    if (st.indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(st.indent) * d, ' ');
  };
  switch (v.kind()) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      out += "null";
      return;
    case Value::Kind::Bool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Value::Kind::Int:
      out += std::to_string(v.as_int());
      return;
    case Value::Kind::Float: {
      double d = v.as_float();
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : format_float(d);
      return;
    }
    case Value::Kind::String:
      append_json_string(out, v.as_string(), st.ensure_ascii);
      return;
    case Value::Kind::List: {
      const List& l = v.list();
      if (l.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < l.size(); ++i) {
        if (i) out += item_sep;
        newline(depth + 1);
        append_json(out, l[i], st, depth + 1);
      }
      newline(depth);
      out += ']';
      return;
    }
    case Value::Kind::Dict:
    case Value::Kind::Namespace: {
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict()) items.push_back(&kv);
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      if (items.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += item_sep;
        newline(depth + 1);
        append_json_string(out, items[i]->first, st.ensure_ascii);
        out += st.key_sep;
        append_json(out, items[i]->second, st, depth + 1);
      }
      newline(depth);
      out += '}';
      return;
    }
    case Value::Kind::Function:
      runtime_fail("Object of type function is not JSON serializable");
  }
}

std::string to_json_text(const Value& v, const JsonStyle& style) {
  std::string out;
  append_json(out, v, style, 0);
  return out;
}

// ---- UTF-8 and string helpers ---------------------------------------------------------------------

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

std::vector<std::string> utf8_chars(std::string_view s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t j = i + 1;
    while (j < s.size() && (static_cast<unsigned char>(s[j]) & 0xc0) == 0x80) ++j;
    out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

bool is_space_at(std::string_view s, size_t pos, size_t* len) {
  unsigned char c = s[pos];
  if (c < 0x80) {
    *len = 1;
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
  }
  // Multi-byte whitespace: U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
  auto at = [&](size_t k) { return pos + k < s.size() ? static_cast<unsigned char>(s[pos + k]) : 0; };
  if (c == 0xc2 && (at(1) == 0x85 || at(1) == 0xa0)) return *len = 2, true;
  if (c == 0xe1 && at(1) == 0x9a && at(2) == 0x80) return *len = 3, true;
  if (c == 0xe2 && at(1) == 0x80 && (at(2) <= 0x8a || at(2) == 0xa8 || at(2) == 0xa9 || at(2) == 0xaf))
    return *len = 3, at(2) >= 0x80;
  if (c == 0xe2 && at(1) == 0x81 && at(2) == 0x9f) return *len = 3, true;
  if (c == 0xe3 && at(1) == 0x80 && at(2) == 0x80) return *len = 3, true;
  return false;
}

// True when the code point ending at `end` (exclusive) is whitespace; sets its start.
static bool space_before(std::string_view s, size_t end, size_t* start) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xc0) == 0x80 && end - b < 4) --b;
  size_t len = 0;
  if (is_space_at(s, b, &len) && b + len == end) {
    *start = b;
    return true;
  }
  return false;
}

std::string strip(std::string_view s, bool left, bool right) {
  size_t b = 0, e = s.size(), len = 0, start = 0;
  if (left)
    while (b < e && is_space_at(s, b, &len)) b += len;
  if (right)
    while (e > b && space_before(s, e, &start)) e = start;
  return std::string(s.substr(b, e - b));
}

std::string strip_chars(std::string_view s, std::string_view chars, bool left, bool right) {
  std::vector<std::string> set = utf8_chars(chars);
  std::vector<std::string> cs = utf8_chars(s);
  auto in_set = [&](const std::string& c) { return std::find(set.begin(), set.end(), c) != set.end(); };
  size_t b = 0, e = cs.size();
  if (left)
    while (b < e && in_set(cs[b])) ++b;
  if (right)
    while (e > b && in_set(cs[e - 1])) --e;
  std::string out;
  for (size_t i = b; i < e; ++i) out += cs[i];
  return out;
}

std::string ascii_lower(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string ascii_upper(std::string s) {
  for (auto& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return s;
}

}  // namespace mtpserve::jinja
