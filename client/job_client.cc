#include "client/job_client.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace sigmatune::client {
namespace {

constexpr absl::string_view kJobsPrefix = "jobs/";
constexpr int kMaxMessageBytes = 64 << 20;  // reports carry report.json and report.txt

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the TLS CA file ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Detail(const grpc::Status& status) {
  return status.error_message().empty() ? "no detail" : status.error_message();
}

}  // namespace

std::string JobName(absl::string_view name_or_id) {
  if (absl::StartsWith(name_or_id, kJobsPrefix)) return std::string(name_or_id);
  return absl::StrCat(kJobsPrefix, name_or_id);
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<std::unique_ptr<JobClient>> JobClient::Create(const std::string& address,
                                                             JobClientOptions options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_ca_path.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    absl::StatusOr<std::string> roots = ReadFile(options.tls_ca_path);
    if (!roots.ok()) return roots.status();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *std::move(roots);
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetUserAgentPrefix("sigmatune-cli");
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(address, credentials, args);
  return std::make_unique<JobClient>(address, std::move(channel), std::move(options));
}

JobClient::JobClient(std::string address, std::shared_ptr<grpc::Channel> channel, JobClientOptions options)
    : address_(std::move(address)),
      channel_(std::move(channel)),
      stub_(v1::JobService::NewStub(channel_)),
      options_(std::move(options)) {}

void JobClient::Prepare(grpc::ClientContext* context, Deadline deadline) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  if (deadline == Deadline::kCallTimeout) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
  }
}

absl::Status JobClient::ToStatus(const grpc::Status& status) const {
  if (status.ok()) return absl::OkStatus();
  const std::string detail = Detail(status);
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      // A status the server sent arrives over a READY channel; a failed connection leaves the
      // channel in TRANSIENT_FAILURE (or IDLE after the connection dropped).
      if (channel_->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY) {
        return absl::UnavailableError(
            absl::StrCat("the coordinator at ", address_, " is unavailable (", detail, "); try again"));
      }
      return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", address_, " (", detail,
                                                 "); is it running? Set --server or SIGMATUNE_SERVER"));
    case grpc::StatusCode::UNAUTHENTICATED:
      if (options_.token.empty()) {
        return absl::UnauthenticatedError(absl::StrCat("the coordinator at ", address_, " needs a token (", detail,
                                                       "); set SIGMATUNE_TOKEN or --token_file"));
      }
      return absl::UnauthenticatedError(absl::StrCat("the coordinator at ", address_, " refused the token (",
                                                     detail, "); set SIGMATUNE_TOKEN or --token_file"));
    case grpc::StatusCode::PERMISSION_DENIED:
      return absl::PermissionDeniedError(
          absl::StrCat("the coordinator at ", address_, " denied this token (", detail,
                       "); use a tenant's token (SIGMATUNE_TOKEN or --token_file), not a worker's"));
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::DeadlineExceededError(absl::StrCat("the coordinator at ", address_, " did not answer within ",
                                                      absl::FormatDuration(options_.call_timeout), " (",
                                                      detail, ")"));
    default:
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()), detail);
  }
}

absl::StatusOr<v1::Job> JobClient::Submit(const v1::JobSpec& spec, const std::string& request_id,
                                          int32_t priority) {
  v1::CreateJobRequest request;
  *request.mutable_spec() = spec;
  request.set_request_id(request_id);
  request.set_priority(priority);
  const int attempts = request_id.empty() ? 1 : 2;
  grpc::Status status;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    if (attempt > 0) absl::SleepFor(absl::Seconds(1));
    grpc::ClientContext context;
    Prepare(&context, Deadline::kCallTimeout);
    v1::Job job;
    status = stub_->CreateJob(&context, request, &job);
    if (status.ok()) return job;
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
  }
  return ToStatus(status);
}

absl::StatusOr<v1::Job> JobClient::Get(absl::string_view name) {
  v1::GetJobRequest request;
  request.set_name(JobName(name));
  grpc::ClientContext context;
  Prepare(&context, Deadline::kCallTimeout);
  v1::Job job;
  const grpc::Status status = stub_->GetJob(&context, request, &job);
  if (!status.ok()) return ToStatus(status);
  return job;
}

absl::StatusOr<v1::ListJobsResponse> JobClient::List(const v1::ListJobsRequest& request) {
  grpc::ClientContext context;
  Prepare(&context, Deadline::kCallTimeout);
  v1::ListJobsResponse response;
  const grpc::Status status = stub_->ListJobs(&context, request, &response);
  if (!status.ok()) return ToStatus(status);
  return response;
}

absl::StatusOr<v1::Job> JobClient::Cancel(absl::string_view name) {
  v1::CancelJobRequest request;
  request.set_name(JobName(name));
  grpc::ClientContext context;
  Prepare(&context, Deadline::kCallTimeout);
  v1::Job job;
  const grpc::Status status = stub_->CancelJob(&context, request, &job);
  if (!status.ok()) return ToStatus(status);
  return job;
}

absl::StatusOr<v1::JobReport> JobClient::Report(absl::string_view name) {
  v1::GetJobReportRequest request;
  request.set_name(JobName(name));
  grpc::ClientContext context;
  Prepare(&context, Deadline::kCallTimeout);
  v1::JobReport report;
  const grpc::Status status = stub_->GetJobReport(&context, request, &report);
  if (!status.ok()) return ToStatus(status);
  return report;
}

absl::Status JobClient::Watch(absl::string_view name, const WatchCallback& on_response,
                              const ReconnectCallback& on_reconnect) {
  const std::string job_name = JobName(name);
  std::string resume_token;
  int64_t last_sequence = 0;
  v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
  bool received_any = false;
  absl::Time last_received = absl::Now();
  absl::Duration backoff = options_.reconnect_backoff;
  while (true) {
    grpc::ClientContext context;
    Prepare(&context, Deadline::kNone);
    v1::WatchJobRequest request;
    request.set_name(job_name);
    request.set_resume_token(resume_token);
    std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader = stub_->WatchJob(&context, request);
    v1::WatchJobResponse response;
    while (reader->Read(&response)) {
      received_any = true;
      last_received = absl::Now();
      backoff = options_.reconnect_backoff;
      if (response.has_event()) {
        const v1::JobEvent& event = response.event();
        if (event.sequence() > 0 && event.sequence() <= last_sequence) continue;  // replayed
        last_sequence = std::max(last_sequence, event.sequence());
        if (!event.resume_token().empty()) resume_token = event.resume_token();
        if (event.state() != v1::JOB_STATE_UNSPECIFIED) last_state = event.state();
      } else if (response.has_job()) {
        last_state = response.job().state();
      }
      if (on_response(response) == WatchControl::kStop) {
        context.TryCancel();
        reader->Finish();  // CANCELLED by us
        return absl::OkStatus();
      }
    }
    grpc::Status status = reader->Finish();
    if (status.ok()) {
      if (IsTerminal(last_state)) return absl::OkStatus();
      // The coordinator went away cleanly (a restart) before the job ended: follow it again.
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the watch stream ended before the job finished");
    }
    if (status.error_code() == grpc::StatusCode::OUT_OF_RANGE && !resume_token.empty()) {
      // The coordinator no longer keeps the events after our token: start again from the job as it
      // is now (its sequences need not continue ours).
      if (on_reconnect) on_reconnect(absl::OutOfRangeError(Detail(status)), absl::ZeroDuration());
      resume_token.clear();
      last_sequence = 0;
      continue;
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || !received_any) return ToStatus(status);
    const absl::Status why = ToStatus(status);
    if (absl::Now() + backoff - last_received > options_.reconnect_timeout) {
      return absl::UnavailableError(absl::StrCat(why.message(), "; gave up following ", job_name, " after ",
                                                 absl::FormatDuration(options_.reconnect_timeout),
                                                 " without an answer"));
    }
    if (on_reconnect) on_reconnect(absl::UnavailableError(Detail(status)), backoff);
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, options_.reconnect_backoff_max);
  }
}

}  // namespace sigmatune::client
