// CPU kernels of the SFT epilogue: out = x * (1 + gamma) + beta + ida, one pass.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "elementwise.h"

namespace udm_fast {
namespace {

constexpr int64_t kGrain = 1 << 14;

at::Tensor sft_combine_cpu(const at::Tensor& x_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
                           const at::Tensor& ida_in) {
  check_same_operands("sft_combine", {x_in, gamma_in, beta_in, ida_in});
  const bool keep = same_dense_layout({x_in, gamma_in, beta_in, ida_in});
  const at::Tensor x = keep ? x_in : x_in.contiguous();
  const at::Tensor gamma = keep ? gamma_in : gamma_in.contiguous();
  const at::Tensor beta = keep ? beta_in : beta_in.contiguous();
  const at::Tensor ida = keep ? ida_in : ida_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sft_combine_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = gamma.const_data_ptr<scalar_t>();
    const scalar_t* pb = beta.const_data_ptr<scalar_t>();
    const scalar_t* pi = ida.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const opmath_t xv = px[i];
        po[i] = static_cast<scalar_t>(xv + xv * static_cast<opmath_t>(pg[i]) + static_cast<opmath_t>(pb[i]) +
                                      static_cast<opmath_t>(pi[i]));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sft_combine_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                            const at::Tensor& gamma_in) {
  check_same_operands("sft_combine_backward", {grad_in, x_in, gamma_in});
  const bool keep = same_dense_layout({grad_in, x_in, gamma_in});
  const at::Tensor grad = keep ? grad_in : grad_in.contiguous();
  const at::Tensor x = keep ? x_in : x_in.contiguous();
  const at::Tensor gamma = keep ? gamma_in : gamma_in.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_gamma = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sft_combine_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* pgo = grad.const_data_ptr<scalar_t>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pg = gamma.const_data_ptr<scalar_t>();
    scalar_t* pdx = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* pdg = grad_gamma.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const opmath_t g = pgo[i];
        pdx[i] = static_cast<scalar_t>(g + g * static_cast<opmath_t>(pg[i]));
        pdg[i] = static_cast<scalar_t>(g * static_cast<opmath_t>(px[i]));
      }
    });
  });
  return {grad_x, grad_gamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(udm_fast, CPU, m) {
  m.impl("sft_combine", &sft_combine_cpu);
  m.impl("sft_combine_backward", &sft_combine_backward_cpu);
}

}  // namespace udm_fast
