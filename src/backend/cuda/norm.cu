// Row and elementwise ops: embed, rms_norm, rms_norm_add(_norm), add, scale, mul_bcast, gelu_mul(_fused),
// transpose01, gather_rows, softcap, and the seeded random fill used for on-device dummy weights. fp32 math,
// one bf16 rounding per output (gelu_mul: two, softcap: three, as HF rounds; gemma4-architecture.md §5).
#include "backend/cuda/row_words.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

__global__ void embed_kernel(bf16* out, const int32_t* ids, const bf16* table, int64_t V, int64_t H,
                             float scale, DevErr* err) {
  pdl_begin();
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  bf16* o = out + t * H;
  if (id < 0 || id >= V) {
    if (threadIdx.x == 0) report_error(err, kErrTokenId, id, int(V), 0);
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) o[h] = __float2bfloat16_rn(0.0f);
    return;
  }
  const bf16* row = table + int64_t(id) * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) o[h] = __float2bfloat16_rn(bf(row[h]) * scale);
}

template <int TPR>
__global__ void rms_norm_kernel(bf16* out, const bf16* x, const bf16* w, int64_t R, int64_t D, float eps) {
  pdl_begin();
  const int rows_per_block = blockDim.x / TPR;
  const int64_t row = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  if (row >= R) return;  // TPR > 32 launches one row per block, so this is block-uniform there
  const bf16* xr = x + row * D;
  float ss = 0.f;
  for (int64_t i = lane; i < D; i += TPR) {
    float v = bf(xr[i]);
    ss = fmaf(v, v, ss);
  }
  const float inv = 1.0f / sqrtf(row_sum<TPR>(ss) / float(D) + eps);
  bf16* orow = out + row * D;
  for (int64_t i = lane; i < D; i += TPR) {
    float v = bf(xr[i]) * inv;
    if (w) v *= bf(w[i]);
    orow[i] = __float2bfloat16_rn(v);
  }
}

// x = (x + rms_norm(o) * w) [* scale], then (h defined) h = rms_norm(x) * hw: the thread layout, sums and
// roundings of rms_norm, add, mul_bcast and rms_norm in turn (bf16 normed value, bf16 sum, bf16 product), so
// the result equals the unfused ops bit for bit. Each thread rereads only the x elements it wrote.
template <int TPR>
__global__ void rms_norm_add_kernel(bf16* x, bf16* h, const bf16* o, const bf16* w, const bf16* hw,
                                    const bf16* scale_bf, const float* scale_f, int64_t R, int64_t D,
                                    float eps) {
  pdl_begin();
  const int rows_per_block = blockDim.x / TPR;
  const int64_t row = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  if (row >= R) return;  // block-uniform for TPR > 32, as in rms_norm_kernel
  const bf16* orow = o + row * D;
  bf16* xrow = x + row * D;
  float ss = 0.f;
  for (int64_t i = lane; i < D; i += TPR) {
    float v = bf(orow[i]);
    ss = fmaf(v, v, ss);
  }
  const float inv = 1.0f / sqrtf(row_sum<TPR>(ss) / float(D) + eps);
  const bool scaled = scale_bf || scale_f;
  const float s = scale_bf ? bf(*scale_bf) : scale_f ? *scale_f : 1.0f;
  float ss2 = 0.f;
  for (int64_t i = lane; i < D; i += TPR) {
    float n = bf(orow[i]) * inv;
    if (w) n *= bf(w[i]);
    float v = round_bf(bf(xrow[i]) + round_bf(n));
    if (scaled) v = round_bf(v * s);
    xrow[i] = __float2bfloat16_rn(v);  // exact: v is a bf16 value
    ss2 = fmaf(v, v, ss2);
  }
  if (!h) return;  // uniform
  const float inv2 = 1.0f / sqrtf(row_sum<TPR>(ss2) / float(D) + eps);
  bf16* hrow = h + row * D;
  for (int64_t i = lane; i < D; i += TPR) {
    float v = bf(xrow[i]) * inv2;
    if (hw) v *= bf(hw[i]);
    hrow[i] = __float2bfloat16_rn(v);
  }
}

// Rows with D % 8 == 0 (row_words.cuh): TPR = 256 threads per row for D >= 1024, else a warp per row (8
// rows per block); each thread loads all of its 16-byte words, and the other operands', before any
// arithmetic: one memory round trip instead of D / TPR dependent ones (the scalar loops above cost ~10 us
// per row of 2560). The vector kernels and qkv_norm_rope (rope.cu) share the layout and the order of the
// sums, so fused ops still equal the unfused ones bit for bit.
constexpr int kVecThreads = 256;

template <int TPR, int WPT>
__global__ void __launch_bounds__(kVecThreads)
    rms_norm_vec_kernel(bf16* out, const bf16* x, const bf16* w, int64_t R, int64_t D, float eps) {
  pdl_trigger();
  const int64_t row = int64_t(blockIdx.x) * (kVecThreads / TPR) + threadIdx.x / TPR, W = D / 8;
  RowWords<TPR, WPT> a, wt;
  if (w && row < R) wt.load(w, W);  // a weight (no kernel of a step writes one): before the wait
  pdl_wait();
  if (row >= R) return;  // uniform per row (a warp or the block)
  a.load(x + row * D, W);
  a.scale(a.inv_rms(W, D, eps), wt, w != nullptr, false);  // rounded by store
  a.store(out + row * D, W);
}

template <int TPR, int WPT>
__global__ void __launch_bounds__(kVecThreads)
    rms_norm_add_vec_kernel(bf16* x, bf16* h, const bf16* o, const bf16* w, const bf16* hw,
                            const bf16* scale_bf, const float* scale_f, int64_t R, int64_t D, float eps) {
  pdl_trigger();
  const int64_t row = int64_t(blockIdx.x) * (kVecThreads / TPR) + threadIdx.x / TPR, W = D / 8;
  RowWords<TPR, WPT> ov, xv, wv, hwv;
  if (row < R) {  // the norm weights (no kernel of a step writes one): before the wait
    if (w) wv.load(w, W);
    if (h && hw) hwv.load(hw, W);
  }
  pdl_wait();
  if (row >= R) return;  // uniform per row (a warp or the block)
  ov.load(o + row * D, W);
  xv.load(x + row * D, W);
  const bool scaled = scale_bf || scale_f;
  const float s = scale_bf ? bf(*scale_bf) : scale_f ? *scale_f : 1.0f;
  const float inv = ov.inv_rms(W, D, eps);
#pragma unroll
  for (int j = 0; j < WPT; j++)
#pragma unroll
    for (int e = 0; e < 8; e++) {
      float n = ov.v[j][e] * inv;
      if (w) n *= wv.v[j][e];
      float v = round_bf(xv.v[j][e] + round_bf(n));
      if (scaled) v = round_bf(v * s);
      xv.v[j][e] = v;  // a bf16 value: the store is exact
    }
  xv.store(x + row * D, W);
  if (!h) return;  // uniform
  xv.scale(xv.inv_rms(W, D, eps), hwv, hw != nullptr, false);
  xv.store(h + row * D, W);
}

// Words per thread of the vectorised row kernels (TPR threads per row) for a row of D, or 0 when they do
// not apply.
int vec_words(int64_t D, int tpr, std::initializer_list<const void*> ptrs) {
  if (D % 8 != 0 || D > int64_t(8) * tpr * 4) return 0;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return 0;
  return int((D / 8 + tpr - 1) / tpr);
}

__global__ void add_kernel(bf16* out, const bf16* a, const bf16* b, int64_t n) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(bf(a[i]) + bf(b[i]));
}
__global__ void scale_kernel(bf16* out, const bf16* x, float s, int64_t n) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(bf(x[i]) * s);
}
template <typename W>
__global__ void mul_bcast_kernel(bf16* out, const bf16* x, const W* w, int64_t n, int64_t D) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float wv;
    if constexpr (std::is_same_v<W, float>)
      wv = w[i % D];
    else
      wv = bf(w[i % D]);
    out[i] = __float2bfloat16_rn(bf(x[i]) * wv);
  }
}
__global__ void gelu_mul_kernel(bf16* out, const bf16* g, const bf16* u, int64_t n) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = gelu_mul_round(bf(g[i]), bf(u[i]));
}
__global__ void gelu_mul_fused_kernel(bf16* out, const bf16* gu, int64_t M, int64_t I) {
  pdl_begin();
  const int64_t n = M * I;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t m = i / I, j = i % I;
    out[i] = gelu_mul_round(bf(gu[m * 2 * I + j]), bf(gu[m * 2 * I + I + j]));
  }
}
template <typename E>
__global__ void transpose01_kernel(E* out, const E* x, int64_t A, int64_t B, int64_t C) {
  pdl_begin();
  const int64_t n = A * B * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t c = i % C, ba = i / C, a = ba % A, b = ba / A;  // out index (b, a, c)
    out[i] = x[(a * B + b) * C + c];
  }
}
template <typename E>
__global__ void gather_rows_kernel(E* out, const E* x, const int32_t* rows, int64_t R, int64_t T, int64_t C,
                                   DevErr* err) {
  pdl_begin();
  const int64_t n = R * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i / C, c = i % C;
    int32_t src = rows[r];
    if (src < 0 || src >= T) {
      if (c == 0) report_error(err, kErrRowIndex, src, int(T), 0);
      continue;
    }
    out[i] = x[int64_t(src) * C + c];
  }
}
__global__ void softcap_bf16_kernel(bf16* x, float cap, int64_t n) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = round_bf(bf(x[i]) / cap);  // HF: (logits / cap), tanh, * cap, each rounded to bf16
    v = round_bf(tanhf(v));
    x[i] = __float2bfloat16_rn(v * cap);
  }
}
__global__ void softcap_f32_kernel(float* x, float cap, int64_t n) {
  pdl_begin();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = cap * tanhf(x[i] / cap);
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
template <typename E>
__global__ void fill_random_kernel(E* out, int64_t n, uint64_t seed, float mean, float std, bool normal) {
  // It writes weights, which GEMVs prefetch before their PDL wait: no early trigger, so no later kernel
  // launches before this one completes.
  pdl_wait();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t h = mix64(seed ^ mix64(uint64_t(i)));
    float u1 = (float((h >> 40) & 0xffffff) + 0.5f) * (1.0f / 16777216.0f);
    float u2 = float((h >> 16) & 0xffffff) * (1.0f / 16777216.0f);
    float v =
        normal ? mean + std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2) : mean + std * (2.0f * u1 - 1.0f);
    if constexpr (std::is_same_v<E, float>)
      out[i] = v;
    else
      out[i] = __float2bfloat16_rn(v);
  }
}

constexpr int kThreads = 256;

}  // namespace

void embed(Ctx& c, Tensor out, const Tensor& ids, const Tensor& table, float scale) {
  need(out, DType::BF16, "embed", "out");
  need(ids, DType::I32, "embed", "ids");
  need(table, DType::BF16, "embed", "table");
  const int64_t T = ids.numel(), V = table.dim(0), H = table.numel() / V;
  MTP_CHECK(out.numel() == T * H, "cuda embed: out {} does not hold {} rows of {}", out.shape_str(), T, H);
  if (T == 0) return;
  launch(c.stream, "embed_kernel", embed_kernel, dim3(unsigned(T)), dim3(kThreads), 0, mbf(out),
         ids.ptr<const int32_t>(), cbf(table), V, H, scale, c.err);
  check_launch("embed");
}

void rms_norm(Ctx& c, Tensor out, const Tensor& x, const Tensor& w, float eps) {
  need(out, DType::BF16, "rms_norm", "out");
  need(x, DType::BF16, "rms_norm", "x");
  if (w.defined()) need(w, DType::BF16, "rms_norm", "w");
  const int64_t D = w.defined() ? w.numel() : x.dim(-1);
  MTP_CHECK(D > 0 && x.numel() % D == 0 && out.numel() == x.numel(), "cuda rms_norm: x {} / w [{}] / out {}",
            x.shape_str(), D, out.shape_str());
  const int64_t R = x.numel() / D;
  if (R == 0) return;
  const bf16* wp = w.defined() ? cbf(w) : nullptr;
  const int tpr = D >= 1024 ? 256 : 32, wpt = vec_words(D, tpr, {out.data, x.data, wp});
  const dim3 blocks{unsigned((R + kVecThreads / tpr - 1) / (kVecThreads / tpr))}, threads{kVecThreads};
  if (wpt > 0) {
    with_row_shape(tpr, wpt, [&](auto t, auto w) {
      launch(c, "rms_norm", rms_norm_vec_kernel<t(), w()>, blocks, threads, 0, mbf(out), cbf(x), wp, R, D,
             eps);
    });
  } else if (D >= 1024) {
    launch(c.stream, "rms_norm_kernel", rms_norm_kernel<256>, dim3(unsigned(R)), dim3(256), 0, mbf(out),
           cbf(x), wp, R, D, eps);
  } else {
    launch(c.stream, "rms_norm_kernel", rms_norm_kernel<32>, dim3(unsigned((R + 7) / 8)), dim3(256), 0,
           mbf(out), cbf(x), wp, R, D, eps);
  }
  check_launch("rms_norm");
}

void rms_norm_add(Ctx& c, Tensor x, const Tensor& o, const Tensor& w, float eps, const Tensor& scale,
                  Tensor h, const Tensor& hw) {
  need(x, DType::BF16, "rms_norm_add", "x");
  need(o, DType::BF16, "rms_norm_add", "o");
  const int64_t D = x.dim(-1), R = D > 0 ? x.numel() / D : 0;
  MTP_CHECK(o.numel() == x.numel() && (!w.defined() || w.numel() == D),
            "cuda rms_norm_add: x {} / o {} / w {}", x.shape_str(), o.shape_str(),
            w.defined() ? w.shape_str() : "-");
  if (w.defined()) need(w, DType::BF16, "rms_norm_add", "w");
  const bf16* sb = nullptr;
  const float* sf = nullptr;
  if (scale.defined()) {
    need_cuda(scale, "rms_norm_add", "scale");
    MTP_CHECK(scale.numel() == 1, "cuda rms_norm_add: scale {} is not one value", scale.shape_str());
    if (scale.dtype == DType::BF16)
      sb = cbf(scale);
    else if (scale.dtype == DType::F32)
      sf = scale.ptr<const float>();
    else
      fail("cuda rms_norm_add: scale must be BF16 or F32, got {}", dtype_name(scale.dtype));
  }
  if (h.defined()) {
    need(h, DType::BF16, "rms_norm_add_norm", "h");
    MTP_CHECK(h.numel() == x.numel() && (!hw.defined() || hw.numel() == D),
              "cuda rms_norm_add_norm: x {} / h {} / hw {}", x.shape_str(), h.shape_str(),
              hw.defined() ? hw.shape_str() : "-");
    if (hw.defined()) need(hw, DType::BF16, "rms_norm_add_norm", "hw");
  }
  if (R == 0) return;
  bf16* hp = h.defined() ? mbf(h) : nullptr;
  const bf16* wp = w.defined() ? cbf(w) : nullptr;
  const bf16* hwp = h.defined() && hw.defined() ? cbf(hw) : nullptr;
  const int tpr = D >= 1024 ? 256 : 32, wpt = vec_words(D, tpr, {x.data, o.data, hp, wp, hwp});
  const dim3 blocks{unsigned((R + kVecThreads / tpr - 1) / (kVecThreads / tpr))}, threads{kVecThreads};
  if (wpt > 0) {
    with_row_shape(tpr, wpt, [&](auto t, auto w) {
      launch(c, "rms_norm_add", rms_norm_add_vec_kernel<t(), w()>, blocks, threads, 0, mbf(x), hp, cbf(o), wp,
             hwp, sb, sf, R, D, eps);
    });
    return;
  }
  if (D >= 1024)  // the launch shapes of rms_norm (the same sums)
    launch(c.stream, "rms_norm_add_kernel", rms_norm_add_kernel<256>, dim3(unsigned(R)), dim3(256), 0, mbf(x),
           hp, cbf(o), wp, hwp, sb, sf, R, D, eps);
  else
    launch(c.stream, "rms_norm_add_kernel", rms_norm_add_kernel<32>, dim3(unsigned((R + 7) / 8)), dim3(256),
           0, mbf(x), hp, cbf(o), wp, hwp, sb, sf, R, D, eps);
  check_launch("rms_norm_add");
}

static void same3(const Tensor& out, const Tensor& a, const Tensor& b, const char* op) {
  need(out, DType::BF16, op, "out");
  need(a, DType::BF16, op, "a");
  need(b, DType::BF16, op, "b");
  MTP_CHECK(a.numel() == b.numel() && out.numel() == a.numel(), "cuda {}: shapes {} {} {} differ", op,
            a.shape_str(), b.shape_str(), out.shape_str());
}

void add(Ctx& c, Tensor out, const Tensor& a, const Tensor& b) {
  same3(out, a, b, "add");
  const int64_t n = a.numel();
  if (!n) return;
  launch(c.stream, "add_kernel", add_kernel, dim3(grid_for(n, kThreads)), dim3(kThreads), 0, mbf(out), cbf(a),
         cbf(b), n);
  check_launch("add");
}
void scale(Ctx& c, Tensor out, const Tensor& x, float s) {
  need(out, DType::BF16, "scale", "out");
  need(x, DType::BF16, "scale", "x");
  MTP_CHECK(out.numel() == x.numel(), "cuda scale: shapes {} {} differ", x.shape_str(), out.shape_str());
  const int64_t n = x.numel();
  if (!n) return;
  launch(c.stream, "scale_kernel", scale_kernel, dim3(grid_for(n, kThreads)), dim3(kThreads), 0, mbf(out),
         cbf(x), s, n);
  check_launch("scale");
}
void mul_bcast(Ctx& c, Tensor out, const Tensor& x, const Tensor& w) {
  need(out, DType::BF16, "mul_bcast", "out");
  need(x, DType::BF16, "mul_bcast", "x");
  need_cuda(w, "mul_bcast", "w");
  const int64_t D = w.numel(), n = x.numel();
  MTP_CHECK(D > 0 && n % D == 0 && out.numel() == n, "cuda mul_bcast: x {} / w {} / out {}", x.shape_str(),
            w.shape_str(), out.shape_str());
  if (!n) return;
  if (w.dtype == DType::F32)
    launch(c.stream, "mul_bcast_kernel", mul_bcast_kernel<float>, dim3(grid_for(n, kThreads)), dim3(kThreads),
           0, mbf(out), cbf(x), w.ptr<const float>(), n, D);
  else if (w.dtype == DType::BF16)
    launch(c.stream, "mul_bcast_kernel", mul_bcast_kernel<bf16>, dim3(grid_for(n, kThreads)), dim3(kThreads),
           0, mbf(out), cbf(x), cbf(w), n, D);
  else
    fail("cuda mul_bcast: w must be BF16 or F32, got {}", dtype_name(w.dtype));
  check_launch("mul_bcast");
}
void gelu_mul(Ctx& c, Tensor out, const Tensor& gate, const Tensor& up) {
  same3(out, gate, up, "gelu_mul");
  const int64_t n = gate.numel();
  if (!n) return;
  launch(c.stream, "gelu_mul_kernel", gelu_mul_kernel, dim3(grid_for(n, kThreads)), dim3(kThreads), 0,
         mbf(out), cbf(gate), cbf(up), n);
  check_launch("gelu_mul");
}
void gelu_mul_fused(Ctx& c, Tensor out, const Tensor& gu) {
  need(out, DType::BF16, "gelu_mul_fused", "out");
  need(gu, DType::BF16, "gelu_mul_fused", "gu");
  const int64_t M = gu.dim(0), I = gu.row_numel() / 2;
  MTP_CHECK(gu.row_numel() % 2 == 0 && out.numel() == M * I, "cuda gelu_mul_fused: gu {} / out {}",
            gu.shape_str(), out.shape_str());
  if (!M || !I) return;
  launch(c.stream, "gelu_mul_fused_kernel", gelu_mul_fused_kernel, dim3(grid_for(M * I, kThreads)),
         dim3(kThreads), 0, mbf(out), cbf(gu), M, I);
  check_launch("gelu_mul_fused");
}
void transpose01(Ctx& c, Tensor out, const Tensor& x) {
  need_cuda(out, "transpose01", "out");
  need_cuda(x, "transpose01", "x");
  MTP_CHECK(out.dtype == x.dtype && out.numel() == x.numel() && x.ndim >= 2,
            "cuda transpose01: x {} / out {}", x.shape_str(), out.shape_str());
  const int64_t A = x.dim(0), B = x.dim(1), n = x.numel();
  if (!n) return;
  const int64_t C = n / (A * B);
  const unsigned g = grid_for(n, kThreads);
  switch (dtype_size(x.dtype)) {
    case 1:
      launch(c.stream, "transpose01_kernel", transpose01_kernel<uint8_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint8_t>(), x.ptr<const uint8_t>(), A, B, C);
      break;
    case 2:
      launch(c.stream, "transpose01_kernel", transpose01_kernel<uint16_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint16_t>(), x.ptr<const uint16_t>(), A, B, C);
      break;
    case 4:
      launch(c.stream, "transpose01_kernel", transpose01_kernel<uint32_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint32_t>(), x.ptr<const uint32_t>(), A, B, C);
      break;
    default:
      launch(c.stream, "transpose01_kernel", transpose01_kernel<uint64_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint64_t>(), x.ptr<const uint64_t>(), A, B, C);
  }
  check_launch("transpose01");
}
void gather_rows(Ctx& c, Tensor out, const Tensor& x, const Tensor& rows) {
  need_cuda(out, "gather_rows", "out");
  need_cuda(x, "gather_rows", "x");
  need(rows, DType::I32, "gather_rows", "rows");
  const int64_t C = x.row_numel(), R = rows.numel(), T = x.dim(0);
  MTP_CHECK(out.dtype == x.dtype && out.numel() == R * C, "cuda gather_rows: x {} / rows {} / out {}",
            x.shape_str(), rows.shape_str(), out.shape_str());
  if (!R || !C) return;
  const unsigned g = grid_for(R * C, kThreads);
  const int32_t* rp = rows.ptr<const int32_t>();
  switch (dtype_size(x.dtype)) {
    case 1:
      launch(c.stream, "gather_rows_kernel", gather_rows_kernel<uint8_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint8_t>(), x.ptr<const uint8_t>(), rp, R, T, C, c.err);
      break;
    case 2:
      launch(c.stream, "gather_rows_kernel", gather_rows_kernel<uint16_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint16_t>(), x.ptr<const uint16_t>(), rp, R, T, C, c.err);
      break;
    case 4:
      launch(c.stream, "gather_rows_kernel", gather_rows_kernel<uint32_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint32_t>(), x.ptr<const uint32_t>(), rp, R, T, C, c.err);
      break;
    default:
      launch(c.stream, "gather_rows_kernel", gather_rows_kernel<uint64_t>, dim3(g), dim3(kThreads), 0,
             out.ptr<uint64_t>(), x.ptr<const uint64_t>(), rp, R, T, C, c.err);
  }
  check_launch("gather_rows");
}
void softcap(Ctx& c, Tensor x, float cap) {
  need_cuda(x, "softcap", "x");
  const int64_t n = x.numel();
  if (!n) return;
  if (x.dtype == DType::BF16)
    launch(c.stream, "softcap_bf16_kernel", softcap_bf16_kernel, dim3(grid_for(n, kThreads)), dim3(kThreads),
           0, mbf(x), cap, n);
  else if (x.dtype == DType::F32)
    launch(c.stream, "softcap_f32_kernel", softcap_f32_kernel, dim3(grid_for(n, kThreads)), dim3(kThreads), 0,
           x.ptr<float>(), cap, n);
  else
    fail("cuda softcap: x must be BF16 or F32, got {}", dtype_name(x.dtype));
  check_launch("softcap");
}
void fill_random(Ctx& c, Tensor t, uint64_t seed, float mean, float std, bool normal) {
  need_cuda(t, "fill_random", "t");
  const int64_t n = t.numel();
  if (!n) return;
  const unsigned g = grid_for(n, kThreads, 132 * 64);
  if (t.dtype == DType::BF16)
    launch(c.stream, "fill_random_kernel", fill_random_kernel<bf16>, dim3(g), dim3(kThreads), 0, mbf(t), n,
           seed, mean, std, normal);
  else if (t.dtype == DType::F32)
    launch(c.stream, "fill_random_kernel", fill_random_kernel<float>, dim3(g), dim3(kThreads), 0,
           t.ptr<float>(), n, seed, mean, std, normal);
  else
    fail("cuda fill_random: dtype {} is not BF16 or F32", dtype_name(t.dtype));
  check_launch("fill_random");
}

}  // namespace mtpserve::cuda
