#include "worker/job/device.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/backend.h"

#if SIGMATUNE_WITH_CUDA
#include "kernels/model/backend_cuda.h"
#endif

namespace sigmatune::job {
namespace {

JobBackend Cpu(int64_t num_threads, std::string notice) {
  JobBackend out;
  out.backend = num_threads > 0 ? std::make_unique<model::CpuBackend>(static_cast<int>(num_threads))
                                : std::make_unique<model::CpuBackend>();
  out.device = "cpu";
  out.notice = std::move(notice);
  return out;
}

// The CUDA backend of `local_rank`'s GPU, or why there is none.
absl::StatusOr<JobBackend> Cuda(int local_rank) {
  const BackendChoice choice = ChooseBackend();
  if (choice.cuda_build == CudaBuild::kNotCompiled || choice.visible_gpus == 0) {
    return absl::FailedPreconditionError(absl::StrCat("no usable GPU: ", choice.reason));
  }
  if (local_rank >= choice.visible_gpus) {
    return absl::FailedPreconditionError(absl::StrCat(
        "local rank ", local_rank, " has no GPU of its own: this host shows ", choice.visible_gpus,
        " CUDA device(s); start at most that many ranks per host (one GPU per local rank)"));
  }
#if SIGMATUNE_WITH_CUDA
  absl::StatusOr<std::unique_ptr<model::CudaBackend>> cuda = model::CudaBackend::Create(local_rank, DType::kBF16);
  if (!cuda.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GPU ", local_rank, " could not be used: ", cuda.status().message()));
  }
  JobBackend out;
  out.backend = *std::move(cuda);
  out.device = Device::Cuda(local_rank).ToString();
  return out;
#else
  return absl::FailedPreconditionError("no usable GPU: built without CUDA");
#endif
}

}  // namespace

absl::StatusOr<JobBackend> OpenJobBackend(const std::string& device, int64_t num_threads, int local_rank) {
  if (device == "cpu") return Cpu(num_threads, "");
  if (device == "cuda") {
    absl::StatusOr<JobBackend> cuda = Cuda(local_rank);
    if (!cuda.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device: cuda was asked for, but ", cuda.status().message(), "; use device: cpu or auto"));
    }
    return cuda;
  }
  if (device == "auto") {
    absl::StatusOr<JobBackend> cuda = Cuda(local_rank);
    if (cuda.ok()) return cuda;
    return Cpu(num_threads, absl::StrCat("device: auto runs on the CPU (", cuda.status().message(), ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat("device must be auto, cpu or cuda, got \"", device, "\""));
}

}  // namespace sigmatune::job
