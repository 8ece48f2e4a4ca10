// The life of a job as a pure function: (job, input, now) -> (job', event). No I/O, no clock, no
// locks: the coordinator (server/service) applies inputs under its own lock and persists the
// result (server/store) before it acknowledges anything.
//
// States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, and RUNNING -> QUEUED when the group
// running a job is lost (or the coordinator restarted under it) and the job has restarts left;
// it then resumes from its last checkpoint on the next group. Every path ends in a terminal state:
// a lost group with no restarts left fails the job, a lost group after a cancel request cancels it.
//
// The table (anything not listed is FailedPrecondition naming the job, its state and the input):
//   QUEUED   + kAssign(group)       -> RUNNING; attempt += 1; group set; start_time set on the first
//                                      assignment; progress cleared
//   QUEUED   + kCancel(who)         -> CANCELLED; reason "cancelled by <who> while queued"; end_time
//   QUEUED   + kCoordinatorRestart  -> QUEUED (unchanged; the event says it is still queued)
//   RUNNING  + kProgress(p)         -> RUNNING; progress = p (an event carrying p)
//   RUNNING  + kCancel(who)         -> RUNNING; cancel_requested; Effect::kStopGroup (a repeated
//                                      cancel is accepted again and says "already requested")
//   RUNNING  + kResult(SUCCEEDED)   -> SUCCEEDED; metrics, artifacts; end_time
//   RUNNING  + kResult(FAILED, msg) -> FAILED; reason = msg; end_time
//   RUNNING  + kResult(STOPPED)     -> CANCELLED when cancel_requested, else as kGroupLost
//                                      (the group stopped it for its own reasons, e.g. SIGTERM)
//   RUNNING  + kGroupLost(why)      -> CANCELLED when cancel_requested; else QUEUED with
//                                      restarts_left -= 1 when restarts_left > 0 (group cleared,
//                                      cancel_requested false); else FAILED naming why and that
//                                      the last checkpoint in output_dir can be resumed by a new job
//   RUNNING  + kCoordinatorRestart  -> as kGroupLost("the coordinator restarted")
//   terminal + anything             -> FailedPrecondition ("job jobs/x is already SUCCEEDED")
// Every accepted input yields exactly one event: its `state` is the job's new state, `time` is now,
// `message` says what happened in words a user reads (progress events may have an empty message),
// `progress` is set for kProgress; `sequence` and `resume_token` are left for the caller to fill.
// update_time is set to now on every accepted input.
#ifndef SIGMATUNE_SERVER_JOBS_STATE_MACHINE_H_
#define SIGMATUNE_SERVER_JOBS_STATE_MACHINE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "sigmatune/v1/coordinator.pb.h"
#include "sigmatune/v1/worker.pb.h"

namespace sigmatune::server {

struct JobInput {
  enum class Kind { kAssign, kProgress, kCancel, kResult, kGroupLost, kCoordinatorRestart };
  Kind kind = Kind::kProgress;
  std::string group;      // kAssign: the group's id; kGroupLost: the lost group's id
  std::string detail;     // kAssign: e.g. "2 ranks on host-a"; kCancel: who; kGroupLost: why
  v1::Progress progress;  // kProgress
  v1::JobResult result;   // kResult

  static JobInput Assign(std::string group, std::string detail);
  static JobInput ProgressReport(v1::Progress progress);
  static JobInput Cancel(std::string who);
  static JobInput Result(v1::JobResult result);
  static JobInput GroupLost(std::string group, std::string why);
  static JobInput CoordinatorRestart();
};

// What the coordinator must do beyond storing the new job.
enum class Effect {
  kNone,
  kStopGroup,  // send CancelJob to the group running the job
  kSchedule,   // the job is (again) queued: run the scheduler
};

struct JobStep {
  v1::Job job;
  v1::JobEvent event;
  Effect effect = Effect::kNone;
};

bool IsTerminal(v1::JobState state);

// "QUEUED", "RUNNING", ... (without the JOB_STATE_ prefix).
absl::string_view StateName(v1::JobState state);

absl::StatusOr<JobStep> ApplyInput(const v1::Job& job, const JobInput& input, absl::Time now);

// A new QUEUED job: name, tenant, request_id, spec, priority, restarts_left, attempt 0,
// create_time = update_time = now; and its first event ("queued").
JobStep NewJob(std::string name, std::string tenant, std::string request_id, v1::JobSpec spec, int priority,
               int restart_budget, absl::Time now);

}  // namespace sigmatune::server

#endif  // SIGMATUNE_SERVER_JOBS_STATE_MACHINE_H_
