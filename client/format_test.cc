#include "client/format.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "worker/train/progress_proto.h"

namespace sigmatune::client {
namespace {

v1::Job RunningJob() {
  v1::Job job;
  job.set_name("jobs/abc");
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_group("g-2");
  job.set_attempt(1);
  job.set_restarts_left(3);
  job.mutable_create_time()->set_seconds(1700000000);
  v1::Progress* p = job.mutable_progress();
  p->set_phase(v1::JOB_PHASE_TRAIN);
  p->set_step(12);
  p->set_total_steps(100);
  v1::Scalar* loss = p->add_scalars();
  loss->set_name("loss");
  loss->set_value(2.314);
  job.mutable_artifacts()->set_output_dir("/data/runs/abc");
  return job;
}

TEST(FormatTest, StateNamesParseBothWays) {
  EXPECT_EQ(StateName(v1::JOB_STATE_CANCELLED), "CANCELLED");
  absl::StatusOr<std::vector<v1::JobState>> states = ParseStates("queued, RUNNING,JOB_STATE_FAILED");
  ASSERT_TRUE(states.ok()) << states.status();
  EXPECT_EQ(*states, (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED}));
  EXPECT_TRUE(ParseStates("")->empty());
  absl::StatusOr<std::vector<v1::JobState>> bad = ParseStates("queued,done");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "unknown job state \"done\"")) << bad.status();
  EXPECT_FALSE(ParseState("unspecified").ok());
}

TEST(FormatTest, ProgressBecomesAProgressEvent) {
  v1::Progress p = RunningJob().progress();
  p.set_elapsed_s(31.5);
  p.mutable_time()->set_seconds(1700000031);
  p.mutable_time()->set_nanos(250000000);
  p.set_message("hello");
  std::optional<train::ProgressEvent> e = train::ProgressFromProto(p);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->phase, train::Phase::kTrain);
  EXPECT_EQ(e->step, 12);
  EXPECT_EQ(e->total_steps, 100);
  EXPECT_DOUBLE_EQ(e->wall_time, 1700000031.25);
  EXPECT_DOUBLE_EQ(e->elapsed_s, 31.5);
  ASSERT_EQ(e->scalars.size(), 1u);
  EXPECT_EQ(e->scalars[0].first, "loss");
  EXPECT_EQ(e->message, "hello");
  EXPECT_FALSE(train::ProgressFromProto(v1::Progress()).has_value());
  for (int phase = v1::JOB_PHASE_LOAD; phase <= v1::JOB_PHASE_DONE; ++phase) {
    EXPECT_EQ(PhaseText(static_cast<v1::JobPhase>(phase)),
              train::PhaseName(*train::PhaseFromProto(static_cast<v1::JobPhase>(phase))));
  }
}

TEST(FormatTest, TableAlignsColumns) {
  v1::Job queued;
  queued.set_name("jobs/longer-name");
  queued.set_state(v1::JOB_STATE_QUEUED);
  const std::string table =
      FormatJobTable({RunningJob(), queued}, absl::FromUnixSeconds(1700000000) + absl::Seconds(192));
  EXPECT_EQ(table,
            "NAME              STATE    PHASE  STEP    AGE\n"
            "jobs/abc          RUNNING  train  12/100  3m12s\n"
            "jobs/longer-name  QUEUED   -      -       -\n");
}

TEST(FormatTest, SummaryListsWhatIsKnown) {
  const std::string summary = FormatJobSummary(RunningJob(), absl::FromUnixSeconds(1700000060));
  EXPECT_TRUE(absl::StrContains(summary, "state:     RUNNING\n")) << summary;
  EXPECT_TRUE(absl::StrContains(summary, "phase:     train step 12/100 (12%)\n")) << summary;
  EXPECT_TRUE(absl::StrContains(summary, "loss:      2.314\n")) << summary;
  EXPECT_TRUE(absl::StrContains(summary, "group:     g-2\n")) << summary;
  EXPECT_TRUE(absl::StrContains(summary, "(1m00s ago)")) << summary;
  EXPECT_TRUE(absl::StrContains(summary, "  output_dir:    /data/runs/abc\n")) << summary;
  EXPECT_FALSE(absl::StrContains(summary, "reason:")) << summary;
}

TEST(FormatTest, JsonUsesProtoFieldNames) {
  absl::StatusOr<std::string> json = MessageToJson(RunningJob());
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_TRUE(absl::StrContains(*json, "\"total_steps\"")) << *json;
  EXPECT_TRUE(absl::StrContains(*json, "\"JOB_STATE_RUNNING\"")) << *json;
  EXPECT_TRUE(absl::EndsWith(*json, "\n"));
}

}  // namespace
}  // namespace sigmatune::client
