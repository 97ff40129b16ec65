// Header-only core of the rANS coders, usable from host (C++) and device (CUDA) code.
//
// Two coders share the same 16-bit CDF tables (compressai's `_quantized_cdf`) and the same
// escape ("bypass") scheme for values outside a row's range:
//   * compat: compressai's rans64 (64-bit state in [2^31, 2^63), 32-bit renormalisation words),
//     one stream per batch item; byte-identical to compressai.ans.
//   * lanes:  32-bit state in [2^16, 2^32) with 16-bit words, for many interleaved lanes
//     (the parallel format, see lanes_format.h).
//
// Escape of value v (= symbol - offset) outside [0, max_value): the escape bin (index
// max_value) is coded, then a 4-bit count n of payload nibbles, then n nibbles of
// raw = (v < 0 ? -2v - 1 : 2 (v - max_value)), least significant first. A 4-bit nibble is
// an rANS symbol with scale_bits = 4, freq = 1, start = nibble. compressai writes the
// count as a run of 15s plus a remainder; with n <= kMaxEscapeNibbles < 15 it is one nibble.
// compressai itself overflows for raw >= 2^28 (8 nibbles); those streams are ours only.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define UDM_RANS_HD __host__ __device__ __forceinline__
#else
#define UDM_RANS_HD inline
#endif

namespace udm_rans {

constexpr uint32_t kPrecision = 16;  // CDF precision (bits)
constexpr uint32_t kProbScale = 1u << kPrecision;
constexpr uint32_t kNibbleBits = 4;  // escape payload unit
constexpr uint32_t kNibbleMask = (1u << kNibbleBits) - 1;
constexpr int kMaxEscapeNibbles = 9;  // raw < 2^36 covers every int32 symbol/offset pair

constexpr uint64_t kCompatLow = 1ull << 31;  // rans64 normalisation interval [2^31, 2^63)
constexpr uint32_t kLaneLow = 1u << 16;      // lane coder interval [2^16, 2^32)

// --- escape payload -------------------------------------------------------------------------

// Zig-zag payload of an out-of-range value (value < 0 or value >= max_value).
UDM_RANS_HD uint64_t escape_raw(int64_t value, int32_t max_value) {
  return value < 0 ? static_cast<uint64_t>(-2 * value - 1) : static_cast<uint64_t>(2 * (value - max_value));
}

UDM_RANS_HD int escape_nibble_count(uint64_t raw) {
  int n = 0;
  while (n < 16 && (raw >> (kNibbleBits * n)) != 0) ++n;
  return n;
}

// Inverse of escape_raw.
UDM_RANS_HD int64_t escape_value(uint64_t raw, int32_t max_value) {
  const int64_t half = static_cast<int64_t>(raw >> 1);
  return (raw & 1) ? -half - 1 : half + max_value;
}

// --- quantization of float latents ---------------------------------------------------------

UDM_RANS_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

UDM_RANS_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// round(value - median) with ties to even (torch.round) as int32, branch-free (integer masks,
// so loops of it vectorise): |d| < 2^23 rounds through (|d| + 2^23) - 2^23 in the default
// rounding mode, larger |d| is integral already. `ok` is false for results outside int32 and
// for non-finite values (the symbol is then 0).
UDM_RANS_HD int32_t quantize_unchecked(float value, float median, bool& ok) {
#if defined(__CUDA_ARCH__)
  const float diff = __fsub_rn(value, median);
#else
  const float diff = value - median;
#endif
  const uint32_t bits = float_bits(diff);
  const uint32_t sign = bits & 0x80000000u, magnitude = bits & 0x7FFFFFFFu;
#if defined(__CUDA_ARCH__)
  const float rounded_small = __fsub_rn(__fadd_rn(bits_float(magnitude), 8388608.0f), 8388608.0f);
#else
  const float rounded_small = (bits_float(magnitude) + 8388608.0f) - 8388608.0f;
#endif
  const uint32_t small = 0u - static_cast<uint32_t>(magnitude < 0x4B000000u);  // |d| < 2^23
  const uint32_t rounded = ((float_bits(rounded_small) & small) | (magnitude & ~small)) | sign;
  ok = magnitude < 0x4F000000u || rounded == 0xCF000000u;  // |r| < 2^31, or r = -2^31
  return static_cast<int32_t>(bits_float(rounded & (0u - static_cast<uint32_t>(ok))));
}

// --- one rANS step, shared by both coders ---------------------------------------------------
// compat (rans64 as in compressai): 64-bit state, 32-bit words, low bound kCompatLow;
// lanes of the parallel format: 32-bit state, 16-bit words, low bound kLaneLow.

// Encodes (start, freq) at 2^scale_bits into x; returns true and sets *word when a word is
// emitted (the word stream is written back to front).
template <typename State, typename Word>
UDM_RANS_HD bool rans_put(State& x, uint32_t start, uint32_t freq, uint32_t scale_bits, State low, Word* word) {
  const uint64_t x_max = ((static_cast<uint64_t>(low) >> scale_bits) << (8 * sizeof(Word))) * freq;
  bool emitted = false;
  if (x >= x_max) {
    *word = static_cast<Word>(x);
    x >>= 8 * sizeof(Word);
    emitted = true;
  }
  x = ((x / freq) << scale_bits) + (x % freq) + start;
  return emitted;
}

// Decoder step after the symbol (start, freq) was found from x's low scale_bits bits;
// returns true when the state needs a refill word (x = (x << word bits) | word).
template <typename State>
UDM_RANS_HD bool rans_advance(State& x, uint32_t start, uint32_t freq, uint32_t scale_bits, State low) {
  const State mask = (State(1) << scale_bits) - 1;
  x = freq * (x >> scale_bits) + (x & mask) - start;
  return x < low;
}

UDM_RANS_HD bool compat_put(uint64_t& x, uint32_t start, uint32_t freq, uint32_t scale_bits, uint32_t* word) {
  return rans_put<uint64_t, uint32_t>(x, start, freq, scale_bits, kCompatLow, word);
}

UDM_RANS_HD bool compat_advance(uint64_t& x, uint32_t start, uint32_t freq, uint32_t scale_bits) {
  return rans_advance<uint64_t>(x, start, freq, scale_bits, kCompatLow);
}

UDM_RANS_HD bool lane_put(uint32_t& x, uint32_t start, uint32_t freq, uint32_t scale_bits, uint16_t* word) {
  return rans_put<uint32_t, uint16_t>(x, start, freq, scale_bits, kLaneLow, word);
}

UDM_RANS_HD bool lane_advance(uint32_t& x, uint32_t start, uint32_t freq, uint32_t scale_bits) {
  return rans_advance<uint32_t>(x, start, freq, scale_bits, kLaneLow);
}

// --- lane layout of the parallel format -----------------------------------------------------
// A group of W <= kMaxLanes lanes (W = 32, one warp, except for tiny inputs) covers symbols
// [first, first + count) of the flat symbol sequence; symbol first + W * step + lane belongs
// to `lane`. Decoding visits (step asc, sub-op asc,
// lane asc), where sub-op 0 is the CDF symbol and sub-ops 1.. are escape nibbles; a lane that
// renormalises after a sub-op reads the next 16-bit word of the group's word stream. The
// encoder visits the exact reverse order and its emitted words, reversed, form that stream.
constexpr int kMaxLanes = 32;

// Order-dependent 64-bit checksum term of 32-bit word `index` (a sum of these is the checksum,
// so it parallelises as a reduction).
UDM_RANS_HD uint64_t checksum_term(uint64_t index, uint32_t word) {
  uint64_t z = (index << 32 | word) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace udm_rans
