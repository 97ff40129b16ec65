// The Python module udm_fast._C: loading it registers the torch ops (see
// registration.cpp); pybind11 serves the non-tensor APIs.
#include <torch/extension.h>

#include "coder_bindings.h"

#ifndef UDM_FAST_CUDA_REASON
#define UDM_FAST_CUDA_REASON "unknown"
#endif
#ifndef UDM_FAST_BUILT_WITH_TORCH
#define UDM_FAST_BUILT_WITH_TORCH "unknown"
#endif

namespace {

pybind11::dict compiled_info() {
  pybind11::dict info;
#ifdef UDM_FAST_WITH_CUDA
  info["cuda_compiled"] = true;
#else
  info["cuda_compiled"] = false;
#endif
  info["cuda_reason"] = UDM_FAST_CUDA_REASON;
  info["built_with_torch"] = UDM_FAST_BUILT_WITH_TORCH;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "udm_fast compiled kernels";
  m.def("compiled_info", &compiled_info, "How this extension was built (CUDA compiled or why not).");
  bind_coder(m);
}
