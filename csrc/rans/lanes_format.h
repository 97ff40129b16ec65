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

#include <cstdint>

namespace udm_rans {
namespace lanes_format {

constexpr uint8_t kMagic[4] = {'U', 'D', 'M', 'r'};
constexpr uint16_t kVersion = 1;
constexpr uint8_t kCoderLanes32 = 1;       // 32-bit states, 16-bit words, 16-bit CDFs
constexpr uint8_t kFlagExplicitIndexes = 1;
constexpr int kFixedHeaderBytes = 64;
constexpr int kMaxDims = 16;

// Byte offsets inside the fixed header.
constexpr int kOffMagic = 0;            // 4 bytes
constexpr int kOffVersion = 4;          // u16
constexpr int kOffCoder = 6;            // u8
constexpr int kOffFlags = 7;            // u8
constexpr int kOffFingerprint = 8;      // u64 table fingerprint
constexpr int kOffSymbols = 16;         // u64 n_symbols
constexpr int kOffPerChannel = 24;      // u64 implicit rows: symbols per channel (0 if explicit)
constexpr int kOffChannels = 32;        // u32 implicit rows: channels (0 if explicit)
constexpr int kOffGroups = 36;          // u32 n_groups
constexpr int kOffGroupSymbols = 40;    // u32 symbols per group (multiple of the lane count)
constexpr int kOffDims = 44;            // u16 ndim
constexpr int kOffLanes = 46;           // u16 lanes per group W (32; 1..31 for one small group)
constexpr int kOffPayloadChecksum = 48; // u64
constexpr int kOffHeaderChecksum = 56;  // u64

}  // namespace lanes_format
}  // namespace udm_rans
