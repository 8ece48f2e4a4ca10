#include "server/jobs/state_machine.h"

#include <cstdint>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace sigmatune::server {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;
using v1::Job;
using v1::JobResult;
using v1::JobState;

absl::Time T0() { return absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250); }
absl::Time T1() { return T0() + absl::Minutes(1); }
absl::Time Now() { return T0() + absl::Hours(1) + absl::Nanoseconds(123456789); }

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  ts.set_nanos(static_cast<int32_t>((t - absl::FromUnixSeconds(ts.seconds())) / absl::Nanoseconds(1)));
  return ts;
}

bool Same(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return MessageDifferencer::Equals(a, b);
}

// ---- Fixtures: jobs in each state the table starts from ----

v1::JobSpec Spec() {
  v1::JobSpec spec;
  spec.set_name("q1");
  spec.set_output_dir("/data/out/q1");
  return spec;
}

Job Must(const Job& job, const JobInput& input, absl::Time t) { return ApplyInput(job, input, t).value().job; }

v1::Progress SomeProgress() {
  v1::Progress p;
  p.set_phase(v1::JOB_PHASE_TRAIN);
  p.set_step(7);
  p.set_total_steps(100);
  v1::Scalar* loss = p.add_scalars();
  loss->set_name("loss");
  loss->set_value(1.5);
  p.set_message("step 7");
  return p;
}

JobResult Outcome(JobResult::Outcome outcome, std::string message) {
  JobResult result;
  result.set_outcome(outcome);
  result.set_message(std::move(message));
  if (outcome == JobResult::OUTCOME_SUCCEEDED) {
    v1::Scalar* m = result.add_metrics();
    m->set_name("train/loss");
    m->set_value(0.5);
    result.mutable_artifacts()->set_adapter("/data/out/q1/adapter");
  }
  return result;
}

Job Queued() { return NewJob("jobs/q1", "acme", "r1", Spec(), 5, 2, T0()).job; }
// Queued again after a lost group: it ran once and has a progress from then.
Job Requeued() {
  Job job = Queued();
  job.set_attempt(1);
  job.set_restarts_left(1);
  *job.mutable_start_time() = Ts(T0() + absl::Seconds(5));
  *job.mutable_progress() = SomeProgress();
  return job;
}
Job Running() { return Must(Queued(), JobInput::Assign("g-1", "2 ranks on host-a"), T1()); }
Job RunningCancelRequested() { return Must(Running(), JobInput::Cancel("alice"), T1()); }
Job RunningNoRestarts() {
  Job job = Running();
  job.set_restarts_left(0);
  return job;
}
Job Succeeded() { return Must(Running(), JobInput::Result(Outcome(JobResult::OUTCOME_SUCCEEDED, "")), T1()); }
Job Failed() { return Must(Running(), JobInput::Result(Outcome(JobResult::OUTCOME_FAILED, "bad data")), T1()); }
Job Cancelled() { return Must(Queued(), JobInput::Cancel("alice"), T1()); }

// ---- The table ----

enum class TimeIs { kAsBefore, kNow };
enum class ReasonIs { kAsBefore, kEmpty, kContains };
enum class ProgressIs { kAsBefore, kCleared, kInput };

struct Row {
  Row(std::string name, Job (*start)(), JobInput input)
      : name(std::move(name)), start(start), input(std::move(input)) {}

  Row& Rejects(absl::StatusCode c, std::vector<std::string> fragments) {
    code = c;
    error_has = std::move(fragments);
    return *this;
  }
  Row& To(JobState s, Effect e) {
    state = s;
    effect = e;
    return *this;
  }
  Row& Attempt(int a) { return attempt = a, *this; }
  Row& Restarts(int r) { return restarts_left = r, *this; }
  Row& CancelRequested(bool c) { return cancel_requested = c, *this; }
  Row& Group(std::string g) { return group = std::move(g), *this; }
  Row& Reason(ReasonIs is, std::vector<std::string> fragments = {}) {
    reason = is;
    reason_has = std::move(fragments);
    return *this;
  }
  Row& Message(std::vector<std::string> fragments) { return message_has = std::move(fragments), *this; }
  Row& StartTime(TimeIs t) { return start_time = t, *this; }
  Row& EndTime(TimeIs t) { return end_time = t, *this; }
  Row& ProgressNow(ProgressIs p) { return progress = p, *this; }

  std::string name;
  Job (*start)();
  JobInput input;
  absl::StatusCode code = absl::StatusCode::kOk;
  std::vector<std::string> error_has;
  JobState state = v1::JOB_STATE_UNSPECIFIED;
  Effect effect = Effect::kNone;
  // Unset: as before the input.
  std::optional<int> attempt;
  std::optional<int> restarts_left;
  std::optional<bool> cancel_requested;
  std::optional<std::string> group;
  ReasonIs reason = ReasonIs::kAsBefore;
  std::vector<std::string> reason_has;
  std::vector<std::string> message_has;
  TimeIs start_time = TimeIs::kAsBefore;
  TimeIs end_time = TimeIs::kAsBefore;
  ProgressIs progress = ProgressIs::kAsBefore;
};

// gtest prints a failing row by its name.
void PrintTo(const Row& row, std::ostream* os) { *os << row.name; }

std::vector<JobInput> EveryInput() {
  return {JobInput::Assign("g-2", "1 rank"),
          JobInput::ProgressReport(SomeProgress()),
          JobInput::Cancel("bob"),
          JobInput::Result(Outcome(JobResult::OUTCOME_SUCCEEDED, "")),
          JobInput::GroupLost("g-1", "heartbeats stopped"),
          JobInput::CoordinatorRestart()};
}

std::vector<Row> Rows() {
  constexpr auto kFailedPrecondition = absl::StatusCode::kFailedPrecondition;
  const JobInput lost = JobInput::GroupLost("g-1", "heartbeats stopped");
  const JobInput stopped = JobInput::Result(Outcome(JobResult::OUTCOME_STOPPED, "SIGTERM"));
  const JobInput succeeded = JobInput::Result(Outcome(JobResult::OUTCOME_SUCCEEDED, ""));
  std::vector<Row> rows = {
      // QUEUED
      Row("queued_assign", Queued, JobInput::Assign("g-1", "2 ranks on host-a"))
          .To(v1::JOB_STATE_RUNNING, Effect::kNone)
          .Attempt(1)
          .Group("g-1")
          .StartTime(TimeIs::kNow)
          .ProgressNow(ProgressIs::kCleared)
          .Message({"g-1", "2 ranks on host-a", "attempt 1"}),
      Row("requeued_assign", Requeued, JobInput::Assign("g-2", ""))
          .To(v1::JOB_STATE_RUNNING, Effect::kNone)
          .Attempt(2)
          .Group("g-2")
          .ProgressNow(ProgressIs::kCleared)
          .Message({"g-2", "attempt 2", "resuming"}),
      Row("queued_assign_without_group", Queued, JobInput::Assign("", "2 ranks"))
          .Rejects(absl::StatusCode::kInvalidArgument, {"jobs/q1", "group"}),
      Row("queued_cancel", Queued, JobInput::Cancel("alice"))
          .To(v1::JOB_STATE_CANCELLED, Effect::kNone)
          .Reason(ReasonIs::kContains, {"cancelled by alice while queued"})
          .EndTime(TimeIs::kNow)
          .Message({"alice"}),
      Row("queued_coordinator_restart", Queued, JobInput::CoordinatorRestart())
          .To(v1::JOB_STATE_QUEUED, Effect::kSchedule)
          .Message({"still queued"}),
      Row("queued_progress", Queued, JobInput::ProgressReport(SomeProgress()))
          .Rejects(kFailedPrecondition, {"jobs/q1", "QUEUED", "progress"}),
      Row("queued_result", Queued, succeeded).Rejects(kFailedPrecondition, {"jobs/q1", "QUEUED", "OUTCOME_SUCCEEDED"}),
      Row("queued_group_lost", Queued, lost).Rejects(kFailedPrecondition, {"jobs/q1", "QUEUED", "g-1"}),
      // RUNNING
      Row("running_assign", Running, JobInput::Assign("g-2", "")).Rejects(kFailedPrecondition, {"RUNNING", "g-2"}),
      Row("running_progress", Running, JobInput::ProgressReport(SomeProgress()))
          .To(v1::JOB_STATE_RUNNING, Effect::kNone)
          .ProgressNow(ProgressIs::kInput),
      Row("running_cancel", Running, JobInput::Cancel("alice"))
          .To(v1::JOB_STATE_RUNNING, Effect::kStopGroup)
          .CancelRequested(true)
          .Reason(ReasonIs::kContains, {"alice"})
          .Message({"alice", "g-1"}),
      Row("running_cancel_again", RunningCancelRequested, JobInput::Cancel("bob"))
          .To(v1::JOB_STATE_RUNNING, Effect::kStopGroup)
          .Message({"already requested", "bob"}),
      Row("running_result_succeeded", Running, succeeded)
          .To(v1::JOB_STATE_SUCCEEDED, Effect::kNone)
          .Reason(ReasonIs::kEmpty)
          .EndTime(TimeIs::kNow)
          .Message({"succeeded"}),
      Row("cancel_requested_result_succeeded", RunningCancelRequested, succeeded)
          .To(v1::JOB_STATE_SUCCEEDED, Effect::kNone)
          .Reason(ReasonIs::kEmpty)
          .EndTime(TimeIs::kNow)
          .Message({"succeeded"}),
      Row("running_result_failed", Running, JobInput::Result(Outcome(JobResult::OUTCOME_FAILED, "loss diverged")))
          .To(v1::JOB_STATE_FAILED, Effect::kNone)
          .Reason(ReasonIs::kContains, {"loss diverged"})
          .EndTime(TimeIs::kNow)
          .Message({"loss diverged"}),
      Row("running_result_failed_silently", Running, JobInput::Result(Outcome(JobResult::OUTCOME_FAILED, "")))
          .To(v1::JOB_STATE_FAILED, Effect::kNone)
          .Reason(ReasonIs::kContains, {"g-1", "without a message"})
          .EndTime(TimeIs::kNow)
          .Message({"failed"}),
      Row("cancel_requested_result_stopped", RunningCancelRequested, stopped)
          .To(v1::JOB_STATE_CANCELLED, Effect::kNone)
          .EndTime(TimeIs::kNow)
          .Message({"g-1", "stopped"}),
      Row("running_result_stopped", Running, stopped)
          .To(v1::JOB_STATE_QUEUED, Effect::kSchedule)
          .Restarts(1)
          .Group("")
          .Message({"g-1", "SIGTERM", "1 restarts left"}),
      Row("no_restarts_result_stopped", RunningNoRestarts, stopped)
          .To(v1::JOB_STATE_FAILED, Effect::kNone)
          .EndTime(TimeIs::kNow)
          .Reason(ReasonIs::kContains, {"SIGTERM", "no restarts left", "/data/out/q1", "new job"})
          .Message({"SIGTERM"}),
      Row("running_result_unspecified", Running, JobInput::Result(JobResult()))
          .Rejects(kFailedPrecondition, {"jobs/q1", "RUNNING", "OUTCOME_UNSPECIFIED"}),
      Row("running_group_lost", Running, lost)
          .To(v1::JOB_STATE_QUEUED, Effect::kSchedule)
          .Restarts(1)
          .Group("")
          .CancelRequested(false)
          .Message({"g-1", "heartbeats stopped", "1 restarts left"}),
      Row("running_group_lost_unnamed", Running, JobInput::GroupLost("", "stream ended"))
          .To(v1::JOB_STATE_QUEUED, Effect::kSchedule)
          .Restarts(1)
          .Group("")
          .Message({"g-1", "stream ended"}),
      Row("running_other_group_lost", Running, JobInput::GroupLost("g-9", "stale"))
          .Rejects(kFailedPrecondition, {"jobs/q1", "g-1", "g-9"}),
      Row("cancel_requested_group_lost", RunningCancelRequested, lost)
          .To(v1::JOB_STATE_CANCELLED, Effect::kNone)
          .EndTime(TimeIs::kNow)
          .Reason(ReasonIs::kContains, {"alice"})
          .Message({"g-1", "heartbeats stopped"}),
      Row("no_restarts_group_lost", RunningNoRestarts, lost)
          .To(v1::JOB_STATE_FAILED, Effect::kNone)
          .EndTime(TimeIs::kNow)
          .Reason(ReasonIs::kContains, {"g-1", "heartbeats stopped", "no restarts left", "/data/out/q1", "new job"})
          .Message({"heartbeats stopped"}),
      Row("running_coordinator_restart", Running, JobInput::CoordinatorRestart())
          .To(v1::JOB_STATE_QUEUED, Effect::kSchedule)
          .Restarts(1)
          .Group("")
          .Message({"coordinator restarted"}),
      Row("no_restarts_coordinator_restart", RunningNoRestarts, JobInput::CoordinatorRestart())
          .To(v1::JOB_STATE_FAILED, Effect::kNone)
          .EndTime(TimeIs::kNow)
          .Reason(ReasonIs::kContains, {"coordinator restarted", "/data/out/q1"})
          .Message({"coordinator restarted"}),
      Row("cancel_requested_coordinator_restart", RunningCancelRequested, JobInput::CoordinatorRestart())
          .To(v1::JOB_STATE_CANCELLED, Effect::kNone)
          .EndTime(TimeIs::kNow)
          .Reason(ReasonIs::kContains, {"alice"})
          .Message({"coordinator restarted"}),
  };
  // Terminal states accept nothing.
  const std::vector<std::string> kinds = {"assign", "progress", "cancel", "result", "group_lost", "restart"};
  const std::vector<std::pair<std::string, Job (*)()>> terminal = {
      {"SUCCEEDED", Succeeded}, {"FAILED", Failed}, {"CANCELLED", Cancelled}};
  for (const auto& [state, start] : terminal) {
    const std::vector<JobInput> inputs = EveryInput();
    for (size_t i = 0; i < inputs.size(); ++i) {
      rows.push_back(Row(absl::StrCat(state, "_", kinds[i]), start, inputs[i])
                         .Rejects(kFailedPrecondition, {"jobs/q1", absl::StrCat("already ", state)}));
    }
  }
  return rows;
}

class TransitionTest : public ::testing::TestWithParam<Row> {};

void ExpectTime(const char* what, const Job& before, const Job& after, TimeIs is) {
  const auto* field = Job::descriptor()->FindFieldByName(what);
  const auto* reflection = Job::GetReflection();
  if (is == TimeIs::kNow) {
    EXPECT_TRUE(reflection->HasField(after, field)) << what;
    EXPECT_TRUE(Same(reflection->GetMessage(after, field), Ts(Now()))) << what;
  } else {
    EXPECT_EQ(reflection->HasField(after, field), reflection->HasField(before, field)) << what;
    EXPECT_TRUE(Same(reflection->GetMessage(after, field), reflection->GetMessage(before, field))) << what;
  }
}

TEST_P(TransitionTest, Row) {
  const Row& row = GetParam();
  const Job before = row.start();
  const absl::StatusOr<JobStep> step = ApplyInput(before, row.input, Now());
  if (row.code != absl::StatusCode::kOk) {
    ASSERT_FALSE(step.ok());
    EXPECT_EQ(step.status().code(), row.code) << step.status();
    for (const std::string& f : row.error_has) EXPECT_THAT(step.status().message(), HasSubstr(f));
    return;
  }
  ASSERT_TRUE(step.ok()) << step.status();
  const Job& job = step->job;
  EXPECT_EQ(job.state(), row.state);
  EXPECT_EQ(step->effect, row.effect);
  EXPECT_EQ(job.attempt(), row.attempt.value_or(before.attempt()));
  EXPECT_EQ(job.restarts_left(), row.restarts_left.value_or(before.restarts_left()));
  EXPECT_EQ(job.cancel_requested(), row.cancel_requested.value_or(before.cancel_requested()));
  EXPECT_EQ(job.group(), row.group.value_or(before.group()));
  switch (row.reason) {
    case ReasonIs::kAsBefore:
      EXPECT_EQ(job.reason(), before.reason());
      break;
    case ReasonIs::kEmpty:
      EXPECT_EQ(job.reason(), "");
      break;
    case ReasonIs::kContains:
      for (const std::string& f : row.reason_has) EXPECT_THAT(job.reason(), HasSubstr(f));
      break;
  }
  ExpectTime("start_time", before, job, row.start_time);
  ExpectTime("end_time", before, job, row.end_time);
  ExpectTime("update_time", before, job, TimeIs::kNow);
  ExpectTime("create_time", before, job, TimeIs::kAsBefore);
  switch (row.progress) {
    case ProgressIs::kAsBefore:
      EXPECT_TRUE(Same(job.progress(), before.progress()));
      break;
    case ProgressIs::kCleared:
      EXPECT_FALSE(job.has_progress());
      break;
    case ProgressIs::kInput:
      EXPECT_TRUE(Same(job.progress(), row.input.progress));
      break;
  }
  // Metrics and artifacts come only from a SUCCEEDED result.
  if (job.state() == v1::JOB_STATE_SUCCEEDED) {
    ASSERT_EQ(job.metrics_size(), 1);
    EXPECT_TRUE(Same(job.metrics(0), row.input.result.metrics(0)));
    EXPECT_TRUE(Same(job.artifacts(), row.input.result.artifacts()));
  } else {
    EXPECT_EQ(job.metrics_size(), before.metrics_size());
    EXPECT_TRUE(Same(job.artifacts(), before.artifacts()));
  }
  // What no input changes.
  EXPECT_EQ(job.name(), before.name());
  EXPECT_EQ(job.tenant(), before.tenant());
  EXPECT_EQ(job.request_id(), before.request_id());
  EXPECT_EQ(job.priority(), before.priority());
  EXPECT_TRUE(Same(job.spec(), before.spec()));
  // The event.
  const v1::JobEvent& event = step->event;
  EXPECT_EQ(event.state(), job.state());
  EXPECT_TRUE(Same(event.time(), Ts(Now())));
  EXPECT_EQ(event.sequence(), 0);
  EXPECT_EQ(event.resume_token(), "");
  if (row.input.kind == JobInput::Kind::kProgress) {
    EXPECT_TRUE(Same(event.progress(), row.input.progress));
  } else {
    EXPECT_FALSE(event.has_progress());
    EXPECT_FALSE(event.message().empty());
    for (const std::string& f : row.message_has) EXPECT_THAT(event.message(), HasSubstr(f));
  }
}

INSTANTIATE_TEST_SUITE_P(Table, TransitionTest, ::testing::ValuesIn(Rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return info.param.name; });

TEST(StateMachineTest, TableCoversEveryStateAndInput) {
  // 6 inputs for each of QUEUED, RUNNING and the 3 terminal states, plus variants.
  EXPECT_GE(Rows().size(), 5u * 6u);
}

TEST(StateMachineTest, NewJobIsQueued) {
  const absl::Time before_epoch = absl::FromUnixNanos(-1);  // floors to -1 s + 999999999 ns
  const JobStep step = NewJob("jobs/n", "acme", "r9", Spec(), 3, 4, before_epoch);
  const Job& job = step.job;
  EXPECT_EQ(job.name(), "jobs/n");
  EXPECT_EQ(job.tenant(), "acme");
  EXPECT_EQ(job.request_id(), "r9");
  EXPECT_TRUE(Same(job.spec(), Spec()));
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.priority(), 3);
  EXPECT_EQ(job.attempt(), 0);
  EXPECT_EQ(job.restarts_left(), 4);
  EXPECT_EQ(job.create_time().seconds(), -1);
  EXPECT_EQ(job.create_time().nanos(), 999999999);
  EXPECT_TRUE(Same(job.update_time(), job.create_time()));
  EXPECT_FALSE(job.has_start_time());
  EXPECT_FALSE(job.has_end_time());
  EXPECT_EQ(step.effect, Effect::kSchedule);
  EXPECT_EQ(step.event.state(), v1::JOB_STATE_QUEUED);
  EXPECT_THAT(step.event.message(), HasSubstr("queued"));
  EXPECT_TRUE(Same(step.event.time(), job.create_time()));
}

TEST(StateMachineTest, StateNames) {
  EXPECT_EQ(StateName(v1::JOB_STATE_QUEUED), "QUEUED");
  EXPECT_EQ(StateName(v1::JOB_STATE_RUNNING), "RUNNING");
  EXPECT_EQ(StateName(v1::JOB_STATE_SUCCEEDED), "SUCCEEDED");
  EXPECT_EQ(StateName(v1::JOB_STATE_FAILED), "FAILED");
  EXPECT_EQ(StateName(v1::JOB_STATE_CANCELLED), "CANCELLED");
  EXPECT_FALSE(IsTerminal(v1::JOB_STATE_QUEUED));
  EXPECT_FALSE(IsTerminal(v1::JOB_STATE_RUNNING));
  EXPECT_TRUE(IsTerminal(v1::JOB_STATE_CANCELLED));
}

// A random input; group losses name the job's group most of the time.
JobInput RandomInput(std::mt19937_64& rng, const Job& job) {
  switch (rng() % 8) {
    case 0:
      return JobInput::Assign(absl::StrCat("g-", rng() % 4), "");
    case 1:
    case 2:
      return JobInput::ProgressReport(SomeProgress());
    case 3:
      return JobInput::Cancel("fuzz");
    case 4:
      return JobInput::Result(Outcome(static_cast<JobResult::Outcome>(rng() % 4), "r"));
    case 5:
    case 6:
      return JobInput::GroupLost(rng() % 4 == 0 ? "g-other" : job.group(), "random loss");
    default:
      return JobInput::CoordinatorRestart();
  }
}

TEST(StateMachineTest, EveryPathEnds) {
  for (uint64_t seed = 1; seed <= 500; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    std::mt19937_64 rng(seed);
    Job job = NewJob("jobs/p", "t", "", Spec(), 0, static_cast<int>(rng() % 4), T0()).job;
    absl::Time now = T0();
    const int prefix = static_cast<int>(rng() % 20);
    for (int i = 0; i < prefix; ++i) {
      now += absl::Seconds(1);
      const JobInput input = RandomInput(rng, job);
      const absl::StatusOr<JobStep> step = ApplyInput(job, input, now);
      if (!step.ok()) {
        EXPECT_TRUE(absl::IsFailedPrecondition(step.status()) || absl::IsInvalidArgument(step.status()));
        continue;
      }
      EXPECT_LE(step->job.restarts_left(), job.restarts_left());
      EXPECT_GE(step->job.restarts_left(), 0);
      EXPECT_GE(step->job.attempt(), job.attempt());
      EXPECT_EQ(step->event.state(), step->job.state());
      EXPECT_TRUE(Same(step->job.update_time(), Ts(now)));
      EXPECT_EQ(IsTerminal(step->job.state()), step->job.has_end_time());
      job = step->job;
    }
    // Now the worst case: every group is lost as soon as it gets the job.
    const int budget = job.restarts_left() + 2;
    int losses = 0;
    while (!IsTerminal(job.state())) {
      ASSERT_LE(losses, budget) << "the job never ends";
      now += absl::Seconds(1);
      const JobInput input = job.state() == v1::JOB_STATE_QUEUED ? JobInput::Assign(absl::StrCat("g-", losses), "")
                                                                 : JobInput::GroupLost(job.group(), "lost again");
      losses += input.kind == JobInput::Kind::kGroupLost;
      const absl::StatusOr<JobStep> step = ApplyInput(job, input, now);
      ASSERT_TRUE(step.ok()) << step.status();
      job = step->job;
    }
    EXPECT_LE(losses, budget);
    EXPECT_TRUE(job.has_end_time());
    for (const JobInput& input : EveryInput()) {
      const absl::StatusOr<JobStep> step = ApplyInput(job, input, now);
      EXPECT_TRUE(absl::IsFailedPrecondition(step.status())) << step.status();
    }
  }
}

}  // namespace
}  // namespace sigmatune::server
