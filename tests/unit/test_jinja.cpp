// The Jinja subset for chat templates: rendering, whitespace control, Python value semantics, errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "server/chat_template.h"
#include "server/jinja/template.h"

using mtpserve::jinja::RenderOptions;
using mtpserve::jinja::Template;
using json = nlohmann::ordered_json;

namespace {

std::string render(const std::string& source, const json& context = json::object(),
                   const RenderOptions& opts = {}) {
  return Template::parse(source, "t.jinja").render(context, opts);
}

// The message of the mtpserve::Error that rendering throws ("" if it does not throw).
std::string render_error(const std::string& source, const json& context = json::object()) {
  try {
    render(source, context);
  } catch (const mtpserve::Error& e) {
    return e.what();
  }
  return "";
}

struct Case {
  const char* source;
  const char* expected;
};

void expect_cases(const std::vector<Case>& cases, const json& context = json::object()) {
  for (const auto& c : cases) EXPECT_EQ(render(c.source, context), c.expected) << "template: " << c.source;
}

}  // namespace

TEST(Jinja, TextAndExpressions) {
  expect_cases({
      {"plain text", "plain text"},
      {"{{ 'a' }}{{ \"b\" }}", "ab"},
      {"{{ 1 + 2 * 3 }}", "7"},
      {"{{ (1 + 2) * 3 }}", "9"},
      {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }}", "3 -4 1 2 1024"},
      {"{{ 10 / 4 }} {{ 1.5 + 1 }} {{ 3.0 }} {{ 1e-7 }} {{ 0.1 + 0.2 }}",
       "2.5 2.5 3.0 1e-07 0.30000000000000004"},
      {"{{ 'a' ~ 1 ~ none }}", "a1None"},
      {"{{ 'x' + 'y' }} {{ [1] + [2] }}", "xy [1, 2]"},
      {"{{ true }} {{ False }} {{ none }} {{ None }}", "True False None None"},
      {"{{ [1, 'a', none, true, {'k': 'v'}] }}", "[1, 'a', None, True, {'k': 'v'}]"},
      {"{{ (1, 2) }}", "[1, 2]"},
      {"{{ 'it\\'s' }} {{ \"tab\\there\" }} {{ '\\u00e9\\n' }}", "it's tab\there é\n"},
      {"{{ 'a' if true else 'b' }}{{ 'c' if false else 'd' }}{{ 'e' if false }}", "ad"},
      {"{{ 1 < 2 and 2 <= 2 and 3 > 2 and 3 >= 4 }}", "False"},
      {"{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not 0 }} {{ not [] }}", "x y True True"},
      {"{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}",
       "True True True True"},
      {"{{ 1 == 1.0 }} {{ [1, 2] == [1, 2] }} {{ {'a': 1} != {'a': 1} }}", "True True False"},
      {"{{ -3 }} {{ - 3 + 1 }} {{ -(2) }}", "-3 -2 -2"},
  });
}

TEST(Jinja, VariablesAttributesAndSlices) {
  json ctx = {
      {"user", {{"name", "Ann"}, {"tags", {"x", "y", "z"}}}}, {"items", {1, 2, 3, 4, 5}}, {"s", "héllo"}};
  expect_cases(
      {{"{{ user.name }} {{ user['name'] }} {{ user.tags[1] }} {{ user.tags.0 }}", "Ann Ann y x"},
       {"{{ items[1:3] }} {{ items[:2] }} {{ items[3:] }} {{ items[::-1] }} {{ items[::2] }}",
        "[2, 3] [1, 2] [4, 5] [5, 4, 3, 2, 1] [1, 3, 5]"},
       {"{{ items[-1] }} {{ items[-2:] }} {{ s[1:3] }} {{ s[-1] }} {{ s | length }}", "5 [4, 5] él o 5"},
       {"{{ user.missing }}|{{ user['missing'] }}|{{ items[10] }}", "||"},
       {"{{ user.items() | list | length }}", "2"}},
      ctx);
}

TEST(Jinja, WhitespaceControl) {
  // transformers' environment: trim_blocks and lstrip_blocks on; the source's final newline dropped.
  expect_cases({
      {"a\n{% if true %}\nb\n{% endif %}\nc\n", "a\nb\nc"},
      {"a\n    {% if true %}\n    b\n    {% endif %}\nc", "a\n    b\nc"},
      {"a  {{- ' b ' -}}  c", "a b c"},
      {"a \n {%- if true -%} \n b \n {%- endif -%} \n c", "abc"},
      {"x {# comment #} y", "x  y"},
      {"x\n  {# comment #}\ny", "x\ny"},
      {"x {#- comment -#} y", "xy"},
      {"{{ 'a' }}\n{{ 'b' }}", "a\nb"},
      {"  {{ 'kept' }}", "  kept"},
      {"{% raw %}{{ not evaluated }}{% endraw %}", "{{ not evaluated }}"},
      {"{% generation %}kept{% endgeneration %}", "kept"},
  });
}

TEST(Jinja, IfElifElse) {
  const char* src =
      "{% if n == 1 %}one{% elif n == 2 %}two{% elif n is even %}even{% else %}other{% endif %}";
  EXPECT_EQ(render(src, {{"n", 1}}), "one");
  EXPECT_EQ(render(src, {{"n", 2}}), "two");
  EXPECT_EQ(render(src, {{"n", 4}}), "even");
  EXPECT_EQ(render(src, {{"n", 5}}), "other");
}

TEST(Jinja, ForLoops) {
  json ctx = {{"xs", {"a", "b", "c"}}, {"d", {{"k1", 1}, {"k2", 2}}}, {"empty", json::array()}};
  expect_cases(
      {{"{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ x }}"
        "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}/{{ loop.length }} {% endfor %}",
        "1032aF/3 2121b/3 3210cL/3 "},
       {"{% for x in xs %}{{ loop.previtem | default('-') }}{{ x }}{{ loop.nextitem | default('-') }} {% "
        "endfor %}",
        "-ab abc bc- "},
       {"{% for x in empty %}{{ x }}{% else %}none{% endfor %}", "none"},
       {"{% for x in xs if x != 'b' %}{{ x }}{{ loop.index }}/{{ loop.length }} {% endfor %}", "a1/2 c2/2 "},
       {"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", "k1=1;k2=2;"},
       {"{% for k in d %}{{ k }};{% endfor %}", "k1;k2;"},
       {"{% for c in 'hé' %}[{{ c }}]{% endfor %}", "[h][é]"},
       {"{% for x in xs %}{% if x == 'b' %}{% continue %}{% endif %}{% if x == 'c' %}{% break %}{% endif "
        "%}{{ x }}"
        "{% endfor %}",
        "a"},
       {"{% for i in range(3) %}{{ i }}{% endfor %} {% for i in range(1, 7, 2) %}{{ i }}{% endfor %}",
        "012 135"},
       {"{% for x in undefined_var %}{{ x }}{% endfor %}ok", "ok"},
       {"{% for x in xs %}{{ loop.cycle('o', 'e') }}{% endfor %}", "oeo"},
       // A set inside a loop does not leak out of it (Jinja scoping).
       {"{% set v = 'outer' %}{% for x in xs %}{% set v = x %}{% endfor %}{{ v }}", "outer"}},
      ctx);
}

TEST(Jinja, SetAndNamespace) {
  expect_cases({
      {"{% set x = 1 %}{% set y = x + 1 %}{{ y }}", "2"},
      {"{% set a, b = 1, 2 %}{{ a }}{{ b }}", "12"},
      {"{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ "
       "ns.n }}",
       "6"},
      {"{% set block %}  captured {{ 1 + 1 }}{% endset %}[{{ block }}]", "[  captured 2]"},
      {"{% set block | trim | upper %}  text  {% endset %}[{{ block }}]", "[TEXT]"},
      {"{% set l = [] %}{% do l.append(1) %}{{ l.append(2) or '' }}{{ l }}", "[1, 2]"},
      {"{% set d = {'a': 1} %}{% do d.update({'b': 2}) %}{{ d | tojson }}", "{\"a\": 1, \"b\": 2}"},
      {"{% set d = dict(x=1, y='z') %}{{ d.x }}{{ d['y'] }}", "1z"},
  });
}

TEST(Jinja, Macros) {
  expect_cases({
      {"{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}"
       "{{ greet('Ann') }} {{ greet('Bob', 'Hi') }} {{ greet(greeting='Yo', name='Cy') }}",
       "Hello, Ann! Hi, Bob! Yo, Cy!"},
      {"{% macro f(x) %}[{{ x }}]{% endmacro %}{{ f() }}", "[]"},
      {"{% macro rec(n) %}{{ n }}{% if n > 0 %}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}",
       "3210"},
      {"{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}inner{% endcall %}", "<inner>"},
      {"{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}"
       "{% call(item) each([1, 2]) %}({{ item }}){% endcall %}",
       "(1)(2)"},
      {"{% set top = 'T' %}{% macro m() %}{{ top }}{% endmacro %}{{ m() }}", "T"},
      {"{% filter upper %}shout {{ 'this' }}{% endfilter %}", "SHOUT THIS"},
  });
}

TEST(Jinja, Tests) {
  json ctx = {{"s", "x"}, {"i", 3}, {"f", 1.5}, {"b", true}, {"n", nullptr}, {"l", {1}}, {"d", {{"k", 1}}}};
  expect_cases(
      {{"{{ s is string }}{{ i is string }}{{ i is number }}{{ f is number }}{{ i is integer }}{{ f is float "
        "}}",
        "TrueFalseTrueTrueTrueTrue"},
       {"{{ n is none }}{{ s is not none }}{{ b is boolean }}{{ b is true }}{{ b is false }}",
        "TrueTrueTrueTrueFalse"},
       {"{{ d is mapping }}{{ l is mapping }}{{ l is sequence }}{{ s is iterable }}{{ i is iterable }}",
        "TrueFalseTrueTrueFalse"},
       {"{{ missing is defined }}{{ missing is undefined }}{{ s is defined }}", "FalseTrueTrue"},
       {"{{ i is odd }}{{ i is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}",
        "TrueFalseTrueFalse"},
       {"{{ s is equalto 'x' }}{{ i is eq 3 }}{{ i is gt 2 }}{{ 'AB' is upper }}{{ 'ab' is lower }}",
        "TrueTrueTrueTrueTrue"},
       {"{{ 1 is in [1, 2] }}{{ range is callable }}", "TrueTrue"}},
      ctx);
}

TEST(Jinja, Filters) {
  json ctx = {{"users",
               {{{"name", "b"}, {"age", 30}, {"admin", true}},
                {{"name", "A"}, {"age", 20}, {"admin", false}},
                {{"name", "c"}, {"age", 25}, {"admin", true}}}},
              {"words", {"b", "A", "c", "a"}},
              {"d", {{"b", 2}, {"A", 1}, {"c", 3}}}};
  expect_cases(
      {{"{{ '  hi  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'hi' | upper }}|{{ 'HI' | lower }}",
        "hi|hi|HI|hi"},
       {"{{ 'hello wORLD' | title }}|{{ 'hello wORLD' | capitalize }}", "Hello World|Hello world"},
       {"{{ [1, 2, 3] | length }}{{ 'héllo' | count }}{{ {'a': 1} | length }}", "351"},
       {"{{ [1, 2, 3] | first }}{{ [1, 2, 3] | last }}{{ 'abc' | first }}", "13a"},
       {"{{ [1, 2, 3] | join('-') }}|{{ users | join(', ', attribute='name') }}", "1-2-3|b, A, c"},
       {"{{ missing | default('d') }}{{ '' | default('e') }}{{ '' | default('f', true) }}{{ none | d('g') }}",
        "dfNone"},
       {"{{ 'a-b-b' | replace('b', 'c') }}{{ 'a-b-b' | replace('b', 'c', 1) }}", "a-c-ca-c-b"},
       {"{{ 5 | string }}{{ '42' | int + 1 }}{{ 'x' | int }}{{ '1.5' | float }}{{ 3 | float }}",
        "5430"
        "1.53.0"},
       {"{{ 'ab' | list }}{{ d | list }}{{ d | items | list | first }}", "['a', 'b']['b', 'A', 'c']['b', 2]"},
       {"{{ users | map(attribute='name') | list }}{{ ['a', 'b'] | map('upper') | join }}",
        "['b', 'A', 'c']AB"},
       {"{{ users | selectattr('admin') | map(attribute='name') | join }}"
        "{{ users | rejectattr('admin') | map(attribute='name') | join }}"
        "{{ users | selectattr('age', 'gt', 21) | map(attribute='name') | join }}"
        "{{ users | selectattr('name', 'equalto', 'A') | map(attribute='age') | join }}",
        "bcAbc20"},
       {"{{ [1, 2, 3, 4] | select('odd') | list }}{{ [1, 2, 3, 4] | reject('odd') | list }}"
        "{{ [0, 1, '', 'x'] | select | list }}",
        "[1, 3][2, 4][1, 'x']"},
       {"{{ words | sort }}{{ words | sort(reverse=true) }}{{ words | sort(case_sensitive=true) }}",
        "['A', 'a', 'b', 'c']['c', 'b', 'A', 'a']['A', 'a', 'b', 'c']"},
       {"{{ users | sort(attribute='age') | map(attribute='name') | join }}", "Acb"},
       {"{{ words | unique | list }}{{ [3, 1, 3] | unique | list }}", "['b', 'A', 'c'][3, 1]"},
       {"{{ [1, 2] | reverse | list }}{{ 'abc' | reverse }}", "[2, 1]cba"},
       {"{{ [1, 2, 3] | sum }}{{ users | sum(attribute='age') }}{{ [3, 1, 2] | min }}{{ [3, 1, 2] | max }}",
        "67513"},
       {"{{ -3 | abs }}{{ 2.5 | round }}{{ 2.345 | round(2) }}{{ 2.1 | round(method='ceil') }}",
        "33.02.353.0"},
       {"{{ 'one two  three' | wordcount }}|{{ 'ab' | center(6) }}|", "3|  ab  |"},
       {"{{ d | dictsort }}{{ d | dictsort(reverse=true) | first }}",
        "[['A', 1], ['b', 2], ['c', 3]]['c', 3]"},
       {"{{ '<a href=\"x\">&</a>' | e }}|{{ '<b>' | safe }}",
        "&lt;a href=&#34;x&#34;&gt;&amp;&lt;/a&gt;|<b>"},
       {"{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}", "a\n  b\n\n  c|  a\n  b"},
       {"{{ [1, 2, 3, 4, 5] | batch(2) | list }}", "[[1, 2], [3, 4], [5]]"},
       {"{{ users[0] | attr('name') }}", "b"}},
      ctx);
}

TEST(Jinja, ToJson) {
  json ctx = json::parse(R"({"obj": {"z": 1, "a": [true, null, 1.5, "é\"\n"], "m": {}}, "list": []})");
  expect_cases(
      {{"{{ obj | tojson }}", R"({"z": 1, "a": [true, null, 1.5, "é\"\n"], "m": {}})"},
       {"{{ obj | tojson(indent=2) }}",
        "{\n  \"z\": 1,\n  \"a\": [\n    true,\n    null,\n    1.5,\n    \"é\\\"\\n\"\n  ],\n  \"m\": {}\n}"},
       {"{{ obj | tojson(sort_keys=true) }}", R"({"a": [true, null, 1.5, "é\"\n"], "m": {}, "z": 1})"},
       {"{{ obj.a | tojson(ensure_ascii=true) }}", R"([true, null, 1.5, "\u00e9\"\n"])"},
       {"{{ obj | tojson(separators=(',', ':')) }}", R"({"z":1,"a":[true,null,1.5,"é\"\n"],"m":{}})"},
       {"{{ list | tojson(indent=4) }}{{ 'x<y' | tojson }}", "[]\"x<y\""}},
      ctx);
}

TEST(Jinja, StringMethods) {
  expect_cases({
      {"{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}",
       "a b|a|a|a"},
      {"{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a,b,c'.split(',', 1) }}",
       "['a', 'b', '', 'c']['a', 'b']['a', 'b,c']"},
      {"{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'abc'.startswith('b') }}",
       "TrueTrueFalse"},
      {"{{ 'ab'.upper() }}{{ 'AB'.lower() }}{{ 'ab cd'.title() }}{{ 'aB'.capitalize() }}", "ABabAb CdAb"},
      {"{{ 'aaa'.replace('a', 'b', 2) }}{{ 'abcb'.find('b') }}{{ 'abcb'.find('z') }}{{ 'abcb'.count('b') }}",
       "bba1-12"},
      {"{{ ', '.join(['a', 'b']) }}|{{ '{} and {name}'.format(1, name='x') }}", "a, b|1 and x"},
      {"{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 'dflt') }}{{ {'a': 1}.get('b') }}", "1dfltNone"},
      {"{{ {'a': 1, 'b': 2}.keys() | list }}{{ {'a': 1}.values() | list }}", "['a', 'b'][1]"},
      {"{% set l = [1, 2, 3] %}{{ l.pop() }}{{ l.pop(0) }}{{ l }}{{ [5, 6].index(6) }}", "31[2]1"},
  });
}

TEST(Jinja, StrftimeNowUsesInjectedClock) {
  RenderOptions opts;
  opts.now = [] { return std::time_t{1735787045}; };  // 2025-01-02 03:04:05 UTC
  opts.utc = true;
  EXPECT_EQ(
      render("{{ strftime_now('%Y-%m-%d %H:%M:%S') }} {{ strftime_now('%d %B %Y') }}", json::object(), opts),
      "2025-01-02 03:04:05 02 January 2025");
}

TEST(Jinja, UndefinedSemantics) {
  // Printing, testing and iterating an undefined value is fine; using it is an error naming it.
  EXPECT_EQ(render("[{{ missing }}]{% if missing %}x{% endif %}{% for a in missing %}y{% endfor %}"), "[]");
  EXPECT_EQ(render("{{ missing | length }}{{ missing ~ 'a' }}{{ missing == none }}"), "0aFalse");
  EXPECT_EQ(render("{{ none.attr }}|{{ {}.a }}"), "|");
  EXPECT_EQ(render_error("{{ missing.attr }}"), "t.jinja:1:11: 'missing' is undefined");
  EXPECT_EQ(render_error("\n  {{ x['y'] }}", {{"x", nullptr}}), "");
  EXPECT_EQ(render_error("{{ d.a.b }}", {{"d", json::object()}}),
            "t.jinja:1:7: 'dict object' has no attribute 'a'");
  EXPECT_EQ(render_error("{{ missing + 1 }}"), "t.jinja:1:12: 'missing' is undefined");
  EXPECT_EQ(render_error("{{ missing() }}"), "t.jinja:1:4: 'missing' is undefined (called as a function)");
  EXPECT_EQ(render_error("{{ messages[0]['role'] }}"), "t.jinja:1:12: 'messages' is undefined");
}

TEST(Jinja, ErrorsNameLineAndColumn) {
  EXPECT_EQ(render_error("ok\n{{ 1 + }}"), "t.jinja:2:8: syntax error: expected an expression, got '}}'");
  EXPECT_EQ(render_error("{% if x %}never closed"),
            "t.jinja:1:23: syntax error: unexpected end of template, expected '{% endif %}'");
  EXPECT_EQ(render_error("{% endfor %}"),
            "t.jinja:1:4: syntax error: unexpected '{% endfor %}' without a matching opening tag");
  EXPECT_EQ(render_error("{% include 'x' %}"), "t.jinja:1:4: syntax error: unsupported statement 'include'");
  EXPECT_EQ(render_error("a\n  {{ 'x' | nosuch }}"), "t.jinja:2:12: unknown filter 'nosuch'");
  EXPECT_EQ(render_error("{{ 1 is nosuch }}"), "t.jinja:1:6: unknown test 'nosuch'");
  EXPECT_EQ(render_error("{{ 'unterminated }}"), "t.jinja:1:4: syntax error: unterminated string literal");
  EXPECT_EQ(render_error("{{ x"), "t.jinja:1:1: syntax error: unterminated '{{' (missing '}}')");
  EXPECT_EQ(render_error("{# x"), "t.jinja:1:1: syntax error: unterminated comment (missing '#}')");
  EXPECT_EQ(render_error("{{ 'a' + 1 }}"), "t.jinja:1:8: unsupported operand type(s) for +: 'str' and 'int'");
  EXPECT_EQ(render_error("{{ 1 / 0 }}"), "t.jinja:1:6: division by zero");
  EXPECT_EQ(
      render_error("{% set x = 1 %}{% set x.y = 2 %}"),
      "t.jinja:1:25: cannot assign attribute 'y' on a int (only namespace() objects can be assigned to)");
  EXPECT_EQ(render_error("\n\n   {{ raise_exception('Roles must alternate') }}"),
            "t.jinja:3:7: raise_exception(): Roles must alternate");
  EXPECT_EQ(render_error("{{ [1] | join(1, 2, 3) | tojson(bad=1) }}"),
            "t.jinja:1:26: filter 'tojson': unexpected keyword argument 'bad'");
}

TEST(Jinja, ValuesRoundTripJson) {
  auto j = json::parse(R"({"b": [1, 2.5, "x", null, true], "a": {"nested": {}}})");
  auto v = mtpserve::jinja::Value::from_json(j);
  EXPECT_EQ(v.to_json(), j);
  EXPECT_EQ(v.to_json().dump(), j.dump());  // key order kept
}

TEST(ChatTemplate, LoadsCheckpointFilesAndPassesTransformersVariables) {
  auto dir = std::filesystem::temp_directory_path() / "mtpserve_chat_template_test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "tokenizer_config.json")
        << R"({"bos_token": "<bos>", "eos_token": {"content": "<eos>", "lstrip": false},
              "chat_template": "{{ bos_token }}cfg{% for m in messages %}{{ m.content }}{% endfor %}"})";
  }
  auto from_config = mtpserve::ChatTemplate::load(dir);
  json messages = json::parse(R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ(from_config.render(messages, nullptr, true), "<bos>cfghi");

  {
    std::ofstream(dir / "chat_template.jinja")
        << "{{ bos_token }}{{ eos_token }}|{{ tools is none }}|{{ add_generation_prompt }}|"
           "{{ enable_thinking | default('unset') }}|{{ documents is none }}\n";
  }
  auto from_jinja = mtpserve::ChatTemplate::load(dir);
  EXPECT_EQ(from_jinja.render(messages, nullptr, false), "<bos><eos>|True|False|unset|True");
  EXPECT_EQ(from_jinja.render(messages, json::array(), true, {{"enable_thinking", true}}),
            "<bos><eos>|False|True|True|True");
  std::filesystem::remove_all(dir);

  EXPECT_THROW(mtpserve::ChatTemplate::load(dir), mtpserve::Error);
}

TEST(ChatTemplate, RendersGemma4Template) {
  std::ifstream in(std::string(MTP_SOURCE_DIR) + "/tests/data/chat/gemma4-chat-template.jinja");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  auto t = mtpserve::ChatTemplate::from_source(ss.str(), "gemma4.jinja", {{"bos_token", "<bos>"}});
  json messages =
      json::parse(R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])");
  EXPECT_EQ(t.render(messages, nullptr, true),
            "<bos><|turn>system\nBe "
            "brief.<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>");
  EXPECT_EQ(t.render(json::parse(R"([{"role": "user", "content": "Hi"}])"), nullptr, true,
                     {{"enable_thinking", true}}),
            "<bos><|turn>system\n<|think|><turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n");
}
