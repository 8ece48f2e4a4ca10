// The command line of `sigmatune`: `sigmatune [global flags] COMMAND [args] [flags]`, with flags
// allowed anywhere after the program name, and the exit statuses every command shares.
//
// Contract:
//  - Flags are "--name=value", "--name value" (for flags that take a value) or "--name" (for
//    FlagType::kBool, which also takes "--name=true|false"); "-name" works like "--name"; "--"
//    ends the flags. Each flag may be given once. A flag the command does not know, a missing or
//    malformed value, is a usage error (InvalidArgument naming the flag and the command).
//  - Parsing touches nothing outside its arguments.
#ifndef SIGMATUNE_CLIENT_CLI_ARGS_H_
#define SIGMATUNE_CLIENT_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sigmatune::client {

// The exit status of `sigmatune`.
enum class ExitCode : int {
  kOk = 0,           // done; for watch/run: the job SUCCEEDED
  kFailed = 1,       // the job FAILED, or any other error
  kUsage = 2,        // bad command line, or a spec that does not parse / validate
  kCancelled = 3,    // the job was CANCELLED
  kUnreachable = 4,  // cannot reach the coordinator, or it refused the token
};

// kUnreachable for Unavailable, DeadlineExceeded, Unauthenticated and PermissionDenied; kUsage for
// InvalidArgument; kFailed otherwise (kOk for OK).
ExitCode ExitCodeForStatus(const absl::Status& status);

enum class FlagType { kString, kInt, kBool };

struct FlagInfo {
  std::string name;
  FlagType type;
  std::string help;
};

class ParsedArgs {
 public:
  const std::string& command() const { return command_; }
  const std::vector<std::string>& positional() const { return positional_; }

  bool Has(absl::string_view flag) const;
  // The value as given ("" when absent).
  std::string String(absl::string_view flag) const;
  // An int flag (parsed and range-checked when the arguments were parsed); `fallback` when absent.
  int64_t Int(absl::string_view flag, int64_t fallback) const;
  // A bool flag: true when given as --flag or --flag=true.
  bool Bool(absl::string_view flag) const;

 private:
  friend absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                              const std::vector<FlagInfo>& global_flags,
                                              const std::map<std::string, std::vector<FlagInfo>>& command_flags);
  std::string command_;
  std::vector<std::string> positional_;
  std::map<std::string, std::string, std::less<>> values_;
};

// `args` without the program name. The first positional argument is the command, which must be a
// key of `command_flags`; the flags allowed are `global_flags` plus the command's. An empty command
// ("" when none is given, or "help" / "--help") is returned as command "help".
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args, const std::vector<FlagInfo>& global_flags,
                                     const std::map<std::string, std::vector<FlagInfo>>& command_flags);

// "  --name=VALUE  help" lines for a usage text.
std::string FlagsHelp(const std::vector<FlagInfo>& flags);

}  // namespace sigmatune::client

#endif  // SIGMATUNE_CLIENT_CLI_ARGS_H_
