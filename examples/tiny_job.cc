#include "examples/tiny_job.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "kernels/testing/golden.h"

namespace sigmatune::examples {

v1::JobSpec TinyJobSpec(const std::string& name, const std::string& method, const std::vector<std::string>& targets) {
  v1::JobSpec spec;
  spec.set_name(name);
  spec.set_base_model(testing::RunfilePath("examples/models/tiny-llama"));
  spec.mutable_method()->set_type(method);
  spec.mutable_method()->set_rank(4);
  spec.mutable_method()->set_alpha(8);
  for (const std::string& target : targets) spec.mutable_method()->add_target_modules(target);
  if (absl::StartsWith(method, "corda")) {
    spec.mutable_calibration()->set_path(testing::RunfilePath("examples/data/calibration.jsonl"));
    spec.mutable_calibration()->set_num_samples(16);
    spec.mutable_calibration()->set_max_seq_len(128);
  }
  v1::DatasetSpec* dataset = spec.add_datasets();
  dataset->set_path(testing::RunfilePath("examples/data/arith-train.jsonl"));
  dataset->set_format("chat");
  dataset->set_max_samples(64);
  v1::EvalSetSpec* task = spec.add_eval_datasets();
  task->set_name("arith");
  task->set_path(testing::RunfilePath("examples/data/arith-test.jsonl"));
  task->set_metric("exact_match");
  task->set_max_samples(3);
  task->set_max_new_tokens(8);
  v1::EvalSetSpec* knowledge = spec.add_eval_datasets();
  knowledge->set_name("knowledge");
  knowledge->set_path(testing::RunfilePath("examples/data/knowledge.jsonl"));
  knowledge->set_role("knowledge");
  knowledge->set_max_samples(4);
  spec.mutable_optimizer()->set_learning_rate(5e-3);
  spec.mutable_lr_scheduler()->set_type("cosine");
  spec.mutable_lr_scheduler()->set_warmup_steps(1);
  spec.set_sample_packing(true);
  spec.set_num_threads(1);
  return spec;
}

void CopyTinyExampleTo(const std::string& root) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::create_directories(fs::path(root) / "models", error);
  ST_CHECK(!error) << root << ": " << error.message();
  fs::create_directories(fs::path(root) / "data", error);
  ST_CHECK(!error) << root << ": " << error.message();
  fs::copy(testing::RunfilePath("examples/models/tiny-llama"), fs::path(root) / "models" / "tiny-llama",
           fs::copy_options::recursive, error);
  ST_CHECK(!error) << "copying the tiny model to " << root << ": " << error.message();
  for (const char* file : {"arith-train.jsonl", "arith-test.jsonl", "knowledge.jsonl"}) {
    fs::copy_file(testing::RunfilePath(absl::StrCat("examples/data/", file)), fs::path(root) / "data" / file, error);
    ST_CHECK(!error) << "copying " << file << " to " << root << ": " << error.message();
  }
}

}  // namespace sigmatune::examples
