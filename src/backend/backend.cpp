// Default graph support: a graph that re-runs the recorded closure. Backends without device graphs (the CPU)
// still run graph users' code paths, so the CPU tests cover them.
#include "backend/backend.h"

namespace mtpserve {

namespace {
class ClosureGraph final : public Graph {
 public:
  explicit ClosureGraph(std::function<void()> ops) : ops_(std::move(ops)) {}
  void replay() override { ops_(); }

 private:
  std::function<void()> ops_;
};
}  // namespace

std::unique_ptr<Graph> Backend::capture(const std::function<void()>& ops) {
  MTP_ASSERT(ops);
  return std::make_unique<ClosureGraph>(ops);
}

}  // namespace mtpserve
