// sigmatune: the command-line client of sigmatune-coordinator.
//
//   sigmatune [--server=HOST:PORT] [--token_file=PATH] [--tls_ca=PATH] COMMAND ...
//
//   submit SPEC [--request_id=ID] [--priority=N] [--watch]   queue a job, print "jobs/abc QUEUED"
//   list [--state=queued,running] [--page_size=N] [--all]     NAME STATE PHASE STEP AGE
//   get NAME [--json]                                         a summary, or the Job as JSON
//   watch NAME                                                progress until the job ends, then the report
//   cancel NAME                                               cancel (a running job checkpoints first)
//   report NAME [--json]                                      the report of a job that succeeded
//   run SPEC [--local_workers=N]                              submit + watch; without a server, on a
//                                                             coordinator started for this job
//
// The server is --server, else $SIGMATUNE_SERVER, else 127.0.0.1:50051. The token is the content of
// --token_file, else $SIGMATUNE_TOKEN (the token itself); none: no authorization metadata. --tls_ca
// turns on TLS, trusting that PEM file. Exit status: 0 done (the job SUCCEEDED), 1 the job FAILED or
// another error, 2 usage or spec errors, 3 the job was CANCELLED, 4 the coordinator cannot be
// reached or refused the token.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/cli_args.h"
#include "client/commands.h"
#include "client/job_client.h"
#include "client/watch.h"

namespace sigmatune::client {
namespace {

const std::vector<FlagInfo>& GlobalFlags() {
  static const auto* flags = new std::vector<FlagInfo>{
      {"server", FlagType::kString, "the coordinator, HOST:PORT (default $SIGMATUNE_SERVER, else 127.0.0.1:50051)"},
      {"token_file", FlagType::kString, "a file holding the token (default: the token in $SIGMATUNE_TOKEN)"},
      {"tls_ca", FlagType::kString, "use TLS, trusting the root certificates in this PEM file"},
  };
  return *flags;
}

const std::map<std::string, std::vector<FlagInfo>>& CommandFlags() {
  static const auto* flags = new std::map<std::string, std::vector<FlagInfo>>{
      {"submit",
       {{"request_id", FlagType::kString, "makes the submission idempotent (default: a fresh random id)"},
        {"priority", FlagType::kInt, "higher runs first (default 0)"},
        {"watch", FlagType::kBool, "then follow the job like `watch`"}}},
      {"list",
       {{"state", FlagType::kString, "only jobs in these states: queued,running,succeeded,failed,cancelled"},
        {"page_size", FlagType::kInt, "jobs per page, 1-1000 (default: the coordinator's, 100)"},
        {"all", FlagType::kBool, "every page, not just the first"}}},
      {"get", {{"json", FlagType::kBool, "the Job message as JSON"}}},
      {"watch", {}},
      {"cancel", {}},
      {"report", {{"json", FlagType::kBool, "report.json instead of the text"}}},
      {"run",
       {{"local_workers", FlagType::kInt, "ranks of the local worker group (default 1; local coordinator only)"},
        {"coordinator_binary", FlagType::kString, "the sigmatune-coordinator to start (default: next to sigmatune)"},
        {"worker_binary", FlagType::kString, "the sigmatune-worker it starts (default: next to sigmatune)"},
        {"db", FlagType::kString,
         "the local job database (default ${XDG_STATE_HOME:-~/.local/state}/sigmatune/local.db)"},
        {"request_id", FlagType::kString, "as for submit"},
        {"priority", FlagType::kInt, "as for submit"}}},
  };
  return *flags;
}

void PrintUsage(FILE* out) {
  std::fputs(
      "usage: sigmatune [--server=HOST:PORT] [--token_file=PATH] [--tls_ca=PATH] COMMAND ...\n"
      "\n"
      "commands:\n"
      "  submit SPEC    queue a job (the spec is checked here; its paths are resolved by the coordinator)\n"
      "  list           the jobs: NAME STATE PHASE STEP AGE\n"
      "  get NAME       a job's summary (--json: the whole Job)\n"
      "  watch NAME     follow a job to its end, then print its report\n"
      "  cancel NAME    cancel a job (a running one stops with a checkpoint)\n"
      "  report NAME    the report of a job that succeeded\n"
      "  run SPEC       submit + watch; without --server/SIGMATUNE_SERVER on a local coordinator\n"
      "                 started for the job (Ctrl-C cancels the job)\n"
      "\n"
      "NAME is jobs/ID or ID. Exit status: 0 done/SUCCEEDED, 1 FAILED or other error, 2 usage or\n"
      "spec error, 3 CANCELLED, 4 coordinator unreachable or token refused.\n"
      "\n"
      "global flags:\n",
      out);
  std::fputs(FlagsHelp(GlobalFlags()).c_str(), out);
  for (const auto& [command, flags] : CommandFlags()) {
    if (flags.empty()) continue;
    std::fprintf(out, "\n%s flags:\n%s", command.c_str(), FlagsHelp(flags).c_str());
  }
}

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? std::string(value) : fallback;
}

// Fills the server address, token and TLS options; InvalidArgument for an unreadable file.
absl::Status MakeContext(const ParsedArgs& args, CliContext* ctx) {
  const std::string env_server = EnvOr("SIGMATUNE_SERVER", "");
  ctx->server_configured = args.Has("server") || !env_server.empty();
  ctx->server = args.Has("server") ? args.String("server") : env_server.empty() ? std::string(kDefaultServer)
                                                                                 : env_server;
  if (ctx->server.empty()) return absl::InvalidArgumentError("--server is empty");
  if (args.Has("token_file")) {
    const std::string path = args.String("token_file");
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read --token_file ", path));
    std::ostringstream text;
    text << in.rdbuf();
    ctx->client_options.token = std::string(absl::StripAsciiWhitespace(text.str()));
    if (ctx->client_options.token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--token_file ", path, " is empty"));
    }
  } else {
    ctx->client_options.token = std::string(absl::StripAsciiWhitespace(EnvOr("SIGMATUNE_TOKEN", "")));
  }
  if (args.Has("tls_ca")) {
    ctx->client_options.tls_ca_path = args.String("tls_ca");
    if (::access(ctx->client_options.tls_ca_path.c_str(), R_OK) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot read --tls_ca ", ctx->client_options.tls_ca_path));
    }
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  const std::vector<std::string> raw(argv + 1, argv + argc);
  absl::StatusOr<ParsedArgs> args = ParseArgs(raw, GlobalFlags(), CommandFlags());
  if (!args.ok()) {
    std::fprintf(stderr, "sigmatune: %s (sigmatune help)\n", std::string(args.status().message()).c_str());
    return static_cast<int>(ExitCode::kUsage);
  }
  if (args->command() == "help") {
    PrintUsage(stdout);
    return raw.empty() ? static_cast<int>(ExitCode::kUsage) : static_cast<int>(ExitCode::kOk);
  }
  CliContext ctx;
  if (const absl::Status made = MakeContext(*args, &ctx); !made.ok()) {
    return static_cast<int>(PrintError(made, stderr));
  }
  const std::string& command = args->command();
  ExitCode code = ExitCode::kUsage;
  if (command == "submit") code = CmdSubmit(*args, ctx);
  if (command == "list") code = CmdList(*args, ctx);
  if (command == "get") code = CmdGet(*args, ctx);
  if (command == "watch") code = CmdWatch(*args, ctx);
  if (command == "cancel") code = CmdCancel(*args, ctx);
  if (command == "report") code = CmdReport(*args, ctx);
  if (command == "run") code = CmdRun(*args, ctx);
  return static_cast<int>(code);
}

}  // namespace
}  // namespace sigmatune::client

int main(int argc, char** argv) { return sigmatune::client::Main(argc, argv); }
