// Backend by name, as the CLI flags spell it: "cpu", "cuda", or "auto" (CUDA when this build has it and a
// device answers, else CPU).
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"

namespace mtpserve {

std::unique_ptr<Backend> make_backend(const std::string& name);

}  // namespace mtpserve
