#include "server/launcher/local_workers.h"

#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sigmatune::server {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "t0k3n-abcdef";

// A fresh directory under $TEST_TMPDIR.
std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp != nullptr ? tmp : "/tmp") / ("local_workers_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return fs::canonical(dir).string();
}

std::string TestDir() {
  return TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
}

// An executable /bin/sh script.
std::string WriteScript(const std::string& path, const std::string& body) {
  {
    std::ofstream out(path);
    out << "#!/bin/sh\n" << body;
  }
  chmod(path.c_str(), 0755);
  return path;
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

bool WaitForLines(const std::string& path, size_t n, absl::Duration timeout = absl::Seconds(10)) {
  return WaitFor([&] { return ReadLines(path).size() >= n; }, timeout);
}

// The worker's pid: the first word of a line the fake worker wrote.
pid_t PidOf(const std::string& line) {
  int pid = 0;
  EXPECT_TRUE(absl::SimpleAtoi(line.substr(0, line.find(' ')), &pid)) << line;
  return pid;
}

bool Gone(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

// Records "<pid> <token> <args>" and then either stays (exec sleep, same pid) or exits 1.
std::string FakeWorker(const std::string& dir, const std::string& record, bool stays) {
  return WriteScript(dir + "/worker",
                     absl::StrCat("echo \"$$ $SIGMATUNE_TOKEN $*\" >> ", record, "\n",
                                  "echo \"stdout of $$\"\necho \"stderr of $$\" >&2\n",
                                  stays ? "exec sleep 1000\n" : "exit 1\n"));
}

LocalWorkersOptions Options(const std::string& worker) {
  LocalWorkersOptions options;
  options.worker_binary = worker;
  options.coordinator_address = "127.0.0.1:7070";
  options.token = kToken;
  options.worker_args = {"--device=cpu"};
  return options;
}

TEST(LocalWorkersCommandTest, OneRankRunsTheWorkerAlone) {
  LocalWorkersOptions options;
  options.worker_binary = "/opt/st/sigmatune-worker";
  options.coordinator_address = "10.0.0.1:50051";
  options.token = kToken;
  options.worker_args = {"--device=cuda", "--name=a b"};
  std::vector<std::string> argv = LocalWorkersCommand(options);
  EXPECT_THAT(argv, ElementsAre("/opt/st/sigmatune-worker", "--coordinator=10.0.0.1:50051",
                                "--comm=single", "--device=cuda", "--name=a b"));
  for (const std::string& arg : argv) EXPECT_THAT(arg, Not(HasSubstr(kToken)));
}

TEST(LocalWorkersCommandTest, SeveralRanksRunUnderMpirun) {
  LocalWorkersOptions options;
  options.ranks = 3;
  options.worker_binary = "/opt/st/sigmatune-worker";
  options.coordinator_address = "localhost:1";
  options.token = kToken;
  options.worker_args = {"--x"};
  std::vector<std::string> expected = {"mpirun",
                                       "-np",
                                       "3",
                                       "--oversubscribe",
                                       "--bind-to",
                                       "none",
                                       "--mca",
                                       "btl",
                                       "self,vader",
                                       "--mca",
                                       "btl_vader_single_copy_mechanism",
                                       "none"};
  if (geteuid() == 0) expected.push_back("--allow-run-as-root");
  expected.insert(expected.end(), {"-x", "SIGMATUNE_TOKEN", "/opt/st/sigmatune-worker",
                                   "--coordinator=localhost:1", "--x"});
  std::vector<std::string> argv = LocalWorkersCommand(options);
  EXPECT_THAT(argv, ElementsAreArray(expected));
  for (const std::string& arg : argv) EXPECT_THAT(arg, Not(HasSubstr(kToken)));
}

TEST(LocalWorkersTest, TokenInTheEnvironmentOutputInTheLog) {
  const std::string dir = TestDir();
  const std::string record = dir + "/record";
  LocalWorkersOptions options = Options(FakeWorker(dir, record, /*stays=*/true));
  options.log_path = dir + "/workers.log";
  setenv("SIGMATUNE_TOKEN", "stale-token-of-the-coordinator", 1);
  absl::StatusOr<std::unique_ptr<LocalWorkers>> workers = LocalWorkers::Start(options);
  unsetenv("SIGMATUNE_TOKEN");
  ASSERT_TRUE(workers.ok()) << workers.status();
  ASSERT_TRUE(WaitForLines(record, 1));
  ASSERT_TRUE(WaitForLines(options.log_path, 2));

  const std::string line = ReadLines(record)[0];
  const pid_t pid = PidOf(line);
  EXPECT_EQ(line, absl::StrCat(pid, " ", kToken, " --coordinator=127.0.0.1:7070 --comm=single "
                                                 "--device=cpu"));
  EXPECT_EQ((*workers)->pid(), pid);
  EXPECT_EQ(getpgid(pid), pid);  // its own process group
  EXPECT_THAT(ReadLines(options.log_path),
              ElementsAre(absl::StrCat("stdout of ", pid), absl::StrCat("stderr of ", pid)));

  (*workers)->Stop();
  EXPECT_EQ((*workers)->pid(), 0);
  EXPECT_TRUE(Gone(pid));
  EXPECT_EQ((*workers)->restarts(), 0);
  (*workers)->Stop();  // idempotent
}

TEST(LocalWorkersTest, AnExitedGroupIsRestartedWithADoublingBackoff) {
  const std::string dir = TestDir();
  const std::string record = dir + "/record";
  LocalWorkersOptions options = Options(FakeWorker(dir, record, /*stays=*/false));
  options.log_path = dir + "/workers.log";
  absl::StatusOr<std::unique_ptr<LocalWorkers>> workers = LocalWorkers::Start(options);
  ASSERT_TRUE(workers.ok()) << workers.status();

  std::vector<absl::Time> seen;  // when each new line appeared
  ASSERT_TRUE(WaitFor(
      [&] {
        while (seen.size() < ReadLines(record).size()) seen.push_back(absl::Now());
        return seen.size() >= 3;
      },
      absl::Seconds(10)));
  const absl::Duration first = seen[1] - seen[0];
  const absl::Duration second = seen[2] - seen[1];
  EXPECT_GE(first, absl::Milliseconds(900));
  EXPECT_LT(first, absl::Milliseconds(1900));
  EXPECT_GE(second, absl::Milliseconds(1900));
  EXPECT_LT(second, absl::Milliseconds(2900));
  EXPECT_GE((*workers)->restarts(), 2);
  const std::vector<std::string> lines = ReadLines(record);
  EXPECT_NE(PidOf(lines[0]), PidOf(lines[1]));

  // Stop during the 4 s backoff returns at once.
  const absl::Time before = absl::Now();
  (*workers)->Stop();
  EXPECT_LT(absl::Now() - before, absl::Milliseconds(500));
  EXPECT_EQ((*workers)->pid(), 0);
}

TEST(LocalWorkersTest, StopEndsAGroupThatHonoursSigterm) {
  const std::string dir = TestDir();
  const std::string record = dir + "/record";
  LocalWorkersOptions options = Options(WriteScript(
      dir + "/worker", absl::StrCat("trap 'exit 0' TERM\necho $$ >> ", record,
                                    "\nwhile :; do sleep 0.05; done\n")));
  options.stop_grace = absl::Seconds(20);
  absl::StatusOr<std::unique_ptr<LocalWorkers>> workers = LocalWorkers::Start(options);
  ASSERT_TRUE(workers.ok()) << workers.status();
  ASSERT_TRUE(WaitForLines(record, 1));
  const pid_t pid = PidOf(ReadLines(record)[0]);

  const absl::Time before = absl::Now();
  workers->reset();  // the destructor stops
  EXPECT_LT(absl::Now() - before, absl::Seconds(3));
  EXPECT_TRUE(Gone(pid));
}

TEST(LocalWorkersTest, StopKillsAGroupThatIgnoresSigtermAfterTheGrace) {
  const std::string dir = TestDir();
  const std::string record = dir + "/record";
  LocalWorkersOptions options = Options(WriteScript(
      dir + "/worker", absl::StrCat("trap '' TERM\necho $$ >> ", record,
                                    "\nwhile :; do sleep 0.05; done\n")));
  options.stop_grace = absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<LocalWorkers>> workers = LocalWorkers::Start(options);
  ASSERT_TRUE(workers.ok()) << workers.status();
  ASSERT_TRUE(WaitForLines(record, 1));
  const pid_t pid = PidOf(ReadLines(record)[0]);

  const absl::Time before = absl::Now();
  (*workers)->Stop();
  const absl::Duration took = absl::Now() - before;
  EXPECT_GE(took, absl::Milliseconds(950));
  EXPECT_LT(took, absl::Seconds(4));
  EXPECT_TRUE(Gone(pid));
}

TEST(LocalWorkersTest, MissingOrNonExecutableFilesFailFirst) {
  const std::string dir = TestDir();
  absl::StatusOr<std::unique_ptr<LocalWorkers>> workers =
      LocalWorkers::Start(Options(dir + "/no-such-worker"));
  EXPECT_EQ(workers.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(workers.status().message(), HasSubstr(dir + "/no-such-worker"));

  {
    std::ofstream(dir + "/plain") << "#!/bin/sh\n";
  }
  chmod((dir + "/plain").c_str(), 0644);
  workers = LocalWorkers::Start(Options(dir + "/plain"));
  EXPECT_EQ(workers.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(workers.status().message(), HasSubstr(dir + "/plain"));
  workers = LocalWorkers::Start(Options(dir));  // a directory
  EXPECT_EQ(workers.status().code(), absl::StatusCode::kFailedPrecondition);

  LocalWorkersOptions options = Options(FakeWorker(dir, dir + "/record", /*stays=*/true));
  options.ranks = 2;
  options.mpirun = dir + "/no-mpirun";
  workers = LocalWorkers::Start(options);
  EXPECT_EQ(workers.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(workers.status().message(), HasSubstr(dir + "/no-mpirun"));
  options.mpirun = "sigmatune-no-such-mpirun";
  workers = LocalWorkers::Start(options);
  EXPECT_EQ(workers.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(workers.status().message(), HasSubstr("sigmatune-no-such-mpirun"));

  options.ranks = 0;
  EXPECT_EQ(LocalWorkers::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir + "/record"));  // nothing was started

  options.ranks = 1;
  options.log_path = dir + "/no-such-dir/workers.log";
  workers = LocalWorkers::Start(options);
  EXPECT_EQ(workers.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(workers.status().message(), HasSubstr("no-such-dir/workers.log"));
}

TEST(LocalWorkersTest, SeveralRanksGoThroughMpirunFoundOnPath) {
  const std::string dir = TestDir();
  const std::string record = dir + "/record";
  fs::create_directories(dir + "/bin");
  // A fake mpirun: records its argv, then runs what follows "-x SIGMATUNE_TOKEN" (one "rank").
  WriteScript(dir + "/bin/fake-mpirun",
              absl::StrCat("echo \"$*\" > ", dir, "/mpirun.args\n",
                           "while [ $# -gt 0 ]; do\n"
                           "  if [ \"$1\" = -x ]; then shift 2; break; fi\n"
                           "  shift\n"
                           "done\n"
                           "exec \"$@\"\n"));
  LocalWorkersOptions options = Options(FakeWorker(dir, record, /*stays=*/true));
  options.ranks = 4;
  options.mpirun = "fake-mpirun";
  const std::string old_path = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "";
  setenv("PATH", absl::StrCat(dir, "/bin:", old_path).c_str(), 1);
  absl::StatusOr<std::unique_ptr<LocalWorkers>> workers = LocalWorkers::Start(options);
  setenv("PATH", old_path.c_str(), 1);
  ASSERT_TRUE(workers.ok()) << workers.status();
  ASSERT_TRUE(WaitForLines(record, 1));

  std::vector<std::string> expected = LocalWorkersCommand(options);
  expected.erase(expected.begin());
  EXPECT_THAT(ReadLines(dir + "/mpirun.args"), ElementsAre(absl::StrJoin(expected, " ")));
  const std::string line = ReadLines(record)[0];
  const pid_t pid = PidOf(line);
  EXPECT_EQ(line, absl::StrCat(pid, " ", kToken, " --coordinator=127.0.0.1:7070 --device=cpu"));
  (*workers)->Stop();
  EXPECT_TRUE(Gone(pid));
}

// A kill -9 of the coordinator ends its group: the worker asked for SIGTERM when the supervisor
// thread dies (PR_SET_PDEATHSIG).
TEST(LocalWorkersTest, TheGroupDiesWithTheCoordinator) {
  const std::string dir = TestDir();
  const std::string record = dir + "/record";
  const std::string worker = FakeWorker(dir, record, /*stays=*/true);
  // Orphans are reparented to this process, so the dead worker can be reaped and inspected.
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);

  const pid_t coordinator = fork();
  ASSERT_GE(coordinator, 0);
  if (coordinator == 0) {
    absl::StatusOr<std::unique_ptr<LocalWorkers>> workers = LocalWorkers::Start(Options(worker));
    if (!workers.ok()) _exit(3);
    while (true) pause();  // until SIGKILLed
  }
  const bool started = WaitForLines(record, 1);
  kill(coordinator, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(coordinator, &status, 0), coordinator);
  ASSERT_TRUE(started) << "the worker never started";
  const pid_t pid = PidOf(ReadLines(record)[0]);

  bool died = false;
  int worker_status = 0;
  WaitFor(
      [&] {
        const pid_t r = waitpid(pid, &worker_status, WNOHANG);
        died = r == pid || (r < 0 && Gone(pid));
        return died;
      },
      absl::Seconds(5));
  if (!died) kill(-pid, SIGKILL);  // leave nothing behind
  ASSERT_TRUE(died) << "worker " << pid << " outlived its coordinator";
  if (WIFSIGNALED(worker_status)) {
    EXPECT_EQ(WTERMSIG(worker_status), SIGTERM);
  }
}

}  // namespace
}  // namespace sigmatune::server
