// sigmatune-coordinator: the gRPC service that accepts fine-tuning jobs and drives worker groups.
//
//   sigmatune-coordinator --data_root=/srv/sigmatune [--listen=127.0.0.1:50051] [--db=PATH]
//       [--tenants_file=F] [--tls_cert=F --tls_key=F] [--local_workers=N] [--port_file=F]
//       [--health_listen=0.0.0.0:8081]
//
// Jobs are stored in SQLite (--db) and survive a kill -9; jobs that were running resume from their
// last checkpoint when a group is free again. With --local_workers=N it starts and supervises its
// own group of N ranks (mpirun, or one process for N=1) on this machine. Without --tenants_file
// authentication is off and only a loopback --listen address is accepted. SIGINT/SIGTERM: stop the
// local workers (they checkpoint), end the streams and exit 0. Exit status 2: bad flags or files.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "formats/atomic_file.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/auth/auth.h"
#include "server/launcher/local_workers.h"
#include "server/service/coordinator.h"
#include "server/service/grpc_services.h"
#include "server/store/job_store.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "Address to serve on (host:port; port 0 picks a free one).");
ABSL_FLAG(std::string, port_file, "", "Write the bound port here (atomically) once serving.");
ABSL_FLAG(std::string, health_listen, "",
          "Also serve only grpc.health.v1 here, in plaintext (e.g. 0.0.0.0:8081 for Kubernetes gRPC probes, which "
          "cannot speak TLS); empty: health is served on --listen only.");
ABSL_FLAG(std::string, db, "", "SQLite job store (default: $XDG_STATE_HOME or ~/.local/state, sigmatune/coordinator.db).");
ABSL_FLAG(std::vector<std::string>, data_root, {},
          "Comma-separated directories every path of a job spec must lie in (default: the current directory).");
ABSL_FLAG(std::string, tenants_file, "", "Tenants and their token hashes (docs/service.md); empty: no authentication.");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve TLS (with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(int, local_workers, 0, "Start and supervise a local worker group of this many ranks (0: none).");
ABSL_FLAG(std::string, worker_binary, "", "sigmatune-worker for --local_workers (default: beside this binary).");
ABSL_FLAG(std::string, worker_log, "", "Where the local workers' output goes (default: beside the database).");
ABSL_FLAG(int, restart_budget, 3, "Times a job is resumed after its group is lost before it fails.");
ABSL_FLAG(int, max_world_size, 64, "Largest world_size a job may ask for.");
ABSL_FLAG(int, max_active_jobs_per_tenant, 1000, "Queued + running jobs a tenant may have.");
ABSL_FLAG(int, event_retention, 2000, "Events kept per job for Watch resume tokens.");
ABSL_FLAG(double, heartbeat_interval_s, 2, "How often worker groups send heartbeats.");
ABSL_FLAG(double, heartbeat_timeout_s, 20, "A group silent this long is lost and its job requeued.");

namespace sigmatune::server {
namespace {

namespace fs = std::filesystem;

int Fail(const std::string& message) {
  std::fprintf(stderr, "sigmatune-coordinator: %s\n", message.c_str());
  return 2;
}

std::string DefaultDbPath() {
  const char* state = std::getenv("XDG_STATE_HOME");
  const char* home = std::getenv("HOME");
  fs::path base = state != nullptr && *state != '\0' ? fs::path(state)
                  : home != nullptr                  ? fs::path(home) / ".local" / "state"
                                                     : fs::path("/tmp");
  return (base / "sigmatune" / "coordinator.db").string();
}

bool IsLoopback(const std::string& address) {
  return absl::StartsWith(address, "127.") || absl::StartsWith(address, "localhost:") ||
         absl::StartsWith(address, "[::1]:") || absl::StartsWith(address, "unix:");
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("sigmatune-coordinator --data_root=DIR [--listen=HOST:PORT] [--local_workers=N]");
  absl::ParseCommandLine(argc, argv);
  // Signals go to one thread (sigwait); every other thread (gRPC's, the launcher's) blocks them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string listen = absl::GetFlag(FLAGS_listen);
  std::vector<std::string> roots = absl::GetFlag(FLAGS_data_root);
  if (roots.empty()) roots.push_back(fs::current_path().string());
  absl::StatusOr<std::vector<std::string>> canonical_roots = CanonicalRoots(roots);
  if (!canonical_roots.ok()) return Fail(std::string(canonical_roots.status().message()));

  TenantRegistry tenants = TenantRegistry::Open();
  if (const std::string file = absl::GetFlag(FLAGS_tenants_file); !file.empty()) {
    absl::StatusOr<TenantRegistry> loaded = TenantRegistry::LoadFile(file);
    if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
    tenants = *std::move(loaded);
  } else if (!IsLoopback(listen)) {
    return Fail(absl::StrCat("refusing to serve ", listen,
                             " without authentication: give --tenants_file, or listen on 127.0.0.1"));
  }

  const std::string db_path = absl::GetFlag(FLAGS_db).empty() ? DefaultDbPath() : absl::GetFlag(FLAGS_db);
  absl::StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(db_path);
  if (!store.ok()) return Fail(std::string(store.status().message()));

  CoordinatorOptions options;
  options.data_roots = *canonical_roots;
  options.restart_budget = absl::GetFlag(FLAGS_restart_budget);
  options.max_world_size = absl::GetFlag(FLAGS_max_world_size);
  options.max_active_jobs_per_tenant = absl::GetFlag(FLAGS_max_active_jobs_per_tenant);
  options.event_retention = absl::GetFlag(FLAGS_event_retention);
  options.heartbeat_interval = absl::Seconds(absl::GetFlag(FLAGS_heartbeat_interval_s));
  options.heartbeat_timeout = absl::Seconds(absl::GetFlag(FLAGS_heartbeat_timeout_s));
  if (!(options.heartbeat_timeout > options.heartbeat_interval)) {
    return Fail("--heartbeat_timeout_s must be longer than --heartbeat_interval_s");
  }
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Create(store->get(), options);
  if (!coordinator.ok()) return Fail(std::string(coordinator.status().message()));

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  const std::string cert_file = absl::GetFlag(FLAGS_tls_cert);
  const std::string key_file = absl::GetFlag(FLAGS_tls_key);
  if (cert_file.empty() != key_file.empty()) return Fail("--tls_cert and --tls_key go together");
  if (!cert_file.empty()) {
    absl::StatusOr<std::string> cert = formats::ReadFileToString(cert_file);
    if (!cert.ok()) return Fail(absl::StrCat("--tls_cert: ", cert.status().message()));
    absl::StatusOr<std::string> key = formats::ReadFileToString(key_file);
    if (!key.ok()) return Fail(absl::StrCat("--tls_key: ", key.status().message()));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(ssl);
  }

  JobServiceImpl job_service(coordinator->get(), &tenants);
  WorkerServiceImpl worker_service(coordinator->get(), &tenants);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, credentials, &port);
  builder.RegisterService(&job_service);
  builder.RegisterService(&worker_service);
  builder.SetMaxReceiveMessageSize(16 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return Fail(absl::StrCat("cannot serve on ", listen, " (address in use?)"));
  // The health-only server: gRPC's default health service and nothing else (no token, no job data).
  std::unique_ptr<grpc::Server> health_server;
  if (const std::string health_listen = absl::GetFlag(FLAGS_health_listen); !health_listen.empty()) {
    grpc::ServerBuilder health_builder;
    int health_port = 0;
    health_builder.AddListeningPort(health_listen, grpc::InsecureServerCredentials(), &health_port);
    health_server = health_builder.BuildAndStart();
    if (health_server == nullptr || health_port == 0) {
      return Fail(absl::StrCat("cannot serve health on ", health_listen, " (address in use?)"));
    }
    std::fprintf(stderr, "sigmatune-coordinator: grpc.health.v1 (only) in plaintext on port %d (%s)\n", health_port,
                 health_listen.c_str());
  }
  std::fprintf(stderr, "sigmatune-coordinator: serving on port %d (%s), data roots %s, job store %s, auth %s\n", port,
               listen.c_str(), absl::StrJoin(*canonical_roots, ",").c_str(), db_path.c_str(),
               tenants.enabled() ? "on" : "off (loopback only)");
  if (const std::string port_file = absl::GetFlag(FLAGS_port_file); !port_file.empty()) {
    absl::Status written = formats::WriteFileAtomically(port_file, absl::StrCat(port, "\n"));
    if (!written.ok()) return Fail(std::string(written.message()));
  }

  std::unique_ptr<LocalWorkers> workers;
  if (const int ranks = absl::GetFlag(FLAGS_local_workers); ranks > 0) {
    std::string binary = absl::GetFlag(FLAGS_worker_binary);
    if (binary.empty()) {
      const fs::path self = fs::read_symlink("/proc/self/exe");
      for (const fs::path& candidate : {self.parent_path() / "sigmatune-worker",
                                        self.parent_path().parent_path() / "worker" / "sigmatune-worker"}) {
        if (fs::exists(candidate)) binary = candidate.string();
        if (!binary.empty()) break;
      }
      if (binary.empty()) return Fail("--local_workers: no sigmatune-worker beside this binary; give --worker_binary");
    }
    absl::StatusOr<std::string> token = NewToken();
    if (!token.ok()) return Fail(std::string(token.status().message()));
    tenants.AddToken("local-workers", Role::kWorker, *token);
    LocalWorkersOptions launch;
    launch.ranks = ranks;
    launch.worker_binary = binary;
    launch.coordinator_address = absl::StrCat("127.0.0.1:", port);
    launch.token = *token;
    launch.log_path = absl::GetFlag(FLAGS_worker_log).empty()
                          ? (fs::path(db_path).parent_path() / "workers.log").string()
                          : absl::GetFlag(FLAGS_worker_log);
    absl::StatusOr<std::unique_ptr<LocalWorkers>> started = LocalWorkers::Start(launch);
    if (!started.ok()) return Fail(std::string(started.status().message()));
    workers = *std::move(started);
    std::fprintf(stderr, "sigmatune-coordinator: started a local worker group of %d rank(s); its output goes to %s\n",
                 ranks, launch.log_path.c_str());
  }

  absl::Notification stopping;
  std::thread ticker([&] {
    while (!stopping.WaitForNotificationWithTimeout(absl::Seconds(1))) (*coordinator)->CheckGroups();
  });
  int signal = 0;
  sigwait(&signals, &signal);
  std::fprintf(stderr, "sigmatune-coordinator: signal %d: shutting down\n", signal);
  stopping.Notify();
  ticker.join();
  if (workers != nullptr) workers->Stop();
  job_service.Shutdown();
  worker_service.Shutdown();
  for (grpc::Server* s : {server.get(), health_server.get()}) {
    if (s == nullptr) continue;
    s->GetHealthCheckService()->Shutdown();  // NOT_SERVING from now on
    s->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    s->Wait();
  }
  return 0;
}

}  // namespace
}  // namespace sigmatune::server

int main(int argc, char** argv) { return sigmatune::server::Main(argc, argv); }
