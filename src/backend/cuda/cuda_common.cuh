// Shared pieces of the CUDA backend: error checks, bf16 helpers, the per-backend context (stream, cuBLAS,
// device error word) and the launch functions of each op family (one .cu file per family).
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cuda_runtime.h>
#include <type_traits>
#include <utility>

#include <cstdint>

#include "backend/backend.h"
#include "backend/cuda/timeline.cuh"

namespace mtpserve::cuda {

#define CUDA_OK(expr, op)                                                                                 \
  do {                                                                                                    \
    cudaError_t e_ = (expr);                                                                              \
    if (e_ != cudaSuccess) ::mtpserve::fail("cuda {}: {} failed: {}", op, #expr, cudaGetErrorString(e_)); \
  } while (0)

#define CUBLAS_OK(expr, op)                                                             \
  do {                                                                                  \
    cublasStatus_t s_ = (expr);                                                         \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::mtpserve::fail("cuda {}: {} failed: {}", op, #expr, cublasGetStatusString(s_)); \
  } while (0)

// Check the last launch error (after every kernel launch).
inline void check_launch(const char* op) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) ::mtpserve::fail("cuda {}: kernel launch failed: {}", op, cudaGetErrorString(e));
}

// Device-side error word for data-dependent failures (bad token id, freed page, row without keys): a kernel
// records the first one with atomicCAS, the host reads it at the next synchronising call and throws.
enum ErrCode : int {
  kErrNone = 0,
  kErrTokenId = 1,
  kErrFreedPage = 2,
  kErrNoKey = 3,
  kErrRowIndex = 4,
  kErrSlot = 5
};
struct DevErr {
  int code, a, b, c;
};
__device__ inline void report_error(DevErr* e, int code, int a, int b, int c) {
  if (atomicCAS(&e->code, 0, code) == 0) {
    e->a = a;
    e->b = b;
    e->c = c;
  }
}

struct Ctx {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  void* cublas_ws = nullptr;
  size_t cublas_ws_bytes = 0;
  DevErr* err = nullptr;  // device
  int num_sms = 132;
  int gemv_max_m = 1;  // MTP_GEMV_MAX_M overrides
  // linear() runs M rows in [mma_min_m, 8] on the tensor-core GEMV (gemv_mma.cu; MTP_MMA_MIN_M, 9: never).
  int mma_min_m = 5;
  int linear_path = 0;  // 0 auto, 1 gemv, 2 cublas
};

// Programmatic dependent launch (PDL, sm_90+). The kernels of the model's steps are launched by launch() with
// programmatic stream serialization and begin with pdl_begin() (a kernel launched plainly, like
// sample_rows.cu's, waits for its predecessor as usual): pdl_begin lets the next kernel of the stream
// launch at once (its blocks then wait on the GPU instead of behind a launch) and waits for the previous
// kernel's results before reading anything. Only what no kernel of a step writes may be read between the two:
// GEMVs issue their first weight loads there (linear.cu), RoPE its positions, page slots and cos/sin
// (rope.cu), decode attention its sequence bounds and first key slots (attention.cu): the step's metadata and
// weights. Every thread of every PDL-launched kernel calls pdl_wait() before it reads inputs or exits, so a
// kernel never completes before its predecessor and the waits chain. MTP_PDL=0 launches without the
// attribute.
__device__ __forceinline__ void pdl_trigger() {
  MTP_TL(0);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  MTP_TL(1);
}
__device__ __forceinline__ void pdl_begin() {
  pdl_trigger();
  pdl_wait();
}

bool pdl_enabled();  // MTP_PDL (default 1); gemv_override can turn it off for benchmarks

// kernel<<<grid, block, smem, stream>>>(args...) with the PDL attribute, then the launch check.
template <typename... KArgs, typename... Args>
void launch(cudaStream_t stream, const char* op, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
            Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
#ifdef MTP_TIMELINE
  tl_names().push_back(op);
#endif
  CUDA_OK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), op);
}
template <typename... KArgs, typename... Args>
void launch(const Ctx& c, const char* op, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
            Args&&... args) {
  launch(c.stream, op, kernel, grid, block, smem, std::forward<Args>(args)...);
}

// The sequence of query row r: the largest s with cu[s] <= r (cu [S+1], ascending).
__device__ __forceinline__ int find_seq(const int32_t* cu, int S, int r) {
  int lo = 0, hi = S - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (cu[mid] <= r)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Scratch memory from the backend's caching allocator (returned when the Tensor's holder goes away).
Tensor scratch(Backend& be, DType t, int64_t n);

__device__ __forceinline__ float bf(const __nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float round_bf(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
__device__ __forceinline__ float gelu_tanh(float x) {
  const float c = 0.7978845608028654f;
  return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}
// gelu_mul's output from bf16 values g and u: gelu_tanh(g) rounded to bf16, times u, rounded (as HF rounds).
__device__ __forceinline__ __nv_bfloat16 gelu_mul_round(float g, float u) {
  return __float2bfloat16_rn(round_bf(gelu_tanh(g)) * u);
}
// The GEMV epilogues (linear.cu, gemv_mma.cu): plain sums; gelu(gate) * up from the rows n and N + n of a
// fused gate|up matrix [2N, K]; gelu(sum) * up[m, n] with up given.
enum GemvEpi { kEpiPlain = 0, kEpiGatePairs = 1, kEpiGeluUp = 2 };

// Sum of v over the TPR threads of one row: a warp (TPR = 32, several rows per block) or a whole block (TPR a
// multiple of 32, one row per block; every thread of the block must call it). A fixed order, so every kernel
// that reduces a row through it gets the same sum (the fused norms match rms_norm bit for bit).
template <int TPR>
__device__ __forceinline__ float row_sum(float v) {
  static_assert(TPR % 32 == 0, "a row is one or more whole warps");
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if constexpr (TPR > 32) {
    __shared__ float part[TPR / 32];
    __syncthreads();  // readers of an earlier call are done
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    v = 0.f;
#pragma unroll
    for (int i = 0; i < TPR / 32; i++) v += part[i];
  }
  return v;
}

inline const __nv_bfloat16* cbf(const Tensor& t) { return static_cast<const __nv_bfloat16*>(t.data); }
inline __nv_bfloat16* mbf(const Tensor& t) { return static_cast<__nv_bfloat16*>(t.data); }
inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 32) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

void need(const Tensor& t, DType d, const char* op, const char* what);
void need_cuda(const Tensor& t, const char* op, const char* what);

// --- launchers (one file per family) ---
// norm.cu
void embed(Ctx&, Tensor out, const Tensor& ids, const Tensor& table, float scale);
void rms_norm(Ctx&, Tensor out, const Tensor& x, const Tensor& w, float eps);
// x = (x + rms_norm(o) * w) [* scale]; with h defined, then h = rms_norm(x) * hw (rms_norm_add(_norm))
void rms_norm_add(Ctx&, Tensor x, const Tensor& o, const Tensor& w, float eps, const Tensor& scale, Tensor h,
                  const Tensor& hw);
void add(Ctx&, Tensor out, const Tensor& a, const Tensor& b);
void scale(Ctx&, Tensor out, const Tensor& x, float s);
void mul_bcast(Ctx&, Tensor out, const Tensor& x, const Tensor& w);
void gelu_mul(Ctx&, Tensor out, const Tensor& gate, const Tensor& up);
void gelu_mul_fused(Ctx&, Tensor out, const Tensor& gu);
void transpose01(Ctx&, Tensor out, const Tensor& x);
void gather_rows(Ctx&, Tensor out, const Tensor& x, const Tensor& rows);
void softcap(Ctx&, Tensor x, float cap);
void fill_random(Ctx&, Tensor t, uint64_t seed, float mean, float std, bool normal);
// linear.cu
void linear(Ctx&, Tensor out, const Tensor& x, const Tensor& w);
void gemv_bf16(Ctx&, __nv_bfloat16* out, int64_t ldo, const __nv_bfloat16* x, int64_t M,
               const __nv_bfloat16* w, int64_t N, int64_t K);
// Backend::linear_gelu on the GEMVs (the activation in their epilogue) for the rows linear() gives them;
// false for the rows cuBLAS takes (the caller then runs linear + gelu_mul).
bool linear_gelu(Ctx&, Tensor out, const Tensor& x, const Tensor& w, const Tensor& up);
// gemv_mma.cu: the GEMV of M <= 8 token rows (stride ldx) on tensor cores, N outputs per row with epilogue
// `epi` (GemvEpi; up: [M, N] for kEpiGeluUp); needs K % 32 == 0 and 16-byte aligned rows (gemv_mma_ok).
bool gemv_mma_ok(int64_t M, int64_t K, const void* x, int64_t ldx, const void* w);
void gemv_mma(Ctx&, __nv_bfloat16* out, int64_t ldo, const __nv_bfloat16* x, int64_t ldx, int64_t M,
              const __nv_bfloat16* w, int64_t N, int64_t K, int epi, const __nv_bfloat16* up);
// rope.cu
void rope(Ctx&, Tensor x, const Tensor& positions, const Tensor& inv_freq);
void qkv_norm_rope_kv(Ctx&, Tensor q, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm,
                      const Tensor& positions, const Tensor& inv_freq, float eps, Tensor k_cache,
                      Tensor v_cache, const AttnMeta& m, const KvPageTable& pt);
void qkv_norm_rope(Ctx&, Tensor q, Tensor k, Tensor v, const Tensor& q_norm, const Tensor& k_norm,
                   const Tensor& positions, const Tensor& inv_freq, float eps);
// attention.cu
void kv_write(Ctx&, Tensor k_cache, Tensor v_cache, const Tensor& k, const Tensor& v, const AttnMeta& m,
              const KvPageTable& pt);
void attention(Backend&, Ctx&, Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               const AttnMeta& m, const KvPageTable& pt, int window);
// moe.cu
void moe_route(Ctx&, Tensor weights, Tensor experts, const Tensor& logits, const Tensor& per_expert_scale,
               int top_k);
void moe_experts(Backend&, Ctx&, Tensor out, const Tensor& x, const Tensor& weights, const Tensor& experts,
                 const Tensor& gate_up, const Tensor& down);
// sampling.cu
void argmax(Backend&, Ctx&, Tensor out, const Tensor& x);
void to_f32(Ctx&, Tensor out, const Tensor& x);
void argmax_ids(Backend&, Ctx&, Tensor out, const Tensor& scores, const Tensor& ids);
void centroid_candidates(Backend&, Ctx&, Tensor cand_ids, Tensor cand_scores, const Tensor& y,
                         const Tensor& centroid_scores, const Tensor& token_ordering, const Tensor& embed,
                         int top_k);

}  // namespace mtpserve::cuda
