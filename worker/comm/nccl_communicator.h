// NcclCommunicator: communicator.h's contract with NCCL for the numeric collectives, one GPU per
// local rank, and an MpiCommunicator as the control plane.
//
//  - Create is collective over MPI_COMM_WORLD (an MpiEnvironment must be alive): it makes the MPI
//    control plane, selects device local_rank() (FailedPrecondition naming the counts when a host
//    runs more ranks than it has GPUs, reported by every rank), broadcasts rank 0's ncclUniqueId
//    over MPI and creates a non-blocking NCCL communicator (ncclConfig_t::blocking = 0).
//  - memory() is kDevice: AllReduceSum, ReduceSum, ReduceScatterSum and AllGather take pointers to
//    memory of device() wrapped in spans (never dereferenced on the host). Their inputs must be
//    ready when the call is made (work on the legacy default stream is ordered before them; other
//    streams must be synchronised by the caller). Each call runs on the communicator's own stream
//    and returns when that work has finished, so buffers may then be reused.
//  - ReduceScatterSum and AllGather keep ShardOf's uneven split: NCCL needs equal parts, so when
//    the length is not a multiple of size() the parts go through a padded device scratch buffer.
//  - Broadcast, Barrier, Send, Recv (and Gather, built on them) take host strings and go over MPI.
//  - Every call honours CommOptions::timeout by polling cudaStreamQuery and ncclCommGetAsyncError.
//    A timeout (DeadlineExceeded), an NCCL error (Unavailable, with ncclGetErrorString and
//    ncclGetLastError) or a CUDA error (Internal) aborts the NCCL communicator (ncclCommAbort) and
//    breaks this communicator: later calls fail at once with FailedPrecondition. Errors of the MPI
//    control plane break it too.
//  - Abort(why) aborts the NCCL communicator, then the MPI control plane (MPI_Abort).
#ifndef SIGMATUNE_WORKER_COMM_NCCL_COMMUNICATOR_H_
#define SIGMATUNE_WORKER_COMM_NCCL_COMMUNICATOR_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "worker/comm/communicator.h"
#include "worker/comm/mpi_communicator.h"

namespace sigmatune::comm {

class NcclCommunicator final : public Communicator {
 public:
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(CommOptions options = {});
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return control_->rank(); }
  int size() const override { return control_->size(); }
  int local_rank() const override { return control_->local_rank(); }
  int local_size() const override { return control_->local_size(); }
  std::string name() const override { return "nccl"; }
  MemorySpace memory() const override { return MemorySpace::kDevice; }
  // The CUDA device of this rank (== local_rank()) and the stream the collectives run on.
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  absl::Status AllReduceSum(absl::Span<double> values) override;
  absl::Status AllReduceSum(absl::Span<float> values) override;
  absl::Status AllReduceSum(absl::Span<int64_t> values) override;
  absl::Status ReduceSum(int root, absl::Span<double> values) override;
  absl::Status ReduceSum(int root, absl::Span<float> values) override;
  absl::Status ReduceScatterSum(absl::Span<const float> input, absl::Span<float> output) override;
  absl::Status ReduceScatterSum(absl::Span<const double> input, absl::Span<double> output) override;
  absl::Status AllGather(absl::Span<const float> input, absl::Span<float> output) override;
  absl::Status AllGather(absl::Span<const double> input, absl::Span<double> output) override;
  absl::Status Broadcast(int root, std::string* bytes) override;
  absl::Status Barrier() override;
  absl::Status Send(int dest, const std::string& bytes) override;
  absl::Status Recv(int source, std::string* bytes) override;
  void Abort(const absl::Status& why) override;

 private:
  struct Call;

  NcclCommunicator(std::unique_ptr<MpiCommunicator> control, CommOptions options);
  // The collective part of Create after the control plane exists.
  absl::Status Init();

  Call Begin(const std::string& op);
  // Waits for an enqueue that returned ncclInProgress, or reports its error.
  absl::Status Enqueue(const Call& call, ncclResult_t result);
  absl::Status CheckCuda(const Call& call, cudaError_t code, const char* what);
  // Polls the stream and NCCL's asynchronous error until the call's work is done.
  absl::Status Finish(const Call& call);
  // Grows the device scratch buffer to at least `bytes`.
  absl::Status EnsureScratch(const Call& call, size_t bytes);
  // Aborts the NCCL communicator (if any) and records the first failure.
  absl::Status Fail(absl::Status status);
  absl::Status Broken() const;
  // A control-plane result: its failure breaks this communicator too.
  absl::Status Control(absl::Status status);
  std::string Who() const;

  template <typename T>
  absl::Status AllReduceImpl(const char* op, absl::Span<T> values);
  template <typename T>
  absl::Status ReduceImpl(const char* op, int root, absl::Span<T> values);
  template <typename T>
  absl::Status ReduceScatterImpl(const char* op, absl::Span<const T> input, absl::Span<T> output);
  template <typename T>
  absl::Status AllGatherImpl(const char* op, absl::Span<const T> input, absl::Span<T> output);

  std::unique_ptr<MpiCommunicator> control_;
  const CommOptions options_;
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  int64_t collectives_ = 0;
  absl::Status broken_;
};

}  // namespace sigmatune::comm

#endif  // SIGMATUNE_WORKER_COMM_NCCL_COMMUNICATOR_H_
