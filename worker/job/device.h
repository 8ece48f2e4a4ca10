// The compute backend of one rank of a job, from the spec's `device` field.
//   "cpu"   the fp32 CPU backend (num_threads > 0 threads, else OpenBLAS's count);
//   "cuda"  the GPU of this rank's local rank (one GPU per local rank), bf16 weights and
//           activations with fp32 accumulation and f32 adapters (kernels/model/backend_cuda.h);
//           FailedPrecondition naming the reason when this build has no CUDA, no GPU is usable,
//           or the host runs more ranks than it has GPUs;
//   "auto"  "cuda" when a GPU is usable for this rank, else "cpu" with a notice saying why.
#ifndef SIGMATUNE_WORKER_JOB_DEVICE_H_
#define SIGMATUNE_WORKER_JOB_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/model/backend.h"

namespace sigmatune::job {

struct JobBackend {
  std::unique_ptr<model::ModelBackend> backend;
  // "cpu" or "cuda:N", for the log and the report.
  std::string device;
  // Why "auto" fell back to the CPU (empty otherwise).
  std::string notice;
};

// `device` is "auto", "cpu" or "cuda" (the spec has checked it; anything else is InvalidArgument).
absl::StatusOr<JobBackend> OpenJobBackend(const std::string& device, int64_t num_threads, int local_rank);

}  // namespace sigmatune::job

#endif  // SIGMATUNE_WORKER_JOB_DEVICE_H_
