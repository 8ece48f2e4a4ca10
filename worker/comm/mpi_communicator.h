// MpiCommunicator: communicator.h's contract over MPI, for ranks started by mpirun (one process
// per rank, host buffers).
//
//  - MpiEnvironment owns MPI's lifetime in a process: create it once at the start of main (only
//    when StartedByMpiLauncher(), or to run as a group of one) and keep it alive while any
//    MpiCommunicator exists. A rank whose communicator failed must end with
//    Communicator::Abort (MPI_Abort: the launcher ends every rank) rather than by returning from
//    main: MPI_Finalize waits for every peer, and a stuck peer never arrives.
//  - rank, size, local rank and local size come from MPI itself (a duplicate of MPI_COMM_WORLD and
//    MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)); environment variables only tell
//    StartedByMpiLauncher() whether a launcher is present.
//  - Every call honours CommOptions::timeout: it posts non-blocking MPI operations and polls them
//    until they complete or the deadline passes (DeadlineExceeded "rank R (host H): <Op>
//    (collective #N) did not complete within <timeout>; a peer is dead or stuck"). AllReduceSum
//    and ReduceSum poll only the arrival of every rank (an MPI_Ibarrier) and then reduce with
//    blocking MPI calls, Open MPI's tuned algorithms (non-blocking reductions progress only inside
//    MPI_Test and were several times slower on large matrices); a peer that dies during that
//    transfer is ended by the launcher. MPI errors are
//    returned (MPI_ERRORS_RETURN) as Unavailable with MPI's error text. After the first failure the
//    communicator is broken (FailedPrecondition repeating the first error), and MPI may still
//    write into the failed call's buffers until the process ends.
//  - Messages of any length: operations above 1 GiB (or the INT_MAX counts MPI takes) are split
//    into chunks that every rank splits the same way.
//  - Send returns once MPI has taken the bytes: small messages at once, large ones when the
//    receiver has posted its Recv. Unlike the thread group, two ranks must therefore not both Send
//    large messages to each other before receiving.
//  - Create is collective over MPI_COMM_WORLD and, like MPI's communicator constructors, blocking.
#ifndef SIGMATUNE_WORKER_COMM_MPI_COMMUNICATOR_H_
#define SIGMATUNE_WORKER_COMM_MPI_COMMUNICATOR_H_

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "worker/comm/communicator.h"

namespace sigmatune::comm {

// True when the environment shows an MPI launcher (mpirun, mpiexec, srun with PMI/PMIx) started
// this process. Only decides whether to initialise MPI; the group's shape comes from MPI.
bool StartedByMpiLauncher();

// MPI_Init_thread(MPI_THREAD_FUNNELED) on creation, MPI_Finalize on destruction (MPI_Abort does
// not return, so an aborted process never finalises).
class MpiEnvironment {
 public:
  // Fails when MPI is already initialised (or finalised) in this process, or MPI cannot start.
  // argc/argv may be null.
  static absl::StatusOr<std::unique_ptr<MpiEnvironment>> Init(int* argc, char*** argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

 private:
  MpiEnvironment() = default;
};

class MpiCommunicator final : public Communicator {
 public:
  // Collective over MPI_COMM_WORLD. FailedPrecondition when no MpiEnvironment is alive.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(CommOptions options = {});
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string name() const override { return "mpi"; }
  // MPI's processor name of this rank's host (used in every error message).
  const std::string& hostname() const { return hostname_; }

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
  // Prints "sigmatune: rank R (host H) aborts the worker group: <why>" to stderr and calls
  // MPI_Abort(comm, 1); does not return.
  void Abort(const absl::Status& why) override;

  // Splits every message into chunks of at most `bytes` (>= 1; every rank must set the same value
  // at the same point), so tests reach the chunked paths with small buffers.
  void SetMaxChunkBytesForTesting(int64_t bytes);

 private:
  struct Call;

  MpiCommunicator(MPI_Comm comm, CommOptions options, int rank, int size, int local_rank, int local_size,
                  std::string hostname);

  Call BeginCollective(const std::string& op);
  Call BeginMessage(const std::string& op);
  // Elements of `element_bytes` each in one chunk.
  int64_t ChunkElements(size_t element_bytes) const;
  // An error for `rc` from posting an operation of `call`, and the communicator broken.
  absl::Status Post(const Call& call, int rc);
  // Polls `requests` until all complete or the call's deadline passes. On failure, receives are
  // cancelled and what remains is kept (never freed while pending).
  absl::Status Wait(const Call& call, absl::Span<MPI_Request> requests, bool receives = false);
  // Waits (with the call's deadline) until every rank has entered the call: an MPI_Ibarrier. Large
  // reductions then run as blocking MPI calls, Open MPI's tuned algorithms, which are several times
  // faster than its non-blocking ones; a peer that dies during the transfer ends the job through
  // mpirun.
  absl::Status Arrive(const Call& call);
  absl::Status Fail(absl::Status status);
  absl::Status Broken() const;
  std::string Who() const;

  template <typename T>
  absl::Status AllReduceImpl(const char* op, absl::Span<T> values);
  template <typename T>
  absl::Status ReduceImpl(const char* op, int root, absl::Span<T> values);
  template <typename T>
  absl::Status ReduceScatterImpl(const char* op, absl::Span<const T> input, absl::Span<T> output);
  template <typename T>
  absl::Status AllGatherImpl(const char* op, absl::Span<const T> input, absl::Span<T> output);
  // Broadcasts `count` elements at `data` from `root` in chunks.
  template <typename T>
  absl::Status ChunkedBroadcast(const Call& call, int root, T* data, int64_t count);

  MPI_Comm comm_;
  const CommOptions options_;
  const int rank_;
  const int size_;
  const int local_rank_;
  const int local_size_;
  const std::string hostname_;
  int64_t max_chunk_bytes_;
  int64_t collectives_ = 0;
  int64_t messages_ = 0;
  int64_t header_ = 0;  // the length word of Broadcast, Send and Recv (outlives abandoned requests)
  absl::Status broken_;
  std::vector<MPI_Request> abandoned_;  // requests of failed calls that may still be pending
};

}  // namespace sigmatune::comm

#endif  // SIGMATUNE_WORKER_COMM_MPI_COMMUNICATOR_H_
