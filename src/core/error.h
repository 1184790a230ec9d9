// Errors and precondition checks. Every failure the user can cause (bad checkpoint, bad request) is an
// mtpserve::Error with a message naming the offending file, tensor, field or value.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace mtpserve {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace mtpserve

// MTP_CHECK(cond, "fmt {}", args...): throws mtpserve::Error with the message when cond is false.
#define MTP_CHECK(cond, ...)                    \
  do {                                          \
    if (!(cond)) ::mtpserve::fail(__VA_ARGS__); \
  } while (0)

// MTP_ASSERT(cond): an internal invariant (a bug if it fails), reported with file and line.
#define MTP_ASSERT(cond)                                                                    \
  do {                                                                                      \
    if (!(cond)) ::mtpserve::fail("internal error: {} ({}:{})", #cond, __FILE__, __LINE__); \
  } while (0)
