// Load benchmark of sigmatune-coordinator over loopback, from this separate process.
//
//   bazel build -c opt //bench:coordinator_load //server:sigmatune-coordinator
//   bazel-bin/bench/coordinator_load --coordinator_binary=bazel-bin/server/sigmatune-coordinator \
//       --data_root=$PWD/examples
//
// It starts a coordinator (authentication on, a fresh SQLite store, no workers) and measures:
//  1. CreateJob with --create_clients concurrent clients (durable: each is one fsync'd
//     transaction), with a kill -9 of the coordinator in the middle and a restart; clients retry
//     what was not acknowledged with the same request_id. Afterwards every acknowledged job must
//     exist exactly once and no request_id may have made two jobs ("lost" and "duplicated" counts).
//  2. GetJob and ListJobs with --clients concurrent clients for --seconds each: requests/s, p50 and
//     p99 latency. The anchor, run side by side: gRPC's own health Check (grpc.health.v1, served by
//     the gRPC library in the same server) under the same load; the ratio is ours / anchor.
//  3. --watches WatchJob streams held open (callback API, no thread per stream): the coordinator's
//     resident memory before, right after opening them, and after holding them --hold_seconds.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/auth/auth.h"
#include "sigmatune/v1/coordinator.grpc.pb.h"

ABSL_FLAG(std::string, coordinator_binary, "bazel-bin/server/sigmatune-coordinator", "The coordinator to start.");
ABSL_FLAG(std::string, data_root, "examples", "Data root holding models/tiny-llama and data/arith-train.jsonl.");
ABSL_FLAG(int, clients, 50, "Concurrent clients for Get/List and the anchor.");
ABSL_FLAG(int, channels, 4, "TCP connections the clients share.");
ABSL_FLAG(double, seconds, 10, "Seconds per Get/List/anchor measurement.");
ABSL_FLAG(int, creates, 1000, "CreateJob calls.");
ABSL_FLAG(int, create_clients, 16, "Concurrent CreateJob clients.");
ABSL_FLAG(int, watches, 1000, "WatchJob streams to hold.");
ABSL_FLAG(double, hold_seconds, 20, "How long to hold the streams.");

namespace sigmatune {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Coordinator {
  pid_t pid = 0;
  int port = 0;
};

Coordinator StartCoordinator(const fs::path& dir, int port) {
  const fs::path port_file = dir / "port";
  fs::remove(port_file);
  std::vector<std::string> args = {absl::GetFlag(FLAGS_coordinator_binary),
                                   absl::StrCat("--listen=127.0.0.1:", port),
                                   absl::StrCat("--port_file=", port_file.string()),
                                   absl::StrCat("--db=", (dir / "jobs.db").string()),
                                   absl::StrCat("--data_root=", fs::canonical(absl::GetFlag(FLAGS_data_root)).string()),
                                   absl::StrCat("--tenants_file=", (dir / "tenants.txt").string()),
                                   "--max_active_jobs_per_tenant=1000000"};
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    freopen((dir / "coordinator.log").c_str(), "a", stderr);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  for (int i = 0; i < 300 && !fs::exists(port_file); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::ifstream in(port_file);
  Coordinator started{pid, 0};
  in >> started.port;
  if (started.port == 0) {
    std::fprintf(stderr, "coordinator did not start; see %s\n", (dir / "coordinator.log").c_str());
    std::exit(1);
  }
  return started;
}

long RssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

std::vector<std::shared_ptr<grpc::Channel>> Channels(int port, int n) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < n; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("sigmatune.bench.channel", i);  // distinct args: a connection of its own
    channels.push_back(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                                 grpc::InsecureChannelCredentials(), args));
  }
  return channels;
}

struct Stats {
  double rps = 0, p50_ms = 0, p99_ms = 0;
  long errors = 0;
};

// Runs `call(client index, channel)` in `clients` threads for `seconds`; each call returns ok.
template <typename Call>
Stats Measure(const std::vector<std::shared_ptr<grpc::Channel>>& channels, int clients, double seconds, Call call) {
  std::vector<std::vector<double>> latencies(clients);
  std::atomic<long> errors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937 rng(c);
      while (!stop.load(std::memory_order_relaxed)) {
        const auto t0 = Clock::now();
        const bool ok = call(c, rng, channels[c % channels.size()]);
        latencies[c].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        if (!ok) errors.fetch_add(1);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (std::thread& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Stats stats;
  stats.rps = all.size() / elapsed;
  stats.p50_ms = all.empty() ? 0 : all[all.size() / 2];
  stats.p99_ms = all.empty() ? 0 : all[std::min(all.size() - 1, all.size() * 99 / 100)];
  stats.errors = errors.load();
  return stats;
}

void Print(const char* what, const Stats& s) {
  std::printf("%-28s %9.0f req/s   p50 %7.2f ms   p99 %7.2f ms   errors %ld\n", what, s.rps, s.p50_ms, s.p99_ms,
              s.errors);
  std::fflush(stdout);
}

v1::CreateJobRequest CreateRequest(const std::string& request_id) {
  v1::CreateJobRequest request;
  v1::JobSpec& spec = *request.mutable_spec();
  spec.set_base_model("models/tiny-llama");
  spec.mutable_method()->set_type("lora");
  spec.add_datasets()->set_path("data/arith-train.jsonl");
  spec.set_max_steps(1);
  request.set_request_id(request_id);
  return request;
}

class Watcher final : public grpc::ClientReadReactor<v1::WatchJobResponse> {
 public:
  Watcher(v1::JobService::Stub* stub, const std::string& token, const std::string& name, std::atomic<int>* open)
      : open_(open) {
    context_.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    request_.set_name(name);
    stub->async()->WatchJob(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (!first_) {
      first_ = true;
      open_->fetch_add(1);
    }
    StartRead(&response_);
  }
  void OnDone(const grpc::Status&) override {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  void Cancel() { context_.TryCancel(); }
  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  grpc::ClientContext context_;
  v1::WatchJobRequest request_;
  v1::WatchJobResponse response_;
  std::atomic<int>* open_;
  bool first_ = false;
  std::mutex mu_;
  bool done_ = false;
};

int Main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const fs::path dir = fs::temp_directory_path() / absl::StrCat("sigmatune-load-", getpid());
  fs::create_directories(dir);
  const std::string token = *server::NewToken();
  std::ofstream(dir / "tenants.txt") << "bench user " << server::HashToken(token) << "\n";
  Coordinator coordinator = StartCoordinator(dir, 0);
  const int port = coordinator.port;
  std::printf("coordinator pid %d on 127.0.0.1:%d; %u cores; clients %d over %d connections\n", coordinator.pid, port,
              std::thread::hardware_concurrency(), absl::GetFlag(FLAGS_clients), absl::GetFlag(FLAGS_channels));
  auto channels = Channels(port, absl::GetFlag(FLAGS_channels));
  auto with_token = [&](grpc::ClientContext* context) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  };

  // 1. CreateJob, with a kill -9 of the coordinator half-way.
  const int creates = absl::GetFlag(FLAGS_creates);
  const int create_clients = absl::GetFlag(FLAGS_create_clients);
  std::mutex mu;
  std::map<std::string, std::string> acknowledged;  // request_id -> job name
  std::atomic<int> next{0};
  std::atomic<bool> crashed{false};
  std::vector<double> create_ms;
  const auto create_start = Clock::now();
  {
    std::vector<std::thread> threads;
    for (int c = 0; c < create_clients; ++c) {
      threads.emplace_back([&, c] {
        auto stub = v1::JobService::NewStub(channels[c % channels.size()]);
        for (int i = next.fetch_add(1); i < creates; i = next.fetch_add(1)) {
          const std::string request_id = absl::StrCat("req-", i);
          while (true) {  // retried with the same request_id until acknowledged
            grpc::ClientContext context;
            with_token(&context);
            v1::Job job;
            const auto t0 = Clock::now();
            grpc::Status status = stub->CreateJob(&context, CreateRequest(request_id), &job);
            const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
            if (status.ok()) {
              std::lock_guard<std::mutex> lock(mu);
              auto [it, inserted] = acknowledged.emplace(request_id, job.name());
              if (!inserted && it->second != job.name()) std::printf("DUPLICATE for %s\n", request_id.c_str());
              if (!crashed.load()) create_ms.push_back(ms);
              break;
            }
            if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
                status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
              std::printf("CreateJob failed: %s\n", status.error_message().c_str());
              std::exit(1);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }
      });
    }
    // Kill -9 half-way, restart on the same port.
    while (next.load() < creates / 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    crashed = true;
    kill(coordinator.pid, SIGKILL);
    waitpid(coordinator.pid, nullptr, 0);
    size_t acked_at_kill;
    {
      std::lock_guard<std::mutex> lock(mu);
      acked_at_kill = acknowledged.size();
    }
    coordinator = StartCoordinator(dir, port);
    std::printf("killed the coordinator (kill -9) after %zu acknowledged CreateJob calls; restarted as pid %d\n",
                acked_at_kill, coordinator.pid);
    for (std::thread& t : threads) t.join();
  }
  const double create_s = std::chrono::duration<double>(Clock::now() - create_start).count();
  std::sort(create_ms.begin(), create_ms.end());
  // Check: every acknowledged job exists, once.
  auto stub = v1::JobService::NewStub(channels[0]);
  std::set<std::string> listed;
  long listed_total = 0;
  std::string page_token;
  do {
    grpc::ClientContext context;
    with_token(&context);
    v1::ListJobsRequest request;
    request.set_page_size(1000);
    request.set_page_token(page_token);
    v1::ListJobsResponse response;
    grpc::Status status = stub->ListJobs(&context, request, &response);
    if (!status.ok()) {
      std::printf("ListJobs failed: %s\n", status.error_message().c_str());
      return 1;
    }
    for (const v1::Job& job : response.jobs()) {
      listed.insert(job.name());
      ++listed_total;
    }
    page_token = response.next_page_token();
  } while (!page_token.empty());
  long lost = 0;
  std::vector<std::string> names;
  for (const auto& [request_id, name] : acknowledged) {
    lost += listed.count(name) == 0 ? 1 : 0;
    names.push_back(name);
  }
  const long duplicated = listed_total - static_cast<long>(acknowledged.size());
  std::printf("CreateJob: %d calls by %d clients in %.1f s (incl. the crash and restart): %.0f jobs/s overall; "
              "before the crash p50 %.2f ms p99 %.2f ms\n",
              creates, create_clients, create_s, creates / create_s, create_ms[create_ms.size() / 2],
              create_ms[create_ms.size() * 99 / 100]);
  std::printf("CreateJob after kill -9 + restart: %zu acknowledged, %zu stored, lost %ld, duplicated %ld\n",
              acknowledged.size(), listed.size(), lost, duplicated);

  // 2. Get / List against the health-check anchor.
  const int clients = absl::GetFlag(FLAGS_clients);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  std::vector<std::unique_ptr<v1::JobService::Stub>> stubs;
  std::vector<std::unique_ptr<grpc::health::v1::Health::Stub>> health;
  for (auto& channel : channels) {
    stubs.push_back(v1::JobService::NewStub(channel));
    health.push_back(grpc::health::v1::Health::NewStub(channel));
  }
  auto index_of = [&](const std::shared_ptr<grpc::Channel>& channel) {
    return std::find(channels.begin(), channels.end(), channel) - channels.begin();
  };
  const Stats anchor = Measure(channels, clients, seconds, [&](int, std::mt19937&, const auto& channel) {
    grpc::ClientContext context;
    with_token(&context);
    grpc::health::v1::HealthCheckResponse response;
    return health[index_of(channel)]->Check(&context, {}, &response).ok();
  });
  auto get_call = [&](int, std::mt19937& rng, const std::shared_ptr<grpc::Channel>& channel) {
    grpc::ClientContext context;
    with_token(&context);
    v1::GetJobRequest request;
    request.set_name(names[rng() % names.size()]);
    v1::Job job;
    return stubs[index_of(channel)]->GetJob(&context, request, &job).ok();
  };
  const Stats get = Measure(channels, clients, seconds, get_call);
  const Stats list = Measure(channels, clients, seconds, [&](int, std::mt19937&, const auto& channel) {
    grpc::ClientContext context;
    with_token(&context);
    v1::ListJobsRequest request;
    request.set_page_size(20);
    v1::ListJobsResponse response;
    return stubs[index_of(channel)]->ListJobs(&context, request, &response).ok();
  });
  Print("anchor: grpc.health Check", anchor);
  Print("GetJob", get);
  Print("ListJobs (page of 20)", list);
  std::printf("ratio GetJob/anchor %.2f, ListJobs/anchor %.2f (requests/s)\n", get.rps / anchor.rps,
              list.rps / anchor.rps);

  // 3. Watch streams held open.
  const int watches = absl::GetFlag(FLAGS_watches);
  const long rss_before = RssKiB(coordinator.pid);
  std::atomic<int> open{0};
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < watches; ++i) {
    watchers.push_back(std::make_unique<Watcher>(stubs[i % stubs.size()].get(), token, names[i % names.size()], &open));
  }
  for (int i = 0; i < 300 && open.load() < watches; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const long rss_open = RssKiB(coordinator.pid);
  const double hold = absl::GetFlag(FLAGS_hold_seconds);
  std::vector<long> samples;
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::duration<double>(hold / 4));
    samples.push_back(RssKiB(coordinator.pid));
  }
  const Stats get_while = Measure(channels, clients, seconds / 2, get_call);
  std::printf("Watch: %d of %d streams open; coordinator RSS %ld MiB before, %ld MiB opened, then", open.load(),
              watches, rss_before / 1024, rss_open / 1024);
  for (long s : samples) std::printf(" %ld", s / 1024);
  std::printf(" MiB over %.0f s; threads in the coordinator: ", hold);
  {
    std::ifstream in(absl::StrCat("/proc/", coordinator.pid, "/status"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("Threads:", 0) == 0) std::printf("%s", line.substr(8).c_str());
    }
  }
  std::printf("\n");
  Print("GetJob with the streams open", get_while);
  for (auto& watcher : watchers) watcher->Cancel();
  for (int i = 0; i < 100; ++i) {
    if (std::all_of(watchers.begin(), watchers.end(), [](auto& w) { return w->done(); })) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(coordinator.pid, SIGTERM);
  waitpid(coordinator.pid, nullptr, 0);
  fs::remove_all(dir);
  return lost == 0 && duplicated == 0 ? 0 : 1;
}

}  // namespace
}  // namespace sigmatune

int main(int argc, char** argv) { return sigmatune::Main(argc, argv); }
