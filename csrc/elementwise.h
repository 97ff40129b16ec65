// Shared checks for the elementwise ops: all operands must have one shape,
// dtype, device and memory layout, so kernels can walk them as flat arrays.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <string>

namespace udm_fast {

// Returns true when every tensor is dense, non-overlapping and strided like
// the first one (e.g. all NCHW-contiguous or all channels_last).
inline bool same_dense_layout(std::initializer_list<at::Tensor> ts) {
  const at::Tensor& first = *ts.begin();
  if (!first.is_non_overlapping_and_dense()) return false;
  for (const auto& t : ts) {
    if (!t.is_non_overlapping_and_dense() || t.strides() != first.strides()) return false;
  }
  return true;
}

inline void check_same_operands(const char* op, std::initializer_list<at::Tensor> ts) {
  const at::Tensor& first = *ts.begin();
  for (const auto& t : ts) {
    TORCH_CHECK(t.sizes() == first.sizes(), op, ": operands must have the same shape, got ",
                first.sizes(), " and ", t.sizes());
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), op, ": operands must have the same dtype, got ",
                first.scalar_type(), " and ", t.scalar_type());
    TORCH_CHECK(t.device() == first.device(), op, ": operands must be on the same device, got ",
                first.device(), " and ", t.device());
  }
  TORCH_CHECK(at::isFloatingType(first.scalar_type()), op, ": expected a floating dtype, got ",
              first.scalar_type());
}

}  // namespace udm_fast
