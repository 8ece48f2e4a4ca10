// A fake sigmatune-coordinator for the client's tests: JobService (coordinator.proto) on
// 127.0.0.1:<any port>, jobs in a map, a bearer token check, scripted watch streams.
//
// Behaviour:
//  - Every call needs "authorization: Bearer <token>" when a token is configured
//    (UNAUTHENTICATED "unknown token" otherwise). Every call's authorization value is recorded.
//  - CreateJob records the request; a spec without base_model is INVALID_ARGUMENT listing the
//    problem; a used request_id returns the job it created. New jobs are "jobs/j<N>", QUEUED.
//    FailNextCreates(n) answers the next n CreateJob calls UNAVAILABLE (after recording them).
//    After ScriptCreatedJobs, a created job is answered QUEUED but then follows that script: Get
//    and List see it in its final state, its watch plays the script, its report is the one given.
//  - ListJobs: newest first, page_size (0 = 100), page_token is the offset, states filter.
//  - CancelJob: QUEUED -> CANCELLED ("cancelled by the test"), RUNNING -> cancel_requested,
//    terminal -> FAILED_PRECONDITION.
//  - GetJobReport: the report set with AddJob for a SUCCEEDED job, else FAILED_PRECONDITION.
//  - WatchJob follows a job's script (AddJob): without a resume token it sends the job as it was
//    at the start (script.initial_state), then every event; with "tok-<n>" it sends the events
//    after sequence n. The first tokenless watch of a job breaks with UNAVAILABLE after
//    script.break_after events (< 0: never); the first script.out_of_range_times watches with a
//    token get OUT_OF_RANGE. Other tokens are INVALID_ARGUMENT. The resume token of every watch is
//    recorded. A script may hold the stream open until the job is cancelled
//    (WatchScript::hold_until_cancelled).
#ifndef SIGMATUNE_CLIENT_FAKE_JOB_SERVICE_H_
#define SIGMATUNE_CLIENT_FAKE_JOB_SERVICE_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server.h"
#include "sigmatune/v1/coordinator.grpc.pb.h"
#include "sigmatune/v1/coordinator.pb.h"

namespace sigmatune::client::testing {

struct WatchScript {
  v1::JobState initial_state = v1::JOB_STATE_QUEUED;
  std::vector<v1::JobEvent> events;  // sequences 1..n; resume tokens are set by AddJob
  int break_after = -1;
  int out_of_range_times = 0;
  // After its events the stream stays open until the job is cancelled; it then sends a CANCELLED
  // event and the job becomes CANCELLED ("cancelled by the test").
  bool hold_until_cancelled = false;
};

// A scripted run: QUEUED -> RUNNING, `train_steps` training progress events (loss, lr,
// tokens_per_s; 10 s apart), a note "saved checkpoint-N", then `final_state` with `message`.
WatchScript TrainingScript(int train_steps, v1::JobState final_state, const std::string& message);

class FakeJobService final : public v1::JobService::Service {
 public:
  explicit FakeJobService(std::string token) : token_(std::move(token)) {}

  // Adds a job as Get/List see it (its final state) with the script of its watch stream and, for a
  // SUCCEEDED job, its report. Returns the job with its name ("jobs/j<N>" when empty).
  v1::Job AddJob(v1::Job job, WatchScript script, v1::JobReport report = {});
  void FailNextCreates(int n);
  void ScriptCreatedJobs(v1::JobState final_state, WatchScript script, v1::JobReport report);

  std::vector<v1::CreateJobRequest> create_requests() const;
  std::vector<std::string> authorizations() const;
  std::vector<std::string> watch_tokens() const;
  int list_calls() const;
  std::vector<std::string> cancelled() const;
  bool HasJob(const std::string& name) const;

  grpc::Status CreateJob(grpc::ServerContext* context, const v1::CreateJobRequest* request, v1::Job* job) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request, v1::Job* job) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request, v1::Job* job) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::WatchJobResponse>* writer) override;
  grpc::Status GetJobReport(grpc::ServerContext* context, const v1::GetJobReportRequest* request,
                            v1::JobReport* report) override;

 private:
  struct Entry {
    v1::Job job;
    WatchScript script;
    v1::JobReport report;
    bool watched_without_token = false;
    int out_of_range_left = 0;
  };
  grpc::Status Authenticate(grpc::ServerContext* context) ABSL_LOCKS_EXCLUDED(mu_);
  std::string NewName() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string token_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // names, oldest first
  std::map<std::string, std::string> request_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::CreateJobRequest> create_requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> authorizations_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> watch_tokens_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancelled_ ABSL_GUARDED_BY(mu_);
  int list_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int fail_creates_ ABSL_GUARDED_BY(mu_) = 0;
  int next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::optional<Entry> created_template_ ABSL_GUARDED_BY(mu_);
};

// The service running in a gRPC server on 127.0.0.1 (an ephemeral port) until destroyed.
class FakeCoordinator {
 public:
  explicit FakeCoordinator(std::string token);
  ~FakeCoordinator();
  const std::string& address() const { return address_; }
  FakeJobService& service() { return service_; }

 private:
  FakeJobService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace sigmatune::client::testing

#endif  // SIGMATUNE_CLIENT_FAKE_JOB_SERVICE_H_
