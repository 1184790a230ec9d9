// Paged attention and the KV-cache write (backend.h AttnMeta semantics).
//
// attention: one CTA per (query row, KV head, block of up to GB query heads of that KV head, KV split). The
// four or eight warps of a CTA (kAttnThreads) take batches of KB keys in turn; a lane owns dims {2*lane +
// 64*i} (bf16x2 loads, coalesced 128-byte rows per warp), q for the GB heads stays in registers, scores are
// warp all-reductions, and each warp keeps its own online-softmax state (m, l, acc) in fp32. The warps merge
// through shared memory; with one split the CTA writes bf16 output, otherwise fp32 partials (acc, m, l) that
// a merge kernel combines in split order. Split boundaries are absolute slot indices (multiples of `chunk`),
// chunk chosen from the shape only. Visible keys of row i of sequence s: prefix slots j in [lo, min(prefix,
// q_pos + 1)) with lo = q_pos - window + 1 when windowed (contiguous: prefix slot j has position j), plus,
// with block_keys, block key b (slot prefix + b) when (tree mask ? tree[r, b] : b <= i) and its position is
// <= q_pos and inside the window. Pages of slots outside the visible set (freed sliding pages, -1) are never
// read.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

struct AttnParams {
  const bf16* q;
  bf16* out;
  const bf16* kc;
  const bf16* vc;
  const int32_t* cu_q;
  const int32_t* prefix;
  const int32_t* pos;
  const uint8_t* tree;
  const int32_t* pages;
  float* ws_acc;  // [T, nh, nsplit, D]
  float* ws_ml;   // [T, nh, nsplit, 2]
  DevErr* err;
  int64_t page_stride, num_slots;
  int S, max_q, page_size, nh, kvh, group, hblocks, D, window, chunk, nsplit;
  bool block_keys;
};

// Block-wide max / sum (blockDim a multiple of 32); every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, u) : v + u;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : (kMax ? -INFINITY : 0.f);
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, u) : v + u;
  }
  return v;
}

// Merge the nsplit partials (acc, m, l) of one (row, head) into out[D], by the whole block: the splits'
// rescale weights exp(m_c - M) once into shared memory w[nsplit], then each thread sums its dims over the
// splits, 16 independent loads at a time (8 left a row split 33 ways at D = 512 five dependent steps per
// dim: 9 us).
__device__ __forceinline__ void merge_splits(bf16* out, const float* acc, const float* ml, int nsplit, int D,
                                             float* w, float* red, bool& has_keys) {
  float m = -INFINITY;
  for (int c = threadIdx.x; c < nsplit; c += blockDim.x)
    if (ml[2 * c + 1] > 0.f) m = fmaxf(m, ml[2 * c]);
  const float M = block_reduce<true>(m, red);
  float l = 0.f;
  const int padded = (nsplit + 15) / 16 * 16;
  for (int c = threadIdx.x; c < padded; c += blockDim.x) {
    const float wc = c < nsplit && ml[2 * c + 1] > 0.f ? __expf(ml[2 * c] - M) : 0.f;
    w[c] = wc;
    if (c < nsplit) l += ml[2 * c + 1] * wc;
  }
  const float L = block_reduce<false>(l, red);  // its barriers also publish w
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float A = 0.f;
#pragma unroll 16
    for (int c = 0; c < nsplit; c++) A += acc[int64_t(c) * D + d] * w[c];
    out[d] = __float2bfloat16_rn(L > 0.f ? A / L : 0.f);
  }
  has_keys = L > 0.f;
  __syncthreads();  // w and red are reused by the next call
}

// Warps per CTA: 8 when the grid has at most one CTA per SM (batch-1 decode: a 32-key chunk is one batch of
// each warp), else 4 (more CTAs per SM; the 8-warp CTA's registers fit one per SM).
constexpr int kAttnThreads = 256;
// Registers per thread, per (NI, GB), the most that spills nothing where it matters for CTAs per SM: the
// 4-warp CTA of D <= 256 with up to 8 (head x 64-dim) register tiles runs 4 per SM at <= 128 (31B sliding:
// at 145, batch-8 decode 25.5 -> 26.5 ms), with 16 tiles 3 per SM at <= 168 (E4B sliding: at 178, verify at
// batch 8, K = 4-5, 320-384 CTAs, took two waves, 7.82 -> 8.38 ms); the largest take 255 (256 threads x 255
// fit one CTA per SM).
template <int NI, int GB>
constexpr int kAttnMaxRegs = (NI >= 8 && GB >= 2) || (NI * GB) >= 32 ? 255
                             : NI <= 4 && GB <= 4 && (NI * GB) <= 8  ? 128
                                                                     : 168;

template <int NI, int GB>
__global__ void __maxnreg__((kAttnMaxRegs<NI, GB>)) attn_kernel(const AttnParams p) {
  pdl_trigger();
  constexpr int KB = 4;  // keys per warp batch
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x;
  const int kh = blockIdx.y / p.hblocks, hb = blockIdx.y % p.hblocks, split = blockIdx.z;
  const int h0 = kh * p.group + hb * GB;
  const int nheads = min(GB, p.group - hb * GB);
  const int D = p.D;

  const int s = find_seq(p.cu_q, p.S, r);
  const int row0 = p.cu_q[s], nq = p.cu_q[s + 1] - row0, i = r - row0;
  const int qp = p.pos[r], prefix = p.prefix[s];
  const int lo = p.window > 0 ? max(0, qp - p.window + 1) : 0;
  const int hi = min(prefix, qp + 1);
  // Splits tile [lo, hi) from lo: a windowed layer needs only ceil(window / chunk) of them. The block's keys
  // go to the last split with committed keys, which is the one not full (a decode row's new key then makes
  // a whole chunk instead of a second pass of one warp in split 0).
  const int a = lo + split * p.chunk, b = min(hi, lo + (split + 1) * p.chunk);
  const int np = max(0, b - a);
  const int last = hi > lo ? (hi - lo - 1) / p.chunk : 0;
  const int nb = (split == last && p.block_keys) ? nq : 0;
  const int nkeys = np + nb;

  // Keys of batch k0 of this warp: slot, page id, visibility. Every slot of a key kk < nkeys lies inside the
  // table (the committed prefix or the block just written), so the page id is loaded with the visibility
  // inputs instead of after them; a freed page (-1) is only an error when its key is visible.
  auto lookup = [&](int k0, int(&slot)[KB], int(&page)[KB], bool(&v)[KB]) {
#pragma unroll
    for (int j = 0; j < KB; j++) {
      const int kk = k0 + j;
      v[j] = false;
      slot[j] = 0;
      page[j] = -1;
      if (kk >= nkeys) continue;
      if (kk < np) {
        slot[j] = a + kk;
        v[j] = true;
      } else {
        const int bj = kk - np;
        slot[j] = prefix + bj;
        const int kp = p.pos[row0 + bj];
        const bool t = p.tree ? p.tree[int64_t(r) * p.max_q + bj] != 0 : bj <= i;
        v[j] = t && kp <= qp && (p.window <= 0 || qp - kp < p.window);
      }
      page[j] = p.pages[int64_t(s) * p.page_stride + slot[j] / p.page_size];
    }
  };
  // Everything so far read only the step's metadata (cu_q, positions, prefix_len, page table, tree mask:
  // uploaded before the step, written by none of its kernels), so it ran under the previous kernel; q and
  // the cache rows come from the kernels before this one.
  int slot[KB], page[KB];
  bool v[KB];
  lookup(warp * KB, slot, page, v);
  pdl_wait();

  float2 qv[GB][NI];
#pragma unroll
  for (int g = 0; g < GB; g++)
#pragma unroll
    for (int c = 0; c < NI; c++) {
      const int d = 2 * lane + 64 * c;
      qv[g][c] = make_float2(0.f, 0.f);
      if (g < nheads && d < D)
        qv[g][c] = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(p.q + (int64_t(r) * p.nh + h0 + g) * D + d));
    }
  float m[GB], l[GB];
  float2 acc[GB][NI];
#pragma unroll
  for (int g = 0; g < GB; g++) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int c = 0; c < NI; c++) acc[g][c] = make_float2(0.f, 0.f);
  }

  const int64_t row_stride = int64_t(p.kvh) * D;
  const int nw = blockDim.x >> 5;  // 4 or 8
  for (int k0 = warp * KB; k0 < nkeys; k0 += nw * KB) {
    int64_t off[KB];
    bool vis[KB];
#pragma unroll
    for (int j = 0; j < KB; j++) {
      const int64_t phys = int64_t(page[j]) * p.page_size + slot[j] % p.page_size;
      vis[j] = false;
      off[j] = 0;
      if (!v[j]) continue;
      if (page[j] < 0 || phys >= p.num_slots) {
        if (lane == 0 && kh == 0 && hb == 0) report_error(p.err, kErrFreedPage, slot[j], s, 0);
        continue;
      }
      vis[j] = true;
      off[j] = phys * row_stride + int64_t(kh) * D;
    }
    // K and V of the batch in one round trip (V before the score reductions), then the next batch's page
    // ids, whose loads overlap this batch's math (E4B sliding layer at 1k: 12.6 -> 11.5 us). At D = 512 too
    // since the 8-warp CTA makes a 32-key chunk one batch per warp: E4B global layers 15.8 -> 14.5 us, 31B
    // batch-1 decode 22.0 -> 21.8 ms (255 registers, no spills).
    __nv_bfloat162 kv[KB][NI], vv[KB][NI];
    auto load_rows = [&](__nv_bfloat162(&dst)[KB][NI], const bf16* cache) {  // the batch's K or V rows
#pragma unroll
      for (int j = 0; j < KB; j++)
#pragma unroll
        for (int c = 0; c < NI; c++) {
          const int d = 2 * lane + 64 * c;
          dst[j][c] = (vis[j] && d < D) ? *reinterpret_cast<const __nv_bfloat162*>(cache + off[j] + d)
                                        : __floats2bfloat162_rn(0.f, 0.f);
        }
    };
    load_rows(kv, p.kc);
    load_rows(vv, p.vc);
    lookup(k0 + nw * KB, slot, page, v);
    float sc[KB][GB];
#pragma unroll
    for (int j = 0; j < KB; j++)
#pragma unroll
      for (int g = 0; g < GB; g++) {
        float dsum = 0.f;
#pragma unroll
        for (int c = 0; c < NI; c++) {
          const float2 kf = __bfloat1622float2(kv[j][c]);
          dsum = fmaf(qv[g][c].x, kf.x, dsum);
          dsum = fmaf(qv[g][c].y, kf.y, dsum);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dsum += __shfl_xor_sync(0xffffffffu, dsum, o);
        sc[j][g] = vis[j] ? dsum : -INFINITY;  // attention scale 1.0
      }
#pragma unroll
    for (int g = 0; g < GB; g++) {
      float mx = m[g];
#pragma unroll
      for (int j = 0; j < KB; j++) mx = fmaxf(mx, sc[j][g]);
      if (mx == -INFINITY) continue;         // nothing visible yet
      const float corr = __expf(m[g] - mx);  // m == -inf -> 0
      m[g] = mx;
      l[g] *= corr;
#pragma unroll
      for (int c = 0; c < NI; c++) {
        acc[g][c].x *= corr;
        acc[g][c].y *= corr;
      }
#pragma unroll
      for (int j = 0; j < KB; j++) {
        const float pj = vis[j] ? __expf(sc[j][g] - mx) : 0.f;
        l[g] += pj;
#pragma unroll
        for (int c = 0; c < NI; c++) {
          const float2 vf = __bfloat1622float2(vv[j][c]);
          acc[g][c].x = fmaf(pj, vf.x, acc[g][c].x);
          acc[g][c].y = fmaf(pj, vf.y, acc[g][c].y);
        }
      }
    }
  }

  // Merge the warps in a fixed order: with 8, warp w + 4 into warp w in registers; then warps 0-3 through
  // shared memory with each head's rescale factors computed once (not per element: the per-element exp and
  // max walked the block's 1-2k outputs in dependent steps, 3 us of an E4B sliding layer's attention).
  constexpr int DW = NI * 64;
  __shared__ float sm_acc[4][GB][DW];
  __shared__ float sm_m[4][GB], sm_l[4][GB], sm_f[4][GB], sm_M[GB], sm_L[GB];
  auto publish = [&](int w) {
#pragma unroll
    for (int g = 0; g < GB; g++) {
#pragma unroll
      for (int c = 0; c < NI; c++) {
        sm_acc[w][g][2 * lane + 64 * c] = acc[g][c].x;
        sm_acc[w][g][2 * lane + 64 * c + 1] = acc[g][c].y;
      }
      if (lane == 0) {
        sm_m[w][g] = m[g];
        sm_l[w][g] = l[g];
      }
    }
  };
  if (nw == 8 && warp >= 4) publish(warp - 4);
  __syncthreads();
  if (nw == 8 && warp < 4) {
#pragma unroll
    for (int g = 0; g < GB; g++) {
      const float m2 = sm_m[warp][g], l2 = sm_l[warp][g];
      const float M = fmaxf(m[g], m2);
      if (M == -INFINITY) continue;  // neither warp saw a visible key
      const float f1 = m[g] == -INFINITY ? 0.f : __expf(m[g] - M);
      const float f2 = m2 == -INFINITY ? 0.f : __expf(m2 - M);
      m[g] = M;
      l[g] = l[g] * f1 + l2 * f2;
#pragma unroll
      for (int c = 0; c < NI; c++) {
        acc[g][c].x = acc[g][c].x * f1 + sm_acc[warp][g][2 * lane + 64 * c] * f2;
        acc[g][c].y = acc[g][c].y * f1 + sm_acc[warp][g][2 * lane + 64 * c + 1] * f2;
      }
    }
  }
  __syncthreads();
  if (warp < 4) publish(warp);
  __syncthreads();
  if (threadIdx.x < GB) {
    const int g = threadIdx.x;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; w++) M = fmaxf(M, sm_m[w][g]);
    float L = 0.f;
#pragma unroll
    for (int w = 0; w < 4; w++) {
      const float f = M != -INFINITY && sm_l[w][g] > 0.f ? __expf(sm_m[w][g] - M) : 0.f;
      sm_f[w][g] = f;
      L += sm_l[w][g] * f;
    }
    sm_M[g] = M;
    sm_L[g] = L;
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < GB; g++) {
    if (g >= nheads) break;
    const int h = h0 + g;
    const float L = sm_L[g];
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      float A = 0.f;
#pragma unroll
      for (int w = 0; w < 4; w++) A += sm_acc[w][g][d] * sm_f[w][g];
      if (p.nsplit == 1) {
        if (L > 0.f) {
          p.out[(int64_t(r) * p.nh + h) * D + d] = __float2bfloat16_rn(A / L);
        } else {
          p.out[(int64_t(r) * p.nh + h) * D + d] = __float2bfloat16_rn(0.f);
          if (d == 0 && h == 0) report_error(p.err, kErrNoKey, r, qp, 0);
        }
      } else {
        const int64_t slot = (int64_t(r) * p.nh + h) * p.nsplit + split;
        p.ws_acc[slot * D + d] = A;
        if (d == 0) {
          p.ws_ml[slot * 2] = sm_M[g];
          p.ws_ml[slot * 2 + 1] = L;
        }
      }
    }
  }
}

// Merge the splits of one (row, head) (merge_splits; max(256, D) threads, one dim each up to D = 512): the
// splits' rescale weights exp(m_c - M) are computed once into shared memory, then each thread sums its dims
// over the splits with independent loads (no per-split branch), so a batch-1 row split hundreds of ways
// merges in a few microseconds instead of walking the splits serially.
__global__ void __launch_bounds__(512)
    attn_merge_kernel(bf16* out, const float* ws_acc, const float* ws_ml, const int32_t* pos, int nh, int D,
                      int nsplit, DevErr* err) {
  pdl_begin();
  extern __shared__ float wsh[];  // [nsplit rounded up to 16]: the unrolled loop may load 16 at a time
  __shared__ float red[32];
  const int64_t rh = blockIdx.x;  // r * nh + h
  bool has_keys;
  merge_splits(out + rh * D, ws_acc + rh * nsplit * D, ws_ml + rh * nsplit * 2, nsplit, D, wsh, red,
               has_keys);
  if (!has_keys && threadIdx.x == 0 && rh % nh == 0)
    report_error(err, kErrNoKey, int(rh / nh), pos[rh / nh], 0);
}

__global__ void kv_write_kernel(bf16* kc, bf16* vc, const bf16* k, const bf16* v, const int32_t* cu_q,
                                const int32_t* prefix, const int32_t* pages, int64_t page_stride,
                                int page_size, int64_t num_slots, int S, int64_t row, DevErr* err) {
  pdl_begin();
  const int r = blockIdx.x;
  const int s = find_seq(cu_q, S, r);
  const int slot = prefix[s] + (r - cu_q[s]);
  const int page = pages[int64_t(s) * page_stride + slot / page_size];
  const int64_t phys = int64_t(page) * page_size + slot % page_size;
  if (page < 0) {
    if (threadIdx.x == 0) report_error(err, kErrFreedPage, slot, s, 0);
    return;
  }
  if (phys >= num_slots) {
    if (threadIdx.x == 0) report_error(err, kErrSlot, int(phys), int(num_slots), 0);
    return;
  }
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
    kc[phys * row + e] = k[int64_t(r) * row + e];
    vc[phys * row + e] = v[int64_t(r) * row + e];
  }
}

template <int NI, int GB>
void launch_attn(const AttnParams& p, dim3 grid, int threads, cudaStream_t st) {
  launch(st, "attn_kernel", attn_kernel<NI, GB>, dim3(grid), dim3(unsigned(threads)), 0, p);
}

template <int NI>
void launch_attn_ni(const AttnParams& p, int gb, dim3 grid, int threads, cudaStream_t st) {
  if constexpr (NI == 8) {
    if (gb == 1)
      launch_attn<NI, 1>(p, grid, threads, st);
    else if (gb == 2)
      launch_attn<NI, 2>(p, grid, threads, st);
    else
      launch_attn<NI, 4>(p, grid, threads, st);
  } else {
    if (gb == 1)
      launch_attn<NI, 1>(p, grid, threads, st);
    else if (gb == 2)
      launch_attn<NI, 2>(p, grid, threads, st);
    else if (gb == 4)
      launch_attn<NI, 4>(p, grid, threads, st);
    else
      launch_attn<NI, 8>(p, grid, threads, st);
  }
}

void check_meta(const AttnMeta& m, const KvPageTable& pt, int64_t T, const char* op) {
  MTP_CHECK(m.num_seqs > 0, "cuda {}: no sequences", op);
  need(m.cu_q, DType::I32, op, "cu_q");
  need(m.prefix_len, DType::I32, op, "prefix_len");
  need(m.positions, DType::I32, op, "positions");
  need(pt.pages, DType::I32, op, "page table");
  MTP_CHECK(m.cu_q.numel() == m.num_seqs + 1 && m.prefix_len.numel() == m.num_seqs &&
                m.positions.numel() == T && pt.pages.dim(0) == m.num_seqs && pt.page_size > 0,
            "cuda {}: metadata shapes do not match {} sequences and {} rows", op, m.num_seqs, T);
}

}  // namespace

// attention_prefill.cu: the tensor-core kernel for causal prefill blocks; false when it does not apply.
bool attention_prefill(Ctx&, Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       const AttnMeta& m, const KvPageTable& pt, int window);

void kv_write(Ctx& c, Tensor k_cache, Tensor v_cache, const Tensor& k, const Tensor& v, const AttnMeta& m,
              const KvPageTable& pt) {
  need(k_cache, DType::BF16, "kv_write", "k_cache");
  need(v_cache, DType::BF16, "kv_write", "v_cache");
  need(k, DType::BF16, "kv_write", "k");
  need(v, DType::BF16, "kv_write", "v");
  const int64_t T = k.dim(0), row = k.row_numel();
  MTP_CHECK(k_cache.row_numel() == row && v_cache.row_numel() == row && v.numel() == k.numel() &&
                v_cache.dim(0) == k_cache.dim(0),
            "cuda kv_write: k {} / v {} / caches {} {}", k.shape_str(), v.shape_str(), k_cache.shape_str(),
            v_cache.shape_str());
  check_meta(m, pt, T, "kv_write");
  if (T == 0) return;
  launch(c.stream, "kv_write_kernel", kv_write_kernel, dim3(unsigned(T)), dim3(256), 0, mbf(k_cache),
         mbf(v_cache), cbf(k), cbf(v), m.cu_q.ptr<const int32_t>(), m.prefix_len.ptr<const int32_t>(),
         pt.pages.ptr<const int32_t>(), pt.pages.dim(1), pt.page_size, k_cache.dim(0), m.num_seqs, row,
         c.err);
  check_launch("kv_write");
}

void attention(Backend& be, Ctx& c, Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               const AttnMeta& m, const KvPageTable& pt, int window) {
  need(out, DType::BF16, "attention", "out");
  need(q, DType::BF16, "attention", "q");
  need(k_cache, DType::BF16, "attention", "k_cache");
  need(v_cache, DType::BF16, "attention", "v_cache");
  const int64_t T = q.dim(0), nh = q.dim(1), D = q.dim(-1), kvh = k_cache.dim(1);
  MTP_CHECK(q.ndim == 3 && k_cache.ndim == 3 && k_cache.dim(2) == D && v_cache.numel() == k_cache.numel() &&
                nh % kvh == 0 && out.numel() == q.numel(),
            "cuda attention: q {} / k_cache {} / v_cache {} / out {}", q.shape_str(), k_cache.shape_str(),
            v_cache.shape_str(), out.shape_str());
  MTP_CHECK(D % 2 == 0 && D <= 512, "cuda attention: head dim {} unsupported (even, <= 512)", D);
  check_meta(m, pt, T, "attention");
  if (m.tree_mask.defined()) {
    need(m.tree_mask, DType::U8, "attention", "tree_mask");
    MTP_CHECK(m.tree_mask.numel() == T * m.max_q, "cuda attention: tree mask {} is not [T={}, max_q={}]",
              m.tree_mask.shape_str(), T, m.max_q);
  }
  if (T == 0) return;
  if (attention_prefill(c, out, q, k_cache, v_cache, m, pt, window)) return;
  const int group = int(nh / kvh);
  const int NI = D <= 64 ? 1 : D <= 128 ? 2 : D <= 256 ? 4 : 8;
  const int max_gb = NI == 8 ? 4 : 8;
  int gb = 1;
  while (gb < std::min(group, max_gb)) gb *= 2;
  const int hblocks = (group + gb - 1) / gb;

  // Split planning from the shape only (so that a CUDA graph stays valid for any context up to the page
  // table's width): the committed keys of a row span at most the table's slots, or the window. Chunks of
  // 32 keys (one batch of 4 per warp) and up, doubled while the grid exceeds 4 CTAs per SM: a decode row at
  // batch 1 is spread over the whole GPU instead of a few CTAs looping over keys one dependent load after
  // another. Blocks of several rows (verify) stop at 512 keys per CTA: a batch of them at long context keeps
  // enough CTAs (E2B, batch 8 x 5 rows, ctx 8k: 12.3 -> 10.0 ms per verify step); one-row batches do not,
  // their extra splits cost more in merging (decode at batch 32-64, ctx 8k: +3-6%).
  const int64_t max_slots = std::max<int64_t>(1, pt.pages.dim(1) * pt.page_size);
  const int64_t span = window > 0 ? std::min<int64_t>(max_slots, window) : max_slots;
  const int64_t ctas = T * kvh * hblocks;
  int64_t chunk = 32;
  const int64_t max_chunk = m.max_q > 1 ? 512 : span;
  while (chunk < span && chunk < max_chunk &&
         ctas * ((span + chunk - 1) / chunk) > std::max<int64_t>(4 * c.num_sms, ctas))
    chunk *= 2;
  const int nsplit = int((span + chunk - 1) / chunk);
  // 8 warps (one batch of keys each per 32-key chunk) while the grid has at most one CTA per SM; the
  // 4-warp CTA where there are more (E4B batch 8: 256 CTAs of 8 warps are two waves, 5.31 -> 5.50 ms).
  const int threads = ctas * nsplit <= c.num_sms ? kAttnThreads : kAttnThreads / 2;
  MTP_CHECK(T < (1LL << 31) && nsplit <= 12288 && kvh * hblocks < 65536, "cuda attention: grid too large");

  AttnParams p{};
  p.q = cbf(q);
  p.out = mbf(out);
  p.kc = cbf(k_cache);
  p.vc = cbf(v_cache);
  p.cu_q = m.cu_q.ptr<const int32_t>();
  p.prefix = m.prefix_len.ptr<const int32_t>();
  p.pos = m.positions.ptr<const int32_t>();
  p.tree = m.tree_mask.defined() ? m.tree_mask.ptr<const uint8_t>() : nullptr;
  p.pages = pt.pages.ptr<const int32_t>();
  p.err = c.err;
  p.page_stride = pt.pages.dim(1);
  p.num_slots = k_cache.dim(0);
  p.S = m.num_seqs;
  p.max_q = m.max_q;
  p.page_size = pt.page_size;
  p.nh = int(nh);
  p.kvh = int(kvh);
  p.group = group;
  p.hblocks = hblocks;
  p.D = int(D);
  p.window = window;
  p.chunk = int(chunk);
  p.nsplit = nsplit;
  p.block_keys = m.block_keys;
  Tensor ws_acc, ws_ml;
  if (nsplit > 1) {
    ws_acc = scratch(be, DType::F32, T * nh * nsplit * D);
    ws_ml = scratch(be, DType::F32, T * nh * nsplit * 2);
    p.ws_acc = ws_acc.ptr<float>();
    p.ws_ml = ws_ml.ptr<float>();
  }
  dim3 grid(unsigned(T), unsigned(kvh * hblocks), unsigned(nsplit));
  switch (NI) {
    case 1:
      launch_attn_ni<1>(p, gb, grid, threads, c.stream);
      break;
    case 2:
      launch_attn_ni<2>(p, gb, grid, threads, c.stream);
      break;
    case 4:
      launch_attn_ni<4>(p, gb, grid, threads, c.stream);
      break;
    default:
      launch_attn_ni<8>(p, gb, grid, threads, c.stream);
      break;
  }
  check_launch("attention");
  if (nsplit > 1) {
    launch(c.stream, "attn_merge_kernel", attn_merge_kernel, dim3(unsigned(T * nh)),
           dim3(unsigned(std::max<int64_t>(256, D))), size_t((nsplit + 15) / 16 * 16) * sizeof(float),
           mbf(out), p.ws_acc, p.ws_ml, p.pos, int(nh), int(D), nsplit, c.err);
    check_launch("attention (merge)");
  }
}

}  // namespace mtpserve::cuda
