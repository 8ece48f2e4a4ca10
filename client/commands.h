// The commands of the `sigmatune` tool (client/main.cc parses the command line and dispatches):
//
//   submit SPEC [--request_id=ID] [--priority=N] [--watch]
//   list [--state=queued,running,...] [--page_size=N] [--all]
//   get NAME [--json]
//   watch NAME
//   cancel NAME
//   report NAME [--json]
//   run SPEC [--local_workers=N] [--coordinator_binary=PATH] [--worker_binary=PATH] [--db=PATH]
//
// Contract:
//  - Results go to ctx.out, progress and errors ("sigmatune: <message>") to ctx.err. Each command
//    returns its exit status (ExitCode in cli_args.h).
//  - `submit` and `run` with a server parse the spec locally (ReadSpecUnresolved: syntax, unknown
//    fields and wrong types are reported with their lines before anything is sent) but leave its
//    paths as written: the coordinator resolves them under its data roots.
//  - NAME is "jobs/abc" or "abc".
#ifndef SIGMATUNE_CLIENT_COMMANDS_H_
#define SIGMATUNE_CLIENT_COMMANDS_H_

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/cli_args.h"
#include "client/job_client.h"
#include "sigmatune/v1/job.pb.h"

namespace sigmatune::client {

struct CliContext {
  std::string server;                    // the coordinator's address
  bool server_configured = false;        // --server or SIGMATUNE_SERVER was given
  JobClientOptions client_options;       // token, TLS
  FILE* out = stdout;
  FILE* err = stderr;
};

// A client of ctx.server with ctx.client_options.
absl::StatusOr<std::unique_ptr<JobClient>> Connect(const CliContext& ctx);

// Reads and parses a spec file (job::ParseJobSpec; syntax from the extension, .yaml/.yml or .json)
// without resolving its paths or applying defaults, except that an unset name becomes the file's
// stem (the coordinator cannot know the file name). InvalidArgument listing every problem with its
// line; NotFound / PermissionDenied for a file that cannot be read.
absl::StatusOr<v1::JobSpec> ReadSpecUnresolved(const std::string& path);

// A fresh random request id ("cli-" and 32 hex digits).
std::string NewRequestId();

// CreateJob with --request_id (default NewRequestId()) and --priority from `args`; prints
// "jobs/abc QUEUED" on ctx.out.
absl::StatusOr<v1::Job> SubmitJob(JobClient& client, const v1::JobSpec& spec, const ParsedArgs& args,
                                  const CliContext& ctx);

ExitCode CmdSubmit(const ParsedArgs& args, const CliContext& ctx);
ExitCode CmdList(const ParsedArgs& args, const CliContext& ctx);
ExitCode CmdGet(const ParsedArgs& args, const CliContext& ctx);
ExitCode CmdWatch(const ParsedArgs& args, const CliContext& ctx);
ExitCode CmdCancel(const ParsedArgs& args, const CliContext& ctx);
ExitCode CmdReport(const ParsedArgs& args, const CliContext& ctx);
// run_command.cc.
ExitCode CmdRun(const ParsedArgs& args, const CliContext& ctx);

}  // namespace sigmatune::client

#endif  // SIGMATUNE_CLIENT_COMMANDS_H_
