#include "worker/service/coordinator_link.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"
#include "worker/train/progress_proto.h"

namespace sigmatune::service {
namespace {

// The leader's commands to the other ranks (see the header).
constexpr char kIdleCommand[] = "idle";
constexpr char kRunCommand[] = "run:";
constexpr char kExitCommand[] = "exit";
constexpr char kExitStoppedCommand[] = "exit:stopped";

// Progress kept for a coordinator that does not answer, oldest dropped first.
constexpr size_t kMaxQueuedProgress = 10000;
// Tries of the final report while the coordinator is there (transient errors only).
constexpr int kResultTries = 4;

void Log(const std::string& line) {
  std::fprintf(stderr, "sigmatune-worker: %s\n", line.c_str());
  std::fflush(stderr);
}

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())), ": ",
                      status.error_message());
}

// Worth another try of the same call (the coordinator is restarting or the network is down).
bool Transient(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         status.error_code() == grpc::StatusCode::CANCELLED;
}

}  // namespace

class CoordinatorLink::Impl {
 public:
  Impl(v1::WorkerService::StubInterface* stub, comm::Communicator* comm, std::vector<v1::Device> devices,
       LinkOptions options, const std::atomic<bool>* shutdown)
      : stub_(stub), comm_(comm), devices_(std::move(devices)), options_(std::move(options)), shutdown_(shutdown) {}

  absl::StatusOr<LinkExit> Run();

 private:
  // An assignment received and not started yet.
  struct Pending {
    v1::RunJobAssignment run;
    uint64_t session = 0;
    std::string group_id;
    bool cancelled = false;
  };
  // The job running now (on the thread of Run).
  struct Running {
    std::string job;
    int attempt = 0;
    std::string group_id;
    uint64_t session = 0;
    std::atomic<bool> stop{false};
    std::string stop_reason;             // guarded by mu_
    std::vector<v1::Progress> progress;  // guarded by mu_: not reported yet
    bool urgent = false;                 // guarded by mu_: report now
    bool finishing = false;              // guarded by mu_: RunJob returned
    uint32_t phases_seen = 0;            // guarded by mu_: bit per train::Phase
  };
  class Call;
  class Sink;

  // Waits (mu_ held) until pred() (evaluated under mu_, re-checked at least every 100 ms so it may
  // read atomics) or the timeout; returns pred().
  template <typename Pred>
  bool AwaitFor(absl::Duration timeout, const Pred& pred) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!pred()) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      mu_.AwaitWithTimeout(absl::Condition(&pred), std::min(left, absl::Milliseconds(100)));
    }
    return true;
  }

  absl::Status Tell(std::string command) {
    if (comm_->size() == 1) return absl::OkStatus();
    return comm_->Broadcast(0, &command);
  }

  // Session thread: Join, the assignment stream, rejoin after a loss.
  void SessionLoop();
  absl::StatusOr<v1::JoinResponse> JoinWithRetries();
  void ServeSession(const v1::JoinResponse& joined);
  void HeartbeatLoop(uint64_t session, const std::string& group_id, absl::Duration interval, absl::Duration timeout);
  void HandleAssignment(uint64_t session, const v1::Assignment& assignment);
  void Lose(uint64_t session, const std::string& reason);
  void StopLocked(Running* running, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelRunning(const std::string& job, int attempt, const std::string& reason);

  // Run's thread: one job, its reporter and its result.
  absl::StatusOr<v1::JobResult::Outcome> Serve(const v1::RunJobAssignment& run, Running* running);
  // Runs fn on another thread while this one (the communicator's) sends "idle" every keepalive, so
  // the followers waiting for the next command do not time out; the first failed Tell.
  absl::Status WhileKeepingAlive(const std::function<void()>& fn);
  void ReportLoop(Running* running);
  void SendResult(const std::string& group_id, uint64_t session, const v1::RunJobAssignment& run,
                  std::vector<v1::Progress> progress, const v1::JobResult& result);
  bool Live(uint64_t session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ && session_ == session; }

  v1::WorkerService::StubInterface* const stub_;
  comm::Communicator* const comm_;
  const std::vector<v1::Device> devices_;
  const LinkOptions options_;
  const std::atomic<bool>* const shutdown_;

  absl::Mutex mu_;
  uint64_t session_ ABSL_GUARDED_BY(mu_) = 0;  // counts joins
  bool live_ ABSL_GUARDED_BY(mu_) = false;     // session_ is joined and not lost
  std::string group_id_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* stream_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::set<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mu_);  // in flight, cancelled on close
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);
  Running* running_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Status fatal_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
};

// A client context with the token and a deadline, cancelled when the link closes.
class CoordinatorLink::Impl::Call {
 public:
  Call(Impl* impl, std::optional<absl::Duration> timeout) : impl_(impl) {
    if (!impl->options_.token.empty()) context_.AddMetadata("authorization", "Bearer " + impl->options_.token);
    if (timeout.has_value()) {
      context_.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(*timeout));
    }
    absl::MutexLock lock(&impl->mu_);
    impl->calls_.insert(&context_);
    if (impl->closing_) context_.TryCancel();
  }
  ~Call() {
    absl::MutexLock lock(&impl_->mu_);
    impl_->calls_.erase(&context_);
  }
  grpc::ClientContext* get() { return &context_; }

 private:
  Impl* impl_;
  grpc::ClientContext context_;
};

// The job's progress, queued for the reporter.
class CoordinatorLink::Impl::Sink final : public train::ProgressSink {
 public:
  Sink(Impl* impl, Running* running) : impl_(impl), running_(running) {}
  absl::Status OnEvent(const train::ProgressEvent& event) override {
    v1::Progress progress = train::ProgressToProto(event);
    absl::MutexLock lock(&impl_->mu_);
    std::vector<v1::Progress>& queue = running_->progress;
    if (queue.size() >= kMaxQueuedProgress) queue.erase(queue.begin());
    queue.push_back(std::move(progress));
    // A message, or the first event of a phase (the coordinator shows the phase the job is in).
    const uint32_t phase = 1u << static_cast<int>(event.phase);
    if (!event.message.empty() || (running_->phases_seen & phase) == 0) running_->urgent = true;
    running_->phases_seen |= phase;
    return absl::OkStatus();
  }

 private:
  Impl* impl_;
  Running* running_;
};

absl::StatusOr<LinkExit> CoordinatorLink::Impl::Run() {
  std::thread session([this] { SessionLoop(); });
  absl::Status error;
  bool aborted = false;  // the group was aborted: no command can reach the other ranks
  LinkExit exit = LinkExit::kIdle;
  absl::Time last_command = absl::Now();
  while (true) {
    std::optional<Pending> next;
    std::unique_ptr<Running> running;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !fatal_.ok() || shutdown_->load() || !pending_.empty();
      };
      AwaitFor(std::max(absl::ZeroDuration(), options_.keepalive - (absl::Now() - last_command)), ready);
      if (!fatal_.ok()) {
        error = fatal_;
        break;
      }
      if (shutdown_->load()) break;
      if (!pending_.empty()) {
        next = std::move(pending_.front());
        pending_.pop_front();
        if (!next->cancelled && Live(next->session)) {
          // Set under the same lock as the pop, so a loss of the session from now on stops it.
          running = std::make_unique<Running>();
          running->job = next->run.job();
          running->attempt = next->run.attempt();
          running->group_id = next->group_id;
          running->session = next->session;
          running_ = running.get();
        }
      }
    }
    if (running != nullptr) {
      absl::StatusOr<v1::JobResult::Outcome> outcome = Serve(next->run, running.get());
      if (!outcome.ok()) {
        error = outcome.status();
        aborted = comm_->size() > 1;
        break;
      }
      if (*outcome == v1::JobResult::OUTCOME_STOPPED && shutdown_->load()) exit = LinkExit::kStoppedJob;
      last_command = absl::Now();
      continue;
    }
    if (next.has_value() && next->cancelled) {
      Log(absl::StrCat(next->run.job(), " (attempt ", next->run.attempt(), ") was cancelled before it started"));
      v1::JobResult result;
      result.set_outcome(v1::JobResult::OUTCOME_STOPPED);
      result.set_message("cancelled before it started");
      const absl::Status kept =
          WhileKeepingAlive([&] { SendResult(next->group_id, next->session, next->run, {}, result); });
      if (!kept.ok()) {
        error = absl::Status(kept.code(), absl::StrCat("keeping the worker group together: ", kept.message()));
        comm_->Abort(error);
        aborted = true;
        break;
      }
      last_command = absl::Now();
      continue;
    }
    if (absl::Now() - last_command >= options_.keepalive) {
      const absl::Status sent = Tell(kIdleCommand);
      if (!sent.ok()) {
        error = absl::Status(sent.code(), absl::StrCat("keeping the worker group together: ", sent.message()));
        comm_->Abort(error);
        aborted = true;
        break;
      }
      last_command = absl::Now();
    }
  }
  if (!aborted) {
    const absl::Status sent = Tell(exit == LinkExit::kStoppedJob ? kExitStoppedCommand : kExitCommand);
    if (!sent.ok() && error.ok()) {
      error = absl::Status(sent.code(), absl::StrCat("telling the worker group to exit: ", sent.message()));
      comm_->Abort(error);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
    for (grpc::ClientContext* call : calls_) call->TryCancel();
  }
  session.join();
  if (!error.ok()) return error;
  return exit;
}

void CoordinatorLink::Impl::SessionLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      // The job of a lost group must end before the group joins again.
      auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_ || running_ == nullptr; };
      mu_.Await(absl::Condition(&idle));
      if (closing_) return;
    }
    absl::StatusOr<v1::JoinResponse> joined = JoinWithRetries();
    {
      absl::MutexLock lock(&mu_);
      if (closing_) return;
      if (!joined.ok()) {
        fatal_ = joined.status();
        return;
      }
    }
    ServeSession(*joined);
    absl::MutexLock lock(&mu_);
    auto closing = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_; };
    if (AwaitFor(options_.initial_backoff, closing)) return;
  }
}

absl::StatusOr<v1::JoinResponse> CoordinatorLink::Impl::JoinWithRetries() {
  v1::JoinRequest request;
  request.set_size(comm_->size());
  for (const v1::Device& d : devices_) *request.add_devices() = d;
  request.set_hostname(devices_.empty() ? DescribeLocalDevice(0).host() : devices_.front().host());
  request.set_version(options_.version);
  absl::Duration backoff = options_.initial_backoff;
  std::set<grpc::StatusCode> logged;
  while (true) {
    v1::JoinResponse response;
    grpc::Status status;
    {
      Call call(this, options_.rpc_timeout);
      status = stub_->Join(call.get(), request, &response);
    }
    if (status.ok()) return response;
    const grpc::StatusCode code = status.error_code();
    if (code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::PERMISSION_DENIED) {
      return absl::Status(static_cast<absl::StatusCode>(code),
                          absl::StrCat("the coordinator at ", options_.coordinator, " refused this worker group's token (",
                                       Describe(status),
                                       "): check SIGMATUNE_TOKEN (or --token_file); it must be a token of a tenant "
                                       "with the worker role"));
    }
    absl::MutexLock lock(&mu_);
    if (closing_) return absl::CancelledError("the link is closing");
    if (logged.insert(code).second) {
      Log(absl::StrCat(Transient(status) ? "cannot reach the coordinator at " : "cannot join the coordinator at ",
                       options_.coordinator, " (", Describe(status), "); retrying"));
    }
    auto closing = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_; };
    if (AwaitFor(backoff, closing)) return absl::CancelledError("the link is closing");
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void CoordinatorLink::Impl::ServeSession(const v1::JoinResponse& joined) {
  uint64_t session = 0;
  {
    absl::MutexLock lock(&mu_);
    session = ++session_;
    live_ = true;
    group_id_ = joined.group_id();
  }
  Log(absl::StrCat("joined the coordinator at ", options_.coordinator, " as ", joined.group_id(), " (",
                   comm_->size(), comm_->size() == 1 ? " rank)" : " ranks)"));
  const absl::Duration interval =
      joined.heartbeat_interval_s() > 0 ? absl::Seconds(joined.heartbeat_interval_s()) : absl::Seconds(5);
  const absl::Duration timeout =
      joined.heartbeat_timeout_s() > 0 ? absl::Seconds(joined.heartbeat_timeout_s()) : 3 * interval;
  std::thread heartbeat([&] { HeartbeatLoop(session, joined.group_id(), interval, timeout); });
  grpc::Status status;
  {
    Call call(this, std::nullopt);
    {
      absl::MutexLock lock(&mu_);
      stream_ = call.get();
      if (!Live(session)) call.get()->TryCancel();
    }
    v1::StreamAssignmentsRequest request;
    request.set_group_id(joined.group_id());
    std::unique_ptr<grpc::ClientReaderInterface<v1::Assignment>> reader =
        stub_->StreamAssignments(call.get(), request);
    v1::Assignment assignment;
    while (reader->Read(&assignment)) HandleAssignment(session, assignment);
    status = reader->Finish();
    absl::MutexLock lock(&mu_);
    stream_ = nullptr;
  }
  Lose(session, status.ok() ? "it ended the assignment stream"
                            : absl::StrCat("the assignment stream failed: ", Describe(status)));
  heartbeat.join();
}

void CoordinatorLink::Impl::HeartbeatLoop(uint64_t session, const std::string& group_id, absl::Duration interval,
                                          absl::Duration timeout) {
  absl::Time last_ok = absl::Now();
  while (true) {
    v1::HeartbeatRequest request;
    request.set_group_id(group_id);
    {
      absl::MutexLock lock(&mu_);
      auto ended = [this, session]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_ || !Live(session); };
      if (AwaitFor(interval, ended)) return;
      if (running_ != nullptr && running_->session == session) {
        request.set_job(running_->job);
        request.set_attempt(running_->attempt);
      }
    }
    v1::HeartbeatResponse response;
    grpc::Status status;
    {
      Call call(this, std::min(options_.rpc_timeout, timeout));
      status = stub_->Heartbeat(call.get(), request, &response);
    }
    if (status.ok()) {
      last_ok = absl::Now();
      if (response.cancel() && !request.job().empty()) {
        CancelRunning(request.job(), request.attempt(), "cancelled by the coordinator");
      }
    } else if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      Lose(session, absl::StrCat("it does not know ", group_id, " any more: ", Describe(status)));
      return;
    } else if (absl::Now() - last_ok >= timeout) {
      Lose(session, absl::StrCat("no heartbeat answered for ", absl::FormatDuration(absl::Now() - last_ok),
                                 ", the last: ", Describe(status)));
      return;
    }
  }
}

void CoordinatorLink::Impl::HandleAssignment(uint64_t session, const v1::Assignment& assignment) {
  absl::MutexLock lock(&mu_);
  if (!Live(session)) return;
  switch (assignment.kind_case()) {
    case v1::Assignment::kRun: {
      Pending pending;
      pending.run = assignment.run();
      pending.session = session;
      pending.group_id = group_id_;
      pending_.push_back(std::move(pending));
      break;
    }
    case v1::Assignment::kCancel: {
      const v1::CancelJobAssignment& cancel = assignment.cancel();
      if (running_ != nullptr && running_->job == cancel.job() && running_->attempt == cancel.attempt()) {
        StopLocked(running_, "cancelled by the coordinator");
      }
      for (Pending& p : pending_) {
        if (p.run.job() == cancel.job() && p.run.attempt() == cancel.attempt()) p.cancelled = true;
      }
      break;
    }
    default:
      Log("ignoring an assignment of a kind this worker does not know (a newer coordinator?)");
  }
}

void CoordinatorLink::Impl::Lose(uint64_t session, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (!Live(session)) return;
  live_ = false;
  if (stream_ != nullptr) stream_->TryCancel();
  pending_.clear();  // the coordinator requeues what it assigned to the lost group
  if (closing_) return;
  std::string stopping;
  if (running_ != nullptr && running_->session == session) {
    StopLocked(running_, "the coordinator was lost");
    stopping = absl::StrCat(", stopping ", running_->job, " (it resumes when assigned again)");
  }
  Log(absl::StrCat("lost the coordinator at ", options_.coordinator, " (", reason, ")", stopping, "; joining again"));
}

void CoordinatorLink::Impl::StopLocked(Running* running, const std::string& reason) {
  if (running->stop.exchange(true)) return;
  running->stop_reason = reason;
  Log(absl::StrCat("stopping ", running->job, " (attempt ", running->attempt, "): ", reason));
}

void CoordinatorLink::Impl::CancelRunning(const std::string& job, int attempt, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (running_ != nullptr && running_->job == job && running_->attempt == attempt) StopLocked(running_, reason);
}

absl::StatusOr<v1::JobResult::Outcome> CoordinatorLink::Impl::Serve(const v1::RunJobAssignment& run,
                                                                     Running* running) {
  Log(absl::StrCat("running ", run.job(), " (attempt ", run.attempt(), ")"));
  const absl::Status sent = Tell(absl::StrCat(kRunCommand, run.SerializeAsString()));
  if (!sent.ok()) {
    // The group is broken, not the job: the coordinator requeues it when the group is lost.
    const absl::Status error(sent.code(), absl::StrCat("starting ", run.job(), " on the worker group: ", sent.message()));
    comm_->Abort(error);
    absl::MutexLock lock(&mu_);
    running_ = nullptr;
    return error;
  }
  Sink sink(this, running);
  std::thread reporter([this, running] { ReportLoop(running); });
  job::RunOptions options;
  options.comm = comm_;
  options.extra_sink = &sink;
  options.terminal = job::TerminalOutput::kOff;
  options.stop = &running->stop;
  const absl::Time start = absl::Now();
  const absl::StatusOr<job::JobResult> result = job::RunJob(run.spec(), options);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<v1::Progress> rest;
  {
    absl::MutexLock lock(&mu_);
    running->finishing = true;
  }
  reporter.join();
  std::string reason;
  {
    absl::MutexLock lock(&mu_);
    rest.swap(running->progress);
    reason = running->stop_reason.empty() ? "stopped" : running->stop_reason;
  }
  v1::JobResult report = ToJobResult(result);
  if (report.outcome() == v1::JobResult::OUTCOME_STOPPED) {
    report.set_message(absl::StrCat(report.message(), ": ", reason));
  }
  auto send = [&] { SendResult(running->group_id, running->session, run, std::move(rest), report); };
  absl::Status kept;
  if (result.ok()) {
    kept = WhileKeepingAlive(send);
  } else {
    // The other ranks may wait in one of the job's collectives: no command may reach them now.
    send();
  }
  {
    absl::MutexLock lock(&mu_);
    running_ = nullptr;
  }
  switch (report.outcome()) {
    case v1::JobResult::OUTCOME_SUCCEEDED:
      Log(absl::StrFormat("%s succeeded in %.1f s", run.job(), seconds));
      break;
    case v1::JobResult::OUTCOME_STOPPED:
      Log(absl::StrFormat("%s %s after %.1f s", run.job(), report.message(), seconds));
      break;
    default:
      Log(absl::StrFormat("%s failed after %.1f s%s: %s", run.job(), seconds,
                          comm_->size() > 1 ? absl::StrCat(" (rank ", comm_->rank(), ")") : "", report.message()));
  }
  if (!result.ok() && comm_->size() > 1) {
    // The other ranks may wait in a collective: end the group now, as the standalone worker does.
    const absl::Status error(result.status().code(), absl::StrCat("job ", run.job(), ": ", result.status().message()));
    comm_->Abort(error);
    return error;
  }
  if (!kept.ok()) {
    const absl::Status error(kept.code(), absl::StrCat("keeping the worker group together: ", kept.message()));
    comm_->Abort(error);
    return error;
  }
  return report.outcome();
}

absl::Status CoordinatorLink::Impl::WhileKeepingAlive(const std::function<void()>& fn) {
  absl::Notification done;
  std::thread thread([&] {
    fn();
    done.Notify();
  });
  absl::Status kept;
  while (!done.WaitForNotificationWithTimeout(options_.keepalive)) {
    if (kept.ok()) kept = Tell(kIdleCommand);
  }
  thread.join();
  return kept;
}

void CoordinatorLink::Impl::ReportLoop(Running* running) {
  while (true) {
    std::vector<v1::Progress> batch;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this, running]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return running->urgent || running->finishing || (shutdown_->load() && !running->stop.load());
      };
      AwaitFor(options_.report_interval, wake);
      if (running->finishing) return;  // Serve sends the rest with the result
      running->urgent = false;
      if (shutdown_->load()) StopLocked(running, "the worker is shutting down (signal)");
      if (!Live(running->session)) {
        running->progress.clear();  // nobody to tell: the job is stopping
        continue;
      }
      batch.swap(running->progress);
    }
    if (batch.empty()) continue;
    v1::ReportEventsRequest request;
    request.set_group_id(running->group_id);
    request.set_job(running->job);
    request.set_attempt(running->attempt);
    for (v1::Progress& p : batch) *request.add_progress() = std::move(p);
    v1::ReportEventsResponse response;
    grpc::Status status;
    {
      Call call(this, options_.rpc_timeout);
      status = stub_->ReportEvents(call.get(), request, &response);
    }
    if (status.ok()) {
      if (response.cancel()) CancelRunning(running->job, running->attempt, "cancelled by the coordinator");
    } else if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      CancelRunning(running->job, running->attempt,
                    absl::StrCat("the coordinator no longer runs it (", Describe(status), ")"));
    } else if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      Lose(running->session, absl::StrCat("it does not know ", running->group_id, " any more: ", Describe(status)));
    } else {
      // Kept for the next try, oldest first.
      absl::MutexLock lock(&mu_);
      std::vector<v1::Progress>& queue = running->progress;
      queue.insert(queue.begin(), request.mutable_progress()->begin(), request.mutable_progress()->end());
      if (queue.size() > kMaxQueuedProgress) queue.erase(queue.begin(), queue.end() - kMaxQueuedProgress);
    }
  }
}

void CoordinatorLink::Impl::SendResult(const std::string& group_id, uint64_t session, const v1::RunJobAssignment& run,
                                       std::vector<v1::Progress> progress, const v1::JobResult& result) {
  v1::ReportEventsRequest request;
  request.set_group_id(group_id);
  request.set_job(run.job());
  request.set_attempt(run.attempt());
  for (v1::Progress& p : progress) *request.add_progress() = std::move(p);
  *request.mutable_result() = result;
  absl::Duration backoff = options_.initial_backoff;
  for (int attempt = 1;; ++attempt) {
    v1::ReportEventsResponse response;
    grpc::Status status;
    {
      Call call(this, options_.rpc_timeout);
      status = stub_->ReportEvents(call.get(), request, &response);
    }
    if (status.ok()) return;
    bool retry = false;
    {
      absl::MutexLock lock(&mu_);
      // After a loss one try is enough: the coordinator requeues the job whatever it hears.
      retry = Transient(status) && attempt < kResultTries && Live(session) && !closing_;
      auto closing = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_; };
      if (retry && AwaitFor(backoff, closing)) retry = false;
    }
    if (retry) {
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    Log(absl::StrCat("could not report the result of ", run.job(), " (attempt ", run.attempt(),
                     ") to the coordinator (", Describe(status), ")"));
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      Lose(session, absl::StrCat("it does not know ", group_id, " any more: ", Describe(status)));
    }
    return;
  }
}

CoordinatorLink::CoordinatorLink(v1::WorkerService::StubInterface* stub, comm::Communicator* comm,
                                 std::vector<v1::Device> devices, LinkOptions options,
                                 const std::atomic<bool>* shutdown) {
  ST_CHECK(stub != nullptr && comm != nullptr && shutdown != nullptr);
  ST_CHECK(comm->is_leader()) << "the coordinator link runs on the leader (rank 0); the others RunFollower";
  impl_ = std::make_unique<Impl>(stub, comm, std::move(devices), std::move(options), shutdown);
}

CoordinatorLink::~CoordinatorLink() = default;

absl::StatusOr<LinkExit> CoordinatorLink::Run() {
  ST_CHECK(impl_ != nullptr) << "CoordinatorLink::Run runs once";
  std::unique_ptr<Impl> impl = std::move(impl_);
  return impl->Run();
}

absl::StatusOr<LinkExit> RunFollower(comm::Communicator& comm, const std::atomic<bool>* shutdown) {
  ST_CHECK(!comm.is_leader()) << "the leader runs CoordinatorLink";
  auto fail = [&comm](const absl::Status& error) {
    Log(absl::StrCat("rank ", comm.rank(), ": ", error.message()));
    comm.Abort(error);
    return error;
  };
  while (true) {
    std::string command;
    const absl::Status received = comm.Broadcast(0, &command);
    if (!received.ok()) {
      return fail(absl::Status(received.code(), absl::StrCat("waiting for the leader: ", received.message())));
    }
    if (command == kIdleCommand) continue;
    if (command == kExitCommand) return LinkExit::kIdle;
    if (command == kExitStoppedCommand) return LinkExit::kStoppedJob;
    v1::RunJobAssignment run;
    absl::string_view body = command;
    if (!absl::ConsumePrefix(&body, kRunCommand) || !run.ParseFromArray(body.data(), static_cast<int>(body.size()))) {
      return fail(absl::InternalError(
          absl::StrCat("the leader sent a command this rank does not know (", command.size(), " bytes)")));
    }
    job::RunOptions options;
    options.comm = &comm;
    options.terminal = job::TerminalOutput::kOff;
    options.stop = shutdown;
    const absl::StatusOr<job::JobResult> result = job::RunJob(run.spec(), options);
    if (!result.ok()) {
      return fail(absl::Status(result.status().code(),
                               absl::StrCat("job ", run.job(), " failed: ", result.status().message())));
    }
  }
}

}  // namespace sigmatune::service
