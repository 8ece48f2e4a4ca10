#include "server/jobs/state_machine.h"

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/timestamp.pb.h"
#include "kernels/base/check.h"

namespace sigmatune::server {
namespace {

using v1::Job;
using v1::JobResult;
using v1::JobState;

// absl::Time -> Timestamp: seconds floored, so nanos is always in [0, 1e9).
google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  ST_CHECK(t != absl::InfiniteFuture() && t != absl::InfinitePast()) << "a job time must be finite";
  google::protobuf::Timestamp ts;
  const int64_t seconds = absl::ToUnixSeconds(t);  // rounds toward the infinite past
  ts.set_seconds(seconds);
  ts.set_nanos(static_cast<int32_t>((t - absl::FromUnixSeconds(seconds)) / absl::Nanoseconds(1)));
  return ts;
}

std::string InputName(const JobInput& input) {
  switch (input.kind) {
    case JobInput::Kind::kAssign:
      return absl::StrCat("assignment to group '", input.group, "'");
    case JobInput::Kind::kProgress:
      return "progress";
    case JobInput::Kind::kCancel:
      return absl::StrCat("cancel by '", input.detail, "'");
    case JobInput::Kind::kResult:
      return absl::StrCat("result ", JobResult::Outcome_Name(input.result.outcome()));
    case JobInput::Kind::kGroupLost:
      return absl::StrCat("loss of group '", input.group, "'");
    case JobInput::Kind::kCoordinatorRestart:
      return "coordinator restart";
  }
  return "unknown input";
}

absl::Status Reject(const Job& job, const JobInput& input) {
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(absl::StrFormat("job %s is already %s; it accepts no %s", job.name(),
                                                         StateName(job.state()), InputName(input)));
  }
  return absl::FailedPreconditionError(
      absl::StrFormat("job %s is %s and does not accept %s", job.name(), StateName(job.state()), InputName(input)));
}

// The step every accepted input starts from: the job as it was, updated now.
JobStep Begin(const Job& job, absl::Time now) {
  JobStep step;
  step.job = job;
  *step.job.mutable_update_time() = ToTimestamp(now);
  return step;
}

// Fills the event from the job's new state.
JobStep Finish(JobStep step, absl::Time now, std::string message, Effect effect) {
  step.event.set_state(step.job.state());
  *step.event.mutable_time() = ToTimestamp(now);
  step.event.set_message(std::move(message));
  step.effect = effect;
  return step;
}

JobStep EndAs(JobStep step, JobState state, absl::Time now, std::string message) {
  step.job.set_state(state);
  *step.job.mutable_end_time() = ToTimestamp(now);
  return Finish(std::move(step), now, std::move(message), Effect::kNone);
}

// RUNNING and its group is gone (lost, stopped on its own, or the coordinator restarted): cancelled
// when a cancel was requested, else requeued while restarts are left, else failed.
JobStep LoseGroup(const Job& job, absl::string_view why, absl::Time now) {
  JobStep step = Begin(job, now);
  const std::string lost = absl::StrFormat("group '%s' was lost (%s)", job.group(), why);
  if (job.cancel_requested()) {
    if (step.job.reason().empty()) step.job.set_reason("cancelled on request");
    return EndAs(std::move(step), v1::JOB_STATE_CANCELLED, now,
                 absl::StrCat("cancelled: ", lost, " after the cancel request"));
  }
  if (job.restarts_left() > 0) {
    step.job.set_state(v1::JOB_STATE_QUEUED);
    step.job.set_restarts_left(job.restarts_left() - 1);
    step.job.clear_group();
    step.job.set_cancel_requested(false);
    std::string message = absl::StrFormat("%s; queued again to resume from its last checkpoint (%d restarts left)",
                                          lost, step.job.restarts_left());
    return Finish(std::move(step), now, std::move(message), Effect::kSchedule);
  }
  const std::string where =
      job.spec().output_dir().empty() ? "its output directory" : absl::StrCat("'", job.spec().output_dir(), "'");
  step.job.set_reason(absl::StrFormat(
      "%s and the job has no restarts left; the last checkpoint in %s can be resumed by a new job", lost, where));
  std::string message = absl::StrCat("failed: ", step.job.reason());
  return EndAs(std::move(step), v1::JOB_STATE_FAILED, now, std::move(message));
}

absl::StatusOr<JobStep> FromQueued(const Job& job, const JobInput& input, absl::Time now) {
  switch (input.kind) {
    case JobInput::Kind::kAssign: {
      if (input.group.empty()) {
        return absl::InvalidArgumentError(absl::StrFormat("job %s: an assignment needs a group", job.name()));
      }
      JobStep step = Begin(job, now);
      step.job.set_state(v1::JOB_STATE_RUNNING);
      step.job.set_attempt(job.attempt() + 1);
      step.job.set_group(input.group);
      if (!job.has_start_time()) *step.job.mutable_start_time() = ToTimestamp(now);
      step.job.clear_progress();
      std::string message = absl::StrFormat("assigned to group %s", input.group);
      if (!input.detail.empty()) absl::StrAppend(&message, " (", input.detail, ")");
      absl::StrAppend(&message, ", attempt ", step.job.attempt());
      if (step.job.attempt() > 1) absl::StrAppend(&message, ", resuming from its last checkpoint");
      return Finish(std::move(step), now, std::move(message), Effect::kNone);
    }
    case JobInput::Kind::kCancel: {
      JobStep step = Begin(job, now);
      step.job.set_reason(absl::StrFormat("cancelled by %s while queued", input.detail));
      std::string message = step.job.reason();
      return EndAs(std::move(step), v1::JOB_STATE_CANCELLED, now, std::move(message));
    }
    case JobInput::Kind::kCoordinatorRestart:
      // Nothing changes, but the scheduler of the new coordinator must see the job.
      return Finish(Begin(job, now), now, "still queued after a coordinator restart", Effect::kSchedule);
    case JobInput::Kind::kProgress:
    case JobInput::Kind::kResult:
    case JobInput::Kind::kGroupLost:
      break;
  }
  return Reject(job, input);
}

absl::StatusOr<JobStep> FromRunning(const Job& job, const JobInput& input, absl::Time now) {
  switch (input.kind) {
    case JobInput::Kind::kProgress: {
      JobStep step = Begin(job, now);
      *step.job.mutable_progress() = input.progress;
      *step.event.mutable_progress() = input.progress;
      return Finish(std::move(step), now, "", Effect::kNone);
    }
    case JobInput::Kind::kCancel: {
      JobStep step = Begin(job, now);
      std::string message;
      if (job.cancel_requested()) {
        message = absl::StrFormat("cancel already requested (asked again by %s); stopping group %s", input.detail,
                                  job.group());
      } else {
        step.job.set_cancel_requested(true);
        // Kept for the CANCELLED job ("CANCELLED: by whom").
        step.job.set_reason(absl::StrFormat("cancelled by %s while running", input.detail));
        message = absl::StrFormat("cancel requested by %s; stopping group %s", input.detail, job.group());
      }
      return Finish(std::move(step), now, std::move(message), Effect::kStopGroup);
    }
    case JobInput::Kind::kResult: {
      const JobResult& result = input.result;
      switch (result.outcome()) {
        case JobResult::OUTCOME_SUCCEEDED: {
          JobStep step = Begin(job, now);
          *step.job.mutable_metrics() = result.metrics();
          *step.job.mutable_artifacts() = result.artifacts();
          step.job.clear_reason();  // a cancel request that came too late
          std::string message = "succeeded";
          if (!result.message().empty()) absl::StrAppend(&message, ": ", result.message());
          return EndAs(std::move(step), v1::JOB_STATE_SUCCEEDED, now, std::move(message));
        }
        case JobResult::OUTCOME_FAILED: {
          JobStep step = Begin(job, now);
          step.job.set_reason(result.message().empty()
                                  ? absl::StrFormat("group %s reported a failure without a message", job.group())
                                  : result.message());
          std::string message = absl::StrCat("failed: ", step.job.reason());
          return EndAs(std::move(step), v1::JOB_STATE_FAILED, now, std::move(message));
        }
        case JobResult::OUTCOME_STOPPED: {
          if (job.cancel_requested()) {
            JobStep step = Begin(job, now);
            if (step.job.reason().empty()) step.job.set_reason("cancelled on request");
            return EndAs(std::move(step), v1::JOB_STATE_CANCELLED, now,
                         absl::StrFormat("cancelled: group %s stopped the job", job.group()));
          }
          std::string why = "the group stopped the job";
          if (!result.message().empty()) absl::StrAppend(&why, ": ", result.message());
          return LoseGroup(job, why, now);
        }
        default:
          break;
      }
      break;
    }
    case JobInput::Kind::kGroupLost:
      // A loss reported for another group than the job's is stale: the job has moved on.
      if (!input.group.empty() && input.group != job.group()) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "job %s is RUNNING on group '%s', not on the lost group '%s'", job.name(), job.group(), input.group));
      }
      return LoseGroup(job, input.detail.empty() ? "no reason given" : input.detail, now);
    case JobInput::Kind::kCoordinatorRestart:
      return LoseGroup(job, "the coordinator restarted", now);
    case JobInput::Kind::kAssign:
      break;
  }
  return Reject(job, input);
}

}  // namespace

JobInput JobInput::Assign(std::string group, std::string detail) {
  JobInput input;
  input.kind = Kind::kAssign;
  input.group = std::move(group);
  input.detail = std::move(detail);
  return input;
}

JobInput JobInput::ProgressReport(v1::Progress progress) {
  JobInput input;
  input.kind = Kind::kProgress;
  input.progress = std::move(progress);
  return input;
}

JobInput JobInput::Cancel(std::string who) {
  JobInput input;
  input.kind = Kind::kCancel;
  input.detail = std::move(who);
  return input;
}

JobInput JobInput::Result(v1::JobResult result) {
  JobInput input;
  input.kind = Kind::kResult;
  input.result = std::move(result);
  return input;
}

JobInput JobInput::GroupLost(std::string group, std::string why) {
  JobInput input;
  input.kind = Kind::kGroupLost;
  input.group = std::move(group);
  input.detail = std::move(why);
  return input;
}

JobInput JobInput::CoordinatorRestart() {
  JobInput input;
  input.kind = Kind::kCoordinatorRestart;
  return input;
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

absl::string_view StateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED:
      return "QUEUED";
    case v1::JOB_STATE_RUNNING:
      return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED:
      return "SUCCEEDED";
    case v1::JOB_STATE_FAILED:
      return "FAILED";
    case v1::JOB_STATE_CANCELLED:
      return "CANCELLED";
    default:
      return "UNSPECIFIED";
  }
}

absl::StatusOr<JobStep> ApplyInput(const v1::Job& job, const JobInput& input, absl::Time now) {
  switch (job.state()) {
    case v1::JOB_STATE_QUEUED:
      return FromQueued(job, input, now);
    case v1::JOB_STATE_RUNNING:
      return FromRunning(job, input, now);
    default:
      return Reject(job, input);
  }
}

JobStep NewJob(std::string name, std::string tenant, std::string request_id, v1::JobSpec spec, int priority,
               int restart_budget, absl::Time now) {
  ST_CHECK_GE(restart_budget, 0) << "for job " << name;
  JobStep step;
  Job& job = step.job;
  job.set_name(std::move(name));
  job.set_tenant(std::move(tenant));
  job.set_request_id(std::move(request_id));
  *job.mutable_spec() = std::move(spec);
  job.set_state(v1::JOB_STATE_QUEUED);
  job.set_priority(priority);
  job.set_attempt(0);
  job.set_restarts_left(restart_budget);
  *job.mutable_create_time() = ToTimestamp(now);
  *job.mutable_update_time() = ToTimestamp(now);
  return Finish(std::move(step), now,
                absl::StrFormat("queued (priority %d, %d restarts allowed)", priority, restart_budget),
                Effect::kSchedule);
}

}  // namespace sigmatune::server
