// CUDA kernels of the fused IDA / SFT ops: one thread block per tile of low-res
// pixels runs the tile pipelines of csrc/ida_core.h (the same code the CPU kernels
// run) with its buffers in dynamic shared memory. Storage dtypes float32, bfloat16
// and float16; all math in float32; weight gradients by float32 atomics.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "ida_launch.h"

namespace udm_fast {
namespace ida {
namespace {

// Shared memory per block the tiling may use: two blocks per SM on sm_90 (228 KB).
constexpr int64_t kSmemBudgetBytes = 100 * 1024;
constexpr int64_t kDefaultSmemBytes = 48 * 1024;
constexpr int kMaxThreads = 256;

template <typename scalar_t, bool kSft>
__global__ void __launch_bounds__(kMaxThreads)
    forward_kernel(IdaInputs<scalar_t> in, SftInputs<scalar_t, float> sft, Strided4<scalar_t> out, Tiling t) {
  extern __shared__ float4 smem[];
  forward_tile<scalar_t, float, kSft>(in, sft, out, t, blockIdx.x, reinterpret_cast<float*>(smem), threadIdx.x,
                                      blockDim.x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    backward_mid_kernel(IdaInputs<scalar_t> in, Strided4<const scalar_t> grad_out, float* ws_da, float* ws_dbx,
                        IdaGrads<float> grads, Tiling t) {
  extern __shared__ float4 smem[];
  backward_mid_tile(in, grad_out, ws_da, ws_dbx, grads, t, blockIdx.x, reinterpret_cast<float*>(smem), threadIdx.x,
                    blockDim.x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    backward_dgrad_kernel(IdaInputs<scalar_t> in, const float* ws_da, const float* ws_dbx, Strided4<scalar_t> dx,
                          Strided4<scalar_t> dm, float* grad_w_up, Tiling t) {
  extern __shared__ float4 smem[];
  backward_dgrad_tile(in, ws_da, ws_dbx, dx, dm, grad_w_up, t, blockIdx.x, reinterpret_cast<float*>(smem), threadIdx.x,
                      blockDim.x);
}

struct LaunchPlan {
  Tiling tiling;
  int threads;
  size_t smem_bytes;
  int64_t blocks;
};

// Tile shape, block size and shared memory of one pass on the current device.
LaunchPlan plan(Pass pass, const Dims& d, int rd_gamma, int rd_beta) {
  int device = 0, optin = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t budget = std::min<int64_t>(optin, kSmemBudgetBytes);
  const Tiling t = choose_tiling(pass, d, rd_gamma, rd_beta, sizeof(float), budget, 2 * int64_t(sms));
  TORCH_CHECK(t.th > 0, "udm_fast IDA (CUDA): no tile shape fits ", budget, " bytes of shared memory with ", d.cm,
              " mid channels");
  const int64_t blocks = t.count(d.batch);
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "udm_fast IDA (CUDA): ", blocks,
              " tiles exceed the grid limit; split the batch");
  // lanes ~ register micro-tiles of the pass's main GEMM phase, in whole warps
  const int work = pass == Pass::kBackwardDgrad ? t.pixels() * t.ch / kVec : (t.pixels() / kPix) * (d.cm_pad() / kVec);
  const int threads = std::clamp(round_up(work, 32), 64, kMaxThreads);
  return {t, threads, size_t(pass_elems(pass, d, t, rd_gamma, rd_beta)) * sizeof(float), blocks};
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > size_t(kDefaultSmemBytes)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  }
}

template <typename scalar_t, bool kSft>
void forward_typed(const IdaTensors& t, const SftTensors* sft, const at::Tensor& out) {
  const IdaInputs<scalar_t> in = ida_inputs<scalar_t>(t);
  const SftInputs<scalar_t, float> s = sft_inputs<scalar_t, float>(sft);
  const LaunchPlan p = plan(Pass::kForward, t.dims, s.rd_gamma, s.rd_beta);
  auto kernel = forward_kernel<scalar_t, kSft>;
  allow_smem(kernel, p.smem_bytes);
  kernel<<<unsigned(p.blocks), p.threads, p.smem_bytes, c10::cuda::getCurrentCUDAStream()>>>(
      in, s, strided4<scalar_t>(out), p.tiling);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void backward_typed(const IdaTensors& t, const at::Tensor& grad_out, const at::Tensor& dx, const at::Tensor& dm,
                    const at::Tensor& grads) {
  const Dims& d = t.dims;
  const IdaInputs<scalar_t> in = ida_inputs<scalar_t>(t);
  const IdaGrads<float> g = grads_at(grads.mutable_data_ptr<float>(), grad_offsets(d));
  const int64_t ws_elems = d.batch * d.hl() * d.wl() * d.cm;
  at::Tensor ws = at::empty({2, ws_elems}, grads.options());
  float* ws_da = ws.mutable_data_ptr<float>();
  float* ws_dbx = ws_da + ws_elems;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const LaunchPlan mid = plan(Pass::kBackwardMid, d, 0, 0);
  allow_smem(backward_mid_kernel<scalar_t>, mid.smem_bytes);
  backward_mid_kernel<scalar_t><<<unsigned(mid.blocks), mid.threads, mid.smem_bytes, stream>>>(
      in, strided4<const scalar_t>(grad_out), ws_da, ws_dbx, g, mid.tiling);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const LaunchPlan dgrad = plan(Pass::kBackwardDgrad, d, 0, 0);
  allow_smem(backward_dgrad_kernel<scalar_t>, dgrad.smem_bytes);
  backward_dgrad_kernel<scalar_t><<<unsigned(dgrad.blocks), dgrad.threads, dgrad.smem_bytes, stream>>>(
      in, ws_da, ws_dbx, strided4<scalar_t>(dx), strided4<scalar_t>(dm), g.w_up, dgrad.tiling);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define UDM_IDA_CUDA_TYPES(...)                           \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)    \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)

}  // namespace

void fused_forward_cuda(const IdaTensors& t, const SftTensors* sft, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(t.x.device());
  AT_DISPATCH_SWITCH(t.x.scalar_type(), "udm_fast_fused_forward_cuda", UDM_IDA_CUDA_TYPES([&] {
                       if (sft != nullptr) {
                         forward_typed<scalar_t, true>(t, sft, out);
                       } else {
                         forward_typed<scalar_t, false>(t, nullptr, out);
                       }
                     }));
}

void ida_backward_cuda(const IdaTensors& t, const at::Tensor& grad_out, const at::Tensor& dx, const at::Tensor& dm,
                       const at::Tensor& grads) {
  const c10::cuda::CUDAGuard guard(t.x.device());
  AT_DISPATCH_SWITCH(t.x.scalar_type(), "udm_fast_ida_backward_cuda",
                     UDM_IDA_CUDA_TYPES([&] { backward_typed<scalar_t>(t, grad_out, dx, dm, grads); }));
}

}  // namespace ida
}  // namespace udm_fast
