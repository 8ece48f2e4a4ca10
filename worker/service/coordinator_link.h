// The attached mode of sigmatune-worker (`--coordinator=HOST:PORT`): a worker group serves the jobs
// a coordinator assigns to it over the WorkerService (proto/sigmatune/v1/worker.proto). Only the
// leader (rank 0) talks to the coordinator; it relays each job to the other ranks over the group's
// communicator, and every rank runs it with job::RunJob.
//
//   every rank:   GatherDevices(comm)                      (collective, first)
//   rank 0:       CoordinatorLink(stub, &comm, devices, options, &shutdown).Run()
//   other ranks:  RunFollower(comm, &shutdown)
//
// The leader's commands to the followers, one Broadcast(0, string) each, in this order only:
//   "idle"              keep-alive, at least every options.keepalive while no job runs, so the
//                       followers' collective timeout (CommOptions::timeout) never fires;
//   "run:" + bytes      a serialized v1::RunJobAssignment: every rank runs RunJob(spec) now;
//   "exit" / "exit:stopped"   the group ends (":stopped": a signal stopped a job, exit status 3).
//
// Contract of CoordinatorLink::Run (the leader; on the thread that owns the communicator):
//  - Join (size, devices, hostname, version), retried forever with a backoff doubling from
//    options.initial_backoff to options.max_backoff and one log line per kind of failure
//    ("sigmatune-worker: cannot reach the coordinator at X (UNAVAILABLE: ...); retrying").
//    UNAUTHENTICATED or PERMISSION_DENIED end Run with that code and a message naming the token
//    (SIGMATUNE_TOKEN / --token_file). Every call carries "authorization: Bearer <token>" when
//    options.token is set.
//  - Then StreamAssignments(group_id) and a Heartbeat every heartbeat_interval_s of the
//    JoinResponse (with the running job and attempt; empty when idle).
//  - A RunJob assignment runs on every rank with options.comm = the group, terminal output off and
//    a stop flag of its own. Its progress goes to the coordinator in ReportEvents batches every
//    options.report_interval (at once for a message event or the first event of a phase), then
//    one last report with the JobResult (ToJobResult in messages.h): SUCCEEDED, STOPPED (stopped
//    early, with a checkpoint) or FAILED (RunJob's error). Assignments run one at a time, in the
//    order they came; one cancelled before it started is reported STOPPED without running.
//  - The job's stop flag is raised by a CancelJob assignment for its job and attempt, a
//    HeartbeatResponse or ReportEventsResponse with cancel, FAILED_PRECONDITION on ReportEvents
//    (the coordinator no longer wants this run), *shutdown, and the loss of the coordinator. RunJob
//    takes the stop decision collectively after each phase and each training step, so every rank
//    stops within about one step or phase.
//  - The coordinator is lost when the assignment stream ends, when heartbeats fail for
//    heartbeat_timeout_s, or on NOT_FOUND (it forgot the group, e.g. it restarted). The running job
//    is stopped (checkpoint), and when it has returned the leader joins again, as a new group: the
//    coordinator requeues the job, and when it is assigned again RunJob resumes from the checkpoint
//    in its output_dir. Assignments received but not started belong to the lost group and are
//    dropped.
//  - A RunJob error is reported as FAILED (it is the job's fault). In a group of one the leader
//    then waits for the next assignment; in a larger group the failing rank aborts the group
//    (Communicator::Abort, as the worker does standalone) and Run returns the error, so the
//    launcher ends every rank and whoever started the group restarts it.
//  - *shutdown (SIGINT/SIGTERM): a running job stops with a checkpoint and is reported STOPPED; the
//    followers get "exit"; Run returns kStoppedJob, or kIdle when no job was stopped.
//  - Errors: Unauthenticated/PermissionDenied (the token; the followers were told to exit) or, for
//    a job error or a broken communicator, the error after the group was aborted.
//  - One log line per assignment and per result on stderr ("sigmatune-worker: running jobs/abc
//    (attempt 1)", "sigmatune-worker: jobs/abc succeeded in 12.3 s").
//  - Threads: Run uses the communicator on its calling thread only; it starts a session thread
//    (Join, the stream), a heartbeat thread and, per job, a reporter thread, and joins them all
//    before it returns. The stub must be safe to call from several threads (gRPC stubs are).
//
// RunFollower (every rank but the leader) obeys the leader's commands until "exit" (kIdle or
// kStoppedJob as the leader says) and runs each job with options.stop = shutdown. A RunJob error or
// a failed Broadcast (the leader died or hung past the collective timeout) is logged, the group
// is aborted and the error returned.
#ifndef SIGMATUNE_WORKER_SERVICE_COORDINATOR_LINK_H_
#define SIGMATUNE_WORKER_SERVICE_COORDINATOR_LINK_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sigmatune/v1/worker.grpc.pb.h"
#include "sigmatune/v1/worker.pb.h"
#include "worker/comm/communicator.h"
#include "worker/service/messages.h"

namespace sigmatune::service {

struct LinkOptions {
  std::string coordinator;  // "HOST:PORT", for messages
  std::string token;        // empty: no authorization metadata
  std::string version;      // JoinRequest.version
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(10);
  absl::Duration rpc_timeout = absl::Seconds(10);  // deadline of each unary call
  absl::Duration keepalive = absl::Seconds(5);     // "idle" broadcasts while no job runs
  absl::Duration report_interval = absl::Milliseconds(500);
};

// How Run and RunFollower end when nothing went wrong (the worker's exit status 0 or 3).
enum class LinkExit {
  kIdle,        // shut down while no job was running
  kStoppedJob,  // the shutdown stopped a running job, which was reported STOPPED
};

class CoordinatorLink {
 public:
  // stub, comm and shutdown are not owned and must outlive the link; comm->is_leader() (CHECKed).
  // devices: GatherDevices' result on the leader.
  CoordinatorLink(v1::WorkerService::StubInterface* stub, comm::Communicator* comm, std::vector<v1::Device> devices,
                  LinkOptions options, const std::atomic<bool>* shutdown);
  ~CoordinatorLink();
  CoordinatorLink(const CoordinatorLink&) = delete;
  CoordinatorLink& operator=(const CoordinatorLink&) = delete;

  // Serves assignments until *shutdown or an error; at most once per link.
  absl::StatusOr<LinkExit> Run();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

absl::StatusOr<LinkExit> RunFollower(comm::Communicator& comm, const std::atomic<bool>* shutdown);

}  // namespace sigmatune::service

#endif  // SIGMATUNE_WORKER_SERVICE_COORDINATOR_LINK_H_
