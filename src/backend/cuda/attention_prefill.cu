// Prefill attention on tensor cores (FlashAttention-2 style, mma.sync m16n8k16 bf16 + ldmatrix + cp.async:
// sm_80 and up). Same semantics as attention.cu's kernel (see the comment at its top); taken for causal
// blocks (block_keys, no tree mask) with enough query rows per sequence, where one CTA per query row on CUDA
// cores is far from the tensor-core roofline.
//
// A CTA owns one sequence, one KV head (one block of its query heads when the group exceeds 64) and
// `rows` = 64 / heads query rows: its 64 M rows are (query row, head) pairs, so each K/V tile is loaded once
// for the whole GQA group. Key tiles of BN slots are gathered through the page table into shared memory
// (16-byte cp.async, XOR-swizzled rows so ldmatrix is conflict-free); K of the next tile loads during softmax
// and P x V, V of the tile during Q x K^T. Warps: 4 along M (16 rows each) times WD along D. D = 512 uses WD
// = 2: each warp pair computes the scores over its half of D, adds its partner's partial scores through
// shared memory (the same sum in both, so both keep identical softmax state) and accumulates O for its half
// of D (128 fp32 registers per thread instead of 256). Online softmax in fp32 registers; P is rounded to bf16
// for P x V.
//
// Keys visited: slots [kstart, kend) of the sequence, kend = prefix + last row + 1, kstart = the lowest slot
// any row of the CTA can see (window), so tiles outside every row's window are skipped. Per key the page
// table gives the physical row; a slot whose page is freed (-1) or outside the cache is never read
// (zero-filled) and is an error only if some row of the CTA sees it. Tiles every row sees entirely skip the
// per-element mask.
//
// MTP_ATTN_PREFILL=0 turns the kernel off (every call then runs the split kernel: before/after benchmarks);
// MTP_ATTN_PREFILL=2 takes it for any block size.
#include <atomic>
#include <climits>
#include <cstdlib>

#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

using bf16 = __nv_bfloat16;

struct PrefillParams {
  const bf16* q;  // [T, nh, D]
  bf16* out;      // [T, nh, D]
  const bf16* kc;
  const bf16* vc;  // [num_slots, kvh, D]
  const int32_t* cu_q;
  const int32_t* prefix;
  const int32_t* pos;
  const int32_t* pages;  // [S, page_stride]
  DevErr* err;
  int64_t page_stride, num_slots;
  int nh, kvh, group, gh, hblocks, rows, page_size, window;
};

template <int D, int WD, int BN>
struct Cfg {
  static constexpr int BM = 64;       // M rows of a CTA: query rows x heads
  static constexpr int WM = BM / 16;  // warps along M
  static constexpr int NW = WM * WD, THREADS = NW * 32;
  static constexpr int DH = D / WD;               // dims of O owned by one warp
  static constexpr int CH = D / 8;                // 16-byte chunks per row
  static constexpr int NT = BN / 8;               // score n-tiles per warp
  static constexpr int OT = DH / 8;               // output n-tiles per warp
  static constexpr int XF = WD > 1 ? NT * 4 : 0;  // partial-score floats per lane exchanged
  static constexpr size_t kQ = size_t(BM) * D * 2, kKV = size_t(BN) * D * 2;
  static constexpr size_t kX = size_t(NW) * 32 * XF * 4, kMeta = 2 * 3 * BN * 4;
  static constexpr size_t kSmem = kQ + 2 * kKV + kX + kMeta;
  static_assert(BN % 16 == 0 && BN <= 64 && DH % 64 == 0, "tile shape");
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte copy; src_bytes 0 fills zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// c[16x8] += a[16x16] b[16x8], bf16 inputs, fp32 accumulation.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows, CH chunks] tile, XOR-swizzled over 8 rows.
template <int CH>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return uint32_t(row * CH + (chunk ^ (row & 7))) * 16u;
}

template <int D, int WD, int BN>
__global__ void __launch_bounds__(Cfg<D, WD, BN>::THREADS) prefill_attn_kernel(const PrefillParams p) {
  using C = Cfg<D, WD, BN>;
  constexpr int CH = C::CH, NT = C::NT, OT = C::OT, DH = C::DH, THREADS = C::THREADS;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);                      // [BM, D] swizzled
  bf16* sK = sQ + C::BM * D;                                     // [BN, D] swizzled
  bf16* sV = sK + BN * D;                                        // [BN, D] swizzled
  float* sX = reinterpret_cast<float*>(sV + BN * D);             // [NW, XF, 32] partial scores (WD > 1)
  int* sMeta = reinterpret_cast<int*>(sX + C::NW * C::XF * 32);  // [2 bufs][ci, kp, krow][BN]
  __shared__ int s_qmin, s_qmax, s_bmin;
  pdl_begin();

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wm = warp % C::WM, wd = warp / C::WM;
  const int kh = blockIdx.x / p.hblocks, hb = blockIdx.x % p.hblocks;
  const int tile = gridDim.y - 1 - blockIdx.y;  // heaviest (last) row tiles first
  const int s = blockIdx.z;
  const int row0 = p.cu_q[s], nq = p.cu_q[s + 1] - row0, i0 = tile * p.rows;
  if (tile == 0 && nq > int(gridDim.y) * p.rows && tid == 0)  // max_q too small: rows would stay unwritten
    report_error(p.err, kErrNoKey, row0 + int(gridDim.y) * p.rows, p.pos[row0 + int(gridDim.y) * p.rows], 0);
  if (i0 >= nq) return;
  const int nrows = min(p.rows, nq - i0), heads = min(p.gh, p.group - hb * p.gh);
  const int h0 = kh * p.group + hb * p.gh;
  const int prefix = p.prefix[s];
  const int window = p.window;

  // This thread's two M rows (fragment rows lane/4 and lane/4 + 8): sequence row index and position;
  // padding rows get i = -1 and a position below every key, so they see nothing.
  int ri[2], rq[2], rh[2];
#pragma unroll
  for (int t = 0; t < 2; t++) {
    const int m = wm * 16 + (lane >> 2) + 8 * t, rl = m / p.gh, hh = m - rl * p.gh;
    const bool valid = rl < nrows && hh < heads;
    ri[t] = valid ? i0 + rl : -1;
    rq[t] = valid ? p.pos[row0 + i0 + rl] : -(1 << 30);
    rh[t] = h0 + hh;
  }

  // The CTA's key range.
  if (tid == 0) s_qmin = INT_MAX, s_qmax = INT_MIN, s_bmin = INT_MAX;
  __syncthreads();
  if (tid < nrows) {
    const int v = p.pos[row0 + i0 + tid];
    atomicMin(&s_qmin, v);
    atomicMax(&s_qmax, v);
  }
  __syncthreads();
  const int qmin = s_qmin, qmax = s_qmax, imax = i0 + nrows - 1;
  const int lo_min = window > 0 ? max(0, qmin - window + 1) : 0;
  const bool any_prefix = lo_min < min(prefix, qmax + 1);
  if (!any_prefix && window > 0) {
    // First block key that some row's window may reach (keys before it are older than every window).
    for (int b = tid; b <= imax; b += THREADS)
      if (p.pos[row0 + b] > qmin - window) {
        atomicMin(&s_bmin, b);
        break;
      }
  }
  __syncthreads();
  const int kstart = any_prefix ? lo_min : prefix + (window > 0 ? min(s_bmin, imax) : 0);
  const int kend = prefix + imax + 1;
  const int kbase = kstart & ~15;
  const int nt = (kend - kbase + BN - 1) / BN;

  // Key metadata of tile t, two phases so the global loads overlap the tile before: thread n < BN loads its
  // slot's page and position, then stores ci (-1 prefix key, b block key, INT_MAX past kend), kp (position)
  // and krow (physical row * kvh + kh, or -1 when the slot must not be read).
  auto meta_load = [&](int t, int& page, int& kp) {
    const int slot = kbase + t * BN + tid;
    page = -1;
    kp = 0;
    if (tid < BN && slot < kend) {
      const int pidx = slot / p.page_size;
      page = pidx < p.page_stride ? p.pages[int64_t(s) * p.page_stride + pidx] : -1;
      kp = slot < prefix ? slot : p.pos[row0 + slot - prefix];
    }
  };
  auto meta_store = [&](int t, int page, int kp) {
    if (tid >= BN) return;
    const int slot = kbase + t * BN + tid;
    int* mb = sMeta + (t & 1) * 3 * BN;
    const int64_t phys = int64_t(page) * p.page_size + slot % p.page_size;
    const bool in = slot < kend;
    mb[tid] = !in ? INT_MAX : slot < prefix ? -1 : slot - prefix;
    mb[BN + tid] = kp;
    mb[2 * BN + tid] = in && page >= 0 && phys < p.num_slots ? int(phys) * p.kvh + kh : -1;
  };
  auto load_tile = [&](bf16* dst, const bf16* src, int t) {
    const int* krow = sMeta + (t & 1) * 3 * BN + 2 * BN;
    const uint32_t base = smem_addr(dst);
    for (int idx = tid; idx < BN * CH; idx += THREADS) {
      const int n = idx / CH, c = idx % CH, r = krow[n];
      cp_async16(base + swz<CH>(n, c), src + int64_t(max(r, 0)) * D + c * 8, r >= 0);
    }
  };

  // Prologue: Q, metadata and K of tile 0 (one group), V of tile 0 (a second group).
  {
    const uint32_t base = smem_addr(sQ);
    for (int idx = tid; idx < C::BM * CH; idx += THREADS) {
      const int m = idx / CH, c = idx % CH, rl = m / p.gh, hh = m - rl * p.gh;
      const bool valid = rl < nrows && hh < heads;
      const bf16* src =
          p.q + (int64_t(row0 + i0 + (valid ? rl : 0)) * p.nh + h0 + (valid ? hh : 0)) * D + c * 8;
      cp_async16(base + swz<CH>(m, c), src, valid);
    }
  }
  int pre_page, pre_kp;
  meta_load(0, pre_page, pre_kp);
  meta_store(0, pre_page, pre_kp);
  __syncthreads();
  load_tile(sK, p.kc, 0);
  cp_async_commit();
  load_tile(sV, p.vc, 0);
  cp_async_commit();
  if (nt > 1) meta_load(1, pre_page, pre_kp);

  float o[OT][4];
#pragma unroll
  for (int j = 0; j < OT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};

  // ldmatrix addresses. Every lane's row is = lane (mod 8) and its chunk is an even chunk c plus 0 or 1, so
  // the swizzled chunk is (c & ~7) + ((c & 7) ^ y) with a per-lane y: four offsets per lane, the rest
  // immediates.
  constexpr uint32_t kRowB = CH * 16;  // bytes per smem row
  const int yq = (lane >> 4) ^ (lane & 7), yk = ((lane >> 3) & 1) ^ (lane & 7);
  uint32_t xq[4], xk[4];
#pragma unroll
  for (int c = 0; c < 4; c++) xq[c] = uint32_t((2 * c) ^ yq) * 16, xk[c] = uint32_t((2 * c) ^ yk) * 16;
  const uint32_t dofs = uint32_t(wd * DH * 2);  // this warp's D range (a multiple of 8 chunks)
  const uint32_t aQ = smem_addr(sQ) + (wm * 16 + (lane & 15)) * kRowB + dofs;
  const uint32_t aK = smem_addr(sK) + ((lane & 7) + ((lane >> 4) << 3)) * kRowB + dofs;
  const uint32_t aV = smem_addr(sV) + ((lane & 7) + (((lane >> 3) & 1) << 3)) * kRowB + dofs;
  for (int t = 0; t < nt; t++) {
    const int* mb = sMeta + (t & 1) * 3 * BN;
    cp_async_wait<1>();
    __syncthreads();  // Q, K[t] and metadata[t] visible

    // S = Q K^T over this warp's D range.
    float sc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int kd = 0; kd < DH / 16; kd++) {
      const uint32_t ko = (kd >> 2) * 128;
      uint32_t a[4];
      ldsm_x4(aQ + ko + xq[kd & 3], a);
#pragma unroll
      for (int np = 0; np < NT / 2; np++) {
        uint32_t b[4];
        ldsm_x4(aK + np * 16 * kRowB + ko + xk[kd & 3], b);
        mma16816(sc[2 * np], a, b[0], b[1]);
        mma16816(sc[2 * np + 1], a, b[2], b[3]);
      }
    }
    if constexpr (WD > 1) {
      float* mine = sX + warp * C::XF * 32 + lane;
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) mine[(j * 4 + e) * 32] = sc[j][e];
    }
    if (t + 1 < nt) meta_store(t + 1, pre_page, pre_kp);
    __syncthreads();  // every warp is done with K[t]; partial scores and metadata[t + 1] visible
    if (t + 1 < nt) load_tile(sK, p.kc, t + 1);
    cp_async_commit();
    if (t + 2 < nt) meta_load(t + 2, pre_page, pre_kp);
    if constexpr (WD > 1) {
      const int partner = wm + (1 - wd) * C::WM;
      const float* other = sX + partner * C::XF * 32 + lane;
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[j][e] += other[(j * 4 + e) * 32];
    }

    // Mask, unless every row of the CTA sees every key of the tile.
    bool full = true;
    for (int n = lane; n < BN; n += 32) {
      const int ci = mb[n], kp = mb[BN + n];
      full = full && mb[2 * BN + n] >= 0 && ci <= i0 && kp <= qmin && (window <= 0 || qmax - kp < window);
    }
    if (!__all_sync(0xffffffffu, full)) {
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++) {
          const int n = j * 8 + (lane & 3) * 2 + e2;
          const int ci = mb[n], kp = mb[BN + n], krow = mb[2 * BN + n];
#pragma unroll
          for (int t2 = 0; t2 < 2; t2++) {
            bool vis = ci <= ri[t2] && kp <= rq[t2] && (window <= 0 || rq[t2] - kp < window);
            if (vis && krow < 0) {
              report_error(p.err, kErrFreedPage, kbase + t * BN + n, s, 0);
              vis = false;
            }
            if (!vis) sc[j][2 * t2 + e2] = -INFINITY;
          }
        }
    }

    // Online softmax (a row's values live in the 4 lanes of a quad).
    float scale[2];
#pragma unroll
    for (int t2 = 0; t2 < 2; t2++) {
      float mx = mrow[t2];
#pragma unroll
      for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(sc[j][2 * t2], sc[j][2 * t2 + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.f : mx * kLog2e;  // no key yet: p = 0 everywhere
      scale[t2] = exp2f(mrow[t2] * kLog2e - base);             // mrow == -inf -> 0
      mrow[t2] = mx;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++) {
          const float v = exp2f(fmaf(sc[j][2 * t2 + e2], kLog2e, -base));
          sc[j][2 * t2 + e2] = v;
          sum += v;
        }
      lrow[t2] = lrow[t2] * scale[t2] + sum;
    }
#pragma unroll
    for (int j = 0; j < OT; j++) {
      o[j][0] *= scale[0];
      o[j][1] *= scale[0];
      o[j][2] *= scale[1];
      o[j][3] *= scale[1];
    }
    uint32_t pa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      pa[kk][0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
      pa[kk][1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
      pa[kk][2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pa[kk][3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
    }

    cp_async_wait<1>();
    __syncthreads();  // V[t] visible
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
      for (int dp = 0; dp < OT / 2; dp++) {
        uint32_t b[4];
        ldsm_x4_t(aV + kk * 16 * kRowB + (dp >> 2) * 128 + xq[dp & 3], b);
        mma16816(o[2 * dp], pa[kk], b[0], b[1]);
        mma16816(o[2 * dp + 1], pa[kk], b[2], b[3]);
      }
    __syncthreads();  // every warp is done with V[t]
    if (t + 1 < nt) load_tile(sV, p.vc, t + 1);
    cp_async_commit();
  }
  cp_async_wait<0>();

  // Normalise and store this warp's half (or all) of D for its two rows.
#pragma unroll
  for (int t2 = 0; t2 < 2; t2++) {
    float l = lrow[t2];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (ri[t2] < 0) continue;
    const int r = row0 + ri[t2];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (l <= 0.f && wd == 0 && (lane & 3) == 0) report_error(p.err, kErrNoKey, r, rq[t2], 0);
    bf16* dst = p.out + (int64_t(r) * p.nh + rh[t2]) * D + wd * DH + (lane & 3) * 2;
#pragma unroll
    for (int j = 0; j < OT; j++)
      *reinterpret_cast<__nv_bfloat162*>(dst + j * 8) =
          __floats2bfloat162_rn(o[j][2 * t2] * inv, o[j][2 * t2 + 1] * inv);
  }
}

template <int D, int WD, int BN>
void launch_prefill(const PrefillParams& p, dim3 grid, cudaStream_t st) {
  using C = Cfg<D, WD, BN>;
  static const bool attr_set = [] {
    CUDA_OK(cudaFuncSetAttribute(prefill_attn_kernel<D, WD, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(C::kSmem)),
            "attention (prefill)");
    return true;
  }();
  (void)attr_set;
  launch(st, "attention (prefill)", prefill_attn_kernel<D, WD, BN>, grid, dim3(C::THREADS), C::kSmem, p);
}

// -1: from MTP_ATTN_PREFILL (0 off, 2 force, otherwise auto); 0 off, 1 auto, 2 force (any max_q).
int g_mode = -1;
std::atomic<int64_t> g_calls{0};

}  // namespace

// Test and benchmark hooks (declared where used): the dispatch mode and the number of launches so far.
void attention_prefill_mode(int mode) { g_mode = mode; }
int64_t attention_prefill_calls() { return g_calls.load(); }

bool attention_prefill(Ctx& c, Tensor out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       const AttnMeta& m, const KvPageTable& pt, int window) {
  if (g_mode < 0) {
    const char* e = std::getenv("MTP_ATTN_PREFILL");
    g_mode = e && std::atoi(e) == 0 ? 0 : e && std::atoi(e) == 2 ? 2 : 1;
  }
  // Below this many query rows per sequence the split-KV kernel of attention.cu can be faster (PrefillBench:
  // at 16-32 rows after a 4k prefix it is up to 3x faster; from 64 rows on this kernel wins everywhere).
  constexpr int kMinRows = 64;
  const int64_t T = q.dim(0), nh = q.dim(1), D = q.dim(-1), kvh = k_cache.dim(1), slots = k_cache.dim(0);
  if (g_mode == 0 || !m.block_keys || m.tree_mask.defined() || (g_mode == 1 && m.max_q < kMinRows))
    return false;
  if ((D != 256 && D != 512) || m.max_q <= 0 || slots * kvh >= INT_MAX || T >= INT_MAX) return false;
  for (const void* ptr : {q.data, k_cache.data, v_cache.data, out.data})
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  const int group = int(nh / kvh), gh = std::min(group, 64), hblocks = (group + gh - 1) / gh, rows = 64 / gh;
  const int64_t tiles = (m.max_q + rows - 1) / rows;
  if (tiles > 65535 || m.num_seqs > 65535) return false;

  PrefillParams p{};
  p.q = cbf(q);
  p.out = mbf(out);
  p.kc = cbf(k_cache);
  p.vc = cbf(v_cache);
  p.cu_q = m.cu_q.ptr<const int32_t>();
  p.prefix = m.prefix_len.ptr<const int32_t>();
  p.pos = m.positions.ptr<const int32_t>();
  p.pages = pt.pages.ptr<const int32_t>();
  p.err = c.err;
  p.page_stride = pt.pages.dim(1);
  p.num_slots = slots;
  p.nh = int(nh);
  p.kvh = int(kvh);
  p.group = group;
  p.gh = gh;
  p.hblocks = hblocks;
  p.rows = rows;
  p.page_size = pt.page_size;
  p.window = window;
  // x: KV head (and head block), y: row tile (launched heaviest first), z: sequence (in batch order).
  const dim3 grid(unsigned(kvh * hblocks), unsigned(tiles), unsigned(m.num_seqs));
  // Tiles measured on the H100 (tests/cuda/test_cuda_prefill.cpp, PrefillBench): D = 256 one warp per 16 M
  // rows with 64-key tiles (2 CTAs per SM); D = 512 warp pairs splitting D with 64-key tiles (225 KB of
  // shared memory), 32-key tiles (145 KB) where a block cannot have that much (sm_80: 163 KB, sm_86/89: 99
  // KB).
  static const int smem_optin = [] {
    int dev = 0, v = 0;
    CUDA_OK(cudaGetDevice(&dev), "attention (prefill)");
    CUDA_OK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "attention (prefill)");
    return v;
  }();
  if (D == 256) {
    if (size_t(smem_optin) < Cfg<256, 1, 64>::kSmem + 1024) return false;
    launch_prefill<256, 1, 64>(p, grid, c.stream);
  } else if (size_t(smem_optin) >= Cfg<512, 2, 64>::kSmem + 1024) {
    launch_prefill<512, 2, 64>(p, grid, c.stream);
  } else {
    if (size_t(smem_optin) < Cfg<512, 2, 32>::kSmem + 1024) return false;
    launch_prefill<512, 2, 32>(p, grid, c.stream);
  }
  check_launch("attention (prefill)");
  g_calls++;
  return true;
}

}  // namespace mtpserve::cuda
