// CPU implementations of the compat (compressai) and parallel (lanes) rANS formats.
//
// Symbols form a flat sequence; symbol g is coded with table row
//   indexes[g]                      (explicit rows), or
//   (g / per_channel) % channels    (implicit rows: [N, C, *spatial] latents in C order).
// Symbols come from int32 values, or from float values quantized as
// rint(value - medians[row]) (torch.round: half to even); decoders write int32 symbols or
// float(symbol) + medians[row]. Malformed input throws std::invalid_argument.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "rans/rans_tables.h"

namespace udm_rans {

struct Layout {
  const int32_t* indexes = nullptr;  // explicit row per symbol, or nullptr for implicit rows
  int64_t per_channel = 1;
  int64_t channels = 1;
};

struct Source {  // exactly one of symbols / values is set
  const int32_t* symbols = nullptr;
  const float* values = nullptr;
  const float* medians = nullptr;  // [rows], with values
};

struct Sink {  // exactly one of symbols / values is set
  int32_t* symbols = nullptr;
  float* values = nullptr;
  const float* medians = nullptr;
};

struct ByteSpan {
  const uint8_t* data;
  int64_t size;
};

// One compat stream before serialisation: renormalisation words in the order they were
// emitted (the stream stores them reversed) and the final 64-bit state.
struct CompatStream {
  std::vector<uint32_t> words;
  uint64_t state = 0;
  int64_t byte_size() const { return 8 + 4 * static_cast<int64_t>(words.size()); }
  void write(uint8_t* out) const;  // compressai's byte layout
};

// Encodes `items` streams; stream n holds symbols [n * length, (n + 1) * length).
std::vector<CompatStream> compat_encode(const Tables& tables, const Layout& layout, const Source& source, int64_t items,
                                        int64_t length);
// Decodes streams[n] into symbols [n * length, (n + 1) * length) of `sink`.
void compat_decode(const Tables& tables, const Layout& layout, const Sink& sink, const std::vector<ByteSpan>& streams,
                   int64_t length);

// One stream made of several segments (compressai's BufferedRansEncoder / decode_stream):
// each segment has its own tables, explicit rows and symbols.
struct Segment {
  const Tables* tables;
  const int32_t* indexes;
  int32_t* symbols;  // encode: input, decode: output
  int64_t length;
};
CompatStream compat_encode_segments(const std::vector<Segment>& segments);
void compat_decode_segments(ByteSpan stream, const std::vector<Segment>& segments);

// --- parallel (lanes) format -------------------------------------------------------------
struct LaneOptions {
  double lane_overhead = 0.003;  // target fixed cost of the lanes, as a fraction of the size
  int64_t lanes = 0;             // explicit lane count (groups of 32, or one group if < 32); 0: auto
};

struct LaneHeaderInfo {
  int version = 1;
  bool explicit_indexes = false;
  uint64_t fingerprint = 0;
  int64_t n_symbols = 0, per_channel = 0, channels = 0, n_groups = 0, group_symbols = 0;
  int lanes_per_group = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> word_start;  // [n_groups + 1] prefix sums of the groups' word counts
  int64_t payload_offset = 0;       // byte offset of the lane states (= header block size)
  uint64_t payload_checksum = 0;
};

std::vector<uint8_t> lanes_encode(const Tables& tables, const Layout& layout, const Source& source, int64_t n_symbols,
                                  const std::vector<int64_t>& shape, const LaneOptions& options);
// Validates the container (magic, version, sizes, checksums); throws on any mismatch.
LaneHeaderInfo lanes_parse(ByteSpan data);
// Pieces of the container for other implementations (the CUDA coder): header block size from
// the fixed 64-byte header; parse of a full header block of a container of total_size bytes
// (everything but the payload checksum); checksum of a block; payload size; header block of
// `info` without checksums; sealing it with both checksums; decode-time compatibility checks.
int64_t lanes_header_size(const uint8_t* fixed, int64_t available);
LaneHeaderInfo lanes_parse_header(const uint8_t* header, int64_t total_size);
uint64_t lanes_checksum(const uint8_t* data, int64_t bytes);
int64_t lanes_payload_bytes(const LaneHeaderInfo& info);
std::vector<uint8_t> lanes_header(const LaneHeaderInfo& info);
void seal_lanes_header(uint8_t* header, int64_t header_bytes, uint64_t payload_checksum);
void check_lanes_decode_inputs(const Tables& tables, const LaneHeaderInfo& info, bool has_indexes);
// Decodes a parsed container; `layout.indexes` must be given iff the stream has explicit rows.
void lanes_decode(const Tables& tables, ByteSpan data, const LaneHeaderInfo& info, const int32_t* indexes,
                  const Sink& sink);

// --- helpers shared by the implementations -----------------------------------------------
[[noreturn]] void fail(const std::string& message);

inline int64_t checked_row(const Tables& tables, int32_t row, int64_t position) {
  if (row < 0 || row >= tables.rows()) {
    fail("index " + std::to_string(row) + " at position " + std::to_string(position) + " is outside the " +
         std::to_string(tables.rows()) + " CDF rows");
  }
  return row;
}

[[noreturn]] inline void fail_quantize(int64_t position) {
  fail("value at position " + std::to_string(position) + " is not finite or outside int32 after quantization");
}

inline int32_t quantize(float value, float median, int64_t position) {
  bool ok;
  const int32_t symbol = quantize_unchecked(value, median, ok);
  if (!ok) fail_quantize(position);
  return symbol;
}

// quantize() of values[0, n) into out.
inline void quantize_span(const float* values, float median, int32_t* out, int64_t n, int64_t position) {
  uint32_t all_ok = 1;
  for (int64_t i = 0; i < n; ++i) {
    bool ok;
    out[i] = quantize_unchecked(values[i], median, ok);
    all_ok &= ok;
  }
  if (!all_ok) {
    for (int64_t i = 0; i < n; ++i) quantize(values[i], median, position + i);
  }
}

// Symbol readers for the encoders: int32 symbols, or float values quantized per row.
// span(g, n, row, scratch) returns the n symbols from g (all of `row`), in scratch if needed.
struct IntSymbols {
  const int32_t* symbols;
  int32_t operator()(int64_t g, int64_t) const { return symbols[g]; }
  const int32_t* span(int64_t g, int64_t, int64_t, int32_t*) const { return symbols + g; }
};

struct QuantizedValues {
  const float* values;
  const float* medians;
  int32_t operator()(int64_t g, int64_t row) const { return quantize(values[g], medians[row], g); }
  const int32_t* span(int64_t g, int64_t n, int64_t row, int32_t* scratch) const {
    quantize_span(values + g, medians[row], scratch, n, g);
    return scratch;
  }
};

// Output words of an encoder, written branch-free: reserve() room for the next words, then
// put_if(word, emitted) stores the word and advances only when `emitted`.
template <class Word>
class WordBuffer {
 public:
  void reserve(int64_t more) {
    if (size_ + more > static_cast<int64_t>(words_.size())) {
      words_.resize(std::max<int64_t>(2 * static_cast<int64_t>(words_.size()), size_ + more));
    }
  }
  void put_if(Word word, bool emitted) {
    words_[size_] = word;
    size_ += emitted;
  }
  int64_t size() const { return size_; }
  // Raw access for hot loops: the next free slot, and committing words written through it.
  Word* cursor() { return words_.data() + size_; }
  void commit(const Word* cursor) { size_ = cursor - words_.data(); }
  std::vector<Word> take() {
    words_.resize(size_);
    size_ = 0;
    return std::move(words_);
  }

 private:
  std::vector<Word> words_;
  int64_t size_ = 0;
};

// Most coding operations one symbol can take: the CDF symbol, the escape count, the payload.
constexpr int kMaxOpsPerSymbol = 2 + kMaxEscapeNibbles;

// Calls fn(reader) with the reader matching `source`.
template <class Fn>
inline void with_symbol_reader(const Source& source, Fn&& fn) {
  if (source.symbols != nullptr) {
    fn(IntSymbols{source.symbols});
  } else {
    fn(QuantizedValues{source.values, source.medians});
  }
}

// Calls fn(store) with a store(g, row, symbol) writing into `sink`.
template <class Fn>
inline void with_symbol_store(const Sink& sink, Fn&& fn) {
  if (sink.symbols != nullptr) {
    int32_t* out = sink.symbols;
    fn([out](int64_t g, int64_t, int32_t symbol) { out[g] = symbol; });
  } else {
    float* out = sink.values;
    const float* medians = sink.medians;
    fn([out, medians](int64_t g, int64_t row, int32_t symbol) { out[g] = static_cast<float>(symbol) + medians[row]; });
  }
}

// Calls fn(row, lo, hi) for the runs [lo, hi) of [begin, end) that share one row, in
// ascending (kReverse = false) or descending order.
template <bool kReverse, class Fn>
inline void for_each_row_run(const Tables& tables, const Layout& layout, int64_t begin, int64_t end, Fn&& fn) {
  if (layout.indexes != nullptr) {
    for (int64_t k = 0; k < end - begin; ++k) {
      const int64_t g = kReverse ? end - 1 - k : begin + k;
      fn(checked_row(tables, layout.indexes[g], g), g, g + 1);
    }
    return;
  }
  const int64_t s = layout.per_channel;
  if (!kReverse) {
    for (int64_t lo = begin; lo < end;) {
      const int64_t q = lo / s;
      const int64_t hi = std::min(end, (q + 1) * s);
      fn(q % layout.channels, lo, hi);
      lo = hi;
    }
  } else {
    for (int64_t hi = end; hi > begin;) {
      const int64_t q = (hi - 1) / s;
      const int64_t lo = std::max(begin, q * s);
      fn(q % layout.channels, lo, hi);
      hi = lo;
    }
  }
}

}  // namespace udm_rans
