// `sigmatune watch`: follows a job on the terminal until it ends.
//
// Contract:
//  - Progress goes to `err` through worker/train/progress.h's TerminalProgress (a redrawn bar per
//    phase on a TTY, rate-limited plain lines otherwise): step, loss, tokens/s, ETA. State changes
//    and the coordinator's notes ("resumed from step 20") are lines of their own; a broken stream
//    that is being re-opened is one line too.
//  - When the job ends: SUCCEEDED prints the job's report text (GetJobReport) on `out` and returns
//    kOk; FAILED prints "NAME FAILED: <reason>" on `err` and returns kFailed; CANCELLED likewise
//    with kCancelled. An error of the watch itself is printed on `err` and mapped by
//    ExitCodeForStatus (kUnreachable for a lost coordinator or a refused token).
#ifndef SIGMATUNE_CLIENT_WATCH_H_
#define SIGMATUNE_CLIENT_WATCH_H_

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/cli_args.h"
#include "client/job_client.h"
#include "sigmatune/v1/coordinator.pb.h"
#include "worker/train/progress.h"

namespace sigmatune::client {

// Turns watch responses into terminal output (see the contract). Not thread-safe.
class JobWatcher {
 public:
  JobWatcher(std::string name, std::unique_ptr<train::ProgressSink> sink, FILE* err);

  WatchControl OnResponse(const v1::WatchJobResponse& response);
  void OnReconnect(const absl::Status& why, absl::Duration wait);

  // The job's state after the last response (UNSPECIFIED before the first).
  v1::JobState state() const { return state_; }
  // The message of the event that ended the job ("" when none came).
  const std::string& final_message() const { return final_message_; }
  // Flushes the progress output.
  void Flush();

 private:
  void ShowProgress(const v1::Progress& progress, const std::string& message);
  // A line of its own: through the progress sink (so it ends an open progress line first) once a
  // phase has been shown, else printed directly.
  void Note(const std::string& text);
  void Check(const absl::Status& status);

  std::string name_;
  std::unique_ptr<train::ProgressSink> sink_;
  FILE* err_;
  v1::JobState state_ = v1::JOB_STATE_UNSPECIFIED;
  std::optional<train::Phase> phase_;  // of the last progress shown
  double phase_elapsed_s_ = 0;
  std::string final_message_;
  bool sink_failed_ = false;
};

// Watches `name` to its end (see the contract) and returns the exit status.
ExitCode WatchToEnd(JobClient& client, const std::string& name, FILE* out, FILE* err);

// Prints "sigmatune: <message>" on `err` and returns ExitCodeForStatus(status).
ExitCode PrintError(const absl::Status& status, FILE* err);

}  // namespace sigmatune::client

#endif  // SIGMATUNE_CLIENT_WATCH_H_
