// A whole job on a worker group of 1, 2 and 3 ranks (threads over comm::LocalGroup, each rank with
// its own CPU backend, as mpirun's processes would have): the calibration covariances reduced to
// their owners equal the single-rank ones, and the decomposition, the losses and the trained
// adapters agree across world sizes within floating-point reduction order. A job stopped on 3 ranks
// resumes on 2 and ends where the 1-rank job ends.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formats/safetensors.h"
#include "examples/tiny_job.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "worker/comm/local_communicator.h"
#include "worker/job/run_job.h"
#include "worker/job/spec.h"

namespace sigmatune::job {
namespace {

namespace fs = std::filesystem;

class GroupJobTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name) c = c == '/' ? '_' : c;
    root_ = fs::path(::testing::TempDir()) / name;
    fs::remove_all(root_);
    fs::create_directories(root_);
  }

  // 8 steps of 4 micro-batches of 2 sequences: on 3 ranks every rank has work in every step.
  v1::JobSpec Spec(const std::string& method, const std::string& out_name) {
    v1::JobSpec spec = examples::TinyJobSpec(out_name, method,
                                             {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"});
    spec.mutable_calibration()->set_accumulation("f64");
    spec.clear_eval_datasets();
    spec.set_micro_batch_size(2);
    spec.set_gradient_accumulation_steps(4);
    spec.set_max_steps(8);
    spec.set_sequence_len(256);
    spec.set_save_steps(2);
    spec.set_seed(11);
    spec.set_export_merged(false);
    spec.set_output_dir((root_ / out_name).string());
    spec.set_cache_dir((root_ / (out_name + "-cache")).string());
    ApplyDefaults(out_name, &spec);
    return spec;
  }

  // Runs the job on `ranks` thread ranks; returns the leader's result.
  JobResult RunOn(int ranks, const v1::JobSpec& spec, int64_t stop_after = -1) {
    std::vector<absl::StatusOr<JobResult>> results(ranks, absl::UnknownError("not run"));
    const std::vector<absl::Status> statuses = comm::LocalGroup::Run(ranks, [&](comm::Communicator& c) {
      RunOptions options;
      options.comm = &c;
      options.terminal = TerminalOutput::kOff;
      options.stop_after_step = stop_after;
      results[c.rank()] = RunJob(spec, options);
      return results[c.rank()].status();
    });
    for (int r = 0; r < ranks; ++r) EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
    if (!results[0].ok()) return JobResult();
    EXPECT_EQ(results[0]->world_size, ranks);
    return *results[0];
  }

  static std::map<std::string, std::vector<double>> Tensors(const fs::path& file) {
    std::map<std::string, std::vector<double>> out;
    absl::StatusOr<formats::SafetensorsReader> reader = formats::SafetensorsReader::Open(file.string());
    EXPECT_TRUE(reader.ok()) << file << ": " << reader.status();
    if (!reader.ok()) return out;
    for (const std::string& name : reader->names()) {
      absl::StatusOr<Tensor> t = reader->GetTensor(name);
      EXPECT_TRUE(t.ok()) << name;
      const Tensor f = t->To(DType::kF64).Contiguous();
      out[name].assign(f.data<double>(), f.data<double>() + f.numel());
    }
    return out;
  }

  // max |a - b| / max(max |a|, 1e-3) per tensor, the worst over the file.
  static double WorstRelative(const fs::path& a, const fs::path& b) {
    const auto ta = Tensors(a), tb = Tensors(b);
    EXPECT_EQ(ta.size(), tb.size()) << a << " vs " << b;
    double worst = 0;
    for (const auto& [name, va] : ta) {
      auto it = tb.find(name);
      if (it == tb.end()) {
        ADD_FAILURE() << name << " missing in " << b;
        continue;
      }
      EXPECT_EQ(va.size(), it->second.size()) << name;
      double diff = 0, scale = 1e-3;
      for (size_t i = 0; i < va.size() && i < it->second.size(); ++i) {
        diff = std::max(diff, std::abs(va[i] - it->second[i]));
        scale = std::max(scale, std::abs(va[i]));
      }
      worst = std::max(worst, diff / scale);
    }
    return worst;
  }

  fs::path root_;
};

TEST_P(GroupJobTest, SameResultOnOneTwoAndThreeRanks) {
  const std::string method = GetParam();
  std::vector<JobResult> results;
  for (int ranks : {1, 2, 3}) {
    results.push_back(RunOn(ranks, Spec(method, absl::StrCat("ranks", ranks))));
    ASSERT_EQ(results.back().train.losses.size(), 8u) << ranks << " ranks";
  }
  for (int i : {1, 2}) {
    const std::string other = absl::StrCat("ranks", i + 1);
    for (size_t s = 0; s < 8; ++s) {
      EXPECT_NEAR(results[i].train.losses[s], results[0].train.losses[s], 1e-4 * results[0].train.losses[s])
          << other << " step " << s + 1;
    }
    // The covariances each owner reduced (its cache files) equal the single-rank ones.
    if (absl::StartsWith(method, "corda")) {
      int compared = 0;
      for (const fs::directory_entry& e : fs::directory_iterator(root_ / "ranks1-cache")) {
        const fs::path twin = root_ / (other + "-cache") / e.path().filename();
        ASSERT_TRUE(fs::exists(twin)) << twin;
        // Not bit-equal: each rank packs other samples into its batches, and the f32 forward's
        // BLAS sums depend on the batch shape (about 1e-8 relative after the f64 accumulation).
        EXPECT_LT(WorstRelative(e.path(), twin), 1e-6) << e.path().filename();
        ++compared;
      }
      EXPECT_EQ(compared, 2 * 4) << "attn_in, attn_out, mlp_in, mlp_act of 2 layers";
    }
    EXPECT_LT(WorstRelative(root_ / "ranks1" / "decomposition.safetensors",
                            root_ / other / "decomposition.safetensors"),
              1e-5)
        << other;
    EXPECT_LT(WorstRelative(root_ / "ranks1" / "adapter" / "adapter_model.safetensors",
                            root_ / other / "adapter" / "adapter_model.safetensors"),
              1e-4)
        << other;
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, GroupJobTest, ::testing::Values("lora", "corda_kpm", "kasa"));

TEST_F(GroupJobTest, StoppedOnThreeRanksResumesOnTwo) {
  const JobResult straight = RunOn(1, Spec("pissa", "straight"));
  ASSERT_EQ(straight.train.steps_done, 8);
  const v1::JobSpec spec = Spec("pissa", "moved");
  const JobResult first = RunOn(3, spec, /*stop_after=*/3);
  EXPECT_TRUE(first.stopped_early);
  EXPECT_EQ(first.train.steps_done, 3);
  const JobResult second = RunOn(2, spec);
  EXPECT_TRUE(second.resumed);
  EXPECT_EQ(second.train.steps_done, 8);
  EXPECT_LT(WorstRelative(root_ / "straight" / "adapter" / "adapter_model.safetensors",
                          root_ / "moved" / "adapter" / "adapter_model.safetensors"),
            1e-4);
  for (size_t s = 0; s < second.train.losses.size(); ++s) {
    const size_t step = second.train.start_step + s;
    EXPECT_NEAR(second.train.losses[s], straight.train.losses[step], 1e-4 * straight.train.losses[step]) << step;
  }
}

}  // namespace
}  // namespace sigmatune::job
