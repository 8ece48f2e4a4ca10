// The service end to end with real processes over loopback: sigmatune-coordinator (SQLite store,
// tenants file), worker groups (the coordinator's own --local_workers group of 2 under mpirun, or a
// 2-rank `mpirun sigmatune-worker --coordinator=...` started here), and the `sigmatune` CLI, on the
// tiny example model.
//  - A job submitted with the CLI runs on a 2-rank group; a SIGKILLed rank kills the group, the
//    coordinator requeues the job, the launcher restarts the group and the job resumes from its
//    checkpoint to SUCCEEDED; `sigmatune watch` ends with the report.
//  - kill -9 of the coordinator mid-job, restarted on the same port and database: the group
//    rejoins, every job completes, none lost or duplicated.
//  - cancel (CANCELLED within seconds, the checkpoint still verifies), idempotent resubmission,
//    bad specs, path escapes, another tenant's job, a wrong token.
// Skips when mpirun is not on PATH.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "examples/tiny_job.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "server/auth/auth.h"
#include "sigmatune/v1/coordinator.grpc.pb.h"
#include "tests/e2e/subprocess.h"
#include "worker/checkpoint/checkpoint.h"

namespace sigmatune {
namespace {

namespace fs = std::filesystem;
using e2e::Launched;
using e2e::ReadFile;
using e2e::WriteFile;

std::string Binary(const std::string& path) { return fs::absolute(testing::RunfilePath(path)).string(); }

// A TCP port nothing listens on right now (bound to port 0, then released).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  close(fd);
  return port;
}

// The tiny job of testdata/service-job.yaml (paths relative to the data root) with a name, a
// number of steps and `extra` lines.
std::string SpecYaml(const std::string& name, int max_steps, const std::string& extra = "") {
  return absl::StrCat("name: ", name, "\n", ReadFile(testing::RunfilePath("tests/e2e/testdata/service-job.yaml")),
                      "max_steps: ", max_steps, "\n", extra);
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mpirun_ = e2e::FindOnPath("mpirun");
    if (mpirun_.empty()) GTEST_SKIP() << "mpirun is not on PATH";
    dir_ = fs::path(::testing::TempDir()) / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    root_ = dir_ / "root";
    examples::CopyTinyExampleTo(root_.string());
    root_ = fs::canonical(root_);
    // mpirun's session directory holds Unix sockets: keep the path short.
    char tmpl[] = "/tmp/st-svc-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    tmpdir_ = tmpl;
    acme_ = *server::NewToken();
    globex_ = *server::NewToken();
    worker_ = *server::NewToken();
    WriteFile(dir_ / "tenants.txt", absl::StrCat("acme user ", server::HashToken(acme_), "\n", "globex user ",
                                                 server::HashToken(globex_), "\n", "pool worker ",
                                                 server::HashToken(worker_), "\n"));
  }

  void TearDown() override {
    for (auto& process : processes_) process->KillAll();
    if (!tmpdir_.empty()) fs::remove_all(tmpdir_);
  }

  Launched* Spawn(const std::vector<std::string>& argv, const std::string& log,
                  const std::vector<std::string>& env = {}) {
    processes_.push_back(std::make_unique<Launched>());
    processes_.back()->Start(argv, dir_ / log, tmpdir_, env);
    return processes_.back().get();
  }

  // Starts the coordinator (port 0 first, then the same port again after a restart).
  Launched* StartCoordinator(const std::string& log, int local_workers = 0,
                             const std::vector<std::string>& extra_args = {}) {
    fs::remove(dir_ / "port");
    std::vector<std::string> argv = {Binary("server/sigmatune-coordinator"),
                                     absl::StrCat("--listen=127.0.0.1:", port_),
                                     absl::StrCat("--port_file=", (dir_ / "port").string()),
                                     absl::StrCat("--db=", (dir_ / "state" / "jobs.db").string()),
                                     absl::StrCat("--data_root=", root_.string()),
                                     absl::StrCat("--tenants_file=", (dir_ / "tenants.txt").string()),
                                     "--heartbeat_interval_s=0.5",
                                     "--heartbeat_timeout_s=5",
                                     "--restart_budget=2"};
    if (local_workers > 0) {
      argv.push_back(absl::StrCat("--local_workers=", local_workers));
      argv.push_back(absl::StrCat("--worker_binary=", Binary("worker/sigmatune-worker")));
      argv.push_back(absl::StrCat("--worker_log=", (dir_ / "workers.log").string()));
    }
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    Launched* coordinator = Spawn(argv, log);
    for (int i = 0; i < 300 && !fs::exists(dir_ / "port"); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(fs::exists(dir_ / "port")) << ReadFile(dir_ / log);
    port_ = std::stoi(ReadFile(dir_ / "port"));
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), credentials_);
    stub_ = v1::JobService::NewStub(channel_);
    return coordinator;
  }

  Launched* StartExternalGroup(const std::string& log) {
    std::vector<std::string> argv = {mpirun_, "-np", "2", "--oversubscribe", "--bind-to", "none", "--mca", "btl",
                                     "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none"};
    if (geteuid() == 0) argv.push_back("--allow-run-as-root");
    argv.insert(argv.end(), {"-x", "SIGMATUNE_TOKEN", Binary("worker/sigmatune-worker"),
                             absl::StrCat("--coordinator=127.0.0.1:", port_)});
    return Spawn(argv, log, {absl::StrCat("SIGMATUNE_TOKEN=", worker_)});
  }

  struct CliResult {
    int code = -1;
    std::string output;
  };
  CliResult Cli(const std::vector<std::string>& args, const std::string& token, double seconds = 60,
                const std::string& host = "127.0.0.1") {
    static int calls = 0;
    const std::string log = absl::StrCat("cli-", ++calls, ".log");
    std::vector<std::string> argv = {Binary("client/sigmatune"), absl::StrCat("--server=", host, ":", port_)};
    argv.insert(argv.end(), args.begin(), args.end());
    Launched* cli = Spawn(argv, log, {absl::StrCat("SIGMATUNE_TOKEN=", token)});
    CliResult result;
    if (cli->Finish(seconds)) result.code = cli->exit_code();
    result.output = ReadFile(dir_ / log);
    return result;
  }

  std::string Submit(const std::string& spec_name, const std::string& yaml, const std::string& request_id = "") {
    WriteFile(dir_ / spec_name, yaml);
    std::vector<std::string> args = {"submit", (dir_ / spec_name).string()};
    if (!request_id.empty()) args.push_back(absl::StrCat("--request_id=", request_id));
    CliResult result = Cli(args, acme_);
    EXPECT_EQ(result.code, 0) << result.output;
    const size_t at = result.output.find("jobs/");
    if (at == std::string::npos) return "";
    return std::string(absl::StripAsciiWhitespace(
        result.output.substr(at, result.output.find_first_of(" \n", at) - at)));
  }

  absl::StatusOr<v1::Job> Get(const std::string& name) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", absl::StrCat("Bearer ", acme_));
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetJobRequest request;
    request.set_name(name);
    v1::Job job;
    grpc::Status status = stub_->GetJob(&context, request, &job);
    if (!status.ok()) return absl::UnavailableError(status.error_message());
    return job;
  }

  // Polls until `done(job)` or `seconds` pass; returns the last job seen.
  template <typename Pred>
  v1::Job WaitFor(const std::string& name, double seconds, Pred done) {
    v1::Job last;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      absl::StatusOr<v1::Job> job = Get(name);
      if (job.ok()) {
        last = *job;
        if (done(last)) return last;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << name << " did not get there in " << seconds << " s; last: " << last.ShortDebugString();
    return last;
  }

  static bool Training(const v1::Job& job, int step) {
    return job.state() == v1::JOB_STATE_RUNNING && job.progress().phase() == v1::JOB_PHASE_TRAIN &&
           job.progress().step() >= step;
  }

  // Pids of the worker ranks serving this coordinator.
  std::vector<int> WorkerPids() {
    std::vector<int> pids;
    const std::string needle = absl::StrCat("--coordinator=127.0.0.1:", port_);
    for (const fs::directory_entry& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
      std::string cmdline = ReadFile(e.path() / "cmdline");
      std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
      if (absl::StrContains(cmdline, "sigmatune-worker") && absl::StrContains(cmdline, needle) &&
          !absl::StrContains(cmdline, "mpirun")) {
        pids.push_back(std::stoi(name));
      }
    }
    return pids;
  }

  std::string mpirun_;
  fs::path dir_, root_;
  std::string tmpdir_;
  std::string acme_, globex_, worker_;
  int port_ = 0;
  std::shared_ptr<grpc::ChannelCredentials> credentials_ = grpc::InsecureChannelCredentials();
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  std::vector<std::unique_ptr<Launched>> processes_;
};

TEST_F(ServiceTest, CliJobOnALocalGroupOfTwoSurvivesAKilledRank) {
  StartCoordinator("coordinator.log", /*local_workers=*/2);
  const std::string name = Submit("job.yaml", SpecYaml("killed-rank", 800), "first");
  ASSERT_FALSE(name.empty());
  // Idempotent: the same request_id gives the same job.
  EXPECT_EQ(Submit("job.yaml", SpecYaml("killed-rank", 800), "first"), name);

  WaitFor(name, 120, [](const v1::Job& job) { return Training(job, 120); });
  std::vector<int> ranks = WorkerPids();
  ASSERT_EQ(ranks.size(), 2u) << ReadFile(dir_ / "workers.log");
  kill(ranks[1], SIGKILL);

  CliResult watch = Cli({"watch", name}, acme_, 240);
  EXPECT_EQ(watch.code, 0) << watch.output << "\n--- coordinator:\n" << ReadFile(dir_ / "coordinator.log")
                           << "\n--- workers:\n" << ReadFile(dir_ / "workers.log");
  v1::Job job = *Get(name);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.attempt(), 2);  // resumed once, on the restarted group
  EXPECT_TRUE(absl::StrContains(ReadFile(dir_ / "coordinator.log"), "restarting")) << "the launcher restarts the group";
  EXPECT_TRUE(absl::StrContains(watch.output, "knowledge")) << "the report names the eval set:\n" << watch.output;
  EXPECT_TRUE(fs::exists(job.artifacts().adapter())) << job.artifacts().ShortDebugString();
  // The listing has exactly this one job.
  CliResult list = Cli({"list"}, acme_);
  EXPECT_EQ(list.code, 0);
  EXPECT_EQ(std::count(list.output.begin(), list.output.end(), '\n'), 2) << list.output;  // header + 1 job
}

TEST_F(ServiceTest, CoordinatorKilledAndRestartedMidJobLosesNothing) {
  Launched* coordinator = StartCoordinator("coordinator-1.log");
  Launched* group = StartExternalGroup("group.log");
  const std::string first = Submit("a.yaml", SpecYaml("a", 800));
  const std::string second = Submit("b.yaml", SpecYaml("b", 40));
  ASSERT_FALSE(first.empty());
  ASSERT_FALSE(second.empty());
  WaitFor(first, 120, [](const v1::Job& job) { return Training(job, 120); });
  kill(coordinator->pid(), SIGKILL);
  ASSERT_TRUE(coordinator->WaitFor(10));
  StartCoordinator("coordinator-2.log");  // same port, same database
  for (const std::string& name : {first, second}) {
    const v1::Job job = WaitFor(name, 240, [](const v1::Job& job) { return job.state() == v1::JOB_STATE_SUCCEEDED; });
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED)
        << ReadFile(dir_ / "coordinator-2.log") << "\n--- group:\n" << ReadFile(dir_ / "group.log");
  }
  EXPECT_EQ(Get(first)->attempt(), 2);
  EXPECT_FALSE(group->exited()) << "the group rejoined the restarted coordinator";
  grpc::ClientContext context;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", acme_));
  v1::ListJobsResponse list;
  ASSERT_TRUE(stub_->ListJobs(&context, {}, &list).ok());
  std::set<std::string> names;
  for (const v1::Job& job : list.jobs()) names.insert(job.name());
  EXPECT_EQ(names, (std::set<std::string>{first, second}));
  EXPECT_EQ(list.jobs_size(), 2);
}

TEST_F(ServiceTest, CancelErrorsTenantsAndPathEscapes) {
  StartCoordinator("coordinator.log", /*local_workers=*/1);
  const std::string name = Submit("long.yaml", SpecYaml("long", 20000));
  ASSERT_FALSE(name.empty());
  WaitFor(name, 120, [](const v1::Job& job) { return Training(job, 60); });
  const auto asked = std::chrono::steady_clock::now();
  CliResult cancel = Cli({"cancel", name}, acme_);
  EXPECT_EQ(cancel.code, 0) << cancel.output;
  v1::Job job = WaitFor(name, 30, [](const v1::Job& job) { return job.state() == v1::JOB_STATE_CANCELLED; });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count();
  EXPECT_LT(seconds, 10) << "cancel takes effect within seconds";
  // The last checkpoint is usable: the job can be resumed from it.
  absl::StatusOr<checkpoint::CheckpointStore> store =
      checkpoint::CheckpointStore::Open((fs::path(job.spec().output_dir()) / "checkpoints").string(), {});
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::optional<checkpoint::LoadedCheckpoint>> latest = store->LoadLatest();
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_GE((*latest)->step, 50);
  EXPECT_TRUE((*latest)->warnings.empty());
  EXPECT_EQ(Cli({"watch", name}, acme_).code, 3);  // CANCELLED

  // Bad specs: every problem listed, nothing queued.
  std::string bad_yaml = SpecYaml("bad", 0);
  bad_yaml.replace(bad_yaml.find("type: lora"), strlen("type: lora"), "type: nope");
  WriteFile(dir_ / "bad.yaml", bad_yaml);
  CliResult bad = Cli({"submit", (dir_ / "bad.yaml").string()}, acme_);
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_TRUE(absl::StrContains(bad.output, "method.type")) << bad.output;
  EXPECT_TRUE(absl::StrContains(bad.output, "max_steps")) << bad.output;
  WriteFile(dir_ / "syntax.yaml", "name: [unclosed\n");
  CliResult syntax = Cli({"submit", (dir_ / "syntax.yaml").string()}, acme_);
  EXPECT_EQ(syntax.code, 2) << syntax.output;
  // Path escapes.
  for (const std::string& path : {"../root/data/knowledge.jsonl", "/etc/passwd", "data/%2e%2e/x.jsonl"}) {
    std::string yaml = SpecYaml("escape", 5);
    yaml.replace(yaml.find("data/arith-train.jsonl"), strlen("data/arith-train.jsonl"), path);
    WriteFile(dir_ / "escape.yaml", yaml);
    CliResult escape = Cli({"submit", (dir_ / "escape.yaml").string()}, acme_);
    EXPECT_EQ(escape.code, 2) << path << ": " << escape.output;
    EXPECT_TRUE(absl::StrContains(escape.output, "datasets[0].path")) << escape.output;
  }
  fs::create_symlink("/etc", root_ / "data" / "etc");
  std::string yaml = SpecYaml("symlink", 5);
  yaml.replace(yaml.find("data/arith-train.jsonl"), strlen("data/arith-train.jsonl"), "data/etc/passwd");
  WriteFile(dir_ / "symlink.yaml", yaml);
  CliResult symlink = Cli({"submit", (dir_ / "symlink.yaml").string()}, acme_);
  EXPECT_EQ(symlink.code, 2) << symlink.output;

  // Another tenant sees nothing; a wrong token is refused.
  CliResult other = Cli({"get", name}, globex_);
  EXPECT_NE(other.code, 0);
  EXPECT_TRUE(absl::StrContains(other.output, "not found")) << other.output;
  CliResult other_list = Cli({"list"}, globex_);
  EXPECT_EQ(other_list.code, 0);
  EXPECT_FALSE(absl::StrContains(other_list.output, name)) << other_list.output;
  CliResult wrong = Cli({"list"}, "not-a-token");
  EXPECT_EQ(wrong.code, 4) << wrong.output;
  EXPECT_TRUE(absl::StrContains(wrong.output, "token")) << wrong.output;
  CliResult worker_token = Cli({"list"}, worker_);
  EXPECT_EQ(worker_token.code, 4) << worker_token.output;
  // Nothing of the refused submissions was queued: the one job is all acme has.
  CliResult list = Cli({"list"}, acme_);
  EXPECT_EQ(std::count(list.output.begin(), list.output.end(), '\n'), 2) << list.output;
}

TEST_F(ServiceTest, ServesReflection) {
  StartCoordinator("coordinator.log");
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("*");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> services;
  for (const auto& service : response.list_services_response().service()) services.insert(service.name());
  EXPECT_TRUE(services.count("sigmatune.v1.JobService")) << response.ShortDebugString();
  EXPECT_TRUE(services.count("sigmatune.v1.WorkerService")) << response.ShortDebugString();
  // A client can fetch the descriptors (what grpcurl does).
  request.set_file_containing_symbol("sigmatune.v1.JobService");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0) << response.ShortDebugString();
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServiceTest, TlsWithCertificateFilesAndHealthWithoutAToken) {
  const std::string openssl = e2e::FindOnPath("openssl");
  if (openssl.empty()) GTEST_SKIP() << "openssl is not on PATH (tools/setup.sh installs it)";
  Launched* make_cert = Spawn({openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                               "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout",
                               (dir_ / "key.pem").string(), "-out", (dir_ / "cert.pem").string()},
                              "openssl.log");
  ASSERT_TRUE(make_cert->Finish(60));
  ASSERT_EQ(make_cert->exit_code(), 0) << ReadFile(dir_ / "openssl.log");
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(dir_ / "cert.pem");
  credentials_ = grpc::SslCredentials(ssl);
  const int health_port = FreePort();
  StartCoordinator("coordinator.log", 0,
                   {absl::StrCat("--tls_cert=", (dir_ / "cert.pem").string()),
                    absl::StrCat("--tls_key=", (dir_ / "key.pem").string()),
                    absl::StrCat("--health_listen=127.0.0.1:", health_port)});
  // The plaintext health-only port (Kubernetes' gRPC probes cannot speak TLS) answers SERVING and
  // serves nothing else.
  auto health_only = grpc::CreateChannel(absl::StrCat("127.0.0.1:", health_port), grpc::InsecureChannelCredentials());
  {
    grpc::ClientContext probe;
    probe.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckResponse serving;
    grpc::Status probed = grpc::health::v1::Health::NewStub(health_only)->Check(&probe, {}, &serving);
    ASSERT_TRUE(probed.ok()) << probed.error_message();
    EXPECT_EQ(serving.status(), grpc::health::v1::HealthCheckResponse::SERVING);
    grpc::ClientContext list_context;
    list_context.AddMetadata("authorization", absl::StrCat("Bearer ", acme_));
    v1::ListJobsResponse list;
    EXPECT_EQ(v1::JobService::NewStub(health_only)->ListJobs(&list_context, {}, &list).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  // The health service answers over TLS without a token (what a Kubernetes probe does).
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health->Check(&context, {}, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  // The CLI trusting the certificate works; without it the TLS handshake fails and it says so.
  CliResult trusted = Cli({absl::StrCat("--tls_ca=", (dir_ / "cert.pem").string()), "list"}, acme_, 60, "localhost");
  EXPECT_EQ(trusted.code, 0) << trusted.output;
  CliResult plain = Cli({"list"}, acme_, 60, "localhost");
  EXPECT_EQ(plain.code, 4) << plain.output;
  // A worker group joins over TLS and runs a job.
  std::vector<std::string> argv = {Binary("worker/sigmatune-worker"), absl::StrCat("--coordinator=localhost:", port_),
                                   absl::StrCat("--tls_ca=", (dir_ / "cert.pem").string()), "--comm=single"};
  Spawn(argv, "worker.log", {absl::StrCat("SIGMATUNE_TOKEN=", worker_)});
  WriteFile(dir_ / "job.yaml", SpecYaml("tls", 20));
  CliResult submit = Cli({absl::StrCat("--tls_ca=", (dir_ / "cert.pem").string()), "submit",
                          (dir_ / "job.yaml").string(), "--watch"},
                         acme_, 120, "localhost");
  EXPECT_EQ(submit.code, 0) << submit.output << "\n--- worker:\n" << ReadFile(dir_ / "worker.log");
}

}  // namespace
}  // namespace sigmatune
