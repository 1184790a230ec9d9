// The in-graph kernel timeline, a profiling build option: configure with
// -DCMAKE_CUDA_FLAGS=-DMTP_TIMELINE -DCMAKE_CXX_FLAGS=-DMTP_TIMELINE (a separate build directory) and run
// `MTP_TIMELINE_OUT=file bench_cuda_decode ...`; scripts/gpu/timeline.py reads the file. Thread 0 of block 0
// of every kernel launched by launch() records (grid id, global timer) in pdl_trigger (tag 0: running) and
// after pdl_wait (tag 1: released, i.e. the previous kernel has completed), so the time from one kernel's
// release to the next one's is what that kernel costs in the chain, PDL overlap included (Nsight Systems is
// not on the GPU machine, and Nsight Compute serialises kernels). The names are those launch() saw, matched
// to grids in order: a step with cuBLAS or plainly launched kernels misaligns them. Without MTP_TIMELINE
// MTP_TL expands to nothing.
#pragma once
#ifdef MTP_TIMELINE
#include <cuda_runtime.h>

#include <vector>

namespace mtpserve::cuda {

struct TlRec {
  unsigned long long grid, t;  // t: timer (ns) << 1 | tag
};
constexpr unsigned kTlMax = 1u << 20;
// Per translation unit (no relocatable device code): each registers a setter that timeline_begin calls.
static __device__ TlRec* g_tl = nullptr;
static __device__ unsigned* g_tl_n = nullptr;
inline std::vector<void (*)(void*, void*)>& tl_setters() {
  static std::vector<void (*)(void*, void*)> v;
  return v;
}
inline std::vector<const char*>& tl_names() {  // launch()'s op names, in launch order
  static std::vector<const char*> v;
  return v;
}
static void tl_set_tu(void* rec, void* n) {
  cudaMemcpyToSymbol(g_tl, &rec, sizeof rec);
  cudaMemcpyToSymbol(g_tl_n, &n, sizeof n);
}
[[maybe_unused]] static const int tl_registered = (tl_setters().push_back(&tl_set_tu), 0);

__device__ __forceinline__ void tl_record(unsigned tag) {
  if (g_tl && threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) {
    unsigned long long gid, t;
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(gid));
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    const unsigned i = atomicAdd(g_tl_n, 1u);
    if (i < kTlMax) g_tl[i] = {gid, t << 1 | tag};
  }
}

}  // namespace mtpserve::cuda
#define MTP_TL(tag) ::mtpserve::cuda::tl_record(tag)
#else
#define MTP_TL(tag)
#endif
