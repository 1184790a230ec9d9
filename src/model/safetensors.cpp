#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace mtpserve {
using json = nlohmann::json;

namespace {

DType parse_dtype(const std::string& s, const std::string& where) {
  if (s == "F32") return DType::F32;
  if (s == "BF16") return DType::BF16;
  if (s == "F16") return DType::F16;
  if (s == "I64") return DType::I64;
  if (s == "I32") return DType::I32;
  if (s == "U8") return DType::U8;
  if (s == "I8") return DType::I8;
  if (s == "BOOL") return DType::BOOL;
  fail("{}: dtype '{}' is not supported (expected F32, BF16, F16, I64, I32, U8, I8 or BOOL)", where, s);
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  MTP_CHECK(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail("{}: cannot stat: {}", path, std::strerror(errno));
  }
  size_ = size_t(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    fail("{}: truncated safetensors file ({} bytes; the 8-byte header length is missing)", path, size_);
  }
  map_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  MTP_CHECK(map_ != MAP_FAILED, "{}: mmap failed: {}", path, std::strerror(errno));
  try {
    const char* base = static_cast<const char*>(map_);
    uint64_t n = 0;
    std::memcpy(&n, base, 8);  // little-endian u64
    MTP_CHECK(n > 0 && n <= size_ - 8 && n < (uint64_t(100) << 20),
              "{}: corrupt safetensors header: header length {} does not fit the {}-byte file", path, n,
              size_);
    json h;
    try {
      h = json::parse(std::string_view(base + 8, n));
    } catch (const json::parse_error& e) {
      fail("{}: corrupt safetensors header (invalid JSON): {}", path, e.what());
    }
    MTP_CHECK(h.is_object(), "{}: corrupt safetensors header (not a JSON object)", path);
    data_ = base + 8 + n;
    size_t data_size = size_ - 8 - n;
    for (auto& [name, v] : h.items()) {
      if (name == "__metadata__") continue;
      std::string where = path + ": tensor '" + name + "'";
      MTP_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
                "{}: header entry needs dtype, shape and data_offsets", where);
      TensorInfo t;
      t.name = name;
      MTP_CHECK(v["dtype"].is_string(), "{}: dtype must be a string", where);
      t.dtype = parse_dtype(v["dtype"].get<std::string>(), where);
      MTP_CHECK(v["shape"].is_array(), "{}: shape must be a list", where);
      int64_t numel = 1;
      for (auto& d : v["shape"]) {
        MTP_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, "{}: bad shape {}", where,
                  v["shape"].dump());
        t.shape.push_back(d.get<int64_t>());
        numel *= t.shape.back();
      }
      auto& off = v["data_offsets"];
      MTP_CHECK(
          off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
          "{}: data_offsets must be two non-negative integers", where);
      t.begin = off[0].get<size_t>();
      t.end = off[1].get<size_t>();
      MTP_CHECK(t.begin <= t.end && t.end <= data_size,
                "{}: data_offsets [{}, {}) lie outside the {}-byte data section (truncated file?)", where,
                t.begin, t.end, data_size);
      MTP_CHECK(t.end - t.begin == size_t(numel) * dtype_size(t.dtype),
                "{}: {} bytes do not match shape {} of {}", where, t.end - t.begin, v["shape"].dump(),
                dtype_name(t.dtype));
      tensors_[name] = std::move(t);
    }
  } catch (...) {
    munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Tensor SafetensorsFile::view(const TensorInfo& info) const {
  MTP_CHECK(info.shape.size() <= 4, "{}: tensor '{}' has {} dimensions (at most 4 supported)", path_,
            info.name, info.shape.size());
  Tensor t;
  t.data = const_cast<char*>(data_ + info.begin);
  t.dtype = info.dtype;
  t.device = Device::CPU;
  t.ndim = int(info.shape.size());
  for (int i = 0; i < t.ndim; i++) t.shape[i] = info.shape[i];
  return t;
}

Checkpoint Checkpoint::open(const std::string& dir) {
  namespace fs = std::filesystem;
  Checkpoint c;
  c.dir_ = dir;
  std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream f(index);
    std::stringstream ss;
    ss << f.rdbuf();
    json j;
    try {
      j = json::parse(ss.str());
    } catch (const json::parse_error& e) {
      fail("{}: invalid JSON: {}", index, e.what());
    }
    MTP_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
              "{}: missing 'weight_map' object", index);
    std::map<std::string, size_t> file_idx;
    for (auto& [name, file] : j["weight_map"].items()) {
      MTP_CHECK(file.is_string(), "{}: weight_map['{}'] must be a file name", index, name);
      std::string fn = file.get<std::string>();
      MTP_CHECK(fn.find('/') == std::string::npos, "{}: shard name '{}' must be a plain file name", index,
                fn);
      if (!file_idx.count(fn)) {
        file_idx[fn] = c.files_.size();
        c.files_.push_back(std::make_shared<SafetensorsFile>(dir + "/" + fn));
      }
      const auto& sf = *c.files_[file_idx[fn]];
      MTP_CHECK(sf.find(name), "{}: index says tensor '{}' is in {}, but that shard does not contain it",
                index, name, fn);
      c.where_[name] = file_idx[fn];
    }
  } else if (fs::exists(single)) {
    c.files_.push_back(std::make_shared<SafetensorsFile>(single));
    for (auto& [name, _] : c.files_[0]->tensors()) c.where_[name] = 0;
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json found", dir);
  }
  return c;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  MTP_CHECK(it != where_.end(), "{}: missing tensor '{}'", dir_, name);
  return *files_[it->second]->find(name);
}

Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  MTP_CHECK(it != where_.end(), "{}: missing tensor '{}'", dir_, name);
  const auto& f = files_[it->second];
  Tensor t = f->view(*f->find(name));
  t.holder = f;
  return t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (auto& [n, _] : where_) out.push_back(n);
  return out;
}

std::string Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? "" : files_[it->second]->path();
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors) {
  json h = json::object();
  size_t off = 0;
  for (auto& [name, t] : tensors) {
    MTP_ASSERT(t.device == Device::CPU);
    std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
    h[name] = {{"dtype", std::string(dtype_name(t.dtype))},
               {"shape", shape},
               {"data_offsets", {off, off + t.nbytes()}}};
    off += t.nbytes();
  }
  h["__metadata__"] = {{"format", "pt"}};
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs += ' ';  // keep the data section 8-byte aligned
  std::ofstream f(path, std::ios::binary);
  MTP_CHECK(f.good(), "{}: cannot write", path);
  uint64_t n = hs.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(hs.data(), std::streamsize(hs.size()));
  for (auto& [name, t] : tensors) f.write(static_cast<const char*>(t.data), std::streamsize(t.nbytes()));
  MTP_CHECK(f.good(), "{}: write failed", path);
}

}  // namespace mtpserve
