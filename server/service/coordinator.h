// The coordinator's core, independent of gRPC: the jobs (in memory, written through to a JobStore
// before anything is acknowledged), the worker groups, the scheduler and the per-job event logs
// that Watch streams read. server/service/job_service.h and worker_service.h adapt it to gRPC.
//
// Contract:
//  - Every mutation of a job goes through server/jobs/state_machine.h and is persisted (one store
//    transaction: the job and its new events) before the in-memory copy changes and before the
//    caller hears of it. Mutations are serialised (one writer at a time); reads (Get, List, event
//    logs) never wait for the store.
//  - Create: on start-up every job that was RUNNING gets kCoordinatorRestart (requeued to resume
//    from its checkpoint while it has restarts left, failed otherwise), so no job stays RUNNING on a
//    group that no longer exists.
//  - Tenancy: a tenant sees only its own jobs; another tenant's job is NotFound, exactly like a job
//    that does not exist.
//  - Scheduling (gang): a queued job goes to one whole idle group that fits (world_size 0: any; N:
//    a group of exactly N ranks), highest priority first, then oldest; a job that fits no idle group
//    does not hold back the jobs behind it. The scheduler runs whenever a job is queued or a group
//    becomes idle.
//  - Groups: a group is usable while its assignment stream is attached; it is lost when the stream
//    ends or it is silent (no heartbeat, report or stream) for heartbeat_timeout. Its running job
//    gets kGroupLost.
//  - Event logs keep the newest `event_retention` events of each job; older resume tokens are
//    OutOfRange.
//  - Thread-safe.
#ifndef SIGMATUNE_SERVER_SERVICE_COORDINATOR_H_
#define SIGMATUNE_SERVER_SERVICE_COORDINATOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth/auth.h"
#include "server/jobs/state_machine.h"
#include "server/store/job_store.h"
#include "sigmatune/v1/coordinator.pb.h"
#include "sigmatune/v1/worker.pb.h"

namespace sigmatune::server {

struct CoordinatorOptions {
  std::vector<std::string> data_roots;  // canonical; a tenant's own roots replace them
  int restart_budget = 3;
  int max_world_size = 64;
  int max_active_jobs_per_tenant = 1000;
  int event_retention = 2000;
  absl::Duration heartbeat_interval = absl::Seconds(2);
  absl::Duration heartbeat_timeout = absl::Seconds(20);
  std::function<absl::Time()> clock = [] { return absl::Now(); };
};

// The events of one job, newest `capacity` kept, with one-shot wake-ups for readers waiting for the
// next event. Thread-safe; its mutex is a leaf (no callback runs under it).
class EventLog {
 public:
  using Waiter = std::function<void()>;
  explicit EventLog(int capacity) : capacity_(capacity) {}

  void Append(const std::vector<v1::JobEvent>& events, bool terminal);
  // The event with `sequence`, if retained; otherwise nullopt and, when it is not yet written and
  // the job is not finished, `waiter` runs once after the next Append (never under the lock).
  enum class Next { kEvent, kWait, kEnd, kGone };
  Next NextOrWait(int64_t sequence, v1::JobEvent* event, Waiter waiter);
  int64_t first_sequence() const;  // oldest retained (last + 1 when empty)
  int64_t last_sequence() const;   // 0 before the first event
  bool terminal() const;

 private:
  const int capacity_;
  mutable absl::Mutex mu_;
  std::deque<v1::JobEvent> events_;  // guarded by mu_
  int64_t last_ = 0;                 // guarded by mu_
  bool terminal_ = false;            // guarded by mu_
  std::vector<Waiter> waiters_;      // guarded by mu_
};

// Where a Watch starts: the snapshot to send first (no resume token) and the next sequence.
struct WatchStart {
  std::optional<v1::Job> snapshot;
  int64_t next_sequence = 1;
  std::shared_ptr<EventLog> log;
};

// One message for a group's assignment stream; the stream handler blocks in Next.
class AssignmentChannel {
 public:
  void Push(v1::Assignment assignment);
  void Close();
  // Waits up to `timeout`; nullopt on timeout or when closed (closed() tells which).
  std::optional<v1::Assignment> Next(absl::Duration timeout);
  bool closed() const;

 private:
  mutable absl::Mutex mu_;
  std::deque<v1::Assignment> queue_;
  bool closed_ = false;
};

class Coordinator {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(JobStore* store, CoordinatorOptions options);
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // JobService.
  absl::StatusOr<v1::Job> CreateJob(const Tenant& tenant, const v1::CreateJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const Tenant& tenant, const std::string& name) const;
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const Tenant& tenant, const v1::ListJobsRequest& request) const;
  absl::StatusOr<v1::Job> CancelJob(const Tenant& tenant, const std::string& name);
  absl::StatusOr<v1::JobReport> GetJobReport(const Tenant& tenant, const std::string& name) const;
  absl::StatusOr<WatchStart> StartWatch(const Tenant& tenant, const v1::WatchJobRequest& request) const;
  static std::string ResumeToken(const std::string& job_name, int64_t sequence);

  // WorkerService.
  absl::StatusOr<v1::JoinResponse> Join(const v1::JoinRequest& request);
  // The channel the group's stream reads; NotFound for an unknown group. A second attach replaces
  // (and closes) the first.
  absl::StatusOr<std::shared_ptr<AssignmentChannel>> AttachStream(const std::string& group_id);
  // The stream of `channel` ended: the group is lost (unless a newer stream replaced it).
  void DetachStream(const std::string& group_id, const std::shared_ptr<AssignmentChannel>& channel);
  absl::StatusOr<v1::ReportEventsResponse> ReportEvents(const v1::ReportEventsRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);

  // Groups silent for longer than heartbeat_timeout are lost. Called by a ticker thread (and tests).
  void CheckGroups();

  const CoordinatorOptions& options() const { return options_; }
  size_t num_groups() const;

 private:
  struct JobEntry {
    v1::Job job;
    int64_t create_seq = 0;
    std::shared_ptr<EventLog> log;
    JobReportText report;
  };
  struct Group {
    std::string id;
    v1::JoinRequest join;
    absl::Time last_contact;
    std::shared_ptr<AssignmentChannel> channel;  // null until attached
    std::string job;                             // running job's name, "" when idle
    int attempt = 0;
  };

  Coordinator(JobStore* store, CoordinatorOptions options);
  absl::Status Load();

  // Applies `input` to job `name` (write_mu_ held), persists, installs; returns the step.
  absl::StatusOr<JobStep> ApplyLocked(const std::string& name, const JobInput& input,
                                      std::optional<JobReportText> report = std::nullopt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::StatusOr<JobStep> ApplyAllLocked(const std::string& name, const std::vector<JobInput>& inputs,
                                         std::optional<JobReportText> report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void ScheduleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  void LoseGroupLocked(const std::string& group_id, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // The group (its last contact set to now), or null when unknown.
  Group* TouchGroupLocked(const std::string& group_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<JobEntry> FindVisible(const Tenant& tenant, const std::string& name) const;
  absl::Status ResolveSpec(const Tenant& tenant, const std::string& id, v1::JobSpec* spec) const;

  JobStore* store_;
  CoordinatorOptions options_;

  // Serialises mutations (state machine + store); taken before mu_.
  absl::Mutex write_mu_;
  // Guards the maps below for readers; writers hold write_mu_ too.
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(write_mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<JobEntry>> jobs_ ABSL_GUARDED_BY(mu_);
  // Per tenant, job names in creation order.
  absl::flat_hash_map<std::string, std::vector<std::string>> by_tenant_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> by_request_ ABSL_GUARDED_BY(mu_);  // tenant\0request_id -> name
  absl::flat_hash_map<std::string, Group> groups_ ABSL_GUARDED_BY(mu_);
  int64_t next_create_seq_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t next_group_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace sigmatune::server

#endif  // SIGMATUNE_SERVER_SERVICE_COORDINATOR_H_
