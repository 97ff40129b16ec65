// CUDA kernels of the SFT epilogue: out = x * (1 + gamma) + beta + ida.
// Grid-stride loops over the flat (layout-checked) operands, float math.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "elementwise.h"

namespace udm_fast {
namespace {

template <typename scalar_t>
__global__ void sft_combine_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ gamma,
                                   const scalar_t* __restrict__ beta, const scalar_t* __restrict__ ida,
                                   scalar_t* __restrict__ out, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const opmath_t xv = x[i];
    out[i] = static_cast<scalar_t>(xv + xv * static_cast<opmath_t>(gamma[i]) + static_cast<opmath_t>(beta[i]) +
                                   static_cast<opmath_t>(ida[i]));
  }
}

template <typename scalar_t>
__global__ void sft_combine_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                            const scalar_t* __restrict__ gamma, scalar_t* __restrict__ grad_x,
                                            scalar_t* __restrict__ grad_gamma, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const opmath_t g = grad[i];
    grad_x[i] = static_cast<scalar_t>(g + g * static_cast<opmath_t>(gamma[i]));
    grad_gamma[i] = static_cast<scalar_t>(g * static_cast<opmath_t>(x[i]));
  }
}

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t cap = static_cast<int64_t>(sms) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(wanted, cap)));
}

at::Tensor sft_combine_cuda(const at::Tensor& x_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
                            const at::Tensor& ida_in) {
  check_same_operands("sft_combine", {x_in, gamma_in, beta_in, ida_in});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool keep = same_dense_layout({x_in, gamma_in, beta_in, ida_in});
  const at::Tensor x = keep ? x_in : x_in.contiguous();
  const at::Tensor gamma = keep ? gamma_in : gamma_in.contiguous();
  const at::Tensor beta = keep ? beta_in : beta_in.contiguous();
  const at::Tensor ida = keep ? ida_in : ida_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sft_combine_cuda", [&] {
    sft_combine_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
        ida.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> sft_combine_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                             const at::Tensor& gamma_in) {
  check_same_operands("sft_combine_backward", {grad_in, x_in, gamma_in});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool keep = same_dense_layout({grad_in, x_in, gamma_in});
  const at::Tensor grad = keep ? grad_in : grad_in.contiguous();
  const at::Tensor x = keep ? x_in : x_in.contiguous();
  const at::Tensor gamma = keep ? gamma_in : gamma_in.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gamma = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return {grad_x, grad_gamma};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sft_combine_backward_cuda", [&] {
    sft_combine_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
        grad_x.mutable_data_ptr<scalar_t>(), grad_gamma.mutable_data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_x, grad_gamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(udm_fast, CUDA, m) {
  m.impl("sft_combine", &sft_combine_cuda);
  m.impl("sft_combine_backward", &sft_combine_backward_cuda);
}

}  // namespace udm_fast
