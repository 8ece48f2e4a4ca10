#include "client/job_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/fake_job_service.h"
#include "gtest/gtest.h"

namespace sigmatune::client {
namespace {

using testing::FakeCoordinator;
using testing::TrainingScript;
using testing::WatchScript;

// A loopback port nothing listens on (bound and released).
int UnusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::unique_ptr<JobClient> MakeClient(const std::string& address, const std::string& token) {
  JobClientOptions options;
  options.token = token;
  options.reconnect_backoff = absl::Milliseconds(10);
  options.reconnect_backoff_max = absl::Milliseconds(50);
  options.reconnect_timeout = absl::Seconds(20);
  absl::StatusOr<std::unique_ptr<JobClient>> client = JobClient::Create(address, options);
  EXPECT_TRUE(client.ok()) << client.status();
  return std::move(*client);
}

v1::Job NewJob(v1::JobState state) {
  v1::Job job;
  job.set_state(state);
  job.mutable_spec()->set_base_model("models/tiny");
  return job;
}

// Every response of a watch: "job:STATE" or "event:SEQUENCE".
struct Recorded {
  std::vector<std::string> responses;
  std::vector<absl::Status> reconnects;
};

absl::Status WatchAll(JobClient& client, const std::string& name, Recorded* recorded) {
  return client.Watch(
      name,
      [recorded](const v1::WatchJobResponse& r) {
        recorded->responses.push_back(r.has_job() ? absl::StrCat("job:", v1::JobState_Name(r.job().state()))
                                                  : absl::StrCat("event:", r.event().sequence()));
        return WatchControl::kContinue;
      },
      [recorded](const absl::Status& why, absl::Duration) { recorded->reconnects.push_back(why); });
}

std::vector<std::string> Events(int first, int last) {
  std::vector<std::string> out;
  for (int i = first; i <= last; ++i) out.push_back(absl::StrCat("event:", i));
  return out;
}

TEST(JobNameTest, AddsThePrefixOnce) {
  EXPECT_EQ(JobName("abc"), "jobs/abc");
  EXPECT_EQ(JobName("jobs/abc"), "jobs/abc");
}

TEST(JobClientTest, SendsTheBearerToken) {
  FakeCoordinator server("secret");
  const v1::Job job = server.service().AddJob(NewJob(v1::JOB_STATE_RUNNING), {});
  std::unique_ptr<JobClient> client = MakeClient(server.address(), "secret");
  absl::StatusOr<v1::Job> got = client->Get(job.name());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->state(), v1::JOB_STATE_RUNNING);
  // "j1" names the same job as "jobs/j1".
  ASSERT_TRUE(client->Get(absl::StripPrefix(job.name(), "jobs/")).ok());
  EXPECT_EQ(server.service().authorizations(), (std::vector<std::string>{"Bearer secret", "Bearer secret"}));
}

TEST(JobClientTest, NoTokenSendsNoMetadata) {
  FakeCoordinator server("");
  const v1::Job job = server.service().AddJob(NewJob(v1::JOB_STATE_QUEUED), {});
  std::unique_ptr<JobClient> client = MakeClient(server.address(), "");
  ASSERT_TRUE(client->Get(job.name()).ok());
  EXPECT_EQ(server.service().authorizations(), std::vector<std::string>{""});
}

TEST(JobClientTest, RefusedTokenSaysHowToSetOne) {
  FakeCoordinator server("secret");
  const v1::Job job = server.service().AddJob(NewJob(v1::JOB_STATE_QUEUED), {});
  absl::StatusOr<v1::Job> wrong = MakeClient(server.address(), "wrong")->Get(job.name());
  ASSERT_TRUE(absl::IsUnauthenticated(wrong.status())) << wrong.status();
  EXPECT_EQ(wrong.status().message(),
            absl::StrCat("the coordinator at ", server.address(),
                         " refused the token (unknown token); set SIGMATUNE_TOKEN or --token_file"));
  absl::StatusOr<v1::Job> none = MakeClient(server.address(), "")->Get(job.name());
  ASSERT_TRUE(absl::IsUnauthenticated(none.status())) << none.status();
  EXPECT_TRUE(absl::StrContains(none.status().message(), "needs a token (unknown token)")) << none.status();
}

TEST(JobClientTest, UnreachableServerSaysWhereItLooked) {
  const std::string address = absl::StrCat("127.0.0.1:", UnusedPort());
  std::unique_ptr<JobClient> client = MakeClient(address, "");
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::Job> job = client->Get("jobs/x");
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));  // fails fast, no wait for the deadline
  ASSERT_TRUE(absl::IsUnavailable(job.status())) << job.status();
  const std::string message(job.status().message());
  EXPECT_TRUE(absl::StartsWith(message, absl::StrCat("cannot reach the coordinator at ", address, " ("))) << message;
  EXPECT_TRUE(absl::EndsWith(message, "); is it running? Set --server or SIGMATUNE_SERVER")) << message;
  // A watch whose first stream fails reports it at once.
  Recorded recorded;
  const absl::Status watched = WatchAll(*client, "jobs/x", &recorded);
  EXPECT_TRUE(absl::IsUnavailable(watched)) << watched;
  EXPECT_TRUE(recorded.reconnects.empty());
}

TEST(JobClientTest, SubmitRetriesOnceWithTheSameRequestId) {
  FakeCoordinator server("");
  std::unique_ptr<JobClient> client = MakeClient(server.address(), "");
  v1::JobSpec spec;
  spec.set_base_model("models/tiny");
  server.service().FailNextCreates(1);
  absl::StatusOr<v1::Job> job = client->Submit(spec, "req-1", 5);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job->priority(), 5);
  std::vector<v1::CreateJobRequest> requests = server.service().create_requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].request_id(), "req-1");
  EXPECT_EQ(requests[1].request_id(), "req-1");

  // Only once: a second UNAVAILABLE is the caller's (the channel is connected: "is unavailable").
  server.service().FailNextCreates(2);
  absl::StatusOr<v1::Job> failed = client->Submit(spec, "req-2", 0);
  ASSERT_TRUE(absl::IsUnavailable(failed.status())) << failed.status();
  EXPECT_TRUE(absl::StrContains(failed.status().message(), "is unavailable (the job store failed)"))
      << failed.status();
  EXPECT_EQ(server.service().create_requests().size(), 4u);

  // Without a request id a retry could create the job twice: none.
  server.service().FailNextCreates(1);
  EXPECT_FALSE(client->Submit(spec, "", 0).ok());
  EXPECT_EQ(server.service().create_requests().size(), 5u);
}

TEST(JobClientTest, InvalidArgumentPassesTheServersMessage) {
  FakeCoordinator server("");
  absl::StatusOr<v1::Job> job = MakeClient(server.address(), "")->Submit(v1::JobSpec(), "r", 0);
  ASSERT_TRUE(absl::IsInvalidArgument(job.status())) << job.status();
  EXPECT_EQ(job.status().message(),
            "1 problem in the job spec:\n  base_model: required; give a model directory or .gguf file");
}

TEST(JobClientTest, CancelAndReport) {
  FakeCoordinator server("");
  const v1::Job queued = server.service().AddJob(NewJob(v1::JOB_STATE_QUEUED), {});
  v1::JobReport report;
  report.set_text("learned: arithmetic\n");
  const v1::Job done = server.service().AddJob(NewJob(v1::JOB_STATE_SUCCEEDED), {}, report);
  std::unique_ptr<JobClient> client = MakeClient(server.address(), "");
  absl::StatusOr<v1::Job> cancelled = client->Cancel(queued.name());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(absl::IsFailedPrecondition(client->Cancel(done.name()).status()));
  absl::StatusOr<v1::JobReport> got = client->Report(done.name());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->text(), "learned: arithmetic\n");
  EXPECT_TRUE(absl::IsFailedPrecondition(client->Report(queued.name()).status()));
  EXPECT_TRUE(absl::IsNotFound(client->Get("jobs/missing").status()));
}

TEST(JobClientTest, WatchDeliversTheJobThenEveryEvent) {
  FakeCoordinator server("");
  WatchScript script = TrainingScript(3, v1::JOB_STATE_SUCCEEDED, "done");
  const int n = static_cast<int>(script.events.size());
  const v1::Job job = server.service().AddJob(NewJob(v1::JOB_STATE_SUCCEEDED), script);
  Recorded recorded;
  ASSERT_TRUE(WatchAll(*MakeClient(server.address(), ""), job.name(), &recorded).ok());
  std::vector<std::string> expected = {"job:JOB_STATE_QUEUED"};
  for (const std::string& e : Events(1, n)) expected.push_back(e);
  EXPECT_EQ(recorded.responses, expected);
  EXPECT_TRUE(recorded.reconnects.empty());
  EXPECT_EQ(server.service().watch_tokens(), std::vector<std::string>{""});
}

TEST(JobClientTest, WatchReconnectsWithTheLastResumeToken) {
  FakeCoordinator server("tok");
  WatchScript script = TrainingScript(4, v1::JOB_STATE_SUCCEEDED, "done");
  script.break_after = 3;
  const int n = static_cast<int>(script.events.size());
  const v1::Job job = server.service().AddJob(NewJob(v1::JOB_STATE_SUCCEEDED), script);
  Recorded recorded;
  ASSERT_TRUE(WatchAll(*MakeClient(server.address(), "tok"), job.name(), &recorded).ok());
  std::vector<std::string> expected = {"job:JOB_STATE_QUEUED"};
  for (const std::string& e : Events(1, n)) expected.push_back(e);  // each event once
  EXPECT_EQ(recorded.responses, expected);
  ASSERT_EQ(recorded.reconnects.size(), 1u);
  EXPECT_TRUE(absl::IsUnavailable(recorded.reconnects[0])) << recorded.reconnects[0];
  EXPECT_EQ(server.service().watch_tokens(), (std::vector<std::string>{"", "tok-3"}));
  for (const std::string& a : server.service().authorizations()) EXPECT_EQ(a, "Bearer tok");
}

TEST(JobClientTest, WatchStartsAfreshWhenTheTokenIsOutOfRange) {
  FakeCoordinator server("");
  WatchScript script = TrainingScript(2, v1::JOB_STATE_FAILED, "rank 0 died");
  script.break_after = 2;
  script.out_of_range_times = 1;
  const int n = static_cast<int>(script.events.size());
  const v1::Job job = server.service().AddJob(NewJob(v1::JOB_STATE_FAILED), script);
  Recorded recorded;
  ASSERT_TRUE(WatchAll(*MakeClient(server.address(), ""), job.name(), &recorded).ok());
  std::vector<std::string> expected = {"job:JOB_STATE_QUEUED", "event:1", "event:2", "job:JOB_STATE_QUEUED"};
  for (const std::string& e : Events(1, n)) expected.push_back(e);
  EXPECT_EQ(recorded.responses, expected);
  ASSERT_EQ(recorded.reconnects.size(), 2u);
  EXPECT_TRUE(absl::IsUnavailable(recorded.reconnects[0])) << recorded.reconnects[0];
  EXPECT_TRUE(absl::IsOutOfRange(recorded.reconnects[1])) << recorded.reconnects[1];
  EXPECT_EQ(server.service().watch_tokens(), (std::vector<std::string>{"", "tok-2", ""}));
}

TEST(JobClientTest, WatchStopsWhenTheCallbackSaysSo) {
  FakeCoordinator server("");
  const v1::Job job =
      server.service().AddJob(NewJob(v1::JOB_STATE_SUCCEEDED), TrainingScript(5, v1::JOB_STATE_SUCCEEDED, ""));
  int seen = 0;
  const absl::Status watched = MakeClient(server.address(), "")->Watch(job.name(), [&seen](const auto&) {
    return ++seen == 2 ? WatchControl::kStop : WatchControl::kContinue;
  });
  EXPECT_TRUE(watched.ok()) << watched;
  EXPECT_EQ(seen, 2);
}

TEST(JobClientTest, WatchOfAMissingJobIsNotFound) {
  FakeCoordinator server("");
  Recorded recorded;
  const absl::Status watched = WatchAll(*MakeClient(server.address(), ""), "nope", &recorded);
  EXPECT_TRUE(absl::IsNotFound(watched)) << watched;
  EXPECT_EQ(watched.message(), "jobs/nope not found");
}

TEST(JobClientTest, UnreadableTlsRootsFailCreate) {
  JobClientOptions options;
  options.tls_ca_path = "/nonexistent/ca.pem";
  absl::StatusOr<std::unique_ptr<JobClient>> client = JobClient::Create("127.0.0.1:1", options);
  ASSERT_TRUE(absl::IsFailedPrecondition(client.status())) << client.status();
  EXPECT_TRUE(absl::StrContains(client.status().message(), "/nonexistent/ca.pem")) << client.status();
}

}  // namespace
}  // namespace sigmatune::client
