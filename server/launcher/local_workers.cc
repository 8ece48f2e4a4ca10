#include "server/launcher/local_workers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace sigmatune::server {

// The supervisor's own state: the std::thread and what the child needs, built before any fork
// (between fork and exec the child may only make async-signal-safe calls).
class SupervisorThread {
 public:
  std::thread thread;
  std::mutex join_mu;             // serialises Stop's join
  std::vector<std::string> argv;  // argv[0] is a path (mpirun already looked up on PATH)
  std::vector<std::string> env;   // the coordinator's environment + SIGMATUNE_TOKEN
  // The first spawn's result, which Start returns; guarded by LocalWorkers::mu_.
  bool first_done = false;
  absl::Status first_status;
};

namespace {

constexpr absl::Duration kFirstBackoff = absl::Seconds(1);
constexpr absl::Duration kMaxBackoff = absl::Seconds(30);
constexpr absl::Duration kHealthyLifetime = absl::Seconds(60);
constexpr absl::Duration kPollInterval = absl::Milliseconds(20);
constexpr char kTokenVariable[] = "SIGMATUNE_TOKEN";

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

// `name` itself when it has a '/', else the first executable file called `name` on $PATH
// ("" when there is none).
std::string FindExecutable(const std::string& name) {
  if (name.find('/') != std::string::npos) return IsExecutableFile(name) ? name : "";
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (IsExecutableFile(candidate)) return candidate;
  }
  return "";
}

std::vector<std::string> ChildEnvironment(const std::string& token) {
  std::vector<std::string> env;
  const std::string prefix = absl::StrCat(kTokenVariable, "=");
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    if (!absl::StartsWith(*entry, prefix)) env.emplace_back(*entry);
  }
  env.push_back(prefix + token);
  return env;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("status ", 128 + WTERMSIG(status), " (killed by signal ",
                        WTERMSIG(status), ")");
  }
  return absl::StrCat("raw status ", status);
}

// In the forked child: async-signal-safe calls only. Never returns.
[[noreturn]] void ExecChild(pid_t parent, int log_fd, int error_fd, char* const argv[],
                            char* const envp[]) {
  setpgid(0, 0);
  // The coordinator ignores SIGPIPE (gRPC) and blocks SIGINT/SIGTERM in its threads: give the
  // group the defaults back before anything can signal it.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // SIGTERM when the forking (supervisor) thread dies; if the coordinator is already gone the
  // signal will never come, so give up.
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(126);
  if (log_fd >= 0) {
    for (int fd : {STDOUT_FILENO, STDERR_FILENO}) {
      if (log_fd == fd) {
        fcntl(fd, F_SETFD, 0);
      } else if (dup2(log_fd, fd) < 0) {
        _exit(126);
      }
    }
  }
#ifdef SYS_close_range
  // Descriptors the coordinator opened without O_CLOEXEC (sockets, the job database) must not
  // leak into the workers. Best effort: older kernels lack the call.
  constexpr unsigned int kCloseRangeCloexec = 1u << 2;  // CLOSE_RANGE_CLOEXEC
  syscall(SYS_close_range, 3u, ~0u, kCloseRangeCloexec);
#endif
  execve(argv[0], argv, envp);
  const int err = errno;
  ssize_t ignored = write(error_fd, &err, sizeof(err));
  (void)ignored;
  _exit(127);
}

// waitpid without EINTR.
pid_t Reap(pid_t pid, int* status) {
  pid_t r;
  do {
    r = waitpid(pid, status, 0);
  } while (r < 0 && errno == EINTR);
  return r;
}

// Whether `pid` (our child) has exited, without reaping it: while the zombie stays, its process
// group id cannot be reused, so the group can still be signalled safely.
bool HasExited(pid_t pid) {
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  if (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return errno != EINTR;
  return info.si_pid == pid;
}

}  // namespace

std::vector<std::string> LocalWorkersCommand(const LocalWorkersOptions& options) {
  std::vector<std::string> argv;
  if (options.ranks > 1) {
    argv = {options.mpirun,
            "-np",
            absl::StrCat(options.ranks),
            "--oversubscribe",
            "--bind-to",
            "none",
            "--mca",
            "btl",
            "self,vader",
            "--mca",
            "btl_vader_single_copy_mechanism",
            "none"};
    if (geteuid() == 0) argv.push_back("--allow-run-as-root");
    argv.insert(argv.end(), {"-x", kTokenVariable});
  }
  argv.push_back(options.worker_binary);
  argv.push_back(absl::StrCat("--coordinator=", options.coordinator_address));
  if (options.ranks <= 1) argv.push_back("--comm=single");
  argv.insert(argv.end(), options.worker_args.begin(), options.worker_args.end());
  return argv;
}

LocalWorkers::LocalWorkers(LocalWorkersOptions options) : options_(std::move(options)) {}

LocalWorkers::~LocalWorkers() { Stop(); }

absl::StatusOr<std::unique_ptr<LocalWorkers>> LocalWorkers::Start(LocalWorkersOptions options) {
  if (options.ranks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("local workers: ranks must be at least 1, got ", options.ranks));
  }
  if (!IsExecutableFile(options.worker_binary)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "local workers: worker binary '", options.worker_binary, "' is not an executable file"));
  }
  if (options.ranks > 1) {
    const std::string mpirun = FindExecutable(options.mpirun);
    if (mpirun.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "local workers: mpirun '", options.mpirun, "' is not an executable file",
          options.mpirun.find('/') == std::string::npos ? " on PATH" : ""));
    }
    options.mpirun = mpirun;
  }
  std::unique_ptr<LocalWorkers> workers(new LocalWorkers(std::move(options)));
  SupervisorThread* thread = new SupervisorThread();
  workers->thread_.reset(thread);
  thread->argv = LocalWorkersCommand(workers->options_);
  thread->env = ChildEnvironment(workers->options_.token);
  LocalWorkers* self = workers.get();
  thread->thread = std::thread([self] { self->Supervise(); });

  absl::Status first;
  {
    absl::MutexLock lock(&workers->mu_, absl::Condition(&thread->first_done));
    first = thread->first_status;
  }
  if (!first.ok()) return first;  // the supervisor has returned; the destructor joins it
  return workers;
}

void LocalWorkers::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_ == nullptr) return;
  std::lock_guard<std::mutex> join_lock(thread_->join_mu);
  if (thread_->thread.joinable()) thread_->thread.join();
}

pid_t LocalWorkers::pid() const {
  absl::MutexLock lock(&mu_);
  return pid_;
}

namespace {

// Forks and execs one group. Everything the child touches is prepared here, before fork.
absl::Status Spawn(const LocalWorkersOptions& options, SupervisorThread& state, pid_t* pid) {
  int log_fd = -1;
  if (!options.log_path.empty()) {
    log_fd = open(options.log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot open the worker log '", options.log_path, "': ", std::strerror(errno)));
    }
  }
  int error_pipe[2];
  if (pipe2(error_pipe, O_CLOEXEC) != 0) {
    const int err = errno;
    if (log_fd >= 0) close(log_fd);
    return absl::ResourceExhaustedError(absl::StrCat("pipe2: ", std::strerror(err)));
  }
  std::vector<char*> argv = CStrings(state.argv);
  std::vector<char*> envp = CStrings(state.env);
  const pid_t parent = getpid();

  const pid_t child = fork();
  if (child == 0) ExecChild(parent, log_fd, error_pipe[1], argv.data(), envp.data());
  const int fork_errno = errno;
  close(error_pipe[1]);
  if (log_fd >= 0) close(log_fd);
  if (child < 0) {
    close(error_pipe[0]);
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  }
  setpgid(child, child);  // also in the child: whichever runs first, the group exists at once

  int exec_errno = 0;
  ssize_t n;
  do {
    n = read(error_pipe[0], &exec_errno, sizeof(exec_errno));
  } while (n < 0 && errno == EINTR);
  close(error_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(exec_errno))) {
    int status;
    Reap(child, &status);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot execute '", state.argv[0], "': ", std::strerror(exec_errno)));
  }
  *pid = child;
  return absl::OkStatus();
}

}  // namespace

void LocalWorkers::Supervise() {
  SupervisorThread& state = *thread_;
  absl::Duration backoff = kFirstBackoff;
  bool first = true;
  while (true) {
    pid_t child = 0;
    const absl::Status spawned = Spawn(options_, state, &child);
    const absl::Time started = absl::Now();
    if (first) {
      first = false;
      absl::MutexLock lock(&mu_);
      state.first_done = true;
      state.first_status = spawned;
      if (!spawned.ok()) return;
    }

    std::string what;
    if (spawned.ok()) {
      {
        absl::MutexLock lock(&mu_);
        pid_ = child;
      }
      // Poll for the group's exit while waiting for Stop.
      bool stop = false;
      while (!HasExited(child)) {
        absl::MutexLock lock(&mu_);
        if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), kPollInterval)) {
          stop = true;
          break;
        }
      }
      int status = 0;
      if (stop) {
        kill(-child, SIGTERM);
        const absl::Time deadline = absl::Now() + options_.stop_grace;
        while (!HasExited(child) && absl::Now() < deadline) absl::SleepFor(kPollInterval);
      }
      // The leader is gone (or out of grace): nothing of its group may outlive it (ranks left
      // behind by a crashed mpirun would hold the GPUs the next group needs).
      kill(-child, SIGKILL);
      Reap(child, &status);
      absl::MutexLock lock(&mu_);
      pid_ = 0;
      if (stop) return;
      what = absl::StrFormat("local worker group (pid %d) exited with %s", child,
                             DescribeExit(status));
    } else {
      what = absl::StrCat("local worker group failed to start (", spawned.message(), ")");
    }

    if (absl::Now() - started >= kHealthyLifetime) backoff = kFirstBackoff;
    std::fprintf(stderr, "sigmatune-coordinator: %s; restarting in %s\n", what.c_str(),
                 absl::FormatDuration(backoff).c_str());
    std::fflush(stderr);
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), backoff)) return;
    }
    backoff = std::min(backoff * 2, kMaxBackoff);
    restarts_.fetch_add(1);
  }
}

}  // namespace sigmatune::server
