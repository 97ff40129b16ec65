// CUDA coder of the parallel (lanes) rANS format: one warp per lane group, lane j of the warp is
// lane j of the group. Produces the same bytes as the CPU coder (csrc/rans/rans_lanes.cpp):
// same lane layout (choose_layout on the same integer cost estimate), same word order
// (rans_core.h), same header (lanes_header / seal_lanes_header on the host).
//
// Encode: estimate (sampled cost, escape count, input validation) -> host picks the layout ->
// encode kernel (words per group into scratch, in emission order) -> host builds the header
// from the word counts -> assemble kernel (states, reversed words) -> payload checksum kernel ->
// host seals the header. Decode: host parses the header block -> payload checksum kernel ->
// decode kernel (errors reported through a device flag, raised as ValueError on the host).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

#include "rans/lanes_format.h"
#include "rans/rans_core.h"
#include "rans/rans_cpu.h"
#include "rans/rans_cuda.h"

namespace udm_rans {
namespace {

namespace fmt = lanes_format;

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kWarpsPerBlock = 4;

// --- device views ---------------------------------------------------------------------------
struct TableView {
  const uint32_t* cdf;
  const uint16_t* lookup;
  const uint32_t* cost;
  const int32_t* offsets;
  const int32_t* max_values;
  int64_t rows, width;

  __device__ uint32_t find(int64_t row, uint32_t cum) const {
    const uint32_t* c = cdf + row * width;
    uint32_t s = lookup[(row << kLookupBits) + (cum >> (kPrecision - kLookupBits))];
    while (c[s + 1] <= cum) ++s;
    return s;
  }
};

struct RowMap {
  const int32_t* indexes;  // explicit rows, or nullptr
  int64_t per_channel, channels;

  __device__ int64_t row(int64_t i) const {
    if (indexes != nullptr) return indexes[i];
    if (i <= UINT32_MAX && per_channel <= UINT32_MAX) {  // 32-bit division is much cheaper
      return (static_cast<uint32_t>(i) / static_cast<uint32_t>(per_channel)) % static_cast<uint32_t>(channels);
    }
    return (i / per_channel) % channels;
  }
};

struct Input {
  const int32_t* symbols;  // or
  const float* values;
  const float* medians;

  __device__ int32_t symbol(int64_t i, int64_t row, bool& ok) const {
    if (symbols != nullptr) {
      ok = true;
      return symbols[i];
    }
    return quantize_unchecked(values[i], medians[row], ok);
  }
};

// Device-side statistics of an input: [0] sampled cost (1/256 bits), [1] escapes,
// [2] first bad row position, [3] first bad value position (ULLONG_MAX when none).
__global__ void estimate_kernel(TableView t, RowMap rows, Input in, int64_t n, int64_t stride, bool want_cost,
                                unsigned long long* stats) {
  unsigned long long cost = 0, escapes = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = rows.row(i);
    if (row < 0 || row >= t.rows) {
      atomicMin(&stats[2], static_cast<unsigned long long>(i));
      continue;
    }
    bool ok;
    const int64_t value = static_cast<int64_t>(in.symbol(i, row, ok)) - t.offsets[row];
    if (!ok) {
      atomicMin(&stats[3], static_cast<unsigned long long>(i));
      continue;
    }
    const int32_t max_value = t.max_values[row];
    const bool escaped = static_cast<uint64_t>(value) >= static_cast<uint64_t>(max_value);
    escapes += escaped;
    if (want_cost && i % stride == 0) {
      const uint32_t* c = t.cost + row * (t.width - 1);
      cost += escaped ? c[max_value] + fmt::escape_cost(escape_nibble_count(escape_raw(value, max_value))) : c[value];
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    cost += __shfl_down_sync(kFullMask, cost, offset);
    escapes += __shfl_down_sync(kFullMask, escapes, offset);
  }
  if (threadIdx.x % 32 == 0) {
    if (cost) atomicAdd(&stats[0], cost);
    if (escapes) atomicAdd(&stats[1], escapes);
  }
}

// The lane group (one warp) of the calling thread: symbols first .. first + count - 1, coded in
// steps of width lanes; valid is false for the warps past the last group (they must return at once).
struct WarpGroup {
  int64_t group, first, count, steps;
  int lane;
  bool valid;
};

__device__ __forceinline__ WarpGroup warp_group(int64_t groups, int64_t group_symbols, int64_t n_symbols, int width) {
  WarpGroup g;
  g.group = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  g.lane = threadIdx.x % 32;
  g.valid = g.group < groups;
  g.first = g.group * group_symbols;
  g.count = min(group_symbols, n_symbols - g.first);  // meaningful only when valid
  g.steps = (g.count + width - 1) / width;
  return g;
}

struct EncodeArgs {
  TableView t;
  RowMap rows;
  Input in;
  int64_t n_symbols, groups, group_symbols, scratch_per_group;
  int width;
  uint16_t* scratch;      // [groups, scratch_per_group], words in emission order
  uint32_t* states;       // [groups, width]
  uint32_t* word_counts;  // [groups]
};

// One warp per group: steps t descending; within a step sub-ops k descending (k = 0: CDF
// symbol, 1: escape nibble count, 2..: payload nibbles), lanes descending, as the CPU encoder.
__global__ void encode_kernel(EncodeArgs a) {
  const WarpGroup g = warp_group(a.groups, a.group_symbols, a.n_symbols, a.width);
  if (!g.valid) return;  // whole warps only
  const int64_t group = g.group, first = g.first, count = g.count, steps = g.steps;
  const int lane = g.lane;
  uint16_t* out = a.scratch + group * a.scratch_per_group;
  uint32_t emitted = 0;
  uint32_t x = kLaneLow;
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t local = t * a.width + lane;
    const bool active = lane < a.width && local < count;
    int64_t row = 0;
    int ops = 0;
    uint32_t bin = 0;
    uint64_t raw = 0;
    if (active) {
      const int64_t i = first + local;
      row = a.rows.row(i);
      bool ok;
      const int64_t value = static_cast<int64_t>(a.in.symbol(i, row, ok)) - a.t.offsets[row];
      const int32_t max_value = a.t.max_values[row];
      if (static_cast<uint64_t>(value) < static_cast<uint64_t>(max_value)) {
        ops = 1;
        bin = static_cast<uint32_t>(value);
      } else {
        raw = escape_raw(value, max_value);
        ops = 2 + escape_nibble_count(raw);
        bin = static_cast<uint32_t>(max_value);
      }
    }
    const int max_ops = __reduce_max_sync(kFullMask, ops);
    for (int k = max_ops - 1; k >= 0; --k) {
      const bool op = k < ops;
      uint32_t start = 0, freq = 1, scale = kNibbleBits;
      if (op && k == 0) {
        const uint32_t* c = a.t.cdf + row * a.t.width;
        start = c[bin];
        freq = c[bin + 1] - start;
        scale = kPrecision;
      } else if (op && k == 1) {
        start = static_cast<uint32_t>(ops - 2);
      } else if (op) {
        start = static_cast<uint32_t>(raw >> (kNibbleBits * (k - 2))) & kNibbleMask;
      }
      const bool emit = op && x >= static_cast<uint64_t>((kLaneLow >> scale) << 16) * freq;
      const unsigned ballot = __ballot_sync(kFullMask, emit);
      if (emit) {
        out[emitted + __popcll(static_cast<unsigned long long>(ballot) >> (lane + 1))] = static_cast<uint16_t>(x);
        x >>= 16;
      }
      emitted += __popc(ballot);
      if (op) x = ((x / freq) << scale) + (x % freq) + start;
    }
  }
  if (lane < a.width) a.states[group * a.width + lane] = x;
  if (lane == 0) a.word_counts[group] = emitted;
}

// Block per group: lane states, then the group's words reversed into the payload.
__global__ void assemble_kernel(const uint32_t* states, const uint16_t* scratch, const int64_t* word_start,
                                int64_t scratch_per_group, int width, int64_t groups, uint8_t* payload) {
  const int64_t group = blockIdx.x;
  if (group >= groups) return;
  uint32_t* state_out = reinterpret_cast<uint32_t*>(payload) + group * width;
  for (int j = threadIdx.x; j < width; j += blockDim.x) state_out[j] = states[group * width + j];
  uint16_t* words = reinterpret_cast<uint16_t*>(payload + 4 * width * groups) + word_start[group];
  const int64_t n = word_start[group + 1] - word_start[group];
  const uint16_t* src = scratch + group * scratch_per_group;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) words[i] = src[n - 1 - i];
}

__global__ void checksum_kernel(const uint32_t* words, int64_t n, unsigned long long* sum) {
  unsigned long long total = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    total += checksum_term(static_cast<uint64_t>(i), words[i]);
  }
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_down_sync(kFullMask, total, offset);
  if (threadIdx.x % 32 == 0 && total) atomicAdd(sum, total);
}

// Decode errors, first one wins: code and group.
enum DecodeError : int {
  kOk = 0,
  kBadState = 1,
  kTruncated = 2,
  kBadEscape = 3,
  kOutOfRange = 4,
  kUnfinished = 5,
  kBadIndex = 6,
};

struct DecodeArgs {
  TableView t;
  RowMap rows;
  const uint32_t* states;     // [groups, width]
  const uint16_t* words;      // all groups' words
  const int64_t* word_start;  // [groups + 1]
  int64_t n_symbols, groups, group_symbols;
  int width;
  int32_t* symbols_out;  // or
  float* values_out;
  const float* medians;
  int* error;  // [2]: code, group
};

__device__ void report(int* error, int code, int64_t group) {
  if (atomicCAS(&error[0], kOk, code) == kOk) error[1] = static_cast<int>(group);
}

// Warp-collective refill: lanes with `need` read the next words in lane order.
__device__ uint32_t refill(uint32_t x, bool need, const uint16_t* words, int64_t n_words, int64_t& pos, int lane,
                           bool& truncated) {
  const unsigned ballot = __ballot_sync(kFullMask, need);
  if (need) {
    const int64_t index = pos + __popc(ballot & ((1u << lane) - 1));
    if (index < n_words) {
      x = (x << 16) | words[index];
    } else {
      truncated = true;
      x <<= 16;
    }
  }
  pos += __popc(ballot);
  return x;
}

__global__ void decode_kernel(DecodeArgs a) {
  const WarpGroup g = warp_group(a.groups, a.group_symbols, a.n_symbols, a.width);
  if (!g.valid) return;  // whole warps only
  const int64_t group = g.group, first = g.first, count = g.count, steps = g.steps;
  const int lane = g.lane;
  const uint16_t* words = a.words + a.word_start[group];
  const int64_t n_words = a.word_start[group + 1] - a.word_start[group];
  uint32_t x = lane < a.width ? a.states[group * a.width + lane] : kLaneLow;
  bool failed = lane < a.width && x < kLaneLow;
  if (__any_sync(kFullMask, failed)) {
    if (lane == 0) report(a.error, kBadState, group);
    return;
  }
  int64_t pos = 0;
  bool truncated = false, bad_escape = false, out_of_range = false, bad_index = false;
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t local = t * a.width + lane;
    const int64_t i = first + local;
    bool active = lane < a.width && local < count;
    int64_t row = 0;
    if (active) {
      row = a.rows.row(i);
      if (row < 0 || row >= a.t.rows) {
        bad_index = true;
        active = false;
      }
    }
    uint32_t s = 0;
    if (active) {
      const uint32_t cum = x & (kProbScale - 1);
      s = a.t.find(row, cum);
      const uint32_t* c = a.t.cdf + row * a.t.width;
      x = (c[s + 1] - c[s]) * (x >> kPrecision) + cum - c[s];
    }
    x = refill(x, active && x < kLaneLow, words, n_words, pos, lane, truncated);
    const int32_t max_value = active ? a.t.max_values[row] : 0;
    const bool escaped = active && static_cast<int32_t>(s) == max_value;
    int64_t value = s;
    if (__any_sync(kFullMask, escaped)) {
      uint32_t nibbles = 0;
      if (escaped) {
        nibbles = x & kNibbleMask;
        x >>= kNibbleBits;
      }
      x = refill(x, escaped && x < kLaneLow, words, n_words, pos, lane, truncated);
      if (nibbles > static_cast<uint32_t>(kMaxEscapeNibbles)) {
        bad_escape = true;
        nibbles = 0;
      }
      const int max_nibbles = __reduce_max_sync(kFullMask, nibbles);
      uint64_t raw = 0;
      for (int k = 0; k < max_nibbles; ++k) {
        const bool take = k < static_cast<int>(nibbles);
        if (take) {
          raw |= static_cast<uint64_t>(x & kNibbleMask) << (kNibbleBits * k);
          x >>= kNibbleBits;
        }
        x = refill(x, take && x < kLaneLow, words, n_words, pos, lane, truncated);
      }
      if (escaped) value = escape_value(raw, max_value);
    }
    if (active) {
      const int64_t symbol = value + a.t.offsets[row];
      if (symbol < INT_MIN || symbol > INT_MAX) out_of_range = true;
      if (a.symbols_out != nullptr) {
        a.symbols_out[i] = static_cast<int32_t>(symbol);
      } else {
        a.values_out[i] = __fadd_rn(static_cast<float>(static_cast<int32_t>(symbol)), a.medians[row]);
      }
    }
  }
  const bool unfinished = (lane < a.width && x != kLaneLow) || pos != n_words;
  if (__any_sync(kFullMask, bad_index)) {
    if (lane == 0) report(a.error, kBadIndex, group);
  } else if (__any_sync(kFullMask, truncated)) {
    if (lane == 0) report(a.error, kTruncated, group);
  } else if (__any_sync(kFullMask, bad_escape)) {
    if (lane == 0) report(a.error, kBadEscape, group);
  } else if (__any_sync(kFullMask, out_of_range)) {
    if (lane == 0) report(a.error, kOutOfRange, group);
  } else if (__any_sync(kFullMask, unfinished)) {
    if (lane == 0) report(a.error, kUnfinished, group);
  }
}

// --- host helpers ---------------------------------------------------------------------------
void check_cuda_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", c10::toString(dtype), ", got ",
                    c10::toString(t.scalar_type()));
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

TableView view_of(const DeviceTables& t) {
  return TableView{reinterpret_cast<const uint32_t*>(t.cdf.data_ptr<int32_t>()),
                   reinterpret_cast<const uint16_t*>(t.lookup.data_ptr<int16_t>()),
                   reinterpret_cast<const uint32_t*>(t.cost.data_ptr<int32_t>()),
                   t.offsets.data_ptr<int32_t>(),
                   t.max_values.data_ptr<int32_t>(),
                   t.rows,
                   t.width};
}

RowMap rows_of(const DeviceTables& t, const std::optional<at::Tensor>& indexes, const at::Device& device, int64_t n,
               int64_t channels, int64_t per_channel) {
  if (indexes) {
    check_cuda_tensor(*indexes, "indexes", at::kInt, device);
    TORCH_CHECK_VALUE(indexes->numel() == n, "indexes must have ", n, " elements, got ", indexes->numel());
    return RowMap{indexes->data_ptr<int32_t>(), 1, 1};
  }
  TORCH_CHECK_VALUE(channels >= 1 && channels <= t.rows, "channels must be in [1, ", t.rows, "], got ", channels);
  TORCH_CHECK_VALUE(per_channel >= 1 && n % (channels * per_channel) == 0,
                    "symbol count must be a multiple of channels x per_channel");
  return RowMap{nullptr, per_channel, channels};
}

const float* medians_of(const DeviceTables& t, const std::optional<at::Tensor>& medians, const at::Device& device) {
  if (!medians) return nullptr;
  check_cuda_tensor(*medians, "medians", at::kFloat, device);
  TORCH_CHECK_VALUE(medians->numel() == t.rows, "medians must have one value per CDF row (", t.rows, ")");
  return medians->data_ptr<float>();
}

// Blocks covering threads_needed threads, at most max_blocks (grid-stride kernels use fewer).
unsigned blocks_for(int64_t threads_needed, int threads_per_block, int64_t max_blocks = INT_MAX) {
  const int64_t blocks = (threads_needed + threads_per_block - 1) / threads_per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, max_blocks)));
}

constexpr int64_t kGridStrideBlocks = 4096;

uint64_t device_checksum(const uint8_t* payload, int64_t bytes, const at::Device& device, cudaStream_t stream) {
  at::Tensor sum = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(device));
  const int64_t words = bytes / 4;
  if (words > 0) {
    checksum_kernel<<<blocks_for(words, 256, kGridStrideBlocks), 256, 0, stream>>>(
        reinterpret_cast<const uint32_t*>(payload), words,
        reinterpret_cast<unsigned long long*>(sum.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return static_cast<uint64_t>(sum.item<int64_t>());
}

}  // namespace

DeviceTables upload_tables(const Tables& tables, const at::Device& device) {
  DeviceTables out;
  out.rows = tables.rows();
  out.width = tables.width();
  out.fingerprint = tables.fingerprint();
  auto copy = [&](const void* data, int64_t count, at::ScalarType dtype) {
    at::Tensor t = at::empty({count}, at::TensorOptions().dtype(dtype));
    std::memcpy(t.data_ptr(), data, count * t.element_size());
    return t.to(device);
  };
  out.cdf = copy(tables.cdf_row(0), out.rows * out.width, at::kInt).view({out.rows, out.width});
  out.lookup = copy(tables.lookup_row(0), out.rows << kLookupBits, at::kShort).view({out.rows, 1 << kLookupBits});
  out.cost = copy(tables.cost_row(0), out.rows * (out.width - 1), at::kInt).view({out.rows, out.width - 1});
  out.offsets = copy(tables.offsets(), out.rows, at::kInt);
  out.max_values = copy(tables.max_values(), out.rows, at::kInt);
  return out;
}

at::Tensor lanes_encode_cuda(const DeviceTables& tables, const at::Tensor& input,
                             const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes,
                             int64_t channels, int64_t per_channel, double lane_overhead, int64_t lanes) {
  const at::Device device = input.device();
  TORCH_CHECK_VALUE(device.is_cuda(), "input must be a CUDA tensor");
  TORCH_CHECK_VALUE(tables.cdf.device() == device, "tables are on ", tables.cdf.device(), ", input on ", device);
  TORCH_CHECK_VALUE(input.dim() <= fmt::kMaxDims, "at most 16 dimensions can be stored");
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  Input in{nullptr, nullptr, medians_of(tables, medians, device)};
  if (medians) {
    TORCH_CHECK_VALUE(!indexes, "values with medians need implicit rows");
    check_cuda_tensor(input, "values", at::kFloat, device);
    in.values = input.data_ptr<float>();
  } else {
    check_cuda_tensor(input, "symbols", at::kInt, device);
    in.symbols = input.data_ptr<int32_t>();
  }
  const int64_t n = input.numel();
  const RowMap rows = rows_of(tables, indexes, device, n, channels, per_channel);
  const TableView t = view_of(tables);

  // 1. Statistics: cost estimate, escape count, validation.
  at::Tensor stats = at::tensor(std::vector<int64_t>{0, 0, -1, -1}, at::TensorOptions().dtype(at::kLong)).to(device);
  if (n > 0) {
    estimate_kernel<<<blocks_for(n, 256, kGridStrideBlocks), 256, 0, stream>>>(
        t, rows, in, n, fmt::estimate_stride(n), lanes <= 0,
        reinterpret_cast<unsigned long long*>(stats.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor host_stats = stats.cpu();
  const uint64_t* s = reinterpret_cast<const uint64_t*>(host_stats.data_ptr<int64_t>());
  if (s[2] != ~0ull) {
    const int32_t row = indexes->view(-1)[static_cast<int64_t>(s[2])].item<int32_t>();
    fail("index " + std::to_string(row) + " at position " + std::to_string(s[2]) + " is outside the " +
         std::to_string(tables.rows) + " CDF rows");
  }
  if (s[3] != ~0ull) fail_quantize(static_cast<int64_t>(s[3]));

  // 2. Layout (same integer estimate and rule as the CPU coder) and the encode kernel.
  const fmt::LaneLayout layout = fmt::choose_layout(s[0], n, lane_overhead, lanes);
  TORCH_CHECK_VALUE(layout.group_symbols <= UINT32_MAX - kMaxLanes, "too many symbols per lane group");
  const int64_t scratch_per_group =
      layout.group_symbols +
      (kMaxOpsPerSymbol - 1) * std::min<int64_t>(static_cast<int64_t>(s[1]), layout.group_symbols);
  const auto on_device = at::TensorOptions().device(device);
  at::Tensor scratch =
      at::empty({std::max<int64_t>(1, layout.groups * scratch_per_group)}, on_device.dtype(at::kShort));
  at::Tensor states = at::empty({std::max<int64_t>(1, layout.groups * layout.width)}, on_device.dtype(at::kInt));
  at::Tensor counts = at::zeros({std::max<int64_t>(1, layout.groups)}, on_device.dtype(at::kInt));
  if (layout.groups > 0) {
    EncodeArgs args{t,
                    rows,
                    in,
                    n,
                    layout.groups,
                    layout.group_symbols,
                    scratch_per_group,
                    layout.width,
                    reinterpret_cast<uint16_t*>(scratch.data_ptr<int16_t>()),
                    reinterpret_cast<uint32_t*>(states.data_ptr<int32_t>()),
                    reinterpret_cast<uint32_t*>(counts.data_ptr<int32_t>())};
    encode_kernel<<<blocks_for(layout.groups * 32, 32 * kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // 3. Header from the word counts, then the payload, its checksum, and the sealed header.
  LaneHeaderInfo info;
  info.explicit_indexes = indexes.has_value();
  info.fingerprint = tables.fingerprint;
  info.n_symbols = n;
  info.per_channel = per_channel;
  info.channels = channels;
  info.n_groups = layout.groups;
  info.group_symbols = layout.group_symbols;
  info.lanes_per_group = layout.width;
  info.shape.assign(input.sizes().begin(), input.sizes().end());
  const at::Tensor host_counts = counts.cpu();
  info.word_start.assign(1, 0);
  for (int64_t g = 0; g < layout.groups; ++g) {
    info.word_start.push_back(info.word_start.back() + static_cast<uint32_t>(host_counts.data_ptr<int32_t>()[g]));
  }
  std::vector<uint8_t> header = lanes_header(info);
  const int64_t header_bytes = static_cast<int64_t>(header.size());
  const int64_t payload_bytes = lanes_payload_bytes(info);
  at::Tensor out = at::zeros({header_bytes + payload_bytes}, on_device.dtype(at::kByte));
  uint8_t* payload = out.data_ptr<uint8_t>() + header_bytes;
  if (layout.groups > 0) {
    const at::Tensor word_start = at::tensor(info.word_start, at::TensorOptions().dtype(at::kLong)).to(device);
    assemble_kernel<<<static_cast<unsigned>(layout.groups), 256, 0, stream>>>(
        reinterpret_cast<const uint32_t*>(states.data_ptr<int32_t>()),
        reinterpret_cast<const uint16_t*>(scratch.data_ptr<int16_t>()), word_start.data_ptr<int64_t>(),
        scratch_per_group, layout.width, layout.groups, payload);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  seal_lanes_header(header.data(), header_bytes, device_checksum(payload, payload_bytes, device, stream));
  const at::Tensor host_header = at::from_blob(header.data(), {header_bytes}, at::TensorOptions().dtype(at::kByte));
  out.narrow(0, 0, header_bytes).copy_(host_header);
  return out;
}

at::Tensor lanes_decode_cuda(const Tables& tables, const DeviceTables& device_tables, const at::Tensor& data,
                             const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes) {
  const at::Device device = data.device();
  check_cuda_tensor(data, "data", at::kByte, device);
  TORCH_CHECK_VALUE(data.dim() == 1, "data must be a 1-D uint8 tensor");
  TORCH_CHECK_VALUE(device_tables.cdf.device() == device, "tables are on ", device_tables.cdf.device(), ", data on ",
                    device);
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t size = data.numel();

  // 1. Header block on the host: the same validation as the CPU decoder.
  const at::Tensor fixed = data.narrow(0, 0, std::min<int64_t>(size, fmt::kFixedHeaderBytes)).cpu();
  const int64_t header_bytes = lanes_header_size(fixed.data_ptr<uint8_t>(), fixed.numel());
  if (header_bytes > size) fail("parallel rANS stream is truncated (incomplete header)");
  const at::Tensor header = data.narrow(0, 0, header_bytes).cpu();
  const LaneHeaderInfo info = lanes_parse_header(header.data_ptr<uint8_t>(), size);
  check_lanes_decode_inputs(tables, info, indexes.has_value());
  const uint8_t* payload = data.data_ptr<uint8_t>() + info.payload_offset;
  if (device_checksum(payload, size - info.payload_offset, device, stream) != info.payload_checksum) {
    fail("parallel rANS stream payload checksum mismatch (corrupted)");
  }

  // 2. Decode.
  const RowMap rows = rows_of(device_tables, indexes, device, info.n_symbols, std::max<int64_t>(1, info.channels),
                              std::max<int64_t>(1, info.per_channel));
  const auto on_device = at::TensorOptions().device(device);
  at::Tensor out = at::empty(info.shape, on_device.dtype(medians ? at::kFloat : at::kInt));
  at::Tensor error = at::zeros({2}, on_device.dtype(at::kInt));
  if (info.n_groups > 0) {
    TORCH_CHECK_VALUE(!medians || !info.explicit_indexes, "values with medians need implicit rows");
    const at::Tensor word_start = at::tensor(info.word_start, at::TensorOptions().dtype(at::kLong)).to(device);
    DecodeArgs args{view_of(device_tables),
                    rows,
                    reinterpret_cast<const uint32_t*>(payload),
                    reinterpret_cast<const uint16_t*>(payload + 4 * info.lanes_per_group * info.n_groups),
                    word_start.data_ptr<int64_t>(),
                    info.n_symbols,
                    info.n_groups,
                    info.group_symbols,
                    info.lanes_per_group,
                    medians ? nullptr : out.data_ptr<int32_t>(),
                    medians ? out.data_ptr<float>() : nullptr,
                    medians_of(device_tables, medians, device),
                    error.data_ptr<int>()};
    decode_kernel<<<blocks_for(info.n_groups * 32, 32 * kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor host_error = error.cpu();
  const int code = host_error.data_ptr<int>()[0];
  if (code != kOk) {
    const std::string where = "lane group " + std::to_string(host_error.data_ptr<int>()[1]);
    switch (code) {
      case kBadState:
        fail(where + " has an invalid lane state (corrupted)");
      case kTruncated:
        fail(where + " is truncated (corrupted, or wrong tables)");
      case kBadEscape:
        fail(where + " has an invalid escape length (corrupted)");
      case kOutOfRange:
        fail(where + " decodes a symbol outside int32 (corrupted)");
      case kBadIndex:
        fail(where + " uses an index outside the CDF rows");
      default:
        fail(where + " did not end in the initial lane states (corrupted, or wrong tables)");
    }
  }
  return out;
}

}  // namespace udm_rans
