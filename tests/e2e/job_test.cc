// A whole job on the tiny example model (examples/models/tiny-llama, made by
// //examples:make_tiny_model) and the example data, on the CPU: every method end to end, resume
// after a stop gives the same bits as an uninterrupted run, a corrupt checkpoint is skipped, and
// the bad inputs and faults of issue 5 each end in a clear error with nothing acknowledged lost.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "examples/tiny_job.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/status.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint/checkpoint.h"
#include "worker/job/run_job.h"
#include "worker/job/spec.h"

namespace sigmatune::job {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

class JobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(root_);
    fs::create_directories(root_);
  }

  // A small tiny-model job: 64 arithmetic samples, 6 steps of 2 micro-batches.
  v1::JobSpec Spec(const std::string& method, const std::string& out_name) {
    v1::JobSpec spec = examples::TinyJobSpec(out_name, method, {"q_proj", "v_proj", "o_proj", "down_proj"});
    spec.set_micro_batch_size(4);
    spec.set_gradient_accumulation_steps(2);
    spec.set_max_steps(6);
    spec.set_sequence_len(256);
    spec.set_save_steps(2);
    spec.set_seed(7);
    spec.set_output_dir((root_ / out_name).string());
    spec.set_cache_dir((root_ / "cache").string());
    ApplyDefaults(out_name, &spec);
    return spec;
  }

  absl::StatusOr<JobResult> Run(const v1::JobSpec& spec, int64_t stop_after = -1) {
    RunOptions options;
    options.terminal = TerminalOutput::kOff;
    options.stop_after_step = stop_after;
    return RunJob(spec, options);
  }

  fs::path root_;
};

TEST_F(JobTest, LoraJobRunsEndToEndAndWritesEverything) {
  const v1::JobSpec spec = Spec("lora", "lora");
  absl::StatusOr<JobResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->train.steps_done, 6);
  ASSERT_EQ(result->train.losses.size(), 6u);
  // The task loss goes down on the training data.
  EXPECT_LT(result->train.losses.back(), result->train.losses.front());
  ASSERT_EQ(result->before.size(), 2u);
  ASSERT_EQ(result->after.size(), 2u);
  EXPECT_EQ(result->after[0].metric, train::EvalMetric::kExactMatch);
  EXPECT_EQ(result->after[0].total, 3);
  EXPECT_GT(result->after[1].value, 1.0);  // a perplexity
  const fs::path out = spec.output_dir();
  for (const char* file : {"job.json", "metrics.jsonl", "report.json", "report.txt", "eval_before.json",
                           "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                           "adapter_lora/adapter_config.json", "merged/config.json", "merged/model.safetensors",
                           "checkpoints/latest"}) {
    EXPECT_TRUE(fs::exists(out / file)) << file;
  }
  EXPECT_FALSE(fs::exists(out / "residual_base"));  // LoRA keeps the base
  // metrics.jsonl: one parsable record per line, train steps 1..6 present.
  std::istringstream lines(ReadFile((out / "metrics.jsonl").string()));
  std::string line;
  int train_records = 0;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    if (j.value("phase", "") == "train" && j.contains("loss")) ++train_records;
  }
  EXPECT_EQ(train_records, 6);
  bool have_events = false;
  for (const auto& entry : fs::recursive_directory_iterator(out / "tensorboard")) {
    have_events |= absl::StrContains(entry.path().filename().string(), "tfevents");
  }
  EXPECT_TRUE(have_events);
  const nlohmann::json report = nlohmann::json::parse(ReadFile((out / "report.json").string()));
  EXPECT_EQ(report["eval"].size(), 2u);
  EXPECT_TRUE(report["eval"][0].contains("before"));
  EXPECT_TRUE(absl::StrContains(result->report_text, "knowledge"));
  // Checkpoints: save_steps 2 over 6 steps, save_total_limit 2 (default) kept.
  auto store_or = checkpoint::CheckpointStore::Open((out / "checkpoints").string(), {});
  ASSERT_TRUE(store_or.ok()) << store_or.status();
  checkpoint::CheckpointStore& store = *store_or;
  EXPECT_EQ(store.ListSteps(), (std::vector<int64_t>{4, 6}));
}

class MethodJobTest : public JobTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(MethodJobTest, RunsAndExportsTheResidualBase) {
  const v1::JobSpec spec = Spec(GetParam(), GetParam());
  absl::StatusOr<JobResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->train.steps_done, 6);
  for (double loss : result->train.losses) EXPECT_TRUE(std::isfinite(loss));
  EXPECT_TRUE(fs::exists(fs::path(spec.output_dir()) / "residual_base/model.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(spec.output_dir()) / "adapter_lora/adapter_model.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Methods, MethodJobTest,
                         ::testing::Values("pissa", "milora", "corda_ipm", "corda_kpm", "kasa"));

TEST_F(JobTest, SecondCordaJobReusesTheCovarianceCache) {
  v1::JobSpec ipm = Spec("corda_ipm", "ipm");
  ASSERT_TRUE(Run(ipm).ok());
  v1::JobSpec kpm = Spec("corda_kpm", "kpm");  // same model, data and layers: the cache applies
  kpm.mutable_method()->set_rank(2);
  absl::StatusOr<JobResult> result = Run(kpm);
  ASSERT_TRUE(result.ok()) << result.status();
  bool reused = false;
  for (const std::string& note : result->notes) reused |= absl::StrContains(note, "reused the covariance cache");
  EXPECT_TRUE(reused);
}

TEST_F(JobTest, ResumeAfterAStopIsBitIdentical) {
  v1::JobSpec straight = Spec("kasa", "straight");
  straight.mutable_method()->set_dropout(0.1);  // dropout masks must line up too
  ASSERT_TRUE(Run(straight).ok());

  v1::JobSpec interrupted = straight;
  interrupted.set_output_dir((root_ / "interrupted").string());
  absl::StatusOr<JobResult> first = Run(interrupted, /*stop_after=*/3);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->stopped_early);
  EXPECT_EQ(first->train.steps_done, 3);
  absl::StatusOr<JobResult> second = Run(interrupted);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->resumed);
  EXPECT_EQ(second->train.start_step, 3);
  EXPECT_EQ(second->train.steps_done, 6);
  for (const char* file : {"adapter/adapter_model.safetensors", "adapter_lora/adapter_model.safetensors",
                           "checkpoints/step-00000006/adapter.safetensors",
                           "checkpoints/step-00000006/optimizer-0-of-1.safetensors"}) {
    EXPECT_TRUE(fs::exists(fs::path(interrupted.output_dir()) / file)) << file;
    EXPECT_EQ(ReadFile((fs::path(straight.output_dir()) / file).string()),
              ReadFile((fs::path(interrupted.output_dir()) / file).string()))
        << file;
  }
}

// Raises a stop flag at the first event of one phase, as a cancel arriving during that phase would.
class StopInPhase final : public train::ProgressSink {
 public:
  StopInPhase(train::Phase phase, std::atomic<bool>* stop) : phase_(phase), stop_(stop) {}
  absl::Status OnEvent(const train::ProgressEvent& event) override {
    if (event.phase == phase_) stop_->store(true);
    return absl::OkStatus();
  }

 private:
  train::Phase phase_;
  std::atomic<bool>* stop_;
};

TEST_F(JobTest, StopDuringCalibrationStopsAtThePhaseBoundary) {
  const v1::JobSpec spec = Spec("corda_kpm", "stop_calibrate");
  std::atomic<bool> stop{false};
  StopInPhase stopper(train::Phase::kCalibrate, &stop);
  RunOptions options;
  options.terminal = TerminalOutput::kOff;
  options.stop = &stop;
  options.extra_sink = &stopper;
  absl::StatusOr<JobResult> first = RunJob(spec, options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->stopped_early);
  EXPECT_EQ(first->train.steps_done, 0);
  const fs::path out = spec.output_dir();
  EXPECT_TRUE(fs::exists(out / "eval_before.json"));
  EXPECT_FALSE(fs::exists(out / "decomposition.safetensors"));  // decompose never started
  EXPECT_FALSE(fs::exists(out / "checkpoints/latest"));
  // Run again: the covariances come from the cache the stopped run wrote.
  absl::StatusOr<JobResult> second = Run(spec);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->stopped_early);
  EXPECT_EQ(second->train.steps_done, 6);
  bool reused = false;
  for (const std::string& note : second->notes) reused |= absl::StrContains(note, "reused the covariance cache");
  EXPECT_TRUE(reused);
}

TEST_F(JobTest, CorruptNewestCheckpointFallsBackWithAWarning) {
  v1::JobSpec spec = Spec("lora", "corrupt");
  ASSERT_TRUE(Run(spec, /*stop_after=*/4).ok());
  // Damage step 4's adapter; step 2 must be used.
  const fs::path adapter = fs::path(spec.output_dir()) / "checkpoints/step-00000004/adapter.safetensors";
  std::string bytes = ReadFile(adapter.string());
  ASSERT_FALSE(bytes.empty());
  bytes[bytes.size() / 2] ^= 0x55;
  std::ofstream(adapter, std::ios::binary | std::ios::trunc) << bytes;
  absl::StatusOr<JobResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->train.start_step, 2);
  bool warned = false;
  for (const std::string& note : result->notes) warned |= absl::StrContains(note, "step-00000004");
  EXPECT_TRUE(warned);
}

TEST_F(JobTest, CheckpointsOfAnotherJobAreRefused) {
  v1::JobSpec spec = Spec("lora", "other");
  ASSERT_TRUE(Run(spec, /*stop_after=*/2).ok());
  spec.mutable_optimizer()->set_learning_rate(1e-3);  // another job, same output_dir
  EXPECT_ERROR_MENTIONS(Run(spec).status(), "another job", "output_dir");
}

TEST_F(JobTest, DivergedLossStopsWithTheLastGoodCheckpointIntact) {
  v1::JobSpec spec = Spec("lora", "nan");
  spec.mutable_optimizer()->set_learning_rate(1e30);
  spec.mutable_optimizer()->set_max_grad_norm(-1);
  spec.set_save_steps(1);
  const absl::Status status = Run(spec).status();
  EXPECT_ERROR_MENTIONS(status, "train", "step");
  EXPECT_TRUE(absl::StrContains(status.message(), "nan") || absl::StrContains(status.message(), "inf") ||
              absl::StrContains(status.message(), "NaN"))
      << status;
  auto store_or = checkpoint::CheckpointStore::Open(spec.output_dir() + "/checkpoints", {});
  ASSERT_TRUE(store_or.ok()) << store_or.status();
  checkpoint::CheckpointStore& store = *store_or;
  auto latest = store.LoadLatest();
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());  // step 1 was good and verifies
  EXPECT_GE((*latest)->step, 1);
}

TEST_F(JobTest, DiskFullWhileCheckpointingKeepsThePreviousCheckpoint) {
  v1::JobSpec spec = Spec("lora", "diskfull");
  ASSERT_TRUE(Run(spec, /*stop_after=*/2).ok());
  // In a child: files may grow to 4 KiB only, so the next checkpoint cannot be written.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    rlimit limit{4096, 4096};
    setrlimit(RLIMIT_FSIZE, &limit);
    const absl::Status status = Run(spec).status();
    _exit(status.ok() ? 10 : (absl::StrContains(status.message(), "checkpoint") ? 0 : 11));
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0) << "10: the job succeeded despite the limit; 11: the error names no checkpoint";
  auto store_or = checkpoint::CheckpointStore::Open(spec.output_dir() + "/checkpoints", {});
  ASSERT_TRUE(store_or.ok()) << store_or.status();
  checkpoint::CheckpointStore& store = *store_or;
  auto latest = store.LoadLatest();
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->step, 2);
  // With space again, the job resumes from it and finishes.
  absl::StatusOr<JobResult> result = Run(spec);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->train.start_step, 2);
}

TEST_F(JobTest, BadInputsGiveClearErrors) {
  {  // targets the model does not have
    v1::JobSpec spec = Spec("lora", "targets");
    spec.mutable_method()->clear_target_modules();
    spec.mutable_method()->add_target_modules("c_attn");
    EXPECT_ERROR_MENTIONS(Run(spec).status(), "target_modules", "c_attn");
  }
  {  // a rank larger than the layer
    v1::JobSpec spec = Spec("pissa", "rank");
    spec.mutable_method()->set_rank(100);
    EXPECT_ERROR_MENTIONS(Run(spec).status(), "method.rank", "100", "min(out, in)");
  }
  {  // an empty dataset
    const std::string empty = (root_ / "empty.jsonl").string();
    std::ofstream(empty) << "\n";
    v1::JobSpec spec = Spec("lora", "empty");
    spec.mutable_datasets(0)->set_path(empty);
    EXPECT_ERROR_MENTIONS(Run(spec).status(), "empty.jsonl", "no records");
  }
  {  // a bad record, with its line
    const std::string bad = (root_ / "bad.jsonl").string();
    std::ofstream(bad) << "{\"text\": \"fine\"}\n{\"text\": 5}\n";
    v1::JobSpec spec = Spec("lora", "badrecord");
    spec.mutable_datasets(0)->set_path(bad);
    spec.mutable_datasets(0)->set_format("text");
    EXPECT_ERROR_MENTIONS(Run(spec).status(), "bad.jsonl:2", "text");
  }
  {  // a missing data file
    v1::JobSpec spec = Spec("lora", "nodata");
    spec.mutable_datasets(0)->set_path((root_ / "missing.jsonl").string());
    EXPECT_ERROR_MENTIONS(Run(spec).status(), "missing.jsonl");
  }
  {  // a data file that is not JSONL
    const std::string csv = (root_ / "data.csv").string();
    std::ofstream(csv) << "question,answer\n1+1,2\n";
    v1::JobSpec spec = Spec("lora", "csv");
    spec.mutable_datasets(0)->set_path(csv);
    EXPECT_ERROR_MENTIONS(Run(spec).status(), "data.csv:1");
  }
  {  // not a model
    v1::JobSpec spec = Spec("lora", "nomodel");
    spec.set_base_model((root_ / "missing-model").string());
    EXPECT_FALSE(Run(spec).ok());
  }
  {  // a model file in the wrong format
    const std::string fake = (root_ / "fake.gguf").string();
    std::ofstream(fake) << "this is not a gguf file";
    v1::JobSpec spec = Spec("lora", "fakegguf");
    spec.set_base_model(fake);
    EXPECT_ERROR_MENTIONS(Run(spec).status(), "fake.gguf");
  }
}

}  // namespace
}  // namespace sigmatune::job
