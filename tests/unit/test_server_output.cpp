// OutputProcessor: incremental detokenization with stop strings on the bundled tokenizer. Stop strings are
// matched across token boundaries and when several tokens arrive in one step; text is truncated before the
// stop string; text that may begin a stop string is held back, and released at the end when it did not.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "server/output_processor.h"
#include "server/tokenizer.h"

namespace mtpserve {
namespace {

const Tokenizer& tok() {
  static Tokenizer t = Tokenizer::load(std::string(MTP_SOURCE_DIR) + "/models/tiny-gemma4");
  return t;
}

struct Run {
  std::string text;
  bool stopped = false;
  size_t tokens = 0;
  std::vector<std::string> deltas;
};

// Feeds `ids` in steps of `step` tokens, then finishes (unless stopped).
Run feed(const std::vector<int32_t>& ids, const std::vector<std::string>& stops, size_t step) {
  OutputProcessor p(tok(), stops, true);
  Run r;
  for (size_t i = 0; i < ids.size() && !r.stopped; i += step) {
    size_t n = std::min(step, ids.size() - i);
    auto d = p.add(std::span<const int32_t>(ids.data() + i, n));
    r.deltas.push_back(d.text);
    r.text += d.text;
    r.tokens += d.tokens_used;
    r.stopped = d.stopped;
  }
  if (!r.stopped) {
    auto d = p.finish();
    r.text += d.text;
    r.stopped = d.stopped;
  }
  EXPECT_EQ(r.text, p.text());
  EXPECT_EQ(r.tokens, p.tokens());
  return r;
}

TEST(ServerOutput, NoStopStringsReproducesDecode) {
  for (std::string s : {"The history of Rome is long.", "naïve café — 你好, world!\n\nNew paragraph."}) {
    auto ids = tok().encode(s, false);
    std::string want = tok().decode(ids, true);
    for (size_t step : {1u, 2u, 3u, 7u, 1000u}) {
      auto r = feed(ids, {}, step);
      EXPECT_EQ(r.text, want) << "step " << step;
      EXPECT_FALSE(r.stopped);
      EXPECT_EQ(r.tokens, ids.size());
    }
  }
}

TEST(ServerOutput, StopStringsAcrossTokensAndSteps) {
  const std::string text = "The history of Rome is long. The end of the story is near, said the old man.";
  auto ids = tok().encode(text, false);
  ASSERT_EQ(tok().decode(ids, true), text);
  ASSERT_GT(ids.size(), 10u);
  // Stops inside one token, spanning tokens, at the very start, at the end, with overlapping prefixes.
  std::vector<std::vector<std::string>> cases = {
      {"Rome"}, {"ory of Ro"},    {"The"},           {"man."},   {"end of the s"}, {"is n"},
      {"zzz"},  {"is l", "long"}, {"said", "story"}, {"s", "x"}, {"n.", "man"}};
  for (const auto& stops : cases) {
    size_t cut = std::string::npos;
    for (const auto& s : stops) cut = std::min(cut, text.find(s));
    std::string want = cut == std::string::npos ? text : text.substr(0, cut);
    for (size_t step : {1u, 2u, 3u, 4u, 5u, 1000u}) {
      auto r = feed(ids, stops, step);
      EXPECT_EQ(r.text, want) << stops[0] << " step " << step;
      EXPECT_EQ(r.stopped, cut != std::string::npos) << stops[0] << " step " << step;
      if (cut != std::string::npos) {
        // The counted tokens end with the one that completed the stop string.
        std::vector<int32_t> used(ids.begin(), ids.begin() + long(r.tokens));
        std::vector<int32_t> before(ids.begin(), ids.begin() + long(r.tokens) - 1);
        std::string full = tok().decode(used, true), prev = tok().decode(before, true);
        bool in_full = false, in_prev = false;
        for (const auto& s : stops) {
          in_full |= full.find(s) != std::string::npos;
          in_prev |= prev.find(s) != std::string::npos;
        }
        EXPECT_TRUE(in_full && !in_prev) << stops[0] << " step " << step;
      }
    }
  }
}

TEST(ServerOutput, HoldsBackPossibleStopPrefixUntilKnown) {
  auto ids = tok().encode("abc de", false);
  OutputProcessor p(tok(), {"de!"}, true);
  std::string streamed;
  for (int32_t id : ids) streamed += p.add(std::span<const int32_t>(&id, 1)).text;
  EXPECT_EQ(streamed, "abc ");  // "de" could still become "de!"
  auto f = p.finish();
  EXPECT_FALSE(f.stopped);
  EXPECT_EQ(streamed + f.text, "abc de");
}

TEST(ServerOutput, MultiByteStopAndText) {
  const std::string text = "Il était une fois — un café à Paris.";
  auto ids = tok().encode(text, false);
  ASSERT_EQ(tok().decode(ids, true), text);
  for (size_t step : {1u, 2u, 3u}) {
    auto r = feed(ids, {"café"}, step);
    EXPECT_EQ(r.text, "Il était une fois — un ");
    EXPECT_TRUE(r.stopped);
    auto r2 = feed(ids, {"—"}, step);
    EXPECT_EQ(r2.text, "Il était une fois ");
  }
}

TEST(ServerOutput, NothingAfterStop) {
  auto ids = tok().encode("one two three four", false);
  OutputProcessor p(tok(), {"two"}, true);
  auto d = p.add(ids);
  EXPECT_TRUE(d.stopped);
  EXPECT_EQ(d.text, "one ");
  EXPECT_TRUE(p.add(ids).text.empty());
  EXPECT_TRUE(p.finish().text.empty());
}

TEST(ServerOutput, StopPrefixSuffix) {
  EXPECT_EQ(stop_prefix_suffix("hello wor", {"world"}), 3u);
  EXPECT_EQ(stop_prefix_suffix("hello", {"world"}), 0u);
  EXPECT_EQ(stop_prefix_suffix("aaa", {"aaaa"}), 3u);
  EXPECT_EQ(stop_prefix_suffix("xab", {"abc", "b!"}), 2u);
  EXPECT_EQ(stop_prefix_suffix("", {"abc"}), 0u);
}

}  // namespace
}  // namespace mtpserve
