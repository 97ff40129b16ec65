// Coder tables prepared once from compressai-style CDF tables (host side).
#pragma once

#include <cstdint>
#include <vector>

#include "rans/rans_core.h"

namespace udm_rans {

// Division-free encoder step for one symbol (works for both coders: valid for states < 2^63).
// x' = x + bias + q * complement, q = mulhi(x, reciprocal) >> shift (= floor(x / freq), or
// x - 1 for freq == 1, compensated through bias).
struct EncodeSymbol {
  uint64_t reciprocal;
  uint32_t bias;
  uint32_t complement;
  uint32_t freq;
  uint32_t shift;
};

constexpr int kLookupBits = 12;  // decoder bucket table: first symbol of each 2^4-wide cum bucket

// What an encoder needs of one row.
struct EncodeRow {
  const EncodeSymbol* symbols;  // [max_value + 1], the escape bin last
  int32_t offset;
  int32_t max_value;  // index of the escape bin
};

// What a decoder needs of one row.
struct DecodeRow {
  const uint32_t* cdf;     // [max_value + 2]
  const uint16_t* lookup;  // [2^kLookupBits]
  int32_t offset;
  int32_t max_value;

  // Symbol index s with cdf[s] <= cum < cdf[s + 1].
  uint32_t find(uint32_t cum) const {
    uint32_t s = lookup[cum >> (kPrecision - kLookupBits)];
    while (cdf[s + 1] <= cum) ++s;
    return s;
  }
};

class Tables {
 public:
  // cdf: rows x width int32 (row-major), lengths/offsets: rows int32. Throws
  // std::invalid_argument naming the first malformed row (offset + max_value must fit int32,
  // so in-range symbols never overflow).
  Tables(const int32_t* cdf, int64_t rows, int64_t width, const int32_t* lengths, const int32_t* offsets);

  int64_t rows() const { return rows_; }
  int64_t width() const { return width_; }
  uint64_t fingerprint() const { return fingerprint_; }
  int32_t offset(int64_t row) const { return offsets_[row]; }
  const int32_t* offsets() const { return offsets_.data(); }
  const int32_t* max_values() const { return max_values_.data(); }
  int32_t max_value(int64_t row) const { return max_values_[row]; }  // index of the escape bin
  const EncodeSymbol* encode_row(int64_t row) const { return &encode_[row * (width_ - 1)]; }
  const uint32_t* cdf_row(int64_t row) const { return &cdf_[row * width_]; }
  const uint16_t* lookup_row(int64_t row) const { return &lookup_[row << kLookupBits]; }
  // Estimated code length in 1/256 bits of each symbol index of a row (escape bin included).
  const uint32_t* cost_row(int64_t row) const { return &cost_[row * (width_ - 1)]; }

  EncodeRow encode_view(int64_t row) const { return {encode_row(row), offsets_[row], max_values_[row]}; }
  DecodeRow decode_view(int64_t row) const { return {cdf_row(row), lookup_row(row), offsets_[row], max_values_[row]}; }

 private:
  int64_t rows_, width_;
  uint64_t fingerprint_;
  std::vector<int32_t> offsets_, max_values_;
  std::vector<uint32_t> cdf_;
  std::vector<EncodeSymbol> encode_;
  std::vector<uint16_t> lookup_;
  std::vector<uint32_t> cost_;
};

// x' after coding the symbol `sym` at kPrecision bits, renormalisation already done.
inline uint64_t encode_step(uint64_t x, const EncodeSymbol& sym) {
  const uint64_t q = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * sym.reciprocal) >> 64) >> sym.shift;
  return x + sym.bias + q * sym.complement;
}

}  // namespace udm_rans
