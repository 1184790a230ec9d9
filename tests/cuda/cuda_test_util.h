// Shared helpers of the CUDA op tests: the two backends, seeded bf16-exact inputs, guarded GPU outputs,
// host copies, the normalised error and the tolerances (see test_cuda_ops.cpp for how they are derived).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/cuda/cuda_backend.h"
#include "engine/generate.h"
#include "test_util.h"

namespace mtpserve {
namespace cuda {
// linear.cu: variant -1 = pick by shape; pdl 0 / 1 = programmatic dependent launch off / on, -1 = leave.
// Returns the number of GEMV variants.
int gemv_override(int variant, int pdl);
}  // namespace cuda
namespace {

constexpr double kTol1 = 5e-3;
constexpr double kTolN = 1e-2;
constexpr size_t kGuard = 256;

inline Backend& cpu() {
  static auto b = make_cpu_backend();
  return *b;
}
inline Backend& gpu() {
  static auto b = make_cuda_backend(0);
  return *b;
}

uint32_t g_seed = 1000;
inline uint32_t next_seed() { return g_seed++; }

inline std::vector<float> rand_bf16(size_t n, float lo, float hi) {
  std::mt19937 g(next_seed());
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = round_bf16(d(g));
  return v;
}
inline std::vector<float> randn_bf16(size_t n, float std = 1.0f) {
  std::mt19937 g(next_seed());
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(n);
  for (auto& x : v) x = round_bf16(d(g));
  return v;
}

inline Tensor cpu_f32(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Tensor t = cpu().alloc(DType::F32, shape);
  EXPECT_EQ(size_t(t.numel()), v.size());
  std::memcpy(t.data, v.data(), v.size() * 4);
  return t;
}
inline Tensor cpu_bf16(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Tensor t = cpu().alloc(DType::BF16, shape);
  for (size_t i = 0; i < v.size(); i++) t.ptr<uint16_t>()[i] = f32_to_bf16(v[i]);
  return t;
}
inline Tensor cpu_i32(const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  Tensor t = cpu().alloc(DType::I32, shape);
  std::memcpy(t.data, v.data(), v.size() * 4);
  return t;
}
inline Tensor gpu_bf16(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Tensor t = gpu().alloc(DType::BF16, shape);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); i++) h[i] = f32_to_bf16(v[i]);
  gpu().copy_from_host(t, h.data());
  return t;
}
inline Tensor gpu_f32(const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Tensor t = gpu().alloc(DType::F32, shape);
  gpu().copy_from_host(t, v.data());
  return t;
}
inline Tensor gpu_i32(const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  Tensor t = gpu().alloc(DType::I32, shape);
  gpu().copy_from_host(t, v.data());
  return t;
}
// Attention metadata of one sequence with one query row at position pos after `prefix` committed keys.
inline AttnMeta one_row_meta(int prefix, int pos) {
  AttnMeta m;
  m.num_seqs = 1;
  m.max_q = 1;
  m.cu_q = gpu_i32({0, 1}, {2});
  m.prefix_len = gpu_i32({prefix}, {1});
  m.positions = gpu_i32({pos}, {1});
  return m;
}
template <typename T>
inline Tensor gpu_raw(const std::vector<T>& v, DType d, std::initializer_list<int64_t> shape) {
  Tensor t = gpu().alloc(d, shape);
  gpu().copy_from_host(t, v.data());
  return t;
}

// A GPU output inside a poisoned, guarded buffer.
struct Guarded {
  Tensor buf, t;
  Guarded(DType d, std::initializer_list<int64_t> shape) {
    Tensor probe(nullptr, d, shape, Device::CUDA);
    buf = gpu().alloc(DType::U8, {int64_t(probe.nbytes() + 2 * kGuard)});
    std::vector<uint8_t> h(buf.nbytes(), 0xFF);
    std::fill(h.begin(), h.begin() + kGuard, 0xA5);
    std::fill(h.end() - kGuard, h.end(), 0xA5);
    gpu().copy_from_host(buf, h.data());
    t = probe;
    t.data = static_cast<char*>(buf.data) + kGuard;
    t.holder = buf.holder;
  }
  // Guards intact, and every element written (no 0xFF poison pattern left).
  void check(const char* what) const {
    std::vector<uint8_t> h(buf.nbytes());
    gpu().copy_to_host(h.data(), buf);
    for (size_t i = 0; i < kGuard; i++) {
      ASSERT_EQ(h[i], 0xA5) << what << ": guard byte before the output overwritten at " << i;
      ASSERT_EQ(h[h.size() - 1 - i], 0xA5) << what << ": guard byte after the output overwritten";
    }
    size_t es = dtype_size(t.dtype), n = size_t(t.numel());
    size_t unwritten = 0;
    for (size_t e = 0; e < n; e++) {
      bool all = true;
      for (size_t b = 0; b < es; b++) all = all && h[kGuard + e * es + b] == 0xFF;
      unwritten += all;
    }
    ASSERT_EQ(unwritten, 0u) << what << ": " << unwritten << " of " << n << " output elements never written";
  }
};

inline std::vector<float> host_f32(const Tensor& t) {
  std::vector<float> v(size_t(t.numel()));
  if (t.device == Device::CPU) {
    for (size_t i = 0; i < v.size(); i++)
      v[i] = t.dtype == DType::F32 ? t.ptr<const float>()[i] : bf16_to_f32(t.ptr<const uint16_t>()[i]);
    return v;
  }
  if (t.dtype == DType::F32) {
    gpu().copy_to_host(v.data(), t);
  } else {
    std::vector<uint16_t> h(v.size());
    gpu().copy_to_host(h.data(), t);
    for (size_t i = 0; i < v.size(); i++) v[i] = bf16_to_f32(h[i]);
  }
  return v;
}
inline std::vector<int32_t> host_i32(const Tensor& t) {
  std::vector<int32_t> v(size_t(t.numel()));
  if (t.device == Device::CPU)
    std::memcpy(v.data(), t.data, v.size() * 4);
  else
    gpu().copy_to_host(v.data(), t);
  return v;
}

// ||a - b|| / ||b||; NaN anywhere -> infinity.
inline double nerr(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

#define EXPECT_NERR(got, ref, tol, what)                      \
  do {                                                        \
    double e_ = nerr(got, ref);                               \
    EXPECT_LE(e_, tol) << what << " normalised error " << e_; \
  } while (0)

}  // namespace
}  // namespace mtpserve
