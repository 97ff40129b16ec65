// Host side shared by the ops (csrc/ida_registration.cpp) and the launchers of the
// fused IDA / SFT kernels on the CPU (csrc/ida_cpu.cpp) and the GPU (kernels/ida.cu):
// checked operands and their conversion to the views of csrc/ida_core.h.
#pragma once

#include <ATen/ATen.h>

#include "ida_core.h"

namespace udm_fast {
namespace ida {

// Operands of one IDA call after the op's checks; weights are contiguous.
struct IdaTensors {
  at::Tensor x, m, w_up, w_map, w_x, w_out, b_out;  // b_out is undefined in the backward
  Dims dims;
};

// The SFT layer's extra operands; weights are contiguous.
struct SftTensors {
  at::Tensor cond, noise, w_gamma1, w_gamma2, w_beta1, w_beta2;
  double slope;
};

// Offsets of the weight-gradient accumulators inside one flat buffer.
struct GradOffsets {
  int64_t w_up, w_map, w_x, w_out, b_out, total;
};

inline GradOffsets grad_offsets(const Dims& d) {
  GradOffsets g;
  int64_t at = 0;
  g.w_up = at;
  at += int64_t(d.cc) * d.cm * 4;
  g.w_map = at;
  at += int64_t(d.cm) * kTaps * d.cm;
  g.w_x = at;
  at += int64_t(d.c) * kTaps * d.cm;
  g.w_out = at;
  at += int64_t(4) * d.co * d.cm;
  g.b_out = at;
  at += d.co;
  g.total = at;
  return g;
}

template <typename acc_t>
IdaGrads<acc_t> grads_at(acc_t* base, const GradOffsets& g) {
  return {base + g.w_up, base + g.w_map, base + g.w_x, base + g.w_out, base + g.b_out};
}

template <typename T>
Strided4<T> strided4(const at::Tensor& t) {
  using value_t = std::remove_const_t<T>;
  T* data;
  if constexpr (std::is_const<T>::value) {
    data = t.const_data_ptr<value_t>();
  } else {
    data = t.mutable_data_ptr<value_t>();
  }
  return {data, t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename scalar_t>
IdaInputs<scalar_t> ida_inputs(const IdaTensors& t) {
  return {t.dims,
          strided4<const scalar_t>(t.x),
          strided4<const scalar_t>(t.m),
          t.w_up.const_data_ptr<scalar_t>(),
          t.w_map.const_data_ptr<scalar_t>(),
          t.w_x.const_data_ptr<scalar_t>(),
          t.w_out.const_data_ptr<scalar_t>(),
          t.b_out.defined() ? t.b_out.const_data_ptr<scalar_t>() : nullptr};
}

// The SFT operands, or all-empty ones (rd = 0) for the IDA alone.
template <typename scalar_t, typename acc_t>
SftInputs<scalar_t, acc_t> sft_inputs(const SftTensors* s) {
  if (s == nullptr)
    return {{nullptr, 0, 0, 0, 0}, {nullptr, 0, 0, 0, 0}, nullptr, nullptr, nullptr, nullptr, 0, 0, acc_t(0)};
  return {strided4<const scalar_t>(s->cond),
          strided4<const scalar_t>(s->noise),
          s->w_gamma1.const_data_ptr<scalar_t>(),
          s->w_gamma2.const_data_ptr<scalar_t>(),
          s->w_beta1.const_data_ptr<scalar_t>(),
          s->w_beta2.const_data_ptr<scalar_t>(),
          static_cast<int>(s->w_gamma1.size(0)),
          static_cast<int>(s->w_beta1.size(0)),
          static_cast<acc_t>(s->slope)};
}

// Forward of the IDA (sft == nullptr) or of the whole SFT layer into `out` [B, Co, H, W].
void fused_forward_cpu(const IdaTensors& t, const SftTensors* sft, const at::Tensor& out);
// IDA backward: writes dx, dm and adds the weight gradients into `grads` (flat, zeroed,
// layout grad_offsets(), dtype = opmath of the inputs).
void ida_backward_cpu(const IdaTensors& t, const at::Tensor& grad_out, const at::Tensor& dx, const at::Tensor& dm,
                      const at::Tensor& grads);

#ifdef UDM_FAST_WITH_CUDA
void fused_forward_cuda(const IdaTensors& t, const SftTensors* sft, const at::Tensor& out);
void ida_backward_cuda(const IdaTensors& t, const at::Tensor& grad_out, const at::Tensor& dx, const at::Tensor& dm,
                       const at::Tensor& grads);
#endif

}  // namespace ida
}  // namespace udm_fast
