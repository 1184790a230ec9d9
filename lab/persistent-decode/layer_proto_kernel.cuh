// The persistent decode kernel of the prototype (layer_proto.cu describes it).
#pragma once
#include "layer_proto_common.cuh"

struct Params {
  const LayerW* layers;
  Bufs b;
  int L, ns, inflight;  // ring slots; copies in flight at most (the rest of the ring fills as they land)
  bool deps;      // false: stream and compute the tiles only (no waits, no attention), the bandwidth baseline
  bool dynamic;   // tiles grabbed through per-(layer, stage) counters instead of c, c + G, ...
  long long* tt;  // [G][2 stages: QKV, O][3 tiles][5] for layer L / 2: entered, data, sums, release, epilogue
  long long* ts;  // [G][NSTAGE][4] for layer L / 2: stage entered, inputs ready, prep done, tiles done
};

// The 256 consumer threads' barrier (named barrier 1: the producer warp does not take part).
__device__ __forceinline__ void csync() { asm volatile("bar.sync 1, %0;" ::"n"(THREADS) : "memory"); }
__device__ inline uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
__device__ inline unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ inline bool mbar_try(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
               : "=r"(ok)
               : "r"(bar), "r"(parity)
               : "memory");
  return ok;
}
// The consumers' wait for a slot's tag or data; after ~2^26 polls it reports where it hangs and traps.
__device__ void mbar_wait(uint32_t bar, uint32_t parity, const char* what, int layer, int s, int j) {
  for (long long spins = 0; !mbar_try(bar, parity);)
    if (++spins == (1ll << 26)) {
      printf("%s wait stuck: cta %d layer %d stage %d slot sequence %d\n", what, blockIdx.x, layer, s, j);
      __trap();
    }
}
__device__ inline void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
}

// A tile's identity, written by the producer warp into tags[slot] before its data lands: layer, stage, tile.
__device__ __forceinline__ uint32_t pack_tag(int layer, int s, int tile) {
  return (uint32_t(layer) << 24) | (uint32_t(s) << 16) | uint32_t(tile);
}

// The producer warp (lane 0): grabs this CTA's next tiles stage by stage, layer by layer, and copies each
// into the next free slot (cp.async.bulk; `full` completes when its bytes land), after publishing its tag
// (`tagb`). Static: tiles c, c + G, ... of each stage. Dynamic: the next tile of the stage's grab counter, so
// CTAs that stream faster take more tiles (a stage ends when its slowest CTA does: with static shares the GU
// stage's CTAs finished 9 us apart). After the last tile, a tag of layer L ends the consumer's last stage.
__device__ void producer(const Params& p, unsigned char* slots, uint64_t* full, uint64_t* empty,
                         uint64_t* tagb, uint32_t* tags) {
  const int c = blockIdx.x, G = gridDim.x, ns = p.ns;
  int j = 0;
  auto next_slot = [&]() {
    const int slot = j % ns;
    if (j >= ns)  // wait until the consumer released the slot's previous tile
      while (!mbar_try(smem_addr(&empty[slot]), ((j / ns) + 1) & 1)) {
      }
    return slot;
  };
  for (int layer = 0; layer < p.L; layer++)
    for (int s = 0; s < NSTAGE; s++) {
      if (s == S_ATT) continue;
      for (int r = 0;; r++) {
        // Dynamic: tile c first (every CTA holds a tile of each large stage, so no CTA can fall a layer
        // behind the buffers it reads: they are reused every layer), then the stage's grab counter from G on.
        const int tile = !p.dynamic || (r == 0 && NTILE[s] >= G)
                             ? c + r * G
                             : int(atomicAdd(p.b.grab + layer * NSTAGE + s, 1u)) + (NTILE[s] >= G ? G : 0);
        if (tile >= NTILE[s]) break;
        const int slot = next_slot();
        if (j >= p.inflight) {  // at most `inflight` copies outstanding: deep queues make every hop slower
          const int k = j - p.inflight;
          while (!mbar_try(smem_addr(&full[k % ns]), (k / ns) & 1)) {
          }
        }
        tags[slot] = pack_tag(layer, s, tile);
        asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(&tagb[slot])) : "memory");
        const bf16* base = WBASE + layer * LSTRIDE + WOFF[s];
        const uint32_t dst = smem_addr(slots + size_t(slot) * SLOT), bar = smem_addr(&full[slot]);
        const uint32_t row_bytes = uint32_t(KLEN[s]) * 2;
        if (s == S_GU) {  // the gate rows, then the matching up rows
          const int half = ROWS[s] / 2;
          const uint32_t bytes = half * row_bytes;
          asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(2 * bytes)
                       : "memory");
          bulk_copy(dst, base + size_t(tile) * half * KLEN[s], bytes, bar);
          bulk_copy(dst + bytes, base + (size_t(FF) + size_t(tile) * half) * KLEN[s], bytes, bar);
        } else {
          const uint32_t bytes = ROWS[s] * row_bytes;
          asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                       : "memory");
          bulk_copy(dst, base + size_t(tile) * ROWS[s] * KLEN[s], bytes, bar);
        }
        j++;
      }
    }
  const int slot = next_slot();
  tags[slot] = pack_tag(p.L, 0, 0);
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(&tagb[slot])) : "memory");
}

__device__ float block_sum(float v, float* red) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
  csync();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  csync();
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < NW; w++) t += red[w];
  return t;
}
// h += rms(v) (v in global, from other CTAs) when v; then x = rms(h).
__device__ void prep_residual(float* h, const float* v, float* x, float* red) {
  if (v) {
    float t[H / THREADS], s = 0.f;
#pragma unroll
    for (int k = 0; k < H / THREADS; k++)
      t[k] = __ldcg(v + threadIdx.x + k * THREADS);  // all loads in flight
#pragma unroll
    for (int k = 0; k < H / THREADS; k++) {
      x[threadIdx.x + k * THREADS] = t[k];
      s += t[k] * t[k];
    }
    const float sv = rsqrtf(block_sum(s, red) / H + 1e-6f);
    for (int i = threadIdx.x; i < H; i += THREADS) h[i] += x[i] * sv;
  }
  float s = 0.f;
  for (int i = threadIdx.x; i < H; i += THREADS) s += h[i] * h[i];
  const float sh = rsqrtf(block_sum(s, red) / H + 1e-6f);
  for (int i = threadIdx.x; i < H; i += THREADS) x[i] = h[i] * sh;
  csync();
}

__device__ inline long long now_ns() {
  long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

__device__ void wait_count(const unsigned* c, unsigned target) {
  if (threadIdx.x == 0) {
    long long spins = 0;
    while (ld_acquire(c) < target)
      if (++spins == (1ll << 26)) {
        printf("wait_count stuck: cta %d counter %u < %u\n", blockIdx.x, ld_acquire(c), target);
        __trap();
      }
  }
  csync();  // the acquire by thread 0 and the barrier order every thread's later reads
}
__device__ bool g_relaxed;  // timing experiment only: a relaxed add orders nothing, results may be wrong
__device__ void signal(unsigned* c, unsigned n) {
  csync();  // every thread's writes, then one release add (cumulative over them) by thread 0
  if (threadIdx.x == 0 && n) {
    if (g_relaxed)
      asm volatile("red.relaxed.gpu.global.add.u32 [%0], %1;" ::"l"(c), "r"(n) : "memory");
    else
      asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(c), "r"(n) : "memory");
  }
}

// One (KV head, split) task: 4 q heads over CHUNK cached keys (+ the new key in the last split). Warp w owns
// keys w * 8 .. w * 8 + 7 of the chunk, lane the dims 8 * lane .. + 7. The cached K and V rows do not depend
// on this step, so they are loaded into registers before the wait for the q|k|v projection; after it, one
// L2 round trip for q, the math, and one exchange of the per-warp partial sums through shared memory (x).
__device__ void attention_task(const LayerW& w, const Bufs& b, const unsigned* qkv_done, int task, float* sm,
                               float* scratch, long long* ts) {
  const int kh = task / NSPLIT, split = task % NSPLIT, k0 = split * CHUNK;
  const bool has_new = split == NSPLIT - 1;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  static_assert(CHUNK == NW * 8 && THREADS == HD, "key and dim ownership");
  uint4 kr[8], vr[8];
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int64_t off = (int64_t(k0 + warp * 8 + i) * NKV + kh) * HD + 8 * lane;
    kr[i] = *reinterpret_cast<const uint4*>(w.kc + off);
    vr[i] = *reinterpret_cast<const uint4*>(w.vc + off);
  }
  wait_count(qkv_done, NTILE[S_QKV]);
  if (ts) ts[1] = now_ns();
  float* q = sm;           // [4][HD]
  float* kn = q + 4 * HD;  // [HD] new key, normed
  float* vn = kn + HD;     // [HD] new value
  float* sc = vn + HD;     // [4][CHUNK + 1]
  if (warp < 5) {          // warps 0-3: q heads, warp 4: the new key; per-head rms
    const float* src = b.qkv + (warp < 4 ? (kh * 4 + warp) * HD : QD + kh * HD);
    float v[HD / 32], s = 0.f;
#pragma unroll
    for (int i = 0; i < HD / 32; i++) {
      v[i] = __ldcg(src + lane + 32 * i);
      s += v[i] * v[i];
    }
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(~0u, s, o);
    const float r = rsqrtf(s / HD + 1e-6f);
    float* dst = warp < 4 ? q + warp * HD : kn;
#pragma unroll
    for (int i = 0; i < HD / 32; i++) dst[lane + 32 * i] = v[i] * r;
  } else if (warp == 5) {
    for (int i = lane; i < HD; i += 32) vn[i] = __ldcg(b.qkv + QD + NKV * HD + kh * HD + i);
  }
  csync();
  float qf[4][8];
#pragma unroll
  for (int g = 0; g < 4; g++)
#pragma unroll
    for (int i = 0; i < 8; i++) qf[g][i] = q[g * HD + 8 * lane + i];
  auto dot_q = [&](int g, uint4 k) {
    return dot8(k, make_float4(qf[g][0], qf[g][1], qf[g][2], qf[g][3]),
                make_float4(qf[g][4], qf[g][5], qf[g][6], qf[g][7]));
  };
#pragma unroll
  for (int i = 0; i < 8; i++)
#pragma unroll
    for (int g = 0; g < 4; g++) {
      float v = dot_q(g, kr[i]);
      for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
      if (lane == 0) sc[g * (CHUNK + 1) + warp * 8 + i] = v;
    }
  if (has_new && warp == 0)
#pragma unroll
    for (int g = 0; g < 4; g++) {
      float v = 0.f;
#pragma unroll
      for (int i = 0; i < 8; i++) v += qf[g][i] * kn[8 * lane + i];
      for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
      if (lane == 0) sc[g * (CHUNK + 1) + CHUNK] = v;
    }
  csync();
  const int nk = CHUNK + has_new;
  float m[4], l[4];  // every warp computes the heads' max and sum itself: no second exchange
#pragma unroll
  for (int g = 0; g < 4; g++) {
    const float* sg = sc + g * (CHUNK + 1);
    float mx = -INFINITY;
    for (int k = lane; k < nk; k += 32) mx = fmaxf(mx, sg[k]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(~0u, mx, o));
    float sum = 0.f;
    for (int k = lane; k < nk; k += 32) sum += __expf(sg[k] - mx);
    for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(~0u, sum, o);
    m[g] = mx;
    l[g] = sum;
  }
  float acc[4][8];
#pragma unroll
  for (int g = 0; g < 4; g++)
#pragma unroll
    for (int i = 0; i < 8; i++) acc[g][i] = 0.f;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const uint4 v = vr[i];
    const float vf[8] = {__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u),
                         __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u),
                         __uint_as_float(v.z << 16), __uint_as_float(v.z & 0xffff0000u),
                         __uint_as_float(v.w << 16), __uint_as_float(v.w & 0xffff0000u)};
#pragma unroll
    for (int g = 0; g < 4; g++) {
      const float pg = __expf(sc[g * (CHUNK + 1) + warp * 8 + i] - m[g]);
#pragma unroll
      for (int e = 0; e < 8; e++) acc[g][e] += pg * vf[e];
    }
  }
#pragma unroll
  for (int g = 0; g < 4; g++)
#pragma unroll
    for (int e = 0; e < 8; e++) scratch[(warp * 4 + g) * HD + 8 * lane + e] = acc[g][e];
  csync();
  const int d = threadIdx.x;  // THREADS == HD
#pragma unroll
  for (int g = 0; g < 4; g++) {
    float A = 0.f;
#pragma unroll
    for (int ww = 0; ww < NW; ww++) A += scratch[(ww * 4 + g) * HD + d];
    if (has_new) A += __expf(sc[g * (CHUNK + 1) + CHUNK] - m[g]) * vn[d];
    b.att_acc[(task * 4 + g) * HD + d] = A;
  }
  if (d < 4) {
    b.att_ml[task * 8 + 2 * d] = m[d];
    b.att_ml[task * 8 + 2 * d + 1] = l[d];
  }
}

// o[j][d] for the 8 q heads from the NSPLIT partials of their KV head, into x[QD]. Every load is issued
// before any is used: these are L2 round trips on the critical path.
__device__ void prep_merge(const Bufs& b, float* x, float* mlw) {
  const int d = threadIdx.x;
  if (d < NATT * 8) mlw[d] = __ldcg(b.att_ml + d);
  float acc[NQ][NSPLIT];
#pragma unroll
  for (int j = 0; j < NQ; j++)
#pragma unroll
    for (int sp = 0; sp < NSPLIT; sp++)
      acc[j][sp] = __ldcg(b.att_acc + (((j / 4) * NSPLIT + sp) * 4 + j % 4) * HD + d);
  csync();
#pragma unroll
  for (int j = 0; j < NQ; j++) {
    const float* ml = mlw + (j / 4) * NSPLIT * 8 + 2 * (j % 4);
    float M = -INFINITY;
#pragma unroll
    for (int sp = 0; sp < NSPLIT; sp++) M = fmaxf(M, ml[sp * 8]);
    float A = 0.f, Lsum = 0.f;
#pragma unroll
    for (int sp = 0; sp < NSPLIT; sp++) {
      const float wgt = __expf(ml[sp * 8] - M);
      Lsum += wgt * ml[sp * 8 + 1];
      A += wgt * acc[j][sp];
    }
    x[j * HD + d] = A / Lsum;
  }
  csync();
}

// The dot products of one tile (R rows x K in the slot) with x[K]. R <= 8: the threads split K (chunk of 8
// dims c = t, t + THREADS, ...) so each x chunk is read from shared memory once for all rows (a warp per row
// read x once per row: x is fp32, so the tile's x reads were twice its weight reads, and a tile took ~1.7 us,
// as long as its bytes take to stream); partial sums per (row, warp) go to part[R][NW]. R > 8 (the PLE
// projection, K = 256): a warp per row, the sum in part[r].
// Sums each of the N values of acc over the warp's 32 lanes with N - 1 + log2(32 / N) shuffles instead of
// 5 N: at each step a lane keeps half of its values and sends the other half to its partner. Returns the
// sum of row `row` (every lane of a group of 32 / N lanes holds the same row).
template <int N>
__device__ __forceinline__ float transpose_reduce(float (&acc)[N], int& row) {
  const int lane = threadIdx.x & 31;
  row = 0;
  int off = 16;
#pragma unroll
  for (int n = N; n > 1; n >>= 1, off >>= 1) {
    const bool upper = lane & off;
#pragma unroll
    for (int i = 0; i < n / 2; i++) {
      const float send = upper ? acc[i] : acc[i + n / 2], keep = upper ? acc[i + n / 2] : acc[i];
      acc[i] = keep + __shfl_xor_sync(~0u, send, off);
    }
    if (upper) row += n / 2;
  }
  float v = acc[0];
  for (; off > 0; off >>= 1) v += __shfl_xor_sync(~0u, v, off);
  return v;
}
template <int R>
__device__ void dots_ksplit(const unsigned char* slot, int K, const float* x, float* part) {
  constexpr int RP = R <= 1 ? 1 : R <= 2 ? 2 : R <= 4 ? 4 : 8;  // rows padded to a power of two
  const int chunks = K / 8;
  float acc[RP];
#pragma unroll
  for (int r = 0; r < RP; r++) acc[r] = 0.f;
  for (int c = threadIdx.x; c < chunks; c += THREADS) {
    const float4 x0 = reinterpret_cast<const float4*>(x)[2 * c],
                 x1 = reinterpret_cast<const float4*>(x)[2 * c + 1];
#pragma unroll
    for (int r = 0; r < R; r++)
      acc[r] += dot8(reinterpret_cast<const uint4*>(slot + size_t(r) * K * 2)[c], x0, x1);
  }
  int row;
  const float v = transpose_reduce<RP>(acc, row);
  if ((threadIdx.x & (32 / RP - 1)) == 0 && row < R) part[row * NW + (threadIdx.x >> 5)] = v;
}
__device__ void dots_rows(const unsigned char* slot, int rows, int K, const float* x, float* part) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, chunks = K / 8;
  for (int r = warp; r < rows; r += NW) {
    const uint4* wr = reinterpret_cast<const uint4*>(slot + size_t(r) * K * 2);
    float v = 0.f;
    for (int c = lane; c < chunks; c += 32)
      v += dot8(wr[c], reinterpret_cast<const float4*>(x)[2 * c],
                reinterpret_cast<const float4*>(x)[2 * c + 1]);
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
    if (lane == 0) part[r] = v;
  }
}

__global__ void __launch_bounds__(THREADS + 32, 1) persistent_layers(const Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int c = blockIdx.x, G = gridDim.x, ns = p.ns;
  unsigned char* slots = smem;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + size_t(MAXNS) * SLOT);  // [MAXNS] data landed
  uint64_t* empty = full + MAXNS;                                             // [MAXNS] consumer done
  uint64_t* tagb = empty + MAXNS;                                             // [MAXNS] tag published
  uint32_t* tags = reinterpret_cast<uint32_t*>(tagb + MAXNS);                 // [MAXNS]
  float* h = reinterpret_cast<float*>(tags + 2 * MAXNS);  // [H] this CTA's copy of the residual
  float* x = h + H;                                       // [FF] the current stage's input
  float* red = x + FF;                                    // [32]
  float* parts = red + 32;   // [2][80] by tile parity: a warp may write the next tile's sums while thread t
                             // still reads this tile's
  float* att = parts + 160;  // attention scratch [ATT_SCRATCH]
  if (threadIdx.x == 0) {
    for (int i = 0; i < ns; i++) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&full[i])) : "memory");
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&empty[i])) : "memory");
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&tagb[i])) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x >= THREADS) {  // the producer warp
    if (threadIdx.x == THREADS) producer(p, slots, full, empty, tagb, tags);
    return;
  }
  const Bufs& b = p.b;
  for (int i = threadIdx.x; i < H; i += THREADS) h[i] = b.h_out[i];  // h starts as the input in b.h_out
  csync();
  // The attention tasks go to the last NATT CTAs (static: their inputs come before the wait).
  const int att_task = c - (G - NATT);
  int j = 0;  // the consumer's position in the slot sequence
  for (int layer = 0; layer < p.L; layer++) {
    const LayerW& w = p.layers[layer];
    unsigned* ctr = b.ctr + layer * NSTAGE;
    const unsigned* prev = layer ? b.ctr + (layer - 1) * NSTAGE : nullptr;
    for (int s = 0; s < NSTAGE; s++) {
      long long* ts = p.ts && layer == p.L / 2 && threadIdx.x == 0 ? p.ts + (c * NSTAGE + s) * 4 : nullptr;
      if (ts) ts[0] = now_ns();
      if (s == S_ATT) {
        if (p.deps && att_task >= 0) {
          attention_task(w, b, ctr + S_QKV, att_task, att, x, ts);
          if (ts) ts[2] = ts[3] = now_ns();
          signal(ctr + S_ATT, 1);
        }
        continue;
      }
      // Wait for this stage's inputs (the previous stage's counter; QKV: the previous layer's PLE
      // projection), then build x.
      if (p.deps) {
        const unsigned* dep = s == S_QKV ? (prev ? prev + S_PP : nullptr) : ctr + (s - 1);
        if (dep) wait_count(dep, NTILE[s == S_QKV ? S_PP : s - 1]);
        if (ts) ts[1] = now_ns();
        switch (s) {
          case S_QKV:
            prep_residual(h, prev ? b.pp : nullptr, x, red);
            break;
          case S_O:
            prep_merge(b, x, att);
            break;
          case S_GU:
            prep_residual(h, b.ao, x, red);
            break;
          case S_D:
            for (int i0 = 0; i0 < FF; i0 += 8 * THREADS) {
              float t[8];
#pragma unroll
              for (int k = 0; k < 8; k++) t[k] = __ldcg(b.a + i0 + k * THREADS + threadIdx.x);
#pragma unroll
              for (int k = 0; k < 8; k++) x[i0 + k * THREADS + threadIdx.x] = t[k];
            }
            csync();
            break;
          case S_PG:
            prep_residual(h, b.d, x, red);
            break;
          case S_PP:
            x[threadIdx.x] = __ldcg(b.g + threadIdx.x);  // THREADS == PLE
            csync();
            break;
        }
      }
      if (ts) ts[2] = now_ns();
      const uint32_t want = pack_tag(layer, s, 0) >> 16;
      int ntiles = 0;
      for (;; j++, ntiles++) {
        const int slot = j % ns;
        const uint32_t parity = (j / ns) & 1;
        mbar_wait(smem_addr(&tagb[slot]), parity, "tag", layer, s, j);
        const uint32_t slot_tag = tags[slot];
        if ((slot_tag >> 16) != want)
          break;  // the next slot holds a later stage's tile: this stage is done here
        const int tile = int(slot_tag & 0xffffu);
        long long* tt = ts && p.tt && (s == S_QKV || s == S_O) && ntiles < 3
                            ? p.tt + ((c * 2 + (s == S_O)) * 3 + ntiles) * 5
                            : nullptr;
        if (tt) tt[0] = now_ns();
        mbar_wait(smem_addr(&full[slot]), parity, "data", layer, s, j);
        if (tt) tt[1] = now_ns();
        float* part = parts + (j & 1) * 80;
        const unsigned char* tw = slots + size_t(slot) * SLOT;
        const int R = ROWS[s];
        switch (R) {
          case 1:
            dots_ksplit<1>(tw, KLEN[s], x, part);
            break;
          case 2:
            dots_ksplit<2>(tw, KLEN[s], x, part);
            break;
          case 4:
            dots_ksplit<4>(tw, KLEN[s], x, part);
            break;
          case 5:
            dots_ksplit<5>(tw, KLEN[s], x, part);
            break;
          case 8:
            dots_ksplit<8>(tw, KLEN[s], x, part);
            break;
          default:
            dots_rows(tw, R, KLEN[s], x, part);
        }
        csync();  // every consumer thread is done with the slot
        if (tt) tt[2] = now_ns();
        if (threadIdx.x == 0)
          asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(&empty[slot])) : "memory");
        if (tt) tt[3] = now_ns();
        const int t = threadIdx.x;
        auto out = [&](int r) {
          if (R > 8) return part[r];
          float v = 0.f;
#pragma unroll
          for (int i = 0; i < NW; i++) v += part[r * NW + i];
          return v;
        };
        switch (s) {
          case S_QKV:
            if (t < R) b.qkv[tile * R + t] = out(t);
            break;
          case S_O:
            if (t < R) b.ao[tile * R + t] = out(t);
            break;
          case S_GU:
            if (t < R / 2) b.a[tile * (R / 2) + t] = gelu(out(t)) * out(R / 2 + t);
            break;
          case S_D:
            if (t < R) b.d[tile * R + t] = out(t);
            break;
          case S_PG:
            if (t < R) b.g[tile * R + t] = gelu(out(t)) * w.ple_in[tile * R + t];
            break;
          case S_PP:
            if (t < R) b.pp[tile * R + t] = out(t);
            break;
        }
        if (tt) tt[4] = now_ns();
      }
      if (ts) ts[3] = now_ns();
      if (p.deps) signal(ctr + s, ntiles);
    }
  }
  if (p.deps) {  // the final residual: h += rms(pp) of the last layer, written by CTA 0
    wait_count(b.ctr + (p.L - 1) * NSTAGE + S_PP, NTILE[S_PP]);
    prep_residual(h, b.pp, x, red);
    if (c == 0)
      for (int i = threadIdx.x; i < H; i += THREADS) b.h_out[i] = h[i];
  }
}
