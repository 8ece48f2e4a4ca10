// `sigmatune run` without a server: a sigmatune-coordinator started as a child process for one job,
// serving on loopback without tenants (no token), with its own local worker group.
//
// Contract:
//  - Start finds the binaries (FindCoordinatorBinary / FindWorkerBinary unless given), creates the
//    state directory of the job database and a temporary directory, and runs
//      sigmatune-coordinator --listen=127.0.0.1:0 --port_file=<tmp>/port --db=<db>
//                            --data_root=/ --local_workers=N --worker_binary=<worker>
//    in its own process group (a Ctrl-C at the terminal reaches only `sigmatune`, which then
//    cancels the job through the coordinator), with stdout and stderr appended to <tmp>/coordinator.log
//    and SIGTERM asked for when `sigmatune` dies (PR_SET_PDEATHSIG).
//  - It waits up to options.start_timeout for the port file (written atomically by the
//    coordinator). A child that exits first, or the timeout, is FailedPrecondition / DeadlineExceeded
//    with the last lines of the log in the message.
//  - Stop (also run by the destructor) sends SIGTERM to the child's process group, waits up to
//    options.stop_grace, then SIGKILL; it removes the temporary directory unless the coordinator
//    failed (its log is then kept and named). Idempotent and thread-safe (a signal thread may stop
//    the coordinator while the main thread does too; the second caller waits and gets OK).
#ifndef SIGMATUNE_CLIENT_LOCAL_COORDINATOR_H_
#define SIGMATUNE_CLIENT_LOCAL_COORDINATOR_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sigmatune::client {

struct LocalCoordinatorOptions {
  std::string coordinator_binary;  // empty: FindCoordinatorBinary()
  std::string worker_binary;       // empty: FindWorkerBinary()
  int local_workers = 1;           // ranks of the local worker group
  std::string db_path;             // empty: DefaultLocalDbPath()
  absl::Duration start_timeout = absl::Seconds(30);
  absl::Duration stop_grace = absl::Seconds(30);
};

// The directory of this program (dirname of /proc/self/exe).
absl::StatusOr<std::string> ProgramDirectory();

// sigmatune-coordinator next to this program, else ../server/sigmatune-coordinator relative to its
// directory (the Bazel layout bazel-bin/client/ and bazel-bin/server/). NotFound listing the places
// tried.
absl::StatusOr<std::string> FindCoordinatorBinary();

// sigmatune-worker next to this program, else ../worker/sigmatune-worker relative to its directory.
absl::StatusOr<std::string> FindWorkerBinary();

// ${XDG_STATE_HOME:-$HOME/.local/state}/sigmatune/local.db
absl::StatusOr<std::string> DefaultLocalDbPath();

class LocalCoordinator {
 public:
  static absl::StatusOr<std::unique_ptr<LocalCoordinator>> Start(const LocalCoordinatorOptions& options);
  LocalCoordinator(const LocalCoordinator&) = delete;
  LocalCoordinator& operator=(const LocalCoordinator&) = delete;
  ~LocalCoordinator();

  // "127.0.0.1:<port>".
  const std::string& address() const { return address_; }
  const std::string& log_path() const { return log_path_; }

  // See the contract. An error when the coordinator exited with a non-zero status or had to be
  // killed (its log tail in the message).
  absl::Status Stop();

 private:
  LocalCoordinator(pid_t pid, std::string temp_dir, std::string log_path, absl::Duration stop_grace)
      : pid_(pid), temp_dir_(std::move(temp_dir)), log_path_(std::move(log_path)), stop_grace_(stop_grace) {}

  pid_t pid_;
  std::string temp_dir_;
  std::string log_path_;
  absl::Duration stop_grace_;
  std::string address_;
  bool keep_temp_dir_ = false;  // set when starting failed: the log stays for the user
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sigmatune::client

#endif  // SIGMATUNE_CLIENT_LOCAL_COORDINATOR_H_
