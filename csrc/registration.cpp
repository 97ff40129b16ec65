// Schemas of every op in the udm_fast namespace that the host library defines.
// Kernels register themselves per dispatch key in their own files
// (csrc/*_cpu.cpp for CPU, kernels/*.cu for CUDA); Python adds fake (meta)
// implementations and autograd in udm_fast/ops/.
#include <torch/library.h>

TORCH_LIBRARY(udm_fast, m) {
  // out = x * (1 + gamma) + beta + ida   (the SFT layer's epilogue)
  m.def("sft_combine(Tensor x, Tensor gamma, Tensor beta, Tensor ida) -> Tensor");
  // (grad_x, grad_gamma) of sft_combine; grad_beta = grad_ida = grad_out
  m.def("sft_combine_backward(Tensor grad_out, Tensor x, Tensor gamma) -> (Tensor, Tensor)");
}
