// Attribute and item access, operators, tests, methods of str/list/dict and the global functions.
// Filters are in filters.cpp.
#include "server/jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <unordered_map>

namespace mtpserve::jinja {

std::string undefined_message(const Value& v) {
  return v.undefined_name().empty() ? std::string("value is undefined") : v.undefined_name();
}

static Value missing_attr(const Value& obj, const std::string& name) {
  return Value::undefined("'" + obj.type_name() + " object' has no attribute '" + name + "'");
}

// Python-style index normalisation; returns false when out of range.
static bool normalize_index(int64_t& i, size_t size) {
  if (i < 0) i += static_cast<int64_t>(size);
  return i >= 0 && i < static_cast<int64_t>(size);
}

static const Value* arg(const CallArgs& a, size_t i, std::string_view name) { return a.get(i, name); }

static std::string str_arg(const CallArgs& a, size_t i, std::string_view name, const char* method) {
  const Value* v = a.get(i, name);
  if (!v) runtime_fail(std::string(method) + "() missing argument '" + std::string(name) + "'");
  if (!v->is_string())
    runtime_fail(std::string(method) + "() argument '" + std::string(name) + "' must be str, not " +
                 v->type_name());
  return v->as_string();
}

// ---- str methods ----

static std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_cased = false;
  for (auto& c : out) {
    unsigned char u = c;
    bool letter = std::isalpha(u) || u >= 0x80;
    if (std::isalpha(u)) c = static_cast<char>(prev_cased ? std::tolower(u) : std::toupper(u));
    prev_cased = letter;
  }
  return out;
}

std::string py_capitalize(const std::string& s) {
  std::string out = ascii_lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

static List split_whitespace(const std::string& s, int64_t maxsplit) {
  List out;
  size_t i = 0, len = 0;
  while (true) {
    while (i < s.size() && is_space_at(s, i, &len)) i += len;
    if (i >= s.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
      out.push_back(Value(strip(s.substr(i), false, true)));
      break;
    }
    size_t j = i;
    while (j < s.size() && !is_space_at(s, j, &len)) ++j;
    out.push_back(Value(s.substr(i, j - i)));
    i = j;
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every character
    auto chars = utf8_chars(s);
    int64_t done = 0;
    for (const auto& c : chars) {
      if (count < 0 || done < count) out += to, ++done;
      out += c;
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
    ++done;
  }
  out.append(s, pos);
  return out;
}

static bool matches_affix(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& v) {
    if (!v.is_string()) runtime_fail("startswith/endswith argument must be str or a tuple of str");
    const std::string& a = v.as_string();
    if (a.size() > s.size()) return false;
    return prefix ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.is_list()) {
    for (const auto& v : affix.list())
      if (one(v)) return true;
    return false;
  }
  return one(affix);
}

// str.format with {}, {0} and {name} fields (no format specs).
static std::string py_format(const std::string& f, const CallArgs& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '{' && i + 1 < f.size() && f[i + 1] == '{')
      out += '{', ++i;
    else if (f[i] == '}' && i + 1 < f.size() && f[i + 1] == '}')
      out += '}', ++i;
    else if (f[i] == '{') {
      size_t close = f.find('}', i);
      if (close == std::string::npos) runtime_fail("format(): single '{' encountered");
      std::string field = f.substr(i + 1, close - i - 1);
      if (field.find(':') != std::string::npos || field.find('!') != std::string::npos)
        runtime_fail("format(): format specs are not supported");
      const Value* v = nullptr;
      if (field.empty())
        v = auto_index < a.positional.size() ? &a.positional[auto_index++] : nullptr;
      else if (std::isdigit(static_cast<unsigned char>(field[0]))) {
        size_t k = std::stoul(field);
        v = k < a.positional.size() ? &a.positional[k] : nullptr;
      } else {
        for (const auto& [k, kv] : a.keyword)
          if (k == field) v = &kv;
      }
      if (!v) runtime_fail("format(): no argument for field '{" + field + "}'");
      out += v->str();
      i = close;
    } else
      out += f[i];
  }
  return out;
}

static Value string_method(const Value& self, const std::string& name) {
  const std::string s = self.as_string();
  auto fn = [&](auto f) { return Value::function("str." + name, f); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    bool l = name != "rstrip", r = name != "lstrip";
    return fn([s, l, r](const CallArgs& a) {
      const Value* chars = arg(a, 0, "chars");
      if (chars && chars->is_string()) return Value(strip_chars(s, chars->as_string(), l, r));
      return Value(strip(s, l, r));
    });
  }
  if (name == "upper") return fn([s](const CallArgs&) { return Value(ascii_upper(s)); });
  if (name == "lower") return fn([s](const CallArgs&) { return Value(ascii_lower(s)); });
  if (name == "title") return fn([s](const CallArgs&) { return Value(py_title(s)); });
  if (name == "capitalize") return fn([s](const CallArgs&) { return Value(py_capitalize(s)); });
  if (name == "split" || name == "rsplit") {
    bool right = name == "rsplit";
    return fn([s, right](const CallArgs& a) {
      const Value* sep = arg(a, 0, "sep");
      const Value* max = arg(a, 1, "maxsplit");
      int64_t maxsplit = max ? max->as_int() : -1;
      if (!sep || sep->is_none()) {
        if (right && maxsplit >= 0)
          runtime_fail("rsplit() without a separator and with maxsplit is not supported");
        return Value(split_whitespace(s, maxsplit));
      }
      if (!sep->is_string() || sep->as_string().empty())
        runtime_fail("split(): empty or non-string separator");
      const std::string& d = sep->as_string();
      std::vector<std::string> parts;
      size_t pos = 0;
      while (true) {
        size_t hit = s.find(d, pos);
        if (hit == std::string::npos) break;
        parts.push_back(s.substr(pos, hit - pos));
        pos = hit + d.size();
      }
      parts.push_back(s.substr(pos));
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) > maxsplit + 1) {
        // Rejoin the surplus on the side where splitting stops.
        size_t keep = static_cast<size_t>(maxsplit);
        std::vector<std::string> merged;
        if (!right) {
          merged.assign(parts.begin(), parts.begin() + keep);
          std::string rest;
          for (size_t i = keep; i < parts.size(); ++i) rest += (i > keep ? d : "") + parts[i];
          merged.push_back(rest);
        } else {
          size_t cut = parts.size() - keep;
          std::string rest;
          for (size_t i = 0; i < cut; ++i) rest += (i ? d : "") + parts[i];
          merged.push_back(rest);
          merged.insert(merged.end(), parts.begin() + cut, parts.end());
        }
        parts = std::move(merged);
      }
      List out;
      for (auto& p : parts) out.push_back(Value(std::move(p)));
      return Value(std::move(out));
    });
  }
  if (name == "splitlines")
    return fn([s](const CallArgs&) {
      List out;
      size_t pos = 0;
      while (pos < s.size()) {
        size_t nl = s.find('\n', pos);
        if (nl == std::string::npos) nl = s.size();
        std::string line = s.substr(pos, nl - pos);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        out.push_back(Value(line));
        pos = nl + 1;
      }
      return Value(std::move(out));
    });
  if (name == "startswith" || name == "endswith") {
    bool prefix = name == "startswith";
    return fn([s, prefix](const CallArgs& a) {
      const Value* v = arg(a, 0, "prefix");
      if (!v) runtime_fail("startswith/endswith() takes one argument");
      return Value(matches_affix(s, *v, prefix));
    });
  }
  if (name == "replace")
    return fn([s](const CallArgs& a) {
      const Value* count = arg(a, 2, "count");
      return Value(py_replace(s, str_arg(a, 0, "old", "replace"), str_arg(a, 1, "new", "replace"),
                              count ? count->as_int() : -1));
    });
  if (name == "find" || name == "rfind" || name == "count") {
    return fn([s, name](const CallArgs& a) {
      std::string sub = str_arg(a, 0, "sub", name.c_str());
      if (name == "count") {
        if (sub.empty()) return Value(static_cast<int64_t>(utf8_length(s) + 1));
        int64_t n = 0;
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
        return Value(n);
      }
      size_t p = name == "find" ? s.find(sub) : s.rfind(sub);
      return Value(p == std::string::npos ? int64_t{-1} : static_cast<int64_t>(utf8_length(s.substr(0, p))));
    });
  }
  if (name == "join")
    return fn([s](const CallArgs& a) {
      const Value* items = arg(a, 0, "iterable");
      if (!items) runtime_fail("join() takes one argument");
      std::string out;
      bool first = true;
      for (const auto& v : iterate(*items)) {
        if (!v.is_string()) runtime_fail("join(): sequence item must be str, not " + v.type_name());
        out += (first ? "" : s) + v.as_string();
        first = false;
      }
      return Value(out);
    });
  if (name == "format") return fn([s](const CallArgs& a) { return Value(py_format(s, a)); });
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "islower" ||
      name == "isupper") {
    return fn([s, name](const CallArgs&) {
      if (s.empty()) return Value(false);
      bool any_cased = false;
      for (unsigned char c : s) {
        if (name == "isdigit" && !std::isdigit(c)) return Value(false);
        if (name == "isalpha" && !std::isalpha(c)) return Value(false);
        if (name == "isalnum" && !std::isalnum(c)) return Value(false);
        if (name == "isspace" && !std::isspace(c)) return Value(false);
        if (name == "islower" && std::isupper(c)) return Value(false);
        if (name == "isupper" && std::islower(c)) return Value(false);
        any_cased |= std::isalpha(c) != 0;
      }
      return Value(name == "islower" || name == "isupper" ? any_cased : true);
    });
  }
  return missing_attr(self, name);
}

// ---- list and dict methods (they mutate in place, as in Python) ----

static Value list_method(const Value& self, const std::string& name) {
  auto fn = [&](auto f) { return Value::function("list." + name, f); };
  if (name == "append")
    return fn([self](const CallArgs& a) {
      if (a.positional.size() != 1) runtime_fail("append() takes exactly one argument");
      self.list().push_back(a.positional[0]);
      return Value::none();
    });
  if (name == "extend")
    return fn([self](const CallArgs& a) {
      if (a.positional.size() != 1) runtime_fail("extend() takes exactly one argument");
      for (auto& v : iterate(a.positional[0])) self.list().push_back(v);
      return Value::none();
    });
  if (name == "insert")
    return fn([self](const CallArgs& a) {
      if (a.positional.size() != 2) runtime_fail("insert() takes exactly two arguments");
      List& l = self.list();
      int64_t i = a.positional[0].as_int();
      if (i < 0) i = std::max<int64_t>(0, i + static_cast<int64_t>(l.size()));
      i = std::min<int64_t>(i, static_cast<int64_t>(l.size()));
      l.insert(l.begin() + i, a.positional[1]);
      return Value::none();
    });
  if (name == "pop")
    return fn([self](const CallArgs& a) {
      List& l = self.list();
      int64_t i = a.positional.empty() ? -1 : a.positional[0].as_int();
      if (!normalize_index(i, l.size())) runtime_fail("pop index out of range");
      Value v = l[i];
      l.erase(l.begin() + i);
      return v;
    });
  if (name == "index" || name == "count")
    return fn([self, name](const CallArgs& a) {
      if (a.positional.size() != 1) runtime_fail(name + "() takes exactly one argument");
      int64_t n = 0;
      const List& l = self.list();
      for (size_t i = 0; i < l.size(); ++i) {
        if (!l[i].equals(a.positional[0])) continue;
        if (name == "index") return Value(static_cast<int64_t>(i));
        ++n;
      }
      if (name == "index") runtime_fail(a.positional[0].repr() + " is not in list");
      return Value(n);
    });
  if (name == "copy") return fn([self](const CallArgs&) { return Value(List(self.list())); });
  return missing_attr(self, name);
}

static Value dict_method(const Value& self, const std::string& name) {
  auto fn = [&](auto f) { return Value::function("dict." + name, f); };
  if (name == "items")
    return fn([self](const CallArgs&) {
      List out;
      for (const auto& [k, v] : self.dict()) out.push_back(Value(List{Value(k), v}));
      return Value(std::move(out));
    });
  if (name == "keys")
    return fn([self](const CallArgs&) {
      List out;
      for (const auto& kv : self.dict()) out.push_back(Value(kv.first));
      return Value(std::move(out));
    });
  if (name == "values")
    return fn([self](const CallArgs&) {
      List out;
      for (const auto& kv : self.dict()) out.push_back(kv.second);
      return Value(std::move(out));
    });
  if (name == "get" || name == "pop" || name == "setdefault")
    return fn([self, name](const CallArgs& a) {
      const Value* key = arg(a, 0, "key");
      const Value* def = arg(a, 1, "default");
      if (!key) runtime_fail(name + "() missing argument 'key'");
      const Value* found = key->is_string() ? self.find(key->as_string()) : nullptr;
      Value result = found ? *found : def ? *def : Value::none();
      if (name == "pop" && found) {
        Dict& d = self.dict();
        d.erase(std::find_if(d.begin(), d.end(), [&](auto& kv) { return kv.first == key->as_string(); }));
      } else if (name == "pop" && !def) {
        runtime_fail("pop(): key " + key->repr() + " not found");
      } else if (name == "setdefault" && !found) {
        if (!key->is_string()) runtime_fail("dict keys must be strings");
        self.set(key->as_string(), result);
      }
      return result;
    });
  if (name == "update")
    return fn([self](const CallArgs& a) {
      for (const auto& src : a.positional) {
        if (!src.is_dict()) runtime_fail("update() argument must be a dict");
        for (const auto& [k, v] : src.dict()) self.set(k, v);
      }
      for (const auto& [k, v] : a.keyword) self.set(k, v);
      return Value::none();
    });
  if (name == "copy") return fn([self](const CallArgs&) { return Value(Dict(self.dict())); });
  return Value();  // not a method
}

// ---- access ----

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Undefined:
      runtime_fail(undefined_message(obj));
    case Value::Kind::Dict: {
      // Jinja's getattr tries the Python attribute first: `d.items` is the method even with an "items" key.
      Value m = dict_method(obj, name);
      if (m.is_function()) return m;
      const Value* v = obj.find(name);
      return v ? *v : missing_attr(obj, name);
    }
    case Value::Kind::Namespace: {
      const Value* v = obj.find(name);
      return v ? *v : missing_attr(obj, name);
    }
    case Value::Kind::String:
      return string_method(obj, name);
    case Value::Kind::List:
      return list_method(obj, name);
    default:
      return missing_attr(obj, name);
  }
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Undefined:
      runtime_fail(undefined_message(obj));
    case Value::Kind::Dict:
    case Value::Kind::Namespace: {
      if (key.is_string()) {
        if (const Value* v = obj.find(key.as_string())) return *v;
        if (obj.is_dict()) {
          Value m = dict_method(obj, key.as_string());
          if (m.is_function()) return m;
        }
      }
      return Value::undefined("'" + obj.type_name() + " object' has no attribute " + key.repr());
    }
    case Value::Kind::List:
    case Value::Kind::String: {
      if (key.is_string()) return get_attr(obj, key.as_string());
      if (!key.is_int() && !key.is_bool())
        runtime_fail(obj.type_name() + " indices must be integers, not " + key.type_name());
      int64_t i = key.as_int();
      if (obj.is_list()) {
        if (!normalize_index(i, obj.list().size()))
          return Value::undefined("list object has no element " + std::to_string(key.as_int()));
        return obj.list()[i];
      }
      auto chars = utf8_chars(obj.as_string());
      if (!normalize_index(i, chars.size()))
        return Value::undefined("str object has no element " + std::to_string(key.as_int()));
      return Value(chars[i]);
    }
    default:
      if (key.is_string()) return missing_attr(obj, key.as_string());
      return Value::undefined("'" + obj.type_name() + " object' has no element " + key.repr());
  }
}

Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is_undefined()) runtime_fail(undefined_message(obj));
  if (!obj.is_list() && !obj.is_string())
    runtime_fail("'" + obj.type_name() + "' object is not subscriptable");
  for (const Value* v : {&start_v, &stop_v, &step_v})
    if (!v->is_none() && !v->is_int()) runtime_fail("slice indices must be integers or None");
  List items;
  std::vector<std::string> chars;
  if (obj.is_list())
    items = obj.list();
  else
    chars = utf8_chars(obj.as_string());
  const int64_t n = static_cast<int64_t>(obj.is_list() ? items.size() : chars.size());
  const int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) runtime_fail("slice step cannot be zero");
  // Python's slice.indices(): clamp the bounds to the sequence for the step's direction.
  auto clamp = [&](const Value& v, int64_t def) {
    if (v.is_none()) return def;
    int64_t i = v.as_int();
    if (i < 0) i += n;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  int64_t start = clamp(start_v, step > 0 ? 0 : n - 1);
  int64_t stop = clamp(stop_v, step > 0 ? n : -1);
  List out_list;
  std::string out_str;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (obj.is_list())
      out_list.push_back(items[i]);
    else
      out_str += chars[i];
  }
  return obj.is_list() ? Value(std::move(out_list)) : Value(std::move(out_str));
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
      return {};  // Jinja's default Undefined iterates as empty
    case Value::Kind::List:
      return v.list();
    case Value::Kind::Dict: {
      std::vector<Value> keys;
      for (const auto& kv : v.dict()) keys.push_back(Value(kv.first));
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> out;
      for (auto& c : utf8_chars(v.as_string())) out.push_back(Value(std::move(c)));
      return out;
    }
    default:
      runtime_fail("'" + v.type_name() + "' object is not iterable");
  }
}

// ---- operators ----

static int64_t int_pow(int64_t base, int64_t exp) {
  int64_t r = 1;
  while (exp-- > 0) r *= base;
  return r;
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return Value(a.equals(b));
  if (op == "!=") return Value(!a.equals(b));
  if (op == "in") return Value(b.contains(a));
  if (op == "not in") return Value(!b.contains(a));
  if (op == "~") return Value(a.str() + b.str());
  if (a.is_undefined()) runtime_fail(undefined_message(a));
  if (b.is_undefined()) runtime_fail(undefined_message(b));
  if (op == "<") return Value(a.compare(b) < 0);
  if (op == ">") return Value(a.compare(b) > 0);
  if (op == "<=") return Value(a.compare(b) <= 0);
  if (op == ">=") return Value(a.compare(b) >= 0);
  auto unsupported = [&]() -> Value {
    runtime_fail("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() +
                 "'");
  };
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list()) {
      List l = a.list();
      l.insert(l.end(), b.list().begin(), b.list().end());
      return Value(std::move(l));
    }
  }
  if (op == "*" && (a.is_string() || a.is_list() || b.is_string() || b.is_list())) {
    const Value& seq = a.is_string() || a.is_list() ? a : b;
    const Value& count = &seq == &a ? b : a;
    if (!count.is_int() && !count.is_bool()) return unsupported();
    if (seq.is_string()) {
      std::string out;
      for (int64_t i = 0; i < count.as_int(); ++i) out += seq.as_string();
      return Value(out);
    }
    List out;
    for (int64_t i = 0; i < count.as_int(); ++i) out.insert(out.end(), seq.list().begin(), seq.list().end());
    return Value(std::move(out));
  }
  if (!a.is_number() || !b.is_number()) return unsupported();
  const bool ints = !a.is_float() && !b.is_float();
  const double x = a.as_float(), y = b.as_float();
  if (op == "+") return ints ? Value(a.as_int() + b.as_int()) : Value(x + y);
  if (op == "-") return ints ? Value(a.as_int() - b.as_int()) : Value(x - y);
  if (op == "*") return ints ? Value(a.as_int() * b.as_int()) : Value(x * y);
  if (op == "/" || op == "//" || op == "%") {
    if (y == 0) runtime_fail(op == "%" ? "modulo by zero" : "division by zero");
    if (op == "/") return Value(x / y);
    if (ints) {
      int64_t p = a.as_int(), q = b.as_int();
      int64_t d = p / q, m = p % q;
      if (m != 0 && ((m < 0) != (q < 0))) --d, m += q;  // floor, as in Python
      return op == "//" ? Value(d) : Value(m);
    }
    double d = std::floor(x / y);
    return op == "//" ? Value(d) : Value(x - d * y);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) return Value(int_pow(a.as_int(), b.as_int()));
    return Value(std::pow(x, y));
  }
  return unsupported();
}

// ---- tests ----

using TestFn = bool (*)(const Value&, const CallArgs&);

static const Value& test_arg(const CallArgs& a, const char* test) {
  if (a.positional.empty()) runtime_fail(std::string("test '") + test + "' needs an argument");
  return a.positional[0];
}

static const std::unordered_map<std::string, TestFn>& tests() {
  static const std::unordered_map<std::string, TestFn> kTests = {
      {"defined", [](const Value& v, const CallArgs&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, const CallArgs&) { return v.is_undefined(); }},
      {"none", [](const Value& v, const CallArgs&) { return v.is_none(); }},
      {"boolean", [](const Value& v, const CallArgs&) { return v.is_bool(); }},
      {"true", [](const Value& v, const CallArgs&) { return v.is_bool() && v.as_bool(); }},
      {"false", [](const Value& v, const CallArgs&) { return v.is_bool() && !v.as_bool(); }},
      {"integer", [](const Value& v, const CallArgs&) { return v.is_int(); }},
      {"float", [](const Value& v, const CallArgs&) { return v.is_float(); }},
      {"number", [](const Value& v, const CallArgs&) { return v.is_number(); }},
      {"string", [](const Value& v, const CallArgs&) { return v.is_string(); }},
      {"mapping", [](const Value& v, const CallArgs&) { return v.is_dict(); }},
      {"iterable",
       [](const Value& v, const CallArgs&) {
         return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
       }},
      {"sequence",
       [](const Value& v, const CallArgs&) {
         return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
       }},
      {"callable", [](const Value& v, const CallArgs&) { return v.is_function(); }},
      {"escaped", [](const Value&, const CallArgs&) { return false; }},
      {"odd",
       [](const Value& v, const CallArgs&) {
         if (!v.is_int()) runtime_fail("odd needs an integer, got " + v.type_name());
         return v.as_int() % 2 != 0;
       }},
      {"even",
       [](const Value& v, const CallArgs&) {
         if (!v.is_int()) runtime_fail("even needs an integer, got " + v.type_name());
         return v.as_int() % 2 == 0;
       }},
      {"divisibleby",
       [](const Value& v, const CallArgs& a) {
         int64_t d = test_arg(a, "divisibleby").as_int();
         if (d == 0) runtime_fail("division by zero");
         return v.as_int() % d == 0;
       }},
      {"eq", [](const Value& v, const CallArgs& a) { return v.equals(test_arg(a, "eq")); }},
      {"ne", [](const Value& v, const CallArgs& a) { return !v.equals(test_arg(a, "ne")); }},
      {"lt", [](const Value& v, const CallArgs& a) { return v.compare(test_arg(a, "lt")) < 0; }},
      {"le", [](const Value& v, const CallArgs& a) { return v.compare(test_arg(a, "le")) <= 0; }},
      {"gt", [](const Value& v, const CallArgs& a) { return v.compare(test_arg(a, "gt")) > 0; }},
      {"ge", [](const Value& v, const CallArgs& a) { return v.compare(test_arg(a, "ge")) >= 0; }},
      {"in", [](const Value& v, const CallArgs& a) { return test_arg(a, "in").contains(v); }},
      {"sameas",
       [](const Value& v, const CallArgs& a) {
         const Value& o = test_arg(a, "sameas");
         return v.kind() == o.kind() &&
                (v.is_none() || v.is_undefined() || ((v.is_bool() || v.is_int()) && v.equals(o)) ||
                 (!v.is_bool() && !v.is_int() && v.equals(o)));
       }},
      {"lower", [](const Value& v,
                   const CallArgs&) { return v.is_string() && ascii_lower(v.as_string()) == v.as_string(); }},
      {"upper", [](const Value& v,
                   const CallArgs&) { return v.is_string() && ascii_upper(v.as_string()) == v.as_string(); }},
  };
  return kTests;
}

static const std::unordered_map<std::string, std::string> kTestAliases = {
    {"equalto", "eq"}, {"==", "eq"}, {"!=", "ne"},          {"<", "lt"}, {"lessthan", "lt"},
    {"<=", "le"},      {">", "gt"},  {"greaterthan", "gt"}, {">=", "ge"}};

static const std::string& test_name(const std::string& name) {
  auto it = kTestAliases.find(name);
  return it == kTestAliases.end() ? name : it->second;
}

bool has_test(const std::string& name) { return tests().count(test_name(name)) != 0; }

bool apply_test(const std::string& name, const Value& v, const CallArgs& args) {
  auto it = tests().find(test_name(name));
  if (it == tests().end()) runtime_fail("unknown test '" + name + "'");
  return it->second(v, args);
}

// ---- globals ----

Dict make_globals(const RenderOptions& options) {
  Dict g;
  g.emplace_back("range", Value::function("range", [](const CallArgs& a) {
                   if (a.positional.empty() || a.positional.size() > 3)
                     runtime_fail("range expects 1 to 3 arguments");
                   for (const auto& v : a.positional)
                     if (!v.is_int())
                       runtime_fail("range() arguments must be integers, got " + v.type_name());
                   int64_t start = 0, stop = 0, step = 1;
                   if (a.positional.size() == 1)
                     stop = a.positional[0].as_int();
                   else
                     start = a.positional[0].as_int(), stop = a.positional[1].as_int();
                   if (a.positional.size() == 3) step = a.positional[2].as_int();
                   if (step == 0) runtime_fail("range() step must not be zero");
                   List out;
                   for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
                     if (out.size() > 1'000'000) runtime_fail("range() is too long");
                     out.push_back(Value(i));
                   }
                   return Value(std::move(out));
                 }));
  auto make_dict = [](const CallArgs& a) {
    Dict d;
    for (const auto& src : a.positional) {
      if (!src.is_dict()) runtime_fail("expected a dict argument, got " + src.type_name());
      for (const auto& kv : src.dict()) d.push_back(kv);
    }
    Value out(std::move(d));
    for (const auto& [k, v] : a.keyword) out.set(k, v);
    return out;
  };
  g.emplace_back("dict", Value::function("dict", make_dict));
  g.emplace_back("namespace", Value::function("namespace", [make_dict](const CallArgs& a) {
                   return Value::namespace_(make_dict(a).dict());
                 }));
  g.emplace_back(
      "raise_exception", Value::function("raise_exception", [](const CallArgs& a) -> Value {
        runtime_fail(a.positional.empty() ? std::string("raise_exception() called") : a.positional[0].str());
      }));
  auto now = options.now;
  bool utc = options.utc;
  g.emplace_back("strftime_now", Value::function("strftime_now", [now, utc](const CallArgs& a) {
                   std::time_t t = now ? now() : std::time(nullptr);
                   std::tm tm{};
                   if (utc)
                     gmtime_r(&t, &tm);
                   else
                     localtime_r(&t, &tm);
                   std::string fmt = str_arg(a, 0, "format", "strftime_now");
                   char buf[256];
                   size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
                   return Value(std::string(buf, n));
                 }));
  return g;
}

}  // namespace mtpserve::jinja
