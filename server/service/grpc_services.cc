#include "server/service/grpc_services.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace sigmatune::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<Tenant> AuthenticateCall(const TenantRegistry& tenants, const grpc::ServerContextBase& context,
                                        Role role) {
  std::string authorization;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end()) authorization.assign(it->second.data(), it->second.size());
  absl::StatusOr<Tenant> tenant = tenants.Authenticate(authorization);
  if (!tenant.ok()) return tenant.status();
  if (!tenant->Has(role)) {
    return absl::PermissionDeniedError(absl::StrCat("tenant ", tenant->name, "'s token is not allowed to call the ",
                                                    role == Role::kUser ? "JobService" : "WorkerService",
                                                    role == Role::kUser ? " (it is a worker token)"
                                                                        : " (it is not a worker token)"));
  }
  return tenant;
}

namespace {

// Runs `body(tenant)` after authentication and finishes the unary reactor with its status.
template <typename Body>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const TenantRegistry& tenants, Body body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Tenant> tenant = AuthenticateCall(tenants, *context, Role::kUser);
  reactor->Finish(ToGrpcStatus(tenant.ok() ? body(*tenant) : tenant.status()));
  return reactor;
}

template <typename T>
absl::Status Assign(absl::StatusOr<T> value, T* out) {
  if (!value.ok()) return value.status();
  *out = *std::move(value);
  return absl::OkStatus();
}

}  // namespace

grpc::ServerUnaryReactor* JobServiceImpl::CreateJob(grpc::CallbackServerContext* context,
                                                    const v1::CreateJobRequest* request, v1::Job* response) {
  return Unary(context, *tenants_,
               [&](const Tenant& tenant) { return Assign(coordinator_->CreateJob(tenant, *request), response); });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                 const v1::GetJobRequest* request, v1::Job* response) {
  return Unary(context, *tenants_,
               [&](const Tenant& tenant) { return Assign(coordinator_->GetJob(tenant, request->name()), response); });
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                   const v1::ListJobsRequest* request,
                                                   v1::ListJobsResponse* response) {
  return Unary(context, *tenants_,
               [&](const Tenant& tenant) { return Assign(coordinator_->ListJobs(tenant, *request), response); });
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                    const v1::CancelJobRequest* request, v1::Job* response) {
  return Unary(context, *tenants_, [&](const Tenant& tenant) {
    return Assign(coordinator_->CancelJob(tenant, request->name()), response);
  });
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJobReport(grpc::CallbackServerContext* context,
                                                       const v1::GetJobReportRequest* request,
                                                       v1::JobReport* response) {
  return Unary(context, *tenants_, [&](const Tenant& tenant) {
    return Assign(coordinator_->GetJobReport(tenant, request->name()), response);
  });
}

class WatchReactor;

// Shared by a stream's reactor, the waiter it leaves with the job's EventLog and the service's
// list of streams; the last two hold it weakly, so a wake-up that races with the end of the stream
// finds no reactor.
struct WatchState {
  absl::Mutex mu;
  WatchReactor* reactor = nullptr;  // null once OnDone ran
};

// One Watch stream. Writes one message at a time; between writes it either has the next event at
// hand or has left a one-shot waiter with the job's EventLog.
class WatchReactor final : public grpc::ServerWriteReactor<v1::WatchJobResponse> {
 public:
  using State = WatchState;

  WatchReactor(JobServiceImpl* service, WatchStart start)
      : service_(service), log_(std::move(start.log)), next_(start.next_sequence), state_(std::make_shared<State>()) {
    state_->reactor = this;
    service_->open_watches_.fetch_add(1);
    service_->Register(state_);
    if (start.snapshot.has_value()) {
      *response_.mutable_job() = *std::move(start.snapshot);
      writing_ = true;
      StartWrite(&response_);
    } else {
      Pump();
    }
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&state_->mu);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    if (response_.has_event()) next_ = response_.event().sequence() + 1;
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&state_->mu);
    cancelled_ = true;
    if (!writing_) FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
    }
    service_->open_watches_.fetch_sub(1);
    delete this;
  }

  // Writes the next event, ends the stream, or waits (state_->mu held).
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (writing_ || finished_) return;
    if (cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    if (service_->shutting_down_.load()) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down; watch again"));
      return;
    }
    v1::JobEvent event;
    std::weak_ptr<State> weak = state_;
    switch (log_->NextOrWait(next_, &event, [weak] {
      std::shared_ptr<State> state = weak.lock();
      if (state == nullptr) return;
      absl::MutexLock lock(&state->mu);
      if (state->reactor != nullptr) state->reactor->PumpLocked();
    })) {
      case EventLog::Next::kEvent:
        *response_.mutable_event() = std::move(event);
        writing_ = true;
        StartWrite(&response_);
        return;
      case EventLog::Next::kEnd:
        FinishLocked(grpc::Status::OK);
        return;
      case EventLog::Next::kGone:
        FinishLocked(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                                  "this watcher fell behind the events the coordinator keeps; watch again"));
        return;
      case EventLog::Next::kWait:
        return;
    }
  }

 private:
  void Pump() {
    absl::MutexLock lock(&state_->mu);
    PumpLocked();
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  JobServiceImpl* service_;
  std::shared_ptr<EventLog> log_;
  int64_t next_;
  std::shared_ptr<State> state_;
  v1::WatchJobResponse response_;
  bool writing_ = false;
  bool finished_ = false;
  bool cancelled_ = false;
};

grpc::ServerWriteReactor<v1::WatchJobResponse>* JobServiceImpl::WatchJob(grpc::CallbackServerContext* context,
                                                                        const v1::WatchJobRequest* request) {
  absl::StatusOr<Tenant> tenant = AuthenticateCall(*tenants_, *context, Role::kUser);
  absl::StatusOr<WatchStart> start =
      tenant.ok() ? coordinator_->StartWatch(*tenant, *request) : absl::StatusOr<WatchStart>(tenant.status());
  if (!start.ok()) {
    // A reactor that only finishes.
    class Failed final : public grpc::ServerWriteReactor<v1::WatchJobResponse> {
     public:
      explicit Failed(const grpc::Status& status) { Finish(status); }
      void OnDone() override { delete this; }
    };
    return new Failed(ToGrpcStatus(start.status()));
  }
  return new WatchReactor(this, *std::move(start));
}

void JobServiceImpl::Register(const std::shared_ptr<WatchState>& watch) {
  absl::MutexLock lock(&watches_mu_);
  if (watches_.size() >= 2 * static_cast<size_t>(open_watches_.load()) + 16) {
    watches_.erase(std::remove_if(watches_.begin(), watches_.end(), [](const auto& w) { return w.expired(); }),
                   watches_.end());
  }
  watches_.push_back(watch);
}

void JobServiceImpl::Shutdown() {
  shutting_down_ = true;
  std::vector<std::weak_ptr<WatchState>> watches;
  {
    absl::MutexLock lock(&watches_mu_);
    watches.swap(watches_);
  }
  for (const std::weak_ptr<WatchState>& weak : watches) {
    std::shared_ptr<WatchState> watch = weak.lock();
    if (watch == nullptr) continue;
    absl::MutexLock lock(&watch->mu);
    if (watch->reactor != nullptr) watch->reactor->PumpLocked();
  }
}

// ---- WorkerService ------------------------------------------------------------------------------

grpc::Status WorkerServiceImpl::Join(grpc::ServerContext* context, const v1::JoinRequest* request,
                                     v1::JoinResponse* response) {
  absl::StatusOr<Tenant> tenant = AuthenticateCall(*tenants_, *context, Role::kWorker);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  return ToGrpcStatus(Assign(coordinator_->Join(*request), response));
}

grpc::Status WorkerServiceImpl::StreamAssignments(grpc::ServerContext* context,
                                                  const v1::StreamAssignmentsRequest* request,
                                                  grpc::ServerWriter<v1::Assignment>* writer) {
  absl::StatusOr<Tenant> tenant = AuthenticateCall(*tenants_, *context, Role::kWorker);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  absl::StatusOr<std::shared_ptr<AssignmentChannel>> channel = coordinator_->AttachStream(request->group_id());
  if (!channel.ok()) return ToGrpcStatus(channel.status());
  // Headers first, so the leader knows it is attached.
  writer->SendInitialMetadata();
  grpc::Status status = grpc::Status::OK;
  while (true) {
    if (context->IsCancelled()) break;
    if (shutting_down_.load()) {
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down; join again");
      break;
    }
    std::optional<v1::Assignment> next = (*channel)->Next(absl::Milliseconds(200));
    if (!next.has_value()) {
      if ((*channel)->closed()) {
        status = grpc::Status(grpc::StatusCode::ABORTED, "this stream was replaced or the group was dropped; join again");
        break;
      }
      continue;
    }
    if (!writer->Write(*next)) break;
  }
  coordinator_->DetachStream(request->group_id(), *channel);
  return status;
}

grpc::Status WorkerServiceImpl::ReportEvents(grpc::ServerContext* context, const v1::ReportEventsRequest* request,
                                             v1::ReportEventsResponse* response) {
  absl::StatusOr<Tenant> tenant = AuthenticateCall(*tenants_, *context, Role::kWorker);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  return ToGrpcStatus(Assign(coordinator_->ReportEvents(*request), response));
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  absl::StatusOr<Tenant> tenant = AuthenticateCall(*tenants_, *context, Role::kWorker);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  return ToGrpcStatus(Assign(coordinator_->Heartbeat(*request), response));
}

}  // namespace sigmatune::server
