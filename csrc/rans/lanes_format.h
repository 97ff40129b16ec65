// Byte layout of the parallel ("lanes") rANS container, version 1. All fields little-endian.
//
//   header block
//     [0, 64)   fixed header (LaneHeaderOffsets below)
//     ndim x u64               shape of the coded tensor (prod = n_symbols)
//     n_groups x u32           number of 16-bit words of each group
//   payload
//     n_groups x W x u32       final lane states, group-major (W = lanes per group)
//     words x u16              the groups' word streams, concatenated in group order
//     u16 zero                 padding when the word count is odd
//
// Group g covers symbols [g * group_symbols, min(n_symbols, (g + 1) * group_symbols)) of the
// flat sequence; see rans_core.h for the interleaving of its W lanes. Each checksum is the
// sum of checksum_term(i, w_i) over the u32 words w_i of its block (the header checksum with
// its own field set to zero).
#pragma once

#include <algorithm>
#include <cstdint>

#include "rans/rans_core.h"

namespace udm_rans {
namespace lanes_format {

constexpr uint8_t kMagic[4] = {'U', 'D', 'M', 'r'};
constexpr uint16_t kVersion = 1;
constexpr uint8_t kCoderLanes32 = 1;  // 32-bit states, 16-bit words, 16-bit CDFs
constexpr uint8_t kFlagExplicitIndexes = 1;
constexpr int kFixedHeaderBytes = 64;
constexpr int kMaxDims = 16;

// Byte offsets inside the fixed header.
constexpr int kOffMagic = 0;             // 4 bytes
constexpr int kOffVersion = 4;           // u16
constexpr int kOffCoder = 6;             // u8
constexpr int kOffFlags = 7;             // u8
constexpr int kOffFingerprint = 8;       // u64 table fingerprint
constexpr int kOffSymbols = 16;          // u64 n_symbols
constexpr int kOffPerChannel = 24;       // u64 implicit rows: symbols per channel (0 if explicit)
constexpr int kOffChannels = 32;         // u32 implicit rows: channels (0 if explicit)
constexpr int kOffGroups = 36;           // u32 n_groups
constexpr int kOffGroupSymbols = 40;     // u32 symbols per group (multiple of the lane count)
constexpr int kOffDims = 44;             // u16 ndim
constexpr int kOffLanes = 46;            // u16 lanes per group W (32; 1..31 for one small group)
constexpr int kOffPayloadChecksum = 48;  // u64
constexpr int kOffHeaderChecksum = 56;   // u64

// --- lane layout, shared by every encoder so they produce the same bytes ------------------
// The encoder estimates the code length from every estimate_stride-th symbol (from 0): the
// CDF cost round(256 (16 - log2 freq)) of its bin (Tables::cost_row), plus escape_cost for
// escapes, summed as an integer in 1/256 bits. choose_layout turns that into lanes.
constexpr int64_t kEstimateSamples = 1 << 18;
constexpr double kLaneCostBytes = 4.0;  // fixed cost of one lane (state, alignment, group table)

inline int64_t estimate_stride(int64_t n_symbols) { return std::max<int64_t>(1, n_symbols / kEstimateSamples); }

UDM_RANS_HD uint64_t escape_cost(int nibbles) { return 256ull * kNibbleBits * (1 + nibbles); }

struct LaneLayout {
  int width;  // lanes per group
  int64_t groups;
  int64_t group_symbols;  // symbols per group (a multiple of width; the last group may be shorter)
};

// Lanes so their fixed cost is about `overhead` of the estimated size, or `lanes` if > 0:
// groups of 32, or a single group of fewer lanes.
inline LaneLayout choose_layout(uint64_t sampled_cost, int64_t n_symbols, double overhead, int64_t lanes) {
  if (lanes <= 0) {
    const int64_t samples = n_symbols == 0 ? 0 : (n_symbols - 1) / estimate_stride(n_symbols) + 1;
    const double bytes = samples == 0 ? 0.0
                                      : static_cast<double>(sampled_cost) / (256.0 * 8.0) *
                                            static_cast<double>(n_symbols) / static_cast<double>(samples);
    lanes = static_cast<int64_t>(overhead * bytes / kLaneCostBytes);
  }
  LaneLayout layout;
  layout.width = static_cast<int>(std::clamp<int64_t>(lanes, 1, kMaxLanes));
  const int64_t groups = std::max<int64_t>(1, (lanes + kMaxLanes - 1) / kMaxLanes);
  const int64_t per_group = (n_symbols + groups - 1) / groups;
  layout.group_symbols = std::max<int64_t>(layout.width, (per_group + layout.width - 1) / layout.width * layout.width);
  layout.groups = (n_symbols + layout.group_symbols - 1) / layout.group_symbols;
  return layout;
}

}  // namespace lanes_format
}  // namespace udm_rans
