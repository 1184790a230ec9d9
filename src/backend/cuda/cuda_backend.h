// The CUDA backend (bf16 activations and KV cache, fp32 math inside every op, one bf16 rounding per op output
// where HF rounds). Plain C++ header: no CUDA includes, so tools and benches can use it from .cpp files.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>

#include "backend/backend.h"

namespace mtpserve {

std::unique_ptr<Backend> make_cuda_backend(int device = 0);

// --- extras for tests and benchmarks (the Backend must come from make_cuda_backend) ---

// Which kernel `linear` uses: Auto picks the GEMV kernel for small M (<= gemv_max_m) and cuBLAS otherwise.
enum class CudaLinearPath { Auto, Gemv, Cublas };
void cuda_set_linear_path(Backend& be, CudaLinearPath path, int gemv_max_m = -1);

// Fill a BF16/F32 device tensor with seeded random values: normal(mean, std) or uniform [mean-std, mean+std].
// Used for dummy weights generated directly on the device (no host copy) and for KV-cache contents.
void cuda_fill_random(Backend& be, Tensor t, uint64_t seed, float mean, float std, bool normal);

// A device tensor that bypasses the caching allocator (exact cudaMalloc, freed with its last holder).
Tensor cuda_alloc_exact(Backend& be, DType dtype, std::initializer_list<int64_t> shape);

// The backend's stream (a cudaStream_t), for timing with events in benchmarks.
void* cuda_stream(Backend& be);

// Bytes currently held by the caching allocator (in use + cached).
size_t cuda_allocator_bytes(Backend& be);

#ifdef MTP_TIMELINE
// The in-graph kernel timeline (timeline.cuh): forget the recorded launch names (before capturing the graph
// to record); start recording (allocates once, clears); write one line per recorded kernel.
void timeline_clear_names();
void timeline_begin();
void timeline_dump(std::FILE* f);
#endif

}  // namespace mtpserve
