// The fused IDA / SFT ops of the `cuda` backend: argument checks, output allocation,
// the conversion of the weight gradients from the kernels' accumulator layouts, and the
// registration of the CPU and CUDA kernels under their own dispatch keys (schemas in
// registration.cpp). Fake (meta) kernels and
// autograd are registered in udm_fast/ops/ida_cuda.py.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ida_launch.h"

namespace udm_fast {
namespace ida {
namespace {

using Named = std::pair<const char*, const at::Tensor*>;

void check_4d(const char* op, const char* name, const at::Tensor& t, const char* layout) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D ", layout, ", got shape ", t.sizes());
}

void check_shape(const char* op, const char* name, const at::Tensor& t, std::vector<int64_t> expected) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), op, ": ", name, " must have shape ", at::IntArrayRef(expected),
              ", got ", t.sizes());
}

// One floating dtype and one CPU / CUDA device for every operand.
void check_common(const char* op, const std::vector<Named>& operands) {
  const at::Tensor& first = *operands.front().second;
  const at::ScalarType dtype = first.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": expected float32, float64, float16 or bfloat16 tensors, got ", dtype);
  TORCH_CHECK(first.is_cpu() || first.is_cuda(), op, ": tensors must be on the CPU or a CUDA device, got ",
              first.device());
  TORCH_CHECK(!(first.is_cuda() && dtype == at::kDouble), op,
              ": float64 is not supported on CUDA; use float32, bfloat16 or float16");
  for (const auto& [name, t] : operands) {
    TORCH_CHECK(t->scalar_type() == dtype, op, ": ", name, " has dtype ", t->scalar_type(), " but ",
                operands.front().first, " has ", dtype);
    TORCH_CHECK(t->device() == first.device(), op, ": ", name, " is on ", t->device(), " but ", operands.front().first,
                " is on ", first.device());
  }
}

int as_int(const char* op, const char* what, int64_t v) {
  TORCH_CHECK(v <= std::numeric_limits<int>::max() / 16, op, ": ", what, " = ", v, " is too large for the kernels");
  return static_cast<int>(v);
}

// Checks x [B, C, H, W] (H, W even), the map [B, Cc, H/2, W/2] and the IDA weights.
IdaTensors check_ida(const char* op, const char* map_name, const at::Tensor& x, const at::Tensor& m,
                     const at::Tensor& w_up, const at::Tensor& w_map, const at::Tensor& w_x, const at::Tensor& w_out,
                     const at::Tensor* b_out) {
  check_4d(op, "x", x, "[B, C, H, W]");
  check_4d(op, map_name, m, "[B, Cc, H/2, W/2]");
  check_4d(op, "w_up", w_up, "[Cc, Cm, 2, 2]");
  check_4d(op, "w_out", w_out, "[Cm, Co, 2, 2]");
  const int64_t batch = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t cc = w_up.size(0), cm = w_up.size(1), co = w_out.size(1);
  TORCH_CHECK(h % 2 == 0 && w % 2 == 0, op, ": x height and width must be even, got ", h, "x", w);
  check_shape(op, "w_up", w_up, {cc, cm, 2, 2});
  check_shape(op, map_name, m, {batch, cc, h / 2, w / 2});
  check_shape(op, "w_map", w_map, {cm, cm, 3, 3});
  check_shape(op, "w_x", w_x, {cm, c, 3, 3});
  check_shape(op, "w_out", w_out, {cm, co, 2, 2});
  std::vector<Named> operands = {{"x", &x},         {map_name, &m}, {"w_up", &w_up},
                                 {"w_map", &w_map}, {"w_x", &w_x},  {"w_out", &w_out}};
  if (b_out != nullptr) {
    check_shape(op, "b_out", *b_out, {co});
    operands.push_back({"b_out", b_out});
  }
  check_common(op, operands);
  const Dims dims{batch,
                  as_int(op, "channels", c),
                  as_int(op, "map channels", cc),
                  as_int(op, "mid channels", cm),
                  as_int(op, "output channels", co),
                  as_int(op, "height", h),
                  as_int(op, "width", w)};
  return {x,
          m,
          w_up.contiguous(),
          w_map.contiguous(),
          w_x.contiguous(),
          w_out.contiguous(),
          b_out != nullptr ? b_out->contiguous() : at::Tensor(),
          dims};
}

// Outputs follow the input's layout: channels_last when the input is (and is not also NCHW-contiguous).
at::MemoryFormat layout_of(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast) ? at::MemoryFormat::ChannelsLast
                                                                               : at::MemoryFormat::Contiguous;
}

at::Tensor empty_like_layout(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::empty(sizes, like.options().memory_format(layout_of(like)));
}

// The device kernels behind the ops: each op is registered once per dispatch key (CPU, CUDA) with the
// kernels of that device as template arguments, so no op body branches on the device.
using ForwardKernel = void (*)(const IdaTensors&, const SftTensors*, const at::Tensor&);
using BackwardKernel = void (*)(const IdaTensors&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&);

template <ForwardKernel forward_kernel>
at::Tensor ida_forward(const at::Tensor& x, const at::Tensor& m, const at::Tensor& w_up, const at::Tensor& w_map,
                       const at::Tensor& w_x, const at::Tensor& w_out, const at::Tensor& b_out) {
  const IdaTensors t = check_ida("ida_forward", "m", x, m, w_up, w_map, w_x, w_out, &b_out);
  at::Tensor out = empty_like_layout({t.dims.batch, t.dims.co, t.dims.h, t.dims.w}, x);
  if (out.numel() > 0) forward_kernel(t, nullptr, out);
  return out;
}

template <BackwardKernel backward_kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ida_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& m, const at::Tensor& w_up,
    const at::Tensor& w_map, const at::Tensor& w_x, const at::Tensor& w_out) {
  const char* op = "ida_backward";
  const IdaTensors t = check_ida(op, "m", x, m, w_up, w_map, w_x, w_out, nullptr);
  const Dims& d = t.dims;
  check_4d(op, "grad_out", grad_out, "[B, Co, H, W]");
  check_shape(op, "grad_out", grad_out, {d.batch, d.co, d.h, d.w});
  check_common(op, {{"x", &x}, {"grad_out", &grad_out}});
  at::Tensor dx = empty_like_layout(x.sizes(), x);
  at::Tensor dm = empty_like_layout(m.sizes(), m);
  const GradOffsets off = grad_offsets(d);
  at::Tensor grads = at::zeros({off.total}, x.options().dtype(at::toOpMathType(x.scalar_type())));
  if (d.batch > 0 && d.h > 0 && d.w > 0) backward_kernel(t, grad_out, dx, dm, grads);
  auto part = [&](int64_t offset, int64_t n) { return grads.narrow(0, offset, n); };
  // accumulator layouts -> PyTorch weight layouts (contiguous, the input dtype)
  auto to_weight = [&](const at::Tensor& like, const at::Tensor& accumulated) {
    return at::empty(like.sizes(), like.options()).copy_(accumulated);
  };
  const int64_t cc = d.cc, cm = d.cm, c = d.c, co = d.co;
  at::Tensor dw_up = to_weight(w_up, part(off.w_up, cc * cm * 4).view({cc, cm, 2, 2}));
  at::Tensor dw_map = to_weight(w_map, part(off.w_map, cm * 9 * cm).view({cm, 3, 3, cm}).permute({3, 0, 1, 2}));
  at::Tensor dw_x = to_weight(w_x, part(off.w_x, c * 9 * cm).view({c, 3, 3, cm}).permute({3, 0, 1, 2}));
  at::Tensor dw_out = to_weight(w_out, part(off.w_out, 4 * co * cm).view({2, 2, co, cm}).permute({3, 2, 0, 1}));
  at::Tensor db_out = at::empty({co}, x.options()).copy_(part(off.b_out, co));
  return {dx, dm, dw_up, dw_map, dw_x, dw_out, db_out};
}

template <ForwardKernel forward_kernel>
at::Tensor sft_forward(const at::Tensor& x, const at::Tensor& cond, const at::Tensor& cond_half,
                       const at::Tensor& noise, const at::Tensor& w_gamma1, const at::Tensor& w_gamma2,
                       const at::Tensor& w_beta1, const at::Tensor& w_beta2, const at::Tensor& w_up,
                       const at::Tensor& w_map, const at::Tensor& w_x, const at::Tensor& w_out, const at::Tensor& b_out,
                       double slope) {
  const char* op = "sft_forward";
  const IdaTensors t = check_ida(op, "cond_half", x, cond_half, w_up, w_map, w_x, w_out, &b_out);
  const Dims& d = t.dims;
  TORCH_CHECK(d.co == d.c, op, ": the IDA must keep the channel count (w_out [Cm, ", d.c, ", 2, 2]), got ", d.co,
              " output channels");
  TORCH_CHECK(std::isfinite(slope), op, ": the activation slope must be finite, got ", slope);
  check_4d(op, "w_gamma1", w_gamma1, "[Rg, Cc, 1, 1]");
  check_4d(op, "w_beta1", w_beta1, "[Rb, Cc + 1, 1, 1]");
  const int64_t rg = w_gamma1.size(0), rb = w_beta1.size(0);
  check_shape(op, "cond", cond, {d.batch, d.cc, d.h, d.w});
  check_shape(op, "noise", noise, {d.batch, 1, d.h, d.w});
  check_shape(op, "w_gamma1", w_gamma1, {rg, d.cc, 1, 1});
  check_shape(op, "w_gamma2", w_gamma2, {d.c, rg, 1, 1});
  check_shape(op, "w_beta1", w_beta1, {rb, d.cc + 1, 1, 1});
  check_shape(op, "w_beta2", w_beta2, {d.c, rb, 1, 1});
  as_int(op, "gamma hidden channels", rg);
  as_int(op, "beta hidden channels", rb);
  check_common(op, {{"x", &x},
                    {"cond", &cond},
                    {"noise", &noise},
                    {"w_gamma1", &w_gamma1},
                    {"w_gamma2", &w_gamma2},
                    {"w_beta1", &w_beta1},
                    {"w_beta2", &w_beta2}});
  const SftTensors s{
      cond, noise, w_gamma1.contiguous(), w_gamma2.contiguous(), w_beta1.contiguous(), w_beta2.contiguous(), slope};
  at::Tensor out = empty_like_layout(x.sizes(), x);
  if (out.numel() > 0) forward_kernel(t, &s, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(udm_fast, CPU, m) {
  m.impl("ida_forward", &ida_forward<fused_forward_cpu>);
  m.impl("ida_backward", &ida_backward<ida_backward_cpu>);
  m.impl("sft_forward", &sft_forward<fused_forward_cpu>);
}

#ifdef UDM_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(udm_fast, CUDA, m) {
  m.impl("ida_forward", &ida_forward<fused_forward_cuda>);
  m.impl("ida_backward", &ida_backward<ida_backward_cuda>);
  m.impl("sft_forward", &sft_forward<fused_forward_cuda>);
}
#endif

}  // namespace ida
}  // namespace udm_fast
