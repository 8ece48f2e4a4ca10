// sigmatune-worker: one rank of a worker group, alone or as a group started by an MPI launcher. It
// runs one job standalone (--job), or serves the jobs a coordinator assigns (--coordinator):
//
//   sigmatune-worker --job spec.yaml [--quiet] [--comm=auto|single|mpi] [--comm_timeout_s=1800]
//   mpirun -np 4 sigmatune-worker --job spec.yaml
//   SIGMATUNE_TOKEN=... sigmatune-worker --coordinator=HOST:PORT [--token_file=PATH] [--tls_ca=PEM]
//   mpirun -np 4 -x SIGMATUNE_TOKEN sigmatune-worker --coordinator=HOST:PORT
//
// Attached (--coordinator; worker/service/coordinator_link.h): the leader joins the coordinator
// (retrying until it answers), relays each assigned job to the other ranks, reports progress and
// the result; the token (env SIGMATUNE_TOKEN, or the trimmed contents of --token_file) goes in the
// "authorization: Bearer" metadata; --tls_ca makes the channel TLS with that root certificate.
// SIGINT/SIGTERM stop a running job with a checkpoint (reported STOPPED; exit 3) or end an idle
// worker (exit 0). A token the coordinator refuses exits 2; a job error in a group of more than one
// rank aborts the group (exit 1), so that whoever launched it restarts it.
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

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "formats/atomic_file.h"
#include "grpcpp/grpcpp.h"
#include "sigmatune/v1/worker.grpc.pb.h"
#include "worker/comm/communicator.h"
#include "worker/comm/mpi_communicator.h"
#include "worker/job/run_job.h"
#include "worker/job/spec.h"
#include "worker/service/coordinator_link.h"

ABSL_FLAG(std::string, job, "", "Path of a job spec (YAML or JSON) to run standalone.");
ABSL_FLAG(std::string, coordinator, "",
          "HOST:PORT of a sigmatune coordinator: serve the jobs it assigns (instead of --job).");
ABSL_FLAG(std::string, token_file, "",
          "File holding the worker token for --coordinator (default: the SIGMATUNE_TOKEN environment variable).");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM root certificate(s) of the coordinator: connect with TLS (default: an insecure channel).");
ABSL_FLAG(bool, quiet, false, "No progress line on stderr (metrics.jsonl and TensorBoard are still written).");
ABSL_FLAG(std::string, comm, "auto",
          "auto: MPI when started by mpirun/srun, else a group of one; single; mpi (fails without a launcher).");
ABSL_FLAG(double, comm_timeout_s, 1800,
          "How long a rank waits in one collective for its peers before it stops the job with an error.");

namespace sigmatune {
namespace {

constexpr char kVersion[] = "0.1.0-dev";

// Raised by SIGINT/SIGTERM; what the message says depends on the mode.
std::atomic<bool> g_stop{false};
bool g_attached = false;

// Async-signal-safe (a lock-free atomic and write(2)): also runs as the signal handler.
void OnStopSignal(int signal) {
  if (g_stop.exchange(true)) return;
  char text[160];
  size_t n = 0;
  auto append = [&](const char* part) {
    while (*part != '\0' && n < sizeof(text)) text[n++] = *part++;
  };
  append("\nsigmatune-worker: signal ");
  char digits[4] = {static_cast<char>('0' + signal / 10 % 10), static_cast<char>('0' + signal % 10), '\0', '\0'};
  append(signal >= 10 ? digits : digits + 1);
  append(g_attached ? ": stopping (a running job stops with a checkpoint)\n"
                    : ": stopping after the current step (with a checkpoint)\n");
  ssize_t ignored = write(STDERR_FILENO, text, n);
  (void)ignored;
}

int ExitCodeFor(const absl::Status& status) {
  if (status.ok()) return 0;
  if (absl::IsInvalidArgument(status) || absl::IsNotFound(status)) return 2;
  return 1;
}

void PrintError(const absl::Status& status) {
  std::fprintf(stderr, "sigmatune-worker: %s\n", std::string(status.message()).c_str());
}

// The worker token: --token_file's contents (trimmed) or SIGMATUNE_TOKEN; empty when neither.
absl::StatusOr<std::string> WorkerToken() {
  const std::string path = absl::GetFlag(FLAGS_token_file);
  if (!path.empty()) {
    absl::StatusOr<std::string> text = formats::ReadFileToString(path);
    if (!text.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--token_file=", path, ": ", text.status().message()));
    }
    std::string token(absl::StripAsciiWhitespace(*text));
    if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("--token_file=", path, " is empty"));
    return token;
  }
  const char* env = std::getenv("SIGMATUNE_TOKEN");
  return env != nullptr ? std::string(absl::StripAsciiWhitespace(env)) : std::string();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CoordinatorChannel(const std::string& address) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  if (!ca.empty()) {
    absl::StatusOr<std::string> pem = formats::ReadFileToString(ca);
    if (!pem.ok()) return absl::InvalidArgumentError(absl::StrCat("--tls_ca=", ca, ": ", pem.status().message()));
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *pem;
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  // Reconnect within the link's own Join backoff (gRPC's default grows to 2 minutes).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 500);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 500);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 10000);
  return grpc::CreateCustomChannel(address, credentials, args);
}

// --coordinator: every rank describes its device, then the leader serves the coordinator and the
// others follow it.
int RunAttached(comm::Communicator& group, const std::atomic<bool>& stop, absl::Duration comm_timeout) {
  const std::string address = absl::GetFlag(FLAGS_coordinator);
  absl::StatusOr<std::vector<v1::Device>> devices = service::GatherDevices(group);
  if (!devices.ok()) {
    PrintError(devices.status());
    if (group.size() > 1) group.Abort(devices.status());
    return 1;
  }
  absl::StatusOr<service::LinkExit> exit;
  if (group.is_leader()) {
    // Flag problems are found before the gather, so only transport setup can fail here.
    absl::StatusOr<std::string> token = WorkerToken();
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CoordinatorChannel(address);
    if (!token.ok() || !channel.ok()) {
      const absl::Status error = !token.ok() ? token.status() : channel.status();
      PrintError(error);
      if (group.size() > 1) group.Abort(error);
      return 2;
    }
    if (token->empty()) {
      std::fprintf(stderr,
                   "sigmatune-worker: no worker token (SIGMATUNE_TOKEN or --token_file): calling the coordinator "
                   "without one\n");
    }
    std::unique_ptr<v1::WorkerService::Stub> stub = v1::WorkerService::NewStub(*channel);
    service::LinkOptions options;
    options.coordinator = address;
    options.token = *token;
    options.version = kVersion;
    // Well within the followers' collective timeout.
    options.keepalive = std::min(options.keepalive, comm_timeout / 4);
    service::CoordinatorLink link(stub.get(), &group, *std::move(devices), options, &stop);
    exit = link.Run();
  } else {
    exit = service::RunFollower(group, &stop);
  }
  if (!exit.ok()) {
    // The link told the other ranks to exit (a refused token) or aborted the group (anything else).
    if (group.is_leader()) PrintError(exit.status());
    return absl::IsUnauthenticated(exit.status()) || absl::IsPermissionDenied(exit.status()) ? 2 : 1;
  }
  return *exit == service::LinkExit::kStoppedJob ? 3 : 0;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs sigmatune fine-tuning jobs: sigmatune-worker --job spec.yaml, or --coordinator=HOST:PORT");
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_job);
  const bool attached = !absl::GetFlag(FLAGS_coordinator).empty();
  if (!path.empty() && attached) {
    std::fprintf(stderr,
                 "sigmatune-worker: --job and --coordinator exclude each other: run one job standalone, or serve a "
                 "coordinator\n");
    return 2;
  }
  if (path.empty() && !attached) {
    std::fprintf(stderr,
                 "sigmatune-worker: --job spec.yaml (see examples/ and docs/job-spec.md) or --coordinator=HOST:PORT "
                 "is required\n");
    return 2;
  }
  if (attached) {
    // Checked on every rank before the group forms, so a bad flag stops every rank the same way.
    absl::StatusOr<std::string> token = WorkerToken();
    if (!token.ok()) {
      PrintError(token.status());
      return 2;
    }
    const std::string ca = absl::GetFlag(FLAGS_tls_ca);
    if (!ca.empty() && !formats::RegularFileExists(ca)) {
      std::fprintf(stderr, "sigmatune-worker: --tls_ca=%s is not a file\n", ca.c_str());
      return 2;
    }
  }
  // Signals are taken by a dedicated thread (sigwait), which only raises the stop flag. Threads
  // started before main (OpenBLAS's pool) do not block them, so a handler does the same there;
  // without it a signal delivered to one of those would kill the process.
  g_attached = attached;
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  static sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread waiter([] {
    int signal = 0;
    while (sigwait(&signals, &signal) == 0) OnStopSignal(signal);
  });
  waiter.detach();
  std::atomic<bool>& stop = g_stop;

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
  if (attached) return RunAttached(*group, stop, absl::Seconds(timeout_s));

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
    const std::string where =
        result->total_steps > 0 ? absl::StrCat("at step ", result->train.steps_done, " of ", result->total_steps)
                                : std::string("before training");
    std::fprintf(stderr, "sigmatune-worker: job %s stopped %s; run the same command to resume\n",
                 spec->name().c_str(), where.c_str());
    return 3;
  }
  std::fputs(result->report_text.c_str(), stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace sigmatune

int main(int argc, char** argv) { return sigmatune::Main(argc, argv); }
