// parallel_for of the CPU coders: torch's intra-op thread pool inside the extension, a plain
// loop in standalone builds (the sanitizer/fuzz harness defines UDM_RANS_STANDALONE).
#pragma once

#include <cstdint>

#ifdef UDM_RANS_STANDALONE
namespace udm_rans {
template <class Fn>
void parallel_for(int64_t begin, int64_t end, int64_t, const Fn& fn) {
  if (begin < end) fn(begin, end);
}
}  // namespace udm_rans
#else
#include <ATen/Parallel.h>
namespace udm_rans {
template <class Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  at::parallel_for(begin, end, grain, fn);
}
}  // namespace udm_rans
#endif
