// Parallel ("lanes") rANS format on the CPU: groups of 32 interleaved 32-bit lanes, threads over
// groups. The byte layout is in lanes_format.h, the lane order in rans_core.h.
#include "rans/parallel.h"

#include <array>
#include <cstring>

#include "rans/lanes_format.h"
#include "rans/rans_cpu.h"

namespace udm_rans {
namespace {

namespace fmt = lanes_format;

constexpr uint64_t kLaneNibbleRenorm = static_cast<uint64_t>(kLaneLow >> kNibbleBits) << 16;
constexpr double kLaneCostBytes = 4.0;  // fixed cost of one lane (state, alignment, group table)
constexpr int64_t kEstimateSamples = 1 << 18;

template <class T>
void put_le(std::vector<uint8_t> &out, int64_t at, T value) {
  std::memcpy(out.data() + at, &value, sizeof(T));
}

template <class T>
T get_le(const uint8_t *data, int64_t at) {
  T value;
  std::memcpy(&value, data + at, sizeof(T));
  return value;
}

uint64_t checksum(const uint8_t *data, int64_t bytes) {
  const int64_t words = bytes / 4;
  uint64_t total = 0;
  for (int64_t i = 0; i < words; ++i) total += checksum_term(i, get_le<uint32_t>(data, 4 * i));
  return total;
}

int64_t row_of(const Tables &tables, const Layout &layout, int64_t g) {
  if (layout.indexes != nullptr) return checked_row(tables, layout.indexes[g], g);
  return (g / layout.per_channel) % layout.channels;
}

// Rows of the (up to) 32 symbols [base, base + active) of one lane step; true when they all
// share rows[0].
bool step_rows(const Tables &tables, const Layout &layout, int64_t base, int active, int64_t *rows) {
  if (layout.indexes == nullptr) {
    const int64_t s = layout.per_channel;
    const int64_t q = base / s;
    if (base - q * s + active <= s) {
      rows[0] = q % layout.channels;
      return true;
    }
  }
  for (int j = 0; j < active; ++j) rows[j] = row_of(tables, layout, base + j);
  return false;
}

template <class Reader>
double estimate_bits(const Tables &tables, const Layout &layout, const Reader &read, int64_t n_symbols) {
  const int64_t stride = std::max<int64_t>(1, n_symbols / kEstimateSamples);
  double bits = 0;
  int64_t samples = 0;
  for (int64_t g = 0; g < n_symbols; g += stride, ++samples) {
    const int64_t row = row_of(tables, layout, g);
    const int64_t value = static_cast<int64_t>(read(g, row)) - tables.offset(row);
    const int32_t max_value = tables.max_value(row);
    if (static_cast<uint64_t>(value) < static_cast<uint64_t>(max_value)) {
      bits += tables.cost_row(row)[value] / 256.0;
    } else {
      bits += tables.cost_row(row)[max_value] / 256.0 +
              kNibbleBits * (1 + escape_nibble_count(escape_raw(value, max_value)));
    }
  }
  return samples == 0 ? 0.0 : bits * static_cast<double>(n_symbols) / static_cast<double>(samples);
}

struct GroupCode {
  std::array<uint32_t, kMaxLanes> states;
  std::vector<uint16_t> words;  // emission order (the stream stores them reversed)
};

class LaneEncoder {
 public:
  LaneEncoder() { states_.fill(kLaneLow); }

  // Room for `ops` more coding operations (one word each at most).
  void reserve(int64_t ops) { words_.reserve(ops); }

  void put_symbol(int lane, const EncodeSymbol &sym) {
    const uint64_t x = states_[lane];
    const bool emit = x >= (static_cast<uint64_t>(sym.freq) << 16);
    words_.put_if(static_cast<uint16_t>(x), emit);
    states_[lane] = static_cast<uint32_t>(encode_step(emit ? x >> 16 : x, sym));
  }

  void put_nibble(int lane, uint32_t nibble) {
    const uint32_t x = states_[lane];
    const bool emit = x >= kLaneNibbleRenorm;
    words_.put_if(static_cast<uint16_t>(x), emit);
    states_[lane] = ((emit ? x >> 16 : x) << kNibbleBits) | nibble;
  }

  void finish(GroupCode &code) {
    code.states = states_;
    code.words = words_.take();
  }

 private:
  std::array<uint32_t, kMaxLanes> states_;
  WordBuffer<uint16_t> words_;
};

// Escape-aware encoding of one lane step with per-lane rows: sub-op 0 is the CDF symbol, 1 the
// nibble count, 2.. the payload nibbles (LSB first); encoded in reverse (sub-op desc, lane desc).
void encode_step_general(const Tables &tables, LaneEncoder &encoder, int active, const int64_t *rows,
                         const int64_t *values) {
  int ops[kMaxLanes];
  uint64_t raws[kMaxLanes];
  int64_t bins[kMaxLanes];
  int max_ops = 1;
  for (int j = 0; j < active; ++j) {
    const int32_t max_value = tables.max_value(rows[j]);
    bins[j] = values[j];
    ops[j] = 1;
    if (static_cast<uint64_t>(values[j]) >= static_cast<uint64_t>(max_value)) {
      raws[j] = escape_raw(values[j], max_value);
      ops[j] = 2 + escape_nibble_count(raws[j]);
      bins[j] = max_value;
    }
    max_ops = std::max(max_ops, ops[j]);
  }
  for (int k = max_ops - 1; k >= 0; --k) {
    for (int j = active - 1; j >= 0; --j) {
      if (k >= ops[j]) continue;
      if (k == 0) {
        encoder.put_symbol(j, tables.encode_row(rows[j])[bins[j]]);
      } else if (k == 1) {
        encoder.put_nibble(j, static_cast<uint32_t>(ops[j] - 2));
      } else {
        encoder.put_nibble(j, static_cast<uint32_t>(raws[j] >> (kNibbleBits * (k - 2))) & kNibbleMask);
      }
    }
  }
}

template <class Reader>
void encode_group(const Tables &tables, const Layout &layout, const Reader &read, int width, int64_t first,
                  int64_t count, GroupCode &code) {
  LaneEncoder encoder;
  int64_t rows[kMaxLanes], values[kMaxLanes];
  int32_t scratch[kMaxLanes];
  const int64_t steps = (count + width - 1) / width;
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t base = first + t * width;
    const int active = static_cast<int>(std::min<int64_t>(width, count - t * width));
    encoder.reserve(active);
    if (step_rows(tables, layout, base, active, rows)) {
      const EncodeRow row = tables.encode_view(rows[0]);
      const int32_t *symbols = read.span(base, active, rows[0], scratch);
      bool escaped = false;
      for (int j = 0; j < active; ++j) {
        values[j] = static_cast<int64_t>(symbols[j]) - row.offset;
        escaped |= static_cast<uint64_t>(values[j]) >= static_cast<uint64_t>(row.max_value);
      }
      if (!escaped) {
        for (int j = active - 1; j >= 0; --j) encoder.put_symbol(j, row.symbols[values[j]]);
        continue;
      }
      for (int j = 1; j < active; ++j) rows[j] = rows[0];
    } else {
      for (int j = 0; j < active; ++j) values[j] = static_cast<int64_t>(read(base + j, rows[j])) - tables.offset(rows[j]);
    }
    encoder.reserve(active * kMaxOpsPerSymbol);
    encode_step_general(tables, encoder, active, rows, values);
  }
  encoder.finish(code);
}

class LaneDecoder {
 public:
  LaneDecoder(const uint8_t *states, int width, const uint8_t *words, int64_t n_words, int64_t group)
      : width_(width), words_(words), n_words_(n_words), group_(group) {
    for (int j = 0; j < width_; ++j) {
      x_[j] = get_le<uint32_t>(states, 4 * j);
      if (x_[j] < kLaneLow) fail(where() + " has an invalid lane state (corrupted)");
    }
  }

  uint32_t get_symbol(int lane, const DecodeRow &row) {
    uint32_t x = x_[lane];
    const uint32_t cum = x & (kProbScale - 1);
    const uint32_t s = row.find(cum);
    x = (row.cdf[s + 1] - row.cdf[s]) * (x >> kPrecision) + cum - row.cdf[s];
    x_[lane] = x < kLaneLow ? (x << 16) | next_word() : x;
    return s;
  }

  uint32_t get_nibble(int lane) {
    uint32_t x = x_[lane];
    const uint32_t nibble = x & kNibbleMask;
    x >>= kNibbleBits;
    x_[lane] = x < kLaneLow ? (x << 16) | next_word() : x;
    return nibble;
  }

  void finish() const {
    if (pos_ != n_words_) fail(where() + " has unread words (corrupted, or wrong tables)");
    for (int j = 0; j < width_; ++j) {
      if (x_[j] != kLaneLow) fail(where() + " did not end in the initial lane states (corrupted, or wrong tables)");
    }
  }

  std::string where() const { return "lane group " + std::to_string(group_); }

 private:
  uint32_t next_word() {
    if (pos_ >= n_words_) fail(where() + " is truncated (corrupted, or wrong tables)");
    return get_le<uint16_t>(words_, 2 * pos_++);
  }

  uint32_t x_[kMaxLanes];
  int width_;
  const uint8_t *words_;
  int64_t n_words_, group_, pos_ = 0;
};

// Finishes a lane step whose lanes decoded the CDF indexes `values` (escape bins still to
// resolve) with per-lane rows: count nibbles (lane asc), then payload nibbles (nibble asc,
// lane asc); stores the symbols.
template <class Store>
void finish_step_general(const Tables &tables, LaneDecoder &decoder, int64_t base, int active,
                         const int64_t *rows, const int64_t *values, const Store &store) {
  uint32_t nibbles[kMaxLanes];
  uint64_t raws[kMaxLanes] = {};
  uint32_t max_nibbles = 0;
  for (int j = 0; j < active; ++j) {
    nibbles[j] = 0;
    if (values[j] != tables.max_value(rows[j])) continue;
    nibbles[j] = decoder.get_nibble(j);
    if (nibbles[j] > static_cast<uint32_t>(kMaxEscapeNibbles)) fail(decoder.where() + " has an invalid escape length (corrupted)");
    max_nibbles = std::max(max_nibbles, nibbles[j]);
  }
  for (uint32_t k = 0; k < max_nibbles; ++k) {
    for (int j = 0; j < active; ++j) {
      if (k < nibbles[j]) raws[j] |= static_cast<uint64_t>(decoder.get_nibble(j)) << (kNibbleBits * k);
    }
  }
  for (int j = 0; j < active; ++j) {
    const int32_t max_value = tables.max_value(rows[j]);
    const int64_t value = values[j] == max_value ? escape_value(raws[j], max_value) : values[j];
    const int64_t symbol = value + tables.offset(rows[j]);
    if (symbol < INT32_MIN || symbol > INT32_MAX) fail(decoder.where() + " decodes a symbol outside int32 (corrupted)");
    store(base + j, rows[j], static_cast<int32_t>(symbol));
  }
}

template <class Store>
void decode_group(const Tables &tables, const Layout &layout, LaneDecoder &decoder, int width, int64_t first,
                  int64_t count, const Store &store) {
  int64_t rows[kMaxLanes], values[kMaxLanes];
  const int64_t steps = (count + width - 1) / width;
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t base = first + t * width;
    const int active = static_cast<int>(std::min<int64_t>(width, count - t * width));
    bool escaped = false;
    if (step_rows(tables, layout, base, active, rows)) {
      const DecodeRow row = tables.decode_view(rows[0]);
      for (int j = 0; j < active; ++j) {
        values[j] = decoder.get_symbol(j, row);
        escaped |= values[j] == row.max_value;
      }
      if (!escaped) {
        for (int j = 0; j < active; ++j) store(base + j, rows[0], static_cast<int32_t>(values[j]) + row.offset);
        continue;
      }
      for (int j = 1; j < active; ++j) rows[j] = rows[0];
    } else {
      for (int j = 0; j < active; ++j) values[j] = decoder.get_symbol(j, tables.decode_view(rows[j]));
    }
    finish_step_general(tables, decoder, base, active, rows, values, store);
  }
  decoder.finish();
}

}  // namespace

std::vector<uint8_t> lanes_encode(const Tables &tables, const Layout &layout, const Source &source,
                                  int64_t n_symbols, const std::vector<int64_t> &shape,
                                  const LaneOptions &options) {
  if (static_cast<int>(shape.size()) > fmt::kMaxDims) fail("at most 16 dimensions can be stored");
  int64_t lanes = options.lanes;
  if (lanes <= 0) {
    double bits = 0;
    with_symbol_reader(source, [&](const auto &read) { bits = estimate_bits(tables, layout, read, n_symbols); });
    lanes = static_cast<int64_t>(options.lane_overhead * bits / 8.0 / kLaneCostBytes);
  }
  // Full warps of 32 lanes; a single narrower group when even 32 lanes cost too much.
  const int width = static_cast<int>(std::clamp<int64_t>(lanes, 1, kMaxLanes));
  int64_t groups = std::max<int64_t>(1, (lanes + kMaxLanes - 1) / kMaxLanes);
  int64_t group_symbols = (n_symbols + groups - 1) / groups;
  group_symbols = std::max<int64_t>(width, (group_symbols + width - 1) / width * width);
  if (group_symbols > UINT32_MAX - kMaxLanes) fail("too many symbols per lane group");
  groups = (n_symbols + group_symbols - 1) / group_symbols;

  std::vector<GroupCode> codes(groups);
  with_symbol_reader(source, [&](const auto &read) {
    parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const int64_t first = g * group_symbols;
        encode_group(tables, layout, read, width, first, std::min(group_symbols, n_symbols - first), codes[g]);
      }
    });
  });

  int64_t total_words = 0;
  for (const GroupCode &code : codes) {
    if (code.words.size() > UINT32_MAX) fail("a lane group produced too many words");
    total_words += static_cast<int64_t>(code.words.size());
  }
  const int64_t header_bytes = fmt::kFixedHeaderBytes + 8 * static_cast<int64_t>(shape.size()) + 4 * groups;
  const int64_t payload_bytes = 4 * width * groups + 2 * total_words + 2 * (total_words % 2);
  std::vector<uint8_t> out(header_bytes + payload_bytes, 0);
  std::memcpy(out.data() + fmt::kOffMagic, fmt::kMagic, 4);
  put_le<uint16_t>(out, fmt::kOffVersion, fmt::kVersion);
  put_le<uint8_t>(out, fmt::kOffCoder, fmt::kCoderLanes32);
  put_le<uint8_t>(out, fmt::kOffFlags, layout.indexes != nullptr ? fmt::kFlagExplicitIndexes : 0);
  put_le<uint64_t>(out, fmt::kOffFingerprint, tables.fingerprint());
  put_le<uint64_t>(out, fmt::kOffSymbols, n_symbols);
  put_le<uint64_t>(out, fmt::kOffPerChannel, layout.indexes != nullptr ? 0 : layout.per_channel);
  put_le<uint32_t>(out, fmt::kOffChannels, layout.indexes != nullptr ? 0 : static_cast<uint32_t>(layout.channels));
  put_le<uint32_t>(out, fmt::kOffGroups, static_cast<uint32_t>(groups));
  put_le<uint32_t>(out, fmt::kOffGroupSymbols, static_cast<uint32_t>(group_symbols));
  put_le<uint16_t>(out, fmt::kOffDims, static_cast<uint16_t>(shape.size()));
  put_le<uint16_t>(out, fmt::kOffLanes, static_cast<uint16_t>(width));
  int64_t at = fmt::kFixedHeaderBytes;
  for (int64_t dim : shape) {
    put_le<uint64_t>(out, at, static_cast<uint64_t>(dim));
    at += 8;
  }
  for (const GroupCode &code : codes) {
    put_le<uint32_t>(out, at, static_cast<uint32_t>(code.words.size()));
    at += 4;
  }
  uint8_t *states = out.data() + header_bytes;
  uint8_t *words = states + 4 * width * groups;
  for (const GroupCode &code : codes) {
    std::memcpy(states, code.states.data(), 4 * width);
    states += 4 * width;
    const int64_t n = static_cast<int64_t>(code.words.size());
    for (int64_t i = 0; i < n; ++i) std::memcpy(words + 2 * i, &code.words[n - 1 - i], 2);
    words += 2 * n;
  }
  put_le<uint64_t>(out, fmt::kOffPayloadChecksum, checksum(out.data() + header_bytes, payload_bytes));
  put_le<uint64_t>(out, fmt::kOffHeaderChecksum, checksum(out.data(), header_bytes));
  return out;
}

LaneHeaderInfo lanes_parse(ByteSpan data) {
  const uint8_t *p = data.data;
  if (data.size < fmt::kFixedHeaderBytes) fail("parallel rANS stream is truncated (no complete header)");
  if (std::memcmp(p + fmt::kOffMagic, fmt::kMagic, 4) != 0) fail("not a parallel rANS stream (bad magic)");
  LaneHeaderInfo info;
  info.version = get_le<uint16_t>(p, fmt::kOffVersion);
  if (info.version != fmt::kVersion) {
    fail("parallel rANS stream has version " + std::to_string(info.version) + "; this build reads version " +
         std::to_string(fmt::kVersion));
  }
  if (p[fmt::kOffCoder] != fmt::kCoderLanes32) fail("parallel rANS stream uses an unknown coder id");
  const uint8_t flags = p[fmt::kOffFlags];
  if (flags & ~fmt::kFlagExplicitIndexes) fail("parallel rANS stream has unknown flags");
  const uint16_t width = get_le<uint16_t>(p, fmt::kOffLanes);
  if (width < 1 || width > kMaxLanes) fail("parallel rANS stream has an unsupported lane count");
  info.explicit_indexes = flags & fmt::kFlagExplicitIndexes;
  info.fingerprint = get_le<uint64_t>(p, fmt::kOffFingerprint);
  const uint64_t n_symbols = get_le<uint64_t>(p, fmt::kOffSymbols);
  const uint64_t per_channel = get_le<uint64_t>(p, fmt::kOffPerChannel);
  const uint32_t channels = get_le<uint32_t>(p, fmt::kOffChannels);
  const uint32_t groups = get_le<uint32_t>(p, fmt::kOffGroups);
  const uint32_t group_symbols = get_le<uint32_t>(p, fmt::kOffGroupSymbols);
  const uint16_t ndim = get_le<uint16_t>(p, fmt::kOffDims);
  if (ndim > fmt::kMaxDims) fail("parallel rANS stream header is corrupted (too many dimensions)");
  const int64_t header_bytes = fmt::kFixedHeaderBytes + 8 * static_cast<int64_t>(ndim) + 4 * static_cast<int64_t>(groups);
  if (data.size < header_bytes) fail("parallel rANS stream is truncated (incomplete header)");
  std::vector<uint8_t> header(p, p + header_bytes);
  std::memset(header.data() + fmt::kOffHeaderChecksum, 0, 8);
  if (checksum(header.data(), header_bytes) != get_le<uint64_t>(p, fmt::kOffHeaderChecksum)) {
    fail("parallel rANS stream header checksum mismatch (corrupted)");
  }
  // The header is intact from here on; check its consistency anyway (it may be crafted).
  if (n_symbols > (1ull << 62) || per_channel > (1ull << 62)) fail("parallel rANS stream header is invalid (sizes)");
  if (group_symbols == 0 || group_symbols % width != 0) fail("parallel rANS stream header is invalid (group size)");
  if (groups != (n_symbols + group_symbols - 1) / group_symbols) fail("parallel rANS stream header is invalid (group count)");
  if (info.explicit_indexes) {
    if (channels != 0 || per_channel != 0) fail("parallel rANS stream header is invalid (rows)");
  } else if (channels == 0 || per_channel == 0 || n_symbols % per_channel != 0 ||
             (n_symbols / per_channel) % channels != 0) {
    fail("parallel rANS stream header is invalid (implicit rows)");
  }
  uint64_t elements = 1;
  for (int d = 0; d < ndim; ++d) {
    const uint64_t dim = get_le<uint64_t>(p, fmt::kFixedHeaderBytes + 8 * d);
    if (dim != 0 && elements > n_symbols / dim + 1) fail("parallel rANS stream header is invalid (shape)");
    elements *= dim;
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  if (elements != n_symbols) fail("parallel rANS stream header is invalid (shape does not match the symbol count)");
  uint64_t total_words = 0;
  for (uint32_t g = 0; g < groups; ++g) {
    total_words += get_le<uint32_t>(p, fmt::kFixedHeaderBytes + 8 * ndim + 4 * static_cast<int64_t>(g));
  }
  const uint64_t expected = static_cast<uint64_t>(header_bytes) + 4ull * width * groups + 2 * total_words + 2 * (total_words % 2);
  if (static_cast<uint64_t>(data.size) < expected) fail("parallel rANS stream is truncated");
  if (static_cast<uint64_t>(data.size) > expected) fail("parallel rANS stream has trailing bytes");
  if (checksum(p + header_bytes, data.size - header_bytes) != get_le<uint64_t>(p, fmt::kOffPayloadChecksum)) {
    fail("parallel rANS stream payload checksum mismatch (corrupted)");
  }
  info.n_symbols = static_cast<int64_t>(n_symbols);
  info.per_channel = static_cast<int64_t>(per_channel);
  info.channels = channels;
  info.n_groups = groups;
  info.group_symbols = group_symbols;
  info.lanes_per_group = width;
  info.payload_offset = header_bytes;
  return info;
}

void lanes_decode(const Tables &tables, ByteSpan data, const LaneHeaderInfo &info, const int32_t *indexes,
                  const Sink &sink) {
  if (info.fingerprint != tables.fingerprint()) {
    fail("parallel rANS stream was made with different CDF tables (fingerprint mismatch)");
  }
  if (info.explicit_indexes != (indexes != nullptr)) {
    fail(info.explicit_indexes ? "this parallel rANS stream needs the explicit indexes it was coded with"
                               : "this parallel rANS stream uses implicit rows; do not pass indexes");
  }
  if (!info.explicit_indexes && info.channels > tables.rows()) {
    fail("parallel rANS stream uses more channels than the tables have rows");
  }
  Layout layout;
  layout.indexes = indexes;
  layout.per_channel = std::max<int64_t>(1, info.per_channel);
  layout.channels = std::max<int64_t>(1, info.channels);
  const int64_t groups = info.n_groups;
  const int64_t counts_at = fmt::kFixedHeaderBytes + 8 * static_cast<int64_t>(info.shape.size());
  std::vector<int64_t> word_start(groups + 1, 0);
  for (int64_t g = 0; g < groups; ++g) {
    word_start[g + 1] = word_start[g] + get_le<uint32_t>(data.data, counts_at + 4 * g);
  }
  const uint8_t *states = data.data + info.payload_offset;
  const int width = info.lanes_per_group;
  const uint8_t *words = states + 4 * width * groups;
  with_symbol_store(sink, [&](const auto &store) {
    parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        LaneDecoder decoder(states + 4 * width * g, width, words + 2 * word_start[g], word_start[g + 1] - word_start[g], g);
        const int64_t first = g * info.group_symbols;
        decode_group(tables, layout, decoder, width, first, std::min(info.group_symbols, info.n_symbols - first), store);
      }
    });
  });
}

}  // namespace udm_rans
