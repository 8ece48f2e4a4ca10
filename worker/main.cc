// sigmatune-worker: one rank of a worker group. Today it runs one job standalone, alone or as a
// group started by an MPI launcher:
//
//   sigmatune-worker --job spec.yaml [--quiet] [--comm=auto|single|mpi] [--comm_timeout_s=1800]
//   mpirun -np 4 sigmatune-worker --job spec.yaml
//
// Under a launcher (--comm=auto sees its environment) MPI is initialised and the ranks, local ranks
// and hosts come from MPI itself; each rank logs one line naming its rank, host and pid. A rank that
// fails prints its error (prefixed with its rank) and aborts the group, so mpirun ends the others
// at once. When the failure is the group's verdict (a checkpoint shard of rank R could not be
// written), every rank's message names R, while Open MPI's "MPI_ABORT was invoked on rank N" names
// whichever rank aborted first. A peer that dies is named by mpirun ("process rank R ... exited on
// signal 9"); one that hangs makes the others fail within --comm_timeout_s.
// Progress goes to stderr (a redrawn line on a terminal, plain lines otherwise), the report table
// to stdout. SIGINT/SIGTERM stop training after the current step with a checkpoint (run the same
// command again to resume). Exit status: 0 done; 2 the spec or the data is wrong (nothing ran or
// was written beyond the output directory); 3 stopped by a signal, resumable; 1 any other failure
// (the message names the phase; the newest checkpoint stays usable).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <memory>
#include <unistd.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/comm/communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/job/run_job.h"
#include "worker/job/spec.h"

ABSL_FLAG(std::string, job, "", "Path of a job spec (YAML or JSON) to run standalone.");
ABSL_FLAG(bool, quiet, false, "No progress line on stderr (metrics.jsonl and TensorBoard are still written).");
ABSL_FLAG(std::string, comm, "auto",
          "auto: MPI when started by mpirun/srun, else a group of one; single; mpi (fails without a launcher).");
ABSL_FLAG(double, comm_timeout_s, 1800,
          "How long a rank waits in one collective for its peers before it stops the job with an error.");

namespace sigmatune {
namespace {

int ExitCodeFor(const absl::Status& status) {
  if (status.ok()) return 0;
  if (absl::IsInvalidArgument(status) || absl::IsNotFound(status)) return 2;
  return 1;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Runs a sigmatune fine-tuning job: sigmatune-worker --job spec.yaml");
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_job);
  if (path.empty()) {
    std::fprintf(stderr, "sigmatune-worker: --job spec.yaml is required (see examples/ and docs/job-spec.md)\n");
    return 2;
  }
  // Signals are taken by a dedicated thread (sigwait), which only raises the stop flag.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::atomic<bool> stop{false};
  std::thread waiter([&signals, &stop] {
    int signal = 0;
    if (sigwait(&signals, &signal) == 0 && signal != 0) {
      if (!stop.exchange(true)) {
        std::fprintf(stderr, "\nsigmatune-worker: signal %d: stopping after the current step (with a checkpoint)\n",
                     signal);
      }
    }
  });
  waiter.detach();

  const std::string comm_mode = absl::GetFlag(FLAGS_comm);
  if (comm_mode != "auto" && comm_mode != "single" && comm_mode != "mpi") {
    std::fprintf(stderr, "sigmatune-worker: --comm=%s is not one of auto, single, mpi\n", comm_mode.c_str());
    return 2;
  }
  const double timeout_s = absl::GetFlag(FLAGS_comm_timeout_s);
  if (!(timeout_s > 0)) {
    std::fprintf(stderr, "sigmatune-worker: --comm_timeout_s must be > 0, got %g\n", timeout_s);
    return 2;
  }
  std::unique_ptr<comm::MpiEnvironment> mpi;
  std::unique_ptr<comm::Communicator> group;
  if (comm_mode == "mpi" || (comm_mode == "auto" && comm::StartedByMpiLauncher())) {
    absl::StatusOr<std::unique_ptr<comm::MpiEnvironment>> env = comm::MpiEnvironment::Init(&argc, &argv);
    if (!env.ok()) {
      std::fprintf(stderr, "sigmatune-worker: %s\n", std::string(env.status().message()).c_str());
      return 1;
    }
    mpi = *std::move(env);
    comm::CommOptions comm_options;
    comm_options.timeout = absl::Seconds(timeout_s);
    absl::StatusOr<std::unique_ptr<comm::MpiCommunicator>> created = comm::MpiCommunicator::Create(comm_options);
    if (!created.ok()) {
      std::fprintf(stderr, "sigmatune-worker: %s\n", std::string(created.status().message()).c_str());
      return 1;
    }
    std::fprintf(stderr, "sigmatune-worker: rank %d of %d (local %d of %d) on %s, pid %d\n", (*created)->rank(),
                 (*created)->size(), (*created)->local_rank(), (*created)->local_size(),
                 (*created)->hostname().c_str(), static_cast<int>(getpid()));
    group = *std::move(created);
  } else {
    group = std::make_unique<comm::SingleProcessCommunicator>();
  }
  const bool leader = group->is_leader();

  absl::StatusOr<v1::JobSpec> spec = job::LoadJobSpec(path);
  if (!spec.ok()) {
    // Every rank reads the same spec, so every rank stops here; only the leader says why.
    if (leader) std::fprintf(stderr, "sigmatune-worker: %s\n", std::string(spec.status().message()).c_str());
    return ExitCodeFor(spec.status());
  }
  job::RunOptions options;
  options.comm = group.get();
  options.terminal =
      absl::GetFlag(FLAGS_quiet) || !leader ? job::TerminalOutput::kOff : job::TerminalOutput::kAuto;
  options.stop = &stop;
  absl::StatusOr<job::JobResult> result = job::RunJob(*spec, options);
  if (!result.ok()) {
    const std::string who = group->size() > 1 ? absl::StrCat(" (rank ", group->rank(), ")") : std::string();
    std::fprintf(stderr, "sigmatune-worker: job %s failed%s: %s\n", spec->name().c_str(), who.c_str(),
                 std::string(result.status().message()).c_str());
    std::fflush(stderr);
    // The peers may be waiting in a collective: end the group now rather than at their timeout.
    if (group->size() > 1) group->Abort(result.status());
    return ExitCodeFor(result.status());
  }
  if (!leader) return result->stopped_early ? 3 : 0;
  if (result->stopped_early) {
    std::fprintf(stderr, "sigmatune-worker: job %s stopped at step %lld of %lld; run the same command to resume\n",
                 spec->name().c_str(), static_cast<long long>(result->train.steps_done),
                 static_cast<long long>(result->total_steps));
    return 3;
  }
  std::fputs(result->report_text.c_str(), stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace sigmatune

int main(int argc, char** argv) { return sigmatune::Main(argc, argv); }
