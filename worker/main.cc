// sigmatune-worker: one rank of a worker group. Today it runs one job standalone:
//
//   sigmatune-worker --job spec.yaml [--quiet]
//
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

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "worker/job/run_job.h"
#include "worker/job/spec.h"

ABSL_FLAG(std::string, job, "", "Path of a job spec (YAML or JSON) to run standalone.");
ABSL_FLAG(bool, quiet, false, "No progress line on stderr (metrics.jsonl and TensorBoard are still written).");

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

  absl::StatusOr<v1::JobSpec> spec = job::LoadJobSpec(path);
  if (!spec.ok()) {
    std::fprintf(stderr, "sigmatune-worker: %s\n", std::string(spec.status().message()).c_str());
    return ExitCodeFor(spec.status());
  }
  job::RunOptions options;
  options.terminal = absl::GetFlag(FLAGS_quiet) ? job::TerminalOutput::kOff : job::TerminalOutput::kAuto;
  options.stop = &stop;
  absl::StatusOr<job::JobResult> result = job::RunJob(*spec, options);
  if (!result.ok()) {
    std::fprintf(stderr, "sigmatune-worker: job %s failed: %s\n", spec->name().c_str(),
                 std::string(result.status().message()).c_str());
    return ExitCodeFor(result.status());
  }
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
