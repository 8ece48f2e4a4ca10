#include "kernels/testing/gpu.h"

#if SIGMATUNE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sigmatune::testing {

bool GpuAvailable(std::string* why_not) {
#if SIGMATUNE_WITH_CUDA
  int count = 0;
  const cudaError_t code = cudaGetDeviceCount(&count);
  if (code != cudaSuccess) {
    *why_not = std::string("no usable GPU: ") + cudaGetErrorString(code);
    return false;
  }
  if (count == 0) {
    *why_not = "no usable GPU: no CUDA device is visible";
    return false;
  }
  return true;
#else
  *why_not = "built without CUDA (nvcc was not found at build time)";
  return false;
#endif
}

}  // namespace sigmatune::testing
