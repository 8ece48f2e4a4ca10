// The attached worker against an in-process fake coordinator (a sync WorkerService on 127.0.0.1):
// a group of one and a group of two thread ranks run an assigned tiny job to SUCCEEDED; a cancel
// during training stops it with a checkpoint; a cancel during calibration stops it at the next phase
// boundary; a coordinator that goes away stops the job, and the group joins the restarted
// coordinator and resumes the reassigned job from its checkpoint; a wrong token is an error that
// names the token.
#include "worker/service/coordinator_link.h"

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "examples/tiny_job.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "sigmatune/v1/worker.grpc.pb.h"
#include "worker/comm/local_communicator.h"
#include "worker/job/spec.h"

namespace sigmatune::service {
namespace {

namespace fs = std::filesystem;

// What the fake does when a ReportEvents arrives.
enum class OnReport { kNothing, kCancelInResponse, kCancelOnStream, kCancelInHeartbeats };

class FakeCoordinator final : public v1::WorkerService::Service {
 public:
  // Group names are "groups/<name>-<n>", so two fakes never know each other's groups.
  FakeCoordinator(std::string name, std::string token) : name_(std::move(name)), token_(std::move(token)) {}

  grpc::Status Join(grpc::ServerContext* context, const v1::JoinRequest* request,
                    v1::JoinResponse* response) override {
    if (!Authorized(*context)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
    absl::MutexLock lock(&mu_);
    joins_.push_back(*request);
    const std::string group = absl::StrCat("groups/", name_, "-", joins_.size());
    groups_.insert(group);
    response->set_group_id(group);
    response->set_heartbeat_interval_s(0.2);
    response->set_heartbeat_timeout_s(3);
    return grpc::Status::OK;
  }

  grpc::Status StreamAssignments(grpc::ServerContext* context, const v1::StreamAssignmentsRequest* request,
                                 grpc::ServerWriter<v1::Assignment>* writer) override {
    if (!Authorized(*context)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
    while (true) {
      std::optional<v1::Assignment> next;
      {
        absl::MutexLock lock(&mu_);
        if (groups_.count(request->group_id()) == 0) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no group");
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_ || !queue_.empty(); };
        mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(50));
        if (closing_) return grpc::Status::OK;  // the coordinator goes away
        if (context->IsCancelled()) return grpc::Status::CANCELLED;
        if (!queue_.empty()) {
          next = queue_.front();
          queue_.erase(queue_.begin());
        }
      }
      if (next.has_value() && !writer->Write(*next)) return grpc::Status::OK;
    }
  }

  grpc::Status ReportEvents(grpc::ServerContext* context, const v1::ReportEventsRequest* request,
                            v1::ReportEventsResponse* response) override {
    if (!Authorized(*context)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
    absl::MutexLock lock(&mu_);
    if (groups_.count(request->group_id()) == 0) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no group");
    reports_.push_back(*request);
    for (const v1::Progress& p : request->progress()) progress_.push_back(p);
    if (request->has_result()) results_.push_back(request->result());
    const OnReport action = hook_ ? hook_(*request) : OnReport::kNothing;
    if (action != OnReport::kNothing) {
      hook_ = nullptr;  // once
      cancel_time_ = absl::Now();
      if (action == OnReport::kCancelInResponse) response->set_cancel(true);
      if (action == OnReport::kCancelOnStream) {
        v1::Assignment cancel;
        cancel.mutable_cancel()->set_job(request->job());
        cancel.mutable_cancel()->set_attempt(request->attempt());
        queue_.push_back(cancel);
      }
      if (action == OnReport::kCancelInHeartbeats) cancel_in_heartbeats_ = request->job();
    }
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    if (!Authorized(*context)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
    absl::MutexLock lock(&mu_);
    if (groups_.count(request->group_id()) == 0) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no group");
    heartbeats_.push_back(*request);
    response->set_cancel(!request->job().empty() && request->job() == cancel_in_heartbeats_);
    return grpc::Status::OK;
  }

  void Assign(const std::string& job, int attempt, const v1::JobSpec& spec) {
    v1::Assignment a;
    a.mutable_run()->set_job(job);
    a.mutable_run()->set_attempt(attempt);
    *a.mutable_run()->mutable_spec() = spec;
    absl::MutexLock lock(&mu_);
    queue_.push_back(a);
  }
  void OnEachReport(std::function<OnReport(const v1::ReportEventsRequest&)> hook) {
    absl::MutexLock lock(&mu_);
    hook_ = std::move(hook);
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }

  std::vector<v1::JoinRequest> joins() const { return Get(&FakeCoordinator::joins_); }
  std::vector<v1::ReportEventsRequest> reports() const { return Get(&FakeCoordinator::reports_); }
  std::vector<v1::Progress> progress() const { return Get(&FakeCoordinator::progress_); }
  std::vector<v1::JobResult> results() const { return Get(&FakeCoordinator::results_); }
  std::vector<v1::HeartbeatRequest> heartbeats() const { return Get(&FakeCoordinator::heartbeats_); }
  absl::Time cancel_time() const {
    absl::MutexLock lock(&mu_);
    return cancel_time_;
  }
  bool SawTrainStep(int64_t step) const {
    for (const v1::Progress& p : progress()) {
      if (p.phase() == v1::JOB_PHASE_TRAIN && p.step() >= step) return true;
    }
    return false;
  }

 private:
  bool Authorized(const grpc::ServerContext& context) const {
    const auto& metadata = context.client_metadata();
    auto it = metadata.find("authorization");
    return it != metadata.end() && std::string(it->second.data(), it->second.size()) == "Bearer " + token_;
  }
  template <typename T>
  T Get(T FakeCoordinator::*member) const {
    absl::MutexLock lock(&mu_);
    return this->*member;
  }

  const std::string name_;
  const std::string token_;
  mutable absl::Mutex mu_;
  std::vector<v1::JoinRequest> joins_;
  std::set<std::string> groups_;
  std::vector<v1::Assignment> queue_;
  std::vector<v1::ReportEventsRequest> reports_;
  std::vector<v1::Progress> progress_;
  std::vector<v1::JobResult> results_;
  std::vector<v1::HeartbeatRequest> heartbeats_;
  std::function<OnReport(const v1::ReportEventsRequest&)> hook_;
  std::string cancel_in_heartbeats_;  // answer cancel to heartbeats naming this job
  absl::Time cancel_time_ = absl::InfinitePast();
  bool closing_ = false;
};

// The fake on 127.0.0.1:port (0: any free port).
class FakeServer {
 public:
  FakeServer(FakeCoordinator* service, int port) : service_(service) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { Shutdown(); }
  bool ok() const { return server_ != nullptr && port_ > 0; }
  int port() const { return port_; }
  void Shutdown() {
    if (server_ == nullptr) return;
    service_->Close();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server_->Wait();
    server_.reset();
  }

 private:
  FakeCoordinator* service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

std::unique_ptr<v1::WorkerService::Stub> StubFor(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return v1::WorkerService::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(), args));
}

LinkOptions TestOptions(int port, const std::string& token) {
  LinkOptions options;
  options.coordinator = absl::StrCat("127.0.0.1:", port);
  options.token = token;
  options.version = "test";
  options.initial_backoff = absl::Milliseconds(100);
  options.max_backoff = absl::Milliseconds(500);
  options.keepalive = absl::Milliseconds(200);
  options.report_interval = absl::Milliseconds(200);
  return options;
}

template <typename F>
bool Eventually(const F& done, absl::Duration timeout = absl::Seconds(90)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

std::optional<double> Metric(const v1::JobResult& result, const std::string& name) {
  for (const v1::Scalar& s : result.metrics()) {
    if (s.name() == name) return s.value();
  }
  return std::nullopt;
}

class CoordinatorLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(root_);
    fs::create_directories(root_);
  }

  // A tiny job: `method` rank 4, `steps` steps of 2 micro-batches of 2, a checkpoint every 5 steps;
  // CorDA calibrates on `calibration_samples` samples; evaluation before and after.
  v1::JobSpec Spec(const std::string& method, const std::string& name, int64_t steps, int calibration_samples = 16) {
    v1::JobSpec spec =
        examples::TinyJobSpec(name, method, {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"});
    if (spec.has_calibration()) {
      spec.mutable_calibration()->set_num_samples(calibration_samples);
      spec.mutable_calibration()->set_max_seq_len(256);
      spec.mutable_calibration()->set_accumulation("f64");
    }
    spec.mutable_eval_datasets(0)->set_max_samples(2);
    spec.mutable_eval_datasets(0)->set_max_new_tokens(4);
    spec.clear_lr_scheduler();
    spec.set_micro_batch_size(2);
    spec.set_gradient_accumulation_steps(2);
    spec.set_max_steps(steps);
    spec.set_sequence_len(128);
    spec.set_save_steps(5);
    spec.set_seed(3);
    spec.set_export_merged(false);
    spec.set_output_dir((root_ / name).string());
    spec.set_cache_dir((root_ / (name + "-cache")).string());
    job::ApplyDefaults(name, &spec);
    return spec;
  }

  // Runs a group of one's link on a thread until shutdown_.
  void StartLink(int port, const std::string& token) {
    stub_ = StubFor(port);
    link_thread_ = std::thread([this, port, token] {
      comm::SingleProcessCommunicator single;
      absl::StatusOr<std::vector<v1::Device>> devices = GatherDevices(single);
      if (!devices.ok()) {
        link_exit_ = devices.status();
        return;
      }
      CoordinatorLink link(stub_.get(), &single, *devices, TestOptions(port, token), &shutdown_);
      link_exit_ = link.Run();
    });
  }
  absl::StatusOr<LinkExit> StopLink() {
    shutdown_ = true;
    if (link_thread_.joinable()) link_thread_.join();
    return link_exit_;
  }
  void TearDown() override { StopLink(); }

  fs::path root_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::atomic<bool> shutdown_{false};
  std::thread link_thread_;
  absl::StatusOr<LinkExit> link_exit_ = absl::UnknownError("not run");
};

TEST_F(CoordinatorLinkTest, GroupOfOneRunsAssignedJobsToTheirResult) {
  FakeCoordinator fake("a", "secret");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  StartLink(server.port(), "secret");
  ASSERT_TRUE(Eventually([&] { return fake.joins().size() == 1; }));
  const v1::JoinRequest join = fake.joins()[0];
  EXPECT_EQ(join.size(), 1);
  ASSERT_EQ(join.devices_size(), 1);
  EXPECT_EQ(join.devices(0).kind(), "cpu");
  EXPECT_FALSE(join.devices(0).name().empty());
  EXPECT_GT(join.devices(0).memory_bytes(), 0);
  EXPECT_EQ(join.version(), "test");

  // A job that fails (its data is missing) is reported FAILED; the group of one goes on.
  v1::JobSpec broken = Spec("lora", "broken", 2);
  broken.mutable_datasets(0)->set_path((root_ / "missing.jsonl").string());
  fake.Assign("jobs/broken", 1, broken);
  const v1::JobSpec spec = Spec("corda_kpm", "good", 6);
  fake.Assign("jobs/good", 1, spec);
  ASSERT_TRUE(Eventually([&] { return fake.results().size() == 2; }));
  const std::vector<v1::JobResult> results = fake.results();
  EXPECT_EQ(results[0].outcome(), v1::JobResult::OUTCOME_FAILED);
  EXPECT_TRUE(absl::StrContains(results[0].message(), "missing.jsonl")) << results[0].message();

  const v1::JobResult& good = results[1];
  ASSERT_EQ(good.outcome(), v1::JobResult::OUTCOME_SUCCEEDED) << good.message();
  EXPECT_EQ(Metric(good, "train/steps"), 6.0);
  EXPECT_TRUE(Metric(good, "train/loss").has_value());
  EXPECT_TRUE(Metric(good, "before/ppl/knowledge").has_value());
  EXPECT_TRUE(Metric(good, "after/exact_match/arith").has_value());
  const v1::JobArtifacts& a = good.artifacts();
  EXPECT_EQ(a.output_dir(), spec.output_dir());
  for (const std::string& path : {a.adapter(), a.adapter_lora(), a.residual_base(), a.report_json(),
                                  a.metrics_jsonl(), a.checkpoints()}) {
    EXPECT_TRUE(!path.empty() && fs::exists(path)) << "'" << path << "'";
  }
  EXPECT_TRUE(a.merged().empty());  // export_merged: false
  EXPECT_TRUE(absl::StrContains(good.report_text(), "knowledge"));
  EXPECT_TRUE(absl::StrContains(good.report_json(), "\"eval\""));

  // Progress of every phase, reported by this group for this run.
  std::set<v1::JobPhase> phases;
  for (const v1::ReportEventsRequest& r : fake.reports()) {
    EXPECT_EQ(r.group_id(), "groups/a-1");
    if (r.job() != "jobs/good") continue;
    EXPECT_EQ(r.attempt(), 1);
    for (const v1::Progress& p : r.progress()) {
      phases.insert(p.phase());
      EXPECT_GT(p.time().seconds(), 0);
    }
  }
  for (v1::JobPhase phase : {v1::JOB_PHASE_LOAD, v1::JOB_PHASE_EVALUATE, v1::JOB_PHASE_CALIBRATE,
                             v1::JOB_PHASE_DECOMPOSE, v1::JOB_PHASE_TRAIN, v1::JOB_PHASE_CHECKPOINT,
                             v1::JOB_PHASE_EXPORT, v1::JOB_PHASE_DONE}) {
    EXPECT_EQ(phases.count(phase), 1u) << v1::JobPhase_Name(phase);
  }
  ASSERT_TRUE(Eventually([&] { return fake.heartbeats().size() >= 2; }));
  absl::StatusOr<LinkExit> exit = StopLink();
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(*exit, LinkExit::kIdle);
}

TEST_F(CoordinatorLinkTest, GroupOfTwoRunsTheJobOnBothRanksAndOnlyTheLeaderCalls) {
  FakeCoordinator fake("b", "secret");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  stub_ = StubFor(server.port());
  std::vector<absl::StatusOr<LinkExit>> exits(2, absl::UnknownError("not run"));
  // A short collective timeout: the idle keep-alives are what keeps the follower waiting.
  comm::CommOptions comm_options;
  comm_options.timeout = absl::Seconds(5);
  std::thread group([&] {
    comm::LocalGroup::Run(
        2,
        [&](comm::Communicator& c) -> absl::Status {
          absl::StatusOr<std::vector<v1::Device>> devices = GatherDevices(c);
          if (!devices.ok()) return devices.status();
          if (c.is_leader()) {
            CoordinatorLink link(stub_.get(), &c, *devices, TestOptions(server.port(), "secret"), &shutdown_);
            exits[0] = link.Run();
          } else {
            EXPECT_TRUE(devices->empty());
            exits[1] = RunFollower(c, &shutdown_);
          }
          return exits[c.rank()].status();
        },
        comm_options);
  });
  ASSERT_TRUE(Eventually([&] { return fake.joins().size() == 1; }));
  const v1::JoinRequest join = fake.joins()[0];
  EXPECT_EQ(join.size(), 2);
  ASSERT_EQ(join.devices_size(), 2);
  EXPECT_EQ(join.devices(0).rank(), 0);
  EXPECT_EQ(join.devices(1).rank(), 1);
  absl::SleepFor(absl::Seconds(6));  // idle longer than the collective timeout
  const v1::JobSpec spec = Spec("corda_kpm", "pair", 6);
  fake.Assign("jobs/pair", 1, spec);
  ASSERT_TRUE(Eventually([&] { return !fake.results().empty(); }));
  const v1::JobResult result = fake.results()[0];
  EXPECT_EQ(result.outcome(), v1::JobResult::OUTCOME_SUCCEEDED) << result.message();
  EXPECT_EQ(Metric(result, "train/steps"), 6.0);
  EXPECT_TRUE(fs::exists(result.artifacts().adapter()));
  bool two_ranks = false;
  for (const v1::Progress& p : fake.progress()) two_ranks |= absl::StrContains(p.message(), "2 ranks");
  EXPECT_TRUE(two_ranks);
  shutdown_ = true;
  group.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(exits[r].ok()) << "rank " << r << ": " << exits[r].status();
    EXPECT_EQ(*exits[r], LinkExit::kIdle);
  }
  // One group joined once; nothing else talked to the coordinator.
  EXPECT_EQ(fake.joins().size(), 1u);
  EXPECT_EQ(fake.results().size(), 1u);
}

TEST_F(CoordinatorLinkTest, AJobErrorInAGroupOfTwoIsReportedAndEndsTheGroup) {
  FakeCoordinator fake("h", "secret");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  stub_ = StubFor(server.port());
  std::vector<absl::StatusOr<LinkExit>> exits(2, absl::UnknownError("not run"));
  std::thread group([&] {
    comm::LocalGroup::Run(2, [&](comm::Communicator& c) -> absl::Status {
      absl::StatusOr<std::vector<v1::Device>> devices = GatherDevices(c);
      if (!devices.ok()) return devices.status();
      if (c.is_leader()) {
        CoordinatorLink link(stub_.get(), &c, *devices, TestOptions(server.port(), "secret"), &shutdown_);
        exits[0] = link.Run();
      } else {
        exits[1] = RunFollower(c, &shutdown_);
      }
      return exits[c.rank()].status();
    });
  });
  ASSERT_TRUE(Eventually([&] { return fake.joins().size() == 1; }));
  v1::JobSpec broken = Spec("lora", "broken", 2);
  broken.mutable_datasets(0)->set_path((root_ / "missing.jsonl").string());
  fake.Assign("jobs/broken", 1, broken);
  group.join();  // the group ends by itself: whoever launched it restarts it
  ASSERT_EQ(fake.results().size(), 1u);
  EXPECT_EQ(fake.results()[0].outcome(), v1::JobResult::OUTCOME_FAILED);
  EXPECT_TRUE(absl::StrContains(fake.results()[0].message(), "missing.jsonl")) << fake.results()[0].message();
  ASSERT_FALSE(exits[0].ok());
  EXPECT_TRUE(absl::StrContains(exits[0].status().message(), "jobs/broken")) << exits[0].status();
  EXPECT_FALSE(exits[1].ok());
}

// A cancel on the assignment stream, or in a heartbeat's answer, during training.
class CancelTest : public CoordinatorLinkTest, public ::testing::WithParamInterface<OnReport> {};

TEST_P(CancelTest, CancelDuringTrainingStopsWithACheckpoint) {
  FakeCoordinator fake("c", "secret");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  const OnReport how = GetParam();
  fake.OnEachReport([how](const v1::ReportEventsRequest& r) {
    for (const v1::Progress& p : r.progress()) {
      if (p.phase() == v1::JOB_PHASE_TRAIN && p.step() >= 3) return how;
    }
    return OnReport::kNothing;
  });
  StartLink(server.port(), "secret");
  const v1::JobSpec spec = Spec("lora", "cancel", 2000);
  fake.Assign("jobs/cancel", 1, spec);
  ASSERT_TRUE(Eventually([&] { return !fake.results().empty(); }));
  const v1::JobResult result = fake.results()[0];
  ASSERT_EQ(result.outcome(), v1::JobResult::OUTCOME_STOPPED) << result.message();
  EXPECT_TRUE(absl::StrContains(result.message(), "cancelled by the coordinator")) << result.message();
  const std::optional<double> steps = Metric(result, "train/steps");
  ASSERT_TRUE(steps.has_value());
  EXPECT_GE(*steps, 3);
  EXPECT_LT(*steps, 2000);
  // The stop checkpointed the step it stopped at.
  EXPECT_TRUE(fs::exists(fs::path(spec.output_dir()) /
                         absl::StrFormat("checkpoints/step-%08d/adapter.safetensors", static_cast<int>(*steps))));
  if (how == OnReport::kCancelInHeartbeats) {
    bool named = false;
    for (const v1::HeartbeatRequest& h : fake.heartbeats()) named |= h.job() == "jobs/cancel" && h.attempt() == 1;
    EXPECT_TRUE(named);
  }
  EXPECT_EQ(StopLink().value_or(LinkExit::kStoppedJob), LinkExit::kIdle);
}

INSTANTIATE_TEST_SUITE_P(Paths, CancelTest,
                         ::testing::Values(OnReport::kCancelOnStream, OnReport::kCancelInHeartbeats),
                         [](const ::testing::TestParamInfo<OnReport>& info) {
                           return info.param == OnReport::kCancelOnStream ? "Stream" : "Heartbeat";
                         });

TEST_F(CoordinatorLinkTest, ShutdownStopsTheRunningJobAndReportsStopped) {
  FakeCoordinator fake("g", "secret");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  StartLink(server.port(), "secret");
  fake.Assign("jobs/signal", 1, Spec("lora", "signal", 2000));
  ASSERT_TRUE(Eventually([&] { return fake.SawTrainStep(3); }));
  absl::StatusOr<LinkExit> exit = StopLink();  // as SIGTERM does
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(*exit, LinkExit::kStoppedJob);
  ASSERT_EQ(fake.results().size(), 1u);
  EXPECT_EQ(fake.results()[0].outcome(), v1::JobResult::OUTCOME_STOPPED);
  EXPECT_TRUE(absl::StrContains(fake.results()[0].message(), "shutting down")) << fake.results()[0].message();
}

TEST_F(CoordinatorLinkTest, CancelDuringCalibrationStopsAtTheNextPhaseBoundary) {
  FakeCoordinator fake("d", "secret");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  fake.OnEachReport([](const v1::ReportEventsRequest& r) {
    for (const v1::Progress& p : r.progress()) {
      if (p.phase() == v1::JOB_PHASE_CALIBRATE) return OnReport::kCancelInResponse;
    }
    return OnReport::kNothing;
  });
  StartLink(server.port(), "secret");
  const v1::JobSpec spec = Spec("corda_kpm", "calibrate", 2000, /*calibration_samples=*/256);
  fake.Assign("jobs/calibrate", 1, spec);
  ASSERT_TRUE(Eventually([&] { return !fake.results().empty(); }));
  const absl::Duration took = absl::Now() - fake.cancel_time();
  const v1::JobResult result = fake.results()[0];
  ASSERT_EQ(result.outcome(), v1::JobResult::OUTCOME_STOPPED) << result.message();
  EXPECT_TRUE(absl::StrContains(result.message(), "before training")) << result.message();
  EXPECT_LT(took, absl::Seconds(10));
  for (const v1::Progress& p : fake.progress()) {
    EXPECT_NE(p.phase(), v1::JOB_PHASE_TRAIN) << "step " << p.step() << ": " << p.message();
  }
  EXPECT_FALSE(fs::exists(fs::path(spec.output_dir()) / "checkpoints/latest"));
  EXPECT_TRUE(StopLink().ok());
}

TEST_F(CoordinatorLinkTest, LostCoordinatorStopsTheJobAndTheReassignedJobResumes) {
  auto first = std::make_unique<FakeCoordinator>("e1", "secret");
  auto server = std::make_unique<FakeServer>(first.get(), 0);
  ASSERT_TRUE(server->ok());
  const int port = server->port();
  StartLink(port, "secret");
  const v1::JobSpec spec = Spec("lora", "resume", 300);
  first->Assign("jobs/resume", 1, spec);
  ASSERT_TRUE(Eventually([&] { return first->SawTrainStep(12); }));
  server->Shutdown();  // the coordinator goes away mid-training
  EXPECT_TRUE(first->results().empty());

  // It comes back (on the same port, knowing no group): the worker joins it again.
  FakeCoordinator second("e2", "secret");
  server = std::make_unique<FakeServer>(&second, port);
  ASSERT_TRUE(server->ok());
  ASSERT_TRUE(Eventually([&] { return second.joins().size() == 1; }));
  second.Assign("jobs/resume", 2, spec);
  ASSERT_TRUE(Eventually([&] { return !second.results().empty(); }));
  const v1::JobResult result = second.results()[0];
  ASSERT_EQ(result.outcome(), v1::JobResult::OUTCOME_SUCCEEDED) << result.message();
  EXPECT_EQ(Metric(result, "resumed"), 1.0);
  EXPECT_GE(Metric(result, "train/start_step").value_or(0), 10);
  EXPECT_EQ(Metric(result, "train/steps"), 300.0);
  for (const v1::ReportEventsRequest& r : second.reports()) EXPECT_EQ(r.attempt(), 2);
  EXPECT_TRUE(StopLink().ok());
}

TEST_F(CoordinatorLinkTest, WrongTokenIsAnErrorNamingTheToken) {
  FakeCoordinator fake("f", "right");
  FakeServer server(&fake, 0);
  ASSERT_TRUE(server.ok());
  StartLink(server.port(), "wrong");
  link_thread_.join();
  ASSERT_FALSE(link_exit_.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(link_exit_.status())) << link_exit_.status();
  EXPECT_TRUE(absl::StrContains(link_exit_.status().message(), "SIGMATUNE_TOKEN")) << link_exit_.status();
  EXPECT_TRUE(fake.joins().empty());
}

}  // namespace
}  // namespace sigmatune::service
