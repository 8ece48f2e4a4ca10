#include "kernels/base/backend.h"

#include "absl/strings/str_cat.h"

#if SIGMATUNE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sigmatune {

BackendChoice ChooseBackend() {
  BackendChoice choice;
  choice.device = Device::Cpu();
#if SIGMATUNE_WITH_CUDA
  choice.cuda_build = CudaBuild::kCompiledIn;
  int count = 0;
  const cudaError_t code = cudaGetDeviceCount(&count);
  if (code != cudaSuccess) {
    choice.reason = cudaGetErrorString(code);
    return choice;
  }
  choice.visible_gpus = count;
  if (count == 0) {
    choice.reason = "no CUDA device is visible";
    return choice;
  }
  choice.device = Device::Cuda(0);
  choice.reason = absl::StrCat(count, " CUDA device(s) visible");
#else
  choice.cuda_build = CudaBuild::kNotCompiled;
  choice.reason = "built without CUDA (nvcc was not found at build time)";
#endif
  return choice;
}

std::string BackendNotice(const BackendChoice& choice) {
  return absl::StrCat("sigmatune: using the ", choice.device.ToString(), " backend (", choice.reason, ")");
}

}  // namespace sigmatune
