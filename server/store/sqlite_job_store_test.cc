#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "server/store/job_store.h"

namespace sigmatune::server {
namespace {

namespace fs = std::filesystem;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

// A fresh directory under the test's temporary directory.
std::string MakeDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp ? tmp : "/tmp") / "sqlite_job_store_test" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

v1::Job MakeJob(const std::string& name, const std::string& tenant, const std::string& request_id) {
  v1::Job job;
  job.set_name(name);
  job.set_tenant(tenant);
  job.set_request_id(request_id);
  job.set_state(v1::JOB_STATE_QUEUED);
  job.set_priority(3);
  job.set_restarts_left(2);
  job.mutable_spec()->set_output_dir("/data/out/" + name.substr(name.find('/') + 1));
  job.mutable_create_time()->set_seconds(1700000000);
  return job;
}

v1::JobEvent Event(int64_t sequence, const std::string& message) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.set_message(message);
  event.set_state(v1::JOB_STATE_QUEUED);
  event.mutable_time()->set_seconds(1700000000 + sequence);
  return event;
}

std::unique_ptr<SqliteJobStore> MustOpen(const std::string& path) {
  absl::StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

std::vector<std::string> Names(const std::vector<StoredJob>& jobs) {
  std::vector<std::string> names;
  for (const StoredJob& job : jobs) names.push_back(job.job.name());
  return names;
}

std::vector<int64_t> Sequences(const StoredJob& job) {
  std::vector<int64_t> sequences;
  for (const v1::JobEvent& event : job.events) sequences.push_back(event.sequence());
  return sequences;
}

// Runs SQL on a database file directly (to make files of other programs or versions).
void RawExec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK) << (error ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

// First in this file, before any test starts a thread: the child of fork() must be single-threaded.
// The child creates jobs as fast as it can and reports each name once Create returned OK; the
// parent kills it with SIGKILL in the middle and checks that every reported job was kept.
TEST(SqliteJobStoreCrashTest, AcknowledgedCreatesSurviveKill9) {
  const std::string path = MakeDir("crash") + "/jobs.db";
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    absl::StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(path);
    if (!store.ok()) _exit(2);
    for (int i = 0; i < 1000000; ++i) {
      std::string name = absl::StrCat("jobs/c", i);
      if (!(*store)->Create(MakeJob(name, "acme", absl::StrCat("r", i)), Event(1, "queued")).ok()) _exit(3);
      name += '\n';
      if (write(fds[1], name.data(), name.size()) != static_cast<ssize_t>(name.size())) _exit(4);
    }
    _exit(0);
  }
  close(fds[1]);
  std::vector<std::string> acked;
  std::string pending;
  const auto read_some = [&](int timeout_ms) {
    pollfd p = {fds[0], POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return false;
    char buffer[4096];
    const ssize_t n = read(fds[0], buffer, sizeof(buffer));
    if (n <= 0) return false;
    pending.append(buffer, n);
    for (size_t end; (end = pending.find('\n')) != std::string::npos;) {
      acked.push_back(pending.substr(0, end));
      pending.erase(0, end + 1);
    }
    return true;
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(40);
  while (acked.size() < 50 && absl::Now() < deadline && read_some(1000)) {
  }
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  while (read_some(0)) {  // names written before the kill were acknowledged too
  }
  close(fds[0]);
  ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) << "the child ended by itself: " << wstatus;
  ASSERT_GE(acked.size(), 50u);

  std::unique_ptr<SqliteJobStore> store = MustOpen(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::vector<StoredJob>> jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  absl::flat_hash_set<std::string> stored;
  for (const StoredJob& job : *jobs) {
    stored.insert(job.job.name());
    EXPECT_EQ(Sequences(job), std::vector<int64_t>({1}));
  }
  for (const std::string& name : acked) EXPECT_TRUE(stored.contains(name)) << name << " was acknowledged, then lost";
  EXPECT_GE(jobs->size(), acked.size());
}

TEST(SqliteJobStoreTest, CreateAndLoadRoundTrip) {
  std::unique_ptr<SqliteJobStore> store = MustOpen(MakeDir("roundtrip") + "/jobs.db");
  ASSERT_NE(store, nullptr);
  const v1::Job b = MakeJob("jobs/b", "acme", "r1");
  const v1::Job a = MakeJob("jobs/a", "", "");
  ASSERT_TRUE(store->Create(b, Event(1, "queued b")).ok());
  ASSERT_TRUE(store->Create(a, Event(1, "queued a")).ok());
  absl::StatusOr<std::vector<StoredJob>> jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  // Creation order, not name order.
  ASSERT_EQ(Names(*jobs), std::vector<std::string>({"jobs/b", "jobs/a"}));
  EXPECT_TRUE(MessageDifferencer::Equals((*jobs)[0].job, b));
  EXPECT_TRUE(MessageDifferencer::Equals((*jobs)[1].job, a));
  ASSERT_EQ((*jobs)[0].events.size(), 1u);
  EXPECT_TRUE(MessageDifferencer::Equals((*jobs)[0].events[0], Event(1, "queued b")));
  EXPECT_EQ((*jobs)[0].report.text, "");
  EXPECT_EQ((*jobs)[0].report.json, "");
}

TEST(SqliteJobStoreTest, UpdateAppendsDropsAndStoresTheReport) {
  std::unique_ptr<SqliteJobStore> store = MustOpen(MakeDir("update") + "/jobs.db");
  ASSERT_NE(store, nullptr);
  v1::Job job = MakeJob("jobs/u", "acme", "r1");
  ASSERT_TRUE(store->Create(job, Event(1, "queued")).ok());

  JobUpdate update;
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_attempt(1);
  update.job = job;
  update.events = {Event(2, "assigned"), Event(3, "progress")};
  ASSERT_TRUE(store->Update(update).ok());
  absl::StatusOr<std::vector<StoredJob>> jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_TRUE(MessageDifferencer::Equals((*jobs)[0].job, job));
  EXPECT_EQ(Sequences((*jobs)[0]), std::vector<int64_t>({1, 2, 3}));
  EXPECT_EQ((*jobs)[0].events[1].message(), "assigned");

  job.set_state(v1::JOB_STATE_SUCCEEDED);
  update.job = job;
  update.events = {Event(4, "succeeded")};
  update.drop_events_through = 2;
  update.report = JobReportText{"report text", "{\"ok\": true}"};
  ASSERT_TRUE(store->Update(update).ok());
  // No report in this update: the stored one stays.
  update.events.clear();
  update.drop_events_through = 0;
  update.report.reset();
  ASSERT_TRUE(store->Update(update).ok());
  jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ((*jobs)[0].job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Sequences((*jobs)[0]), std::vector<int64_t>({3, 4}));
  EXPECT_EQ((*jobs)[0].report.text, "report text");
  EXPECT_EQ((*jobs)[0].report.json, "{\"ok\": true}");

  // Unknown jobs and changed keys.
  update.job = MakeJob("jobs/nope", "acme", "");
  EXPECT_TRUE(absl::IsNotFound(store->Update(update)));
  update.job = job;
  update.job.set_tenant("other");
  const absl::Status changed = store->Update(update);
  EXPECT_TRUE(absl::IsInvalidArgument(changed)) << changed;
}

TEST(SqliteJobStoreTest, Duplicates) {
  std::unique_ptr<SqliteJobStore> store = MustOpen(MakeDir("duplicates") + "/jobs.db");
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Create(MakeJob("jobs/abc", "acme", "r1"), Event(1, "q")).ok());

  const absl::Status same_name = store->Create(MakeJob("jobs/abc", "other", "r7"), Event(1, "q"));
  EXPECT_TRUE(absl::IsAlreadyExists(same_name)) << same_name;
  EXPECT_THAT(same_name.message(), HasSubstr("jobs/abc"));

  const absl::Status same_request = store->Create(MakeJob("jobs/def", "acme", "r1"), Event(1, "q"));
  EXPECT_TRUE(absl::IsAlreadyExists(same_request)) << same_request;
  EXPECT_THAT(same_request.message(), HasSubstr("request_id 'r1' of tenant 'acme' already created jobs/abc"));

  // Another tenant may use the same request_id; an empty request_id never conflicts.
  EXPECT_TRUE(store->Create(MakeJob("jobs/ghi", "globex", "r1"), Event(1, "q")).ok());
  EXPECT_TRUE(store->Create(MakeJob("jobs/e1", "acme", ""), Event(1, "q")).ok());
  EXPECT_TRUE(store->Create(MakeJob("jobs/e2", "acme", ""), Event(1, "q")).ok());

  absl::StatusOr<std::vector<StoredJob>> jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ(Names(*jobs), std::vector<std::string>({"jobs/abc", "jobs/ghi", "jobs/e1", "jobs/e2"}));
  EXPECT_EQ((*jobs)[0].job.tenant(), "acme");
}

TEST(SqliteJobStoreTest, BadEventSequencesStoreNothing) {
  std::unique_ptr<SqliteJobStore> store = MustOpen(MakeDir("sequence") + "/jobs.db");
  ASSERT_NE(store, nullptr);
  const v1::Job job = MakeJob("jobs/s", "acme", "");
  EXPECT_TRUE(absl::IsInvalidArgument(store->Create(job, Event(0, "no sequence"))));
  ASSERT_TRUE(store->Create(job, Event(1, "queued")).ok());

  // The job row is written before the events are checked: the whole call must roll back.
  JobUpdate update;
  update.job = job;
  update.job.set_state(v1::JOB_STATE_RUNNING);
  update.report = JobReportText{"text", "json"};
  update.drop_events_through = 1;
  for (const std::vector<int64_t>& bad : {std::vector<int64_t>{2, 2}, {3, 2}, {1}, {5, 0}}) {
    update.events.clear();
    for (int64_t sequence : bad) update.events.push_back(Event(sequence, "bad"));
    const absl::Status status = store->Update(update);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
    EXPECT_THAT(status.message(), HasSubstr("jobs/s"));
  }
  absl::StatusOr<std::vector<StoredJob>> jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Sequences((*jobs)[0]), std::vector<int64_t>({1}));
  EXPECT_EQ((*jobs)[0].report.text, "");

  // The store still works after the rollbacks.
  update.events = {Event(2, "good")};
  ASSERT_TRUE(store->Update(update).ok());
  jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ(Sequences((*jobs)[0]), std::vector<int64_t>({2}));
}

TEST(SqliteJobStoreTest, Pragmas) {
  std::unique_ptr<SqliteJobStore> store = MustOpen(MakeDir("pragmas") + "/jobs.db");
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::string> mode = store->JournalMode();
  ASSERT_TRUE(mode.ok()) << mode.status();
  EXPECT_EQ(*mode, "wal");
  absl::StatusOr<int> synchronous = store->Synchronous();
  ASSERT_TRUE(synchronous.ok()) << synchronous.status();
  EXPECT_EQ(*synchronous, 2);  // FULL
}

TEST(SqliteJobStoreTest, ReopenAfterClose) {
  const std::string path = MakeDir("reopen") + "/jobs.db";
  {
    std::unique_ptr<SqliteJobStore> store = MustOpen(path);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Create(MakeJob("jobs/z", "acme", "r1"), Event(1, "q")).ok());
  }
  std::unique_ptr<SqliteJobStore> store = MustOpen(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->path(), path);
  EXPECT_EQ(store->JournalMode().value_or(""), "wal");
  EXPECT_EQ(store->Synchronous().value_or(0), 2);
  ASSERT_TRUE(store->Create(MakeJob("jobs/y", "acme", "r2"), Event(1, "q")).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(store->Create(MakeJob("jobs/x", "acme", "r1"), Event(1, "q"))));
  absl::StatusOr<std::vector<StoredJob>> jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ(Names(*jobs), std::vector<std::string>({"jobs/z", "jobs/y"}));
}

TEST(SqliteJobStoreTest, FilesOfOthersAreRefused) {
  const std::string dir = MakeDir("others");
  const std::string garbage = dir + "/garbage.db";
  {
    std::ofstream out(garbage, std::ios::binary);
    for (int i = 0; i < 200; ++i) out << "this is not a database, just some text\n";
  }
  const std::string foreign = dir + "/foreign.db";
  RawExec(foreign, "CREATE TABLE foo(x INTEGER)");
  const std::string foreign_meta = dir + "/foreign_meta.db";
  RawExec(foreign_meta, "CREATE TABLE meta(k TEXT, v TEXT)");
  const std::string marked = dir + "/marked.db";
  RawExec(marked, "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES('application', 'x')");
  for (const std::string& path : {garbage, foreign, foreign_meta, marked}) {
    const absl::StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(path);
    ASSERT_FALSE(store.ok()) << path;
    EXPECT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
    EXPECT_THAT(store.status().message(), HasSubstr(path));
  }
  // Our own file, from a newer coordinator.
  const std::string newer = dir + "/newer.db";
  ASSERT_NE(MustOpen(newer), nullptr);
  RawExec(newer, "UPDATE meta SET value = '2' WHERE key = 'schema_version'");
  const absl::StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(newer);
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(newer));
  EXPECT_THAT(store.status().message(), HasSubstr("schema_version 2"));
}

TEST(SqliteJobStoreTest, CreatesTheParentDirectory) {
  const std::string path = MakeDir("parent") + "/a/b/c/jobs.db";
  std::unique_ptr<SqliteJobStore> store = MustOpen(path);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(fs::exists(path));
  EXPECT_TRUE(store->Create(MakeJob("jobs/p", "acme", ""), Event(1, "q")).ok());
}

TEST(SqliteJobStoreTest, ConcurrentCallsAreSerialised) {
  std::unique_ptr<SqliteJobStore> store = MustOpen(MakeDir("threads") + "/jobs.db");
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4;
  constexpr int kJobsEach = 10;
  std::vector<std::thread> threads;
  std::vector<absl::Status> failures(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kJobsEach; ++i) {
        const std::string name = absl::StrCat("jobs/t", t, "-", i);
        absl::Status status = store->Create(MakeJob(name, "acme", name), Event(1, "q"));
        JobUpdate update;
        update.job = MakeJob(name, "acme", name);
        update.events = {Event(2, "more")};
        if (status.ok()) status = store->Update(update);
        if (status.ok()) status = store->LoadAll().status();
        if (!status.ok()) failures[t] = status;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : failures) EXPECT_TRUE(status.ok()) << status;
  absl::StatusOr<std::vector<StoredJob>> jobs = store->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ(jobs->size(), static_cast<size_t>(kThreads * kJobsEach));
  for (const StoredJob& job : *jobs) EXPECT_EQ(Sequences(job), std::vector<int64_t>({1, 2}));
}

}  // namespace
}  // namespace sigmatune::server
