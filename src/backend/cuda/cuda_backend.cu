// The CUDA backend: memory (caching allocator, uploads, copies), the device error word, and the dispatch of
// every op of the contract to its family's launcher (norm.cu, linear.cu, rope.cu, attention.cu, moe.cu,
// sampling.cu). All work runs in order on one stream owned by the backend.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
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
// sample_rows.cu
void sample_rows(Ctx&, Tensor out_pd, Tensor out_tok, const Tensor& logits, const SampleRowsArgs& a);

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
  size_t cached_locked() const {
    size_t n = 0;
    for (const auto& [b, v] : free_lists) n += b * v.size();
    return n;
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
    if (capture) {  // reuse what this capture already owns and freed (the graph's ops run in order)
      auto c = capture->free_lists.find(b);
      if (c != capture->free_lists.end() && !c->second.empty()) {
        void* p = c->second.back();
        c->second.pop_back();
        graph_owned[p] = true;
        return p;
      }
    }
    void* p = take_locked(b);
    if (capture) capture->owned.emplace(p, b);
    if (capture) graph_owned[p] = true;
    return p;
  }
  void* take_locked(size_t b) {
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
    if (capture && capture->owned.count(p)) {
      capture->free_lists[b].push_back(p);
      graph_owned[p] = false;
      return;
    }
    auto it = graph_owned.find(p);
    if (it != graph_owned.end()) {  // the graph keeps it until it is destroyed
      it->second = false;
      return;
    }
    orphans.erase(p);  // an orphan's graph is gone: it goes back to the pool like any block
    free_lists[b].push_back(p);
  }

  // Capture mode: every block handed out while recording a graph belongs to that graph (its kernels have the
  // address baked in), may be reused only by later ops of the same capture, and returns to the pool when the
  // graph is destroyed.
  struct Capture {
    std::unordered_map<void*, size_t> owned;
    std::unordered_map<size_t, std::vector<void*>> free_lists;
  };
  std::unique_ptr<Capture> capture;
  std::unordered_map<void*, bool> graph_owned;  // block -> still held by a Tensor
  std::unordered_set<void*> orphans;            // held by a Tensor that outlived its graph

  void begin_capture() {
    std::lock_guard<std::mutex> g(mu);
    MTP_CHECK(!capture, "cuda graph: captures cannot nest");
    capture = std::make_unique<Capture>();
  }
  std::unordered_map<void*, size_t> end_capture() {
    std::lock_guard<std::mutex> g(mu);
    auto owned = std::move(capture->owned);
    capture.reset();
    return owned;
  }
  void release_graph(const std::unordered_map<void*, size_t>& owned) {
    std::lock_guard<std::mutex> g(mu);
    for (auto& [p, b] : owned) {
      auto g = graph_owned.find(p);
      const bool held = g != graph_owned.end() && g->second;
      if (g != graph_owned.end()) graph_owned.erase(g);
      if (held)
        orphans.insert(p);  // returns to the pool when its Tensor goes
      else
        free_lists[b].push_back(p);
    }
  }
  ~Pool() {
    std::lock_guard<std::mutex> g(mu);
    empty_cache_locked();
  }
};

}  // namespace

// A captured CUDA graph and the allocator blocks its kernels use.
class CudaGraph final : public Graph {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t st, std::shared_ptr<Pool> pool,
            std::unordered_map<void*, size_t> owned)
      : exec_(exec), st_(st), pool_(std::move(pool)), owned_(std::move(owned)) {}
  ~CudaGraph() override {
    cudaStreamSynchronize(st_);  // a replay in flight still uses the blocks
    cudaGraphExecDestroy(exec_);
    pool_->release_graph(owned_);
    cudaGetLastError();  // errors ignored above must not surface at an unrelated later launch
  }
  void replay() override { CUDA_OK(cudaGraphLaunch(exec_, st_), "graph replay"); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t st_;
  std::shared_ptr<Pool> pool_;
  std::unordered_map<void*, size_t> owned_;
};

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
    if (const char* s = std::getenv("MTP_MMA_MIN_M")) ctx_.mma_min_m = std::atoi(s);
    if (const char* s = std::getenv("MTP_OP_PROFILE")) profile_ = std::atoi(s) != 0;
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(ctx_.stream);
    if (profile_) print_profile();
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    cublasDestroy(ctx_.cublas);
    cudaFree(ctx_.cublas_ws);
    cudaFree(ctx_.err);
    cudaFreeHost(err_host_);
    cudaStreamDestroy(ctx_.stream);
    cudaGetLastError();
  }

  std::string name() const override { return name_; }
  Device device() const override { return Device::CUDA; }
  DType act_dtype() const override { return DType::BF16; }
  Ctx& ctx() { return ctx_; }
  size_t held() const { return pool_->held; }
  int64_t free_memory() override {
    size_t free = 0, total = 0;
    CUDA_OK(cudaMemGetInfo(&free, &total), "free_memory");
    std::lock_guard<std::mutex> g(pool_->mu);
    return int64_t(free + pool_->cached_locked());
  }

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
    not_capturing("copy_from_host");
    if (dst.nbytes() == 0) return;
    CUDA_OK(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, ctx_.stream),
            "copy_from_host");
    CUDA_OK(cudaStreamSynchronize(ctx_.stream), "copy_from_host");  // the caller may free src on return
  }
  void copy_to_host(void* dst, const Tensor& src) override {
    need_cuda(src, "copy_to_host", "src");
    not_capturing("copy_to_host");
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
  Tensor alloc_weight(DType dtype, std::initializer_list<int64_t> shape) override {
    return alloc_exact(dtype, shape);
  }
  void fill_zero(Tensor dst) override {
    need_cuda(dst, "fill_zero", "dst");
    if (dst.nbytes()) CUDA_OK(cudaMemsetAsync(dst.data, 0, dst.nbytes(), ctx_.stream), "fill_zero");
  }
  void synchronize() override {
    not_capturing("synchronize");
    sync_and_check("synchronize");
  }

  bool native_graphs() const override { return true; }
  std::unique_ptr<Graph> capture(const std::function<void()>& ops) override {
    MTP_ASSERT(ops);
    sync_and_check("capture");
    pool_->begin_capture();
    capturing_ = true;
    // Relaxed: the allocator may cudaMalloc while recording (a block the graph then owns).
    CUDA_OK(cudaStreamBeginCapture(ctx_.stream, cudaStreamCaptureModeRelaxed), "capture");
    cudaGraph_t graph = nullptr;
    try {
      ops();
    } catch (...) {
      cudaStreamEndCapture(ctx_.stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      capturing_ = false;
      pool_->release_graph(pool_->end_capture());
      throw;
    }
    capturing_ = false;
    auto owned = pool_->end_capture();
    cudaError_t e = cudaStreamEndCapture(ctx_.stream, &graph);
    cudaGraphExec_t exec = nullptr;
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
      cudaGetLastError();
      pool_->release_graph(owned);
      fail("cuda graph: capture failed: {}", cudaGetErrorString(e));
    }
    return std::make_unique<CudaGraph>(exec, ctx_.stream, pool_, std::move(owned));
  }

  void embed(Tensor out, const Tensor& ids, const Tensor& table, float scale) override {
    OpScope op_scope_(*this, "embed");
    cuda::embed(ctx_, out, ids, table, scale);
  }
  void rms_norm(Tensor out, const Tensor& x, const Tensor& w, float eps) override {
    OpScope op_scope_(*this, "rms_norm");
    cuda::rms_norm(ctx_, out, x, w, eps);
  }
  void rms_norm_add(Tensor x, const Tensor& o, const Tensor& w, float eps, const Tensor& scale) override {
    OpScope op_scope_(*this, "rms_norm_add");
    cuda::rms_norm_add(ctx_, x, o, w, eps, scale, Tensor(), Tensor());
  }
  void rms_norm_add_norm(Tensor x, Tensor h, const Tensor& o, const Tensor& w, const Tensor& hw, float eps,
                         const Tensor& scale) override {
    OpScope op_scope_(*this, "rms_norm_add_norm");
    cuda::rms_norm_add(ctx_, x, o, w, eps, scale, h, hw);
  }
  void add(Tensor out, const Tensor& a, const Tensor& b) override {
    OpScope op_scope_(*this, "add");
    cuda::add(ctx_, out, a, b);
  }
  void scale(Tensor out, const Tensor& x, float s) override {
    OpScope op_scope_(*this, "scale");
    cuda::scale(ctx_, out, x, s);
  }
  void mul_bcast(Tensor out, const Tensor& x, const Tensor& w) override {
    OpScope op_scope_(*this, "mul_bcast");
    cuda::mul_bcast(ctx_, out, x, w);
  }
  void gelu_mul(Tensor out, const Tensor& gate, const Tensor& up) override {
    OpScope op_scope_(*this, "gelu_mul");
    cuda::gelu_mul(ctx_, out, gate, up);
  }
  void gelu_mul_fused(Tensor out, const Tensor& gu) override {
    OpScope op_scope_(*this, "gelu_mul_fused");
    cuda::gelu_mul_fused(ctx_, out, gu);
  }
  void transpose01(Tensor out, const Tensor& x) override {
    OpScope op_scope_(*this, "transpose01");
    cuda::transpose01(ctx_, out, x);
  }
  void gather_rows(Tensor out, const Tensor& x, const Tensor& rows) override {
    OpScope op_scope_(*this, "gather_rows");
    cuda::gather_rows(ctx_, out, x, rows);
  }
  void softcap(Tensor x, float cap) override {
    OpScope op_scope_(*this, "softcap");
    cuda::softcap(ctx_, x, cap);
  }
  void linear(Tensor out, const Tensor& x, const Tensor& w) override {
    OpScope op_scope_(*this, "linear");
    cuda::linear(ctx_, out, x, w);
  }
  void linear_gelu(Tensor out, const Tensor& x, const Tensor& w, const Tensor& up) override {
    OpScope op_scope_(*this, "linear_gelu");
    if (!cuda::linear_gelu(ctx_, out, x, w, up)) Backend::linear_gelu(out, x, w, up);
  }
  void rope(Tensor x, const Tensor& positions, const Tensor& inv_freq) override {
    OpScope op_scope_(*this, "rope");
    cuda::rope(ctx_, x, positions, inv_freq);
  }
  void qkv_norm_rope(Tensor q, Tensor k, Tensor v, const Tensor& q_norm, const Tensor& k_norm,
                     const Tensor& positions, const Tensor& inv_freq, float eps) override {
    OpScope op_scope_(*this, "qkv_norm_rope");
    cuda::qkv_norm_rope(ctx_, q, k, v, q_norm, k_norm, positions, inv_freq, eps);
  }
  void qkv_norm_rope_kv(Tensor q, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm,
                        const Tensor& positions, const Tensor& inv_freq, float eps, Tensor k_cache,
                        Tensor v_cache, const AttnMeta& m, const KvPageTable& pt) override {
    OpScope op_scope_(*this, "qkv_norm_rope_kv");
    cuda::qkv_norm_rope_kv(ctx_, q, qkv, q_norm, k_norm, positions, inv_freq, eps, k_cache, v_cache, m, pt);
  }
  void kv_write(Tensor k_cache, Tensor v_cache, const Tensor& k, const Tensor& v, const AttnMeta& m,
                const KvPageTable& pt) override {
    OpScope op_scope_(*this, "kv_write");
    cuda::kv_write(ctx_, k_cache, v_cache, k, v, m, pt);
  }
  void attention(Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const AttnMeta& m,
                 const KvPageTable& pt, int window) override {
    OpScope op_scope_(*this, "attention");
    cuda::attention(*this, ctx_, out, q, k_cache, v_cache, m, pt, window);
  }
  void moe_route(Tensor weights, Tensor experts, const Tensor& logits, const Tensor& per_expert_scale,
                 int top_k) override {
    OpScope op_scope_(*this, "moe_route");
    cuda::moe_route(ctx_, weights, experts, logits, per_expert_scale, top_k);
  }
  void moe_experts(Tensor out, const Tensor& x, const Tensor& weights, const Tensor& experts,
                   const Tensor& gate_up, const Tensor& down) override {
    OpScope op_scope_(*this, "moe_experts");
    cuda::moe_experts(*this, ctx_, out, x, weights, experts, gate_up, down);
  }
  void argmax(Tensor out, const Tensor& x) override {
    OpScope op_scope_(*this, "argmax");
    cuda::argmax(*this, ctx_, out, x);
  }
  void to_f32(Tensor out, const Tensor& x) override {
    OpScope op_scope_(*this, "to_f32");
    cuda::to_f32(ctx_, out, x);
  }
  void argmax_ids(Tensor out, const Tensor& scores, const Tensor& ids) override {
    OpScope op_scope_(*this, "argmax_ids");
    cuda::argmax_ids(*this, ctx_, out, scores, ids);
  }
  void sample_rows(Tensor out_pd, Tensor out_tok, const Tensor& logits, const SampleRowsArgs& a) override {
    OpScope op_scope_(*this, "sample_rows");
    cuda::sample_rows(ctx_, out_pd, out_tok, logits, a);
  }
  void centroid_candidates(Tensor cand_ids, Tensor cand_scores, const Tensor& y,
                           const Tensor& centroid_scores, const Tensor& token_ordering, const Tensor& embed,
                           int top_k) override {
    OpScope op_scope_(*this, "centroid_candidates");
    cuda::centroid_candidates(*this, ctx_, cand_ids, cand_scores, y, centroid_scores, token_ordering, embed,
                              top_k);
  }

 private:
  // MTP_OP_PROFILE=1: device time of every op, from events around it (eager runs; not while capturing),
  // summed per op and printed to stderr when the backend goes away.
  struct OpScope {
    CudaBackend& be;
    cudaEvent_t a = nullptr;
    const char* name;
    OpScope(CudaBackend& b, const char* n) : be(b), name(n) {
      if (!be.profile_ || be.capturing_) return;
      a = be.event();
      cudaEventRecord(a, be.ctx_.stream);
    }
    ~OpScope() {
      if (!a) return;
      cudaEvent_t b = be.event();
      cudaEventRecord(b, be.ctx_.stream);
      be.pending_.push_back({name, a, b});
    }
  };
  struct Pending {
    const char* name;
    cudaEvent_t a, b;
  };
  cudaEvent_t event() {
    if (events_.empty()) {
      cudaEvent_t e;
      CUDA_OK(cudaEventCreate(&e), "profile");
      return e;
    }
    cudaEvent_t e = events_.back();
    events_.pop_back();
    return e;
  }
  void flush_profile() {  // after a synchronisation: every pending event has completed
    for (const Pending& p : pending_) {
      float ms = 0;
      cudaEventElapsedTime(&ms, p.a, p.b);
      auto& [t, n] = op_time_[p.name];
      t += ms, n++;
      events_.push_back(p.a), events_.push_back(p.b);
    }
    pending_.clear();
  }
  void print_profile() {
    flush_profile();
    std::vector<std::pair<double, std::string>> v;
    double all = 0;
    for (auto& [k, tn] : op_time_) v.push_back({tn.first, k}), all += tn.first;
    std::sort(v.rbegin(), v.rend());
    fmt::print(stderr, "op profile ({}): {:.3f} ms of device time in ops\n", name_, all);
    for (auto& [t, k] : v)
      fmt::print(stderr, "  {:<22} {:>10.3f} ms {:>5.1f}% {:>9} calls {:>8.2f} us/call\n", k, t,
                 100 * t / all, op_time_[k].second, 1e3 * t / double(op_time_[k].second));
  }
  bool profile_ = false;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> events_;
  std::map<std::string, std::pair<double, int64_t>> op_time_;

  void not_capturing(const char* op) const {
    MTP_CHECK(!capturing_, "cuda {}: host transfers and synchronisation cannot be recorded into a graph", op);
  }
  void sync_and_check(const char* op) {
    CUDA_OK(cudaMemcpyAsync(err_host_, ctx_.err, sizeof(DevErr), cudaMemcpyDeviceToHost, ctx_.stream), op);
    CUDA_OK(cudaStreamSynchronize(ctx_.stream), op);
    if (profile_) flush_profile();
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
  bool capturing_ = false;
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
#ifdef MTP_TIMELINE
// The timeline's buffers (timeline.cuh), set in every translation unit.
static cuda::TlRec* g_tl_rec = nullptr;
static unsigned* g_tl_count = nullptr;
void timeline_clear_names() { cuda::tl_names().clear(); }
void timeline_begin() {
  if (!g_tl_rec) {
    CUDA_OK(cudaMalloc(&g_tl_rec, sizeof(cuda::TlRec) * cuda::kTlMax), "timeline");
    CUDA_OK(cudaMalloc(&g_tl_count, sizeof(unsigned)), "timeline");
  }
  CUDA_OK(cudaMemset(g_tl_count, 0, sizeof(unsigned)), "timeline");
  for (auto set : cuda::tl_setters()) set(g_tl_rec, g_tl_count);
  CUDA_OK(cudaDeviceSynchronize(), "timeline");
}
// One line per kernel of the recorded run in grid order, named by the last names recorded since
// timeline_clear_names: index, name, running and released times (us from the first release).
void timeline_dump(FILE* f) {
  CUDA_OK(cudaDeviceSynchronize(), "timeline");
  for (auto set : cuda::tl_setters()) set(nullptr, nullptr);  // stop recording
  unsigned n = 0;
  CUDA_OK(cudaMemcpy(&n, g_tl_count, sizeof n, cudaMemcpyDeviceToHost), "timeline");
  n = std::min(n, cuda::kTlMax);
  std::vector<cuda::TlRec> r(n);
  CUDA_OK(cudaMemcpy(r.data(), g_tl_rec, sizeof(cuda::TlRec) * n, cudaMemcpyDeviceToHost), "timeline");
  std::map<unsigned long long, std::array<double, 2>> grids;  // grid -> {running, released} ns, -1: none
  for (const auto& e : r) {
    auto it = grids.try_emplace(e.grid, std::array<double, 2>{-1.0, -1.0}).first;
    it->second[e.t & 1] = double(e.t >> 1);
  }
  const auto& names = cuda::tl_names();
  std::fprintf(f, "# %zu kernels recorded, %zu names\n", grids.size(), names.size());
  double t0 = -1;
  for (auto& [id, g] : grids)
    if (g[1] >= 0 && (t0 < 0 || g[1] < t0)) t0 = g[1];
  const size_t skip = names.size() > grids.size() ? names.size() - grids.size() : 0;
  size_t i = 0;
  for (auto& [id, g] : grids) {
    const char* nm = skip + i < names.size() ? names[skip + i] : "?";
    std::fprintf(f, "%zu\t%s\t%.3f\t%.3f\n", i, nm, (g[0] - t0) / 1e3, (g[1] - t0) / 1e3);
    i++;
  }
}
#endif

void cuda_fill_random(Backend& be, Tensor t, uint64_t seed, float mean, float std, bool normal) {
  cuda::fill_random(as_cuda(be).ctx(), t, seed, mean, std, normal);
}
Tensor cuda_alloc_exact(Backend& be, DType dtype, std::initializer_list<int64_t> shape) {
  return as_cuda(be).alloc_exact(dtype, shape);
}
size_t cuda_allocator_bytes(Backend& be) { return as_cuda(be).held(); }
void* cuda_stream(Backend& be) { return as_cuda(be).ctx().stream; }

}  // namespace mtpserve
