#include "client/watch.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/format.h"
#include "worker/train/progress_proto.h"

namespace sigmatune::client {
namespace {

// "RUNNING on group g-2 (attempt 2)", "QUEUED", "RUNNING (cancel requested)".
std::string JobStateText(const v1::Job& job) {
  std::string text = StateName(job.state());
  if (job.state() == v1::JOB_STATE_RUNNING && !job.group().empty()) absl::StrAppend(&text, " on group ", job.group());
  if (job.attempt() > 1) absl::StrAppend(&text, " (attempt ", job.attempt(), ")");
  if (job.cancel_requested() && !IsTerminal(job.state())) text += " (cancel requested)";
  return text;
}

std::string JoinMessages(const std::string& a, const std::string& b) {
  std::vector<std::string> parts;
  if (!a.empty()) parts.push_back(a);
  if (!b.empty() && b != a) parts.push_back(b);
  return absl::StrJoin(parts, "; ");
}

}  // namespace

ExitCode PrintError(const absl::Status& status, FILE* err) {
  std::fprintf(err, "sigmatune: %s\n", std::string(status.message()).c_str());
  std::fflush(err);
  return ExitCodeForStatus(status);
}

JobWatcher::JobWatcher(std::string name, std::unique_ptr<train::ProgressSink> sink, FILE* err)
    : name_(std::move(name)), sink_(std::move(sink)), err_(err) {}

void JobWatcher::Check(const absl::Status& status) {
  if (status.ok() || sink_failed_) return;
  // A terminal that cannot be written (a closed pipe) should not stop the watch: the outcome still
  // decides the exit status.
  sink_failed_ = true;
  std::fprintf(err_, "sigmatune: %s; no more progress is shown\n", std::string(status.message()).c_str());
}

void JobWatcher::Note(const std::string& text) {
  if (phase_.has_value() && !sink_failed_) {
    train::ProgressEvent event;
    event.phase = *phase_;
    event.elapsed_s = phase_elapsed_s_;
    event.message = text;
    Check(sink_->OnEvent(event));
    return;
  }
  std::fprintf(err_, "%s\n", text.c_str());
  std::fflush(err_);
}

void JobWatcher::ShowProgress(const v1::Progress& progress, const std::string& message) {
  std::optional<train::ProgressEvent> event = train::ProgressFromProto(progress);
  if (!event.has_value()) {
    if (!message.empty()) Note(message);
    return;
  }
  event->message = JoinMessages(event->message, message);
  phase_ = event->phase;
  phase_elapsed_s_ = event->elapsed_s;
  if (!sink_failed_) Check(sink_->OnEvent(*event));
}

WatchControl JobWatcher::OnResponse(const v1::WatchJobResponse& response) {
  if (response.has_job()) {
    const v1::Job& job = response.job();
    const bool changed = job.state() != state_;
    state_ = job.state();
    if (IsTerminal(state_)) {
      final_message_ = job.reason();
      return WatchControl::kContinue;
    }
    if (changed) Note(absl::StrCat(job.name().empty() ? name_ : job.name(), " ", JobStateText(job)));
    if (job.has_progress()) ShowProgress(job.progress(), "");
    return WatchControl::kContinue;
  }
  if (!response.has_event()) return WatchControl::kContinue;
  const v1::JobEvent& event = response.event();
  const bool changed = event.state() != v1::JOB_STATE_UNSPECIFIED && event.state() != state_;
  if (event.state() != v1::JOB_STATE_UNSPECIFIED) state_ = event.state();
  if (IsTerminal(state_)) {
    // The final line (with the job's reason) is printed by the caller.
    if (event.has_progress()) ShowProgress(event.progress(), "");
    if (!event.message().empty()) final_message_ = event.message();
    return WatchControl::kContinue;
  }
  if (changed) {
    if (event.has_progress()) ShowProgress(event.progress(), "");
    std::string line = absl::StrCat(name_, " ", StateName(state_));
    if (!event.message().empty()) absl::StrAppend(&line, ": ", event.message());
    Note(line);
  } else if (event.has_progress()) {
    ShowProgress(event.progress(), event.message());
  } else if (!event.message().empty()) {
    Note(event.message());
  }
  return WatchControl::kContinue;
}

void JobWatcher::OnReconnect(const absl::Status& why, absl::Duration wait) {
  if (absl::IsOutOfRange(why)) {
    Note(absl::StrCat("the coordinator no longer has the events missed (", why.message(),
                      "); following the job from now on"));
    return;
  }
  Note(absl::StrCat("lost the watch stream (", why.message(), "); reconnecting in ", absl::FormatDuration(wait)));
}

void JobWatcher::Flush() {
  if (!sink_failed_) Check(sink_->Flush());
  std::fflush(err_);
}

ExitCode WatchToEnd(JobClient& client, const std::string& name, FILE* out, FILE* err) {
  const std::string job_name = JobName(name);
  JobWatcher watcher(job_name, train::TerminalProgress::Create(err), err);
  const absl::Status watched = client.Watch(
      job_name, [&watcher](const v1::WatchJobResponse& r) { return watcher.OnResponse(r); },
      [&watcher](const absl::Status& why, absl::Duration wait) { watcher.OnReconnect(why, wait); });
  watcher.Flush();
  if (!watched.ok()) return PrintError(watched, err);

  const v1::JobState state = watcher.state();
  if (state == v1::JOB_STATE_SUCCEEDED) {
    std::fprintf(err, "%s SUCCEEDED\n", job_name.c_str());
    std::fflush(err);
    absl::StatusOr<v1::JobReport> report = client.Report(job_name);
    if (!report.ok()) {
      std::fprintf(err, "sigmatune: the job succeeded but its report could not be read: %s\n",
                   std::string(report.status().message()).c_str());
      return ExitCode::kOk;
    }
    std::fputs(report->text().c_str(), out);
    if (!report->text().empty() && report->text().back() != '\n') std::fputc('\n', out);
    std::fflush(out);
    return ExitCode::kOk;
  }
  // FAILED or CANCELLED: the job's own reason, else the last event's message.
  std::string reason = watcher.final_message();
  absl::StatusOr<v1::Job> job = client.Get(job_name);
  if (job.ok() && !job->reason().empty()) reason = job->reason();
  std::fprintf(err, "%s %s%s%s\n", job_name.c_str(), StateName(state).c_str(), reason.empty() ? "" : ": ",
               reason.c_str());
  std::fflush(err);
  if (state == v1::JOB_STATE_CANCELLED) return ExitCode::kCancelled;
  return ExitCode::kFailed;
}

}  // namespace sigmatune::client
