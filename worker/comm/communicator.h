// Communicator: the collectives a worker group's ranks use to cooperate on one job. The phases of a
// job (worker/job, worker/train) are written against this interface; the data planes are its
// implementations:
//   SingleProcessCommunicator  the group of one (this file): every collective is the identity;
//   LocalGroup                 ranks on threads of one process, for unit tests (local_communicator.h);
//   MpiCommunicator            processes started by mpirun, host buffers (mpi_communicator.h);
//   NcclCommunicator           one GPU per local rank, device buffers, MPI for the control plane
//                              (nccl_communicator.h).
//
// Contract (every implementation):
//  - Ordering: every rank makes the same collective calls in the same order with matching
//    arguments (lengths, roots, element types). A mismatch is a programmer error (CHECK where it can
//    be seen, undefined otherwise). Point-to-point messages from one rank to another arrive in the
//    order they were sent and do not interleave with collectives.
//  - Memory: buffers live in memory() — host memory for every implementation but NCCL, whose
//    numeric collectives take device pointers (Broadcast/Send/Recv of strings always take host
//    strings). A call returns when this rank's buffers may be reused.
//  - Results: AllReduceSum leaves the element-wise sum over ranks in every rank's buffer;
//    ReduceSum leaves it in root's buffer only (the others' buffers keep their input); integer sums
//    are exact; floating-point sums may differ from a serial sum by the reduction order (the same
//    group and inputs give the same bits again). Broadcast copies root's bytes to every rank.
//    ReduceScatterSum and AllGather use the contiguous split ShardOf(total, size(), rank()).
//  - Failure: a dead or stuck peer, a timeout (CommOptions::timeout, measured from the moment this
//    rank enters the call), a peer's Abort or a transport error is returned as a non-OK Status
//    naming the operation, its call number and, when the implementation can know it, the rank
//    (DeadlineExceeded for a timeout, Aborted for a peer's Abort, Unavailable for a transport
//    error). After the first failure the communicator is broken: every later call fails at once
//    with FailedPrecondition repeating the first error. The caller stops the job (its last
//    committed checkpoint stays the one to resume from). Under mpirun a rank that dies or exits
//    non-zero makes the launcher terminate the others, and mpirun's message names it.
//  - Abort(why): this rank gives up on the group; peers' pending and later calls fail (threads:
//    Aborted naming this rank and `why`; MPI: MPI_Abort, the launcher ends every rank).
//  - Threads: not thread safe; one thread per rank issues the calls.
#ifndef SIGMATUNE_WORKER_COMM_COMMUNICATOR_H_
#define SIGMATUNE_WORKER_COMM_COMMUNICATOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace sigmatune::comm {

enum class MemorySpace { kHost, kDevice };

struct CommOptions {
  // How long one call may wait for its peers before it fails with DeadlineExceeded.
  absl::Duration timeout = absl::Minutes(30);
};

// [begin, end) of one part of a contiguous split of `total` elements into `parts`: the first
// total % parts parts hold one element more. CHECKs total >= 0, parts >= 1, 0 <= index < parts.
struct ShardRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};
ShardRange ShardOf(int64_t total, int parts, int index);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Among the ranks on this host (one GPU per local rank).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  // "single", "threads", "mpi", "nccl": for logs and reports.
  virtual std::string name() const = 0;
  virtual MemorySpace memory() const { return MemorySpace::kHost; }
  bool is_leader() const { return rank() == 0; }

  virtual absl::Status AllReduceSum(absl::Span<double> values) = 0;
  virtual absl::Status AllReduceSum(absl::Span<float> values) = 0;
  virtual absl::Status AllReduceSum(absl::Span<int64_t> values) = 0;
  virtual absl::Status ReduceSum(int root, absl::Span<double> values) = 0;
  virtual absl::Status ReduceSum(int root, absl::Span<float> values) = 0;
  // `input` is the whole vector (the same length on every rank); `output` receives this rank's
  // part ShardOf(input.size(), size(), rank()) of the element-wise sum (CHECKed length).
  virtual absl::Status ReduceScatterSum(absl::Span<const float> input, absl::Span<float> output) = 0;
  virtual absl::Status ReduceScatterSum(absl::Span<const double> input, absl::Span<double> output) = 0;
  // `input` is this rank's part ShardOf(output.size(), size(), rank()); every rank's `output`
  // receives all parts in rank order.
  virtual absl::Status AllGather(absl::Span<const float> input, absl::Span<float> output) = 0;
  virtual absl::Status AllGather(absl::Span<const double> input, absl::Span<double> output) = 0;
  // Root's bytes into every rank's string (resized).
  virtual absl::Status Broadcast(int root, std::string* bytes) = 0;
  virtual absl::Status Barrier() = 0;
  // Point to point (large matrices, checkpoint entries): `bytes` of any length.
  virtual absl::Status Send(int dest, const std::string& bytes) = 0;
  virtual absl::Status Recv(int source, std::string* bytes) = 0;
  virtual void Abort(const absl::Status& why) = 0;

  // Every rank's `mine` at root, in rank order (`all` is resized on root, untouched elsewhere).
  // Built on Send/Recv.
  absl::Status Gather(int root, const std::string& mine, std::vector<std::string>* all);
};

// The group of one: every collective is the identity, roots and peers other than 0 are
// InvalidArgument, Send/Recv (to itself) are Unimplemented.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  std::string name() const override { return "single"; }
  absl::Status AllReduceSum(absl::Span<double>) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(absl::Span<float>) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(absl::Span<int64_t>) override { return absl::OkStatus(); }
  absl::Status ReduceSum(int root, absl::Span<double>) override { return CheckRoot("ReduceSum", root); }
  absl::Status ReduceSum(int root, absl::Span<float>) override { return CheckRoot("ReduceSum", root); }
  absl::Status ReduceScatterSum(absl::Span<const float> input, absl::Span<float> output) override;
  absl::Status ReduceScatterSum(absl::Span<const double> input, absl::Span<double> output) override;
  absl::Status AllGather(absl::Span<const float> input, absl::Span<float> output) override;
  absl::Status AllGather(absl::Span<const double> input, absl::Span<double> output) override;
  absl::Status Broadcast(int root, std::string* bytes) override;
  absl::Status Barrier() override { return absl::OkStatus(); }
  absl::Status Send(int dest, const std::string& bytes) override;
  absl::Status Recv(int source, std::string* bytes) override;
  void Abort(const absl::Status&) override {}

 private:
  static absl::Status CheckRoot(const char* op, int root);
};

}  // namespace sigmatune::comm

#endif  // SIGMATUNE_WORKER_COMM_COMMUNICATOR_H_
