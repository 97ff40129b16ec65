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

template <class T>
void put_le(std::vector<uint8_t>& out, int64_t at, T value) {
  std::memcpy(out.data() + at, &value, sizeof(T));
}

template <class T>
T get_le(const uint8_t* data, int64_t at) {
  T value;
  std::memcpy(&value, data + at, sizeof(T));
  return value;
}

int64_t row_of(const Tables& tables, const Layout& layout, int64_t g) {
  if (layout.indexes != nullptr) return checked_row(tables, layout.indexes[g], g);
  return (g / layout.per_channel) % layout.channels;
}

// Rows of the (up to) 32 symbols [base, base + active) of one lane step; true when they all
// share rows[0].
bool step_rows(const Tables& tables, const Layout& layout, int64_t base, int active, int64_t* rows) {
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

// Checksum of a header block, its own checksum field counted as zero.
uint64_t header_checksum(const uint8_t* header, int64_t header_bytes) {
  constexpr int64_t kFieldWord = fmt::kOffHeaderChecksum / 4;
  uint64_t total = 0;
  for (int64_t i = 0; i < header_bytes / 4; ++i) {
    const bool field = i == kFieldWord || i == kFieldWord + 1;
    total += checksum_term(i, field ? 0u : get_le<uint32_t>(header, 4 * i));
  }
  return total;
}

// Sampled code length (lanes_format.h) of the input, in 1/256 bits; integer, so every
// implementation that samples the same symbols gets the same lane layout.
template <class Reader>
uint64_t estimate_cost(const Tables& tables, const Layout& layout, const Reader& read, int64_t n_symbols) {
  const int64_t stride = fmt::estimate_stride(n_symbols);
  uint64_t cost = 0;
  for (int64_t g = 0; g < n_symbols; g += stride) {
    const int64_t row = row_of(tables, layout, g);
    const int64_t value = static_cast<int64_t>(read(g, row)) - tables.offset(row);
    const int32_t max_value = tables.max_value(row);
    if (static_cast<uint64_t>(value) < static_cast<uint64_t>(max_value)) {
      cost += tables.cost_row(row)[value];
    } else {
      cost += tables.cost_row(row)[max_value] + fmt::escape_cost(escape_nibble_count(escape_raw(value, max_value)));
    }
  }
  return cost;
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

  void put_symbol(int lane, const EncodeSymbol& sym) {
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

  void finish(GroupCode& code) {
    code.states = states_;
    code.words = words_.take();
  }

 private:
  std::array<uint32_t, kMaxLanes> states_;
  WordBuffer<uint16_t> words_;
};

// Escape-aware encoding of one lane step with per-lane rows: sub-op 0 is the CDF symbol, 1 the
// nibble count, 2.. the payload nibbles (LSB first); encoded in reverse (sub-op desc, lane desc).
void encode_step_general(const Tables& tables, LaneEncoder& encoder, int active, const int64_t* rows,
                         const int64_t* values) {
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
void encode_group(const Tables& tables, const Layout& layout, const Reader& read, int width, int64_t first,
                  int64_t count, GroupCode& code) {
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
      const int32_t* symbols = read.span(base, active, rows[0], scratch);
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
      for (int j = 0; j < active; ++j)
        values[j] = static_cast<int64_t>(read(base + j, rows[j])) - tables.offset(rows[j]);
    }
    encoder.reserve(active * kMaxOpsPerSymbol);
    encode_step_general(tables, encoder, active, rows, values);
  }
  encoder.finish(code);
}

class LaneDecoder {
 public:
  LaneDecoder(const uint8_t* states, int width, const uint8_t* words, int64_t n_words, int64_t group)
      : width_(width), words_(words), n_words_(n_words), group_(group) {
    for (int j = 0; j < width_; ++j) {
      x_[j] = get_le<uint32_t>(states, 4 * j);
      if (x_[j] < kLaneLow) fail(where() + " has an invalid lane state (corrupted)");
    }
  }

  uint32_t get_symbol(int lane, const DecodeRow& row) {
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
  const uint8_t* words_;
  int64_t n_words_, group_, pos_ = 0;
};

// Finishes a lane step whose lanes decoded the CDF indexes `values` (escape bins still to
// resolve) with per-lane rows: count nibbles (lane asc), then payload nibbles (nibble asc,
// lane asc); stores the symbols.
template <class Store>
void finish_step_general(const Tables& tables, LaneDecoder& decoder, int64_t base, int active, const int64_t* rows,
                         const int64_t* values, const Store& store) {
  uint32_t nibbles[kMaxLanes];
  uint64_t raws[kMaxLanes] = {};
  uint32_t max_nibbles = 0;
  for (int j = 0; j < active; ++j) {
    nibbles[j] = 0;
    if (values[j] != tables.max_value(rows[j])) continue;
    nibbles[j] = decoder.get_nibble(j);
    if (nibbles[j] > static_cast<uint32_t>(kMaxEscapeNibbles))
      fail(decoder.where() + " has an invalid escape length (corrupted)");
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
void decode_group(const Tables& tables, const Layout& layout, LaneDecoder& decoder, int width, int64_t first,
                  int64_t count, const Store& store) {
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

std::vector<uint8_t> lanes_encode(const Tables& tables, const Layout& layout, const Source& source, int64_t n_symbols,
                                  const std::vector<int64_t>& shape, const LaneOptions& options) {
  if (static_cast<int>(shape.size()) > fmt::kMaxDims) fail("at most 16 dimensions can be stored");
  uint64_t sampled_cost = 0;
  if (options.lanes <= 0) {
    with_symbol_reader(source,
                       [&](const auto& read) { sampled_cost = estimate_cost(tables, layout, read, n_symbols); });
  }
  const fmt::LaneLayout lane_layout = fmt::choose_layout(sampled_cost, n_symbols, options.lane_overhead, options.lanes);
  const int width = lane_layout.width;
  const int64_t groups = lane_layout.groups, group_symbols = lane_layout.group_symbols;
  if (group_symbols > UINT32_MAX - kMaxLanes) fail("too many symbols per lane group");

  std::vector<GroupCode> codes(groups);
  with_symbol_reader(source, [&](const auto& read) {
    parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        const int64_t first = g * group_symbols;
        encode_group(tables, layout, read, width, first, std::min(group_symbols, n_symbols - first), codes[g]);
      }
    });
  });

  LaneHeaderInfo info;
  info.explicit_indexes = layout.indexes != nullptr;
  info.fingerprint = tables.fingerprint();
  info.n_symbols = n_symbols;
  info.per_channel = layout.per_channel;
  info.channels = layout.channels;
  info.n_groups = groups;
  info.group_symbols = group_symbols;
  info.lanes_per_group = width;
  info.shape = shape;
  info.word_start.assign(1, 0);
  for (const GroupCode& code : codes) info.word_start.push_back(info.word_start.back() + code.words.size());
  std::vector<uint8_t> out = lanes_header(info);
  const int64_t header_bytes = static_cast<int64_t>(out.size());
  const int64_t payload_bytes = lanes_payload_bytes(info);
  out.resize(header_bytes + payload_bytes, 0);
  uint8_t* states = out.data() + header_bytes;
  uint8_t* words = states + 4 * width * groups;
  for (const GroupCode& code : codes) {
    std::memcpy(states, code.states.data(), 4 * width);
    states += 4 * width;
    const int64_t n = static_cast<int64_t>(code.words.size());
    for (int64_t i = 0; i < n; ++i) std::memcpy(words + 2 * i, &code.words[n - 1 - i], 2);
    words += 2 * n;
  }
  seal_lanes_header(out.data(), header_bytes, lanes_checksum(out.data() + header_bytes, payload_bytes));
  return out;
}

uint64_t lanes_checksum(const uint8_t* data, int64_t bytes) {
  uint64_t total = 0;
  for (int64_t i = 0; i < bytes / 4; ++i) total += checksum_term(i, get_le<uint32_t>(data, 4 * i));
  return total;
}

int64_t lanes_payload_bytes(const LaneHeaderInfo& info) {
  const int64_t words = info.word_start.back();
  return 4 * static_cast<int64_t>(info.lanes_per_group) * info.n_groups + 2 * words + 2 * (words % 2);
}

std::vector<uint8_t> lanes_header(const LaneHeaderInfo& info) {
  const int64_t groups = info.n_groups;
  std::vector<uint8_t> out(fmt::kFixedHeaderBytes + 8 * info.shape.size() + 4 * groups, 0);
  std::memcpy(out.data() + fmt::kOffMagic, fmt::kMagic, 4);
  put_le<uint16_t>(out, fmt::kOffVersion, fmt::kVersion);
  put_le<uint8_t>(out, fmt::kOffCoder, fmt::kCoderLanes32);
  put_le<uint8_t>(out, fmt::kOffFlags, info.explicit_indexes ? fmt::kFlagExplicitIndexes : 0);
  put_le<uint64_t>(out, fmt::kOffFingerprint, info.fingerprint);
  put_le<uint64_t>(out, fmt::kOffSymbols, info.n_symbols);
  put_le<uint64_t>(out, fmt::kOffPerChannel, info.explicit_indexes ? 0 : info.per_channel);
  put_le<uint32_t>(out, fmt::kOffChannels, info.explicit_indexes ? 0 : static_cast<uint32_t>(info.channels));
  put_le<uint32_t>(out, fmt::kOffGroups, static_cast<uint32_t>(groups));
  put_le<uint32_t>(out, fmt::kOffGroupSymbols, static_cast<uint32_t>(info.group_symbols));
  put_le<uint16_t>(out, fmt::kOffDims, static_cast<uint16_t>(info.shape.size()));
  put_le<uint16_t>(out, fmt::kOffLanes, static_cast<uint16_t>(info.lanes_per_group));
  int64_t at = fmt::kFixedHeaderBytes;
  for (int64_t dim : info.shape) {
    put_le<uint64_t>(out, at, static_cast<uint64_t>(dim));
    at += 8;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t words = info.word_start[g + 1] - info.word_start[g];
    if (words > UINT32_MAX) fail("a lane group produced too many words");
    put_le<uint32_t>(out, at, static_cast<uint32_t>(words));
    at += 4;
  }
  return out;
}

void seal_lanes_header(uint8_t* header, int64_t header_bytes, uint64_t payload_checksum) {
  std::memcpy(header + fmt::kOffPayloadChecksum, &payload_checksum, 8);
  const uint64_t sum = header_checksum(header, header_bytes);
  std::memcpy(header + fmt::kOffHeaderChecksum, &sum, 8);
}

int64_t lanes_header_size(const uint8_t* fixed, int64_t available) {
  if (available < fmt::kFixedHeaderBytes) fail("parallel rANS stream is truncated (no complete header)");
  if (std::memcmp(fixed + fmt::kOffMagic, fmt::kMagic, 4) != 0) fail("not a parallel rANS stream (bad magic)");
  const uint16_t version = get_le<uint16_t>(fixed, fmt::kOffVersion);
  if (version != fmt::kVersion) {
    fail("parallel rANS stream has version " + std::to_string(version) + "; this build reads version " +
         std::to_string(fmt::kVersion));
  }
  if (fixed[fmt::kOffCoder] != fmt::kCoderLanes32) fail("parallel rANS stream uses an unknown coder id");
  const uint16_t ndim = get_le<uint16_t>(fixed, fmt::kOffDims);
  if (ndim > fmt::kMaxDims) fail("parallel rANS stream header is corrupted (too many dimensions)");
  return fmt::kFixedHeaderBytes + 8 * static_cast<int64_t>(ndim) +
         4 * static_cast<int64_t>(get_le<uint32_t>(fixed, fmt::kOffGroups));
}

LaneHeaderInfo lanes_parse_header(const uint8_t* p, int64_t total_size) {
  const int64_t header_bytes = lanes_header_size(p, total_size);
  if (total_size < header_bytes) fail("parallel rANS stream is truncated (incomplete header)");
  if (header_checksum(p, header_bytes) != get_le<uint64_t>(p, fmt::kOffHeaderChecksum)) {
    fail("parallel rANS stream header checksum mismatch (corrupted)");
  }
  // The header is intact from here on; check its consistency anyway (it may be crafted).
  LaneHeaderInfo info;
  info.version = fmt::kVersion;
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
  if (n_symbols > (1ull << 62) || per_channel > (1ull << 62)) fail("parallel rANS stream header is invalid (sizes)");
  if (group_symbols == 0 || group_symbols % width != 0) fail("parallel rANS stream header is invalid (group size)");
  if (groups != (n_symbols + group_symbols - 1) / group_symbols)
    fail("parallel rANS stream header is invalid (group count)");
  if (info.explicit_indexes) {
    if (channels != 0 || per_channel != 0) fail("parallel rANS stream header is invalid (rows)");
  } else if (channels == 0 || per_channel == 0 || n_symbols % per_channel != 0 ||
             (n_symbols / per_channel) % channels != 0) {
    fail("parallel rANS stream header is invalid (implicit rows)");
  }
  // Products of the dims (all, and from dim 2 on), saturated above the size limit; any zero dim
  // makes a product 0 whatever the other dims are, so each dim is bounded on its own as well.
  constexpr uint64_t kMaxSize = 1ull << 62;
  const auto times = [](uint64_t product, uint64_t dim) {
    return dim != 0 && product > kMaxSize / dim ? kMaxSize + 1 : product * dim;
  };
  uint64_t elements = 1, item_tail = 1;
  bool zero = false, zero_tail = false;
  for (int d = 0; d < ndim; ++d) {
    const uint64_t dim = get_le<uint64_t>(p, fmt::kFixedHeaderBytes + 8 * d);
    if (dim > kMaxSize) fail("parallel rANS stream header is invalid (shape)");
    if (dim == 0) {
      zero = true;
      zero_tail = zero_tail || d >= 2;
    } else {
      elements = times(elements, dim);
      if (d >= 2) item_tail = times(item_tail, dim);
    }
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  if ((zero ? 0 : elements) != n_symbols) {
    fail("parallel rANS stream header is invalid (shape does not match the symbol count)");
  }
  // implicit rows: [N, C, *spatial] with row c for channel c (per_channel is 1 for empty spatial dims)
  if (!info.explicit_indexes && (ndim < 2 || info.shape[1] != channels || (zero_tail ? 1 : item_tail) != per_channel)) {
    fail("parallel rANS stream header is invalid (shape does not match the channel rows)");
  }
  info.word_start.assign(groups + 1, 0);
  for (uint32_t g = 0; g < groups; ++g) {
    info.word_start[g + 1] =
        info.word_start[g] + get_le<uint32_t>(p, fmt::kFixedHeaderBytes + 8 * ndim + 4 * static_cast<int64_t>(g));
  }
  info.n_symbols = static_cast<int64_t>(n_symbols);
  info.per_channel = static_cast<int64_t>(per_channel);
  info.channels = channels;
  info.n_groups = groups;
  info.group_symbols = group_symbols;
  info.lanes_per_group = width;
  info.payload_offset = header_bytes;
  info.payload_checksum = get_le<uint64_t>(p, fmt::kOffPayloadChecksum);
  const int64_t expected = header_bytes + lanes_payload_bytes(info);
  if (total_size < expected) fail("parallel rANS stream is truncated");
  if (total_size > expected) fail("parallel rANS stream has trailing bytes");
  return info;
}

LaneHeaderInfo lanes_parse(ByteSpan data) {
  const LaneHeaderInfo info = lanes_parse_header(data.data, data.size);
  if (lanes_checksum(data.data + info.payload_offset, data.size - info.payload_offset) != info.payload_checksum) {
    fail("parallel rANS stream payload checksum mismatch (corrupted)");
  }
  return info;
}

void check_lanes_decode_inputs(const Tables& tables, const LaneHeaderInfo& info, bool has_indexes) {
  if (info.fingerprint != tables.fingerprint()) {
    fail("parallel rANS stream was made with different CDF tables (fingerprint mismatch)");
  }
  if (info.explicit_indexes != has_indexes) {
    fail(info.explicit_indexes ? "this parallel rANS stream needs the explicit indexes it was coded with"
                               : "this parallel rANS stream uses implicit rows; do not pass indexes");
  }
  if (!info.explicit_indexes && info.channels > tables.rows()) {
    fail("parallel rANS stream uses more channels than the tables have rows");
  }
}

void lanes_decode(const Tables& tables, ByteSpan data, const LaneHeaderInfo& info, const int32_t* indexes,
                  const Sink& sink) {
  check_lanes_decode_inputs(tables, info, indexes != nullptr);
  Layout layout;
  layout.indexes = indexes;
  layout.per_channel = std::max<int64_t>(1, info.per_channel);
  layout.channels = std::max<int64_t>(1, info.channels);
  const int64_t groups = info.n_groups;
  const std::vector<int64_t>& word_start = info.word_start;
  const uint8_t* states = data.data + info.payload_offset;
  const int width = info.lanes_per_group;
  const uint8_t* words = states + 4 * width * groups;
  with_symbol_store(sink, [&](const auto& store) {
    parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        LaneDecoder decoder(states + 4 * width * g, width, words + 2 * word_start[g], word_start[g + 1] - word_start[g],
                            g);
        const int64_t first = g * info.group_symbols;
        decode_group(tables, layout, decoder, width, first, std::min(info.group_symbols, info.n_symbols - first),
                     store);
      }
    });
  });
}

}  // namespace udm_rans
