// Standalone fuzz driver of the CPU rANS coders, for sanitizer builds (not part of the
// extension: setup.py only compiles *.cpp). Build and run, e.g.:
//   g++ -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
//       -DUDM_RANS_STANDALONE -Icsrc csrc/rans/fuzz_harness.cc csrc/rans/rans_compat.cpp \
//       csrc/rans/rans_lanes.cpp csrc/rans/rans_tables.cpp -o /tmp/rans_fuzz && /tmp/rans_fuzz 20000
// Each iteration draws random tables and symbols (escapes, extreme values), checks both
// formats round-trip, then decodes mutated streams (bit flips, truncation, extension, random
// bytes; lane containers also with repaired checksums) expecting success or
// std::invalid_argument. Any sanitizer report or other failure aborts.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <vector>

#include "rans/lanes_format.h"
#include "rans/rans_cpu.h"

using namespace udm_rans;

namespace {

std::mt19937_64 rng(12345);

int64_t uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

struct RandomTables {
  int64_t rows, width;
  std::vector<int32_t> cdf, lengths, offsets;
};

RandomTables random_tables() {
  RandomTables t;
  t.rows = uniform(1, 6);
  t.width = uniform(2, 80);
  t.cdf.assign(t.rows * t.width, 0);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t length = uniform(2, t.width);
    std::vector<int32_t> cuts;
    for (int64_t i = 1; i < length - 1; ++i) cuts.push_back(static_cast<int32_t>(uniform(1, 65535)));
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    int32_t* row = &t.cdf[r * t.width];
    row[0] = 0;
    for (size_t i = 0; i < cuts.size(); ++i) row[i + 1] = cuts[i];
    row[cuts.size() + 1] = 65536;
    t.lengths.push_back(static_cast<int32_t>(cuts.size() + 2));
    t.offsets.push_back(static_cast<int32_t>(uniform(-100, 100)));
  }
  return t;
}

int32_t random_symbol() {
  switch (uniform(0, 9)) {
    case 0:
      return static_cast<int32_t>(uniform(INT32_MIN, INT32_MAX));
    case 1:
      return static_cast<int32_t>(uniform(-5000, 5000));
    default:
      return static_cast<int32_t>(uniform(-110, 180));
  }
}

void mutate(std::vector<uint8_t>& bytes) {
  switch (uniform(0, 4)) {
    case 0:
      if (!bytes.empty()) bytes[uniform(0, bytes.size() - 1)] ^= static_cast<uint8_t>(1u << uniform(0, 7));
      break;
    case 1:
      bytes.resize(uniform(0, bytes.size()));
      break;
    case 2:
      for (int64_t n = uniform(1, 16); n > 0; --n) bytes.push_back(static_cast<uint8_t>(uniform(0, 255)));
      break;
    case 3:
      for (int64_t n = uniform(1, 8); n > 0 && !bytes.empty(); --n)
        bytes[uniform(0, bytes.size() - 1)] = uniform(0, 255);
      break;
    default:
      if (bytes.size() > 8) bytes.erase(bytes.begin() + uniform(0, bytes.size() - 5), bytes.begin() + bytes.size() - 4);
  }
}

// Rewrites both checksums of a lane container so the decoder's deeper checks are exercised.
void repair_checksums(std::vector<uint8_t>& bytes) {
  int64_t header = 0;
  try {
    header = lanes_header_size(bytes.data(), static_cast<int64_t>(bytes.size()));
  } catch (const std::invalid_argument&) {
    return;
  }
  if (header > static_cast<int64_t>(bytes.size()) || (bytes.size() - header) % 4 != 0) return;
  seal_lanes_header(bytes.data(), header, lanes_checksum(bytes.data() + header, bytes.size() - header));
}

template <class Fn>
bool rejects(Fn&& fn) {
  try {
    fn();
    return false;
  } catch (const std::invalid_argument&) {
    return true;
  }
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    std::abort();
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t iterations = argc > 1 ? std::atoll(argv[1]) : 2000;
  int64_t rejected = 0, accepted = 0;
  for (int64_t it = 0; it < iterations; ++it) {
    const RandomTables rt = random_tables();
    const Tables tables(rt.cdf.data(), rt.rows, rt.width, rt.lengths.data(), rt.offsets.data());
    // Explicit rows, or implicit channel rows (row = (i / per_channel) % channels); int32
    // symbols, or float values quantized against per-row medians.
    const bool implicit = uniform(0, 1) == 1, floats = implicit && uniform(0, 1) == 1;
    const int64_t channels = uniform(1, rt.rows), per_channel = uniform(1, 20);
    const int64_t items = uniform(1, 3), length = implicit ? channels * per_channel * uniform(0, 4) : uniform(0, 300);
    std::vector<int32_t> symbols(items * length), indexes(items * length), decoded(items * length);
    std::vector<float> values(items * length), medians(rt.rows);
    for (auto& m : medians) m = static_cast<float>(uniform(-1000, 1000)) / 7.0f;
    for (int64_t i = 0; i < items * length; ++i) {
      const int64_t row = implicit ? (i / per_channel) % channels : uniform(0, rt.rows - 1);
      indexes[i] = static_cast<int32_t>(row);
      symbols[i] = floats ? static_cast<int32_t>(uniform(-300, 300)) : random_symbol();
      values[i] = static_cast<float>(symbols[i]) + medians[row] + static_cast<float>(uniform(-49, 49)) / 100.0f;
    }
    Layout layout;
    if (implicit) {
      layout.channels = channels;
      layout.per_channel = per_channel;
    } else {
      layout.indexes = indexes.data();
    }
    Source source;
    if (floats) {
      source.values = values.data();
      source.medians = medians.data();
    } else {
      source.symbols = symbols.data();
    }
    Sink sink;
    sink.symbols = decoded.data();

    // compat: round trip, then mutated streams.
    std::vector<CompatStream> streams = compat_encode(tables, layout, source, items, length);
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<ByteSpan> spans;
    for (const auto& stream : streams) {
      bytes.emplace_back(stream.byte_size());
      stream.write(bytes.back().data());
    }
    for (const auto& b : bytes) spans.push_back({b.data(), static_cast<int64_t>(b.size())});
    compat_decode(tables, layout, sink, spans, length);
    check(decoded == symbols, "compat round trip");
    for (int m = 0; m < 8; ++m) {
      std::vector<std::vector<uint8_t>> mutated = bytes;
      mutate(mutated[uniform(0, items - 1)]);
      std::vector<ByteSpan> mutated_spans;
      for (const auto& b : mutated) mutated_spans.push_back({b.data(), static_cast<int64_t>(b.size())});
      (rejects([&] { compat_decode(tables, layout, sink, mutated_spans, length); }) ? rejected : accepted)++;
    }

    // lanes: round trip, then mutated containers.
    const std::vector<int64_t> shape = {items, length};
    const std::vector<uint8_t> container =
        lanes_encode(tables, layout, source, items * length, shape, LaneOptions{0.003, uniform(0, 100)});
    const ByteSpan span{container.data(), static_cast<int64_t>(container.size())};
    lanes_decode(tables, span, lanes_parse(span), implicit ? nullptr : indexes.data(), sink);
    check(decoded == symbols, "lanes round trip");
    for (int m = 0; m < 8; ++m) {
      std::vector<uint8_t> mutated = container;
      mutate(mutated);
      if (m % 2) repair_checksums(mutated);
      const ByteSpan mspan{mutated.data(), static_cast<int64_t>(mutated.size())};
      (rejects([&] {
        const LaneHeaderInfo info = lanes_parse(mspan);
        if (info.n_symbols > 10000000) throw std::invalid_argument("skipped: too large to decode here");
        std::vector<int32_t> out(info.n_symbols);
        std::vector<int32_t> rows(info.n_symbols, 0);
        Sink mutated_sink;
        mutated_sink.symbols = out.data();
        lanes_decode(tables, mspan, info, info.explicit_indexes ? rows.data() : nullptr, mutated_sink);
      })
           ? rejected
           : accepted)++;
    }
  }
  std::printf("%lld iterations: round trips ok; mutated streams rejected %lld, decoded %lld\n",
              static_cast<long long>(iterations), static_cast<long long>(rejected), static_cast<long long>(accepted));
  return 0;
}
