#include "client/cli_args.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace sigmatune::client {
namespace {

const FlagInfo* FindFlag(absl::string_view name, const std::vector<FlagInfo>& a, const std::vector<FlagInfo>* b) {
  for (const FlagInfo& f : a) {
    if (f.name == name) return &f;
  }
  if (b != nullptr) {
    for (const FlagInfo& f : *b) {
      if (f.name == name) return &f;
    }
  }
  return nullptr;
}

std::string KnownFlags(const std::vector<FlagInfo>& a, const std::vector<FlagInfo>* b) {
  std::vector<std::string> names;
  for (const FlagInfo& f : a) names.push_back("--" + f.name);
  if (b != nullptr) {
    for (const FlagInfo& f : *b) names.push_back("--" + f.name);
  }
  return absl::StrJoin(names, " ");
}

}  // namespace

ExitCode ExitCodeForStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk: return ExitCode::kOk;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied: return ExitCode::kUnreachable;
    case absl::StatusCode::kInvalidArgument: return ExitCode::kUsage;
    default: return ExitCode::kFailed;
  }
}

bool ParsedArgs::Has(absl::string_view flag) const { return values_.find(flag) != values_.end(); }

std::string ParsedArgs::String(absl::string_view flag) const {
  const auto it = values_.find(flag);
  return it == values_.end() ? std::string() : it->second;
}

int64_t ParsedArgs::Int(absl::string_view flag, int64_t fallback) const {
  const auto it = values_.find(flag);
  int64_t value = 0;
  if (it == values_.end() || !absl::SimpleAtoi(it->second, &value)) return fallback;
  return value;
}

bool ParsedArgs::Bool(absl::string_view flag) const {
  const auto it = values_.find(flag);
  return it != values_.end() && it->second == "true";
}

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args, const std::vector<FlagInfo>& global_flags,
                                     const std::map<std::string, std::vector<FlagInfo>>& command_flags) {
  // First pass: find the command (the first argument that is neither a flag nor a flag's value).
  // Global flags may come before it; their values are recognised by the global flag list.
  ParsedArgs parsed;
  std::vector<std::pair<std::string, std::string>> flags;  // name, raw value ("\x01" = no value)
  std::vector<std::string> positional;
  constexpr absl::string_view kNoValue = "\x01";
  bool flags_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_ended || arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    std::string body = arg.substr(arg[1] == '-' ? 2 : 1);
    std::string value(kNoValue);
    const size_t eq = body.find('=');
    if (eq != std::string::npos) {
      value = body.substr(eq + 1);
      body.resize(eq);
    }
    if (body == "help" || body == "h") {
      parsed.command_ = "help";
      return parsed;
    }
    // A flag that takes a value may have it in the next argument. Which flags take values depends
    // on the command, which may come later; every flag name is unique across commands, so look it
    // up in all of them.
    const FlagInfo* info = FindFlag(body, global_flags, nullptr);
    for (const auto& [command, list] : command_flags) {
      if (info == nullptr) info = FindFlag(body, list, nullptr);
    }
    if (value == kNoValue && info != nullptr && info->type != FlagType::kBool && i + 1 < args.size()) {
      value = args[++i];
    }
    flags.emplace_back(body, value);
  }
  if (positional.empty() || positional[0] == "help") {
    parsed.command_ = "help";
    return parsed;
  }
  parsed.command_ = positional[0];
  const auto command = command_flags.find(parsed.command_);
  if (command == command_flags.end()) {
    std::vector<std::string> names;
    for (const auto& [name, list] : command_flags) names.push_back(name);
    return absl::InvalidArgumentError(absl::StrCat("unknown command \"", parsed.command_, "\"; the commands are ",
                                                   absl::StrJoin(names, ", ")));
  }
  parsed.positional_.assign(positional.begin() + 1, positional.end());
  for (const auto& [name, raw] : flags) {
    const FlagInfo* info = FindFlag(name, global_flags, &command->second);
    if (info == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " for `sigmatune ", parsed.command_,
                                                     "`; its flags are ", KnownFlags(global_flags, &command->second)));
    }
    if (parsed.Has(name)) return absl::InvalidArgumentError(absl::StrCat("--", name, " is given twice"));
    std::string value = raw;
    switch (info->type) {
      case FlagType::kBool: {
        const std::string lower = absl::AsciiStrToLower(value);
        if (value == kNoValue || lower == "true" || lower == "1") {
          value = "true";
        } else if (lower == "false" || lower == "0") {
          value = "false";
        } else {
          return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value (or true/false), got \"",
                                                         raw, "\""));
        }
        break;
      }
      case FlagType::kInt: {
        int64_t number = 0;
        if (value == kNoValue) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a whole number"));
        if (!absl::SimpleAtoi(value, &number)) {
          return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a whole number, got \"", value, "\""));
        }
        break;
      }
      case FlagType::kString:
        if (value == kNoValue) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        break;
    }
    parsed.values_.emplace(name, std::move(value));
  }
  return parsed;
}

std::string FlagsHelp(const std::vector<FlagInfo>& flags) {
  std::string out;
  for (const FlagInfo& f : flags) {
    const std::string form = f.type == FlagType::kBool  ? absl::StrCat("--", f.name)
                             : f.type == FlagType::kInt ? absl::StrCat("--", f.name, "=N")
                                                        : absl::StrCat("--", f.name, "=VALUE");
    absl::StrAppend(&out, absl::StrFormat("  %-24s %s\n", form, f.help));
  }
  return out;
}

}  // namespace sigmatune::client
