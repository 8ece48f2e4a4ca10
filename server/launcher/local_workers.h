// `sigmatune-coordinator --local_workers=N`: the coordinator starts and supervises its own worker
// group on this machine, so one command serves a whole machine.
//
// Contract:
//  - Start spawns the group (N == 1: the worker binary itself with --comm=single; N > 1: mpirun -np N
//    with the flags a single host needs, see LocalWorkersCommand) in its own process group, with
//    SIGMATUNE_TOKEN in its environment (never on the command line) and stdout/stderr appended to
//    options.log_path (or inherited when empty). The child asks the kernel for SIGTERM when the
//    supervising thread dies (PR_SET_PDEATHSIG), so a kill -9 of the coordinator ends the group
//    too. The supervisor thread forks and lives until Stop.
//  - When the group exits on its own (a rank died, MPI_Abort, a crash), the supervisor logs one line
//    to stderr ("sigmatune-coordinator: local worker group (pid P) exited with status S; restarting
//    in Xs") and starts it again after a backoff that doubles from 1 s up to 30 s and resets after
//    a group has lived 60 s. restarts() counts them.
//  - Stop (and the destructor) sends SIGTERM to the group's process group, waits up to
//    options.stop_grace, then SIGKILL; returns when the group is reaped. Idempotent.
//  - Start fails (FailedPrecondition naming the file) when the worker binary or mpirun is not an
//    executable file.
#ifndef SIGMATUNE_SERVER_LAUNCHER_LOCAL_WORKERS_H_
#define SIGMATUNE_SERVER_LAUNCHER_LOCAL_WORKERS_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sigmatune::server {

struct LocalWorkersOptions {
  int ranks = 1;
  std::string worker_binary;          // path of sigmatune-worker
  std::string mpirun = "mpirun";      // looked up on PATH when it has no '/'
  std::string coordinator_address;    // host:port the workers dial
  std::string token;                  // passed as SIGMATUNE_TOKEN
  std::vector<std::string> worker_args;  // extra flags for every rank
  std::string log_path;               // appended to; empty = inherit the coordinator's stderr
  absl::Duration stop_grace = absl::Seconds(10);
};

// The argv Start runs. N > 1: mpirun -np N --oversubscribe --bind-to none
//   --mca btl self,vader --mca btl_vader_single_copy_mechanism none [--allow-run-as-root when
//   euid is 0] -x SIGMATUNE_TOKEN <worker> --coordinator=<addr> <worker_args...>
// N == 1: <worker> --coordinator=<addr> --comm=single <worker_args...>
std::vector<std::string> LocalWorkersCommand(const LocalWorkersOptions& options);

class LocalWorkers {
 public:
  static absl::StatusOr<std::unique_ptr<LocalWorkers>> Start(LocalWorkersOptions options);
  ~LocalWorkers();
  LocalWorkers(const LocalWorkers&) = delete;
  LocalWorkers& operator=(const LocalWorkers&) = delete;

  void Stop();
  int restarts() const { return restarts_.load(); }
  // The running group's leader process (mpirun or the worker); 0 between restarts.
  pid_t pid() const;

 private:
  explicit LocalWorkers(LocalWorkersOptions options);
  void Supervise();

  LocalWorkersOptions options_;
  std::atomic<int> restarts_{0};
  mutable absl::Mutex mu_;
  pid_t pid_ = 0;            // guarded by mu_
  bool stopping_ = false;    // guarded by mu_
  std::unique_ptr<class SupervisorThread> thread_;
};

}  // namespace sigmatune::server

#endif  // SIGMATUNE_SERVER_LAUNCHER_LOCAL_WORKERS_H_
