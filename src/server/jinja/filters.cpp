// The built-in filters (`value | name(args)`), with Jinja2's argument names and defaults.
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "server/jinja/builtins.h"

namespace mtpserve::jinja {
namespace {

using FilterFn = Value (*)(const Value&, const CallArgs&);

bool bool_arg(const CallArgs& a, size_t i, std::string_view name, bool def) {
  const Value* v = a.get(i, name);
  return v ? v->truthy() : def;
}

int64_t int_arg(const CallArgs& a, size_t i, std::string_view name, int64_t def) {
  const Value* v = a.get(i, name);
  if (!v || v->is_none()) return def;
  if (!v->is_number())
    runtime_fail("argument '" + std::string(name) + "' must be a number, not " + v->type_name());
  return v->as_int();
}

const Value* opt_arg(const CallArgs& a, size_t i, std::string_view name) {
  const Value* v = a.get(i, name);
  return v && !v->is_none() ? v : nullptr;
}

// The item's attribute for `attribute=` arguments; "a.b" and "items.0" walk nested values.
Value attribute_of(const Value& item, const std::string& path) {
  Value v = item;
  size_t pos = 0;
  while (true) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    if (v.is_undefined()) return v;
    v = numeric && v.is_list() ? get_item(v, Value(static_cast<int64_t>(std::stoll(part))))
                               : get_item(v, Value(part));
    if (dot == std::string::npos) return v;
    pos = dot + 1;
  }
}

// Sort key for case-insensitive comparisons (Jinja's default for sort, unique, dictsort, min, max).
Value fold(const Value& v, bool case_sensitive) {
  return !case_sensitive && v.is_string() ? Value(ascii_lower(v.as_string())) : v;
}

std::vector<Value> sequence(const Value& v) { return iterate(v); }

Value f_sort(const Value& v, const CallArgs& a) {
  bool reverse = bool_arg(a, 0, "reverse", false);
  bool cs = bool_arg(a, 1, "case_sensitive", false);
  const Value* attr = opt_arg(a, 2, "attribute");
  std::vector<Value> items = sequence(v);
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& it : items) keyed.emplace_back(fold(attr ? attribute_of(it, attr->str()) : it, cs), it);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? y.first.compare(x.first) < 0 : x.first.compare(y.first) < 0;
  });
  List out;
  for (auto& [k, it] : keyed) out.push_back(std::move(it));
  return Value(std::move(out));
}

Value f_dictsort(const Value& v, const CallArgs& a) {
  if (!v.is_dict()) runtime_fail("dictsort needs a dict, got " + v.type_name());
  bool cs = bool_arg(a, 0, "case_sensitive", false);
  const Value* by = opt_arg(a, 1, "by");
  bool by_value = by && by->str() == "value";
  if (by && !by_value && by->str() != "key") runtime_fail("dictsort: 'by' must be 'key' or 'value'");
  bool reverse = bool_arg(a, 2, "reverse", false);
  Dict items = v.dict();
  std::stable_sort(items.begin(), items.end(), [&](const auto& x, const auto& y) {
    Value kx = fold(by_value ? x.second : Value(x.first), cs),
          ky = fold(by_value ? y.second : Value(y.first), cs);
    return reverse ? ky.compare(kx) < 0 : kx.compare(ky) < 0;
  });
  List out;
  for (auto& [k, val] : items) out.push_back(Value(List{Value(k), val}));
  return Value(std::move(out));
}

Value f_unique(const Value& v, const CallArgs& a) {
  bool cs = bool_arg(a, 0, "case_sensitive", false);
  const Value* attr = opt_arg(a, 1, "attribute");
  List out;
  std::vector<Value> seen;
  for (auto& it : sequence(v)) {
    Value key = fold(attr ? attribute_of(it, attr->str()) : it, cs);
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return s.equals(key); })) continue;
    seen.push_back(key);
    out.push_back(it);
  }
  return Value(std::move(out));
}

Value min_max(const Value& v, const CallArgs& a, bool want_max) {
  bool cs = bool_arg(a, 0, "case_sensitive", false);
  const Value* attr = opt_arg(a, 1, "attribute");
  std::vector<Value> items = sequence(v);
  if (items.empty()) return Value::undefined("no items for min/max");
  size_t best = 0;
  auto key = [&](size_t i) { return fold(attr ? attribute_of(items[i], attr->str()) : items[i], cs); };
  for (size_t i = 1; i < items.size(); ++i) {
    int c = key(i).compare(key(best));
    if (want_max ? c > 0 : c < 0) best = i;
  }
  return items[best];
}

Value f_join(const Value& v, const CallArgs& a) {
  const Value* sep = opt_arg(a, 0, "d");
  const Value* attr = opt_arg(a, 1, "attribute");
  std::string out;
  bool first = true;
  for (auto& it : sequence(v)) {
    if (!first && sep) out += sep->str();
    out += (attr ? attribute_of(it, attr->str()) : it).str();
    first = false;
  }
  return Value(out);
}

Value f_default(const Value& v, const CallArgs& a) {
  const Value* def = a.get(0, "default_value");
  bool boolean = bool_arg(a, 1, "boolean", false);
  if (v.is_undefined() || (boolean && !v.truthy())) return def ? *def : Value("");
  return v;
}

Value f_length(const Value& v, const CallArgs&) {
  switch (v.kind()) {
    case Value::Kind::Undefined:
      return Value(0);
    case Value::Kind::String:
      return Value(static_cast<int64_t>(utf8_length(v.as_string())));
    case Value::Kind::List:
      return Value(static_cast<int64_t>(v.list().size()));
    case Value::Kind::Dict:
    case Value::Kind::Namespace:
      return Value(static_cast<int64_t>(v.dict().size()));
    default:
      runtime_fail("object of type '" + v.type_name() + "' has no len()");
  }
}

Value f_first_last(const Value& v, bool last) {
  std::vector<Value> items = sequence(v);
  if (items.empty())
    return Value::undefined(std::string("no ") + (last ? "last" : "first") + " item, sequence was empty");
  return last ? items.back() : items.front();
}

Value f_tojson(const Value& v, const CallArgs& a) {
  JsonStyle st;
  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False); a
  // positional integer is taken as the indent, as in Jinja's built-in tojson(value, indent).
  if (!a.positional.empty() && a.positional[0].is_int())
    st.indent = static_cast<int>(a.positional[0].as_int());
  for (const auto& [k, val] : a.keyword) {
    if (k == "indent")
      st.indent = val.is_none() ? -1 : static_cast<int>(val.as_int());
    else if (k == "ensure_ascii")
      st.ensure_ascii = val.truthy();
    else if (k == "sort_keys")
      st.sort_keys = val.truthy();
    else if (k == "separators") {
      if (!val.is_none()) {
        if (!val.is_list() || val.list().size() != 2) runtime_fail("separators must be a pair of strings");
        st.item_sep = val.list()[0].str();
        st.key_sep = val.list()[1].str();
      }
    } else
      runtime_fail("unexpected keyword argument '" + k + "'");
  }
  return Value(to_json_text(v, st));
}

Value f_indent(const Value& v, const CallArgs& a) {
  const Value* w = a.get(0, "width");
  std::string pad =
      w && w->is_string() ? w->as_string() : std::string(static_cast<size_t>(int_arg(a, 0, "width", 4)), ' ');
  bool first = bool_arg(a, 1, "first", false), blank = bool_arg(a, 2, "blank", false);
  std::string s = v.str(), out;
  size_t pos = 0;
  for (int line = 0;; ++line) {
    size_t nl = s.find('\n', pos);
    std::string_view text =
        std::string_view(s).substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    if ((line > 0 || first) && (blank || !text.empty())) out += pad;
    out += text;
    if (nl == std::string::npos) break;
    out += '\n';
    pos = nl + 1;
  }
  return Value(out);
}

Value f_map(const Value& v, const CallArgs& a) {
  List out;
  const Value* attr = nullptr;
  const Value* def = nullptr;
  for (const auto& [k, val] : a.keyword) {
    if (k == "attribute") attr = &val;
    if (k == "default") def = &val;
  }
  if (attr) {
    for (auto& it : sequence(v)) {
      Value x = attribute_of(it, attr->str());
      out.push_back(x.is_undefined() && def ? *def : x);
    }
    return Value(std::move(out));
  }
  if (a.positional.empty() || !a.positional[0].is_string())
    runtime_fail("map needs a filter name or attribute=");
  std::string filter = a.positional[0].as_string();
  CallArgs rest{std::vector<Value>(a.positional.begin() + 1, a.positional.end()), a.keyword};
  for (auto& it : sequence(v)) out.push_back(apply_filter(filter, it, rest));
  return Value(std::move(out));
}

// select / reject / selectattr / rejectattr.
Value select_impl(const Value& v, const CallArgs& a, bool keep, bool by_attr) {
  size_t i = 0;
  std::string attr;
  if (by_attr) {
    if (a.positional.empty()) runtime_fail("missing attribute name");
    attr = a.positional[i++].str();
  }
  std::string test;
  if (i < a.positional.size()) test = a.positional[i++].str();
  CallArgs rest{std::vector<Value>(a.positional.begin() + i, a.positional.end()), a.keyword};
  List out;
  for (auto& it : sequence(v)) {
    Value x = by_attr ? attribute_of(it, attr) : it;
    bool r = test.empty() ? x.truthy() : apply_test(test, x, rest);
    if (r == keep) out.push_back(it);
  }
  return Value(std::move(out));
}

Value f_round(const Value& v, const CallArgs& a) {
  int64_t precision = int_arg(a, 0, "precision", 0);
  const Value* m = opt_arg(a, 1, "method");
  std::string method = m ? m->str() : "common";
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_float() * scale;
  if (method == "common")
    x = std::round(x);  // half away from zero, as Jinja
  else if (method == "ceil")
    x = std::ceil(x);
  else if (method == "floor")
    x = std::floor(x);
  else
    runtime_fail("method must be 'common', 'ceil' or 'floor'");
  return Value(x / scale);
}

Value f_title(const Value& v, const CallArgs&) {
  // Jinja's title filter: words start after whitespace or one of "-({[<".
  std::string s = v.str();
  bool start = true;
  for (auto& c : s) {
    unsigned char u = c;
    bool sep = std::isspace(u) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (!sep) c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
    start = sep;
  }
  return Value(s);
}

Value f_center(const Value& v, const CallArgs& a) {
  std::string s = v.str();
  int64_t width = int_arg(a, 0, "width", 80), len = static_cast<int64_t>(utf8_length(s));
  if (width <= len) return Value(s);
  int64_t pad = width - len, left = pad / 2 + (pad & width & 1);  // CPython's str.center split
  return Value(std::string(left, ' ') + s + std::string(pad - left, ' '));
}

Value f_batch(const Value& v, const CallArgs& a) {
  int64_t n = int_arg(a, 0, "linecount", 1);
  if (n <= 0) runtime_fail("batch size must be positive");
  const Value* fill = opt_arg(a, 1, "fill_with");
  List out, cur;
  for (auto& it : sequence(v)) {
    cur.push_back(it);
    if (static_cast<int64_t>(cur.size()) == n) out.push_back(Value(std::move(cur))), cur = List{};
  }
  if (!cur.empty()) {
    if (fill)
      while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*fill);
    out.push_back(Value(std::move(cur)));
  }
  return Value(std::move(out));
}

Value f_int(const Value& v, const CallArgs& a) {
  const Value* def = a.get(0, "default");
  Value fallback = def ? *def : Value(0);
  if (v.is_number()) return Value(v.as_int());
  if (!v.is_string()) return fallback;
  std::string s = strip(v.as_string(), true, true);
  int64_t base = int_arg(a, 1, "base", 10);
  try {
    size_t used = 0;
    int64_t i = std::stoll(s, &used, static_cast<int>(base));
    if (used == s.size()) return Value(i);
    size_t fused = 0;
    double d = std::stod(s, &fused);  // "12.5" -> 12, as Jinja's int filter
    if (fused == s.size()) return Value(static_cast<int64_t>(d));
  } catch (const std::exception&) {
  }
  return fallback;
}

Value f_float(const Value& v, const CallArgs& a) {
  const Value* def = a.get(0, "default");
  Value fallback = def ? *def : Value(0.0);
  if (v.is_number()) return Value(v.as_float());
  if (!v.is_string()) return fallback;
  std::string s = strip(v.as_string(), true, true);
  try {
    size_t used = 0;
    double d = std::stod(s, &used);
    if (used == s.size()) return Value(d);
  } catch (const std::exception&) {
  }
  return fallback;
}

Value f_escape(const Value& v, const CallArgs&) {
  std::string out;
  for (char c : v.str()) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return Value(out);
}

Value f_sum(const Value& v, const CallArgs& a) {
  const Value* attr = opt_arg(a, 0, "attribute");
  const Value* start = a.get(1, "start");
  Value total = start ? *start : Value(0);
  for (auto& it : sequence(v)) total = binary_op("+", total, attr ? attribute_of(it, attr->str()) : it);
  return total;
}

Value f_wordcount(const Value& v, const CallArgs&) {
  int64_t n = 0;
  bool in_word = false;
  for (unsigned char c : v.str()) {
    bool w = std::isalnum(c) || c == '_' || c >= 0x80;
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value(n);
}

const std::unordered_map<std::string, FilterFn>& filters() {
  static const std::unordered_map<std::string, FilterFn> kFilters = {
      {"abs",
       [](const Value& v, const CallArgs&) {
         if (!v.is_number()) runtime_fail("bad operand type for abs(): '" + v.type_name() + "'");
         return v.is_float() ? Value(std::fabs(v.as_float()))
                             : Value(static_cast<int64_t>(std::llabs(v.as_int())));
       }},
      {"attr",
       [](const Value& v, const CallArgs& a) {
         return get_attr(v, a.positional.empty() ? "" : a.positional[0].str());
       }},
      {"batch", f_batch},
      {"capitalize", [](const Value& v, const CallArgs&) { return Value(py_capitalize(v.str())); }},
      {"center", f_center},
      {"count", f_length},
      {"d", f_default},
      {"default", f_default},
      {"dictsort", f_dictsort},
      {"e", f_escape},
      {"escape", f_escape},
      {"first", [](const Value& v, const CallArgs&) { return f_first_last(v, false); }},
      {"float", f_float},
      {"indent", f_indent},
      {"int", f_int},
      {"items",
       [](const Value& v, const CallArgs&) {
         if (v.is_undefined()) return Value(List{});
         if (!v.is_dict()) runtime_fail("items needs a dict, got " + v.type_name());
         List out;
         for (const auto& [k, val] : v.dict()) out.push_back(Value(List{Value(k), val}));
         return Value(std::move(out));
       }},
      {"join", f_join},
      {"last", [](const Value& v, const CallArgs&) { return f_first_last(v, true); }},
      {"length", f_length},
      {"list", [](const Value& v, const CallArgs&) { return Value(sequence(v)); }},
      {"lower", [](const Value& v, const CallArgs&) { return Value(ascii_lower(v.str())); }},
      {"map", f_map},
      {"max", [](const Value& v, const CallArgs& a) { return min_max(v, a, true); }},
      {"min", [](const Value& v, const CallArgs& a) { return min_max(v, a, false); }},
      {"reject", [](const Value& v, const CallArgs& a) { return select_impl(v, a, false, false); }},
      {"rejectattr", [](const Value& v, const CallArgs& a) { return select_impl(v, a, false, true); }},
      {"replace",
       [](const Value& v, const CallArgs& a) {
         if (a.positional.size() < 2) runtime_fail("replace needs old and new strings");
         return Value(
             py_replace(v.str(), a.positional[0].str(), a.positional[1].str(), int_arg(a, 2, "count", -1)));
       }},
      {"reverse",
       [](const Value& v, const CallArgs&) {
         if (v.is_string()) {
           auto chars = utf8_chars(v.as_string());
           std::string out;
           for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
           return Value(out);
         }
         std::vector<Value> items = sequence(v);
         std::reverse(items.begin(), items.end());
         return Value(std::move(items));
       }},
      {"round", f_round},
      {"safe", [](const Value& v, const CallArgs&) { return v; }},
      {"select", [](const Value& v, const CallArgs& a) { return select_impl(v, a, true, false); }},
      {"selectattr", [](const Value& v, const CallArgs& a) { return select_impl(v, a, true, true); }},
      {"sort", f_sort},
      {"string", [](const Value& v, const CallArgs&) { return Value(v.str()); }},
      {"sum", f_sum},
      {"title", f_title},
      {"tojson", f_tojson},
      {"trim",
       [](const Value& v, const CallArgs& a) {
         const Value* chars = opt_arg(a, 0, "chars");
         return Value(chars ? strip_chars(v.str(), chars->str(), true, true) : strip(v.str(), true, true));
       }},
      {"unique", f_unique},
      {"upper", [](const Value& v, const CallArgs&) { return Value(ascii_upper(v.str())); }},
      {"wordcount", f_wordcount},
  };
  return kFilters;
}

}  // namespace

bool has_filter(const std::string& name) { return filters().count(name) != 0; }

Value apply_filter(const std::string& name, const Value& v, const CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) runtime_fail("unknown filter '" + name + "'");
  return it->second(v, args);
}

}  // namespace mtpserve::jinja
