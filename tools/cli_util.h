// Small helpers shared by the mtpserve subcommands.
#pragma once
#include <string>
#include <vector>

#include "core/error.h"

namespace mtpserve::cli {

// "2,651,7" -> {2, 651, 7}; names the bad entry on error.
inline std::vector<int32_t> parse_token_list(const std::string& s, const char* flag) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    size_t used = 0;
    long v = -1;
    try {
      v = std::stol(item, &used);
    } catch (...) {
      used = 0;
    }
    MTP_CHECK(used == item.size() && !item.empty() && v >= 0 && v < (1L << 31),
              "{}: '{}' is not a non-negative token id (expected a comma-separated list like 2,651,7)", flag,
              item);
    out.push_back(int32_t(v));
    i = j + 1;
  }
  return out;
}

}  // namespace mtpserve::cli
