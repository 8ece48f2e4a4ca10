// Chooses the compute backend at start-up: CUDA device 0 when one is usable, else the CPU.
// A machine without a GPU driver gets the CPU backend and a one-line notice, never an error.
#ifndef SIGMATUNE_KERNELS_BASE_BACKEND_H_
#define SIGMATUNE_KERNELS_BASE_BACKEND_H_

#include <string>

#include "kernels/base/device.h"

namespace sigmatune {

enum class CudaBuild { kCompiledIn, kNotCompiled };

struct BackendChoice {
  Device device;
  CudaBuild cuda_build;
  int visible_gpus = 0;
  // Why this backend: "1 CUDA device(s) visible", "CUDA driver version is insufficient for
  // CUDA runtime version", "built without CUDA (nvcc was not found at build time)".
  std::string reason;
};

// Probes the CUDA runtime (if compiled in). Never fails.
BackendChoice ChooseBackend();
// One line for logs: "sigmatune: using cpu backend (built without CUDA ...)".
std::string BackendNotice(const BackendChoice& choice);

}  // namespace sigmatune

#endif  // SIGMATUNE_KERNELS_BASE_BACKEND_H_
