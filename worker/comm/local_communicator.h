// LocalGroup: a worker group whose ranks are threads of one process. It exists for unit tests of
// the distributed phases (same results on 1, 2, 3 ranks; a rank that dies) without mpirun, and
// follows communicator.h's contract exactly, with two properties MPI cannot offer:
//  - sums are taken in rank order (rank 0's value first), so results are reproducible bit for bit;
//  - a timeout names every rank that had not joined the call, and a peer's Abort is reported as
//    Aborted naming that rank and its reason.
#ifndef SIGMATUNE_WORKER_COMM_LOCAL_COMMUNICATOR_H_
#define SIGMATUNE_WORKER_COMM_LOCAL_COMMUNICATOR_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "worker/comm/communicator.h"

namespace sigmatune::comm {

class LocalGroup {
 public:
  // size >= 1 ranks, all on one "host" (local_rank == rank).
  explicit LocalGroup(int size, CommOptions options = {});
  ~LocalGroup();
  LocalGroup(const LocalGroup&) = delete;
  LocalGroup& operator=(const LocalGroup&) = delete;

  int size() const;
  // The communicator of rank r (owned by the group).
  Communicator* rank(int r);

  // Runs fn on `size` threads, one per rank, and returns each rank's Status (index = rank). A
  // rank whose fn fails Aborts the group, so its peers fail fast instead of waiting for the timeout
  // (what mpirun does when a process exits non-zero).
  static std::vector<absl::Status> Run(int size, const std::function<absl::Status(Communicator&)>& fn,
                                       CommOptions options = {});

 private:
  struct State;
  class Rank;
  std::shared_ptr<State> state_;
  std::vector<std::unique_ptr<Rank>> ranks_;
};

}  // namespace sigmatune::comm

#endif  // SIGMATUNE_WORKER_COMM_LOCAL_COMMUNICATOR_H_
