#include "server/service/coordinator.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "worker/job/spec.h"

namespace sigmatune::server {
namespace {

constexpr absl::string_view kJobsPrefix = "jobs/";

std::string RequestKey(const std::string& tenant, const std::string& request_id) {
  return absl::StrCat(tenant, std::string(1, '\0'), request_id);
}

absl::Status JobNotFound(const std::string& name) {
  return absl::NotFoundError(absl::StrCat("job ", name, " not found (names look like jobs/<id>; `sigmatune list` shows yours)"));
}

// "jobs/abc" or "abc" -> "jobs/abc".
std::string CanonicalName(const std::string& name) {
  return absl::StartsWith(name, kJobsPrefix) ? name : absl::StrCat(kJobsPrefix, name);
}

bool IsActive(v1::JobState state) { return !IsTerminal(state); }

absl::Status UnknownGroup(const std::string& group_id) {
  return absl::NotFoundError(
      absl::StrCat("unknown worker group ", group_id, " (the coordinator restarted?); join again"));
}

void Log(const std::string& line) {
  std::fprintf(stderr, "sigmatune-coordinator: %s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace

// ---- EventLog -----------------------------------------------------------------------------------

void EventLog::Append(const std::vector<v1::JobEvent>& events, bool terminal) {
  std::vector<Waiter> wake;
  {
    absl::MutexLock lock(&mu_);
    for (const v1::JobEvent& event : events) {
      events_.push_back(event);
      last_ = event.sequence();
    }
    while (static_cast<int>(events_.size()) > capacity_) events_.pop_front();
    terminal_ = terminal_ || terminal;
    wake.swap(waiters_);
  }
  for (Waiter& waiter : wake) waiter();
}

EventLog::Next EventLog::NextOrWait(int64_t sequence, v1::JobEvent* event, Waiter waiter) {
  absl::MutexLock lock(&mu_);
  if (sequence <= last_) {
    const int64_t first = last_ - static_cast<int64_t>(events_.size()) + 1;
    if (sequence < first) return Next::kGone;
    *event = events_[static_cast<size_t>(sequence - first)];
    return Next::kEvent;
  }
  if (terminal_) return Next::kEnd;
  waiters_.push_back(std::move(waiter));
  return Next::kWait;
}

int64_t EventLog::first_sequence() const {
  absl::MutexLock lock(&mu_);
  return last_ - static_cast<int64_t>(events_.size()) + 1;
}

int64_t EventLog::last_sequence() const {
  absl::MutexLock lock(&mu_);
  return last_;
}

bool EventLog::terminal() const {
  absl::MutexLock lock(&mu_);
  return terminal_;
}

// ---- AssignmentChannel --------------------------------------------------------------------------

void AssignmentChannel::Push(v1::Assignment assignment) {
  absl::MutexLock lock(&mu_);
  if (!closed_) queue_.push_back(std::move(assignment));
}

void AssignmentChannel::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

std::optional<v1::Assignment> AssignmentChannel::Next(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (closed_ || queue_.empty()) return std::nullopt;
  v1::Assignment next = std::move(queue_.front());
  queue_.pop_front();
  return next;
}

bool AssignmentChannel::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

// ---- Coordinator --------------------------------------------------------------------------------

Coordinator::Coordinator(JobStore* store, CoordinatorOptions options) : store_(store), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(JobStore* store, CoordinatorOptions options) {
  if (options.data_roots.empty()) return absl::InvalidArgumentError("the coordinator needs at least one data root");
  if (options.event_retention < 1) options.event_retention = 1;
  std::unique_ptr<Coordinator> coordinator(new Coordinator(store, std::move(options)));
  if (absl::Status loaded = coordinator->Load(); !loaded.ok()) return loaded;
  return coordinator;
}

absl::Status Coordinator::Load() {
  absl::StatusOr<std::vector<StoredJob>> stored = store_->LoadAll();
  if (!stored.ok()) return stored.status();
  absl::MutexLock write(&write_mu_);
  std::vector<std::string> running;
  {
    absl::MutexLock lock(&mu_);
    for (StoredJob& item : *stored) {
      auto entry = std::make_shared<JobEntry>();
      entry->create_seq = next_create_seq_++;
      entry->log = std::make_shared<EventLog>(options_.event_retention);
      entry->log->Append(item.events, IsTerminal(item.job.state()));
      entry->report = std::move(item.report);
      entry->job = std::move(item.job);
      const std::string& name = entry->job.name();
      if (!entry->job.request_id().empty()) {
        by_request_[RequestKey(entry->job.tenant(), entry->job.request_id())] = name;
      }
      by_tenant_[entry->job.tenant()].push_back(name);
      if (entry->job.state() == v1::JOB_STATE_RUNNING) running.push_back(name);
      jobs_[name] = std::move(entry);
    }
  }
  for (const std::string& name : running) {
    absl::StatusOr<JobStep> step = ApplyLocked(name, JobInput::CoordinatorRestart());
    if (!step.ok()) return step.status();
    Log(absl::StrCat(name, ": ", step->event.message()));
  }
  return absl::OkStatus();
}

std::string Coordinator::ResumeToken(const std::string& job_name, int64_t sequence) {
  return absl::StrCat(absl::StripPrefix(job_name, kJobsPrefix), ".", sequence);
}

absl::StatusOr<JobStep> Coordinator::ApplyLocked(const std::string& name, const JobInput& input,
                                                 std::optional<JobReportText> report) {
  return ApplyAllLocked(name, {input}, std::move(report));
}

absl::StatusOr<JobStep> Coordinator::ApplyAllLocked(const std::string& name, const std::vector<JobInput>& inputs,
                                                    std::optional<JobReportText> report) {
  std::shared_ptr<JobEntry> entry;
  v1::Job job;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = jobs_.find(name);
    if (it == jobs_.end()) return JobNotFound(name);
    entry = it->second;
    job = entry->job;
  }
  const absl::Time now = options_.clock();
  int64_t sequence = entry->log->last_sequence();
  std::vector<v1::JobEvent> events;
  JobStep last;
  Effect effect = Effect::kNone;
  for (const JobInput& input : inputs) {
    absl::StatusOr<JobStep> step = ApplyInput(job, input, now);
    if (!step.ok()) {
      if (events.empty()) return step.status();
      Log(absl::StrCat(name, ": ignored a report: ", step.status().message()));
      break;
    }
    step->event.set_sequence(++sequence);
    step->event.set_resume_token(ResumeToken(name, sequence));
    events.push_back(step->event);
    job = step->job;
    if (step->effect != Effect::kNone) effect = step->effect;
    last = *std::move(step);
  }
  JobUpdate update;
  update.job = job;
  update.events = events;
  update.drop_events_through = std::max<int64_t>(0, sequence - options_.event_retention);
  if (job.state() == v1::JOB_STATE_SUCCEEDED) update.report = std::move(report);
  absl::Status stored = store_->Update(update);
  if (!stored.ok()) {
    return absl::UnavailableError(absl::StrCat("the job store failed; ", name, " is unchanged: ", stored.message()));
  }
  {
    absl::MutexLock lock(&mu_);
    entry->job = job;
    if (update.report.has_value()) entry->report = *update.report;
    if (job.state() != v1::JOB_STATE_RUNNING) {
      // The group that ran it (if any) is free again.
      for (auto& [id, group] : groups_) {
        if (group.job == name) group.job.clear();
      }
    }
  }
  entry->log->Append(events, IsTerminal(job.state()));
  last.job = job;
  last.effect = effect;
  return last;
}

std::shared_ptr<Coordinator::JobEntry> Coordinator::FindVisible(const Tenant& tenant, const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = jobs_.find(CanonicalName(name));
  if (it == jobs_.end() || it->second->job.tenant() != tenant.name) return nullptr;
  return it->second;
}

absl::Status Coordinator::ResolveSpec(const Tenant& tenant, const std::string& id, v1::JobSpec* spec) const {
  const std::vector<std::string>& roots = tenant.roots.empty() ? options_.data_roots : tenant.roots;
  std::vector<job::SpecProblem> problems;
  for (auto& [field, message] :
       ResolveSpecPaths(spec, roots, absl::StrCat("outputs/", tenant.name, "/", id))) {
    problems.push_back({field, message});
  }
  if (!problems.empty()) return job::ProblemsToStatus("the job spec", problems);
  job::ApplyDefaults(id, spec);
  if (spec->cache_dir() != "none") {
    absl::StatusOr<std::string> cache = ResolveUnderRoots("cache_dir", spec->cache_dir(), roots, PathUse::kOutput);
    if (!cache.ok()) {
      problems.push_back({"cache_dir", std::string(absl::StripPrefix(cache.status().message(), "cache_dir: "))});
    } else {
      spec->set_cache_dir(*cache);
    }
  }
  for (job::SpecProblem& problem : job::ValidateJobSpec(*spec, job::FileChecks::kYes)) {
    problems.push_back(std::move(problem));
  }
  if (spec->world_size() > options_.max_world_size) {
    return absl::ResourceExhaustedError(absl::StrCat("world_size ", spec->world_size(),
                                                     " is more ranks than this coordinator allows (",
                                                     options_.max_world_size, ", --max_world_size)"));
  }
  return job::ProblemsToStatus("the job spec", problems);
}

absl::StatusOr<v1::Job> Coordinator::CreateJob(const Tenant& tenant, const v1::CreateJobRequest& request) {
  if (!request.has_spec()) return absl::InvalidArgumentError("CreateJob needs a spec");
  if (request.request_id().size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id is ", request.request_id().size(), " characters; at most 128"));
  }
  if (request.priority() < -1000 || request.priority() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("priority must be in [-1000, 1000], got ", request.priority()));
  }
  absl::MutexLock write(&write_mu_);
  int active = 0;
  {
    absl::ReaderMutexLock lock(&mu_);
    if (!request.request_id().empty()) {
      auto it = by_request_.find(RequestKey(tenant.name, request.request_id()));
      if (it != by_request_.end()) return jobs_.at(it->second)->job;
    }
    auto tenant_jobs = by_tenant_.find(tenant.name);
    if (tenant_jobs != by_tenant_.end()) {
      for (const std::string& name : tenant_jobs->second) active += IsActive(jobs_.at(name)->job.state()) ? 1 : 0;
    }
  }
  if (active >= options_.max_active_jobs_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant ", tenant.name, " has ", active,
                                                     " queued or running jobs, the most allowed "
                                                     "(--max_active_jobs_per_tenant); wait or cancel some"));
  }
  absl::StatusOr<std::string> token = NewToken();
  if (!token.ok()) return token.status();
  const std::string id = token->substr(0, 12);
  v1::JobSpec spec = request.spec();
  if (absl::Status resolved = ResolveSpec(tenant, id, &spec); !resolved.ok()) return resolved;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, entry] : jobs_) {
      if (IsActive(entry->job.state()) && entry->job.spec().output_dir() == spec.output_dir()) {
        return absl::FailedPreconditionError(absl::StrCat("output_dir ", spec.output_dir(), " is used by ", name,
                                                          ", which is ", StateName(entry->job.state()),
                                                          "; choose another output_dir or cancel it"));
      }
    }
  }
  const std::string name = absl::StrCat(kJobsPrefix, id);
  JobStep step = NewJob(name, tenant.name, request.request_id(), std::move(spec), request.priority(),
                        options_.restart_budget, options_.clock());
  step.event.set_sequence(1);
  step.event.set_resume_token(ResumeToken(name, 1));
  if (absl::Status created = store_->Create(step.job, step.event); !created.ok()) {
    if (absl::IsAlreadyExists(created)) return created;
    return absl::UnavailableError(absl::StrCat("the job store failed; nothing was created: ", created.message()));
  }
  auto entry = std::make_shared<JobEntry>();
  entry->job = step.job;
  entry->log = std::make_shared<EventLog>(options_.event_retention);
  {
    absl::MutexLock lock(&mu_);
    entry->create_seq = next_create_seq_++;
    if (!request.request_id().empty()) by_request_[RequestKey(tenant.name, request.request_id())] = name;
    by_tenant_[tenant.name].push_back(name);
    jobs_[name] = entry;
  }
  entry->log->Append({step.event}, false);
  ScheduleLocked();
  absl::ReaderMutexLock lock(&mu_);
  return entry->job;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const Tenant& tenant, const std::string& name) const {
  std::shared_ptr<JobEntry> entry = FindVisible(tenant, name);
  if (entry == nullptr) return JobNotFound(CanonicalName(name));
  absl::ReaderMutexLock lock(&mu_);
  return entry->job;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::ListJobs(const Tenant& tenant,
                                                          const v1::ListJobsRequest& request) const {
  if (request.page_size() < 0 || request.page_size() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be in [0, 1000], got ", request.page_size()));
  }
  const int page_size = request.page_size() == 0 ? 100 : request.page_size();
  int64_t before = INT64_MAX;
  if (!request.page_token().empty()) {
    if (!absl::SimpleAtoi(request.page_token(), &before) || before <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", request.page_token(), "' is not one ListJobs returned"));
    }
  }
  v1::ListJobsResponse response;
  absl::ReaderMutexLock lock(&mu_);
  auto tenant_jobs = by_tenant_.find(tenant.name);
  if (tenant_jobs == by_tenant_.end()) return response;
  const std::vector<std::string>& names = tenant_jobs->second;
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    const JobEntry& entry = *jobs_.at(*it);
    if (entry.create_seq >= before) continue;
    if (request.states_size() > 0 &&
        std::find(request.states().begin(), request.states().end(), entry.job.state()) == request.states().end()) {
      continue;
    }
    if (response.jobs_size() == page_size) {
      response.set_next_page_token(absl::StrCat(jobs_.at(response.jobs(page_size - 1).name())->create_seq));
      break;
    }
    v1::Job* job = response.add_jobs();
    if (request.view() == v1::JOB_VIEW_FULL) {
      *job = entry.job;
    } else {
      // Field by field, so the spec is never copied.
      const v1::Job& from = entry.job;
      job->set_name(from.name());
      job->set_tenant(from.tenant());
      job->set_request_id(from.request_id());
      job->set_state(from.state());
      job->set_priority(from.priority());
      if (from.has_progress()) *job->mutable_progress() = from.progress();
      job->set_reason(from.reason());
      job->set_cancel_requested(from.cancel_requested());
      *job->mutable_metrics() = from.metrics();
      if (from.has_artifacts()) *job->mutable_artifacts() = from.artifacts();
      job->set_group(from.group());
      job->set_attempt(from.attempt());
      job->set_restarts_left(from.restarts_left());
      if (from.has_create_time()) *job->mutable_create_time() = from.create_time();
      if (from.has_start_time()) *job->mutable_start_time() = from.start_time();
      if (from.has_end_time()) *job->mutable_end_time() = from.end_time();
      if (from.has_update_time()) *job->mutable_update_time() = from.update_time();
    }
  }
  return response;
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const Tenant& tenant, const std::string& name) {
  absl::MutexLock write(&write_mu_);
  std::shared_ptr<JobEntry> entry = FindVisible(tenant, name);
  if (entry == nullptr) return JobNotFound(CanonicalName(name));
  absl::StatusOr<JobStep> step = ApplyLocked(entry->job.name(), JobInput::Cancel(tenant.name));
  if (!step.ok()) return step.status();
  if (step->effect == Effect::kStopGroup) {
    absl::MutexLock lock(&mu_);
    for (auto& [id, group] : groups_) {
      if (group.job == step->job.name() && group.channel != nullptr) {
        v1::Assignment cancel;
        cancel.mutable_cancel()->set_job(step->job.name());
        cancel.mutable_cancel()->set_attempt(step->job.attempt());
        group.channel->Push(std::move(cancel));
      }
    }
  }
  ScheduleLocked();
  return step->job;
}

absl::StatusOr<v1::JobReport> Coordinator::GetJobReport(const Tenant& tenant, const std::string& name) const {
  std::shared_ptr<JobEntry> entry = FindVisible(tenant, name);
  if (entry == nullptr) return JobNotFound(CanonicalName(name));
  absl::ReaderMutexLock lock(&mu_);
  const v1::Job& job = entry->job;
  if (job.state() != v1::JOB_STATE_SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat(job.name(), " is ", StateName(job.state()),
                                                      "; its report exists once it has SUCCEEDED"));
  }
  v1::JobReport report;
  report.set_name(job.name());
  report.set_text(entry->report.text);
  report.set_json(entry->report.json);
  *report.mutable_metrics() = job.metrics();
  *report.mutable_artifacts() = job.artifacts();
  return report;
}

absl::StatusOr<WatchStart> Coordinator::StartWatch(const Tenant& tenant, const v1::WatchJobRequest& request) const {
  std::shared_ptr<JobEntry> entry = FindVisible(tenant, request.name());
  if (entry == nullptr) return JobNotFound(CanonicalName(request.name()));
  WatchStart start;
  start.log = entry->log;
  if (request.resume_token().empty()) {
    absl::ReaderMutexLock lock(&mu_);
    start.snapshot = entry->job;
    // Events appended after this snapshot follow it (the first may repeat what the snapshot shows).
    start.next_sequence = entry->log->last_sequence() + 1;
    return start;
  }
  const std::string id(absl::StripPrefix(entry->job.name(), kJobsPrefix));
  std::pair<std::string, std::string> parts = absl::StrSplit(request.resume_token(), absl::MaxSplits('.', 1));
  int64_t sequence = 0;
  if (parts.first != id || !absl::SimpleAtoi(parts.second, &sequence) || sequence < 1 ||
      sequence > entry->log->last_sequence()) {
    return absl::InvalidArgumentError(absl::StrCat("resume_token '", request.resume_token(),
                                                   "' is not a token of an event of ", entry->job.name()));
  }
  if (sequence + 1 < entry->log->first_sequence()) {
    return absl::OutOfRangeError(absl::StrCat("resume_token '", request.resume_token(), "' is older than the ",
                                              options_.event_retention, " events kept for ", entry->job.name(),
                                              "; watch again without a token"));
  }
  start.next_sequence = sequence + 1;
  return start;
}

// ---- Worker groups ------------------------------------------------------------------------------

absl::StatusOr<v1::JoinResponse> Coordinator::Join(const v1::JoinRequest& request) {
  if (request.size() < 1 || request.devices_size() != request.size()) {
    return absl::InvalidArgumentError(absl::StrCat("a group joins with size >= 1 and one device per rank; got size ",
                                                   request.size(), " and ", request.devices_size(), " devices"));
  }
  absl::StatusOr<std::string> token = NewToken();
  if (!token.ok()) return token.status();
  Group group;
  group.id = absl::StrCat("g-", token->substr(0, 8));
  group.join = request;
  group.last_contact = options_.clock();
  {
    absl::MutexLock write(&write_mu_);
    absl::MutexLock lock(&mu_);
    groups_[group.id] = group;
  }
  Log(absl::StrCat("worker group ", group.id, " joined: ", request.size(), " rank(s), leader on ", request.hostname()));
  v1::JoinResponse response;
  response.set_group_id(group.id);
  response.set_heartbeat_interval_s(absl::ToDoubleSeconds(options_.heartbeat_interval));
  response.set_heartbeat_timeout_s(absl::ToDoubleSeconds(options_.heartbeat_timeout));
  return response;
}

absl::StatusOr<std::shared_ptr<AssignmentChannel>> Coordinator::AttachStream(const std::string& group_id) {
  absl::MutexLock write(&write_mu_);
  auto channel = std::make_shared<AssignmentChannel>();
  {
    absl::MutexLock lock(&mu_);
    Group* group = TouchGroupLocked(group_id);
    if (group == nullptr) return UnknownGroup(group_id);
    if (group->channel != nullptr) group->channel->Close();
    group->channel = channel;
  }
  ScheduleLocked();
  return channel;
}

void Coordinator::DetachStream(const std::string& group_id, const std::shared_ptr<AssignmentChannel>& channel) {
  absl::MutexLock write(&write_mu_);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = groups_.find(group_id);
    if (it == groups_.end() || it->second.channel != channel) return;
  }
  LoseGroupLocked(group_id, "its assignment stream ended");
  ScheduleLocked();
}

void Coordinator::LoseGroupLocked(const std::string& group_id, const std::string& why) {
  std::string job;
  {
    absl::MutexLock lock(&mu_);
    auto it = groups_.find(group_id);
    if (it == groups_.end()) return;
    job = it->second.job;
    if (it->second.channel != nullptr) it->second.channel->Close();
    groups_.erase(it);
  }
  Log(absl::StrCat("worker group ", group_id, " lost: ", why));
  if (job.empty()) return;
  absl::StatusOr<JobStep> step = ApplyLocked(job, JobInput::GroupLost(group_id, why));
  if (step.ok()) {
    Log(absl::StrCat(job, ": ", step->event.message()));
  } else {
    Log(absl::StrCat(job, ": ", step.status().message()));
  }
}

absl::StatusOr<v1::ReportEventsResponse> Coordinator::ReportEvents(const v1::ReportEventsRequest& request) {
  absl::MutexLock write(&write_mu_);
  {
    absl::MutexLock lock(&mu_);
    Group* group = TouchGroupLocked(request.group_id());
    if (group == nullptr) return UnknownGroup(request.group_id());
    if (group->job != request.job() || group->attempt != request.attempt()) {
      return absl::FailedPreconditionError(absl::StrCat("group ", request.group_id(), " does not run ", request.job(),
                                                        " attempt ", request.attempt(), " (any more); stop it"));
    }
  }
  std::vector<JobInput> inputs;
  for (const v1::Progress& progress : request.progress()) inputs.push_back(JobInput::ProgressReport(progress));
  std::optional<JobReportText> report;
  if (request.has_result()) {
    inputs.push_back(JobInput::Result(request.result()));
    report = JobReportText{request.result().report_text(), request.result().report_json()};
  }
  v1::ReportEventsResponse response;
  if (inputs.empty()) return response;
  absl::StatusOr<JobStep> step = ApplyAllLocked(request.job(), inputs, std::move(report));
  if (!step.ok()) return step.status();
  response.set_cancel(step->job.cancel_requested());
  if (request.has_result()) {
    Log(absl::StrCat(request.job(), ": ", step->event.message()));
    ScheduleLocked();
  }
  return response;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& request) {
  v1::HeartbeatResponse response;
  absl::MutexLock lock(&mu_);
  Group* group = TouchGroupLocked(request.group_id());
  if (group == nullptr) return UnknownGroup(request.group_id());
  if (!request.job().empty()) {
    auto job = jobs_.find(request.job());
    const bool current = group->job == request.job() && group->attempt == request.attempt();
    response.set_cancel(!current || (job != jobs_.end() && job->second->job.cancel_requested()));
  }
  return response;
}

void Coordinator::CheckGroups() {
  absl::MutexLock write(&write_mu_);
  const absl::Time now = options_.clock();
  std::vector<std::pair<std::string, std::string>> silent;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, group] : groups_) {
      const absl::Duration quiet = now - group.last_contact;
      if (quiet > options_.heartbeat_timeout) {
        silent.emplace_back(id, absl::StrCat("no heartbeat for ", absl::FormatDuration(quiet)));
      }
    }
  }
  for (const auto& [id, why] : silent) LoseGroupLocked(id, why);
  if (!silent.empty()) ScheduleLocked();
}

Coordinator::Group* Coordinator::TouchGroupLocked(const std::string& group_id) {
  auto it = groups_.find(group_id);
  if (it == groups_.end()) return nullptr;
  it->second.last_contact = options_.clock();
  return &it->second;
}

size_t Coordinator::num_groups() const {
  absl::ReaderMutexLock lock(&mu_);
  return groups_.size();
}

void Coordinator::ScheduleLocked() {
  struct Candidate {
    int priority;
    int64_t create_seq;
    std::string name;
    int64_t world_size;
  };
  std::vector<Candidate> queued;
  std::vector<std::pair<int, std::string>> idle;  // (size, group id)
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [id, group] : groups_) {
      if (group.job.empty() && group.channel != nullptr && !group.channel->closed()) {
        idle.emplace_back(group.join.size(), id);
      }
    }
    if (idle.empty()) return;
    for (const auto& [name, entry] : jobs_) {
      if (entry->job.state() == v1::JOB_STATE_QUEUED) {
        queued.push_back({entry->job.priority(), entry->create_seq, name, entry->job.spec().world_size()});
      }
    }
  }
  std::sort(queued.begin(), queued.end(), [](const Candidate& a, const Candidate& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.create_seq < b.create_seq;
  });
  std::sort(idle.begin(), idle.end());
  for (const Candidate& job : queued) {
    if (idle.empty()) break;
    auto fit = std::find_if(idle.begin(), idle.end(), [&](const std::pair<int, std::string>& group) {
      return job.world_size == 0 || group.first == job.world_size;
    });
    if (fit == idle.end()) continue;
    const std::string group_id = fit->second;
    std::string detail;
    {
      absl::ReaderMutexLock lock(&mu_);
      const Group& group = groups_.at(group_id);
      detail = absl::StrCat(group.join.size(), " rank(s), leader on ", group.join.hostname());
    }
    absl::StatusOr<JobStep> step = ApplyLocked(job.name, JobInput::Assign(group_id, detail));
    if (!step.ok()) {
      Log(absl::StrCat("cannot assign ", job.name, ": ", step.status().message()));
      return;
    }
    idle.erase(fit);
    v1::Assignment assignment;
    assignment.mutable_run()->set_job(job.name);
    assignment.mutable_run()->set_attempt(step->job.attempt());
    *assignment.mutable_run()->mutable_spec() = step->job.spec();
    absl::MutexLock lock(&mu_);
    Group& group = groups_.at(group_id);
    group.job = job.name;
    group.attempt = step->job.attempt();
    group.channel->Push(std::move(assignment));
    Log(absl::StrCat(job.name, ": ", step->event.message()));
  }
}

}  // namespace sigmatune::server
