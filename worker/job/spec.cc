#include "worker/job/spec.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <regex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"
#include "worker/job/spec_parse.h"

namespace sigmatune::job {
namespace {

namespace fs = std::filesystem;
using ::sigmatune::job::internal::ClosestWord;
using ::sigmatune::job::internal::Quoted;
using Problems = std::vector<SpecProblem>;

// ---------------------------------------------------------------------------------------------
// Defaults.

constexpr absl::string_view kMethods[] = {"lora", "pissa", "milora", "corda_ipm", "corda_kpm", "kasa"};
constexpr absl::string_view kDataFormats[] = {"auto", "text",     "completion", "alpaca",
                                              "chat", "sharegpt", "segments",   "tokenized"};

void ApplyMethodDefaults(v1::MethodSpec* method) {
  if (method->rank() == 0) method->set_rank(8);
  if (method->alpha() == 0 && method->rank() > 0) method->set_alpha(2.0 * static_cast<double>(method->rank()));
  if (method->target_modules().empty() && method->target_modules_regex().empty()) {
    method->add_target_modules("q_proj");
    method->add_target_modules("v_proj");
  }
  if (method->kasa_beta() == 0) method->set_kasa_beta(1e-4);
  if (method->kasa_gamma() == 0) method->set_kasa_gamma(1e-3);
  if (method->kasa_regularizer().empty()) method->set_kasa_regularizer("peft");
}

// ---------------------------------------------------------------------------------------------
// Validation.

class Checker {
 public:
  explicit Checker(Problems* problems) : problems_(problems) {}

  void Add(std::string path, std::string message) {
    problems_->push_back(SpecProblem{std::move(path), std::move(message)});
  }

  void Required(const std::string& path, const std::string& value, absl::string_view what) {
    if (value.empty()) Add(path, absl::StrCat("required: ", what));
  }
  void AtLeast(const std::string& path, int64_t value, int64_t minimum) {
    if (value < minimum) Add(path, absl::StrCat("must be >= ", minimum, ", got ", value));
  }
  void Finite(const std::string& path, double value) {
    if (!std::isfinite(value)) Add(path, absl::StrCat("must be a finite number, got ", value));
  }
  void Positive(const std::string& path, double value) {
    if (!(value > 0) || !std::isfinite(value)) Add(path, absl::StrCat("must be a finite number > 0, got ", value));
  }
  void NonNegative(const std::string& path, double value) {
    if (!(value >= 0) || !std::isfinite(value)) Add(path, absl::StrCat("must be a finite number >= 0, got ", value));
  }
  void Fraction(const std::string& path, double value) {  // [0, 1)
    if (!(value >= 0 && value < 1)) Add(path, absl::StrCat("must be >= 0 and < 1, got ", value));
  }
  template <size_t N>
  void OneOf(const std::string& path, const std::string& value, const absl::string_view (&choices)[N]) {
    for (absl::string_view choice : choices) {
      if (value == choice) return;
    }
    const std::string list = absl::StrJoin(choices, ", ");
    if (value.empty()) {
      Add(path, absl::StrCat("required: one of ", list));
      return;
    }
    std::string message = absl::StrCat("must be one of ", list, "; got ", Quoted(value));
    const std::string closest = ClosestWord(value, std::vector<std::string>(std::begin(choices), std::end(choices)));
    if (!closest.empty()) absl::StrAppend(&message, " (did you mean ", closest, "?)");
    Add(path, message);
  }

 private:
  Problems* problems_;
};

// "" when `path` is a readable regular file, otherwise what is wrong with it.
std::string ReadableFileProblem(const std::string& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (!fs::exists(status)) return absl::StrCat("no such file: ", path);
  if (fs::is_directory(status)) return absl::StrCat(path, " is a directory, not a file");
  if (!fs::is_regular_file(status)) return absl::StrCat(path, " is not a regular file");
  errno = 0;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return absl::StrCat(path, " cannot be read: ", std::strerror(errno));
  std::fclose(file);
  return "";
}

void CheckDataFile(Checker& check, const std::string& path, const std::string& value) {
  if (value.empty()) return;
  const std::string problem = ReadableFileProblem(value);
  if (!problem.empty()) check.Add(path, problem);
}

void CheckBaseModel(Checker& check, const std::string& base_model) {
  constexpr absl::string_view kExpected =
      "expected a Hugging Face model directory containing config.json, or a file ending in .gguf";
  std::error_code error;
  const fs::file_status status = fs::status(base_model, error);
  if (absl::EndsWithIgnoreCase(base_model, ".gguf")) {
    const std::string problem = ReadableFileProblem(base_model);
    if (!problem.empty()) check.Add("base_model", absl::StrCat(problem, " (expected a .gguf file)"));
    return;
  }
  if (!fs::exists(status)) {
    check.Add("base_model", absl::StrCat("no such directory: ", base_model, " (", kExpected, ")"));
  } else if (!fs::is_directory(status)) {
    check.Add("base_model",
              absl::StrCat(base_model, " is a file but its name does not end in .gguf (", kExpected, ")"));
  } else if (!fs::is_regular_file(fs::path(base_model) / "config.json", error)) {
    check.Add("base_model", absl::StrCat("the directory ", base_model, " has no config.json (", kExpected, ")"));
  }
}

void CheckDirectoryOrAbsent(Checker& check, const std::string& path, const std::string& value) {
  if (value.empty()) return;
  std::error_code error;
  const fs::file_status status = fs::status(value, error);
  if (fs::exists(status) && !fs::is_directory(status)) {
    check.Add(path,
              absl::StrCat(value, " exists and is not a directory; give a directory (it is created when absent)"));
  }
}

void CheckMethod(Checker& check, const v1::MethodSpec& method) {
  check.OneOf("method.type", method.type(), kMethods);
  check.AtLeast("method.rank", method.rank(), 1);
  if (!(method.alpha() == 0 && method.rank() < 1)) check.Positive("method.alpha", method.alpha());
  check.Fraction("method.dropout", method.dropout());
  check.AtLeast("method.pissa_niter", method.pissa_niter(), 0);
  if (method.pissa_niter() != 0 && method.type() != "pissa" &&
      std::find(std::begin(kMethods), std::end(kMethods), method.type()) != std::end(kMethods)) {
    check.Add("method.pissa_niter", absl::StrCat("only used by method.type pissa, but method.type is ", method.type(),
                                                 "; remove it (got ", method.pissa_niter(), ")"));
  }
  check.NonNegative("method.kasa_beta", method.kasa_beta());
  check.NonNegative("method.kasa_gamma", method.kasa_gamma());
  constexpr absl::string_view kForms[] = {"peft", "reference"};
  check.OneOf("method.kasa_regularizer", method.kasa_regularizer(), kForms);
  if (!method.target_modules().empty() && !method.target_modules_regex().empty()) {
    check.Add("method.target_modules_regex",
              "set either target_modules (names) or target_modules_regex (one pattern), not both");
  }
  for (int i = 0; i < method.target_modules_size(); ++i) {
    const std::string& name = method.target_modules(i);
    const std::string path = absl::StrCat("method.target_modules[", i, "]");
    if (name.empty()) check.Add(path, "must not be empty; give a module name such as q_proj");
    if (absl::EqualsIgnoreCase(name, peft::kAllLinear) && method.target_modules_size() > 1) {
      check.Add(path, "all-linear selects every linear layer; write it alone (target_modules: all-linear)");
    }
  }
  if (!method.target_modules_regex().empty()) {
    try {
      const std::regex compiled(method.target_modules_regex(), std::regex::ECMAScript);
      (void)compiled;
    } catch (const std::regex_error& e) {
      check.Add("method.target_modules_regex", absl::StrCat("does not compile as a regular expression (ECMAScript): ",
                                                            e.what(), "; got ", Quoted(method.target_modules_regex())));
    }
  }
}

void CheckCalibration(Checker& check, const v1::JobSpec& spec) {
  const v1::CalibrationSpec& calibration = spec.calibration();
  if (spec.method().type() == "corda_ipm" || spec.method().type() == "corda_kpm") {
    check.Required("calibration.path", calibration.path(),
                   absl::StrCat("method.type ", spec.method().type(),
                                " needs calibration samples (a JSONL file) for its covariance statistics"));
  }
  check.OneOf("calibration.format", calibration.format(), kDataFormats);
  check.AtLeast("calibration.num_samples", calibration.num_samples(), 1);
  check.AtLeast("calibration.max_seq_len", calibration.max_seq_len(), 1);
  constexpr absl::string_view kAccumulations[] = {"f32", "f64"};
  check.OneOf("calibration.accumulation", calibration.accumulation(), kAccumulations);
}

void CheckData(Checker& check, const v1::JobSpec& spec) {
  if (spec.datasets().empty()) {
    check.Add("datasets", "required: a list of training files, e.g. datasets: [{path: train.jsonl}]");
  }
  for (int i = 0; i < spec.datasets_size(); ++i) {
    const v1::DatasetSpec& dataset = spec.datasets(i);
    const std::string path = absl::StrCat("datasets[", i, "]");
    check.Required(path + ".path", dataset.path(), "the JSONL file to train on");
    check.OneOf(path + ".format", dataset.format(), kDataFormats);
    check.AtLeast(path + ".max_samples", dataset.max_samples(), 0);
  }
  constexpr absl::string_view kMetrics[] = {"perplexity", "exact_match"};
  constexpr absl::string_view kRoles[] = {"task", "knowledge"};
  for (int i = 0; i < spec.eval_datasets_size(); ++i) {
    const v1::EvalSetSpec& eval = spec.eval_datasets(i);
    const std::string path = absl::StrCat("eval_datasets[", i, "]");
    check.Required(path + ".path", eval.path(), "the JSONL file to evaluate on");
    if (eval.name().empty() && !eval.path().empty()) check.Add(path + ".name", "must not be empty");
    for (int j = 0; j < i; ++j) {
      if (!eval.name().empty() && spec.eval_datasets(j).name() == eval.name()) {
        check.Add(path + ".name", absl::StrCat(Quoted(eval.name()), " is already the name of eval_datasets[", j,
                                               "]; names must be unique"));
        break;
      }
    }
    check.OneOf(path + ".metric", eval.metric(), kMetrics);
    check.OneOf(path + ".format", eval.format(), kDataFormats);
    check.OneOf(path + ".role", eval.role(), kRoles);
    check.AtLeast(path + ".max_samples", eval.max_samples(), 0);
    check.AtLeast(path + ".max_new_tokens", eval.max_new_tokens(), 1);
  }
}

void CheckOptimization(Checker& check, const v1::JobSpec& spec) {
  const v1::OptimizerSpec& optimizer = spec.optimizer();
  constexpr absl::string_view kOptimizers[] = {"adamw"};
  check.OneOf("optimizer.type", optimizer.type(), kOptimizers);
  check.Positive("optimizer.learning_rate", optimizer.learning_rate());
  check.Fraction("optimizer.beta1", optimizer.beta1());
  check.Fraction("optimizer.beta2", optimizer.beta2());
  check.Positive("optimizer.epsilon", optimizer.epsilon());
  check.NonNegative("optimizer.weight_decay", optimizer.weight_decay());
  check.Finite("optimizer.max_grad_norm", optimizer.max_grad_norm());

  const v1::SchedulerSpec& scheduler = spec.lr_scheduler();
  constexpr absl::string_view kSchedulers[] = {"constant", "linear", "cosine"};
  check.OneOf("lr_scheduler.type", scheduler.type(), kSchedulers);
  check.AtLeast("lr_scheduler.warmup_steps", scheduler.warmup_steps(), 0);
  check.Fraction("lr_scheduler.warmup_ratio", scheduler.warmup_ratio());
  if (scheduler.warmup_steps() > 0 && scheduler.warmup_ratio() > 0) {
    check.Add("lr_scheduler", absl::StrCat("set warmup_steps or warmup_ratio, not both (got ", scheduler.warmup_steps(),
                                           " and ", scheduler.warmup_ratio(), ")"));
  }

  check.AtLeast("micro_batch_size", spec.micro_batch_size(), 1);
  check.AtLeast("gradient_accumulation_steps", spec.gradient_accumulation_steps(), 1);
  check.AtLeast("max_steps", spec.max_steps(), 0);
  check.AtLeast("num_epochs", spec.num_epochs(), 0);
  if (spec.max_steps() == 0 && spec.num_epochs() == 0) {
    check.Add("num_epochs", "set num_epochs (passes over the data) or max_steps (optimizer steps); both are 0");
  }
  check.AtLeast("sequence_len", spec.sequence_len(), 1);
  check.AtLeast("seed", spec.seed(), 0);
  check.AtLeast("save_steps", spec.save_steps(), 0);
  check.AtLeast("save_total_limit", spec.save_total_limit(), 1);
  check.AtLeast("logging_steps", spec.logging_steps(), 1);
  constexpr absl::string_view kDevices[] = {"auto", "cpu", "cuda"};
  check.OneOf("device", spec.device(), kDevices);
  check.AtLeast("num_threads", spec.num_threads(), 0);
  check.AtLeast("world_size", spec.world_size(), 0);
}

// ---------------------------------------------------------------------------------------------
// Files.

// Resolves a path field against the spec's directory ("" stays ""). A problem when it starts
// with ~/ and $HOME is not set.
std::string ResolvePath(const fs::path& base, const std::string& path_name, const std::string& value,
                        Problems* problems) {
  if (value.empty()) return value;
  std::string expanded = value;
  if (value == "~" || absl::StartsWith(value, "~/")) {
    const char* home = std::getenv("HOME");
    if (home == nullptr || *home == '\0') {
      problems->push_back(SpecProblem{
          path_name, absl::StrCat(Quoted(value), " starts with ~ but $HOME is not set; give an absolute path")});
      return value;
    }
    expanded = absl::StrCat(home, value.substr(1));
  }
  fs::path path(expanded);
  if (path.is_relative()) path = base / path;
  path = path.lexically_normal();
  if (path.filename().empty() && path.has_relative_path()) path = path.parent_path();  // "out/" -> "out"
  return path.string();
}

void ResolvePaths(const fs::path& base, v1::JobSpec* spec, Problems* problems) {
  spec->set_base_model(ResolvePath(base, "base_model", spec->base_model(), problems));
  spec->set_output_dir(ResolvePath(base, "output_dir", spec->output_dir(), problems));
  if (spec->cache_dir() != "none") spec->set_cache_dir(ResolvePath(base, "cache_dir", spec->cache_dir(), problems));
  if (spec->has_calibration()) {
    v1::CalibrationSpec* calibration = spec->mutable_calibration();
    calibration->set_path(ResolvePath(base, "calibration.path", calibration->path(), problems));
  }
  for (int i = 0; i < spec->datasets_size(); ++i) {
    v1::DatasetSpec* dataset = spec->mutable_datasets(i);
    dataset->set_path(ResolvePath(base, absl::StrCat("datasets[", i, "].path"), dataset->path(), problems));
  }
  for (int i = 0; i < spec->eval_datasets_size(); ++i) {
    v1::EvalSetSpec* eval = spec->mutable_eval_datasets(i);
    eval->set_path(ResolvePath(base, absl::StrCat("eval_datasets[", i, "].path"), eval->path(), problems));
  }
}

absl::StatusOr<std::string> ReadSpecFile(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) {
    return absl::InvalidArgumentError(absl::StrCat("job spec ", path, " is a directory; give the spec file"));
  }
  errno = 0;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    const int code = errno;
    if (code == ENOENT || code == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat("job spec ", path, " does not exist; check the --job path"));
    }
    if (code == EACCES || code == EPERM) {
      return absl::PermissionDeniedError(
          absl::StrCat("job spec ", path, " cannot be read (permission denied); check its permissions"));
    }
    return absl::UnavailableError(absl::StrCat("job spec ", path, " cannot be opened: ", std::strerror(code)));
  }
  std::string text;
  char buffer[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, n);
  const bool failed = std::ferror(file) != 0;
  const int code = errno;
  std::fclose(file);
  if (failed) {
    return absl::UnavailableError(absl::StrCat("job spec ", path, " cannot be read: ", std::strerror(code)));
  }
  return text;
}

// Whether a validation problem at `path` follows from a parse problem at `parsed` (the value that
// failed to parse is unset, so "required" and the like would only repeat it).
bool FollowsFrom(const std::string& path, const std::string& parsed) {
  return !parsed.empty() &&
         (path == parsed || absl::StartsWith(path, parsed + ".") || absl::StartsWith(path, parsed + "["));
}

// 2-space indentation of protobuf's compact JSON (no whitespace outside strings).
std::string IndentJson(absl::string_view compact) {
  std::string out;
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  auto newline = [&] {
    out += '\n';
    out.append(static_cast<size_t>(2 * depth), ' ');
  };
  for (size_t i = 0; i < compact.size(); ++i) {
    const char c = compact[i];
    if (in_string) {
      out += c;
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        out += c;
        break;
      case '{':
      case '[':
        out += c;
        if (i + 1 < compact.size() && (compact[i + 1] == '}' || compact[i + 1] == ']')) {
          out += compact[++i];
        } else {
          ++depth;
          newline();
        }
        break;
      case '}':
      case ']':
        --depth;
        newline();
        out += c;
        break;
      case ',':
        out += c;
        newline();
        break;
      case ':':
        out += ": ";
        break;
      default:
        out += c;
    }
  }
  out += '\n';
  return out;
}

}  // namespace

absl::StatusOr<v1::JobSpec> ParseJobSpec(absl::string_view text, SpecSyntax syntax, absl::string_view source_name) {
  v1::JobSpec spec;
  Problems problems;
  internal::ParseSpecText(text, syntax, &spec, &problems);
  ST_RETURN_IF_ERROR(ProblemsToStatus(source_name, problems));
  return spec;
}

void ApplyDefaults(absl::string_view default_name, v1::JobSpec* spec) {
  if (spec->name().empty()) spec->set_name(std::string(default_name));
  ApplyMethodDefaults(spec->mutable_method());

  v1::CalibrationSpec* calibration = spec->mutable_calibration();
  if (calibration->format().empty()) calibration->set_format("auto");
  if (calibration->num_samples() == 0) calibration->set_num_samples(256);
  if (calibration->max_seq_len() == 0) calibration->set_max_seq_len(512);
  if (calibration->accumulation().empty()) calibration->set_accumulation("f32");

  for (v1::DatasetSpec& dataset : *spec->mutable_datasets()) {
    if (dataset.format().empty()) dataset.set_format("auto");
  }
  for (v1::EvalSetSpec& eval : *spec->mutable_eval_datasets()) {
    if (eval.name().empty() && !eval.path().empty()) eval.set_name(fs::path(eval.path()).stem().string());
    if (eval.metric().empty()) eval.set_metric("perplexity");
    if (eval.format().empty()) eval.set_format("auto");
    if (eval.max_new_tokens() == 0) eval.set_max_new_tokens(64);
    if (eval.role().empty()) eval.set_role("task");
  }

  v1::OptimizerSpec* optimizer = spec->mutable_optimizer();
  if (optimizer->type().empty()) optimizer->set_type("adamw");
  if (optimizer->learning_rate() == 0) optimizer->set_learning_rate(2e-4);
  if (optimizer->beta1() == 0) optimizer->set_beta1(0.9);
  if (optimizer->beta2() == 0) optimizer->set_beta2(0.999);
  if (optimizer->epsilon() == 0) optimizer->set_epsilon(1e-8);
  if (optimizer->max_grad_norm() == 0) optimizer->set_max_grad_norm(1.0);

  v1::SchedulerSpec* scheduler = spec->mutable_lr_scheduler();
  if (scheduler->type().empty()) scheduler->set_type("cosine");

  if (spec->micro_batch_size() == 0) spec->set_micro_batch_size(1);
  if (spec->gradient_accumulation_steps() == 0) spec->set_gradient_accumulation_steps(1);
  if (spec->sequence_len() == 0) spec->set_sequence_len(2048);
  if (spec->seed() == 0) spec->set_seed(42);
  if (spec->save_total_limit() == 0) spec->set_save_total_limit(2);
  if (spec->logging_steps() == 0) spec->set_logging_steps(1);
  if (spec->cache_dir().empty() && !spec->output_dir().empty()) {
    spec->set_cache_dir((fs::path(spec->output_dir()) / ".." / ".sigmatune-cache").lexically_normal().string());
  }
  if (!spec->has_export_merged()) spec->set_export_merged(true);
  if (spec->device().empty()) spec->set_device("auto");
}

std::vector<SpecProblem> ValidateJobSpec(const v1::JobSpec& spec, FileChecks checks) {
  Problems problems;
  Checker check(&problems);
  check.Required("base_model", spec.base_model(),
                 "a Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a .gguf file");
  check.Required("output_dir", spec.output_dir(), "the directory for checkpoints, exports, metrics and the report");
  CheckMethod(check, spec.method());
  CheckCalibration(check, spec);
  CheckData(check, spec);
  CheckOptimization(check, spec);
  if (checks == FileChecks::kYes) {
    if (!spec.base_model().empty()) CheckBaseModel(check, spec.base_model());
    CheckDataFile(check, "calibration.path", spec.calibration().path());
    for (int i = 0; i < spec.datasets_size(); ++i) {
      CheckDataFile(check, absl::StrCat("datasets[", i, "].path"), spec.datasets(i).path());
    }
    for (int i = 0; i < spec.eval_datasets_size(); ++i) {
      CheckDataFile(check, absl::StrCat("eval_datasets[", i, "].path"), spec.eval_datasets(i).path());
    }
    CheckDirectoryOrAbsent(check, "output_dir", spec.output_dir());
    if (spec.cache_dir() != "none") CheckDirectoryOrAbsent(check, "cache_dir", spec.cache_dir());
  }
  return problems;
}

absl::Status ProblemsToStatus(absl::string_view source_name, const std::vector<SpecProblem>& problems) {
  if (problems.empty()) return absl::OkStatus();
  std::string message = absl::StrCat(source_name, ": ", problems.size(),
                                     problems.size() == 1 ? " problem" : " problems", " in the job spec:");
  for (const SpecProblem& problem : problems) {
    absl::StrAppend(&message, "\n  ", problem.path, problem.path.empty() ? "" : ": ", problem.message);
  }
  return absl::InvalidArgumentError(message);
}

absl::StatusOr<v1::JobSpec> LoadJobSpec(const std::string& path) {
  const fs::path file(path);
  const std::string extension = absl::AsciiStrToLower(file.extension().string());
  SpecSyntax syntax = SpecSyntax::kYaml;
  if (extension == ".json") {
    syntax = SpecSyntax::kJson;
  } else if (extension != ".yaml" && extension != ".yml") {
    return absl::InvalidArgumentError(absl::StrCat(
        "job spec ", path, ": cannot tell its syntax; name the file *.yaml, *.yml (YAML) or *.json (JSON)"));
  }
  ST_ASSIGN_OR_RETURN(const std::string text, ReadSpecFile(path));

  v1::JobSpec spec;
  Problems problems;
  if (internal::ParseSpecText(text, syntax, &spec, &problems) == internal::ParseOutcome::kSyntaxError) {
    return ProblemsToStatus(path, problems);
  }
  std::error_code error;
  fs::path absolute = fs::absolute(file, error);
  if (error) absolute = file;
  ResolvePaths(absolute.parent_path(), &spec, &problems);
  ApplyDefaults(file.stem().string(), &spec);

  const Problems parse_problems = problems;
  for (SpecProblem& problem : ValidateJobSpec(spec, FileChecks::kYes)) {
    bool repeats = false;
    for (const SpecProblem& parsed : parse_problems) repeats = repeats || FollowsFrom(problem.path, parsed.path);
    if (!repeats) problems.push_back(std::move(problem));
  }
  ST_RETURN_IF_ERROR(ProblemsToStatus(path, problems));
  return spec;
}

absl::StatusOr<peft::AdapterOptions> AdapterOptionsFromSpec(const v1::MethodSpec& method_spec) {
  v1::MethodSpec method = method_spec;
  ApplyMethodDefaults(&method);
  peft::AdapterOptions options;
  absl::StatusOr<peft::Method> parsed = peft::ParseMethod(method.type());
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat("method.type: ", parsed.status().message()));
  options.method = *parsed;
  options.rank = method.rank();
  options.alpha = method.alpha();
  options.scaling = method.use_rslora() ? peft::Scaling::kRankStabilized : peft::Scaling::kStandard;
  options.dropout = method.dropout();
  if (method.pissa_niter() < 0 || method.pissa_niter() > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("method.pissa_niter: must be >= 0 and fit an int, got ", method.pissa_niter()));
  }
  options.pissa_niter = static_cast<int>(method.pissa_niter());
  options.kasa_beta = method.kasa_beta();
  options.kasa_gamma = method.kasa_gamma();
  if (method.kasa_regularizer() == "peft") {
    options.kasa_form = peft::KasaRegularizerForm::kPeft;
  } else if (method.kasa_regularizer() == "reference") {
    options.kasa_form = peft::KasaRegularizerForm::kReference;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("method.kasa_regularizer: must be peft or reference, got ", Quoted(method.kasa_regularizer())));
  }
  const absl::Status valid = options.Validate();
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("method: ", valid.message()));
  return options;
}

peft::TargetModulesSpec TargetModulesFromSpec(const v1::MethodSpec& method) {
  if (!method.target_modules_regex().empty()) return peft::TargetModulesSpec::String(method.target_modules_regex());
  if (method.target_modules_size() == 1 && absl::EqualsIgnoreCase(method.target_modules(0), peft::kAllLinear)) {
    return peft::TargetModulesSpec::String(method.target_modules(0));
  }
  if (method.target_modules().empty()) return peft::TargetModulesSpec::List({"q_proj", "v_proj"});
  return peft::TargetModulesSpec::List(
      std::vector<std::string>(method.target_modules().begin(), method.target_modules().end()));
}

std::string SpecToJson(const v1::JobSpec& spec) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string compact;
  const auto status = google::protobuf::util::MessageToJsonString(spec, &compact, options);
  ST_CHECK(status.ok()) << "MessageToJsonString failed on a JobSpec: " << status.ToString();
  return IndentJson(compact);
}

}  // namespace sigmatune::job
