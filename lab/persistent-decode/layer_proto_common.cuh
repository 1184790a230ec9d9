// Shapes, tiles, buffers and small math shared by the persistent-kernel prototype (layer_proto.cu) and its
// reference kernels. See layer_proto.cu.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define CK(x)                                                                         \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

using bf16 = unsigned short;  // raw bf16 bits; converted by hand so the file needs no cuda_bf16.h

constexpr int H = 2560, NQ = 8, NKV = 2, HD = 256, QKV = (NQ + 2 * NKV) * HD, QD = NQ * HD, FF = 10240,
              PLE = 256, KEYS = 512, NSPLIT = 8, CHUNK = KEYS / NSPLIT, NATT = NKV * NSPLIT;
#ifndef TILE_KB
#define TILE_KB 40  // weight tile size: 40 or 20 KB (20: the consumer's per-tile cost dominates)
#endif
constexpr int ATT_SCRATCH = 4 * 256 + 2 * 256 + 4 * 65 + 8;
constexpr int THREADS = 256, NW = THREADS / 32, SLOT = TILE_KB * 1024, MAXNS = 160 / TILE_KB;
enum Stage { S_QKV, S_ATT, S_O, S_GU, S_D, S_PG, S_PP, NSTAGE };
// Tiles of the streaming stages: rows per tile, row length, tile count.
#if TILE_KB == 40
__constant__ const int ROWS[NSTAGE] = {8, 0, 8, 8, 2, 2, 20};
__constant__ const int KLEN[NSTAGE] = {H, 0, QD, H, FF, H, PLE};
__constant__ const int NTILE[NSTAGE] = {QKV / 8, NATT, H / 8, FF / 4, H / 2, PLE / 2, H / 20};
#elif TILE_KB == 20
__constant__ const int ROWS[NSTAGE] = {4, 0, 5, 4, 1, 2, 20};
__constant__ const int KLEN[NSTAGE] = {H, 0, QD, H, FF, H, PLE};
__constant__ const int NTILE[NSTAGE] = {QKV / 4, NATT, H / 5, FF / 2, H, PLE / 2, H / 20};
#endif
// Where each layer's projections lie: layer l's stage s starts at WBASE + l * LSTRIDE + WOFF[s] (kernel
// constants, so issuing a copy reads no global memory: a LayerW load from global cost ~0.5 us per tile).
__constant__ const bf16* WBASE;
__constant__ size_t LSTRIDE;
__constant__ size_t WOFF[NSTAGE];

struct LayerW {                                      // device pointers of one layer
  const bf16 *qkv, *o, *gu, *d, *pg, *pp, *kc, *vc;  // gu: gate rows then up rows; kc/vc [KEYS][NKV][HD]
  const float* ple_in;                               // [PLE]
};
// Activations passed between CTAs (fp32). A stage's readers wait for its counter (ctr) to reach its tile
// count: each CTA adds its tiles with one release add after its stores, readers poll with acquire loads.
struct Bufs {
  float *qkv, *ao, *a, *d, *g, *pp;
  float *att_acc, *att_ml, *h_out;
  unsigned* ctr;   // [L][NSTAGE] tiles done
  unsigned* grab;  // [L][NSTAGE] tiles taken (dynamic mode)
};

__host__ __device__ inline float bf2f(bf16 v) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(unsigned(v) << 16);
#else
  unsigned u = unsigned(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
__device__ inline float dot8(uint4 w, float4 x0, float4 x1) {
  return __uint_as_float(w.x << 16) * x0.x + __uint_as_float(w.x & 0xffff0000u) * x0.y +
         __uint_as_float(w.y << 16) * x0.z + __uint_as_float(w.y & 0xffff0000u) * x0.w +
         __uint_as_float(w.z << 16) * x1.x + __uint_as_float(w.z & 0xffff0000u) * x1.y +
         __uint_as_float(w.w << 16) * x1.z + __uint_as_float(w.w & 0xffff0000u) * x1.w;
}
__device__ inline float gelu(float x) {
  return 0.5f * x * (1.f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
}
