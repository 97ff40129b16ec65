// Per-tile math of the fused IDA / SFT kernels, shared by the CPU kernels
// (csrc/ida_cpu.cpp: one lane per tile, block_sync() is a no-op) and the CUDA
// kernels (kernels/ida.cu: one thread block per tile, lane = thread, block_sync()
// = __syncthreads()). Everything a phase of a tile needs lives in `buf` (shared
// memory on the GPU), so both devices run exactly the same indexing and math.
//
// Notation (docs/kernels.md §1.1): x [B, C, H, W],
// m [B, Cc, H/2, W/2], Wu [Cc, Cm, 2, 2], Wa [Cm, Cm, 3, 3], Wx [Cm, C, 3, 3],
// Wo [Cm, Co, 2, 2], bo [Co]. For every low-res pixel n = (b, i, j):
//   t  = LReLU_0.1(ConvT2x2s2(m))                (high-res, Cm channels, recomputed)
//   a  = Conv3x3s2(t)[n],  bx = Conv3x3s2(x)[n],  p = a * bx          (Cm values)
//   out[b, :, 2i+p, 2j+q] = bo + sum_k Wo[k, :, p, q] p[k]   (GEMM -> Hadamard -> GEMM)
// The per-pixel kernel K of docs/kernels.md §1.2 is never formed.
//
// A tile is th x tw low-res pixels of one image; their 3x3 stride-2 windows
// cover the high-res "halo" rows 2*i0-1 .. 2*(i0+th)-1 (2*th+1 rows) and likewise
// columns. Work inside a phase is split into register micro-tiles of kPix pixels
// x kVec channels that the lanes take in turn (mt = lane, lane + lanes, ...).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define UDM_HOST_DEVICE __host__ __device__
#else
#define UDM_HOST_DEVICE
#endif

// Inlining (and full unrolling of the fixed-size micro-tile loops) keeps their arrays in registers.
#if defined(__CUDACC__)
#define UDM_FORCE_INLINE __forceinline__
#else
#define UDM_FORCE_INLINE inline
#endif
#if defined(__CUDA_ARCH__)
#define UDM_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define UDM_UNROLL
#else
#define UDM_UNROLL _Pragma("GCC unroll 16")
#endif

namespace udm_fast {
namespace ida {

constexpr int kPix = 4;   // pixels per register micro-tile
constexpr int kVec = 4;   // channels per register micro-tile (one float4 shared-memory load)
constexpr int kTaps = 9;  // 3x3 window
static_assert(kPix == kVec, "dp_chunk loads kPix pixels with the kVec-wide vector load");

UDM_HOST_DEVICE inline int round_up(int v, int m) { return (v + m - 1) / m * m; }
UDM_HOST_DEVICE inline int ceil_div(int v, int m) { return (v + m - 1) / m; }

// Element (b, c, y, x) of a strided 4-D tensor (NCHW, channels_last or any view).
template <typename T>
struct Strided4 {
  T* data;
  int64_t sb, sc, sy, sx;
  UDM_HOST_DEVICE T& operator()(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return data[b * sb + c * sc + y * sy + x * sx];
  }
  // Channels are adjacent in memory (channels_last): fills walk channels first.
  UDM_HOST_DEVICE bool channels_fast() const { return sc == 1; }
};

struct Dims {
  int64_t batch;
  int c, cc, cm, co;  // feature, map, mid and output channels
  int h, w;           // high-res size (even)
  UDM_HOST_DEVICE int hl() const { return h / 2; }
  UDM_HOST_DEVICE int wl() const { return w / 2; }
  UDM_HOST_DEVICE int cm_pad() const { return round_up(cm, kVec); }
};

struct Tiling {
  int th, tw;            // low-res tile rows / columns (th * tw is a multiple of kPix)
  int ch;                // channels per chunk of a K-loop (a multiple of kVec)
  int tiles_h, tiles_w;  // tiles per image
  UDM_HOST_DEVICE int pixels() const { return th * tw; }
  UDM_HOST_DEVICE int halo_h() const { return 2 * th + 1; }
  UDM_HOST_DEVICE int halo_w() const { return 2 * tw + 1; }
  UDM_HOST_DEVICE int64_t count(int64_t batch) const { return batch * tiles_h * tiles_w; }
};

struct TileOrigin {
  int64_t b;
  int i0, j0;  // low-res coordinates of the tile's first pixel
};

UDM_HOST_DEVICE inline TileOrigin tile_origin(const Tiling& t, int64_t index) {
  const int64_t per_image = static_cast<int64_t>(t.tiles_h) * t.tiles_w;
  const int rest = static_cast<int>(index % per_image);
  return {index / per_image, (rest / t.tiles_w) * t.th, (rest % t.tiles_w) * t.tw};
}

// Tile pixel `pix` (row-major in the tile): tile-local and image low-res coordinates.
struct TilePixel {
  int ti, tj, i, j;
  bool valid;  // inside the image (ragged tiles at the bottom / right edge)
};

UDM_HOST_DEVICE inline TilePixel tile_pixel(const Dims& d, const Tiling& t, const TileOrigin& o, int pix) {
  TilePixel p;
  p.ti = pix / t.tw;
  p.tj = pix % t.tw;
  p.i = o.i0 + p.ti;
  p.j = o.j0 + p.tj;
  p.valid = p.i < d.hl() && p.j < d.wl();
  return p;
}

// Splits a flat fill index into (channel, position), channels fastest when the
// source tensor is channels_last (coalesced global reads either way).
UDM_HOST_DEVICE inline void split_fill_index(int e, int channels, int positions, bool channels_fast, int& c, int& pos) {
  if (channels_fast) {
    c = e % channels;
    pos = e / channels;
  } else {
    pos = e % positions;
    c = e / positions;
  }
}

template <typename T>
UDM_HOST_DEVICE inline T leaky(T v, T slope) {
  return v > T(0) ? v : v * slope;
}

template <typename T>
UDM_HOST_DEVICE inline void load_vec(const T* p, T (&v)[kVec]) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<T, float>::value) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x;
    v[1] = f.y;
    v[2] = f.z;
    v[3] = f.w;
  } else
#endif
  {
    UDM_UNROLL
    for (int i = 0; i < kVec; ++i) v[i] = p[i];
  }
}

// Weight-gradient accumulation: fp32 atomics into the global accumulator on the
// GPU; on the CPU every thread owns its accumulator, so a plain add.
template <typename T>
UDM_HOST_DEVICE inline void add_grad(T* p, T v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;
#endif
}

UDM_HOST_DEVICE inline void block_sync() {
#if defined(__CUDA_ARCH__)
  __syncthreads();
#endif
}

// ------------------------------------------------------------------ operands

template <typename scalar_t>
struct IdaInputs {
  Dims d;
  Strided4<const scalar_t> x;  // [B, C, H, W]
  Strided4<const scalar_t> m;  // [B, Cc, H/2, W/2]
  const scalar_t* w_up;        // [Cc, Cm, 2, 2]   contiguous
  const scalar_t* w_map;       // [Cm, Cm, 3, 3]
  const scalar_t* w_x;         // [Cm, C, 3, 3]
  const scalar_t* w_out;       // [Cm, Co, 2, 2]
  const scalar_t* b_out;       // [Co] (forward only)
};

// The SFT layer around the IDA: gamma = w_gamma2 act(w_gamma1 cond), beta = w_beta2 act(w_beta1 [cond; z]),
// out = x * (1 + gamma) + beta + IDA(x, m); act = LeakyReLU(slope) (ReLU: slope 0).
template <typename scalar_t, typename acc_t>
struct SftInputs {
  Strided4<const scalar_t> cond;   // [B, Cc, H, W]
  Strided4<const scalar_t> noise;  // [B, 1, H, W]
  const scalar_t* w_gamma1;        // [Rg, Cc]
  const scalar_t* w_gamma2;        // [C, Rg]
  const scalar_t* w_beta1;         // [Rb, Cc + 1]
  const scalar_t* w_beta2;         // [C, Rb]
  int rd_gamma, rd_beta;
  acc_t slope;
};

// Weight-gradient accumulators (zero-initialised; output channel fastest where
// that makes the per-tile flushes contiguous).
template <typename acc_t>
struct IdaGrads {
  acc_t* w_up;   // [Cc, Cm, 2, 2]   (PyTorch layout)
  acc_t* w_map;  // [Cm_in, 3, 3, Cm_out]
  acc_t* w_x;    // [C, 3, 3, Cm]
  acc_t* w_out;  // [2, 2, Co, Cm]
  acc_t* b_out;  // [Co]
};

// ------------------------------------------------------------- buffer layouts
// Element offsets into `buf`; every buffer starts at a multiple of kVec elements.

UDM_HOST_DEVICE inline int aligned(int n) { return round_up(n, kVec); }

struct ForwardLayout {
  int a, bx, halo, wts, hid_gamma, hid_beta, total;
};

UDM_HOST_DEVICE inline ForwardLayout forward_layout(const Dims& d, const Tiling& t, int rd_gamma, int rd_beta) {
  const int np = t.pixels(), cmp = d.cm_pad();
  ForwardLayout l;
  int at = 0;
  l.a = at;  // [np][cmp]  a, then p = a * bx
  at += aligned(np * cmp);
  l.bx = at;  // [np][cmp]
  at += aligned(np * cmp);
  l.halo = at;  // [ch][halo_h][halo_w]  one channel chunk of x or t
  at += aligned(t.ch * t.halo_h() * t.halo_w());
  l.wts = at;  // [ch][9][cmp]  one input-channel chunk of Wa or Wx
  at += aligned(kTaps * t.ch * cmp);
  l.hid_gamma = at;  // [4 * np][Rg]  act(w_gamma1 cond) per high-res pixel (SFT only)
  at += aligned(4 * np * rd_gamma);
  l.hid_beta = at;  // [4 * np][Rb]
  at += aligned(4 * np * rd_beta);
  l.total = at;
  return l;
}

struct MidLayout {  // backward pass 1: dp, da, dbx and the weight gradients of Wo, bo, Wx, Wa
  int a, bx, dp, halo, wts, grad, total;
};

UDM_HOST_DEVICE inline MidLayout mid_layout(const Dims& d, const Tiling& t) {
  const int np = t.pixels(), cmp = d.cm_pad();
  MidLayout l;
  int at = 0;
  l.a = at;  // [np][cmp]  a, then da
  at += aligned(np * cmp);
  l.bx = at;  // [np][cmp]  bx, then dbx
  at += aligned(np * cmp);
  l.dp = at;  // [np][cmp]
  at += aligned(np * cmp);
  l.halo = at;  // [ch][halo_h][halo_w]
  at += aligned(t.ch * t.halo_h() * t.halo_w());
  l.wts = at;  // [ch][9][cmp] (conv chunk) or [4][ch][cmp] (Wo chunk)
  at += aligned(kTaps * t.ch * cmp);
  l.grad = at;  // [4][ch][np]  one output-channel chunk of dL/dout, by parity
  at += aligned(4 * t.ch * np);
  l.total = at;
  return l;
}

struct DgradLayout {  // backward pass 2: dx, dt -> dm and dWu
  int dbx, da, wts, dt, map, dm, total;
};

UDM_HOST_DEVICE inline DgradLayout dgrad_layout(const Dims& d, const Tiling& t) {
  const int np = t.pixels(), cmp = d.cm_pad(), nh = (t.th + 1) * (t.tw + 1);
  DgradLayout l;
  int at = 0;
  l.dbx = at;  // [(th+1)(tw+1)][cmp]  dbx on the tile plus one low-res row / column
  at += aligned(nh * cmp);
  l.da = at;  // [(th+1)(tw+1)][cmp]
  at += aligned(nh * cmp);
  l.wts = at;  // [9][cmp][ch]  one output-channel chunk of Wx or Wa
  at += aligned(kTaps * cmp * t.ch);
  l.dt = at;  // [4][np][ch]  dL/d(pre-activation of t), by parity
  at += aligned(4 * np * t.ch);
  l.map = at;  // [Cc][np]
  at += aligned(d.cc * np);
  l.dm = at;  // [np][Cc]
  at += aligned(np * d.cc);
  l.total = at;
  return l;
}

enum class Pass { kForward, kBackwardMid, kBackwardDgrad };

UDM_HOST_DEVICE inline int pass_elems(Pass pass, const Dims& d, const Tiling& t, int rd_gamma, int rd_beta) {
  switch (pass) {
    case Pass::kForward:
      return forward_layout(d, t, rd_gamma, rd_beta).total;
    case Pass::kBackwardMid:
      return mid_layout(d, t).total;
    default:
      return dgrad_layout(d, t).total;
  }
}

// The first tile shape whose buffers fit `budget_bytes` and that still yields
// `min_tiles` tiles (bigger tiles re-read less halo and fewer weights); when no
// fitting shape yields enough tiles, the smallest fitting one. th == 0: none fits.
inline Tiling choose_tiling(Pass pass, const Dims& d, int rd_gamma, int rd_beta, int64_t elem_bytes,
                            int64_t budget_bytes, int64_t min_tiles) {
  static constexpr int kCandidates[][3] = {{8, 8, 16}, {8, 8, 8}, {4, 8, 16}, {4, 8, 8},
                                           {4, 4, 8},  {4, 4, 4}, {2, 4, 4},  {2, 2, 4}};
  Tiling chosen{0, 0, 0, 0, 0};
  for (const auto& c : kCandidates) {
    const Tiling t{c[0], c[1], c[2], ceil_div(d.hl(), c[0]), ceil_div(d.wl(), c[1])};
    if (pass_elems(pass, d, t, rd_gamma, rd_beta) * elem_bytes > budget_bytes) continue;
    chosen = t;
    if (t.count(d.batch) >= min_tiles) break;
  }
  return chosen;
}

// -------------------------------------------------------------------- fills

// halo[kc][r][s] = x[b, c0 + kc, 2*i0 - 1 + r, 2*j0 - 1 + s], zero outside the image.
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void fill_x_halo(acc_t* halo, const IdaInputs<scalar_t>& in, const Tiling& t, const TileOrigin& o,
                                 int c0, int lane, int lanes) {
  const int hh = t.halo_h(), hw = t.halo_w(), npos = hh * hw;
  const bool cfast = in.x.channels_fast();
  for (int e = lane; e < t.ch * npos; e += lanes) {
    int kc, pos;
    split_fill_index(e, t.ch, npos, cfast, kc, pos);
    const int y = 2 * o.i0 - 1 + pos / hw, xw = 2 * o.j0 - 1 + pos % hw, c = c0 + kc;
    acc_t v = acc_t(0);
    if (c < in.d.c && y >= 0 && y < in.d.h && xw >= 0 && xw < in.d.w) v = static_cast<acc_t>(in.x(o.b, c, y, xw));
    halo[kc * npos + pos] = v;
  }
}

// halo[kc][r][s] = t[k0 + kc] at high-res (2*i0 - 1 + r, 2*j0 - 1 + s), zero outside
// the image (the 3x3 conv's padding), t = LReLU_0.1(ConvT2x2s2(m)).
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void fill_map_halo(acc_t* halo, const IdaInputs<scalar_t>& in, const Tiling& t, const TileOrigin& o,
                                   int k0, int lane, int lanes) {
  const Dims& d = in.d;
  const int hh = t.halo_h(), hw = t.halo_w(), npos = hh * hw;
  for (int e = lane; e < t.ch * npos; e += lanes) {
    const int kc = e % t.ch, pos = e / t.ch;
    const int y = 2 * o.i0 - 1 + pos / hw, xw = 2 * o.j0 - 1 + pos % hw, k = k0 + kc;
    acc_t v = acc_t(0);
    if (k < d.cm && y >= 0 && y < d.h && xw >= 0 && xw < d.w) {
      const int tap = (y & 1) * 2 + (xw & 1);
      acc_t pre = acc_t(0);
      for (int c = 0; c < d.cc; ++c)
        pre +=
            static_cast<acc_t>(in.m(o.b, c, y >> 1, xw >> 1)) * static_cast<acc_t>(in.w_up[(c * d.cm + k) * 4 + tap]);
      v = leaky(pre, static_cast<acc_t>(0.1));
    }
    halo[kc * npos + pos] = v;
  }
}

// Stages w [Cm, k_in, 3, 3] (channels c0 .. c0 + ch - 1, zero padding to cmp outputs) as
// kConvLayout: wts[kc][tap][k] (forward GEMMs), or kDgradLayout: wts[tap][k][kc] (dgrad GEMMs).
enum WeightLayout { kConvLayout, kDgradLayout };

template <WeightLayout layout, typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void stage_weights(acc_t* wts, const scalar_t* w, int cm, int cmp, int k_in, int c0, int ch, int lane,
                                   int lanes) {
  for (int e = lane; e < kTaps * ch * cmp; e += lanes) {
    const int tap = e % kTaps, kc = (e / kTaps) % ch, k = e / (kTaps * ch);
    const int c = c0 + kc;
    const int dst = layout == kConvLayout ? (kc * kTaps + tap) * cmp + k : (tap * cmp + k) * ch + kc;
    wts[dst] =
        (k < cm && c < k_in) ? static_cast<acc_t>(w[(static_cast<int64_t>(k) * k_in + c) * kTaps + tap]) : acc_t(0);
  }
}

// ------------------------------------------------------------ forward pieces

// acc[pix][k] (+)= sum_{kc, u, v} wts[kc][u*3+v][k] * halo[kc][2*ti+u][2*tj+v]:
// one channel chunk of a 3x3 stride-2 convolution (implicit GEMM).
template <typename acc_t>
UDM_HOST_DEVICE void conv_chunk(acc_t* acc, const acc_t* halo, const acc_t* wts, const Tiling& t, int cmp, bool first,
                                int lane, int lanes) {
  const int np = t.pixels(), n_kg = cmp / kVec, hw = t.halo_w(), npos = t.halo_h() * hw;
  for (int mt = lane; mt < (np / kPix) * n_kg; mt += lanes) {
    const int kg = mt % n_kg, pg = mt / n_kg;
    int base[kPix];
    UDM_UNROLL
    for (int pm = 0; pm < kPix; ++pm) {
      const int pix = pg * kPix + pm;
      base[pm] = 2 * (pix / t.tw) * hw + 2 * (pix % t.tw);
    }
    acc_t s[kPix][kVec] = {};
    for (int kc = 0; kc < t.ch; ++kc) {
      const acc_t* hk = halo + kc * npos;
      const acc_t* wk = wts + kc * kTaps * cmp + kg * kVec;
      UDM_UNROLL
      for (int u = 0; u < 3; ++u) {
        UDM_UNROLL
        for (int v = 0; v < 3; ++v) {
          acc_t wv[kVec];
          load_vec(wk + (u * 3 + v) * cmp, wv);
          UDM_UNROLL
          for (int pm = 0; pm < kPix; ++pm) {
            const acc_t xv = hk[base[pm] + u * hw + v];
            UDM_UNROLL
            for (int q = 0; q < kVec; ++q) s[pm][q] += xv * wv[q];
          }
        }
      }
    }
    UDM_UNROLL
    for (int pm = 0; pm < kPix; ++pm) {
      acc_t* row = acc + (pg * kPix + pm) * cmp + kg * kVec;
      UDM_UNROLL
      for (int q = 0; q < kVec; ++q) row[q] = first ? s[pm][q] : row[q] + s[pm][q];
    }
  }
}

// a = Conv3x3s2(t) into buf_a and bx = Conv3x3s2(x) into buf_bx, [np][cmp]. Ends synced.
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void compute_branches(const IdaInputs<scalar_t>& in, const Tiling& t, const TileOrigin& o, acc_t* buf_a,
                                      acc_t* buf_bx, acc_t* halo, acc_t* wts, int lane, int lanes) {
  const Dims& d = in.d;
  const int cmp = d.cm_pad();
  // an empty reduction still runs one all-zero chunk, which writes the zeros
  for (int k0 = 0; k0 < (d.cm > 0 ? d.cm : 1); k0 += t.ch) {
    stage_weights<kConvLayout>(wts, in.w_map, d.cm, cmp, d.cm, k0, t.ch, lane, lanes);
    fill_map_halo(halo, in, t, o, k0, lane, lanes);
    block_sync();
    conv_chunk(buf_a, halo, wts, t, cmp, k0 == 0, lane, lanes);
    block_sync();
  }
  for (int c0 = 0; c0 < (d.c > 0 ? d.c : 1); c0 += t.ch) {
    stage_weights<kConvLayout>(wts, in.w_x, d.cm, cmp, d.c, c0, t.ch, lane, lanes);
    fill_x_halo(halo, in, t, o, c0, lane, lanes);
    block_sync();
    conv_chunk(buf_bx, halo, wts, t, cmp, c0 == 0, lane, lanes);
    block_sync();
  }
}

// hid[pq * np + pix][r] = act(sum_c w1[r, c] cond[b, c, y, x] (+ w1[r, Cc] noise[b, 0, y, x]))
// at high-res (y, x) = (2i + p, 2j + q), pq = 2p + q; zero for pixels outside the image.
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void fill_hidden(acc_t* hid, int rd, const scalar_t* w1, bool with_noise, const Dims& d,
                                 const SftInputs<scalar_t, acc_t>& sft, const Tiling& t, const TileOrigin& o, int lane,
                                 int lanes) {
  const int np = t.pixels(), cin = d.cc + (with_noise ? 1 : 0);
  for (int e = lane; e < 4 * np * rd; e += lanes) {
    const int r = e % rd, hp = e / rd, pq = hp / np;
    const TilePixel px = tile_pixel(d, t, o, hp % np);
    acc_t v = acc_t(0);
    if (px.valid) {
      const int y = 2 * px.i + (pq >> 1), xw = 2 * px.j + (pq & 1);
      const scalar_t* wr = w1 + static_cast<int64_t>(r) * cin;
      acc_t pre = acc_t(0);
      for (int c = 0; c < d.cc; ++c) pre += static_cast<acc_t>(wr[c]) * static_cast<acc_t>(sft.cond(o.b, c, y, xw));
      if (with_noise) pre += static_cast<acc_t>(wr[d.cc]) * static_cast<acc_t>(sft.noise(o.b, 0, y, xw));
      v = leaky(pre, sft.slope);
    }
    hid[e] = v;
  }
}

// out[b, o, 2i+p, 2j+q] = bo[o] + sum_k Wo[k, o, p, q] prod[pix][k]; for the SFT also
// + x * (1 + w_gamma2 hid_gamma) + w_beta2 hid_beta. Micro-tile: kPix pixels of one parity x kVec channels.
template <typename scalar_t, typename acc_t, bool kSft>
UDM_HOST_DEVICE void output_epilogue(const IdaInputs<scalar_t>& in, const SftInputs<scalar_t, acc_t>& sft,
                                     const Strided4<scalar_t>& out, const Tiling& t, const TileOrigin& o,
                                     const acc_t* prod, const acc_t* hid_gamma, const acc_t* hid_beta, int lane,
                                     int lanes) {
  const Dims& d = in.d;
  const int np = t.pixels(), cmp = d.cm_pad(), n_pg = np / kPix, n_og = ceil_div(d.co, kVec);
  for (int mt = lane; mt < 4 * n_pg * n_og; mt += lanes) {
    const int og = mt % n_og, pg = (mt / n_og) % n_pg, pq = mt / (n_og * n_pg);
    int oc[kVec];
    UDM_UNROLL
    for (int q = 0; q < kVec; ++q) oc[q] = og * kVec + q < d.co ? og * kVec + q : -1;
    acc_t s[kPix][kVec] = {};
    acc_t g[kPix][kVec] = {};
    for (int k = 0; k < d.cm; ++k) {
      acc_t wv[kVec];
      UDM_UNROLL
      for (int q = 0; q < kVec; ++q)
        wv[q] = oc[q] >= 0 ? static_cast<acc_t>(in.w_out[(static_cast<int64_t>(k) * d.co + oc[q]) * 4 + pq]) : acc_t(0);
      UDM_UNROLL
      for (int pm = 0; pm < kPix; ++pm) {
        const acc_t pv = prod[(pg * kPix + pm) * cmp + k];
        UDM_UNROLL
        for (int q = 0; q < kVec; ++q) s[pm][q] += pv * wv[q];
      }
    }
    if constexpr (kSft) {
      for (int r = 0; r < sft.rd_beta; ++r) {
        acc_t wv[kVec];
        UDM_UNROLL
        for (int q = 0; q < kVec; ++q)
          wv[q] =
              oc[q] >= 0 ? static_cast<acc_t>(sft.w_beta2[static_cast<int64_t>(oc[q]) * sft.rd_beta + r]) : acc_t(0);
        UDM_UNROLL
        for (int pm = 0; pm < kPix; ++pm) {
          const acc_t hv = hid_beta[(pq * np + pg * kPix + pm) * sft.rd_beta + r];
          UDM_UNROLL
          for (int q = 0; q < kVec; ++q) s[pm][q] += hv * wv[q];
        }
      }
      for (int r = 0; r < sft.rd_gamma; ++r) {
        acc_t wv[kVec];
        UDM_UNROLL
        for (int q = 0; q < kVec; ++q)
          wv[q] =
              oc[q] >= 0 ? static_cast<acc_t>(sft.w_gamma2[static_cast<int64_t>(oc[q]) * sft.rd_gamma + r]) : acc_t(0);
        UDM_UNROLL
        for (int pm = 0; pm < kPix; ++pm) {
          const acc_t hv = hid_gamma[(pq * np + pg * kPix + pm) * sft.rd_gamma + r];
          UDM_UNROLL
          for (int q = 0; q < kVec; ++q) g[pm][q] += hv * wv[q];
        }
      }
    }
    UDM_UNROLL
    for (int pm = 0; pm < kPix; ++pm) {
      const TilePixel px = tile_pixel(d, t, o, pg * kPix + pm);
      if (!px.valid) continue;
      const int y = 2 * px.i + (pq >> 1), xw = 2 * px.j + (pq & 1);
      UDM_UNROLL
      for (int q = 0; q < kVec; ++q) {
        if (oc[q] < 0) continue;
        acc_t v = s[pm][q] + static_cast<acc_t>(in.b_out[oc[q]]);
        if constexpr (kSft) {
          const acc_t xv = static_cast<acc_t>(in.x(o.b, oc[q], y, xw));
          v += xv + xv * g[pm][q];
        }
        out(o.b, oc[q], y, xw) = static_cast<scalar_t>(v);
      }
    }
  }
}

// One tile of the IDA forward (kSft = false) or of the whole SFT layer (kSft = true).
template <typename scalar_t, typename acc_t, bool kSft>
UDM_HOST_DEVICE void forward_tile(const IdaInputs<scalar_t>& in, const SftInputs<scalar_t, acc_t>& sft,
                                  const Strided4<scalar_t>& out, const Tiling& t, int64_t tile, acc_t* buf, int lane,
                                  int lanes) {
  const TileOrigin o = tile_origin(t, tile);
  const ForwardLayout l = forward_layout(in.d, t, kSft ? sft.rd_gamma : 0, kSft ? sft.rd_beta : 0);
  compute_branches(in, t, o, buf + l.a, buf + l.bx, buf + l.halo, buf + l.wts, lane, lanes);
  const int n = t.pixels() * in.d.cm_pad();
  for (int e = lane; e < n; e += lanes) buf[l.a + e] *= buf[l.bx + e];  // p = a * bx
  if constexpr (kSft) {
    fill_hidden(buf + l.hid_gamma, sft.rd_gamma, sft.w_gamma1, false, in.d, sft, t, o, lane, lanes);
    fill_hidden(buf + l.hid_beta, sft.rd_beta, sft.w_beta1, true, in.d, sft, t, o, lane, lanes);
  }
  block_sync();
  output_epilogue<scalar_t, acc_t, kSft>(in, sft, out, t, o, buf + l.a, buf + l.hid_gamma, buf + l.hid_beta, lane,
                                         lanes);
}

// ------------------------------------------------------------ backward pass 1

// grad[pq][oc][pix] = dL/dout[b, o0 + oc, 2i + p, 2j + q], zero outside the image.
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void fill_grad_chunk(acc_t* grad, const Strided4<const scalar_t>& g, const Dims& d, const Tiling& t,
                                     const TileOrigin& o, int o0, int lane, int lanes) {
  const int np = t.pixels();
  const bool cfast = g.channels_fast();
  for (int e = lane; e < 4 * t.ch * np; e += lanes) {
    int oc, pos;  // pos = pq * np + pix
    split_fill_index(e, t.ch, 4 * np, cfast, oc, pos);
    const int pq = pos / np, pix = pos % np;
    const TilePixel px = tile_pixel(d, t, o, pix);
    acc_t v = acc_t(0);
    if (px.valid && o0 + oc < d.co) v = static_cast<acc_t>(g(o.b, o0 + oc, 2 * px.i + (pq >> 1), 2 * px.j + (pq & 1)));
    grad[(pq * t.ch + oc) * np + pix] = v;
  }
}

// wts[pq][oc][k] = Wo[k, o0 + oc, p, q]
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void stage_out_weights(acc_t* wts, const scalar_t* w_out, const Dims& d, int o0, int ch, int lane,
                                       int lanes) {
  const int cmp = d.cm_pad();
  for (int e = lane; e < 4 * ch * cmp; e += lanes) {
    const int pq = e % 4, oc = (e / 4) % ch, k = e / (4 * ch);
    wts[(pq * ch + oc) * cmp + k] = (k < d.cm && o0 + oc < d.co)
                                        ? static_cast<acc_t>(w_out[(static_cast<int64_t>(k) * d.co + o0 + oc) * 4 + pq])
                                        : acc_t(0);
  }
}

// dp[pix][k] (+)= sum_{pq, oc} grad[pq][oc][pix] * wts[pq][oc][k]
template <typename acc_t>
UDM_HOST_DEVICE void dp_chunk(acc_t* dp, const acc_t* grad, const acc_t* wts, const Tiling& t, int cmp, bool first,
                              int lane, int lanes) {
  const int np = t.pixels(), n_kg = cmp / kVec;
  for (int mt = lane; mt < (np / kPix) * n_kg; mt += lanes) {
    const int kg = mt % n_kg, pg = mt / n_kg;
    acc_t s[kPix][kVec] = {};
    for (int r = 0; r < 4 * t.ch; ++r) {
      acc_t gv[kPix], wv[kVec];
      load_vec(grad + r * np + pg * kPix, gv);
      load_vec(wts + r * cmp + kg * kVec, wv);
      UDM_UNROLL
      for (int pm = 0; pm < kPix; ++pm) UDM_UNROLL
      for (int q = 0; q < kVec; ++q) s[pm][q] += gv[pm] * wv[q];
    }
    UDM_UNROLL
    for (int pm = 0; pm < kPix; ++pm) {
      acc_t* row = dp + (pg * kPix + pm) * cmp + kg * kVec;
      UDM_UNROLL
      for (int q = 0; q < kVec; ++q) row[q] = first ? s[pm][q] : row[q] + s[pm][q];
    }
  }
}

// dWo[pq][o0 + oc][k] += sum_pix a[pix][k] bx[pix][k] grad[pq][oc][pix];  dbo[o0 + oc] += sum grad.
template <typename acc_t>
UDM_HOST_DEVICE void out_weight_grad_chunk(const IdaGrads<acc_t>& g, const acc_t* a, const acc_t* bx, const acc_t* grad,
                                           const Dims& d, const Tiling& t, int o0, int lane, int lanes) {
  const int np = t.pixels(), cmp = d.cm_pad(), n_kg = cmp / kVec, n_og = t.ch / kVec;
  for (int mt = lane; mt < 4 * n_og * n_kg; mt += lanes) {
    const int kg = mt % n_kg, og = (mt / n_kg) % n_og, pq = mt / (n_kg * n_og);
    acc_t s[kVec][kVec] = {};  // [oc][k]
    for (int pix = 0; pix < np; ++pix) {
      acc_t av[kVec], bv[kVec];
      load_vec(a + pix * cmp + kg * kVec, av);
      load_vec(bx + pix * cmp + kg * kVec, bv);
      UDM_UNROLL
      for (int q = 0; q < kVec; ++q) av[q] *= bv[q];
      UDM_UNROLL
      for (int r = 0; r < kVec; ++r) {
        const acc_t gv = grad[(pq * t.ch + og * kVec + r) * np + pix];
        UDM_UNROLL
        for (int q = 0; q < kVec; ++q) s[r][q] += gv * av[q];
      }
    }
    UDM_UNROLL
    for (int r = 0; r < kVec; ++r) {
      const int oc = o0 + og * kVec + r;
      if (oc >= d.co) continue;
      UDM_UNROLL
      for (int q = 0; q < kVec; ++q) {
        const int k = kg * kVec + q;
        if (k < d.cm) add_grad(g.w_out + (static_cast<int64_t>(pq) * d.co + oc) * d.cm + k, s[r][q]);
      }
    }
  }
  for (int oc = lane; oc < t.ch; oc += lanes) {
    if (o0 + oc >= d.co) continue;
    acc_t s = acc_t(0);
    for (int pq = 0; pq < 4; ++pq)
      for (int pix = 0; pix < np; ++pix) s += grad[(pq * t.ch + oc) * np + pix];
    add_grad(g.b_out + o0 + oc, s);
  }
}

// dw[c0 + kc][u][v][k] += sum_pix dsrc[pix][k] halo[kc][2*ti+u][2*tj+v]
// (weight gradient of a 3x3 stride-2 conv with k_in input channels; GEMM layout).
template <typename acc_t>
UDM_HOST_DEVICE void conv_weight_grad_chunk(acc_t* dw, const acc_t* dsrc, const acc_t* halo, const Dims& d,
                                            const Tiling& t, int k_in, int c0, int lane, int lanes) {
  const int np = t.pixels(), cmp = d.cm_pad(), n_kg = cmp / kVec, hw = t.halo_w(), npos = t.halo_h() * hw;
  for (int mt = lane; mt < t.ch * n_kg; mt += lanes) {
    const int kg = mt % n_kg, kc = mt / n_kg;
    if (c0 + kc >= k_in) continue;
    acc_t s[kTaps][kVec] = {};
    const acc_t* hk = halo + kc * npos;
    for (int pix = 0; pix < np; ++pix) {
      acc_t dv[kVec];
      load_vec(dsrc + pix * cmp + kg * kVec, dv);
      const acc_t* hp = hk + 2 * (pix / t.tw) * hw + 2 * (pix % t.tw);
      UDM_UNROLL
      for (int u = 0; u < 3; ++u) UDM_UNROLL
      for (int v = 0; v < 3; ++v) {
        const acc_t xv = hp[u * hw + v];
        UDM_UNROLL
        for (int q = 0; q < kVec; ++q) s[u * 3 + v][q] += xv * dv[q];
      }
    }
    UDM_UNROLL
    for (int tap = 0; tap < kTaps; ++tap) UDM_UNROLL
    for (int q = 0; q < kVec; ++q) {
      const int k = kg * kVec + q;
      if (k < d.cm) add_grad(dw + (static_cast<int64_t>(c0 + kc) * kTaps + tap) * d.cm + k, s[tap][q]);
    }
  }
}

// Backward pass 1 for one tile: recompute a, bx; dp = Wo^T G4; da = dp * bx and
// dbx = dp * a (written to the workspaces [B, H/2, W/2, Cm] for pass 2); the
// gradients of Wo, bo, Wx and Wa.
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void backward_mid_tile(const IdaInputs<scalar_t>& in, const Strided4<const scalar_t>& grad_out,
                                       acc_t* ws_da, acc_t* ws_dbx, const IdaGrads<acc_t>& g, const Tiling& t,
                                       int64_t tile, acc_t* buf, int lane, int lanes) {
  const Dims& d = in.d;
  const TileOrigin o = tile_origin(t, tile);
  const MidLayout l = mid_layout(d, t);
  const int np = t.pixels(), cmp = d.cm_pad();
  acc_t *a = buf + l.a, *bx = buf + l.bx, *dp = buf + l.dp;
  compute_branches(in, t, o, a, bx, buf + l.halo, buf + l.wts, lane, lanes);
  for (int o0 = 0; o0 < (d.co > 0 ? d.co : 1); o0 += t.ch) {
    fill_grad_chunk(buf + l.grad, grad_out, d, t, o, o0, lane, lanes);
    stage_out_weights(buf + l.wts, in.w_out, d, o0, t.ch, lane, lanes);
    block_sync();
    dp_chunk(dp, buf + l.grad, buf + l.wts, t, cmp, o0 == 0, lane, lanes);
    out_weight_grad_chunk(g, a, bx, buf + l.grad, d, t, o0, lane, lanes);
    block_sync();
  }
  for (int e = lane; e < np * cmp; e += lanes) {
    const acc_t dv = dp[e], av = a[e], bv = bx[e];
    a[e] = dv * bv;   // da
    bx[e] = dv * av;  // dbx
    const int k = e % cmp;
    const TilePixel px = tile_pixel(d, t, o, e / cmp);
    if (px.valid && k < d.cm) {
      const int64_t at = ((o.b * d.hl() + px.i) * d.wl() + px.j) * d.cm + k;
      ws_da[at] = a[e];
      ws_dbx[at] = bx[e];
    }
  }
  block_sync();
  for (int c0 = 0; c0 < d.c; c0 += t.ch) {
    fill_x_halo(buf + l.halo, in, t, o, c0, lane, lanes);
    block_sync();
    conv_weight_grad_chunk(g.w_x, bx, buf + l.halo, d, t, d.c, c0, lane, lanes);
    block_sync();
  }
  for (int k0 = 0; k0 < d.cm; k0 += t.ch) {
    fill_map_halo(buf + l.halo, in, t, o, k0, lane, lanes);
    block_sync();
    conv_weight_grad_chunk(g.w_map, a, buf + l.halo, d, t, d.cm, k0, lane, lanes);
    block_sync();
  }
}

// ------------------------------------------------------------ backward pass 2

// Transposed 3x3 stride-2 conv, output-stationary by parity: high-res row 2i+p
// receives tap u=1 of low-res row i (p = 0), or u=2 of row i and u=0 of row i+1
// (p = 1); columns alike. s[pm][q] = sum_taps sum_k src[nbr][k] wts[tap][k][cg*kVec+q]
// for the kPix tile pixels of pixel group pg at parity pq; src is [(th+1)(tw+1)][cmp].
template <typename acc_t>
UDM_HOST_DEVICE UDM_FORCE_INLINE void dgrad_microtile(const acc_t* src, const acc_t* wts, const Dims& d,
                                                      const Tiling& t, int pq, int pg, int cg, acc_t (&s)[kPix][kVec]) {
  const int p = pq >> 1, q = pq & 1, cmp = d.cm_pad();
  UDM_UNROLL
  for (int pm = 0; pm < kPix; ++pm) UDM_UNROLL
  for (int r = 0; r < kVec; ++r) s[pm][r] = acc_t(0);
  for (int di = 0; di <= p; ++di) {
    const int u = p == 0 ? 1 : (di == 0 ? 2 : 0);
    for (int dj = 0; dj <= q; ++dj) {
      const int v = q == 0 ? 1 : (dj == 0 ? 2 : 0);
      const acc_t* wt = wts + (u * 3 + v) * cmp * t.ch + cg * kVec;
      const acc_t* rows[kPix];
      UDM_UNROLL
      for (int pm = 0; pm < kPix; ++pm) {
        const int pix = pg * kPix + pm;
        rows[pm] = src + ((pix / t.tw + di) * (t.tw + 1) + pix % t.tw + dj) * cmp;
      }
      for (int k = 0; k < d.cm; ++k) {
        acc_t wv[kVec];
        load_vec(wt + k * t.ch, wv);
        UDM_UNROLL
        for (int pm = 0; pm < kPix; ++pm) {
          const acc_t sv = rows[pm][k];
          UDM_UNROLL
          for (int r = 0; r < kVec; ++r) s[pm][r] += sv * wv[r];
        }
      }
    }
  }
}

// One chunk of t.ch output channels (c0 ...) of a dgrad: stages w [Cm, n_out, 3, 3] for the chunk, runs
// every (parity, pixel group, channel group) micro-tile over src and hands its sums to
// epilogue(pq, pg, cg, s); synchronises the block before and after the micro-tiles.
template <typename scalar_t, typename acc_t, typename Epilogue>
UDM_HOST_DEVICE UDM_FORCE_INLINE void dgrad_chunk(const acc_t* src, const scalar_t* w, int n_out, int c0, acc_t* wts,
                                                  const Dims& d, const Tiling& t, int lane, int lanes,
                                                  const Epilogue& epilogue) {
  const int n_pg = t.pixels() / kPix, n_cg = t.ch / kVec;
  stage_weights<kDgradLayout>(wts, w, d.cm, d.cm_pad(), n_out, c0, t.ch, lane, lanes);
  block_sync();
  for (int mt = lane; mt < 4 * n_pg * n_cg; mt += lanes) {
    const int cg = mt % n_cg, pg = (mt / n_cg) % n_pg, pq = mt / (n_cg * n_pg);
    acc_t s[kPix][kVec];
    dgrad_microtile(src, wts, d, t, pq, pg, cg, s);
    epilogue(pq, pg, cg, s);
  }
  block_sync();
}

// Backward pass 2 for one tile: dx (IDA part) and, through t, dm and dWu, for the
// high-res children of the tile's low-res pixels; reads pass 1's workspaces.
template <typename scalar_t, typename acc_t>
UDM_HOST_DEVICE void backward_dgrad_tile(const IdaInputs<scalar_t>& in, const acc_t* ws_da, const acc_t* ws_dbx,
                                         const Strided4<scalar_t>& dx, const Strided4<scalar_t>& dm, acc_t* g_w_up,
                                         const Tiling& t, int64_t tile, acc_t* buf, int lane, int lanes) {
  const Dims& d = in.d;
  const TileOrigin o = tile_origin(t, tile);
  const DgradLayout l = dgrad_layout(d, t);
  const int np = t.pixels(), cmp = d.cm_pad();
  acc_t *dbx = buf + l.dbx, *da = buf + l.da, *wts = buf + l.wts, *dt = buf + l.dt, *mp = buf + l.map;
  acc_t* dm_acc = buf + l.dm;
  const int hw1 = t.tw + 1;
  for (int e = lane; e < (t.th + 1) * hw1 * cmp; e += lanes) {
    const int k = e % cmp, pos = e / cmp, i = o.i0 + pos / hw1, j = o.j0 + pos % hw1;
    acc_t vb = acc_t(0), va = acc_t(0);
    if (i < d.hl() && j < d.wl() && k < d.cm) {
      const int64_t at = ((o.b * d.hl() + i) * d.wl() + j) * d.cm + k;
      vb = ws_dbx[at];
      va = ws_da[at];
    }
    dbx[e] = vb;
    da[e] = va;
  }
  for (int e = lane; e < d.cc * np; e += lanes) {
    const TilePixel px = tile_pixel(d, t, o, e % np);
    mp[e] = px.valid ? static_cast<acc_t>(in.m(o.b, e / np, px.i, px.j)) : acc_t(0);
  }
  block_sync();
  // dx = col2im(dbx Wx), written directly
  for (int c0 = 0; c0 < d.c; c0 += t.ch) {
    dgrad_chunk(dbx, in.w_x, d.c, c0, wts, d, t, lane, lanes, [&](int pq, int pg, int cg, acc_t(&s)[kPix][kVec]) {
      UDM_UNROLL
      for (int pm = 0; pm < kPix; ++pm) {
        const TilePixel px = tile_pixel(d, t, o, pg * kPix + pm);
        if (!px.valid) continue;
        UDM_UNROLL
        for (int r = 0; r < kVec; ++r) {
          const int c = c0 + cg * kVec + r;
          if (c < d.c) dx(o.b, c, 2 * px.i + (pq >> 1), 2 * px.j + (pq & 1)) = static_cast<scalar_t>(s[pm][r]);
        }
      }
    });
  }
  // dt = col2im(da Wa), times LReLU_0.1'(t_pre); then dm and dWu through ConvT2x2s2
  for (int k0 = 0; k0 < (d.cm > 0 ? d.cm : 1); k0 += t.ch) {
    dgrad_chunk(da, in.w_map, d.cm, k0, wts, d, t, lane, lanes, [&](int pq, int pg, int cg, acc_t(&s)[kPix][kVec]) {
      UDM_UNROLL
      for (int pm = 0; pm < kPix; ++pm) {
        const int pix = pg * kPix + pm;
        const bool valid = tile_pixel(d, t, o, pix).valid;
        UDM_UNROLL
        for (int r = 0; r < kVec; ++r) {
          const int kc = cg * kVec + r, k = k0 + kc;
          acc_t v = acc_t(0);
          if (valid && k < d.cm) {
            acc_t pre = acc_t(0);
            for (int c = 0; c < d.cc; ++c)
              pre += mp[c * np + pix] * static_cast<acc_t>(in.w_up[(c * d.cm + k) * 4 + pq]);
            v = pre > acc_t(0) ? s[pm][r] : s[pm][r] * static_cast<acc_t>(0.1);
          }
          dt[(pq * np + pix) * t.ch + kc] = v;
        }
      }
    });
    for (int e = lane; e < np * d.cc; e += lanes) {  // dm[pix][c] += sum_{pq, kc} Wu[c, k, pq] dt
      const int pix = e / d.cc, c = e % d.cc;
      acc_t s = acc_t(0);
      for (int kc = 0; kc < t.ch && k0 + kc < d.cm; ++kc)
        for (int pq = 0; pq < 4; ++pq)
          s += static_cast<acc_t>(in.w_up[(c * d.cm + k0 + kc) * 4 + pq]) * dt[(pq * np + pix) * t.ch + kc];
      dm_acc[e] = k0 == 0 ? s : dm_acc[e] + s;
    }
    for (int e = lane; e < d.cc * t.ch * 4; e += lanes) {  // dWu[c, k, pq] += sum_pix m[c][pix] dt
      const int pq = e % 4, kc = (e / 4) % t.ch, c = e / (4 * t.ch);
      if (k0 + kc >= d.cm) continue;
      acc_t s = acc_t(0);
      for (int pix = 0; pix < np; ++pix) s += mp[c * np + pix] * dt[(pq * np + pix) * t.ch + kc];
      add_grad(g_w_up + (c * d.cm + k0 + kc) * 4 + pq, s);
    }
    block_sync();
  }
  for (int e = lane; e < np * d.cc; e += lanes) {
    const TilePixel px = tile_pixel(d, t, o, e / d.cc);
    if (px.valid) dm(o.b, e % d.cc, px.i, px.j) = static_cast<scalar_t>(dm_acc[e]);
  }
}

}  // namespace ida
}  // namespace udm_fast
