// RoPE, half-split (NeoX): pairs (j, j + D/2) rotated by angle float(pos) * inv_freq[j] computed in fp32 with
// accurate sinf/cosf (angles reach ~2.6e5 rad: no fast-math intrinsics), cos/sin rounded to bf16 as HF does,
// the rotation in fp32 and one bf16 rounding of each output (gemma4-architecture.md §5.3: <= 1 ulp from HF's
// three bf16 roundings). In place on x [T, heads, D]. Also qkv_norm_rope: the per-head RMSNorm of q, k, v
// and RoPE of q and k in one kernel.
#include <algorithm>

#include "backend/cuda/row_words.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

// cos/sin of one position for every pair j < half, bf16-rounded as HF: cs[j] = cos, cs[half + j] = sin.
__device__ __forceinline__ void rope_cos_sin(float* cs, float pos, const float* inv_freq, int64_t half) {
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float a = pos * inv_freq[j];
    cs[j] = round_bf(cosf(a));
    cs[half + j] = round_bf(sinf(a));
  }
}
// The rotation of one pair (a, b) = (x[j], x[j + half]); explicit products (no fma contraction), so every
// kernel that rotates gets the same bits.
__device__ __forceinline__ void rotate(bf16* v, int64_t j, int64_t half, float a, float b, const float* cs) {
  const float c = cs[j], s = cs[half + j];
  v[j] = __float2bfloat16_rn(__fmul_rn(a, c) - __fmul_rn(b, s));
  v[j + half] = __float2bfloat16_rn(__fmul_rn(b, c) + __fmul_rn(a, s));
}

__global__ void rope_kernel(bf16* x, const int32_t* positions, const float* inv_freq, int64_t heads,
                            int64_t D) {
  pdl_trigger();
  extern __shared__ float cs[];  // [half] cos, [half] sin
  const int64_t t = blockIdx.x, half = D / 2;
  rope_cos_sin(cs, float(positions[t]), inv_freq, half);  // step metadata: before the wait (see below)
  pdl_wait();
  __syncthreads();
  bf16* xt = x + t * heads * D;
  for (int64_t i = threadIdx.x; i < heads * half; i += blockDim.x) {
    const int64_t h = i / half, j = i % half;
    bf16* v = xt + h * D;
    rotate(v, j, half, bf(v[j]), bf(v[j + half]), cs);
  }
}

// RMS-normalise one head row src[D] (times w when given) as rms_norm_kernel<32> does (the same lanes, sum and
// bf16 rounding of the normed value), then rotate it as rope_kernel does (cs given) into dst: the unfused
// ops' bits. One warp; src may be dst (row_sum orders every lane's reads before any lane's writes).
__device__ __forceinline__ void norm_rope_head(bf16* dst, const bf16* src, const bf16* w, const float* cs,
                                               int64_t D, float eps, int lane) {
  const int64_t half = D / 2;
  float ss = 0.f;
  for (int64_t i = lane; i < D; i += 32) {
    const float x = bf(src[i]);
    ss = fmaf(x, x, ss);
  }
  const float inv = 1.0f / sqrtf(row_sum<32>(ss) / float(D) + eps);
  auto normed = [&](int64_t i) {
    float x = bf(src[i]) * inv;
    if (w) x *= bf(w[i]);
    return round_bf(x);
  };
  if (!cs) {  // v: no weight, no rotation
    for (int64_t i = lane; i < D; i += 32) dst[i] = __float2bfloat16_rn(normed(i));
    return;
  }
  for (int64_t j = lane; j < half; j += 32) rotate(dst, j, half, normed(j), normed(j + half), cs);
}

// The same with the row in registers (row_words.cuh: the layout and sums of rms_norm's warp-per-row vector
// kernel, so the bits are those of rms_norm then rope): for W = D / 8 a power of two, the partner of element
// j (j +- D/2) is in lane ^ W/2 (W <= 32) or in the same lane's word j ^ W/64. The norm weight ws [D] is in
// shared memory as fp32, loaded before the kernel's wait: a register copy added to the 512-thread kernels'
// spills, and one behind a maybe-null pointer went to local memory.
template <int WPT>
__device__ __forceinline__ void norm_rope_head_vec(bf16* dst, const bf16* src, const float* ws,
                                                   const float* cs, int64_t D, float eps, int lane) {
  using Row = RowWords<32, WPT>;
  const int64_t W = D / 8, half = D / 2;
  Row a;
  a.load(src, W);
  const float inv = a.inv_rms(W, D, eps);
#pragma unroll
  for (int j = 0; j < WPT; j++)
#pragma unroll
    for (int e = 0; e < 8; e++) {  // RowWords::scale with round, the weight from shared memory
      float x = a.v[j][e] * inv;
      if (ws && Row::has(j, W)) x *= ws[8 * (lane + 32 * j) + e];
      a.v[j][e] = __bfloat162float(__float2bfloat16_rn(x));
    }
  if (cs) {
    float b[WPT][8];  // the partners' normed values
#pragma unroll
    for (int j = 0; j < WPT; j++)
#pragma unroll
      for (int e = 0; e < 8; e++)
        if constexpr (WPT == 1)
          b[j][e] = __shfl_xor_sync(0xffffffffu, a.v[j][e], int(W / 2));
        else  // W = 32 WPT: the partner is word j +- WPT / 2 of this lane
          b[j][e] = a.v[j ^ (WPT / 2)][e];
#pragma unroll
    for (int j = 0; j < WPT; j++) {
      if (!Row::has(j, W)) continue;  // lanes past a short row (W < 32) hold nothing
#pragma unroll
      for (int e = 0; e < 8; e++) {
        const int64_t idx = 8 * (lane + int64_t(j) * 32) + e, jj = idx < half ? idx : idx - half;
        const float c = cs[jj], sn = cs[half + jj];
        a.v[j][e] = idx < half ? __fmul_rn(a.v[j][e], c) - __fmul_rn(b[j][e], sn)
                               : __fmul_rn(a.v[j][e], c) + __fmul_rn(b[j][e], sn);
      }
    }
  }
  a.store(dst, W);
}

// norm_rope_head_vec where it applies (W a power of two, at most 2 words per lane, 16-byte rows), else the
// scalar loop; the choice depends on D and alignment only, as rms_norm's. w (global) and ws (its shared fp32
// copy) are both given or both null.
__device__ __forceinline__ void norm_rope_any(bf16* dst, const bf16* src, const bf16* w, const float* ws,
                                              const float* cs, int64_t D, float eps, int lane) {
  const int64_t W = D / 8;
  const bool vec = D % 8 == 0 && W <= 64 && (W & (W - 1)) == 0 &&
                   ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                     reinterpret_cast<uintptr_t>(w)) %
                    16) == 0;
  if (!vec)
    norm_rope_head(dst, src, w, cs, D, eps, lane);
  else if (W <= 32)
    norm_rope_head_vec<1>(dst, src, ws, cs, D, eps, lane);
  else
    norm_rope_head_vec<2>(dst, src, ws, cs, D, eps, lane);  // W = 64
}

// The q and k norm weights as fp32 into ws [2 D] (k's zero when absent). They are constants of the model,
// so the kernels stage them before their wait.
__device__ __forceinline__ void stage_norm_weights(float* ws, const bf16* qw, const bf16* kw, int64_t D) {
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    ws[i] = bf(qw[i]);
    ws[D + i] = kw ? bf(kw[i]) : 0.0f;
  }
}

// qkv_norm_rope: one block per token, one warp per head (q heads, then k heads, then v heads), in place.
__global__ void __launch_bounds__(512)
    qkv_norm_rope_kernel(bf16* q, bf16* k, bf16* v, const bf16* qw, const bf16* kw, const int32_t* positions,
                         const float* inv_freq, int64_t nh, int64_t kvh, int64_t D, float eps) {
  pdl_trigger();
  extern __shared__ float cs[];  // [half] cos, [half] sin, then the norm weights ws [2 D]
  float* ws = cs + D;
  const int64_t t = blockIdx.x;
  rope_cos_sin(cs, float(positions[t]), inv_freq, D / 2);  // step metadata: before the wait (see below)
  stage_norm_weights(ws, qw, kw, D);
  pdl_wait();
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t heads = nh + (k ? 2 * kvh : 0);
  for (int64_t hd = threadIdx.x / 32; hd < heads; hd += blockDim.x / 32) {
    if (hd < nh) {
      bf16* row = q + (t * nh + hd) * D;
      norm_rope_any(row, row, qw, ws, cs, D, eps, lane);
    } else if (hd < nh + kvh) {
      bf16* row = k + (t * kvh + hd - nh) * D;
      norm_rope_any(row, row, kw, ws + D, cs, D, eps, lane);
    } else {
      bf16* row = v + (t * kvh + hd - nh - kvh) * D;
      norm_rope_any(row, row, nullptr, nullptr, nullptr, D, eps, lane);
    }
  }
}

struct KvDst {
  bf16 *kc, *vc;
  const int32_t *cu_q, *prefix, *pages;
  int64_t page_stride, num_slots;
  int S, page_size;
};

// qkv_norm_rope_kv: the same per head, reading the fused projection qkv [T, heads, D] (heads = nh + kvh
// when V is K: v heads are the raw k heads) and writing q to q [T, nh, D], k and v to the token's cache slot
// (kv_write_kernel's slot and checks).
__global__ void __launch_bounds__(512)
    qkv_norm_rope_kv_kernel(bf16* q, const bf16* qkv, const bf16* qw, const bf16* kw,
                            const int32_t* positions, const float* inv_freq, int64_t nh, int64_t kvh,
                            int64_t heads, int64_t D, float eps, KvDst kv, DevErr* err) {
  pdl_trigger();
  extern __shared__ float cs[];  // [half] cos, [half] sin, then the norm weights ws [2 D]
  float* ws = cs + D;
  const int t = blockIdx.x;
  // Positions, the page table and inv_freq are the step's metadata and constants (uploaded before the step;
  // no kernel writes them), so their dependent loads and the cos/sin run before the wait, under the
  // previous kernel (the q|k|v GEMV); only qkv comes from it.
  rope_cos_sin(cs, float(positions[t]), inv_freq, D / 2);
  stage_norm_weights(ws, qw, kw, D);
  const int s = find_seq(kv.cu_q, kv.S, t);
  const int slot = kv.prefix[s] + (t - kv.cu_q[s]);
  const int page = kv.pages[int64_t(s) * kv.page_stride + slot / kv.page_size];
  const int64_t phys = int64_t(page) * kv.page_size + slot % kv.page_size;
  const bool store = page >= 0 && phys < kv.num_slots;
  pdl_wait();
  if (!store && threadIdx.x == 0) {
    if (page < 0)
      report_error(err, kErrFreedPage, slot, s, 0);
    else
      report_error(err, kErrSlot, int(phys), int(kv.num_slots), 0);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t v0 = heads == nh + kvh ? nh : nh + kvh;  // first head of v's source
  const bf16* src = qkv + int64_t(t) * heads * D;
  for (int64_t hd = threadIdx.x / 32; hd < nh + 2 * kvh; hd += blockDim.x / 32) {
    if (hd < nh) {
      norm_rope_any(q + (int64_t(t) * nh + hd) * D, src + hd * D, qw, ws, cs, D, eps, lane);
    } else if (!store) {
      continue;
    } else if (hd < nh + kvh) {
      const int64_t j = hd - nh;
      norm_rope_any(kv.kc + (phys * kvh + j) * D, src + hd * D, kw, ws + D, cs, D, eps, lane);
    } else {
      const int64_t j = hd - nh - kvh;
      norm_rope_any(kv.vc + (phys * kvh + j) * D, src + (v0 + j) * D, nullptr, nullptr, nullptr, D, eps,
                    lane);
    }
  }
}

}  // namespace

void rope(Ctx& c, Tensor x, const Tensor& positions, const Tensor& inv_freq) {
  need(x, DType::BF16, "rope", "x");
  need(positions, DType::I32, "rope", "positions");
  need(inv_freq, DType::F32, "rope", "inv_freq");
  const int64_t T = x.dim(0), D = x.dim(-1);
  MTP_CHECK(
      T > 0 && D % 2 == 0 && x.numel() % (T * D) == 0 && inv_freq.numel() == D / 2 && positions.numel() == T,
      "cuda rope: x {} / positions {} / inv_freq {}", x.shape_str(), positions.shape_str(),
      inv_freq.shape_str());
  const int64_t heads = x.numel() / (T * D);
  launch(c.stream, "rope_kernel", rope_kernel, dim3(unsigned(T)), dim3(256), size_t(D) * sizeof(float),
         mbf(x), positions.ptr<const int32_t>(), inv_freq.ptr<const float>(), heads, D);
  check_launch("rope");
}

void qkv_norm_rope(Ctx& c, Tensor q, Tensor k, Tensor v, const Tensor& q_norm, const Tensor& k_norm,
                   const Tensor& positions, const Tensor& inv_freq, float eps) {
  need(q, DType::BF16, "qkv_norm_rope", "q");
  need(q_norm, DType::BF16, "qkv_norm_rope", "q_norm");
  need(positions, DType::I32, "qkv_norm_rope", "positions");
  need(inv_freq, DType::F32, "qkv_norm_rope", "inv_freq");
  const int64_t T = q.dim(0), D = q.dim(-1);
  MTP_CHECK(T > 0 && D % 2 == 0 && q.numel() % (T * D) == 0 && q_norm.numel() == D &&
                inv_freq.numel() == D / 2 && positions.numel() == T,
            "cuda qkv_norm_rope: q {} / q_norm {} / positions {} / inv_freq {}", q.shape_str(),
            q_norm.shape_str(), positions.shape_str(), inv_freq.shape_str());
  const int64_t nh = q.numel() / (T * D);
  int64_t kvh = 0;
  if (k.defined()) {
    need(k, DType::BF16, "qkv_norm_rope", "k");
    need(v, DType::BF16, "qkv_norm_rope", "v");
    need(k_norm, DType::BF16, "qkv_norm_rope", "k_norm");
    kvh = k.numel() / (T * D);
    MTP_CHECK(k.numel() == T * kvh * D && v.numel() == k.numel() && k_norm.numel() == D,
              "cuda qkv_norm_rope: k {} / v {} / k_norm {} for q {}", k.shape_str(), v.shape_str(),
              k_norm.shape_str(), q.shape_str());
  }
  const int64_t warps = std::min<int64_t>(nh + 2 * kvh, 16);
  launch(c.stream, "qkv_norm_rope_kernel", qkv_norm_rope_kernel, dim3(unsigned(T)),
         dim3(unsigned(32 * warps)), size_t(3 * D) * sizeof(float), mbf(q), k.defined() ? mbf(k) : nullptr,
         k.defined() ? mbf(v) : nullptr, cbf(q_norm), k.defined() ? cbf(k_norm) : nullptr,
         positions.ptr<const int32_t>(), inv_freq.ptr<const float>(), nh, kvh, D, eps);
  check_launch("qkv_norm_rope");
}

void qkv_norm_rope_kv(Ctx& c, Tensor q, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm,
                      const Tensor& positions, const Tensor& inv_freq, float eps, Tensor k_cache,
                      Tensor v_cache, const AttnMeta& m, const KvPageTable& pt) {
  need(q, DType::BF16, "qkv_norm_rope_kv", "q");
  need(qkv, DType::BF16, "qkv_norm_rope_kv", "qkv");
  need(q_norm, DType::BF16, "qkv_norm_rope_kv", "q_norm");
  need(k_norm, DType::BF16, "qkv_norm_rope_kv", "k_norm");
  need(k_cache, DType::BF16, "qkv_norm_rope_kv", "k_cache");
  need(v_cache, DType::BF16, "qkv_norm_rope_kv", "v_cache");
  need(positions, DType::I32, "qkv_norm_rope_kv", "positions");
  need(inv_freq, DType::F32, "qkv_norm_rope_kv", "inv_freq");
  const int64_t T = q.dim(0), D = q.dim(-1), nh = q.ndim == 3 ? q.dim(1) : 0, kvh = k_cache.dim(1);
  const int64_t heads = T > 0 && D > 0 ? qkv.numel() / (T * D) : 0;
  MTP_CHECK(q.ndim == 3 && T > 0 && D % 2 == 0 && k_cache.ndim == 3 && k_cache.dim(2) == D &&
                v_cache.numel() == k_cache.numel() && qkv.numel() == T * heads * D &&
                (heads == nh + kvh || heads == nh + 2 * kvh) && q_norm.numel() == D && k_norm.numel() == D &&
                inv_freq.numel() == D / 2 && positions.numel() == T && m.cu_q.numel() == m.num_seqs + 1,
            "cuda qkv_norm_rope_kv: q {} / qkv {} / k_cache {} / positions {} / inv_freq {}", q.shape_str(),
            qkv.shape_str(), k_cache.shape_str(), positions.shape_str(), inv_freq.shape_str());
  KvDst kv{mbf(k_cache),
           mbf(v_cache),
           m.cu_q.ptr<const int32_t>(),
           m.prefix_len.ptr<const int32_t>(),
           pt.pages.ptr<const int32_t>(),
           pt.pages.dim(1),
           k_cache.dim(0),
           m.num_seqs,
           pt.page_size};
  const int64_t warps = std::min<int64_t>(nh + 2 * kvh, 16);
  launch(c, "qkv_norm_rope_kv", qkv_norm_rope_kv_kernel, dim3(unsigned(T)), dim3(unsigned(32 * warps)),
         size_t(3 * D) * sizeof(float), mbf(q), cbf(qkv), cbf(q_norm), cbf(k_norm),
         positions.ptr<const int32_t>(), inv_freq.ptr<const float>(), nh, kvh, heads, D, eps, kv, c.err);
}

}  // namespace mtpserve::cuda
