// Operations on values that the interpreter dispatches to: attribute and item access, operators,
// filters, tests, methods of str/list/dict, and the global functions. Failures throw RuntimeFailure;
// the interpreter adds the template position.
#pragma once
#include <string>
#include <vector>

#include "server/jinja/template.h"
#include "server/jinja/value.h"

namespace mtpserve::jinja {

// The message for using an undefined value ("'foo' is undefined").
std::string undefined_message(const Value& v);

Value get_attr(const Value& obj, const std::string& name);  // obj.name: attribute (method) first, then key
Value get_item(const Value& obj, const Value& key);         // obj[key]: key first, then attribute
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
Value binary_op(const std::string& op, const Value& a, const Value& b);
std::vector<Value> iterate(const Value& v);  // for loops: list items, dict keys, string characters

bool has_filter(const std::string& name);
Value apply_filter(const std::string& name, const Value& v, const CallArgs& args);
bool has_test(const std::string& name);
bool apply_test(const std::string& name, const Value& v, const CallArgs& args);

// Python str.capitalize and str.replace (count < 0: all).
std::string py_capitalize(const std::string& s);
std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count);

// range, namespace, dict, raise_exception, strftime_now.
Dict make_globals(const RenderOptions& options);

}  // namespace mtpserve::jinja
