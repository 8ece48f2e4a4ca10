// Test helpers for end-to-end tests that run real processes (mpirun groups, the coordinator, the
// CLI): each started in its own session with PR_SET_PDEATHSIG, output to a log file, Bazel's test
// protocol variables removed from its environment, and a deadline after which every process of the
// session is SIGKILLed, so nothing outlives or hangs a test.
#ifndef SIGMATUNE_TESTS_E2E_SUBPROCESS_H_
#define SIGMATUNE_TESTS_E2E_SUBPROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

extern char** environ;

namespace sigmatune::e2e {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

inline std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// The absolute path of `name` on $PATH, or "".
inline std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const fs::path candidate = fs::path(dir) / name;
    if (access(candidate.c_str(), X_OK) == 0 && fs::is_regular_file(candidate)) return candidate.string();
  }
  return "";
}

// /proc/<pid>/stat: (state, session id), or nullopt when the process is gone.
inline std::optional<std::pair<char, int>> ProcStat(int pid) {
  const std::string stat = ReadFile(fs::path("/proc") / std::to_string(pid) / "stat");
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(paren + 1));
  char state = '?';
  int ppid = 0, pgrp = 0, session = 0;
  if (!(fields >> state >> ppid >> pgrp >> session)) return std::nullopt;
  return std::make_pair(state, session);
}

// True while `pid` exists and is not a zombie.
inline bool Alive(int pid) {
  const auto stat = ProcStat(pid);
  return stat.has_value() && stat->first != 'Z' && stat->first != 'X';
}

// SIGKILLs every process of session `sid` (mpirun started with setsid; its ranks keep the session
// even in their own process groups and after mpirun is gone).
inline void KillSession(int sid) {
  for (int round = 0; round < 3; ++round) {
    int killed = 0;
    std::error_code ec;
    for (const fs::directory_entry& e : fs::directory_iterator("/proc", ec)) {
      const std::string name = e.path().filename().string();
      if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
      const int pid = std::stoi(name);
      const auto stat = ProcStat(pid);
      if (stat.has_value() && stat->second == sid && stat->first != 'Z') {
        kill(pid, SIGKILL);
        ++killed;
      }
    }
    if (killed == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// One mpirun (or any command) in its own session, output to a log file.
class Launched {
 public:
  Launched() = default;
  Launched(const Launched&) = delete;
  Launched& operator=(const Launched&) = delete;
  ~Launched() { KillAll(); }

  // Starts argv[0] (an absolute path) with stdout and stderr to `log`, the environment of this
  // process minus Bazel's protocol variables, TMPDIR set to `tmpdir`, plus `extra_env` ("KEY=value",
  // replacing an inherited KEY).
  void Start(const std::vector<std::string>& argv, const fs::path& log, const std::string& tmpdir,
             const std::vector<std::string>& extra_env = {}) {
    command_ = absl::StrJoin(argv, " ");
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string var = *e;
      const std::string key = var.substr(0, var.find('='));
      if (key == "TEST_PREMATURE_EXIT_FILE" || key == "XML_OUTPUT_FILE" || key == "GTEST_OUTPUT" ||
          key == "TEST_SHARD_STATUS_FILE" || key == "TMPDIR") {
        continue;
      }
      env.push_back(var);
    }
    env.push_back("TMPDIR=" + tmpdir);
    for (const std::string& var : extra_env) {
      const std::string key = var.substr(0, var.find('=') + 1);
      env.erase(std::remove_if(env.begin(), env.end(), [&](const std::string& e) { return e.rfind(key, 0) == 0; }),
                env.end());
      env.push_back(var);
    }
    // Everything the child needs is built before fork (only async-signal-safe calls after it).
    std::vector<char*> cargv, cenv;
    for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    for (const std::string& v : env) cenv.push_back(const_cast<char*>(v.c_str()));
    cenv.push_back(nullptr);
    const std::string log_path = log.string();
    const pid_t parent = getpid();
    start_ = Clock::now();
    pid_ = fork();
    ASSERT_GE(pid_, 0) << "fork: " << std::strerror(errno);
    if (pid_ == 0) {
      setsid();
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(126);
      const int in = open("/dev/null", O_RDONLY);
      const int out = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
      if (in < 0 || out < 0) _exit(126);
      dup2(in, 0);
      dup2(out, 1);
      dup2(out, 2);
      execve(cargv[0], cargv.data(), cenv.data());
      _exit(127);
    }
  }

  // Waits until the process exits or `seconds` pass; returns whether it exited. On exit the code
  // is exit_code() (128 + signal for a signal).
  bool WaitFor(double seconds) {
    if (exited_) return true;
    if (pid_ <= 0) return false;
    const Clock::time_point deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                          std::chrono::duration<double>(seconds));
    while (true) {
      int status = 0;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        elapsed_s_ = SecondsSince(start_);
        return true;
      }
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // Runs to completion within `seconds`; on the deadline kills everything and fails the test.
  bool Finish(double seconds) {
    if (WaitFor(seconds)) return true;
    ADD_FAILURE() << "still running after " << seconds << " s, killed: " << command_;
    KillAll();
    return false;
  }

  // SIGKILLs mpirun and every process of its session, and reaps mpirun.
  void KillAll() {
    if (pid_ <= 0) return;
    KillSession(pid_);
    if (!exited_) {
      kill(-pid_, SIGKILL);
      int status = 0;
      if (waitpid(pid_, &status, 0) == pid_) {
        exited_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        elapsed_s_ = SecondsSince(start_);
      }
    }
    KillSession(pid_);  // ranks that outlived it
  }

  bool exited() const { return exited_; }
  int exit_code() const { return exit_code_; }
  double elapsed_s() const { return elapsed_s_; }
  pid_t pid() const { return pid_; }

 private:
  std::string command_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
  double elapsed_s_ = 0;
  Clock::time_point start_;
};

}  // namespace sigmatune::e2e

#endif  // SIGMATUNE_TESTS_E2E_SUBPROCESS_H_
