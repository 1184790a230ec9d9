// The CUDA backend: memory (caching allocator, uploads, copies), the device error word, and the dispatch of
// every op of the contract to its family's launcher (norm.cu, linear.cu, rope.cu, attention.cu, moe.cu,
// sampling.cu). All work runs in order on one stream owned by the backend.
#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>
#include "backend/cuda/cuda_common.cuh"

#include "backend/cuda/cuda_backend.h"

namespace mtpserve {
namespace cuda {

void need(const Tensor& t, DType d, const char* op, const char* what) {
  MTP_CHECK(t.defined(), "cuda {}: {} is not defined", op, what);
  MTP_CHECK(t.dtype == d, "cuda {}: {} must be {}, got {}", op, what, dtype_name(d), dtype_name(t.dtype));
  MTP_CHECK(t.device == Device::CUDA, "cuda {}: {} is not a CUDA tensor", op, what);
}
void need_cuda(const Tensor& t, const char* op, const char* what) {
  MTP_CHECK(t.defined(), "cuda {}: {} is not defined", op, what);
  MTP_CHECK(t.device == Device::CUDA, "cuda {}: {} is not a CUDA tensor", op, what);
}

namespace {

// Caching allocator: size-bucketed free lists; a block goes back to its list when the last Tensor holding it
// is released. Reuse is safe without events because all work is ordered on the backend's one stream.
struct Pool {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  size_t held = 0;  // bytes cudaMalloc'ed by the pool (in use + cached)

  static size_t bucket(size_t n) {
    n = std::max<size_t>(n, 1);
    if (n <= 4096) return (n + 511) / 512 * 512;
    size_t p = size_t(1) << (63 - __builtin_clzll(n));  // highest power of two <= n
    size_t step = std::max<size_t>(4096, p / 8);        // <= 12.5% waste
    return (n + step - 1) / step * step;
  }
  void empty_cache_locked() {
    for (auto& [b, v] : free_lists)
      for (void* p : v) {
        cudaFree(p);
        held -= b;
      }
    free_lists.clear();
  }
  void* get(size_t b) {
    std::lock_guard<std::mutex> g(mu);
    auto it = free_lists.find(b);
    if (it != free_lists.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, b);
    if (e != cudaSuccess) {  // give the cached blocks back and try once more
      cudaGetLastError();
      empty_cache_locked();
      e = cudaMalloc(&p, b);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail("cuda alloc: out of device memory allocating {} bytes ({} bytes held by the allocator): {}", b,
           held, cudaGetErrorString(e));
    }
    held += b;
    return p;
  }
  void put(void* p, size_t b) {
    std::lock_guard<std::mutex> g(mu);
    free_lists[b].push_back(p);
  }
  ~Pool() {
    std::lock_guard<std::mutex> g(mu);
    empty_cache_locked();
  }
};

}  // namespace

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), pool_(std::make_shared<Pool>()) {
    int n = 0;
    CUDA_OK(cudaGetDeviceCount(&n), "init");
    MTP_CHECK(device >= 0 && device < n, "cuda backend: device {} does not exist ({} CUDA devices)", device,
              n);
    CUDA_OK(cudaSetDevice(device), "init");
    cudaDeviceProp prop{};
    CUDA_OK(cudaGetDeviceProperties(&prop, device), "init");
    ctx_.num_sms = prop.multiProcessorCount;
    CUDA_OK(cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking), "init");
    CUBLAS_OK(cublasCreate(&ctx_.cublas), "init");
    CUBLAS_OK(cublasSetStream(ctx_.cublas, ctx_.stream), "init");
    ctx_.cublas_ws_bytes = size_t(32) << 20;
    CUDA_OK(cudaMalloc(&ctx_.cublas_ws, ctx_.cublas_ws_bytes), "init");
    CUBLAS_OK(cublasSetWorkspace(ctx_.cublas, ctx_.cublas_ws, ctx_.cublas_ws_bytes), "init");
    CUDA_OK(cudaMalloc(&ctx_.err, sizeof(DevErr)), "init");
    CUDA_OK(cudaMemset(ctx_.err, 0, sizeof(DevErr)), "init");
    CUDA_OK(cudaMallocHost(&err_host_, sizeof(DevErr)), "init");
    if (const char* s = std::getenv("MTP_GEMV_MAX_M")) ctx_.gemv_max_m = std::atoi(s);
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(ctx_.stream);
    cublasDestroy(ctx_.cublas);
    cudaFree(ctx_.cublas_ws);
    cudaFree(ctx_.err);
    cudaFreeHost(err_host_);
    cudaStreamDestroy(ctx_.stream);
  }

  std::string name() const override { return name_; }
  Device device() const override { return Device::CUDA; }
  DType act_dtype() const override { return DType::BF16; }
  Ctx& ctx() { return ctx_; }
  size_t held() const { return pool_->held; }

  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override {
    Tensor t(nullptr, dtype, shape, Device::CUDA);
    size_t b = Pool::bucket(t.nbytes());
    void* p = pool_->get(b);
    std::shared_ptr<Pool> pool = pool_;
    t.holder = std::shared_ptr<void>(p, [pool, b](void* q) { pool->put(q, b); });
    t.data = p;
    return t;
  }
  Tensor alloc_exact(DType dtype, std::initializer_list<int64_t> shape) {
    Tensor t(nullptr, dtype, shape, Device::CUDA);
    void* p = nullptr;
    CUDA_OK(cudaMalloc(&p, std::max<size_t>(t.nbytes(), 1)), "alloc_exact");
    t.holder = std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
    t.data = p;
    return t;
  }

  Tensor upload_weight(const Tensor& host) override {
    MTP_CHECK(host.device == Device::CPU, "cuda upload_weight: source must be a host tensor");
    Tensor t;
    if (host.dtype == DType::F32 || host.dtype == DType::BF16 || host.dtype == DType::F16) {
      t = alloc_exact(DType::BF16, {host.numel()});
      if (host.dtype == DType::BF16) {
        CUDA_OK(cudaMemcpy(t.data, host.data, host.nbytes(), cudaMemcpyHostToDevice), "upload_weight");
      } else {
        std::vector<uint16_t> tmp(size_t(host.numel()));
        for (int64_t i = 0; i < host.numel(); i++) tmp[size_t(i)] = f32_to_bf16(load_f32(host, i));
        CUDA_OK(cudaMemcpy(t.data, tmp.data(), tmp.size() * 2, cudaMemcpyHostToDevice), "upload_weight");
      }
    } else {  // index tensors (I64/I32/...) keep their type
      t = alloc_exact(host.dtype, {host.numel()});
      CUDA_OK(cudaMemcpy(t.data, host.data, host.nbytes(), cudaMemcpyHostToDevice), "upload_weight");
    }
    t.ndim = host.ndim;
    t.shape = host.shape;
    return t;
  }
  void copy_from_host(Tensor dst, const void* src) override {
    need_cuda(dst, "copy_from_host", "dst");
    if (dst.nbytes() == 0) return;
    CUDA_OK(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, ctx_.stream),
            "copy_from_host");
    CUDA_OK(cudaStreamSynchronize(ctx_.stream), "copy_from_host");  // the caller may free src on return
  }
  void copy_to_host(void* dst, const Tensor& src) override {
    need_cuda(src, "copy_to_host", "src");
    if (src.nbytes() > 0)
      CUDA_OK(cudaMemcpyAsync(dst, src.data, src.nbytes(), cudaMemcpyDeviceToHost, ctx_.stream),
              "copy_to_host");
    sync_and_check("copy_to_host");
  }
  void copy(Tensor dst, const Tensor& src) override {
    need_cuda(dst, "copy", "dst");
    need_cuda(src, "copy", "src");
    MTP_CHECK(dst.nbytes() == src.nbytes(), "cuda copy: {} bytes into {} bytes", src.nbytes(), dst.nbytes());
    if (dst.nbytes() == 0 || dst.data == src.data) return;
    CUDA_OK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, ctx_.stream), "copy");
  }
  void fill_zero(Tensor dst) override {
    need_cuda(dst, "fill_zero", "dst");
    if (dst.nbytes()) CUDA_OK(cudaMemsetAsync(dst.data, 0, dst.nbytes(), ctx_.stream), "fill_zero");
  }
  void synchronize() override { sync_and_check("synchronize"); }

  void embed(Tensor out, const Tensor& ids, const Tensor& table, float scale) override {
    cuda::embed(ctx_, out, ids, table, scale);
  }
  void rms_norm(Tensor out, const Tensor& x, const Tensor& w, float eps) override {
    cuda::rms_norm(ctx_, out, x, w, eps);
  }
  void add(Tensor out, const Tensor& a, const Tensor& b) override { cuda::add(ctx_, out, a, b); }
  void scale(Tensor out, const Tensor& x, float s) override { cuda::scale(ctx_, out, x, s); }
  void mul_bcast(Tensor out, const Tensor& x, const Tensor& w) override { cuda::mul_bcast(ctx_, out, x, w); }
  void gelu_mul(Tensor out, const Tensor& gate, const Tensor& up) override {
    cuda::gelu_mul(ctx_, out, gate, up);
  }
  void gelu_mul_fused(Tensor out, const Tensor& gu) override { cuda::gelu_mul_fused(ctx_, out, gu); }
  void transpose01(Tensor out, const Tensor& x) override { cuda::transpose01(ctx_, out, x); }
  void gather_rows(Tensor out, const Tensor& x, const Tensor& rows) override {
    cuda::gather_rows(ctx_, out, x, rows);
  }
  void softcap(Tensor x, float cap) override { cuda::softcap(ctx_, x, cap); }
  void linear(Tensor out, const Tensor& x, const Tensor& w) override { cuda::linear(ctx_, out, x, w); }
  void rope(Tensor x, const Tensor& positions, const Tensor& inv_freq) override {
    cuda::rope(ctx_, x, positions, inv_freq);
  }
  void kv_write(Tensor k_cache, Tensor v_cache, const Tensor& k, const Tensor& v, const AttnMeta& m,
                const KvPageTable& pt) override {
    cuda::kv_write(ctx_, k_cache, v_cache, k, v, m, pt);
  }
  void attention(Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttnMeta& m,
                 const KvPageTable& pt, int window) override {
    cuda::attention(*this, ctx_, out, q, k_cache, v_cache, m, pt, window);
  }
  void moe_route(Tensor weights, Tensor experts, const Tensor& logits, const Tensor& per_expert_scale,
                 int top_k) override {
    cuda::moe_route(ctx_, weights, experts, logits, per_expert_scale, top_k);
  }
  void moe_experts(Tensor out, const Tensor& x, const Tensor& weights, const Tensor& experts,
                   const Tensor& gate_up, const Tensor& down) override {
    cuda::moe_experts(*this, ctx_, out, x, weights, experts, gate_up, down);
  }
  void argmax(Tensor out, const Tensor& x) override { cuda::argmax(ctx_, out, x); }
  void to_f32(Tensor out, const Tensor& x) override { cuda::to_f32(ctx_, out, x); }
  void centroid_candidates(Tensor cand_ids, Tensor cand_scores, const Tensor& y,
                           const Tensor& centroid_scores, const Tensor& token_ordering, const Tensor& embed,
                           int top_k) override {
    cuda::centroid_candidates(ctx_, cand_ids, cand_scores, y, centroid_scores, token_ordering, embed, top_k);
  }

 private:
  void sync_and_check(const char* op) {
    CUDA_OK(cudaMemcpyAsync(err_host_, ctx_.err, sizeof(DevErr), cudaMemcpyDeviceToHost, ctx_.stream), op);
    CUDA_OK(cudaStreamSynchronize(ctx_.stream), op);
    if (err_host_->code == kErrNone) return;
    DevErr e = *err_host_;
    CUDA_OK(cudaMemsetAsync(ctx_.err, 0, sizeof(DevErr), ctx_.stream), op);
    CUDA_OK(cudaStreamSynchronize(ctx_.stream), op);
    err_host_->code = 0;
    switch (e.code) {
      case kErrTokenId:
        fail("embed: token id {} is outside the vocabulary [0, {})", e.a, e.b);
      case kErrFreedPage:
        fail("kv cache: slot {} of sequence {} lies in a page that was already freed", e.a, e.b);
      case kErrNoKey:
        fail("attention: query row {} (position {}) sees no key", e.a, e.b);
      case kErrRowIndex:
        fail("gather_rows: row index {} is outside [0, {})", e.a, e.b);
      case kErrSlot:
        fail("kv_write: physical slot {} is outside the cache ({} slots)", e.a, e.b);
      default:
        fail("cuda backend: device error code {} ({}, {}, {})", e.code, e.a, e.b, e.c);
    }
  }

  int device_;
  std::string name_;
  std::shared_ptr<Pool> pool_;
  Ctx ctx_;
  DevErr* err_host_ = nullptr;
};

Tensor scratch(Backend& be, DType t, int64_t n) { return be.alloc(t, {std::max<int64_t>(n, 1)}); }

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device) { return std::make_unique<cuda::CudaBackend>(device); }

static cuda::CudaBackend& as_cuda(Backend& be) {
  auto* c = dynamic_cast<cuda::CudaBackend*>(&be);
  MTP_CHECK(c, "backend {} is not the CUDA backend", be.name());
  return *c;
}

void cuda_set_linear_path(Backend& be, CudaLinearPath path, int gemv_max_m) {
  auto& c = as_cuda(be).ctx();
  c.linear_path = path == CudaLinearPath::Auto ? 0 : path == CudaLinearPath::Gemv ? 1 : 2;
  if (gemv_max_m >= 0) c.gemv_max_m = gemv_max_m;
}
void cuda_fill_random(Backend& be, Tensor t, uint64_t seed, float mean, float std, bool normal) {
  cuda::fill_random(as_cuda(be).ctx(), t, seed, mean, std, normal);
}
Tensor cuda_alloc_exact(Backend& be, DType dtype, std::initializer_list<int64_t> shape) {
  return as_cuda(be).alloc_exact(dtype, shape);
}
size_t cuda_allocator_bytes(Backend& be) { return as_cuda(be).held(); }
void* cuda_stream(Backend& be) { return as_cuda(be).ctx().stream; }

}  // namespace mtpserve
