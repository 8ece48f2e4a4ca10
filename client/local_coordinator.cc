#include "client/local_coordinator.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace sigmatune::client {
namespace fs = std::filesystem;
namespace {

constexpr int kLogTailLines = 20;

bool IsExecutable(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

absl::StatusOr<std::string> FindNextToProgram(const std::string& name, const std::string& bazel_dir) {
  absl::StatusOr<std::string> dir = ProgramDirectory();
  if (!dir.ok()) return dir.status();
  const std::vector<std::string> candidates = {
      absl::StrCat(*dir, "/", name),
      fs::path(absl::StrCat(*dir, "/../", bazel_dir, "/", name)).lexically_normal().string(),
  };
  for (const std::string& candidate : candidates) {
    if (IsExecutable(candidate)) return candidate;
  }
  return absl::NotFoundError(absl::StrCat("cannot find ", name, " (looked for ", absl::StrJoin(candidates, " and "),
                                          ")"));
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The last lines of the coordinator's log, indented, for an error message.
std::string LogTail(const std::string& log_path) {
  const std::string text = ReadAll(log_path);
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.empty()) return absl::StrCat("; its log ", log_path, " is empty");
  const size_t first = lines.size() > kLogTailLines ? lines.size() - kLogTailLines : 0;
  std::string out = absl::StrCat("; the end of its log ", log_path, ":");
  for (size_t i = first; i < lines.size(); ++i) absl::StrAppend(&out, "\n  ", lines[i]);
  return out;
}

std::string DescribeExit(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return absl::StrCat("was killed by signal ", WTERMSIG(wait_status));
  return absl::StrCat("ended (wait status ", wait_status, ")");
}

}  // namespace

absl::StatusOr<std::string> ProgramDirectory() {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (error) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read /proc/self/exe: ", error.message()));
  }
  return self.parent_path().string();
}

absl::StatusOr<std::string> FindCoordinatorBinary() { return FindNextToProgram("sigmatune-coordinator", "server"); }

absl::StatusOr<std::string> FindWorkerBinary() { return FindNextToProgram("sigmatune-worker", "worker"); }

absl::StatusOr<std::string> DefaultLocalDbPath() {
  std::string state_home;
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg != nullptr && xdg[0] == '/') {
    state_home = xdg;
  } else if (const char* home = std::getenv("HOME"); home != nullptr && home[0] != '\0') {
    state_home = absl::StrCat(home, "/.local/state");
  } else {
    return absl::FailedPreconditionError("neither XDG_STATE_HOME nor HOME is set; give the database with --db");
  }
  return absl::StrCat(state_home, "/sigmatune/local.db");
}

absl::StatusOr<std::unique_ptr<LocalCoordinator>> LocalCoordinator::Start(const LocalCoordinatorOptions& options) {
  std::string coordinator = options.coordinator_binary;
  if (coordinator.empty()) {
    absl::StatusOr<std::string> found = FindCoordinatorBinary();
    if (!found.ok()) {
      return absl::NotFoundError(absl::StrCat(found.status().message(),
                                              "; give it with --coordinator_binary, or use a running coordinator "
                                              "with --server"));
    }
    coordinator = *found;
  } else if (!IsExecutable(coordinator)) {
    return absl::NotFoundError(absl::StrCat("--coordinator_binary ", coordinator, " is not an executable file"));
  }
  std::string worker = options.worker_binary;
  if (worker.empty()) {
    absl::StatusOr<std::string> found = FindWorkerBinary();
    if (!found.ok()) return absl::NotFoundError(absl::StrCat(found.status().message(), "; give it with --worker_binary"));
    worker = *found;
  }
  std::string db = options.db_path;
  if (db.empty()) {
    absl::StatusOr<std::string> path = DefaultLocalDbPath();
    if (!path.ok()) return path.status();
    db = *path;
  }
  std::error_code error;
  fs::create_directories(fs::path(db).parent_path(), error);
  if (error) {
    return absl::FailedPreconditionError(absl::StrCat("cannot create the directory of the job database ", db, ": ",
                                                      error.message()));
  }

  const char* tmp = std::getenv("TMPDIR");
  std::string temp_template = absl::StrCat(tmp != nullptr && tmp[0] != '\0' ? tmp : "/tmp", "/sigmatune-run-XXXXXX");
  if (::mkdtemp(temp_template.data()) == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create a temporary directory ", temp_template, ": ", std::strerror(errno)));
  }
  const std::string temp_dir = temp_template;
  const std::string port_file = temp_dir + "/port";
  const std::string log_path = temp_dir + "/coordinator.log";

  const std::vector<std::string> args = {
      coordinator,
      "--listen=127.0.0.1:0",
      absl::StrCat("--port_file=", port_file),
      absl::StrCat("--db=", db),
      "--data_root=/",
      absl::StrCat("--local_workers=", options.local_workers),
      absl::StrCat("--worker_binary=", worker),
  };
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot create ", log_path, ": ", std::strerror(errno)));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    return absl::ResourceExhaustedError(absl::StrCat("cannot start ", coordinator, ": fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // The child: only async-signal-safe calls until exec.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    ::signal(SIGINT, SIG_DFL);  // `sigmatune run` handles these itself
    ::signal(SIGTERM, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    const char message[] = "sigmatune: exec of the coordinator failed\n";
    (void)!::write(STDERR_FILENO, message, sizeof(message) - 1);
    ::_exit(127);
  }
  ::close(log_fd);
  std::unique_ptr<LocalCoordinator> child(new LocalCoordinator(pid, temp_dir, log_path, options.stop_grace));

  const absl::Time deadline = absl::Now() + options.start_timeout;
  while (true) {
    int wait_status = 0;
    if (::waitpid(pid, &wait_status, WNOHANG) == pid) {
      absl::MutexLock lock(&child->mu_);
      child->stopped_ = true;
      return absl::FailedPreconditionError(absl::StrCat("the local coordinator ", coordinator, " ",
                                                        DescribeExit(wait_status), " before it listened",
                                                        LogTail(log_path)));
    }
    int port = 0;
    const std::string text(absl::StripAsciiWhitespace(ReadAll(port_file)));
    if (!text.empty() && absl::SimpleAtoi(text, &port) && port > 0 && port < 65536) {
      child->address_ = absl::StrCat("127.0.0.1:", port);
      return child;
    }
    if (absl::Now() > deadline) {
      const std::string tail = LogTail(log_path);
      child->keep_temp_dir_ = true;
      (void)child->Stop();
      return absl::DeadlineExceededError(absl::StrCat("the local coordinator ", coordinator,
                                                      " did not write its port to ", port_file, " within ",
                                                      absl::FormatDuration(options.start_timeout), tail));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

LocalCoordinator::~LocalCoordinator() { (void)Stop(); }

absl::Status LocalCoordinator::Stop() {
  absl::MutexLock lock(&mu_);
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  ::kill(-pid_, SIGTERM);
  int wait_status = 0;
  bool killed = false;
  const absl::Time deadline = absl::Now() + stop_grace_;
  while (true) {
    const pid_t reaped = ::waitpid(pid_, &wait_status, WNOHANG);
    if (reaped == pid_) break;
    if (reaped < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("waiting for the local coordinator (pid ", pid_,
                                              "): ", std::strerror(errno)));
    }
    if (!killed && absl::Now() > deadline) {
      ::kill(-pid_, SIGKILL);
      killed = true;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  const bool clean = !killed && ((WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) ||
                                 (WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGTERM));
  if (!clean) {
    return absl::InternalError(absl::StrCat("the local coordinator ",
                                            killed ? absl::StrCat("did not stop within ",
                                                                  absl::FormatDuration(stop_grace_),
                                                                  " of SIGTERM and was killed")
                                                   : DescribeExit(wait_status),
                                            LogTail(log_path_)));
  }
  if (!keep_temp_dir_) {
    std::error_code error;
    fs::remove_all(temp_dir_, error);
  }
  return absl::OkStatus();
}

}  // namespace sigmatune::client
