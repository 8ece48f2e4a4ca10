// Runs the real `sigmatune` binary (a data dependency) as a subprocess against the in-process fake
// coordinator (client/fake_job_service.h) and checks what it prints, sends and exits with.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/fake_job_service.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace sigmatune::client {
namespace {

namespace fs = std::filesystem;
using testing::FakeCoordinator;
using testing::TrainingScript;
using testing::WatchScript;

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

std::string Binary() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/", workspace != nullptr ? workspace : "sigmatune",
                      "/client/sigmatune");
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string WriteFile(const std::string& relative, const std::string& text) {
  const fs::path path = fs::path(TempDir()) / relative;
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

// A running `sigmatune`: its pid and where its stdout and stderr go.
struct Child {
  pid_t pid = -1;
  std::string out_path;
  std::string err_path;
  std::string command;
};

// Starts `sigmatune args...` with only PATH, HOME and `env` in its environment (no SIGMATUNE_*
// unless given); stdin is /dev/null, stdout and stderr go to files.
Child Spawn(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
  static int counter = 0;
  const std::string base = absl::StrCat(TempDir(), "/run", ++counter);
  Child child;
  child.out_path = base + ".out";
  child.err_path = base + ".err";
  child.command = absl::StrJoin(args, " ");
  std::vector<std::string> argv_storage = {Binary()};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<std::string> env_storage = {absl::StrCat("PATH=", std::getenv("PATH") ? std::getenv("PATH") : "/bin"),
                                          absl::StrCat("HOME=", TempDir())};
  for (const auto& [key, value] : env) env_storage.push_back(absl::StrCat(key, "=", value));
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (std::string& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, child.out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, child.err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  const int spawned = posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(spawned, 0) << "cannot run " << argv[0];
  if (spawned != 0) child.pid = -1;
  return child;
}

// Waits (at most 60 s, then kills it) for the child and collects its output.
Result Wait(const Child& child) {
  Result result;
  if (child.pid < 0) return result;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  int status = 0;
  while (waitpid(child.pid, &status, WNOHANG) != child.pid) {
    if (absl::Now() > deadline) {
      ADD_FAILURE() << "sigmatune " << child.command << " did not finish within 60 s";
      kill(child.pid, SIGKILL);
      waitpid(child.pid, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = ReadFile(child.out_path);
  result.err = ReadFile(child.err_path);
  return result;
}

Result RunCli(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {}) {
  return Wait(Spawn(args, env));
}

int UnusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

constexpr char kSpec[] = R"(# a job whose paths are relative to this file
base_model: models/tiny
method:
  type: lora
  rank: 4
datasets:
  - path: data/train.jsonl
max_steps: 10
output_dir: ../runs/tiny
)";

int Count(absl::string_view text, absl::string_view needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != absl::string_view::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

std::string Dump(const Result& r) {
  return absl::StrCat("exit ", r.exit_code, "\n--- stdout\n", r.out, "--- stderr\n", r.err);
}

v1::Job JobIn(v1::JobState state, const std::string& reason = "") {
  v1::Job job;
  job.set_state(state);
  job.set_reason(reason);
  job.mutable_spec()->set_base_model("/data/models/tiny");
  return job;
}

v1::JobReport Report(const std::string& text) {
  v1::JobReport report;
  report.set_text(text);
  report.set_json("{\"learned\": {\"arith\": 0.9}}\n");
  return report;
}

class CliTest : public ::testing::Test {
 protected:
  CliTest() : server_("secret") {}
  std::map<std::string, std::string> Env() const {
    return {{"SIGMATUNE_SERVER", server_.address()}, {"SIGMATUNE_TOKEN", "secret"}};
  }
  FakeCoordinator server_;
};

TEST_F(CliTest, SubmitSendsTheParsedSpecWithItsPathsAsWritten) {
  const std::string spec = WriteFile("specs/tiny.yaml", kSpec);
  const Result r = RunCli({"submit", spec, "--priority=3"}, Env());
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  EXPECT_EQ(r.out, "jobs/j1 QUEUED\n");
  const std::vector<v1::CreateJobRequest> requests = server_.service().create_requests();
  ASSERT_EQ(requests.size(), 1u);
  const v1::JobSpec& sent = requests[0].spec();
  EXPECT_EQ(sent.name(), "tiny");  // the file's stem
  EXPECT_EQ(sent.base_model(), "models/tiny");
  ASSERT_EQ(sent.datasets_size(), 1);
  EXPECT_EQ(sent.datasets(0).path(), "data/train.jsonl");
  EXPECT_EQ(sent.output_dir(), "../runs/tiny");
  EXPECT_EQ(sent.method().type(), "lora");
  EXPECT_EQ(sent.method().rank(), 4);
  EXPECT_EQ(sent.max_steps(), 10);
  EXPECT_EQ(sent.cache_dir(), "");  // no defaults filled in here
  EXPECT_EQ(requests[0].priority(), 3);
  EXPECT_TRUE(absl::StartsWith(requests[0].request_id(), "cli-")) << requests[0].request_id();
  EXPECT_EQ(server_.service().authorizations(), std::vector<std::string>{"Bearer secret"});
}

TEST_F(CliTest, SubmitWithARequestIdIsIdempotent) {
  const std::string spec = WriteFile("specs/tiny.yaml", kSpec);
  const std::string token = WriteFile("token.txt", "secret\n");
  const std::vector<std::string> args = {"--server", server_.address(), "--token_file", token, "submit", spec,
                                         "--request_id=abc"};
  const Result first = RunCli(args);
  ASSERT_EQ(first.exit_code, 0) << Dump(first);
  const Result second = RunCli(args);
  ASSERT_EQ(second.exit_code, 0) << Dump(second);
  EXPECT_EQ(first.out, "jobs/j1 QUEUED\n");
  EXPECT_EQ(second.out, first.out);
  for (const v1::CreateJobRequest& request : server_.service().create_requests()) {
    EXPECT_EQ(request.request_id(), "abc");
  }
}

TEST_F(CliTest, SubmitRetriesOnceWhenTheCoordinatorIsUnavailable) {
  const std::string spec = WriteFile("specs/tiny.yaml", kSpec);
  server_.service().FailNextCreates(1);
  const Result r = RunCli({"submit", spec}, Env());
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  const std::vector<v1::CreateJobRequest> requests = server_.service().create_requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].request_id(), requests[1].request_id());
}

TEST_F(CliTest, SpecErrorsAreShownWithTheirLinesAndNothingIsSent) {
  const std::string broken = WriteFile("specs/broken.yaml", "base_model: m\nmethod: {type: lora\n");
  const Result syntax = RunCli({"submit", broken}, Env());
  EXPECT_EQ(syntax.exit_code, 2) << Dump(syntax);
  EXPECT_TRUE(absl::StrContains(syntax.err, "broken.yaml: 1 problem in the job spec:")) << Dump(syntax);
  EXPECT_TRUE(absl::StrContains(syntax.err, "line ")) << Dump(syntax);

  const std::string typo = WriteFile("specs/typo.yaml", "base_model: m\nmethod:\n  type: lora\n  rnak: 8\n");
  const Result unknown = RunCli({"submit", typo}, Env());
  EXPECT_EQ(unknown.exit_code, 2) << Dump(unknown);
  EXPECT_TRUE(absl::StrContains(unknown.err, "method.rnak: unknown field \"rnak\"; did you mean \"rank\"? (line 4)"))
      << Dump(unknown);

  const Result missing = RunCli({"submit", TempDir() + "/specs/none.yaml"}, Env());
  EXPECT_EQ(missing.exit_code, 2) << Dump(missing);
  EXPECT_TRUE(absl::StrContains(missing.err, "cannot read the job spec")) << Dump(missing);

  EXPECT_TRUE(server_.service().create_requests().empty());
  EXPECT_TRUE(server_.service().authorizations().empty());  // not even connected
}

TEST_F(CliTest, TheServersValidationMessagePassesThrough) {
  const std::string spec = WriteFile("specs/nomodel.yaml", "method: {type: lora}\nmax_steps: 1\n");
  const Result r = RunCli({"submit", spec}, Env());
  EXPECT_EQ(r.exit_code, 2) << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "base_model: required")) << Dump(r);
}

TEST_F(CliTest, ListShowsATableAndFollowsPagesWithAll) {
  for (int i = 0; i < 3; ++i) server_.service().AddJob(JobIn(v1::JOB_STATE_QUEUED), {});
  v1::Job running = JobIn(v1::JOB_STATE_RUNNING);
  running.mutable_progress()->set_phase(v1::JOB_PHASE_TRAIN);
  running.mutable_progress()->set_step(12);
  running.mutable_progress()->set_total_steps(100);
  server_.service().AddJob(running, {});
  server_.service().AddJob(JobIn(v1::JOB_STATE_SUCCEEDED), {});

  const Result page = RunCli({"list", "--page_size=2"}, Env());
  ASSERT_EQ(page.exit_code, 0) << Dump(page);
  std::vector<std::string> lines = absl::StrSplit(page.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << Dump(page);
  EXPECT_TRUE(absl::StartsWith(lines[0], "NAME ")) << lines[0];
  for (const char* column : {"STATE", "PHASE", "STEP", "AGE"}) EXPECT_TRUE(absl::StrContains(lines[0], column));
  EXPECT_TRUE(absl::StartsWith(lines[1], "jobs/j5  SUCCEEDED")) << lines[1];  // newest first
  EXPECT_TRUE(absl::StartsWith(lines[2], "jobs/j4  RUNNING    train  12/100")) << lines[2];
  EXPECT_TRUE(absl::StrContains(page.err, "--all")) << Dump(page);
  EXPECT_EQ(server_.service().list_calls(), 1);

  const Result all = RunCli({"list", "--page_size", "2", "--all"}, Env());
  ASSERT_EQ(all.exit_code, 0) << Dump(all);
  lines = absl::StrSplit(all.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 6u) << Dump(all);
  EXPECT_TRUE(absl::StartsWith(lines[5], "jobs/j1  QUEUED")) << lines[5];
  EXPECT_EQ(server_.service().list_calls(), 4);  // 1 + three pages of 2, 2, 1

  const Result queued = RunCli({"list", "--state=queued,running"}, Env());
  ASSERT_EQ(queued.exit_code, 0) << Dump(queued);
  lines = absl::StrSplit(queued.out, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 5u) << Dump(queued);

  const Result bad = RunCli({"list", "--state=done"}, Env());
  EXPECT_EQ(bad.exit_code, 2) << Dump(bad);
  EXPECT_TRUE(absl::StrContains(bad.err, "unknown job state \"done\"")) << Dump(bad);
}

TEST_F(CliTest, GetPrintsASummaryOrJson) {
  v1::Job failed = JobIn(v1::JOB_STATE_FAILED, "rank 1 ran out of memory");
  failed.mutable_progress()->set_phase(v1::JOB_PHASE_TRAIN);
  failed.mutable_progress()->set_step(7);
  failed.mutable_progress()->set_total_steps(10);
  const v1::Job job = server_.service().AddJob(failed, {});

  const Result summary = RunCli({"get", "j1"}, Env());
  ASSERT_EQ(summary.exit_code, 0) << Dump(summary);
  EXPECT_TRUE(absl::StrContains(summary.out, "name:      jobs/j1\n")) << summary.out;
  EXPECT_TRUE(absl::StrContains(summary.out, "state:     FAILED\n")) << summary.out;
  EXPECT_TRUE(absl::StrContains(summary.out, "phase:     train step 7/10")) << summary.out;
  EXPECT_TRUE(absl::StrContains(summary.out, "reason:    rank 1 ran out of memory\n")) << summary.out;

  const Result json = RunCli({"get", job.name(), "--json"}, Env());
  ASSERT_EQ(json.exit_code, 0) << Dump(json);
  const nlohmann::json parsed = nlohmann::json::parse(json.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(parsed.is_discarded()) << json.out;
  EXPECT_EQ(parsed["name"], "jobs/j1");
  EXPECT_EQ(parsed["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(parsed["spec"]["base_model"], "/data/models/tiny");
  EXPECT_EQ(parsed["progress"]["total_steps"], "10");  // int64 is a string in proto JSON

  const Result missing = RunCli({"get", "nope"}, Env());
  EXPECT_EQ(missing.exit_code, 1) << Dump(missing);
  EXPECT_TRUE(absl::StrContains(missing.err, "jobs/nope not found")) << Dump(missing);
}

TEST_F(CliTest, WatchReconnectsWithTheResumeTokenAndPrintsTheReport) {
  WatchScript script = TrainingScript(4, v1::JOB_STATE_SUCCEEDED, "exported");
  script.break_after = 3;
  const v1::Job job = server_.service().AddJob(JobIn(v1::JOB_STATE_SUCCEEDED), script,
                                               Report("arith exact match 0.12 -> 0.90\n"));
  const Result r = RunCli({"watch", job.name()}, Env());
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  EXPECT_EQ(r.out, "arith exact match 0.12 -> 0.90\n");
  EXPECT_EQ(server_.service().watch_tokens(), (std::vector<std::string>{"", "tok-3"}));
  EXPECT_TRUE(absl::StrContains(r.err, "jobs/j1 QUEUED\n")) << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "jobs/j1 RUNNING: assigned to group g-1 (1 rank)")) << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "[train] lost the watch stream (the coordinator is restarting); reconnecting in "))
      << Dump(r);
  // Progress is drawn by TerminalProgress (plain lines: stderr is not a terminal).
  EXPECT_TRUE(absl::StrContains(r.err, "[train] step 1/4 25% loss 2.75 lr 2.0e-04 1234 tok/s\n")) << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "[train] step 3/4 75% loss 2.25 lr 2.0e-04 1234 tok/s ETA 10s\n")) << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "[train] step 4/4 100% loss 2 lr 2.0e-04 1234 tok/s done in 40s\n"))
      << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "[train] saved checkpoint-4\n")) << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "jobs/j1 SUCCEEDED\n")) << Dump(r);
  // Each step once, although the stream broke after step 2.
  EXPECT_EQ(Count(r.err, "[train] step 2/4"), 1) << Dump(r);
}

TEST_F(CliTest, WatchStartsAfreshAfterOutOfRange) {
  WatchScript script = TrainingScript(3, v1::JOB_STATE_SUCCEEDED, "");
  script.break_after = 2;
  script.out_of_range_times = 1;
  const v1::Job job = server_.service().AddJob(JobIn(v1::JOB_STATE_SUCCEEDED), script, Report("ok\n"));
  const Result r = RunCli({"watch", job.name()}, Env());
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  EXPECT_EQ(r.out, "ok\n");
  EXPECT_EQ(server_.service().watch_tokens(), (std::vector<std::string>{"", "tok-2", ""}));
  EXPECT_TRUE(absl::StrContains(r.err, "no longer has the events missed")) << Dump(r);
}

TEST_F(CliTest, WatchExitStatusFollowsTheOutcome) {
  const v1::Job failed = server_.service().AddJob(JobIn(v1::JOB_STATE_FAILED, "rank 0 died (signal 9)"),
                                                  TrainingScript(2, v1::JOB_STATE_FAILED, "rank 0 died"));
  const Result f = RunCli({"watch", failed.name()}, Env());
  EXPECT_EQ(f.exit_code, 1) << Dump(f);
  EXPECT_TRUE(absl::StrContains(f.err, "jobs/j1 FAILED: rank 0 died (signal 9)\n")) << Dump(f);
  EXPECT_EQ(f.out, "");

  const v1::Job cancelled = server_.service().AddJob(JobIn(v1::JOB_STATE_CANCELLED, "cancelled by alice"),
                                                     TrainingScript(2, v1::JOB_STATE_CANCELLED, "cancelled"));
  const Result c = RunCli({"watch", cancelled.name()}, Env());
  EXPECT_EQ(c.exit_code, 3) << Dump(c);
  EXPECT_TRUE(absl::StrContains(c.err, "jobs/j2 CANCELLED: cancelled by alice\n")) << Dump(c);
}

TEST_F(CliTest, SubmitWatchAndRunWithAServerFollowTheJob) {
  server_.service().ScriptCreatedJobs(v1::JOB_STATE_SUCCEEDED, TrainingScript(2, v1::JOB_STATE_SUCCEEDED, ""),
                                      Report("the report\n"));
  const std::string spec = WriteFile("specs/tiny.yaml", kSpec);
  const Result submitted = RunCli({"submit", spec, "--watch"}, Env());
  ASSERT_EQ(submitted.exit_code, 0) << Dump(submitted);
  EXPECT_EQ(submitted.out, "jobs/j1 QUEUED\nthe report\n");

  // With a server configured, run = submit + watch (the spec's paths are sent as written).
  const Result run = RunCli({"run", spec}, Env());
  ASSERT_EQ(run.exit_code, 0) << Dump(run);
  EXPECT_EQ(run.out, "jobs/j2 QUEUED\nthe report\n");
  EXPECT_EQ(server_.service().create_requests().back().spec().base_model(), "models/tiny");
}

TEST_F(CliTest, InterruptingRunCancelsTheJobAndWaitsForIt) {
  WatchScript script = TrainingScript(2, v1::JOB_STATE_RUNNING, "");
  script.events.pop_back();  // no final state: the job runs until it is cancelled
  script.hold_until_cancelled = true;
  server_.service().ScriptCreatedJobs(v1::JOB_STATE_RUNNING, script, {});
  const std::string spec = WriteFile("specs/tiny.yaml", kSpec);
  const Child child = Spawn({"run", spec}, Env());
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (server_.service().watch_tokens().empty() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_FALSE(server_.service().watch_tokens().empty()) << "the job was never watched";
  absl::SleepFor(absl::Milliseconds(200));  // let it print the events
  ASSERT_EQ(kill(child.pid, SIGINT), 0);
  const Result r = Wait(child);
  EXPECT_EQ(r.exit_code, 3) << Dump(r);
  EXPECT_EQ(server_.service().cancelled(), std::vector<std::string>{"jobs/j1"});
  EXPECT_TRUE(absl::StrContains(r.err, "cancelling jobs/j1 (it stops with a checkpoint)")) << Dump(r);
  EXPECT_TRUE(absl::StrContains(r.err, "jobs/j1 CANCELLED: cancelled by the test\n")) << Dump(r);
  EXPECT_EQ(r.out, "jobs/j1 QUEUED\n");
}

TEST_F(CliTest, CancelAndReport) {
  const v1::Job queued = server_.service().AddJob(JobIn(v1::JOB_STATE_QUEUED), {});
  const v1::Job done = server_.service().AddJob(JobIn(v1::JOB_STATE_SUCCEEDED), {}, Report("text report\n"));
  const Result cancel = RunCli({"cancel", queued.name()}, Env());
  ASSERT_EQ(cancel.exit_code, 0) << Dump(cancel);
  EXPECT_EQ(cancel.out, "jobs/j1 CANCELLED\n");
  const Result again = RunCli({"cancel", queued.name()}, Env());
  EXPECT_EQ(again.exit_code, 1) << Dump(again);
  EXPECT_TRUE(absl::StrContains(again.err, "has already ended")) << Dump(again);

  const Result text = RunCli({"report", "j2"}, Env());
  ASSERT_EQ(text.exit_code, 0) << Dump(text);
  EXPECT_EQ(text.out, "text report\n");
  const Result json = RunCli({"report", done.name(), "--json"}, Env());
  ASSERT_EQ(json.exit_code, 0) << Dump(json);
  EXPECT_FALSE(nlohmann::json::parse(json.out, nullptr, false).is_discarded()) << json.out;
}

TEST_F(CliTest, UnreachableServerExits4WithAHint) {
  const std::string address = absl::StrCat("127.0.0.1:", UnusedPort());
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--server", address, "list"}, {"--server=" + address, "watch", "j1"}}) {
    const Result r = RunCli(args);
    EXPECT_EQ(r.exit_code, 4) << Dump(r);
    EXPECT_TRUE(absl::StrContains(r.err, absl::StrCat("sigmatune: cannot reach the coordinator at ", address, " (")))
        << Dump(r);
    EXPECT_TRUE(absl::StrContains(r.err, "is it running? Set --server or SIGMATUNE_SERVER")) << Dump(r);
  }
}

TEST_F(CliTest, RefusedTokenExits4WithAHint) {
  server_.service().AddJob(JobIn(v1::JOB_STATE_QUEUED), {});
  const Result wrong = RunCli({"get", "j1"}, {{"SIGMATUNE_SERVER", server_.address()}, {"SIGMATUNE_TOKEN", "guess"}});
  EXPECT_EQ(wrong.exit_code, 4) << Dump(wrong);
  EXPECT_TRUE(absl::StrContains(wrong.err, absl::StrCat("the coordinator at ", server_.address(),
                                                        " refused the token (unknown token); set SIGMATUNE_TOKEN or "
                                                        "--token_file")))
      << Dump(wrong);
  const Result none = RunCli({"--server", server_.address(), "get", "j1"});
  EXPECT_EQ(none.exit_code, 4) << Dump(none);
  EXPECT_TRUE(absl::StrContains(none.err, "needs a token")) << Dump(none);
  // --token_file wins over the environment.
  const std::string token = WriteFile("token2.txt", "secret");
  const Result file = RunCli({"--token_file=" + token, "get", "j1"},
                          {{"SIGMATUNE_SERVER", server_.address()}, {"SIGMATUNE_TOKEN", "guess"}});
  EXPECT_EQ(file.exit_code, 0) << Dump(file);
}

TEST_F(CliTest, UsageErrorsExit2) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"frobnicate"}, {"list", "--json"}, {"submit"}, {"get", "a", "b"}, {"list", "--page_size=x"},
           {"--token_file=/nonexistent", "list"}, {"get"}}) {
    const Result r = RunCli(args, Env());
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(args, " ") << "\n" << Dump(r);
    EXPECT_TRUE(absl::StartsWith(r.err, "sigmatune: ")) << Dump(r);
  }
  const Result help = RunCli({"--help"});
  EXPECT_EQ(help.exit_code, 0) << Dump(help);
  EXPECT_TRUE(absl::StrContains(help.out, "usage: sigmatune")) << Dump(help);
  EXPECT_TRUE(server_.service().authorizations().empty());
}

}  // namespace
}  // namespace sigmatune::client
