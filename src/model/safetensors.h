// safetensors checkpoints: one file or shards listed in model.safetensors.index.json, memory-mapped.
// Every header is validated (size, JSON, dtype, shape, offsets in bounds) before any tensor is handed out.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace mtpserve {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte offsets into the data section
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // mmaps and validates; throws Error naming the file
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  // A CPU view of the tensor's bytes (valid while this file is alive). Shape up to 4 dims.
  Tensor view(const TensorInfo& info) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  std::map<std::string, TensorInfo> tensors_;
};

// A model directory's weights: model.safetensors, or the shards named by model.safetensors.index.json.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& model_dir);

  bool has(const std::string& name) const { return where_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;
  // View of a tensor; the returned Tensor keeps its file mapped (holder).
  Tensor get(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }
  std::string file_of(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Write named CPU tensors to a safetensors file (used by tests and by --load-format dummy exports).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors);

}  // namespace mtpserve
