// Does a persistent decode kernel hide the weight stream during an E4B layer's dependent hops? A prototype of
// lab/persistent-decode/README.md's design on the E4B sliding layer's shapes at batch 1, with the real math,
// timed over 42 layers and checked against plain one-op-per-kernel reference kernels (README has the
// results).
//
// One CTA per SM (cooperative launch): 256 consumer threads and one producer warp. The layer's projections
// are cut into ~40 KB row tiles. The producer warp copies this CTA's next tiles with cp.async.bulk (TMA) into
// a ring of shared-memory slots, across stage and layer boundaries, publishing each slot's (layer, stage,
// tile) tag before its data lands. So while the consumers wait for a stage's inputs (a dependent hop), the
// ring fills with the next weights and the HBM keeps streaming until ~ring x 132 bytes are in shared memory.
// Tiles are static (c, c + G, ...) or dynamic (tile c, then a per-stage grab counter: faster CTAs take more).
//
// Stages per layer (E4B sliding layer, hidden 2560, 8 q heads / 2 KV heads of 256, MLP 10240, PLE 256):
//   QKV  qkv = Wqkv . rms(h)                    3072 x 2560   384 tiles of 8 rows
//   ATT  per (KV head, split of 64 keys): 4 q heads over 512 cached keys (+ the new key in the last split)
//   O    ao = Wo . merge(ATT partials)          2560 x 2048   320 tiles of 8 rows; merge folded into prep
//   GU   a = gelu(Wg . x) * (Wu . x), x = rms(h += rms(ao))   2 x 10240 x 2560   2560 tiles of 4+4 rows
//   D    d = Wd . a                             2560 x 10240  1280 tiles of 2 rows
//   PG   g = gelu(Wpg . rms(h += rms(d))) * ple_in            256 x 2560    128 tiles of 2 rows
//   PP   pp = Wpp . g; the next layer's prep adds rms(pp)    2560 x 256    128 tiles of 20 rows
// Dependencies are per-(layer, stage) counters in global memory (release add / acquire poll). Every CTA keeps
// its own copy of the residual h in shared memory and folds the residual adds and norms into the prep of the
// stage that consumes them (README: "norms folded into their consumers"), so no stage exists only for a norm.
// Left out (they change the attention task's work, not the structure): RoPE, the per-head k/v norms, the KV
// write, global layers (D = 512, all keys), the layer scalar, paging.
//
//   nvcc -O3 -arch=sm_90a -std=c++17 -o layer_proto layer_proto.cu && ./layer_proto [layers]
//   environment: INFLIGHT=n (copies in flight per CTA for the timeline run), QUICK=1 (fewer configurations),
//   STATIC=1 (timeline with static tiles), RELAXED=1 (time relaxed instead of release adds: timing only)
#include <algorithm>
#include <vector>

#include "layer_proto_common.cuh"
#include "layer_proto_kernel.cuh"
#include "layer_proto_ref.cuh"

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  const int L = argc > 1 ? std::atoi(argv[1]) : 42;
  int nsm = 0;
  CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
  const size_t layer_elems[] = {size_t(QKV) * H,         size_t(H) * QD,         size_t(2) * FF * H,
                                size_t(H) * FF,          size_t(PLE) * H,        size_t(H) * PLE,
                                size_t(KEYS) * NKV * HD, size_t(KEYS) * NKV * HD};
  const int kdim[] = {H, QD, H, FF, H, PLE, 1, 1};
  size_t per_layer = 0, weight_bytes = 0;  // weight_bytes: what a layer reads, weights and the 512 keys
  for (int i = 0; i < 8; i++) per_layer += layer_elems[i];
  for (int i = 0; i < 8; i++) weight_bytes += layer_elems[i] * 2;
  bf16* wbuf;
  CK(cudaMalloc(&wbuf, per_layer * L * 2));
  float* ple;
  CK(cudaMalloc(&ple, size_t(L) * PLE * 4));
  std::vector<LayerW> lw(L);
  size_t off = 0;
  for (int l = 0; l < L; l++) {
    const bf16* ptr[8];
    for (int i = 0; i < 8; i++) {
      const float scale = i < 6 ? std::sqrt(3.f / kdim[i]) : 1.f;
      fill_bf16<<<1024, 256>>>(wbuf + off, layer_elems[i], scale, 977u * l + 31u * i + 7u);
      ptr[i] = wbuf + off;
      off += layer_elems[i];
    }
    lw[l] = {ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], ptr[5], ptr[6], ptr[7], ple + size_t(l) * PLE};
  }
  {
    const bf16* base = wbuf;
    const size_t stride = per_layer;
    size_t woff[NSTAGE] = {0, 0, 0, 0, 0, 0, 0}, o = 0;
    const int stage_of[6] = {S_QKV, S_O, S_GU, S_D, S_PG, S_PP};
    for (int i = 0; i < 6; i++) woff[stage_of[i]] = o, o += layer_elems[i];
    CK(cudaMemcpyToSymbol(WBASE, &base, sizeof(base)));
    CK(cudaMemcpyToSymbol(LSTRIDE, &stride, sizeof(stride)));
    CK(cudaMemcpyToSymbol(WOFF, woff, sizeof(woff)));
  }
  std::vector<float> host_ple(size_t(L) * PLE), h0(H);
  for (size_t i = 0; i < host_ple.size(); i++) host_ple[i] = std::sin(0.37f * i) + 0.5f;
  for (int i = 0; i < H; i++) h0[i] = std::cos(0.11f * i) * 2.f;
  CK(cudaMemcpy(ple, host_ple.data(), host_ple.size() * 4, cudaMemcpyHostToDevice));
  LayerW* dlw;
  CK(cudaMalloc(&dlw, sizeof(LayerW) * L));
  CK(cudaMemcpy(dlw, lw.data(), sizeof(LayerW) * L, cudaMemcpyHostToDevice));
  Bufs b{};
  float* fb;
  const size_t nf = 2 * (QKV + H + FF + H + PLE + H) + NATT * 4 * HD + NATT * 8 + H + 2 * FF + H;
  CK(cudaMalloc(&fb, nf * 4));
  CK(cudaMemset(fb, 0, nf * 4));
  float* q = fb;
  // The projections' outputs: the persistent kernel's (b) and the reference's (rb).
  auto carve = [&q](float*& qkv, float*& ao, float*& a, float*& d, float*& g, float*& pp) {
    qkv = q, q += QKV;
    ao = q, q += H;
    a = q, q += FF;
    d = q, q += H;
    g = q, q += PLE;
    pp = q, q += H;
  };
  struct {
    float *qkv, *ao, *a, *d, *g, *pp;
  } rb;
  carve(b.qkv, b.ao, b.a, b.d, b.g, b.pp);
  carve(rb.qkv, rb.ao, rb.a, rb.d, rb.g, rb.pp);
  b.att_acc = q, q += NATT * 4 * HD;
  b.att_ml = q, q += NATT * 8;
  b.h_out = q, q += H;
  float* gu = q;  // reference scratch [2 FF]
  q += 2 * FF;
  float* xr = q;  // [H]
  CK(cudaMalloc(&b.ctr, size_t(L) * NSTAGE * 4 * 2));
  b.grab = b.ctr + size_t(L) * NSTAGE;

  // Reference.
  float *href, *oref;
  CK(cudaMalloc(&href, H * 4));
  CK(cudaMalloc(&oref, QD * 4));
  CK(cudaMemcpy(href, h0.data(), H * 4, cudaMemcpyHostToDevice));
  for (int l = 0; l < L; l++) {
    const LayerW& w = lw[l];
    ref_rms_add<<<1, 256>>>(href, l ? rb.pp : nullptr, xr);
    ref_gemv<<<QKV / 8, 256>>>(w.qkv, xr, rb.qkv, QKV, H);
    ref_attention<<<NQ, HD>>>(rb.qkv, w.kc, w.vc, oref);
    ref_gemv<<<H / 8, 256>>>(w.o, oref, rb.ao, H, QD);
    ref_rms_add<<<1, 256>>>(href, rb.ao, xr);
    ref_gemv<<<2 * FF / 8, 256>>>(w.gu, xr, gu, 2 * FF, H);
    ref_gelu_mul<<<FF / 256, 256>>>(gu, nullptr, rb.a, FF);
    ref_gemv<<<H / 8, 256>>>(w.d, rb.a, rb.d, H, FF);
    ref_rms_add<<<1, 256>>>(href, rb.d, xr);
    ref_gemv<<<PLE / 8, 256>>>(w.pg, xr, gu, PLE, H);
    ref_gelu_mul<<<1, PLE>>>(gu, w.ple_in, rb.g, PLE);
    ref_gemv<<<H / 8, 256>>>(w.pp, rb.g, rb.pp, H, PLE);
  }
  ref_rms_add<<<1, 256>>>(href, rb.pp, xr);
  CK(cudaDeviceSynchronize());
  std::vector<float> hr(H), hp(H), hp2(H);
  CK(cudaMemcpy(hr.data(), href, H * 4, cudaMemcpyDeviceToHost));

  const size_t smem = size_t(MAXNS) * SLOT + MAXNS * (3 * 8 + 2 * 4) + (H + FF + 32 + 160 + ATT_SCRATCH) * 4;
  CK(cudaFuncSetAttribute(persistent_layers, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_layers, THREADS + 32, smem));
  std::printf(
      "tiles of %d KB, E4B sliding layer x %d, %.1f MB of weights and keys per layer, %d SMs, %d CTA/SM, %zu "
      "B smem\n",
      TILE_KB, L, weight_bytes / 1e6, nsm, per_sm, smem);
  long long* dts;
  CK(cudaMalloc(&dts, size_t(nsm) * NSTAGE * 4 * 8));
  long long* dtt;
  CK(cudaMalloc(&dtt, size_t(nsm) * 30 * 8));
  int inflight = MAXNS;
  auto launch = [&](int ns, bool deps, bool dynamic, long long* ts = nullptr) {
    Params p{dlw, b, L, ns, std::min(ns, inflight), deps, dynamic, dtt, ts};
    CK(cudaMemcpyAsync(b.h_out, h0.data(), H * 4, cudaMemcpyHostToDevice));
    CK(cudaMemsetAsync(b.ctr, 0, size_t(L) * NSTAGE * 4 * 2));
    void* args[] = {&p};
    CK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(persistent_layers), dim3(nsm), dim3(THREADS + 32),
                                   args, smem, 0));
  };
  // Correctness: against the reference, and bit for bit between two runs.
  int bad = 0;
  for (int mode = 0; mode < 4; mode++) {
    const int ns = mode & 1 ? 1 : MAXNS;
    const bool dyn = mode & 2;
    launch(ns, true, dyn);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(hp.data(), b.h_out, H * 4, cudaMemcpyDeviceToHost));
    launch(ns, true, dyn);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(hp2.data(), b.h_out, H * 4, cudaMemcpyDeviceToHost));
    double md = 0, mh = 0;
    for (int i = 0; i < H; i++) {
      md = std::fmax(md, std::fabs(double(hp[i]) - hr[i]));
      mh = std::fmax(mh, std::fabs(double(hr[i])));
    }
    const bool same = std::memcmp(hp.data(), hp2.data(), H * 4) == 0;
    std::printf("ns=%d %s: max |h - h_ref| = %.3g (max |h_ref| %.3g), repeat bit-identical: %s\n", ns,
                dyn ? "dynamic" : "static", md, mh, same ? "yes" : "NO");
    if (!(md <= 1e-3 * mh) || !same) bad = 1;
  }
  // Copy bandwidth (read + write) for the roofline.
  void *ca, *cb;
  const size_t cbytes = size_t(1) << 30;
  CK(cudaMalloc(&ca, cbytes));
  CK(cudaMalloc(&cb, cbytes));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaMemcpy(cb, ca, cbytes, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e0));
  for (int r = 0; r < 10; r++) CK(cudaMemcpyAsync(cb, ca, cbytes, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  const double copy_gbs = 2.0 * cbytes * 10 / (ms * 1e-3) / 1e9;
  const double roof_us = weight_bytes / (copy_gbs * 1e3);
  std::printf("copy bandwidth %.0f GB/s -> %.1f us per layer of bytes\n", copy_gbs, roof_us);
  auto timed = [&](int ns, bool deps, bool dyn) {
    launch(ns, deps, dyn);
    const int reps = 10;
    CK(cudaEventRecord(e0));
    for (int r = 0; r < reps; r++) launch(ns, deps, dyn);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    CK(cudaGetLastError());
    CK(cudaEventElapsedTime(&ms, e0, e1));
    const double us = ms * 1e3 / reps / L;
    const double step_ms = us * 42 / 1e3 + 0.475;
    std::printf("%4d %6s %8s %12.1f %10.0f %7.1f%%  %.2f ms = %.1f%% of the 3.10 ms roof\n", ns,
                deps ? "yes" : "no", dyn ? "dynamic" : "static", us, weight_bytes / (us * 1e3),
                100.0 * roof_us / us, step_ms, 100.0 * 3.10 / step_ms);
  };
  std::printf("%4s %6s %8s %12s %10s %8s  %s\n", "ns", "deps", "tiles", "us/layer", "GB/s", "% copy",
              "E4B step (+0.475 ms head)");
  const bool quick = std::getenv("QUICK") != nullptr;
  std::printf("in flight: all ring slots\n");
  for (int ns : {MAXNS, MAXNS / 2})
    if (!quick)
      for (bool dyn : {false, true})
        for (bool deps : {false, true}) timed(ns, deps, dyn);
  for (int f : {1, 2, 3, 4, 6}) {
    if (f >= MAXNS || (quick && f > 1)) continue;
    inflight = f;
    std::printf("in flight: at most %d of %d slots\n", f, MAXNS);
    for (bool dyn : {false, true})
      for (bool deps : {false, true}) timed(MAXNS, deps, dyn);
  }
  inflight = std::getenv("INFLIGHT") ? std::atoi(std::getenv("INFLIGHT")) : MAXNS;
  if (std::getenv("RELAXED")) {  // what the release costs: time with relaxed adds (no ordering: timing only)
    const bool t = true;
    CK(cudaMemcpyToSymbol(g_relaxed, &t, 1));
    std::printf("RELAXED (timing only):\n");
    for (int f : {1, MAXNS}) {
      inflight = f;
      timed(MAXNS, true, true);
    }
    launch(MAXNS, true, true);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(hp2.data(), b.h_out, H * 4, cudaMemcpyDeviceToHost));
    std::printf("relaxed result %s\n", std::memcmp(hp.data(), hp2.data(), H * 4) ? "differs" : "same");
  }
  // Where a middle layer's time goes: per stage, over the CTAs, when each phase ended (us from the layer's
  // first QKV entry). ATT rows are the NATT attention CTAs only.
  CK(cudaMemset(dts, 0, size_t(nsm) * NSTAGE * 4 * 8));
  CK(cudaMemset(dtt, 0, size_t(nsm) * 30 * 8));
  const bool dyn_ts = std::getenv("STATIC") == nullptr;
  launch(MAXNS, true, dyn_ts, dts);
  CK(cudaDeviceSynchronize());
  std::vector<long long> ts(size_t(nsm) * NSTAGE * 4);
  CK(cudaMemcpy(ts.data(), dts, ts.size() * 8, cudaMemcpyDeviceToHost));
  long long t0 = ts[S_QKV * 4];
  for (int c = 0; c < nsm; c++) t0 = std::min(t0, ts[(c * NSTAGE + S_QKV) * 4]);
  const char* names[NSTAGE] = {"QKV", "ATT", "O", "GU", "D", "PG", "PP"};
  const char* phase[4] = {"entered", "inputs ready", "prep done", "tiles done"};
  std::printf(
      "layer %d, ns=%d, in flight %d, %s tiles: us after the first QKV entry, min / mean / max over CTAs\n",
      L / 2, MAXNS, inflight, dyn_ts ? "dynamic" : "static");
  std::printf("%5s", "stage");
  for (const char* ph : phase) std::printf(" %24s", ph);
  std::printf("\n");
  for (int s = 0; s < NSTAGE; s++) {
    std::printf("%5s", names[s]);
    for (int k = 0; k < 4; k++) {
      double mn = 1e30, mx = -1e30, sum = 0;
      int n = 0;
      for (int c = 0; c < nsm; c++) {
        const long long v = ts[(c * NSTAGE + s) * 4 + k];
        if (v == 0) continue;
        const double us = (v - t0) / 1e3;
        mn = std::min(mn, us), mx = std::max(mx, us), sum += us, n++;
      }
      if (n)
        std::printf(" %8.1f %7.1f %7.1f", mn, sum / n, mx);
      else
        std::printf(" %24s", "-");
    }
    std::printf("\n");
  }
  std::vector<long long> tt(size_t(nsm) * 30);
  CK(cudaMemcpy(tt.data(), dtt, tt.size() * 8, cudaMemcpyDeviceToHost));
  std::printf("per tile, mean over CTAs (us): wait for data, sums, issue, epilogue; then to the next tile\n");
  for (int st = 0; st < 2; st++)
    for (int r = 0; r < 3; r++) {
      double w = 0, d = 0, is = 0, ep = 0, nx = 0;
      int n = 0, nn = 0;
      for (int c = 0; c < nsm; c++) {
        const long long* q = &tt[((c * 2 + st) * 3 + r) * 5];
        if (q[0] == 0 || q[4] == 0) continue;
        w += (q[1] - q[0]) / 1e3, d += (q[2] - q[1]) / 1e3, is += (q[3] - q[2]) / 1e3,
            ep += (q[4] - q[3]) / 1e3, n++;
        if (r < 2 && q[5] != 0) nx += (q[5] - q[4]) / 1e3, nn++;
      }
      if (n)
        std::printf("  %s tile %d: %5.2f %5.2f %5.2f %5.2f; %5.2f (%d CTAs)\n", st ? "O" : "QKV", r, w / n,
                    d / n, is / n, ep / n, nn ? nx / nn : 0.0, n);
    }
  std::printf(bad ? "FAILED\n" : "ok\n");
  return bad;
}
