#include "rans/rans_tables.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace udm_rans {
namespace {

EncodeSymbol make_encode_symbol(uint32_t start, uint32_t freq) {
  EncodeSymbol sym{};
  sym.freq = freq;
  sym.complement = kProbScale - freq;
  if (freq == 1) {
    // q = mulhi(x, 2^64 - 1) = x - 1; x + (start + M - 1) + (x - 1)(M - 1) = x M + start.
    sym.reciprocal = ~0ull;
    sym.shift = 0;
    sym.bias = start + kProbScale - 1;
    return sym;
  }
  // Round-up reciprocal: floor(x / freq) = mulhi(x, m) >> (l - 1) for every x < 2^63,
  // with 2^l >= freq and m = ceil(2^(63 + l) / freq) (< 2^64, or 2^63 when freq = 2^l).
  uint32_t l = 0;
  while ((1u << l) < freq) ++l;
  const unsigned __int128 numerator = static_cast<unsigned __int128>(1) << (63 + l);
  sym.reciprocal = static_cast<uint64_t>((numerator + freq - 1) / freq);
  sym.shift = l - 1;
  sym.bias = start;
  return sym;
}

uint64_t fnv1a(uint64_t hash, int64_t value) {
  for (int byte = 0; byte < 8; ++byte) {
    hash ^= static_cast<uint64_t>(value >> (8 * byte)) & 0xFF;
    hash *= 0x100000001B3ull;
  }
  return hash;
}

}  // namespace

Tables::Tables(const int32_t* cdf, int64_t rows, int64_t width, const int32_t* lengths, const int32_t* offsets)
    : rows_(rows), width_(width) {
  if (rows < 1 || width < 2) {
    throw std::invalid_argument("CDF table must be [rows >= 1, width >= 2], got [" + std::to_string(rows) + ", " +
                                std::to_string(width) + "]");
  }
  if (width > static_cast<int64_t>(kProbScale) + 1) {
    throw std::invalid_argument("CDF table is wider than 2^16 + 1 entries");
  }
  offsets_.assign(offsets, offsets + rows);
  max_values_.resize(rows);
  cdf_.assign(rows * width, 0);
  encode_.resize(rows * (width - 1));
  lookup_.resize(rows << kLookupBits);
  cost_.resize(rows * (width - 1));
  uint64_t hash = fnv1a(0xCBF29CE484222325ull, rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t length = lengths[r];
    const std::string where = "CDF row " + std::to_string(r);
    if (length < 2 || length > width) {
      throw std::invalid_argument(where + ": length " + std::to_string(length) + " is outside [2, " +
                                  std::to_string(width) + "]");
    }
    const int32_t* src = cdf + r * width;
    if (src[0] != 0 || src[length - 1] != static_cast<int32_t>(kProbScale)) {
      throw std::invalid_argument(where + " must start at 0 and end at 65536");
    }
    for (int64_t i = 0; i + 1 < length; ++i) {
      if (src[i + 1] <= src[i]) {
        throw std::invalid_argument(where + " is not strictly increasing at entry " + std::to_string(i + 1));
      }
    }
    max_values_[r] = static_cast<int32_t>(length - 2);
    if (static_cast<int64_t>(offsets[r]) + max_values_[r] > INT32_MAX) {
      throw std::invalid_argument(where + ": offset + length overflows int32");
    }
    hash = fnv1a(fnv1a(hash, length), offsets[r]);
    uint32_t* dst = &cdf_[r * width];
    for (int64_t i = 0; i < length; ++i) {
      dst[i] = static_cast<uint32_t>(src[i]);
      hash = fnv1a(hash, src[i]);
    }
    for (int64_t s = 0; s + 1 < length; ++s) {
      const uint32_t freq = dst[s + 1] - dst[s];
      encode_[r * (width - 1) + s] = make_encode_symbol(dst[s], freq);
      cost_[r * (width - 1) + s] =
          static_cast<uint32_t>(std::lround(256.0 * (kPrecision - std::log2(static_cast<double>(freq)))));
    }
    uint16_t* lookup = &lookup_[r << kLookupBits];
    uint32_t s = 0;
    for (uint32_t bucket = 0; bucket < (1u << kLookupBits); ++bucket) {
      const uint32_t cum = bucket << (kPrecision - kLookupBits);
      while (dst[s + 1] <= cum) ++s;
      lookup[bucket] = static_cast<uint16_t>(s);
    }
  }
  fingerprint_ = hash;
}

}  // namespace udm_rans
