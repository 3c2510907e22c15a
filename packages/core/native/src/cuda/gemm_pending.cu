// Placeholder for tb::cuda::gemm while cuda/gemm.cu is written on its own
// branch: it throws, so an op that needs a GEMM on CUDA fails with a clear
// error instead of the addon failing to load. DELETE this file when
// cuda/gemm.cu is merged (both define the symbol, so the link fails until then).
#include "common.cuh"
#include "gemm.h"

namespace tb::cuda {

void gemm(int64_t, int64_t, int64_t, float, MatRef, MatRef, float, float*, int64_t) {
  throw DeviceError("tb::cuda::gemm is not in this build yet (cuda/gemm.cu)");
}

}  // namespace tb::cuda
