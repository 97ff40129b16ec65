// CUDA implementation of the parallel (lanes) format (kernels/rans_parallel.cu), declared for the
// bindings. Only compiled into CUDA builds (UDM_FAST_WITH_CUDA). The bytes equal the CPU coder's.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "rans/rans_tables.h"

namespace udm_rans {

// Device copies of a Tables object.
struct DeviceTables {
  at::Tensor cdf;         // int32 [rows, width]
  at::Tensor lookup;      // int16 [rows, 2^kLookupBits] (uint16 values)
  at::Tensor cost;        // int32 [rows, width - 1] (Tables::cost_row)
  at::Tensor offsets;     // int32 [rows]
  at::Tensor max_values;  // int32 [rows]
  int64_t rows = 0, width = 0;
  uint64_t fingerprint = 0;
};

DeviceTables upload_tables(const Tables& tables, const at::Device& device);

// input: CUDA int32 symbols, or float32 values with CUDA medians [rows]; indexes: CUDA int32 (or
// implicit rows). Returns the container as a CUDA uint8 tensor.
at::Tensor lanes_encode_cuda(const DeviceTables& tables, const at::Tensor& input,
                             const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes,
                             int64_t channels, int64_t per_channel, double lane_overhead, int64_t lanes);

// data: CUDA uint8 container. Returns int32 symbols, or float32 symbol + medians[row], on the
// data's device in the stored shape.
at::Tensor lanes_decode_cuda(const Tables& tables, const DeviceTables& device_tables, const at::Tensor& data,
                             const std::optional<at::Tensor>& medians, const std::optional<at::Tensor>& indexes);

}  // namespace udm_rans
