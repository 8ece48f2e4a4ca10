// A thin client of sigmatune-coordinator's JobService (proto/sigmatune/v1/coordinator.proto), used by
// the `sigmatune` command-line tool and by anything else that submits or follows jobs.
//
// Contract:
//  - One JobClient talks to one coordinator address over one channel: plaintext, or TLS when
//    options.tls_ca_path names a PEM file of root certificates. Creating it does not connect.
//  - Every call carries the metadata "authorization: Bearer <token>" when options.token is set.
//  - Unary calls (Submit, Get, List, Cancel, Report) have a deadline of options.call_timeout and fail
//    fast (no wait-for-ready) when the coordinator cannot be reached.
//  - Errors come back as absl::Status with the gRPC code kept and a message for a person:
//      UNAVAILABLE (not connected)  "cannot reach the coordinator at ADDR (<detail>); is it running?
//                                    Set --server or SIGMATUNE_SERVER"
//      UNAVAILABLE (connected)      "the coordinator at ADDR is unavailable (<detail>); try again"
//      UNAUTHENTICATED              "the coordinator at ADDR refused the token (<detail>); set
//                                    SIGMATUNE_TOKEN or --token_file" ("needs a token" without one)
//      PERMISSION_DENIED            "the coordinator at ADDR denied this token (<detail>); ..."
//      DEADLINE_EXCEEDED            "the coordinator at ADDR did not answer within 30s (<detail>)"
//      anything else                the server's own message (INVALID_ARGUMENT lists every problem).
//  - Job names may be given as "jobs/abc" or "abc" (JobName).
//  - Thread-safe: calls may run concurrently (e.g. Cancel from a signal thread during a Watch).
//  - No exceptions escape.
#ifndef SIGMATUNE_CLIENT_JOB_CLIENT_H_
#define SIGMATUNE_CLIENT_JOB_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "sigmatune/v1/coordinator.grpc.pb.h"
#include "sigmatune/v1/coordinator.pb.h"

namespace sigmatune::client {

// The address used when neither --server nor SIGMATUNE_SERVER is given.
inline constexpr absl::string_view kDefaultServer = "127.0.0.1:50051";

struct JobClientOptions {
  std::string token;        // empty: no authorization metadata
  std::string tls_ca_path;  // empty: plaintext; else TLS trusting these PEM root certificates
  absl::Duration call_timeout = absl::Seconds(30);  // deadline of each unary call
  // Watch: after a broken stream, reconnect with a backoff that starts at reconnect_backoff and
  // doubles up to reconnect_backoff_max; give up when nothing has been received for
  // reconnect_timeout.
  absl::Duration reconnect_backoff = absl::Milliseconds(250);
  absl::Duration reconnect_backoff_max = absl::Seconds(5);
  absl::Duration reconnect_timeout = absl::Minutes(2);
};

// "abc" -> "jobs/abc"; "jobs/abc" is kept.
std::string JobName(absl::string_view name_or_id);

// SUCCEEDED, FAILED or CANCELLED.
bool IsTerminal(v1::JobState state);

// What a Watch callback wants next.
enum class WatchControl { kContinue, kStop };

using WatchCallback = std::function<WatchControl(const v1::WatchJobResponse&)>;

// Told before each reconnection of a Watch: why the stream broke (Unavailable, or OutOfRange for a
// resume token the coordinator no longer knows, with gRPC's or the server's own detail as the
// message) and how long the client waits before it dials again.
using ReconnectCallback = std::function<void(const absl::Status& why, absl::Duration wait)>;

class JobClient {
 public:
  // Reads the TLS root certificates (FailedPrecondition naming the file when it cannot) and
  // creates the channel to `address` ("host:port" or any gRPC target).
  static absl::StatusOr<std::unique_ptr<JobClient>> Create(const std::string& address,
                                                           JobClientOptions options);
  // Over an existing channel (tests).
  JobClient(std::string address, std::shared_ptr<grpc::Channel> channel, JobClientOptions options);

  // CreateJob. A non-empty request_id makes the call idempotent, so on UNAVAILABLE it is retried
  // once (after a second) with the same id; an empty one is never retried.
  absl::StatusOr<v1::Job> Submit(const v1::JobSpec& spec, const std::string& request_id, int32_t priority);
  absl::StatusOr<v1::Job> Get(absl::string_view name);
  // One page (request as given; page_size 0 = the server's default).
  absl::StatusOr<v1::ListJobsResponse> List(const v1::ListJobsRequest& request);
  absl::StatusOr<v1::Job> Cancel(absl::string_view name);
  absl::StatusOr<v1::JobReport> Report(absl::string_view name);

  // Follows a job until it reaches a terminal state, handing every response to `on_response` in
  // order (first the job as it is now, then its events). Returns OK when the job has reached a
  // terminal state (the last response handed over says which) or the callback returned kStop.
  //  - A stream that breaks with UNAVAILABLE after anything was received, or ends before a terminal
  //    state, is opened again with the resume_token of the last event seen (on_reconnect is told
  //    first); events the new stream repeats (sequence not above the last one handed over) are
  //    skipped. A watch whose very first stream fails reports the error at once.
  //  - OUT_OF_RANGE for a resume token (the coordinator no longer keeps those events) opens a fresh
  //    watch without a token, which starts again with the job as it is now.
  //  - Any other error, or nothing received for options.reconnect_timeout, ends the watch with it.
  absl::Status Watch(absl::string_view name, const WatchCallback& on_response,
                     const ReconnectCallback& on_reconnect = nullptr);

  const std::string& address() const { return address_; }
  const JobClientOptions& options() const { return options_; }

 private:
  enum class Deadline { kCallTimeout, kNone };
  void Prepare(grpc::ClientContext* context, Deadline deadline) const;
  // The Status of a finished call, with the messages of the contract.
  absl::Status ToStatus(const grpc::Status& status) const;

  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  JobClientOptions options_;
};

}  // namespace sigmatune::client

#endif  // SIGMATUNE_CLIENT_JOB_CLIENT_H_
