// compressai-compatible rANS streams (rans64, 16-bit CDFs, 4-bit escape nibbles), CPU.
#include "rans/parallel.h"

#include <cstring>

#include "rans/rans_cpu.h"

namespace udm_rans {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the rANS streams store host-order words; only little-endian hosts are supported");

void fail(const std::string& message) { throw std::invalid_argument(message); }

namespace {

constexpr uint64_t kNibbleRenorm = ((kCompatLow >> kNibbleBits) << 32);  // x_max of a nibble

constexpr int64_t kChunk = 1024;  // symbols per stream read (and quantized) at once
constexpr int kLockstep = 4;      // streams coded in an interleaved loop (independent dependency chains)

// Encoder of one stream. Callers reserve() for at most kChunk symbols at a time (one word
// each); escapes reserve their extra words themselves.
class CompatEncoder {
 public:
  void reserve(int64_t symbols) { words_.reserve(symbols); }

  // Codes one symbol of a row (the escape path for values outside the row's range).
  void put(const EncodeRow& row, int32_t symbol) {
    const int64_t value = static_cast<int64_t>(symbol) - row.offset;
    if (static_cast<uint64_t>(value) < static_cast<uint64_t>(row.max_value)) {
      put_symbol(row.symbols[value]);
      return;
    }
    words_.reserve(kChunk + kMaxOpsPerSymbol);
    const uint64_t raw = escape_raw(value, row.max_value);
    const int nibbles = escape_nibble_count(raw);
    for (int j = nibbles - 1; j >= 0; --j) put_nibble((raw >> (kNibbleBits * j)) & kNibbleMask);
    put_nibble(static_cast<uint32_t>(nibbles));
    put_symbol(row.symbols[row.max_value]);
  }

  CompatStream finish() {
    CompatStream stream;
    stream.words = words_.take();
    stream.state = x_;
    return stream;
  }

  // Encodes symbols[n - 1], ..., symbols[0] of one row for kLockstep streams at once, with the
  // states and output cursors in registers; escapes go through put().
  static void put_lockstep(CompatEncoder* encoders, const EncodeRow& row, const int32_t* const* symbols, int64_t n) {
    uint64_t x[kLockstep];
    uint32_t* out[kLockstep];
    for (int k = 0; k < kLockstep; ++k) {
      x[k] = encoders[k].x_;
      out[k] = encoders[k].words_.cursor();
    }
    const uint64_t max_value = static_cast<uint64_t>(row.max_value);
    for (int64_t i = n - 1; i >= 0; --i) {
      for (int k = 0; k < kLockstep; ++k) {
        const int64_t value = static_cast<int64_t>(symbols[k][i]) - row.offset;
        if (static_cast<uint64_t>(value) >= max_value) [[unlikely]] {
          encoders[k].x_ = x[k];
          encoders[k].words_.commit(out[k]);
          encoders[k].put(row, symbols[k][i]);
          x[k] = encoders[k].x_;
          out[k] = encoders[k].words_.cursor();
          continue;
        }
        const EncodeSymbol& sym = row.symbols[value];
        const bool emit = x[k] >= (static_cast<uint64_t>(sym.freq) << 47);
        *out[k] = static_cast<uint32_t>(x[k]);
        out[k] += emit;
        x[k] = encode_step(emit ? x[k] >> 32 : x[k], sym);
      }
    }
    for (int k = 0; k < kLockstep; ++k) {
      encoders[k].x_ = x[k];
      encoders[k].words_.commit(out[k]);
    }
  }

 private:
  void put_symbol(const EncodeSymbol& sym) {
    const bool emit = x_ >= (static_cast<uint64_t>(sym.freq) << 47);  // ((2^31 >> 16) << 32) * freq
    words_.put_if(static_cast<uint32_t>(x_), emit);
    x_ = encode_step(emit ? x_ >> 32 : x_, sym);
  }

  void put_nibble(uint32_t nibble) {
    const bool emit = x_ >= kNibbleRenorm;
    words_.put_if(static_cast<uint32_t>(x_), emit);
    x_ = ((emit ? x_ >> 32 : x_) << kNibbleBits) | nibble;
  }

  uint64_t x_ = kCompatLow;
  WordBuffer<uint32_t> words_;
};

class CompatDecoder {
 public:
  CompatDecoder() = default;
  CompatDecoder(ByteSpan stream, int64_t stream_id) : data_(stream.data), size_(stream.size), id_(stream_id) {
    if (size_ < 8 || size_ % 4 != 0) {
      fail(where() + " has " + std::to_string(size_) + " bytes; a rANS stream has a multiple of 4, at least 8");
    }
    std::memcpy(&x_, data_, 8);
    pos_ = 8;
    if (x_ < kCompatLow || x_ >= (1ull << 63)) fail(where() + " has an invalid initial state (corrupted)");
  }

  // Decodes one symbol of a row.
  int32_t get(const DecodeRow& row) {
    const uint32_t cum = static_cast<uint32_t>(x_) & (kProbScale - 1);
    const uint32_t s = row.find(cum);
    x_ = (row.cdf[s + 1] - row.cdf[s]) * (x_ >> kPrecision) + cum - row.cdf[s];
    if (x_ < kCompatLow) refill();
    if (static_cast<int32_t>(s) < row.max_value) return static_cast<int32_t>(s) + row.offset;
    return get_escape(row);
  }

  // Decodes positions [lo, hi) of one row for kLockstep streams at once, with the states in
  // registers and branch-free, bounds-clamped refills; escapes go through get_escape().
  // Calls put(k, position, symbol).
  template <class Put>
  static void get_lockstep(CompatDecoder* decoders, const DecodeRow& row, int64_t lo, int64_t hi, const Put& put) {
    uint64_t x[kLockstep];
    int64_t pos[kLockstep];
    bool truncated[kLockstep] = {};
    for (int k = 0; k < kLockstep; ++k) {
      x[k] = decoders[k].x_;
      pos[k] = decoders[k].pos_;
    }
    for (int64_t g = lo; g < hi; ++g) {
      for (int k = 0; k < kLockstep; ++k) {
        const CompatDecoder& decoder = decoders[k];
        const uint32_t cum = static_cast<uint32_t>(x[k]) & (kProbScale - 1);
        const uint32_t s = row.find(cum);
        x[k] = (row.cdf[s + 1] - row.cdf[s]) * (x[k] >> kPrecision) + cum - row.cdf[s];
        if (x[k] < kCompatLow) {
          if (pos[k] + 4 > decoder.size_) {
            truncated[k] = true;
          } else {
            uint32_t word;
            std::memcpy(&word, decoder.data_ + pos[k], 4);
            x[k] = (x[k] << 32) | word;
            pos[k] += 4;
          }
        }
        int32_t symbol = static_cast<int32_t>(s) + row.offset;
        if (static_cast<int32_t>(s) == row.max_value) [[unlikely]] {
          if (truncated[k]) break;
          decoders[k].x_ = x[k];
          decoders[k].pos_ = pos[k];
          symbol = decoders[k].get_escape(row);
          x[k] = decoders[k].x_;
          pos[k] = decoders[k].pos_;
        }
        put(k, g, symbol);
      }
    }
    for (int k = 0; k < kLockstep; ++k) {
      if (truncated[k]) fail(decoders[k].where() + " is truncated (or decoded with the wrong tables/size)");
      decoders[k].x_ = x[k];
      decoders[k].pos_ = pos[k];
    }
  }

  void finish() const {
    if (pos_ != size_)
      fail(where() + " has " + std::to_string(size_ - pos_) +
           " bytes left after the last symbol (corrupted, or wrong tables/size)");
    if (x_ != kCompatLow) fail(where() + " did not end in the initial state (corrupted, or wrong tables/size)");
  }

 private:
  std::string where() const { return "rANS stream " + std::to_string(id_); }

  void refill() {
    if (pos_ + 4 > size_) fail(where() + " is truncated (or decoded with the wrong tables/size)");
    uint32_t word;
    std::memcpy(&word, data_ + pos_, 4);
    pos_ += 4;
    x_ = (x_ << 32) | word;
  }

  uint32_t get_nibble() {
    const uint32_t nibble = static_cast<uint32_t>(x_) & kNibbleMask;
    x_ >>= kNibbleBits;
    if (x_ < kCompatLow) refill();
    return nibble;
  }

  int32_t get_escape(const DecodeRow& row) {
    const uint32_t nibbles = get_nibble();
    if (nibbles > static_cast<uint32_t>(kMaxEscapeNibbles)) fail(where() + " has an invalid escape length (corrupted)");
    uint64_t raw = 0;
    for (uint32_t j = 0; j < nibbles; ++j) raw |= static_cast<uint64_t>(get_nibble()) << (kNibbleBits * j);
    const int64_t symbol = escape_value(raw, row.max_value) + row.offset;
    if (symbol < INT32_MIN || symbol > INT32_MAX) fail(where() + " decodes a symbol outside int32 (corrupted)");
    return static_cast<int32_t>(symbol);
  }

  const uint8_t* data_ = nullptr;
  int64_t size_ = 0, id_ = 0, pos_ = 0;
  uint64_t x_ = 0;
};

// Streams [first, first + count) (count <= kLockstep) of length `length`, coded together: with
// implicit rows every stream uses the same row at the same position.
template <class Reader>
void encode_block(const Tables& tables, const Layout& layout, const Reader& read, int64_t first, int count,
                  int64_t length, CompatStream* out) {
  CompatEncoder encoders[kLockstep];
  if (layout.indexes != nullptr) {
    for (int k = 0; k < count; ++k) {
      const int64_t base = (first + k) * length;
      for (int64_t g = base + length - 1; g >= base; --g) {
        if ((base + length - 1 - g) % kChunk == 0) encoders[k].reserve(kChunk);
        const int64_t row = checked_row(tables, layout.indexes[g], g);
        encoders[k].put(tables.encode_view(row), read(g, row));
      }
    }
  } else {
    std::vector<int32_t> scratch(kLockstep * kChunk);
    const int32_t* symbols[kLockstep];
    for_each_row_run<true>(tables, layout, 0, length, [&](int64_t row, int64_t lo, int64_t hi) {
      const EncodeRow view = tables.encode_view(row);
      for (int64_t chunk_end = hi; chunk_end > lo; chunk_end -= kChunk) {
        const int64_t chunk_start = std::max(lo, chunk_end - kChunk), n = chunk_end - chunk_start;
        for (int k = 0; k < count; ++k) {
          encoders[k].reserve(n);
          symbols[k] = read.span((first + k) * length + chunk_start, n, row, &scratch[k * kChunk]);
        }
        if (count == kLockstep) {
          CompatEncoder::put_lockstep(encoders, view, symbols, n);
        } else {
          for (int64_t i = n - 1; i >= 0; --i) {
            for (int k = 0; k < count; ++k) encoders[k].put(view, symbols[k][i]);
          }
        }
      }
    });
  }
  for (int k = 0; k < count; ++k) out[k] = encoders[k].finish();
}

template <class Store>
void decode_block(const Tables& tables, const Layout& layout, const Store& store, const ByteSpan* streams,
                  int64_t first, int count, int64_t length) {
  CompatDecoder decoders[kLockstep];
  for (int k = 0; k < count; ++k) decoders[k] = CompatDecoder(streams[k], first + k);
  if (layout.indexes != nullptr) {
    for (int k = 0; k < count; ++k) {
      const int64_t base = (first + k) * length;
      for (int64_t g = base; g < base + length; ++g) {
        const int64_t row = checked_row(tables, layout.indexes[g], g);
        store(g, row, decoders[k].get(tables.decode_view(row)));
      }
    }
  } else {
    for_each_row_run<false>(tables, layout, 0, length, [&](int64_t row, int64_t lo, int64_t hi) {
      const DecodeRow view = tables.decode_view(row);
      if (count == kLockstep) {
        CompatDecoder::get_lockstep(decoders, view, lo, hi, [&](int k, int64_t g, int32_t symbol) {
          store((first + k) * length + g, row, symbol);
        });
      } else {
        for (int64_t g = lo; g < hi; ++g) {
          for (int k = 0; k < count; ++k) store((first + k) * length + g, row, decoders[k].get(view));
        }
      }
    });
  }
  for (int k = 0; k < count; ++k) decoders[k].finish();
}

}  // namespace

void CompatStream::write(uint8_t* out) const {
  std::memcpy(out, &state, 8);  // low word first: the little-endian u64
  const int64_t n = static_cast<int64_t>(words.size());
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + 8 + 4 * i, &words[n - 1 - i], 4);
}

std::vector<CompatStream> compat_encode(const Tables& tables, const Layout& layout, const Source& source, int64_t items,
                                        int64_t length) {
  std::vector<CompatStream> streams(items);
  const int64_t blocks = (items + kLockstep - 1) / kLockstep;
  with_symbol_reader(source, [&](const auto& read) {
    parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t first = b * kLockstep;
        const int count = static_cast<int>(std::min<int64_t>(kLockstep, items - first));
        encode_block(tables, layout, read, first, count, length, &streams[first]);
      }
    });
  });
  return streams;
}

void compat_decode(const Tables& tables, const Layout& layout, const Sink& sink, const std::vector<ByteSpan>& streams,
                   int64_t length) {
  const int64_t items = static_cast<int64_t>(streams.size());
  const int64_t blocks = (items + kLockstep - 1) / kLockstep;
  with_symbol_store(sink, [&](const auto& store) {
    parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t first = b * kLockstep;
        const int count = static_cast<int>(std::min<int64_t>(kLockstep, items - first));
        decode_block(tables, layout, store, &streams[first], first, count, length);
      }
    });
  });
}

CompatStream compat_encode_segments(const std::vector<Segment>& segments) {
  CompatEncoder encoder;
  int64_t done = 0;
  for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
    for (int64_t g = it->length - 1; g >= 0; --g, ++done) {
      if (done % kChunk == 0) encoder.reserve(kChunk);
      encoder.put(it->tables->encode_view(checked_row(*it->tables, it->indexes[g], g)), it->symbols[g]);
    }
  }
  return encoder.finish();
}

void compat_decode_segments(ByteSpan stream, const std::vector<Segment>& segments) {
  CompatDecoder decoder(stream, 0);
  for (const Segment& segment : segments) {
    for (int64_t g = 0; g < segment.length; ++g) {
      segment.symbols[g] =
          decoder.get(segment.tables->decode_view(checked_row(*segment.tables, segment.indexes[g], g)));
    }
  }
  decoder.finish();
}

}  // namespace udm_rans
