// gRPC adapters of the Coordinator (server/service/coordinator.h): the public JobService (callback
// API: unary calls answer from memory on gRPC's own threads, and a Watch stream holds no thread
// while it waits for events) and the internal WorkerService (sync API: a few groups, one thread
// per attached assignment stream).
//
// Contract:
//  - Every call authenticates first (server/auth/auth.h) from the "authorization" metadata: no or
//    an unknown token is UNAUTHENTICATED; a token without the service's role (user for JobService,
//    worker for WorkerService) is PERMISSION_DENIED. grpc.health.v1 is served by gRPC itself and
//    needs no token.
//  - absl::Status codes map one to one onto grpc::StatusCode, messages unchanged (ToGrpcStatus).
//  - WatchJob: the job snapshot first (no resume token), then each event as it is appended; the
//    stream ends with OK after the job's terminal event, with CANCELLED when the client goes away,
//    and with UNAVAILABLE when the coordinator shuts down (the client resumes with its last token).
//  - StreamAssignments sends the group's assignments as they come; when the stream ends for any
//    reason the group is lost (its job requeued or failed, see coordinator.h).
#ifndef SIGMATUNE_SERVER_SERVICE_GRPC_SERVICES_H_
#define SIGMATUNE_SERVER_SERVICE_GRPC_SERVICES_H_

#include <atomic>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "server/auth/auth.h"
#include "server/service/coordinator.h"
#include "sigmatune/v1/coordinator.grpc.pb.h"
#include "sigmatune/v1/worker.grpc.pb.h"

namespace sigmatune::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

// The caller's tenant, checked for `role`.
absl::StatusOr<Tenant> AuthenticateCall(const TenantRegistry& tenants, const grpc::ServerContextBase& context,
                                        Role role);

// What a Watch stream's wake-ups and Shutdown reach it through (grpc_services.cc).
struct WatchState;

class JobServiceImpl final : public v1::JobService::CallbackService {
 public:
  JobServiceImpl(Coordinator* coordinator, const TenantRegistry* tenants)
      : coordinator_(coordinator), tenants_(tenants) {}

  // Ends every open Watch stream with UNAVAILABLE (those in the middle of a write, when it is done),
  // so clients resume with their last token elsewhere; call before the server shuts down.
  void Shutdown();

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context, const v1::CreateJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
                                   v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context, const v1::CancelJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJobReport(grpc::CallbackServerContext* context,
                                         const v1::GetJobReportRequest* request, v1::JobReport* response) override;
  grpc::ServerWriteReactor<v1::WatchJobResponse>* WatchJob(grpc::CallbackServerContext* context,
                                                           const v1::WatchJobRequest* request) override;

  int open_watches() const { return open_watches_.load(); }

 private:
  friend class WatchReactor;
  void Register(const std::shared_ptr<WatchState>& watch);

  Coordinator* coordinator_;
  const TenantRegistry* tenants_;
  std::atomic<int> open_watches_{0};
  std::atomic<bool> shutting_down_{false};
  absl::Mutex watches_mu_;
  std::vector<std::weak_ptr<WatchState>> watches_ ABSL_GUARDED_BY(watches_mu_);  // expired ones pruned
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(Coordinator* coordinator, const TenantRegistry* tenants)
      : coordinator_(coordinator), tenants_(tenants) {}

  // Ends the assignment streams (before the server shuts down).
  void Shutdown() { shutting_down_ = true; }

  grpc::Status Join(grpc::ServerContext* context, const v1::JoinRequest* request,
                    v1::JoinResponse* response) override;
  grpc::Status StreamAssignments(grpc::ServerContext* context, const v1::StreamAssignmentsRequest* request,
                                 grpc::ServerWriter<v1::Assignment>* writer) override;
  grpc::Status ReportEvents(grpc::ServerContext* context, const v1::ReportEventsRequest* request,
                            v1::ReportEventsResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;

 private:
  Coordinator* coordinator_;
  const TenantRegistry* tenants_;
  std::atomic<bool> shutting_down_{false};
};

}  // namespace sigmatune::server

#endif  // SIGMATUNE_SERVER_SERVICE_GRPC_SERVICES_H_
