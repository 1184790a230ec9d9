// Backend::sample_rows on the GPU: one CTA of 512 threads per row, every pass a sweep over the row's logits
// (1 MB at V = 262144, L2-resident after the first; 16 loads in flight per thread, which is what keeps a
// pass near L2 speed), fp32 math as the CPU definition (sample_probs) does it.
//
// Per row: the max of the penalised logits; then every element's z = (l - max) / temperature, computed
// exactly as on the CPU, orders the row (the CPU sorts by p = exp(z) / sum, the same order up to fp32 ties
// of exp, broken by index as its stable sort does). Top-k and top-p boundaries are found by radix select over
// z's order-preserving bits (14 + 9 + 9 bit digits, shared-memory histograms of counts or of fixed-point
// masses), then the tie group at the boundary is cut by index (the m-th tie in index order). Min-p is a value
// test (exp(z) >= min_p: p >= min_p * p_max). The residual sample is an ordered find over fixed-point
// masses: per-warp slice totals, then the chosen slice's, then one block scan. Masses are integers (exp(z) *
// 2^sb, truncated), summed with 32-bit atomics (low word, carries into the high word), so sums do not depend
// on thread order: a fixed seed gives a fixed token. Passes skip, after one subtraction, elements whose
// d = l - max lies below (or above) the current candidates.
#include <cfloat>
#include <climits>

#include "backend/cuda/cuda_common.cuh"

namespace mtpserve::cuda {
namespace {

constexpr int kThreads = 512, kWarps = kThreads / 32;
constexpr int kBins0 = 1 << 14;  // radix digits of the 32-bit key: 14 bits, then 9 and 9
constexpr int kUnroll = 16;      // loads in flight per thread
constexpr int kMaxChildren = 16;
constexpr int kErrPenaltyIds = 64;  // the penalty ids of a row are not ascending (reported as a device error)

using u64 = unsigned long long;

struct Shared {
  u64 part[kWarps];
  float fv[kWarps];
  int fi[kWarps];
  u64 sel_rem, sel_w, tot;
  int sel_bin, found;
  int32_t kids[kMaxChildren];
};

// The row and what every pass needs to evaluate one element.
struct Row {
  const float* x;
  int V;
  const int32_t* pid;  // penalties: ids (ascending) and amounts, np of them
  const float* pval;
  int np;
  const uint32_t* bits;  // shared bitmap of the penalised ids
  uint32_t *hlo, *hhi;   // shared histogram, low and high words
  DevErr* err;
  float mx = 0, t = 1;
  // z = (l - max) / t as the CPU computes it (dividing by 1 is exact: skipped)
  __device__ __forceinline__ float z_of(float d) const { return t == 1.0f ? d : d / t; }
};

__device__ __forceinline__ float penalise(const Row& r, int v, float x) {
  if (r.np > 0 && ((r.bits[v >> 5] >> (v & 31)) & 1u)) {
    int lo = 0, hi = r.np - 1;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (r.pid[mid] < v)
        lo = mid + 1;
      else
        hi = mid;
    }
    if (r.pid[lo] != v) report_error(r.err, kErrPenaltyIds, v, r.np, 0);
    x -= r.pval[lo];
  }
  return x;
}
__device__ __forceinline__ float pen_logit(const Row& r, int v) { return penalise(r, v, __ldg(r.x + v)); }

// f(v, penalised logit) for v = first, first + step, ... < end, with kUnroll loads issued before any is used.
template <class F>
__device__ __forceinline__ void sweep(const Row& r, int first, int end, int step, const F& f) {
  for (int v0 = first; v0 < end; v0 += kUnroll * step) {
    float x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int v = v0 + u * step;
      x[u] = v < end ? __ldg(r.x + v) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int v = v0 + u * step;
      if (v < end) f(v, penalise(r, v, x[u]));
    }
  }
}

// Order-preserving unsigned image of a float, and back.
__device__ __forceinline__ uint32_t zkey(float z) {
  const uint32_t u = __float_as_uint(z);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_z(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// e in [0, 1] as a fixed-point integer with sb fraction bits, truncated (bit arithmetic, no conversion unit).
__device__ __forceinline__ u64 fx(float e, int sb) {
  const uint32_t b = __float_as_uint(e);
  const int E = int(b >> 23);
  if (E == 0 || E > 127) return 0;  // zero, subnormal (< 2^-126), or not in [0, 1]
  const u64 m = (b & 0x7FFFFFu) | 0x800000u;
  const int s = E - 150 + sb;
  return s >= 0 ? m << s : (s > -24 ? m >> -s : 0);
}

// A bound d_lo on d = l - max below which z = d / t is surely below zb (a 2^-18 relative margin covers the
// roundings of zb * t and of d / t); -inf when there is none. zb = +0 gives 0: d < 0 has z <= -0 < +0.
__device__ __forceinline__ float d_below(float zb, float t) {
  if (__float_as_uint(zb) == 0u) return 0.0f;
  if (!(zb < -1e-30f)) return -INFINITY;
  return zb * t * (1.0f + 0x1p-18f);
}
// And d_hi above which z is surely above zb (+inf when there is none).
__device__ __forceinline__ float d_above(float zb, float t) {
  if (!(zb < -1e-30f)) return INFINITY;
  return zb * t * (1.0f - 0x1p-18f);
}

// The sorted order's position of a boundary: v is inside iff key > key_b, or key == key_b and v <= idx.
struct Bound {
  uint32_t key = 0;
  int idx = INT_MAX;
  float d_lo = -INFINITY;  // every element inside has d >= d_lo
  __device__ bool in(uint32_t k, int v) const { return k > key || (k == key && v <= idx); }
};

// hist[b] += w, exactly: the low word's carries go to the high word, so the sum does not depend on order.
__device__ __forceinline__ void hist_add(const Row& r, uint32_t b, u64 w) {
  const uint32_t wl = uint32_t(w), wh = uint32_t(w >> 32);
  const uint32_t old = atomicAdd(&r.hlo[b], wl);
  const uint32_t hi = wh + (old + wl < old ? 1u : 0u);
  if (hi) atomicAdd(&r.hhi[b], hi);
}
__device__ __forceinline__ u64 hist_at(const Row& r, int b) { return (u64(r.hhi[b]) << 32) | r.hlo[b]; }

__device__ __forceinline__ u64 warp_sum(u64 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ u64 block_sum(u64 v, Shared& s) {
  v = warp_sum(v);
  __syncthreads();  // earlier readers of s.part are done
  if ((threadIdx.x & 31) == 0) s.part[threadIdx.x >> 5] = v;
  __syncthreads();
  u64 t = 0;
  for (int i = 0; i < kWarps; i++) t += s.part[i];
  return t;
}

// Inclusive scan of one value per thread, in thread order.
__device__ u64 block_scan(u64 v, Shared& s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  __syncthreads();
  if (lane == 31) s.part[warp] = v;
  __syncthreads();
  for (int i = 0; i < warp; i++) v += s.part[i];
  return v;
}

// Max of the penalised row and its first index.
__device__ void block_argmax(const Row& r, Shared& s, float& mx, int& am) {
  float bv = -INFINITY;
  int bi = INT_MAX;
  sweep(r, threadIdx.x, r.V, kThreads, [&](int v, float x) {
    if (x > bv || bi == INT_MAX) bv = x, bi = v;  // ascending v per thread: the first maximum stays
  });
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
  }
  if ((threadIdx.x & 31) == 0) s.fv[threadIdx.x >> 5] = bv, s.fi[threadIdx.x >> 5] = bi;
  __syncthreads();
  bv = s.fv[0], bi = s.fi[0];
  for (int i = 1; i < kWarps; i++)
    if (s.fv[i] > bv || (s.fv[i] == bv && s.fi[i] < bi)) bv = s.fv[i], bi = s.fi[i];
  mx = bv, am = bi;
  __syncthreads();
}

// The bin, counted from the top of the histogram's nbins, in which the running weight reaches rem
// (1 <= rem <= total); rem becomes what is still needed inside that bin, *bin_w its weight.
__device__ int pick_bin(const Row& r, Shared& s, int nbins, u64& rem, u64* bin_w) {
  const int per = nbins > kThreads ? nbins / kThreads : 1, top = nbins - 1 - int(threadIdx.x) * per;
  u64 mine = 0;
  for (int j = 0; j < per && top - j >= 0; j++) mine += hist_at(r, top - j);
  const u64 incl = block_scan(mine, s), excl = incl - mine;
  if (excl < rem && incl >= rem) {  // exactly one thread
    u64 acc = excl;
    for (int j = 0; j < per && top - j >= 0; j++) {
      const u64 h = hist_at(r, top - j);
      if (acc + h >= rem) {
        s.sel_bin = top - j, s.sel_rem = rem - acc, s.sel_w = h;
        break;
      }
      acc += h;
    }
  }
  __syncthreads();
  rem = s.sel_rem;
  *bin_w = s.sel_w;
  return s.sel_bin;
}

// The first v in index order at which the running sum of g(v, penalised logit) exceeds T = t_of(total); -1
// when none does. Slices: the row into one slice per warp (coalesced sums), the chosen slice again, then one
// element per thread and a block scan. The total of the first look goes to *total_out.
template <class G, class TOf>
__device__ int ordered_find(const Row& r, Shared& s, const G& g, const TOf& t_of, u64* total_out = nullptr) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int lo = 0, len = r.V;
  u64 T = 0;
  bool first = true;
  while (len > kThreads) {
    const int piece = (len + kWarps - 1) / kWarps, a = lo + warp * piece, b = min(lo + len, a + piece);
    u64 sum = 0;
    sweep(r, a + lane, b, 32, [&](int v, float x) { sum += g(v, x); });
    sum = warp_sum(sum);
    __syncthreads();
    if (lane == 0) s.part[warp] = sum;
    __syncthreads();
    if (first) {
      u64 tot = 0;
      for (int i = 0; i < kWarps; i++) tot += s.part[i];
      if (total_out) *total_out = tot;
      T = t_of(tot);
      if (T >= tot) return -1;  // (the same on every thread)
      first = false;
    }
    u64 acc = 0;
    int p = 0;
    for (; p < kWarps - 1; p++) {
      if (acc + s.part[p] > T) break;
      acc += s.part[p];
    }
    T -= acc;
    const int nlo = lo + p * piece;
    len = min(piece, lo + len - nlo);
    lo = nlo;
    __syncthreads();  // every thread has read s.part before the next slice writes it
  }
  const int v = lo + int(threadIdx.x);
  const u64 mine = int(threadIdx.x) < len ? g(v, pen_logit(r, v)) : 0;
  const u64 incl = block_scan(mine, s);
  if (first) {  // a short row: this scan is the first look at it
    if (threadIdx.x == kThreads - 1) s.tot = incl;
    __syncthreads();
    const u64 tot = s.tot;
    if (total_out) *total_out = tot;
    T = t_of(tot);
    if (T >= tot) return -1;
  }
  if (threadIdx.x == 0) s.found = -1;
  __syncthreads();
  if (incl > T && incl - mine <= T) s.found = v;
  __syncthreads();
  const int f = s.found;
  __syncthreads();
  return f;
}

// The first element, in the order (z desc, index asc), at which the running weight of the candidates reaches
// need(total weight). w(v, z, key) is an element's weight (0: not a candidate), cand_lo a d_lo of every
// candidate; tie_w(key) the weight of an element with that key. Radix digits narrow the key; the tie group
// at the final key is cut at the m-th candidate in index order.
template <class W, class Need, class TieW>
__device__ Bound select(const Row& r, Shared& s, const W& w, float cand_lo, const Need& need,
                        const TieW& tie_w) {
  uint32_t prefix = 0;
  u64 rem = 0, bin_w = 0;
  float lo_cut = cand_lo, hi_cut = INFINITY;
  for (int level = 0; level < 3; level++) {
    const int bits = level == 0 ? 14 : 9, shift = level == 0 ? 18 : (level == 1 ? 9 : 0), nb = 1 << bits;
    for (int i = threadIdx.x; i < nb; i += kThreads) r.hlo[i] = 0, r.hhi[i] = 0;
    __syncthreads();
    u64 tot = 0;
    sweep(r, threadIdx.x, r.V, kThreads, [&](int v, float x) {
      const float d = x - r.mx;
      if (d < lo_cut || d > hi_cut) return;
      const float z = r.z_of(d);
      const uint32_t k = zkey(z);
      if (level > 0 && (k >> (shift + bits)) != prefix) return;
      const u64 wt = w(v, z, k);
      if (!wt) return;
      hist_add(r, (k >> shift) & uint32_t(nb - 1), wt);
      tot += wt;
    });
    __syncthreads();
    if (level == 0) rem = need(block_sum(tot, s));
    prefix = (prefix << bits) | uint32_t(pick_bin(r, s, nb, rem, &bin_w));
    // The chosen digit's elements lie in [key_z(prefix << shift), key_z(((prefix + 1) << shift) - 1)].
    const uint32_t klo = prefix << shift, khi = klo + ((1u << shift) - 1);
    lo_cut = fmaxf(lo_cut, d_below(key_z(klo), r.t));
    hi_cut = fminf(hi_cut, d_above(key_z(khi), r.t));
    __syncthreads();
  }
  // Ties: every candidate with this key has the same weight; the boundary is the m-th of them by index
  // (every element with the key when that is the last candidate: the caller intersects with the candidates).
  const uint32_t key = prefix;
  const u64 wt = tie_w(key), m = (rem + wt - 1) / wt;
  Bound b;
  b.key = key;
  b.d_lo = lo_cut;
  if (m == bin_w / wt) return b;
  auto g = [&](int v, float x) -> u64 {
    const float d = x - r.mx;
    if (d < lo_cut || d > hi_cut) return 0;
    const float z = r.z_of(d);
    const uint32_t k = zkey(z);
    return k == key && w(v, z, k) ? 1 : 0;
  };
  b.idx = ordered_find(r, s, g, [&](u64) { return m - 1; });
  return b;
}

__global__ void __launch_bounds__(kThreads, 1)
    sample_rows_kernel(float* out_pd, int32_t* out_tok, const float* logits, int V, int C,
                       const float* params, const int32_t* drafts, const int64_t* uniforms,
                       const int32_t* pen_off, const int32_t* pen_ids, const float* pen_val, DevErr* err) {
  extern __shared__ uint32_t dyn[];  // [kBins0] low words, [kBins0] high words, the penalty bitmap
  __shared__ Shared s;
  const int row_i = blockIdx.x;
  Row r;
  r.x = logits + size_t(row_i) * V;
  r.V = V;
  const int pb = pen_off[row_i], pe = pen_off[row_i + 1];
  r.pid = pen_ids + pb, r.pval = pen_val + pb, r.np = pe - pb;
  r.hlo = dyn, r.hhi = dyn + kBins0;
  uint32_t* pen_bits = dyn + 2 * kBins0;
  r.bits = pen_bits;
  r.err = err;
  const float temp = params[row_i * 4 + 0], top_p = params[row_i * 4 + 1], min_p = params[row_i * 4 + 2];
  const int top_k = int(params[row_i * 4 + 3]);
  if (int(threadIdx.x) < C) s.kids[threadIdx.x] = drafts[size_t(row_i) * C + threadIdx.x];
  if (r.np > 0) {
    for (int i = threadIdx.x; i < (V + 31) / 32; i += kThreads) pen_bits[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < r.np; i += kThreads) {
      const int id = r.pid[i];
      if (id >= 0 && id < V) atomicOr(&pen_bits[id >> 5], 1u << (id & 31));
    }
  }
  __syncthreads();

  float mx;
  int am;
  block_argmax(r, s, mx, am);
  if (temp <= 0.0f || top_k == 1) {  // greedy: one-hot at the first argmax
    if (threadIdx.x == 0) {
      bool hit = false;
      for (int j = 0; j < C; j++) {
        hit |= s.kids[j] == am;
        out_pd[size_t(row_i) * C + j] = s.kids[j] == am ? 1.0f : 0.0f;
      }
      out_tok[row_i] = hit ? -1 : am;
    }
    return;
  }
  r.mx = mx, r.t = temp;
  int sb = 63;  // mass fraction bits: V masses <= 1 sum below 2^63
  while ((1LL << (63 - sb)) < V) sb--;

  // Top-k: the top_k-th element of the order; the candidates of what follows.
  Bound bk;
  if (top_k > 0 && top_k < V)
    bk = select(
        r, s, [](int, float, uint32_t) -> u64 { return 1; }, -INFINITY,
        [&](u64) -> u64 { return u64(top_k); }, [](uint32_t) -> u64 { return 1; });
  // Top-p within the top-k set: the first element where the running mass reaches top_p of the set's mass.
  Bound bp = bk;
  if (top_p < 1.0f)
    bp = select(
        r, s, [&](int v, float z, uint32_t k) -> u64 { return bk.in(k, v) ? fx(expf(z), sb) : 0; }, bk.d_lo,
        [&](u64 tot) -> u64 {
          const double n = ceil(double(top_p) * double(tot));
          return n < 1 ? 1 : (n >= double(tot) ? tot : u64(n));
        },
        [&](uint32_t k) -> u64 { return fx(expf(key_z(k)), sb); });
  // Min-p: exp(z) >= min_p. Below a margin under log(min_p) no element passes.
  float kept_lo = bp.d_lo;
  if (min_p > 0.0f) {
    const float l = logf(fminf(min_p, 1.0f));
    kept_lo = fmaxf(kept_lo, d_below(l - 1e-4f - 1e-4f * fabsf(l), r.t));
  }
  // e = exp(z) of a kept element, else -1.
  auto kept_e = [&](int v, float x) -> float {
    const float d = x - r.mx;
    if (d < kept_lo) return -1.0f;
    const float z = r.z_of(d);
    const uint32_t k = zkey(z);
    if (!bp.in(k, v) || !bk.in(k, v)) return -1.0f;
    const float e = expf(z);
    return min_p <= 0.0f || e >= min_p ? e : -1.0f;
  };
  // The residual sample: inverse CDF over the kept mass without the children, at u = bits >> 11 (53 bits).
  const u64 ubits = u64(uniforms[row_i]) & ~u64(0x7FF);
  u64 tot_res = 0;
  const int tok = ordered_find(
      r, s,
      [&](int v, float x) -> u64 {
        const float e = kept_e(v, x);
        if (e < 0.0f) return 0;
        for (int j = 0; j < C; j++)
          if (s.kids[j] == v) return 0;
        return fx(e, sb);
      },
      [&](u64 tot) -> u64 { return __umul64hi(ubits, tot); }, &tot_res);
  if (threadIdx.x == 0) {
    // The kept mass: the residual plus each distinct kept child's.
    u64 tot = tot_res;
    for (int j = 0; j < C; j++) {
      const int v = s.kids[j];
      bool dup = false;
      for (int i = 0; i < j; i++) dup |= s.kids[i] == v;
      if (v >= 0 && v < V && !dup) {
        const float e = kept_e(v, pen_logit(r, v));
        if (e >= 0.0f) tot += fx(e, sb);
      }
    }
    const double scale = ldexp(1.0, sb) / double(tot);
    for (int j = 0; j < C; j++) {
      const int v = s.kids[j];
      const float e = v >= 0 && v < V ? kept_e(v, pen_logit(r, v)) : -1.0f;
      out_pd[size_t(row_i) * C + j] = e >= 0.0f ? float(double(e) * scale) : 0.0f;
    }
    out_tok[row_i] = tok;
  }
}

}  // namespace

void sample_rows(Ctx& c, Tensor out_pd, Tensor out_tok, const Tensor& logits, const SampleRowsArgs& a) {
  need(logits, DType::F32, "sample_rows", "logits");
  need(out_pd, DType::F32, "sample_rows", "out_pd");
  need(out_tok, DType::I32, "sample_rows", "out_tok");
  need(a.params, DType::F32, "sample_rows", "params");
  need(a.drafts, DType::I32, "sample_rows", "drafts");
  need(a.uniforms, DType::I64, "sample_rows", "uniforms");
  need(a.pen_off, DType::I32, "sample_rows", "pen_off");
  need(a.pen_ids, DType::I32, "sample_rows", "pen_ids");
  need(a.pen_val, DType::F32, "sample_rows", "pen_val");
  const int64_t R = logits.dim(0), V = logits.dim(-1), C = a.drafts.dim(-1);
  MTP_CHECK(logits.ndim == 2 && V > 0 && V <= (int64_t(1) << 19) && C >= 1 && C <= kMaxChildren &&
                a.params.numel() == R * 4 && a.drafts.numel() == R * C && a.uniforms.numel() == R &&
                a.pen_off.numel() == R + 1 && a.pen_ids.numel() == a.pen_val.numel() &&
                out_pd.numel() == R * C && out_tok.numel() == R,
            "cuda sample_rows: logits {} params {} drafts {} (at most {} per row) uniforms {} pen_off {} "
            "pen_ids {} pen_val {} out_pd {} out_tok {}",
            logits.shape_str(), a.params.shape_str(), a.drafts.shape_str(), kMaxChildren,
            a.uniforms.shape_str(), a.pen_off.shape_str(), a.pen_ids.shape_str(), a.pen_val.shape_str(),
            out_pd.shape_str(), out_tok.shape_str());
  if (R == 0) return;
  const size_t smem = (2 * size_t(kBins0) + size_t((V + 31) / 32)) * 4;  // histogram, penalty bitmap
  CUDA_OK(cudaFuncSetAttribute(sample_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
          "sample_rows");
  sample_rows_kernel<<<unsigned(R), kThreads, smem, c.stream>>>(
      out_pd.ptr<float>(), out_tok.ptr<int32_t>(), logits.ptr<const float>(), int(V), int(C),
      a.params.ptr<const float>(), a.drafts.ptr<const int32_t>(), a.uniforms.ptr<const int64_t>(),
      a.pen_off.ptr<const int32_t>(), a.pen_ids.ptr<const int32_t>(), a.pen_val.ptr<const float>(), c.err);
  check_launch("sample_rows");
}

}  // namespace mtpserve::cuda
