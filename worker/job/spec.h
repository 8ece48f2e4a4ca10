// The job spec of `sigmatune-worker --job spec.yaml`: reading (YAML or JSON), defaults, validation
// and the conversions the runner needs. proto/sigmatune/v1/job.proto defines the message and its
// defaults; docs/job-spec.md is the user's reference.
//
// Contract:
//  - ParseJobSpec converts text to a v1::JobSpec guided by the message's descriptor: every value
//    takes the type of the field it lands in (YAML `name: 123` is the string "123"; an integer
//    field takes 8 or "8" but not 8.5; `target_modules: all-linear` is the list ["all-linear"]).
//    Keys are a field's proto name (snake_case) or its JSON name (lowerCamelCase). JSON follows
//    the proto3 JSON mapping (numbers may be quoted; strings and booleans must have their JSON
//    type).
//  - Every problem is collected in one pass and reported together as one InvalidArgument status
//    (ProblemsToStatus): syntax errors (with line and column), unknown fields (with a "did you
//    mean" suggestion, and a hint for axolotl/torchtune names), wrong types, nulls, duplicate keys.
//  - ApplyDefaults fills the defaults written in job.proto into the fields left unset (0, "",
//    empty list); it is idempotent. An unset field and a field set to its zero value are the same
//    thing (proto3), so a zero where the default is not zero (e.g. method.kasa_beta: 0) gets the
//    default.
//  - ValidateJobSpec reports every semantic problem at once; with FileChecks::kYes it also looks
//    at the file system (model, data files, output directory).
//  - LoadJobSpec does all of it for a spec file; relative paths in the spec are relative to the
//    spec file's directory and come back absolute.
//  - Problems are "<path>: <message>" with paths such as "method.rank", "datasets[1].path".
//  - No exceptions escape; thread-compatible (no shared state).
#ifndef SIGMATUNE_WORKER_JOB_SPEC_H_
#define SIGMATUNE_WORKER_JOB_SPEC_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/peft/method.h"
#include "kernels/peft/targets.h"
#include "sigmatune/v1/job.pb.h"

namespace sigmatune::job {

enum class SpecSyntax { kYaml, kJson };

// One thing wrong with a spec. `path` names the field ("method.rank", "datasets[1].path"); it is
// empty for problems of the whole text (a syntax error).
struct SpecProblem {
  std::string path;
  std::string message;
};

// Text -> JobSpec (see the contract). `source_name` names the text in the status (a file name).
// InvalidArgument listing every problem found.
absl::StatusOr<v1::JobSpec> ParseJobSpec(absl::string_view text, SpecSyntax syntax, absl::string_view source_name);

// Fills every default written in job.proto's comments into unset fields (idempotent). `name`
// defaults to `default_name`; an eval set's name to its file's stem; cache_dir to
// <output_dir>/../.sigmatune-cache (lexically normalised) when output_dir is set.
void ApplyDefaults(absl::string_view default_name, v1::JobSpec* spec);

enum class FileChecks { kNo, kYes };

// Every semantic problem of `spec` (call ApplyDefaults first: unset required fields are reported,
// unset defaulted fields are not filled here). Relative paths are taken relative to the current
// directory. Empty when the spec is valid.
std::vector<SpecProblem> ValidateJobSpec(const v1::JobSpec& spec, FileChecks checks);

// OK for no problems, otherwise InvalidArgument
// "<source>: N problem(s) in the job spec:\n  <path>: <message>\n  <path>: <message>".
absl::Status ProblemsToStatus(absl::string_view source_name, const std::vector<SpecProblem>& problems);

// Reads `path` (syntax by its extension: .yaml/.yml or .json, otherwise InvalidArgument), parses
// it, resolves every path field (base_model, calibration.path, datasets[].path,
// eval_datasets[].path, output_dir, cache_dir unless "none") against the spec file's directory
// (absolute paths are kept, a leading "~/" is $HOME), applies the defaults (name = the file's
// stem) and validates with FileChecks::kYes. Parse and validation problems come in one
// InvalidArgument. A missing file is NotFound, an unreadable one PermissionDenied.
absl::StatusOr<v1::JobSpec> LoadJobSpec(const std::string& path);

// The adapter options of a validated method spec (unset fields take their defaults):
// Scaling::kRankStabilized with use_rslora, the KaSA regulariser form from kasa_regularizer.
// InvalidArgument for an unknown method or form, or options that fail AdapterOptions::Validate.
absl::StatusOr<peft::AdapterOptions> AdapterOptionsFromSpec(const v1::MethodSpec& method);

// PEFT's target_modules of a method spec: String(regex) when target_modules_regex is set, String
// for a list that is exactly ["all-linear"] (any case), List(target_modules) otherwise, and
// List([q_proj, v_proj]) when neither is set.
peft::TargetModulesSpec TargetModulesFromSpec(const v1::MethodSpec& method);

// The canonical JSON of a spec: every field with its proto (snake_case) name, unset ones with their
// zero value, 2-space indented (protobuf's JSON mapping: int64 values are quoted). For
// <output_dir>/job.json and fingerprints.
std::string SpecToJson(const v1::JobSpec& spec);

}  // namespace sigmatune::job

#endif  // SIGMATUNE_WORKER_JOB_SPEC_H_
