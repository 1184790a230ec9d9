// Tensor: a typed, contiguous, row-major view of up to 4 dimensions on one device, optionally owning its
// memory through a shared holder. Ops take views; owners are the backend's buffers and the mmapped
// checkpoint.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace mtpserve {

enum class Device : uint8_t { CPU, CUDA };

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int ndim = 0;
  std::array<int64_t, 4> shape{1, 1, 1, 1};
  std::shared_ptr<void> holder;  // keeps the memory alive; empty for plain views

  Tensor() = default;
  Tensor(void* d, DType t, std::initializer_list<int64_t> dims, Device dev = Device::CPU)
      : data(d), dtype(t), device(dev) {
    set_shape(dims);
  }

  void set_shape(std::initializer_list<int64_t> dims) {
    MTP_ASSERT(dims.size() <= 4);
    ndim = int(dims.size());
    shape = {1, 1, 1, 1};
    int i = 0;
    for (int64_t d : dims) shape[i++] = d;
  }
  bool defined() const { return data != nullptr; }
  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
  }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  // Size of one row = product of all dims but the first.
  int64_t row_numel() const { return ndim == 0 ? 1 : numel() / shape[0]; }

  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }

  // Rows [begin, end) of the first dimension, as a view sharing the holder.
  Tensor rows(int64_t begin, int64_t end) const {
    MTP_ASSERT(ndim >= 1 && begin >= 0 && begin <= end && end <= shape[0]);
    Tensor t = *this;
    t.data = static_cast<char*>(data) + size_t(begin * row_numel()) * dtype_size(dtype);
    t.shape[0] = end - begin;
    return t;
  }
  // Same memory, new shape with the same element count.
  Tensor view(std::initializer_list<int64_t> dims) const {
    Tensor t = *this;
    t.set_shape(dims);
    MTP_ASSERT(t.numel() == numel());
    return t;
  }
  std::string shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// Element i of a host float tensor (F32, BF16 or F16) as fp32; throws for other dtypes.
inline float load_f32(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::F32:
      return t.ptr<const float>()[i];
    case DType::BF16:
      return bf16_to_f32(t.ptr<const uint16_t>()[i]);
    case DType::F16:
      return f16_to_f32(t.ptr<const uint16_t>()[i]);
    default:
      fail("tensor of dtype {} is not a float tensor", dtype_name(t.dtype));
  }
}

}  // namespace mtpserve
