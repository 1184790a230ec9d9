#include "backend/select.h"

#ifdef MTPSERVE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace mtpserve {

std::unique_ptr<Backend> make_backend(const std::string& name) {
  MTP_CHECK(name == "auto" || name == "cpu" || name == "cuda", "backend must be auto, cpu or cuda, got '{}'",
            name);
#ifdef MTPSERVE_HAVE_CUDA
  if (name != "cpu") {
    try {
      return make_cuda_backend(0);
    } catch (const Error& e) {
      if (name == "cuda") throw;
    }
  }
#else
  MTP_CHECK(name != "cuda", "backend cuda requested but this build has no CUDA support");
#endif
  return make_cpu_backend();
}

}  // namespace mtpserve
