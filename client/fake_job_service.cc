#include "client/fake_job_service.h"

#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace sigmatune::client::testing {
namespace {

constexpr int64_t kStartSeconds = 1700000000;

void SetTime(google::protobuf::Timestamp* t, double seconds) {
  t->set_seconds(static_cast<int64_t>(seconds));
  t->set_nanos(static_cast<int32_t>((seconds - static_cast<int64_t>(seconds)) * 1e9));
}

void AddScalar(v1::Progress* p, const std::string& name, double value) {
  v1::Scalar* s = p->add_scalars();
  s->set_name(name);
  s->set_value(value);
}

}  // namespace

WatchScript TrainingScript(int train_steps, v1::JobState final_state, const std::string& message) {
  WatchScript script;
  script.initial_state = v1::JOB_STATE_QUEUED;
  auto add = [&script](v1::JobState state) -> v1::JobEvent& {
    v1::JobEvent& e = script.events.emplace_back();
    e.set_state(state);
    SetTime(e.mutable_time(), kStartSeconds + 10.0 * script.events.size());
    return e;
  };
  add(v1::JOB_STATE_RUNNING).set_message("assigned to group g-1 (1 rank)");
  for (int step = 1; step <= train_steps; ++step) {
    v1::Progress* p = add(v1::JOB_STATE_RUNNING).mutable_progress();
    p->set_phase(v1::JOB_PHASE_TRAIN);
    p->set_step(step);
    p->set_total_steps(train_steps);
    p->set_elapsed_s(10.0 * step);
    SetTime(p->mutable_time(), kStartSeconds + 10.0 * step);
    AddScalar(p, "loss", 3.0 - 0.25 * step);
    AddScalar(p, "lr", 2e-4);
    AddScalar(p, "tokens_per_s", 1234);
  }
  add(v1::JOB_STATE_RUNNING).set_message(absl::StrCat("saved checkpoint-", train_steps));
  add(final_state).set_message(message);
  return script;
}

v1::Job FakeJobService::AddJob(v1::Job job, WatchScript script, v1::JobReport report) {
  absl::MutexLock lock(&mu_);
  if (job.name().empty()) job.set_name(NewName());
  for (size_t i = 0; i < script.events.size(); ++i) {
    script.events[i].set_sequence(static_cast<int64_t>(i) + 1);
    script.events[i].set_resume_token(absl::StrCat("tok-", i + 1));
  }
  Entry& entry = jobs_[job.name()];
  entry.job = job;
  entry.out_of_range_left = script.out_of_range_times;
  entry.script = std::move(script);
  entry.report = std::move(report);
  entry.report.set_name(job.name());
  order_.push_back(job.name());
  return job;
}

void FakeJobService::FailNextCreates(int n) {
  absl::MutexLock lock(&mu_);
  fail_creates_ = n;
}

void FakeJobService::ScriptCreatedJobs(v1::JobState final_state, WatchScript script, v1::JobReport report) {
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < script.events.size(); ++i) {
    script.events[i].set_sequence(static_cast<int64_t>(i) + 1);
    script.events[i].set_resume_token(absl::StrCat("tok-", i + 1));
  }
  Entry entry;
  entry.job.set_state(final_state);
  entry.out_of_range_left = script.out_of_range_times;
  entry.script = std::move(script);
  entry.report = std::move(report);
  created_template_ = std::move(entry);
}

std::vector<v1::CreateJobRequest> FakeJobService::create_requests() const {
  absl::MutexLock lock(&mu_);
  return create_requests_;
}

std::vector<std::string> FakeJobService::authorizations() const {
  absl::MutexLock lock(&mu_);
  return authorizations_;
}

std::vector<std::string> FakeJobService::watch_tokens() const {
  absl::MutexLock lock(&mu_);
  return watch_tokens_;
}

int FakeJobService::list_calls() const {
  absl::MutexLock lock(&mu_);
  return list_calls_;
}

std::vector<std::string> FakeJobService::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool FakeJobService::HasJob(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  return jobs_.count(name) > 0;
}

std::string FakeJobService::NewName() { return absl::StrCat("jobs/j", next_id_++); }

grpc::Status FakeJobService::Authenticate(grpc::ServerContext* context) {
  std::string value;
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  if (it != metadata.end()) value.assign(it->second.data(), it->second.size());
  absl::MutexLock lock(&mu_);
  authorizations_.push_back(value);
  if (!token_.empty() && value != absl::StrCat("Bearer ", token_)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  }
  return grpc::Status::OK;
}

grpc::Status FakeJobService::CreateJob(grpc::ServerContext* context, const v1::CreateJobRequest* request,
                                       v1::Job* job) {
  if (grpc::Status auth = Authenticate(context); !auth.ok()) return auth;
  absl::MutexLock lock(&mu_);
  create_requests_.push_back(*request);
  if (fail_creates_ > 0) {
    --fail_creates_;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the job store failed");
  }
  if (request->spec().base_model().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "1 problem in the job spec:\n  base_model: required; give a model directory or .gguf file");
  }
  if (!request->request_id().empty()) {
    const auto it = request_ids_.find(request->request_id());
    if (it != request_ids_.end()) {
      *job = jobs_[it->second].job;
      return grpc::Status::OK;
    }
  }
  v1::Job created;
  created.set_name(NewName());
  created.set_request_id(request->request_id());
  created.set_priority(request->priority());
  *created.mutable_spec() = request->spec();
  created.set_state(v1::JOB_STATE_QUEUED);
  SetTime(created.mutable_create_time(), static_cast<double>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()));
  Entry& entry = jobs_[created.name()];
  entry.job = created;
  if (created_template_.has_value()) {
    entry = *created_template_;
    entry.job.MergeFrom(created);
    entry.job.set_state(created_template_->job.state());
    entry.report.set_name(created.name());
  }
  order_.push_back(created.name());
  if (!request->request_id().empty()) request_ids_[request->request_id()] = created.name();
  *job = created;
  return grpc::Status::OK;
}

grpc::Status FakeJobService::GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request, v1::Job* job) {
  if (grpc::Status auth = Authenticate(context); !auth.ok()) return auth;
  absl::MutexLock lock(&mu_);
  const auto it = jobs_.find(request->name());
  if (it == jobs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat(request->name(), " not found"));
  *job = it->second.job;
  return grpc::Status::OK;
}

grpc::Status FakeJobService::ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  if (grpc::Status auth = Authenticate(context); !auth.ok()) return auth;
  absl::MutexLock lock(&mu_);
  ++list_calls_;
  const int page_size = request->page_size() == 0 ? 100 : request->page_size();
  int offset = 0;
  if (!request->page_token().empty() && !absl::SimpleAtoi(request->page_token(), &offset)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad page_token");
  }
  std::vector<const v1::Job*> matching;
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
    const v1::Job& job = jobs_[*it].job;
    bool wanted = request->states().empty();
    for (int state : request->states()) wanted = wanted || state == job.state();
    if (wanted) matching.push_back(&job);
  }
  for (int i = offset; i < static_cast<int>(matching.size()) && i < offset + page_size; ++i) {
    *response->add_jobs() = *matching[i];
  }
  if (offset + page_size < static_cast<int>(matching.size())) {
    response->set_next_page_token(absl::StrCat(offset + page_size));
  }
  return grpc::Status::OK;
}

grpc::Status FakeJobService::CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                                       v1::Job* job) {
  if (grpc::Status auth = Authenticate(context); !auth.ok()) return auth;
  absl::MutexLock lock(&mu_);
  const auto it = jobs_.find(request->name());
  if (it == jobs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat(request->name(), " not found"));
  v1::Job& stored = it->second.job;
  cancelled_.push_back(request->name());
  if (stored.state() == v1::JOB_STATE_QUEUED) {
    stored.set_state(v1::JOB_STATE_CANCELLED);
    stored.set_reason("cancelled by the test");
  } else if (stored.state() == v1::JOB_STATE_RUNNING) {
    stored.set_cancel_requested(true);
  } else {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, absl::StrCat(request->name(), " has already ended"));
  }
  *job = stored;
  return grpc::Status::OK;
}

grpc::Status FakeJobService::WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                                      grpc::ServerWriter<v1::WatchJobResponse>* writer) {
  if (grpc::Status auth = Authenticate(context); !auth.ok()) return auth;
  std::vector<v1::WatchJobResponse> responses;
  int break_after = -1;
  bool hold = false;
  {
    absl::MutexLock lock(&mu_);
    watch_tokens_.push_back(request->resume_token());
    const auto it = jobs_.find(request->name());
    if (it == jobs_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat(request->name(), " not found"));
    }
    Entry& entry = it->second;
    hold = entry.script.hold_until_cancelled;
    int64_t after = 0;
    if (request->resume_token().empty()) {
      v1::Job initial = entry.job;
      initial.set_state(entry.script.initial_state);
      initial.clear_progress();
      initial.clear_reason();
      *responses.emplace_back().mutable_job() = initial;
      if (!entry.watched_without_token) break_after = entry.script.break_after;
      entry.watched_without_token = true;
    } else {
      if (entry.out_of_range_left > 0) {
        --entry.out_of_range_left;
        return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "the events after this token are no longer kept");
      }
      absl::string_view token = request->resume_token();
      if (!absl::ConsumePrefix(&token, "tok-") || !absl::SimpleAtoi(token, &after) || after < 1 ||
          after > static_cast<int64_t>(entry.script.events.size())) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed resume token");
      }
    }
    for (const v1::JobEvent& event : entry.script.events) {
      if (event.sequence() > after) *responses.emplace_back().mutable_event() = event;
    }
  }
  int events = 0;
  for (const v1::WatchJobResponse& response : responses) {
    if (response.has_event()) {
      if (break_after >= 0 && events == break_after) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is restarting");
      }
      ++events;
    }
    if (!writer->Write(response)) return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  }
  if (!hold) return grpc::Status::OK;
  while (!context->IsCancelled()) {
    {
      absl::MutexLock lock(&mu_);
      Entry& entry = jobs_[request->name()];
      if (entry.job.cancel_requested()) {
        entry.job.set_state(v1::JOB_STATE_CANCELLED);
        entry.job.set_reason("cancelled by the test");
        v1::WatchJobResponse response;
        v1::JobEvent* event = response.mutable_event();
        event->set_sequence(static_cast<int64_t>(entry.script.events.size()) + 1);
        event->set_state(v1::JOB_STATE_CANCELLED);
        event->set_message("stopped at a checkpoint");
        writer->Write(response);
        return grpc::Status::OK;
      }
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
}

grpc::Status FakeJobService::GetJobReport(grpc::ServerContext* context, const v1::GetJobReportRequest* request,
                                          v1::JobReport* report) {
  if (grpc::Status auth = Authenticate(context); !auth.ok()) return auth;
  absl::MutexLock lock(&mu_);
  const auto it = jobs_.find(request->name());
  if (it == jobs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat(request->name(), " not found"));
  if (it->second.job.state() != v1::JOB_STATE_SUCCEEDED) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, absl::StrCat(request->name(), " has not succeeded"));
  }
  *report = it->second.report;
  return grpc::Status::OK;
}

FakeCoordinator::FakeCoordinator(std::string token) : service_(std::move(token)) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service_);
  server_ = builder.BuildAndStart();
  address_ = absl::StrCat("127.0.0.1:", port);
}

FakeCoordinator::~FakeCoordinator() {
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace sigmatune::client::testing
