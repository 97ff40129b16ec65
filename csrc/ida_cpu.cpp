// CPU kernels of the fused IDA / SFT ops: the tile pipelines of ida_core.h with one
// lane per tile (the block of a GPU tile run sequentially), tiles spread over the
// threads with at::parallel_for; weight gradients go to per-thread accumulators.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "ida_launch.h"

namespace udm_fast {
namespace ida {
namespace {

constexpr int64_t kTileBudgetBytes = 96 * 1024;  // one thread's tile buffers stay in its L2

template <typename acc_t>
Tiling cpu_tiling(Pass pass, const Dims& d, int rd_gamma, int rd_beta) {
  Tiling t = choose_tiling(pass, d, rd_gamma, rd_beta, sizeof(acc_t), kTileBudgetBytes, at::get_num_threads());
  if (t.th == 0) {
    // nothing fits the cache budget (float64 at C = 512): the buffers are on the heap, so take the
    // smallest tile shape (an unreachable tile count makes choose_tiling return the last candidate)
    constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();
    t = choose_tiling(pass, d, rd_gamma, rd_beta, sizeof(acc_t), kUnlimited, kUnlimited);
  }
  TORCH_CHECK(t.th > 0, "udm_fast IDA (CPU): no tile shape for ", d.cm, " mid channels");
  return t;
}

template <typename scalar_t, bool kSft>
void forward_typed(const IdaTensors& t, const SftTensors* sft, const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const IdaInputs<scalar_t> in = ida_inputs<scalar_t>(t);
  const SftInputs<scalar_t, acc_t> s = sft_inputs<scalar_t, acc_t>(sft);
  const Strided4<scalar_t> o = strided4<scalar_t>(out);
  const Tiling tl = cpu_tiling<acc_t>(Pass::kForward, t.dims, s.rd_gamma, s.rd_beta);
  const int elems = forward_layout(t.dims, tl, s.rd_gamma, s.rd_beta).total;
  at::parallel_for(0, tl.count(t.dims.batch), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(elems);
    for (int64_t tile = begin; tile < end; ++tile)
      forward_tile<scalar_t, acc_t, kSft>(in, s, o, tl, tile, buf.data(), 0, 1);
  });
}

template <typename scalar_t>
void backward_typed(const IdaTensors& t, const at::Tensor& grad_out, const at::Tensor& dx, const at::Tensor& dm,
                    const at::Tensor& grads) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = t.dims;
  const IdaInputs<scalar_t> in = ida_inputs<scalar_t>(t);
  const Strided4<const scalar_t> g = strided4<const scalar_t>(grad_out);
  const Strided4<scalar_t> dxv = strided4<scalar_t>(dx), dmv = strided4<scalar_t>(dm);
  const GradOffsets off = grad_offsets(d);
  const int threads = at::get_num_threads();
  at::Tensor partial = at::zeros({threads, off.total}, grads.options());
  acc_t* partial_base = partial.mutable_data_ptr<acc_t>();
  const int64_t ws_elems = d.batch * d.hl() * d.wl() * d.cm;
  at::Tensor ws = at::empty({2, ws_elems}, grads.options());
  acc_t* ws_da = ws.mutable_data_ptr<acc_t>();
  acc_t* ws_dbx = ws_da + ws_elems;
  auto thread_grads = [&] {
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid < threads, "udm_fast IDA (CPU): thread id ", tid, " outside the ", threads, " accumulators");
    return grads_at(partial_base + tid * off.total, off);
  };

  const Tiling mid = cpu_tiling<acc_t>(Pass::kBackwardMid, d, 0, 0);
  const int mid_elems = mid_layout(d, mid).total;
  at::parallel_for(0, mid.count(d.batch), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(mid_elems);
    const IdaGrads<acc_t> mine = thread_grads();
    for (int64_t tile = begin; tile < end; ++tile)
      backward_mid_tile(in, g, ws_da, ws_dbx, mine, mid, tile, buf.data(), 0, 1);
  });

  const Tiling dgrad = cpu_tiling<acc_t>(Pass::kBackwardDgrad, d, 0, 0);
  const int dgrad_elems = dgrad_layout(d, dgrad).total;
  at::parallel_for(0, dgrad.count(d.batch), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(dgrad_elems);
    const IdaGrads<acc_t> mine = thread_grads();
    for (int64_t tile = begin; tile < end; ++tile)
      backward_dgrad_tile(in, ws_da, ws_dbx, dxv, dmv, mine.w_up, dgrad, tile, buf.data(), 0, 1);
  });
  grads.add_(partial.sum(0));
}

}  // namespace

void fused_forward_cpu(const IdaTensors& t, const SftTensors* sft, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.x.scalar_type(), "udm_fast_fused_forward_cpu", [&] {
    if (sft != nullptr) {
      forward_typed<scalar_t, true>(t, sft, out);
    } else {
      forward_typed<scalar_t, false>(t, nullptr, out);
    }
  });
}

void ida_backward_cpu(const IdaTensors& t, const at::Tensor& grad_out, const at::Tensor& dx, const at::Tensor& dm,
                      const at::Tensor& grads) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.x.scalar_type(), "udm_fast_ida_backward_cpu",
                                  [&] { backward_typed<scalar_t>(t, grad_out, dx, dm, grads); });
}

}  // namespace ida
}  // namespace udm_fast
