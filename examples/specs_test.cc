// The example job specs (examples/*.yaml) parse and validate with the worker's own reader
// (worker/job/spec.h), ask for what examples/README.md says they do, and name files that exist.
// The SmolLM2 model itself lives outside the repository (tools/get_smollm2.sh), so file checks are
// done here for the repository's files only.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "sigmatune/v1/job.pb.h"
#include "worker/job/spec.h"

namespace sigmatune {
namespace {

struct Example {
  const char* file;
  const char* method;
  const char* calibration;  // "" when the method has none
};

constexpr Example kExamples[] = {
    {"tiny-lora", "lora", ""},
    {"tiny-pissa", "pissa", ""},
    {"tiny-corda-ipm", "corda_ipm", "data/calibration.jsonl"},
    {"tiny-corda-kpm", "corda_kpm", "data/knowledge-calibration.jsonl"},
    {"tiny-kasa", "kasa", ""},
    {"smollm2-lora", "lora", ""},
    {"smollm2-pissa", "pissa", ""},
    {"smollm2-corda-ipm", "corda_ipm", "data/calibration.jsonl"},
    {"smollm2-corda-kpm", "corda_kpm", "data/knowledge-calibration.jsonl"},
    {"smollm2-kasa", "kasa", ""},
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

class SpecsTest : public ::testing::TestWithParam<Example> {};

TEST_P(SpecsTest, ParsesValidatesAndNamesExistingFiles) {
  const Example& ex = GetParam();
  const std::string dir = testing::RunfilePath("examples");
  const std::string text = ReadFile(absl::StrCat(dir, "/", ex.file, ".yaml"));
  // The header says how to run it.
  EXPECT_TRUE(absl::StrContains(
      text, absl::StrCat("bazel run //worker:sigmatune-worker -- --job $PWD/examples/", ex.file,
                         ".yaml")));
  auto parsed = job::ParseJobSpec(text, job::SpecSyntax::kYaml, ex.file);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  v1::JobSpec spec = *parsed;
  job::ApplyDefaults(ex.file, &spec);
  const auto problems = job::ValidateJobSpec(spec, job::FileChecks::kNo);
  EXPECT_TRUE(problems.empty()) << job::ProblemsToStatus(ex.file, problems);

  const bool tiny = absl::StartsWith(ex.file, "tiny-");
  EXPECT_EQ(spec.name(), ex.file);
  EXPECT_EQ(spec.method().type(), ex.method);
  EXPECT_EQ(spec.method().rank(), tiny ? 8 : 16);
  EXPECT_EQ(spec.method().alpha(), tiny ? 16 : 32);
  EXPECT_EQ(spec.method().target_modules_size(), 7);
  EXPECT_EQ(spec.max_steps(), 30);
  EXPECT_EQ(spec.sequence_len(), 256);
  EXPECT_EQ(spec.micro_batch_size(), tiny ? 8 : 4);
  EXPECT_TRUE(spec.sample_packing());
  EXPECT_EQ(spec.output_dir(), absl::StrCat("../runs/", ex.file));
  EXPECT_EQ(spec.calibration().path(), ex.calibration);
  ASSERT_EQ(spec.eval_datasets_size(), 2);
  EXPECT_EQ(spec.eval_datasets(0).metric(), "exact_match");
  EXPECT_EQ(spec.eval_datasets(0).role(), "task");
  EXPECT_EQ(spec.eval_datasets(1).metric(), "perplexity");
  EXPECT_EQ(spec.eval_datasets(1).role(), "knowledge");

  // Relative paths are relative to the spec's directory.
  std::vector<std::string> paths = {spec.datasets(0).path(), spec.eval_datasets(0).path(),
                                    spec.eval_datasets(1).path()};
  if (!spec.calibration().path().empty()) paths.push_back(spec.calibration().path());
  if (tiny) {
    paths.push_back(spec.base_model() + "/config.json");
  } else {
    EXPECT_EQ(spec.base_model(), "~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  }
  for (const std::string& p : paths) {
    EXPECT_TRUE(std::filesystem::exists(absl::StrCat(dir, "/", p))) << ex.file << ": " << p;
  }
}

INSTANTIATE_TEST_SUITE_P(Examples, SpecsTest, ::testing::ValuesIn(kExamples),
                         [](const ::testing::TestParamInfo<Example>& info) {
                           std::string name = info.param.file;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace sigmatune
