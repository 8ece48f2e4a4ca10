// `sigmatune run SPEC`: submit + watch, against a configured coordinator or a local one started for
// the job (client/local_coordinator.h). Ctrl-C (or SIGTERM) cancels the job, which stops with a
// checkpoint; the command then waits for CANCELLED and exits 3. A second Ctrl-C stops waiting.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/commands.h"
#include "client/local_coordinator.h"
#include "client/watch.h"
#include "worker/job/spec.h"

namespace sigmatune::client {
namespace {

// What the signal thread may do, by how far the command has come.
enum class RunStage { kStarting, kSubmitting, kWatching, kDone };

// Shared between CmdRun and its signal thread (which outlives it: it is detached).
struct RunState {
  absl::Mutex mu;
  RunStage stage ABSL_GUARDED_BY(mu) = RunStage::kStarting;
  std::shared_ptr<JobClient> client ABSL_GUARDED_BY(mu);
  std::shared_ptr<LocalCoordinator> coordinator ABSL_GUARDED_BY(mu);
  std::string job_name ABSL_GUARDED_BY(mu);
  int signals ABSL_GUARDED_BY(mu) = 0;
  bool cancel_pending ABSL_GUARDED_BY(mu) = false;
  FILE* err = stderr;
};

void CancelJob(JobClient& client, const std::string& name, FILE* err) {
  absl::StatusOr<v1::Job> job = client.Cancel(name);
  if (!job.ok() && !absl::IsFailedPrecondition(job.status())) {  // FailedPrecondition: it already ended
    std::fprintf(err, "sigmatune: cancelling %s failed: %s\n", name.c_str(),
                 std::string(job.status().message()).c_str());
  }
}

void OnSignal(const std::shared_ptr<RunState>& state, int signal) {
  std::shared_ptr<JobClient> client;
  std::shared_ptr<LocalCoordinator> coordinator;
  std::string name;
  int count = 0;
  RunStage stage;
  {
    absl::MutexLock lock(&state->mu);
    count = ++state->signals;
    stage = state->stage;
    client = state->client;
    coordinator = state->coordinator;
    name = state->job_name;
    if (stage == RunStage::kSubmitting) state->cancel_pending = true;
  }
  FILE* err = state->err;
  if (stage == RunStage::kDone) return;
  if (stage == RunStage::kStarting || count > 1) {
    std::fflush(stdout);
    if (stage == RunStage::kStarting) {
      std::fprintf(err, "\nsigmatune: signal %d: stopping before the job was submitted\n", signal);
    } else {
      std::fprintf(err, "\nsigmatune: signal %d: stopped waiting%s\n", signal,
                   name.empty() ? "" : absl::StrCat("; ", name, " is being cancelled").c_str());
    }
    if (coordinator != nullptr) (void)coordinator->Stop();
    std::fflush(err);
    ::_exit(static_cast<int>(ExitCode::kCancelled));
  }
  if (stage == RunStage::kSubmitting) {
    std::fprintf(err, "\nsigmatune: signal %d: the job will be cancelled as soon as it is submitted\n", signal);
    return;
  }
  std::fprintf(err, "\nsigmatune: signal %d: cancelling %s (it stops with a checkpoint); press Ctrl-C again to "
               "stop waiting\n", signal, name.c_str());
  std::fflush(err);
  CancelJob(*client, name, err);
}

// The write end of the self-pipe the signal handler writes the signal number to.
int g_signal_pipe = -1;

void HandleSignal(int signal) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(signal);
  (void)!::write(g_signal_pipe, &byte, 1);
  errno = saved;
}

// Takes SIGINT and SIGTERM with a handler that only writes to a pipe, read by a detached thread
// that acts on them. (A handler, not sigwait: threads that exist before this runs, such as a BLAS
// pool started by a static constructor, would otherwise take the signal with its default action.)
void StartSignalThread(const std::shared_ptr<RunState>& state) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    std::fprintf(state->err, "sigmatune: cannot create a pipe for signals (%s); Ctrl-C will not cancel the job\n",
                 std::strerror(errno));
    return;
  }
  g_signal_pipe = fds[1];
  struct sigaction action {};
  action.sa_handler = HandleSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  const int read_fd = fds[0];
  std::thread([state, read_fd] {
    while (true) {
      unsigned char byte = 0;
      const ssize_t n = ::read(read_fd, &byte, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n != 1) return;
      OnSignal(state, byte);
    }
  }).detach();
}

void SetStage(RunState& state, RunStage stage) {
  absl::MutexLock lock(&state.mu);
  state.stage = stage;
}

}  // namespace

ExitCode CmdRun(const ParsedArgs& args, const CliContext& ctx) {
  if (args.positional().size() != 1) {
    std::fprintf(ctx.err,
                 "sigmatune: usage: sigmatune run SPEC [--local_workers=N] [--coordinator_binary=PATH] "
                 "[--worker_binary=PATH] [--db=PATH] [--request_id=ID] [--priority=N]\n");
    return ExitCode::kUsage;
  }
  const std::string& path = args.positional()[0];
  const bool local = !ctx.server_configured;
  if (!local) {
    for (const char* flag : {"local_workers", "coordinator_binary", "worker_binary", "db"}) {
      if (args.Has(flag)) {
        return PrintError(absl::InvalidArgumentError(absl::StrCat(
                              "--", flag, " is for a local coordinator; it cannot be used with --server or "
                              "SIGMATUNE_SERVER")),
                          ctx.err);
      }
    }
  }
  const int64_t local_workers = args.Int("local_workers", 1);
  if (local_workers < 1 || local_workers > 4096) {
    return PrintError(absl::InvalidArgumentError(absl::StrCat("--local_workers must be >= 1, got ", local_workers)),
                      ctx.err);
  }
  // A local coordinator serves the whole file system (--data_root=/), so the spec's paths are
  // resolved here as a standalone run does; a remote one resolves them under its data roots.
  absl::StatusOr<v1::JobSpec> spec = local ? job::LoadJobSpec(path) : ReadSpecUnresolved(path);
  if (!spec.ok()) {
    PrintError(spec.status(), ctx.err);
    return ExitCode::kUsage;
  }

  auto state = std::make_shared<RunState>();
  state->err = ctx.err;
  StartSignalThread(state);

  CliContext run_ctx = ctx;
  std::shared_ptr<LocalCoordinator> coordinator;
  if (local) {
    LocalCoordinatorOptions options;
    options.coordinator_binary = args.String("coordinator_binary");
    options.worker_binary = args.String("worker_binary");
    options.db_path = args.String("db");
    options.local_workers = static_cast<int>(local_workers);
    absl::StatusOr<std::unique_ptr<LocalCoordinator>> started = LocalCoordinator::Start(options);
    if (!started.ok()) {
      SetStage(*state, RunStage::kDone);
      PrintError(started.status(), ctx.err);
      return ExitCode::kFailed;
    }
    coordinator = std::move(*started);
    std::fprintf(ctx.err, "sigmatune: started a local coordinator at %s (log: %s)\n", coordinator->address().c_str(),
                 coordinator->log_path().c_str());
    run_ctx.server = coordinator->address();
    run_ctx.client_options.token.clear();  // no tenants: auth is off on loopback
  }
  absl::StatusOr<std::unique_ptr<JobClient>> connected = Connect(run_ctx);
  if (!connected.ok()) {
    SetStage(*state, RunStage::kDone);
    return PrintError(connected.status(), ctx.err);
  }
  std::shared_ptr<JobClient> client = std::move(*connected);
  {
    absl::MutexLock lock(&state->mu);
    state->client = client;
    state->coordinator = coordinator;
    state->stage = RunStage::kSubmitting;
  }

  // Stops the local coordinator (if any) and keeps the exit status unless that fails.
  auto finish = [&](ExitCode code) {
    SetStage(*state, RunStage::kDone);
    if (coordinator != nullptr) {
      const absl::Status stopped = coordinator->Stop();
      if (!stopped.ok()) std::fprintf(ctx.err, "sigmatune: %s\n", std::string(stopped.message()).c_str());
    }
    return code;
  };

  absl::StatusOr<v1::Job> job = SubmitJob(*client, *spec, args, run_ctx);
  if (!job.ok()) return finish(PrintError(job.status(), ctx.err));
  bool cancel_now = false;
  {
    absl::MutexLock lock(&state->mu);
    state->job_name = job->name();
    state->stage = RunStage::kWatching;
    cancel_now = state->cancel_pending;
  }
  if (cancel_now) CancelJob(*client, job->name(), ctx.err);
  return finish(WatchToEnd(*client, job->name(), ctx.out, ctx.err));
}

}  // namespace sigmatune::client
