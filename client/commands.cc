#include "client/commands.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/format.h"
#include "client/watch.h"
#include "worker/job/spec.h"

namespace sigmatune::client {
namespace {

// Checks the number of positional arguments; prints the usage error.
bool Positionals(const ParsedArgs& args, size_t count, const char* usage, const CliContext& ctx) {
  if (args.positional().size() == count) return true;
  std::fprintf(ctx.err, "sigmatune: usage: sigmatune %s\n", usage);
  return false;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string message = absl::StrCat("cannot read the job spec ", path, ": ", std::strerror(err));
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::NotFoundError(message);
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A spec that cannot be read or parsed is the user's to fix: exit status 2 whatever its code.
ExitCode SpecError(const absl::Status& status, const CliContext& ctx) {
  PrintError(status, ctx.err);
  return ExitCode::kUsage;
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobClient>> Connect(const CliContext& ctx) {
  return JobClient::Create(ctx.server, ctx.client_options);
}

absl::StatusOr<v1::JobSpec> ReadSpecUnresolved(const std::string& path) {
  const std::filesystem::path file(path);
  const std::string extension = absl::AsciiStrToLower(file.extension().string());
  job::SpecSyntax syntax = job::SpecSyntax::kYaml;
  if (extension == ".json") {
    syntax = job::SpecSyntax::kJson;
  } else if (extension != ".yaml" && extension != ".yml") {
    return absl::InvalidArgumentError(absl::StrCat(
        "job spec ", path, ": cannot tell its syntax; name the file *.yaml, *.yml (YAML) or *.json (JSON)"));
  }
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<v1::JobSpec> spec = job::ParseJobSpec(*text, syntax, path);
  if (!spec.ok()) return spec.status();
  if (spec->name().empty()) spec->set_name(file.stem().string());
  return spec;
}

std::string NewRequestId() {
  absl::BitGen gen;
  return absl::StrFormat("cli-%016x%016x", absl::Uniform<uint64_t>(gen), absl::Uniform<uint64_t>(gen));
}

absl::StatusOr<v1::Job> SubmitJob(JobClient& client, const v1::JobSpec& spec, const ParsedArgs& args,
                                  const CliContext& ctx) {
  const int64_t priority = args.Int("priority", 0);
  if (priority < std::numeric_limits<int32_t>::min() || priority > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("--priority must fit 32 bits, got ", priority));
  }
  const std::string request_id = args.Has("request_id") ? args.String("request_id") : NewRequestId();
  absl::StatusOr<v1::Job> job = client.Submit(spec, request_id, static_cast<int32_t>(priority));
  if (!job.ok()) return job.status();
  std::fprintf(ctx.out, "%s %s\n", job->name().c_str(), StateName(job->state()).c_str());
  std::fflush(ctx.out);
  return job;
}

ExitCode CmdSubmit(const ParsedArgs& args, const CliContext& ctx) {
  if (!Positionals(args, 1, "submit SPEC [--request_id=ID] [--priority=N] [--watch]", ctx)) return ExitCode::kUsage;
  absl::StatusOr<v1::JobSpec> spec = ReadSpecUnresolved(args.positional()[0]);
  if (!spec.ok()) return SpecError(spec.status(), ctx);
  absl::StatusOr<std::unique_ptr<JobClient>> client = Connect(ctx);
  if (!client.ok()) return PrintError(client.status(), ctx.err);
  absl::StatusOr<v1::Job> job = SubmitJob(**client, *spec, args, ctx);
  if (!job.ok()) return PrintError(job.status(), ctx.err);
  if (!args.Bool("watch")) return ExitCode::kOk;
  return WatchToEnd(**client, job->name(), ctx.out, ctx.err);
}

ExitCode CmdList(const ParsedArgs& args, const CliContext& ctx) {
  if (!Positionals(args, 0, "list [--state=queued,running,...] [--page_size=N] [--all]", ctx)) {
    return ExitCode::kUsage;
  }
  absl::StatusOr<std::vector<v1::JobState>> states = ParseStates(args.String("state"));
  if (!states.ok()) return PrintError(absl::InvalidArgumentError(absl::StrCat("--state: ", states.status().message())),
                                      ctx.err);
  const int64_t page_size = args.Int("page_size", 0);
  if (page_size < 0 || page_size > 1000) {
    return PrintError(absl::InvalidArgumentError(absl::StrCat("--page_size must be 1-1000, got ", page_size)),
                      ctx.err);
  }
  absl::StatusOr<std::unique_ptr<JobClient>> client = Connect(ctx);
  if (!client.ok()) return PrintError(client.status(), ctx.err);

  v1::ListJobsRequest request;
  request.set_page_size(static_cast<int32_t>(page_size));
  for (v1::JobState state : *states) request.add_states(state);
  std::vector<v1::Job> jobs;
  std::string next_page_token;
  while (true) {
    absl::StatusOr<v1::ListJobsResponse> page = (*client)->List(request);
    if (!page.ok()) return PrintError(page.status(), ctx.err);
    for (const v1::Job& job : page->jobs()) jobs.push_back(job);
    next_page_token = page->next_page_token();
    if (next_page_token.empty() || !args.Bool("all")) break;
    if (next_page_token == request.page_token()) {
      return PrintError(absl::InternalError("the coordinator returned the same page token twice"), ctx.err);
    }
    request.set_page_token(next_page_token);
  }
  std::fputs(FormatJobTable(jobs, absl::Now()).c_str(), ctx.out);
  std::fflush(ctx.out);
  if (!next_page_token.empty()) std::fprintf(ctx.err, "(more jobs: sigmatune list --all)\n");
  return ExitCode::kOk;
}

ExitCode CmdGet(const ParsedArgs& args, const CliContext& ctx) {
  if (!Positionals(args, 1, "get NAME [--json]", ctx)) return ExitCode::kUsage;
  absl::StatusOr<std::unique_ptr<JobClient>> client = Connect(ctx);
  if (!client.ok()) return PrintError(client.status(), ctx.err);
  absl::StatusOr<v1::Job> job = (*client)->Get(args.positional()[0]);
  if (!job.ok()) return PrintError(job.status(), ctx.err);
  if (args.Bool("json")) {
    absl::StatusOr<std::string> json = MessageToJson(*job);
    if (!json.ok()) return PrintError(json.status(), ctx.err);
    std::fputs(json->c_str(), ctx.out);
  } else {
    std::fputs(FormatJobSummary(*job, absl::Now()).c_str(), ctx.out);
  }
  std::fflush(ctx.out);
  return ExitCode::kOk;
}

ExitCode CmdWatch(const ParsedArgs& args, const CliContext& ctx) {
  if (!Positionals(args, 1, "watch NAME", ctx)) return ExitCode::kUsage;
  absl::StatusOr<std::unique_ptr<JobClient>> client = Connect(ctx);
  if (!client.ok()) return PrintError(client.status(), ctx.err);
  return WatchToEnd(**client, args.positional()[0], ctx.out, ctx.err);
}

ExitCode CmdCancel(const ParsedArgs& args, const CliContext& ctx) {
  if (!Positionals(args, 1, "cancel NAME", ctx)) return ExitCode::kUsage;
  absl::StatusOr<std::unique_ptr<JobClient>> client = Connect(ctx);
  if (!client.ok()) return PrintError(client.status(), ctx.err);
  absl::StatusOr<v1::Job> job = (*client)->Cancel(args.positional()[0]);
  if (!job.ok()) return PrintError(job.status(), ctx.err);
  if (job->state() == v1::JOB_STATE_CANCELLED) {
    std::fprintf(ctx.out, "%s CANCELLED\n", job->name().c_str());
  } else {
    std::fprintf(ctx.out, "%s %s (cancel requested: it stops with a checkpoint; `sigmatune watch %s` follows it)\n",
                 job->name().c_str(), StateName(job->state()).c_str(), job->name().c_str());
  }
  std::fflush(ctx.out);
  return ExitCode::kOk;
}

ExitCode CmdReport(const ParsedArgs& args, const CliContext& ctx) {
  if (!Positionals(args, 1, "report NAME [--json]", ctx)) return ExitCode::kUsage;
  absl::StatusOr<std::unique_ptr<JobClient>> client = Connect(ctx);
  if (!client.ok()) return PrintError(client.status(), ctx.err);
  absl::StatusOr<v1::JobReport> report = (*client)->Report(args.positional()[0]);
  if (!report.ok()) return PrintError(report.status(), ctx.err);
  std::string text;
  if (args.Bool("json")) {
    if (!report->json().empty()) {
      text = report->json();  // report.json as the job wrote it
    } else {
      absl::StatusOr<std::string> json = MessageToJson(*report);
      if (!json.ok()) return PrintError(json.status(), ctx.err);
      text = *json;
    }
  } else {
    text = report->text();
  }
  if (!text.empty() && text.back() != '\n') text += "\n";
  std::fputs(text.c_str(), ctx.out);
  std::fflush(ctx.out);
  return ExitCode::kOk;
}

}  // namespace sigmatune::client
