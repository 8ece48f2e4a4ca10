// Text the `sigmatune` command prints about jobs: state and phase names, the `list` table, the `get`
// summary, JSON, and the conversion of a coordinator Progress into the worker's ProgressEvent (so the
// terminal renderer of worker/train/progress.h draws it).
//
// Contract: pure functions of their arguments (the current time is a parameter), no I/O.
#ifndef SIGMATUNE_CLIENT_FORMAT_H_
#define SIGMATUNE_CLIENT_FORMAT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"
#include "sigmatune/v1/coordinator.pb.h"
#include "worker/train/progress.h"

namespace sigmatune::client {

// "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"; "UNSPECIFIED".
std::string StateName(v1::JobState state);

// A state as written on the command line: "queued", "QUEUED" or "JOB_STATE_QUEUED".
// InvalidArgument naming the accepted values otherwise.
absl::StatusOr<v1::JobState> ParseState(absl::string_view text);

// A comma-separated list of states ("queued,running"); empty text is the empty list.
absl::StatusOr<std::vector<v1::JobState>> ParseStates(absl::string_view text);

// "train" etc., "-" for JOB_PHASE_UNSPECIFIED.
std::string PhaseText(v1::JobPhase phase);

absl::Time TimeFromProto(const google::protobuf::Timestamp& timestamp);

// The value of the scalar `name` in a progress report, if present.
std::optional<double> FindScalar(const v1::Progress& progress, absl::string_view name);

// The `list` table, columns aligned, one header line then one line per job:
//   NAME        STATE     PHASE  STEP    AGE
//   jobs/abc    RUNNING   train  12/100  3m12s
// STATE ends in "*" while a cancel is requested; STEP is "12/100", "12" without a total, "-"
// without progress; AGE is now - create_time ("-" when unknown).
std::string FormatJobTable(const std::vector<v1::Job>& jobs, absl::Time now);

// The `get` summary: one "key: value" line per known fact (state, phase/step/total, loss, reason,
// attempt, group, metrics, artifacts, times with their age).
std::string FormatJobSummary(const v1::Job& job, absl::Time now);

// protobuf's JSON mapping, 2-space indented, field names as in the .proto (snake_case), ending in a
// newline. Internal (a message that cannot be printed) on failure.
absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message);

}  // namespace sigmatune::client

#endif  // SIGMATUNE_CLIENT_FORMAT_H_
