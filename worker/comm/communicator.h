// Communicator: the collectives a worker group's ranks use to cooperate on one job. The phases of
// worker/train are written against this interface so that the distributed work (MPI on the CPU,
// NCCL on GPUs, threads in tests) only adds implementations.
//
// Contract (every implementation):
//  - Collective calls are made by every rank of the group in the same order with matching
//    arguments (sizes, dtypes, roots); a mismatch is a programmer error.
//  - Buffers are host memory (this interface); device-tensor collectives come with the NCCL
//    implementation.
//  - AllReduceSum leaves the element-wise sum over ranks in every rank's buffer. Broadcast copies
//    root's bytes to every rank (the receivers' strings are resized). Barrier returns once every
//    rank has entered it.
//  - A failure (a dead peer, a timeout, a transport error) is returned as a Status naming the
//    operation and, when known, the rank; the group is then unusable (the caller stops the job).
//  - Not thread safe: one thread per rank issues the calls.
#ifndef SIGMATUNE_WORKER_COMM_COMMUNICATOR_H_
#define SIGMATUNE_WORKER_COMM_COMMUNICATOR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace sigmatune::comm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  bool is_leader() const { return rank() == 0; }

  virtual absl::Status AllReduceSum(absl::Span<double> values) = 0;
  virtual absl::Status AllReduceSum(absl::Span<float> values) = 0;
  virtual absl::Status Broadcast(int root, std::string* bytes) = 0;
  virtual absl::Status Barrier() = 0;
};

// The group of one: every collective is the identity. What `sigmatune-worker --job` uses when it
// is not started by mpirun.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  absl::Status AllReduceSum(absl::Span<double>) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(absl::Span<float>) override { return absl::OkStatus(); }
  absl::Status Broadcast(int root, std::string* bytes) override;
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace sigmatune::comm

#endif  // SIGMATUNE_WORKER_COMM_COMMUNICATOR_H_
