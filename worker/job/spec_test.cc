#include "worker/job/spec.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "kernels/peft/method.h"
#include "kernels/peft/targets.h"
#include "sigmatune/v1/job.pb.h"

namespace sigmatune::job {
namespace {

namespace fs = std::filesystem;
using ::google::protobuf::util::MessageDifferencer;

std::string TestdataPath(const std::string& name) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  const std::string relative = "worker/job/testdata/" + name;
  if (srcdir == nullptr || workspace == nullptr) return relative;
  return absl::StrCat(srcdir, "/", workspace, "/", relative);
}

std::string TestdataDir() { return fs::absolute(TestdataPath("model")).parent_path().lexically_normal().string(); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A fresh directory under $TEST_TMPDIR.
std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp != nullptr ? tmp : "/tmp") / ("spec_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

void WriteFile(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path);
  out << text;
}

absl::StatusOr<v1::JobSpec> ParseYaml(const std::string& text) {
  return ParseJobSpec(text, SpecSyntax::kYaml, "test.yaml");
}

absl::StatusOr<v1::JobSpec> ParseJson(const std::string& text) {
  return ParseJobSpec(text, SpecSyntax::kJson, "test.json");
}

// The problem lines of a status ("  path: message"), without the header line.
std::vector<std::string> ProblemLines(const absl::Status& status) {
  std::vector<std::string> lines;
  std::stringstream in{std::string(status.message())};
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

bool HasProblem(const std::vector<SpecProblem>& problems, const std::string& path, const std::string& fragment) {
  for (const SpecProblem& problem : problems) {
    if (problem.path == path && absl::StrContains(problem.message, fragment)) return true;
  }
  return false;
}

std::string Dump(const std::vector<SpecProblem>& problems) { return ProblemsToStatus("dump", problems).ToString(); }

// A valid spec after ApplyDefaults (no file checks).
v1::JobSpec ValidSpec() {
  absl::StatusOr<v1::JobSpec> spec =
      ParseYaml("base_model: m\nmethod: {type: lora}\ndatasets: [{path: d.jsonl}]\nnum_epochs: 1\noutput_dir: o\n");
  EXPECT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults("valid", &*spec);
  return *spec;
}

TEST(ParseJobSpecTest, FullYamlAndJsonGiveTheSameMessage) {
  const absl::StatusOr<v1::JobSpec> yaml =
      ParseJobSpec(ReadFile(TestdataPath("full.yaml")), SpecSyntax::kYaml, "full.yaml");
  const absl::StatusOr<v1::JobSpec> json =
      ParseJobSpec(ReadFile(TestdataPath("full.json")), SpecSyntax::kJson, "full.json");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*yaml, *json)) << yaml->DebugString() << "\nvs\n" << json->DebugString();

  EXPECT_EQ(yaml->name(), "full-example");
  EXPECT_EQ(yaml->method().type(), "corda_ipm");
  EXPECT_EQ(yaml->method().rank(), 16);
  EXPECT_DOUBLE_EQ(yaml->method().alpha(), 32.0);
  EXPECT_DOUBLE_EQ(yaml->method().kasa_beta(), 2e-4);
  EXPECT_EQ(yaml->method().target_modules_size(), 4);
  EXPECT_TRUE(yaml->method().use_rslora());
  EXPECT_EQ(yaml->calibration().num_samples(), 128);
  ASSERT_EQ(yaml->datasets_size(), 2);
  EXPECT_TRUE(yaml->datasets(0).train_on_input());  // YAML "yes"
  EXPECT_EQ(yaml->datasets(1).format(), "completion");
  EXPECT_DOUBLE_EQ(yaml->optimizer().max_grad_norm(), -1.0);
  EXPECT_TRUE(yaml->has_export_merged());
  EXPECT_FALSE(yaml->export_merged());
  EXPECT_EQ(yaml->cache_dir(), "none");
}

TEST(ParseJobSpecTest, YamlScalarsTakeTheFieldsType) {
  absl::StatusOr<v1::JobSpec> spec = ParseYaml(
      "name: 123\nmethod:\n  rank: \"8\"\n  alpha: 2e-4\n  dropout: .1\n  use_rslora: Yes\n"
      "sample_packing: off\nbase_model: 'true'\nseed: -3\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "123");
  EXPECT_EQ(spec->method().rank(), 8);
  EXPECT_DOUBLE_EQ(spec->method().alpha(), 2e-4);
  EXPECT_DOUBLE_EQ(spec->method().dropout(), 0.1);
  EXPECT_TRUE(spec->method().use_rslora());
  EXPECT_FALSE(spec->sample_packing());
  EXPECT_EQ(spec->base_model(), "true");
  EXPECT_EQ(spec->seed(), -3);
}

TEST(ParseJobSpecTest, WrongScalarTypesAreReportedWithPathAndValue) {
  absl::StatusOr<v1::JobSpec> spec = ParseYaml("method:\n  rank: 8.5\n");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "method.rank: expected a whole number, got \"8.5\" (line 2)"))
      << spec.status();

  spec = ParseYaml("method:\n  rank: eight\n  alpha: high\nsample_packing: maybe\n");
  ASSERT_FALSE(spec.ok());
  const std::vector<std::string> lines = ProblemLines(spec.status());
  ASSERT_EQ(lines.size(), 3u) << spec.status();
  EXPECT_TRUE(absl::StartsWith(lines[0], "  method.rank: expected a whole number, got \"eight\"")) << lines[0];
  EXPECT_TRUE(absl::StartsWith(lines[1], "  method.alpha: expected a number, got \"high\"")) << lines[1];
  EXPECT_TRUE(absl::StartsWith(lines[2], "  sample_packing: expected true or false, got \"maybe\"")) << lines[2];
}

TEST(ParseJobSpecTest, JsonFollowsTheProtoJsonMapping) {
  absl::StatusOr<v1::JobSpec> spec =
      ParseJson(R"({"method": {"rank": "8", "alpha": "16"}, "max_steps": 1e2, "seed": 8.0})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->method().rank(), 8);
  EXPECT_DOUBLE_EQ(spec->method().alpha(), 16.0);
  EXPECT_EQ(spec->max_steps(), 100);
  EXPECT_EQ(spec->seed(), 8);

  spec = ParseJson(R"({"name": 123, "method": {"rank": 8.5, "use_rslora": "yes"}})");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(
      absl::StrContains(spec.status().message(), "name: expected a string, got the number 123 (put it in quotes)"))
      << spec.status();
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "method.rank: expected a whole number, got the number 8.5"))
      << spec.status();
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "method.use_rslora: expected true or false")) << spec.status();
}

TEST(ParseJobSpecTest, FiveMistakesAreReportedTogether) {
  const absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec(ReadFile(TestdataPath("five_mistakes.yaml")), SpecSyntax::kYaml, "five_mistakes.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(spec.status().message(), "five_mistakes.yaml: 5 problems in the job spec:\n"))
      << spec.status();
  const std::vector<std::string> lines = ProblemLines(spec.status());
  ASSERT_EQ(lines.size(), 5u) << spec.status();
  EXPECT_EQ(lines[0], "  method.rnak: unknown field \"rnak\"; did you mean \"rank\"? (line 5)");
  EXPECT_EQ(lines[1], "  method.alpha: expected a number, got \"lots\" (line 6)");
  EXPECT_TRUE(
      absl::StartsWith(lines[2], "  datasets[0].max_samples: expected a whole number (a single value), got a list"))
      << lines[2];
  EXPECT_EQ(lines[3],
            "  micro_batch_size: duplicate key \"micro_batch_size\", first given on line 10; keep one (line 11)");
  EXPECT_EQ(lines[4], "  device: has no value (null); give one or delete the key (line 14)");

  // Through LoadJobSpec the same five and nothing else: the unparsed values take their defaults
  // and the files exist.
  const absl::StatusOr<v1::JobSpec> loaded = LoadJobSpec(TestdataPath("five_mistakes.yaml"));
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(ProblemLines(loaded.status()), lines) << loaded.status();
}

TEST(ParseJobSpecTest, UnknownFieldsGetSuggestionsAndForeignNameHints) {
  const absl::StatusOr<v1::JobSpec> spec =
      ParseYaml("lora_r: 16\nmethod:\n  rnak: 4\n  r: 4\noptimizer:\n  lr: 1e-4\nbase_modle: m\nfoo: 1\n");
  ASSERT_FALSE(spec.ok());
  const std::string message(spec.status().message());
  EXPECT_TRUE(absl::StrContains(message, "  lora_r: unknown field \"lora_r\"; sigmatune's name is method.rank"))
      << message;
  EXPECT_TRUE(absl::StrContains(message, "  method.rnak: unknown field \"rnak\"; did you mean \"rank\"?")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  method.r: unknown field \"r\"; sigmatune's name is rank")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  optimizer.lr: unknown field \"lr\"; sigmatune's name is learning_rate"))
      << message;
  EXPECT_TRUE(absl::StrContains(message, "  base_modle: unknown field \"base_modle\"; did you mean \"base_model\"?"))
      << message;
  EXPECT_TRUE(absl::StrContains(message, "  foo: unknown field \"foo\"; the fields here are: name, base_model, method"))
      << message;
}

TEST(ParseJobSpecTest, NullsListsAndMappingsInTheWrongPlace) {
  const absl::StatusOr<v1::JobSpec> spec = ParseYaml(
      "name: [a, b]\nmethod: lora\nlr_scheduler: cosine\ndatasets: train.jsonl\n"
      "eval_datasets:\noptimizer: {type: {x: 1}}\n");
  ASSERT_FALSE(spec.ok());
  const std::string message(spec.status().message());
  EXPECT_TRUE(absl::StrContains(message, "6 problems")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  name: expected a string (a single value), got a list")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  method: expected a mapping (fields: type, rank,")) << message;
  EXPECT_TRUE(absl::StrContains(message, "did you mean {type: lora}?")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  lr_scheduler: expected a mapping")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  datasets: expected a list of mappings (fields: path, format,")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  eval_datasets: has no value (null)")) << message;
  EXPECT_TRUE(absl::StrContains(message, "  optimizer.type: expected a string (a single value), got a mapping"))
      << message;
}

TEST(ParseJobSpecTest, JsonNamesAreAliases) {
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec(ReadFile(TestdataPath("camel.json")), SpecSyntax::kJson, "camel.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->base_model(), "model");
  ASSERT_EQ(spec->method().target_modules_size(), 1);
  EXPECT_EQ(spec->method().target_modules(0), "all-linear");
  EXPECT_TRUE(spec->method().use_rslora());
  EXPECT_TRUE(spec->datasets(0).train_on_input());
  EXPECT_EQ(spec->micro_batch_size(), 2);
  EXPECT_EQ(spec->num_epochs(), 1);
  EXPECT_EQ(spec->output_dir(), "out/camel");
  EXPECT_EQ(spec->lr_scheduler().warmup_steps(), 10);

  spec = ParseYaml("baseModel: m\nmethod: {targetModulesRegex: '.*q_proj'}\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->base_model(), "m");
  EXPECT_EQ(spec->method().target_modules_regex(), ".*q_proj");

  // Both spellings of one field are a duplicate.
  spec = ParseJson(R"({"method": {"target_modules": ["q_proj"], "targetModules": ["v_proj"]}})");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(),
                                "method.target_modules: duplicate key \"targetModules\" (the same field as "
                                "\"target_modules\"); keep one"))
      << spec.status();
}

TEST(ParseJobSpecTest, AScalarIsAOneElementListForRepeatedStrings) {
  absl::StatusOr<v1::JobSpec> spec = ParseYaml("method:\n  target_modules: all-linear\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->method().target_modules_size(), 1);
  EXPECT_EQ(spec->method().target_modules(0), "all-linear");

  spec = ParseYaml("method:\n  target_modules:\n    - q_proj\n    - [k_proj]\n");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "method.target_modules[1]: expected a string, got a list"))
      << spec.status();
}

TEST(ParseJobSpecTest, SyntaxErrorsNameLineAndColumn) {
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec(ReadFile(TestdataPath("syntax_error.yaml")), SpecSyntax::kYaml, "syntax_error.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(spec.status().message(),
                               "syntax_error.yaml: 1 problem in the job spec:\n  invalid YAML at line "))
      << spec.status();
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "end of sequence flow not found")) << spec.status();

  spec = ParseJobSpec(ReadFile(TestdataPath("syntax_error.json")), SpecSyntax::kJson, "syntax_error.json");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "invalid JSON: parse error at line 3, column 29"))
      << spec.status();

  spec = ParseJson(std::string(200, '[') + std::string(200, ']'));
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "invalid JSON: lists and mappings nested more than 100"))
      << spec.status();

  spec = ParseYaml("");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "the spec is empty")) << spec.status();
  spec = ParseYaml("just a string\n");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "a job spec is a mapping of field names to values"))
      << spec.status();
}

TEST(ApplyDefaultsTest, FillsTheDefaultsOfJobProto) {
  absl::StatusOr<v1::JobSpec> spec = ParseYaml(
      "method: {type: lora, rank: 4}\ndatasets: [{path: a.jsonl}]\neval_datasets: [{path: /x/knowledge.jsonl}]\n"
      "output_dir: /runs/job1\n");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults("myjob", &*spec);
  EXPECT_EQ(spec->name(), "myjob");
  EXPECT_EQ(spec->method().rank(), 4);
  EXPECT_DOUBLE_EQ(spec->method().alpha(), 8.0);  // 2 * rank
  ASSERT_EQ(spec->method().target_modules_size(), 2);
  EXPECT_EQ(spec->method().target_modules(0), "q_proj");
  EXPECT_EQ(spec->method().target_modules(1), "v_proj");
  EXPECT_DOUBLE_EQ(spec->method().kasa_beta(), 1e-4);
  EXPECT_DOUBLE_EQ(spec->method().kasa_gamma(), 1e-3);
  EXPECT_EQ(spec->method().kasa_regularizer(), "peft");
  EXPECT_EQ(spec->calibration().num_samples(), 256);
  EXPECT_EQ(spec->calibration().max_seq_len(), 512);
  EXPECT_EQ(spec->calibration().accumulation(), "f32");
  EXPECT_EQ(spec->datasets(0).format(), "auto");
  EXPECT_EQ(spec->eval_datasets(0).name(), "knowledge");
  EXPECT_EQ(spec->eval_datasets(0).metric(), "perplexity");
  EXPECT_EQ(spec->eval_datasets(0).max_new_tokens(), 64);
  EXPECT_EQ(spec->eval_datasets(0).role(), "task");
  EXPECT_EQ(spec->optimizer().type(), "adamw");
  EXPECT_DOUBLE_EQ(spec->optimizer().learning_rate(), 2e-4);
  EXPECT_DOUBLE_EQ(spec->optimizer().beta1(), 0.9);
  EXPECT_DOUBLE_EQ(spec->optimizer().beta2(), 0.999);
  EXPECT_DOUBLE_EQ(spec->optimizer().epsilon(), 1e-8);
  EXPECT_DOUBLE_EQ(spec->optimizer().max_grad_norm(), 1.0);
  EXPECT_EQ(spec->lr_scheduler().type(), "cosine");
  EXPECT_EQ(spec->micro_batch_size(), 1);
  EXPECT_EQ(spec->gradient_accumulation_steps(), 1);
  EXPECT_EQ(spec->sequence_len(), 2048);
  EXPECT_EQ(spec->seed(), 42);
  EXPECT_EQ(spec->save_total_limit(), 2);
  EXPECT_EQ(spec->logging_steps(), 1);
  EXPECT_EQ(spec->cache_dir(), "/runs/.sigmatune-cache");
  EXPECT_TRUE(spec->has_export_merged());
  EXPECT_TRUE(spec->export_merged());
  EXPECT_EQ(spec->device(), "auto");

  // Idempotent, and values that were given are kept.
  v1::JobSpec again = *spec;
  ApplyDefaults("other", &again);
  EXPECT_TRUE(MessageDifferencer::Equals(*spec, again));

  // A regex instead of target_modules gets no default list.
  spec = ParseYaml("method: {target_modules_regex: '.*proj'}\n");
  ASSERT_TRUE(spec.ok());
  ApplyDefaults("x", &*spec);
  EXPECT_EQ(spec->method().target_modules_size(), 0);
  EXPECT_TRUE(ValidateJobSpec(*spec, FileChecks::kNo).size() > 0);
  EXPECT_FALSE(HasProblem(ValidateJobSpec(*spec, FileChecks::kNo), "method.target_modules_regex", ""));
}

TEST(ValidateJobSpecTest, AValidSpecHasNoProblems) {
  const std::vector<SpecProblem> problems = ValidateJobSpec(ValidSpec(), FileChecks::kNo);
  EXPECT_TRUE(problems.empty()) << Dump(problems);
}

TEST(ValidateJobSpecTest, ReportsEverySemanticProblemWithTheValueGiven) {
  v1::JobSpec spec;
  spec.mutable_method()->set_type("lroa");
  spec.mutable_method()->set_rank(-1);
  spec.mutable_method()->set_dropout(1.0);
  spec.mutable_method()->set_pissa_niter(-2);
  spec.mutable_method()->add_target_modules("q_proj");
  spec.mutable_method()->add_target_modules("");
  spec.mutable_method()->set_target_modules_regex("(q_proj");
  spec.mutable_method()->set_kasa_regularizer("torch");
  spec.add_datasets()->set_format("csv");
  spec.add_eval_datasets()->set_path("a/task.jsonl");
  spec.add_eval_datasets()->set_path("b/task.jsonl");
  spec.mutable_optimizer()->set_type("sgd");
  spec.mutable_optimizer()->set_learning_rate(std::numeric_limits<double>::infinity());
  spec.mutable_optimizer()->set_beta2(1.0);
  spec.mutable_lr_scheduler()->set_type("step");
  spec.mutable_lr_scheduler()->set_warmup_steps(10);
  spec.mutable_lr_scheduler()->set_warmup_ratio(0.1);
  spec.set_micro_batch_size(-4);
  spec.set_save_steps(-1);
  spec.set_device("tpu");
  spec.set_num_threads(-1);
  ApplyDefaults("bad", &spec);
  const std::vector<SpecProblem> problems = ValidateJobSpec(spec, FileChecks::kNo);

  EXPECT_TRUE(HasProblem(problems, "base_model", "required")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "output_dir", "required")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "method.type",
                         "must be one of lora, pissa, milora, corda_ipm, corda_kpm, kasa; got \"lroa\" (did you mean "
                         "lora?)"))
      << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "method.rank", "must be >= 1, got -1")) << Dump(problems);
  EXPECT_FALSE(HasProblem(problems, "method.alpha", "")) << Dump(problems);  // follows from the rank
  EXPECT_TRUE(HasProblem(problems, "method.dropout", "must be >= 0 and < 1, got 1")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "method.pissa_niter", "must be >= 0, got -2")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "method.target_modules_regex", "not both")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "method.target_modules_regex", "does not compile")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "method.target_modules[1]", "must not be empty")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "method.kasa_regularizer", "must be one of peft, reference; got \"torch\""))
      << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "datasets[0].path", "required")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "datasets[0].format", "got \"csv\"")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "eval_datasets[1].name",
                         "\"task\" is already the name of eval_datasets[0]; names must be unique"))
      << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "optimizer.type", "must be one of adamw")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "optimizer.learning_rate", "must be a finite number > 0, got inf"))
      << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "optimizer.beta2", "got 1")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "lr_scheduler.type", "constant, linear, cosine")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "lr_scheduler", "not both")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "micro_batch_size", "must be >= 1, got -4")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "num_epochs", "both are 0")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "save_steps", "must be >= 0, got -1")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "device", "must be one of auto, cpu, cuda; got \"tpu\"")) << Dump(problems);
  EXPECT_TRUE(HasProblem(problems, "num_threads", "must be >= 0, got -1")) << Dump(problems);
}

TEST(ValidateJobSpecTest, MethodSpecificRules) {
  v1::JobSpec spec = ValidSpec();
  spec.mutable_method()->set_pissa_niter(4);
  EXPECT_TRUE(HasProblem(ValidateJobSpec(spec, FileChecks::kNo), "method.pissa_niter",
                         "only used by method.type pissa, but method.type is lora"));
  spec.mutable_method()->set_type("pissa");
  EXPECT_TRUE(ValidateJobSpec(spec, FileChecks::kNo).empty()) << Dump(ValidateJobSpec(spec, FileChecks::kNo));

  spec.mutable_method()->set_type("corda_kpm");
  spec.mutable_method()->set_pissa_niter(0);
  EXPECT_TRUE(HasProblem(ValidateJobSpec(spec, FileChecks::kNo), "calibration.path", "required"));
  spec.mutable_calibration()->set_path("calib.jsonl");
  spec.mutable_calibration()->set_accumulation("f16");
  const std::vector<SpecProblem> problems = ValidateJobSpec(spec, FileChecks::kNo);
  ASSERT_EQ(problems.size(), 1u) << Dump(problems);
  EXPECT_EQ(problems[0].path, "calibration.accumulation");

  spec = ValidSpec();
  spec.mutable_method()->clear_target_modules();
  spec.mutable_method()->add_target_modules("all-linear");
  spec.mutable_method()->add_target_modules("q_proj");
  EXPECT_TRUE(HasProblem(ValidateJobSpec(spec, FileChecks::kNo), "method.target_modules[0]", "write it alone"));
}

TEST(ProblemsToStatusTest, Format) {
  EXPECT_TRUE(ProblemsToStatus("a.yaml", {}).ok());
  const absl::Status status =
      ProblemsToStatus("a.yaml", {{"method.rank", "must be >= 1, got 0"}, {"", "invalid YAML at line 2"}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "a.yaml: 2 problems in the job spec:\n  method.rank: must be >= 1, got 0\n  invalid YAML at line 2");
}

TEST(LoadJobSpecTest, ResolvesPathsAgainstTheSpecDirectory) {
  const absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(TestdataPath("full.yaml"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  const std::string dir = TestdataDir();
  EXPECT_EQ(spec->base_model(), dir + "/model");
  EXPECT_EQ(spec->calibration().path(), dir + "/data/calib.jsonl");
  EXPECT_EQ(spec->datasets(0).path(), dir + "/data/train.jsonl");
  EXPECT_EQ(spec->eval_datasets(0).path(), dir + "/data/task.jsonl");
  EXPECT_EQ(spec->output_dir(), dir + "/out/full");
  EXPECT_EQ(spec->cache_dir(), "none");
  EXPECT_EQ(spec->name(), "full-example");

  const absl::StatusOr<v1::JobSpec> json = LoadJobSpec(TestdataPath("full.json"));
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*spec, *json));

  const absl::StatusOr<v1::JobSpec> minimal = LoadJobSpec(TestdataPath("minimal.yaml"));
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  EXPECT_EQ(minimal->name(), "minimal");  // the file's stem
  EXPECT_EQ(minimal->cache_dir(), dir + "/out/.sigmatune-cache");
  EXPECT_EQ(minimal->eval_datasets(0).name(), "task");
  EXPECT_EQ(minimal->method().rank(), 8);
}

TEST(LoadJobSpecTest, ExpandsHomeAndKeepsAbsolutePaths) {
  const std::string home = TempDir("home");
  const std::string elsewhere = TempDir("elsewhere");
  WriteFile(home + "/models/m/config.json", "{}");
  WriteFile(elsewhere + "/train.jsonl", "{\"text\": \"x\"}\n");
  WriteFile(home + "/jobs/job.yml",
            absl::StrCat("base_model: ~/models/m/\nmethod: {type: lora}\ndatasets: [{path: ", elsewhere,
                         "/train.jsonl}]\nnum_epochs: 1\noutput_dir: ../runs/./a/\ncache_dir: cache\n"));
  const char* saved_home = std::getenv("HOME");
  const std::string saved = saved_home != nullptr ? saved_home : "";
  setenv("HOME", home.c_str(), 1);
  const absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(home + "/jobs/job.yml");
  setenv("HOME", saved.c_str(), 1);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->base_model(), home + "/models/m");
  EXPECT_EQ(spec->datasets(0).path(), elsewhere + "/train.jsonl");
  EXPECT_EQ(spec->output_dir(), home + "/runs/a");
  EXPECT_EQ(spec->cache_dir(), home + "/jobs/cache");
  EXPECT_EQ(spec->name(), "job");
}

TEST(LoadJobSpecTest, FileChecks) {
  const std::string dir = TempDir("file_checks");
  WriteFile(dir + "/model/config.json", "{}");
  WriteFile(dir + "/empty_model/weights.safetensors", "");
  WriteFile(dir + "/tiny.gguf", "GGUF");
  WriteFile(dir + "/train.jsonl", "{\"text\": \"x\"}\n");
  WriteFile(dir + "/out_file", "not a directory");
  const auto load = [&](const std::string& base_model, const std::string& extra) {
    WriteFile(dir + "/job.yaml", absl::StrCat("base_model: ", base_model,
                                              "\nmethod: {type: lora}\ndatasets: [{path: train.jsonl}]\n"
                                              "num_epochs: 1\n",
                                              extra.empty() ? "output_dir: out\n" : extra));
    return LoadJobSpec(dir + "/job.yaml");
  };
  EXPECT_TRUE(load("model", "").ok()) << load("model", "").status();
  EXPECT_TRUE(load("tiny.gguf", "").ok()) << load("tiny.gguf", "").status();

  absl::StatusOr<v1::JobSpec> spec = load("missing_model", "");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(),
                                absl::StrCat("base_model: no such directory: ", dir,
                                             "/missing_model (expected a Hugging Face model directory containing "
                                             "config.json, or a file ending in .gguf)")))
      << spec.status();

  spec = load("train.jsonl", "");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "train.jsonl is a file but its name does not end in .gguf"))
      << spec.status();

  spec = load("empty_model", "");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "empty_model has no config.json")) << spec.status();

  spec = load("missing.gguf", "");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "(expected a .gguf file)")) << spec.status();

  spec = load("model", "output_dir: out_file\neval_datasets: [{path: nothing.jsonl}, {path: model}]\n");
  ASSERT_FALSE(spec.ok());
  const std::string message(spec.status().message());
  EXPECT_TRUE(absl::StrContains(message, "3 problems")) << message;
  EXPECT_TRUE(absl::StrContains(message, "output_dir: " + dir + "/out_file exists and is not a directory")) << message;
  EXPECT_TRUE(absl::StrContains(message, "eval_datasets[0].path: no such file: " + dir + "/nothing.jsonl")) << message;
  EXPECT_TRUE(absl::StrContains(message, "eval_datasets[1].path: " + dir + "/model is a directory, not a file"))
      << message;
}

TEST(LoadJobSpecTest, ParseAndValidationProblemsComeTogether) {
  const std::string dir = TempDir("together");
  WriteFile(dir + "/job.yaml", "base_model: [m]\nmethod: {type: lora, rnak: 4}\nnum_epochs: 1\n");
  const absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(dir + "/job.yaml");
  ASSERT_FALSE(spec.ok());
  const std::vector<std::string> lines = ProblemLines(spec.status());
  ASSERT_EQ(lines.size(), 4u) << spec.status();
  EXPECT_TRUE(absl::StartsWith(lines[0], "  base_model: expected a string (a single value), got a list")) << lines[0];
  EXPECT_TRUE(absl::StartsWith(lines[1], "  method.rnak: unknown field")) << lines[1];
  EXPECT_TRUE(absl::StartsWith(lines[2], "  output_dir: required")) << lines[2];  // no "base_model: required"
  EXPECT_TRUE(absl::StartsWith(lines[3], "  datasets: required")) << lines[3];
}

TEST(LoadJobSpecTest, FileErrors) {
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(TestdataPath("spec.txt"));
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "spec.txt")) << spec.status();
  EXPECT_TRUE(absl::StrContains(spec.status().message(), ".yaml, *.yml (YAML) or *.json")) << spec.status();

  spec = LoadJobSpec("/nonexistent/dir/job.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "/nonexistent/dir/job.yaml")) << spec.status();

  spec = LoadJobSpec(TestdataPath("syntax_error.yaml"));
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "invalid YAML at line")) << spec.status();

  if (geteuid() != 0) {  // root reads anything
    const std::string dir = TempDir("unreadable");
    WriteFile(dir + "/job.yaml", "name: x\n");
    chmod((dir + "/job.yaml").c_str(), 0);
    spec = LoadJobSpec(dir + "/job.yaml");
    ASSERT_FALSE(spec.ok());
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kPermissionDenied) << spec.status();
    EXPECT_TRUE(absl::StrContains(spec.status().message(), dir + "/job.yaml")) << spec.status();
  }
}

TEST(ConversionTest, AdapterOptionsFromSpec) {
  v1::MethodSpec method;
  method.set_type("kasa");
  method.set_rank(4);
  method.set_use_rslora(true);
  method.set_kasa_regularizer("reference");
  method.set_kasa_beta(0.5);
  absl::StatusOr<peft::AdapterOptions> options = AdapterOptionsFromSpec(method);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->method, peft::Method::kKasa);
  EXPECT_EQ(options->rank, 4);
  EXPECT_DOUBLE_EQ(options->alpha, 8.0);  // default 2 * rank
  EXPECT_EQ(options->scaling, peft::Scaling::kRankStabilized);
  EXPECT_EQ(options->kasa_form, peft::KasaRegularizerForm::kReference);
  EXPECT_DOUBLE_EQ(options->kasa_beta, 0.5);
  EXPECT_DOUBLE_EQ(options->kasa_gamma, 1e-3);
  EXPECT_DOUBLE_EQ(peft::AdapterScale(*options), 4.0);  // 8 / sqrt(4)

  method.set_type("pissa");
  method.set_use_rslora(false);
  method.set_pissa_niter(3);
  method.set_alpha(16);
  method.set_kasa_regularizer("");
  options = AdapterOptionsFromSpec(method);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->method, peft::Method::kPissa);
  EXPECT_EQ(options->scaling, peft::Scaling::kStandard);
  EXPECT_EQ(options->pissa_niter, 3);
  EXPECT_EQ(options->kasa_form, peft::KasaRegularizerForm::kPeft);
  EXPECT_DOUBLE_EQ(peft::AdapterScale(*options), 4.0);  // 16 / 4

  method.set_type("dora");
  options = AdapterOptionsFromSpec(method);
  ASSERT_FALSE(options.ok());
  EXPECT_TRUE(absl::StrContains(options.status().message(), "method.type: unknown method \"dora\""))
      << options.status();
  method.set_type("lora");
  method.set_dropout(1.5);
  EXPECT_EQ(AdapterOptionsFromSpec(method).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConversionTest, TargetModulesFromSpec) {
  v1::MethodSpec method;
  EXPECT_EQ(TargetModulesFromSpec(method).DebugString(), "[\"q_proj\", \"v_proj\"]");
  method.add_target_modules("all-linear");
  peft::TargetModulesSpec targets = TargetModulesFromSpec(method);
  ASSERT_TRUE(targets.pattern.has_value());
  EXPECT_EQ(*targets.pattern, "all-linear");
  method.add_target_modules("q_proj");
  targets = TargetModulesFromSpec(method);
  EXPECT_FALSE(targets.pattern.has_value());
  EXPECT_EQ(targets.names, (std::vector<std::string>{"all-linear", "q_proj"}));
  method.clear_target_modules();
  method.add_target_modules("o_proj");
  targets = TargetModulesFromSpec(method);
  EXPECT_FALSE(targets.pattern.has_value());
  EXPECT_EQ(targets.names, std::vector<std::string>{"o_proj"});
  method.clear_target_modules();
  method.set_target_modules_regex(R"(model\.layers\.0\..*)");
  targets = TargetModulesFromSpec(method);
  ASSERT_TRUE(targets.pattern.has_value());
  EXPECT_EQ(*targets.pattern, R"(model\.layers\.0\..*)");
}

TEST(SpecToJsonTest, CanonicalAndRoundTrips) {
  const v1::JobSpec spec = ValidSpec();
  const std::string json = SpecToJson(spec);
  EXPECT_TRUE(absl::StartsWith(json,
                               "{\n  \"name\": \"valid\",\n  \"base_model\": \"m\",\n  \"method\": {\n    \"type\": "
                               "\"lora\",\n"))
      << json;
  EXPECT_TRUE(absl::StrContains(json, "\"sample_packing\": false")) << json;  // zero values are printed
  EXPECT_TRUE(absl::StrContains(json, "\"target_modules\": [\n      \"q_proj\",\n      \"v_proj\"\n    ]")) << json;
  EXPECT_TRUE(absl::EndsWith(json, "}\n")) << json;
  v1::JobSpec back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(spec, back));
  EXPECT_EQ(SpecToJson(back), json);
  // Our own reader takes it too.
  const absl::StatusOr<v1::JobSpec> parsed = ParseJobSpec(json, SpecSyntax::kJson, "job.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(MessageDifferencer::Equals(spec, *parsed));
}

}  // namespace
}  // namespace sigmatune::job
