// The gRPC layer over a real Coordinator: status codes of authentication, Watch streams (snapshot,
// live events, the end after the terminal event, resume tokens, OUT_OF_RANGE), the assignment
// stream, and the health service without a token.
#include "server/service/grpc_services.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "examples/tiny_job.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "server/store/job_store.h"

namespace sigmatune::server {
namespace {

namespace fs = std::filesystem;

class GrpcServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    examples::CopyTinyExampleTo((dir_ / "root").string());
    user_token_ = *NewToken();
    other_token_ = *NewToken();
    worker_token_ = *NewToken();
    std::ofstream(dir_ / "tenants.txt") << "acme user " << HashToken(user_token_) << "\n"
                                        << "globex user " << HashToken(other_token_) << "\n"
                                        << "pool worker " << HashToken(worker_token_) << "\n";
    auto tenants = TenantRegistry::LoadFile((dir_ / "tenants.txt").string());
    ASSERT_TRUE(tenants.ok()) << tenants.status();
    tenants_ = std::make_unique<TenantRegistry>(*std::move(tenants));
    auto store = SqliteJobStore::Open((dir_ / "jobs.db").string());
    ASSERT_TRUE(store.ok());
    store_ = *std::move(store);
    CoordinatorOptions options;
    options.data_roots = {fs::canonical(dir_ / "root").string()};
    options.event_retention = 4;
    auto coordinator = Coordinator::Create(store_.get(), options);
    ASSERT_TRUE(coordinator.ok());
    coordinator_ = *std::move(coordinator);
    jobs_ = std::make_unique<JobServiceImpl>(coordinator_.get(), tenants_.get());
    workers_ = std::make_unique<WorkerServiceImpl>(coordinator_.get(), tenants_.get());
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(jobs_.get());
    builder.RegisterService(workers_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    stub_ = v1::JobService::NewStub(channel_);
    worker_stub_ = v1::WorkerService::NewStub(channel_);
  }

  void TearDown() override {
    jobs_->Shutdown();
    workers_->Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  static void Auth(grpc::ClientContext* context, const std::string& token) {
    if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  }

  grpc::Status Create(const std::string& token, v1::Job* job) {
    v1::CreateJobRequest request;
    request.mutable_spec()->set_base_model("models/tiny-llama");
    request.mutable_spec()->mutable_method()->set_type("lora");
    request.mutable_spec()->add_datasets()->set_path("data/arith-train.jsonl");
    request.mutable_spec()->set_max_steps(2);
    grpc::ClientContext context;
    Auth(&context, token);
    return stub_->CreateJob(&context, request, job);
  }

  fs::path dir_;
  std::string user_token_, other_token_, worker_token_;
  std::unique_ptr<TenantRegistry> tenants_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<JobServiceImpl> jobs_;
  std::unique_ptr<WorkerServiceImpl> workers_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  std::unique_ptr<v1::WorkerService::Stub> worker_stub_;
};

TEST_F(GrpcServicesTest, AuthenticationCodes) {
  v1::Job job;
  EXPECT_EQ(Create("", &job).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Create("not-a-token", &job).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Create(worker_token_, &job).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(Create(user_token_, &job).ok());
  grpc::ClientContext context;
  Auth(&context, other_token_);
  v1::GetJobRequest get;
  get.set_name(job.name());
  v1::Job seen;
  EXPECT_EQ(stub_->GetJob(&context, get, &seen).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext join_context;
  Auth(&join_context, user_token_);
  v1::JoinResponse joined;
  EXPECT_EQ(worker_stub_->Join(&join_context, {}, &joined).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // The health service needs no token.
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext health_context;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&health_context, {}, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(GrpcServicesTest, WatchStreamsSnapshotEventsAndEndsAfterTheTerminalEvent) {
  v1::Job job;
  ASSERT_TRUE(Create(user_token_, &job).ok());
  // A group joins over gRPC and takes the job.
  grpc::ClientContext join_context;
  Auth(&join_context, worker_token_);
  v1::JoinRequest join;
  join.set_size(1);
  join.add_devices()->set_kind("cpu");
  v1::JoinResponse joined;
  ASSERT_TRUE(worker_stub_->Join(&join_context, join, &joined).ok());
  grpc::ClientContext stream_context;
  Auth(&stream_context, worker_token_);
  v1::StreamAssignmentsRequest attach;
  attach.set_group_id(joined.group_id());
  auto assignments = worker_stub_->StreamAssignments(&stream_context, attach);
  v1::Assignment run;
  ASSERT_TRUE(assignments->Read(&run));
  ASSERT_EQ(run.run().job(), job.name());

  grpc::ClientContext watch_context;
  Auth(&watch_context, user_token_);
  v1::WatchJobRequest watch;
  watch.set_name(job.name());
  auto reader = stub_->WatchJob(&watch_context, watch);
  v1::WatchJobResponse first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(first.has_job());
  EXPECT_EQ(first.job().state(), v1::JOB_STATE_RUNNING);

  std::thread reporter([&] {
    for (int step = 1; step <= 3; ++step) {
      v1::ReportEventsRequest report;
      report.set_group_id(joined.group_id());
      report.set_job(run.run().job());
      report.set_attempt(run.run().attempt());
      report.add_progress()->set_step(step);
      if (step == 3) report.mutable_result()->set_outcome(v1::JobResult::OUTCOME_SUCCEEDED);
      grpc::ClientContext context;
      Auth(&context, worker_token_);
      v1::ReportEventsResponse response;
      ASSERT_TRUE(worker_stub_->ReportEvents(&context, report, &response).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::vector<v1::JobEvent> events;
  v1::WatchJobResponse next;
  while (reader->Read(&next)) events.push_back(next.event());
  reporter.join();
  EXPECT_TRUE(reader->Finish().ok());
  ASSERT_EQ(events.size(), 4u);  // 3 progress + SUCCEEDED
  EXPECT_EQ(events[0].progress().step(), 1);
  EXPECT_EQ(events.back().state(), v1::JOB_STATE_SUCCEEDED);
  for (size_t i = 1; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), events[i - 1].sequence() + 1);

  // Resume from the second event: the rest, then OK.
  grpc::ClientContext resume_context;
  Auth(&resume_context, user_token_);
  watch.set_resume_token(events[1].resume_token());
  auto resumed = stub_->WatchJob(&resume_context, watch);
  std::vector<int64_t> sequences;
  while (resumed->Read(&next)) sequences.push_back(next.event().sequence());
  EXPECT_TRUE(resumed->Finish().ok());
  EXPECT_EQ(sequences, (std::vector<int64_t>{events[2].sequence(), events[3].sequence()}));

  // Only 4 events are kept: the first progress event's token is too old now.
  grpc::ClientContext old_context;
  Auth(&old_context, user_token_);
  watch.set_resume_token(Coordinator::ResumeToken(job.name(), 1));
  auto old = stub_->WatchJob(&old_context, watch);
  EXPECT_FALSE(old->Read(&next));
  EXPECT_EQ(old->Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
  stream_context.TryCancel();
}

TEST_F(GrpcServicesTest, ManyWatchersOfOneJobAllSeeEveryEventAndCanLeave) {
  v1::Job job;
  ASSERT_TRUE(Create(user_token_, &job).ok());
  constexpr int kWatchers = 20;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>>> readers;
  for (int i = 0; i < kWatchers; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    Auth(contexts.back().get(), user_token_);
    v1::WatchJobRequest watch;
    watch.set_name(job.name());
    readers.push_back(stub_->WatchJob(contexts.back().get(), watch));
    v1::WatchJobResponse first;
    ASSERT_TRUE(readers.back()->Read(&first));
  }
  // Half of them leave; the cancel event then reaches the rest and ends their streams.
  for (int i = 0; i < kWatchers / 2; ++i) contexts[i]->TryCancel();
  grpc::ClientContext cancel_context;
  Auth(&cancel_context, user_token_);
  v1::CancelJobRequest cancel;
  cancel.set_name(job.name());
  v1::Job cancelled;
  ASSERT_TRUE(stub_->CancelJob(&cancel_context, cancel, &cancelled).ok());
  for (int i = kWatchers / 2; i < kWatchers; ++i) {
    v1::WatchJobResponse next;
    ASSERT_TRUE(readers[i]->Read(&next));
    EXPECT_EQ(next.event().state(), v1::JOB_STATE_CANCELLED);
    EXPECT_FALSE(readers[i]->Read(&next));
    EXPECT_TRUE(readers[i]->Finish().ok());
  }
  for (int i = 0; i < kWatchers / 2; ++i) {
    EXPECT_EQ(readers[i]->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  for (int i = 0; i < 50 && jobs_->open_watches() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(jobs_->open_watches(), 0);
}

TEST_F(GrpcServicesTest, ShutdownEndsWaitingWatchesWithUnavailable) {
  v1::Job job;
  ASSERT_TRUE(Create(user_token_, &job).ok());
  grpc::ClientContext context;
  Auth(&context, user_token_);
  v1::WatchJobRequest watch;
  watch.set_name(job.name());
  auto reader = stub_->WatchJob(&context, watch);
  v1::WatchJobResponse first;
  ASSERT_TRUE(reader->Read(&first));  // the snapshot; the stream now waits for events
  jobs_->Shutdown();
  v1::WatchJobResponse next;
  EXPECT_FALSE(reader->Read(&next));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  // A watch started after Shutdown ends the same way once it has sent its snapshot.
  grpc::ClientContext late_context;
  Auth(&late_context, user_token_);
  auto late = stub_->WatchJob(&late_context, watch);
  ASSERT_TRUE(late->Read(&first));
  EXPECT_FALSE(late->Read(&next));
  EXPECT_EQ(late->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace sigmatune::server
