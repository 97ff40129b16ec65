// Schemas of every op in the udm_fast namespace that the host library defines.
// Kernels register per dispatch key (csrc/ida_registration.cpp: CPU from csrc/ida_cpu.cpp,
// CUDA from kernels/ida.cu); Python adds fake (meta) implementations and autograd in
// udm_fast/ops/ida_cuda.py. The Triton ops are defined in Python (udm_fast/ops/*_triton.py).
#include <torch/library.h>

TORCH_LIBRARY(udm_fast, m) {
  // IDA(x, m) = ConvT2x2(Conv3x3s2(LReLU_0.1(ConvT2x2(m))) * Conv3x3s2(x)) + b_out
  m.def("ida_forward(Tensor x, Tensor m, Tensor w_up, Tensor w_map, Tensor w_x, Tensor w_out, Tensor b_out) -> Tensor");
  // (dx, dm, dw_up, dw_map, dw_x, dw_out, db_out) of ida_forward
  m.def(
      "ida_backward(Tensor grad_out, Tensor x, Tensor m, Tensor w_up, Tensor w_map, Tensor w_x, Tensor w_out) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // x * (1 + w_gamma2 act(w_gamma1 cond)) + w_beta2 act(w_beta1 [cond; noise]) + IDA(x, cond_half); act =
  // LeakyReLU(slope)
  m.def(
      "sft_forward(Tensor x, Tensor cond, Tensor cond_half, Tensor noise, Tensor w_gamma1, Tensor w_gamma2, "
      "Tensor w_beta1, Tensor w_beta2, Tensor w_up, Tensor w_map, Tensor w_x, Tensor w_out, Tensor b_out, "
      "float slope) -> Tensor");
}
