// The worker binary (//worker:sigmatune-worker) as a real worker group under mpirun, on the tiny
// example model: the same job on 1, 2 and 3 processes gives the same losses and adapter; a rank
// killed with SIGKILL ends the whole group at once, leaves only verified checkpoints, and the job
// resumes on another world size; a rank whose checkpoint shard cannot be written (file size limit)
// aborts the group without committing that checkpoint, and a rerun finishes.
//
// mpirun is started with fork/exec in its own session (setsid, and PR_SET_PDEATHSIG so it dies
// with this test), its output going to a log file; every run has a deadline after which every
// process of the session (mpirun and the ranks, which mpirun puts in process groups of their own)
// is SIGKILLed, so nothing hangs. As in worker/comm/mpi_communicator_test.sh: a short TMPDIR under
// /tmp (mpirun's session directory holds Unix sockets), Bazel's test protocol variables unset for
// the children, shared-memory transport only.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formats/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/subprocess.h"
#include "worker/checkpoint/checkpoint.h"

namespace sigmatune {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using e2e::Alive;
using e2e::FindOnPath;
using e2e::KillSession;
using e2e::Launched;
using e2e::ProcStat;
using e2e::ReadFile;
using e2e::SecondsSince;
using e2e::WriteFile;

int CountMatches(const std::string& text, const std::string& pattern) {
  const std::regex re(pattern);
  return static_cast<int>(std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
}

// Train records (phase "train" with a loss) of a metrics.jsonl: step -> losses in file order.
// Lines that do not parse are counted in *bad (a run killed mid-write may leave a partial line).
std::map<int64_t, std::vector<double>> TrainLosses(const fs::path& metrics, int* bad = nullptr) {
  std::map<int64_t, std::vector<double>> out;
  std::istringstream lines(ReadFile(metrics));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      if (bad != nullptr) ++*bad;
      continue;
    }
    if (j.value("phase", "") == "train" && j.contains("loss") && j.contains("step")) {
      out[j["step"].get<int64_t>()].push_back(j["loss"].get<double>());
    }
  }
  return out;
}

std::map<std::string, std::vector<double>> Tensors(const fs::path& file) {
  std::map<std::string, std::vector<double>> out;
  absl::StatusOr<formats::SafetensorsReader> reader = formats::SafetensorsReader::Open(file.string());
  EXPECT_TRUE(reader.ok()) << file << ": " << reader.status();
  if (!reader.ok()) return out;
  for (const std::string& name : reader->names()) {
    absl::StatusOr<Tensor> t = reader->GetTensor(name);
    EXPECT_TRUE(t.ok()) << file << " " << name << ": " << t.status();
    if (!t.ok()) continue;
    const Tensor f = t->To(DType::kF64).Contiguous();
    out[name].assign(f.data<double>(), f.data<double>() + f.numel());
  }
  return out;
}

// max |a - b| / max(max |a|, 1e-3) per tensor, the worst over the file (same tensor names).
double WorstRelative(const fs::path& a, const fs::path& b) {
  const auto ta = Tensors(a), tb = Tensors(b);
  EXPECT_FALSE(ta.empty()) << a;
  EXPECT_EQ(ta.size(), tb.size()) << a << " vs " << b;
  double worst = 0;
  for (const auto& [name, va] : ta) {
    auto it = tb.find(name);
    if (it == tb.end()) {
      ADD_FAILURE() << name << " missing in " << b;
      worst = INFINITY;
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

// Every file under `dir` whose name matches `pred`.
template <typename Pred>
std::vector<std::string> FilesUnder(const fs::path& dir, Pred pred) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (pred(e.path().filename().string())) out.push_back(fs::relative(e.path(), dir).string());
  }
  return out;
}

// Checks every committed checkpoint directory under `root` on its own: copied into a fresh store,
// LoadLatest must return exactly it, verified, without warnings. Returns the steps checked.
std::vector<int64_t> ExpectEveryCommittedCheckpointVerifies(const fs::path& root, const fs::path& scratch,
                                                            int expected_shards) {
  auto store = checkpoint::CheckpointStore::Open(root.string(), {});
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return {};
  const std::vector<int64_t> steps = store->ListSteps();
  for (int64_t step : steps) {
    const fs::path alone = scratch / absl::StrCat("verify-", step);
    fs::remove_all(alone);
    fs::create_directories(alone);
    fs::copy(root / checkpoint::StepDirName(step), alone / checkpoint::StepDirName(step),
             fs::copy_options::recursive);
    WriteFile(alone / "latest", checkpoint::StepDirName(step) + "\n");
    auto single = checkpoint::CheckpointStore::Open(alone.string(), {});
    EXPECT_TRUE(single.ok()) << single.status();
    if (!single.ok()) continue;
    auto loaded = single->LoadLatest();
    EXPECT_TRUE(loaded.ok()) << "committed checkpoint step " << step << " is partial or corrupt: " << loaded.status();
    if (!loaded.ok()) continue;
    EXPECT_TRUE(loaded->has_value()) << "step " << step;
    if (!loaded->has_value()) continue;
    EXPECT_EQ((*loaded)->step, step);
    EXPECT_TRUE((*loaded)->warnings.empty()) << "step " << step << ": " << absl::StrJoin((*loaded)->warnings, "; ");
    int shards = 0;
    for (const auto& [name, bytes] : (*loaded)->files) {
      if (absl::StartsWith(name, "optimizer-")) {
        ++shards;
        EXPECT_TRUE(absl::EndsWith(name, absl::StrCat("-of-", expected_shards, ".safetensors")))
            << "step " << step << ": " << name;
      }
    }
    EXPECT_EQ(shards, expected_shards) << "step " << step;
    EXPECT_EQ((*loaded)->files.count("adapter.safetensors"), 1u) << "step " << step;
    EXPECT_EQ((*loaded)->files.count("trainer_state.json"), 1u) << "step " << step;
  }
  return steps;
}

class MpiJobTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    mpirun_ = new std::string(FindOnPath("mpirun"));
    if (mpirun_->empty()) return;
    // mpirun's session directory holds Unix sockets whose paths must stay short.
    char tmpl[] = "/tmp/sigmatune-mpi-e2e.XXXXXX";
    if (mkdtemp(tmpl) != nullptr) tmpdir_ = new std::string(tmpl);
  }
  static void TearDownTestSuite() {
    if (tmpdir_ != nullptr) {
      std::error_code ec;
      fs::remove_all(*tmpdir_, ec);
    }
    delete tmpdir_;
    tmpdir_ = nullptr;
    delete mpirun_;
    mpirun_ = nullptr;
  }

  void SetUp() override {
    if (mpirun_->empty()) GTEST_SKIP() << "mpirun is not on PATH (bash tools/setup.sh installs Open MPI)";
    ASSERT_NE(tmpdir_, nullptr) << "mkdtemp /tmp/sigmatune-mpi-e2e.XXXXXX failed";
    root_ = fs::absolute(fs::path(::testing::TempDir()) /
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    worker_ = fs::absolute(testing::RunfilePath("worker/sigmatune-worker")).string();
    ASSERT_EQ(access(worker_.c_str(), X_OK), 0) << worker_;
  }

  static std::string Runfile(const std::string& path) {
    const fs::path p = fs::absolute(testing::RunfilePath(path));
    EXPECT_TRUE(fs::exists(p)) << p;
    return p.string();
  }

  // Writes a job spec (YAML, absolute paths) into the test's directory and returns its path:
  // corda_kpm on the tiny model, 64 arithmetic chats, micro-batches of 2 x 4 per step.
  fs::path WriteSpec(const std::string& spec_name, const fs::path& output_dir, int max_steps, int save_steps) {
    const std::string yaml = absl::StrCat(
        "name: mpi-e2e\n",
        "base_model: \"", Runfile("examples/models/tiny-llama"), "\"\n",
        "method:\n",
        "  type: corda_kpm\n",
        "  rank: 4\n",
        "  alpha: 8\n",
        "  target_modules: [q_proj, k_proj, v_proj, o_proj, up_proj, down_proj]\n",
        "calibration:\n",
        "  path: \"", Runfile("examples/data/calibration.jsonl"), "\"\n",
        "  num_samples: 16\n",
        "  max_seq_len: 128\n",
        "  accumulation: f64\n",
        "datasets:\n",
        "  - path: \"", Runfile("examples/data/arith-train.jsonl"), "\"\n",
        "    format: chat\n",
        "    max_samples: 64\n",
        "optimizer:\n",
        "  learning_rate: 5.0e-3\n",
        "lr_scheduler:\n",
        "  type: cosine\n",
        "  warmup_steps: 1\n",
        "micro_batch_size: 2\n",
        "gradient_accumulation_steps: 4\n",
        "max_steps: ", max_steps, "\n",
        "sequence_len: 256\n",
        "sample_packing: true\n",
        "save_steps: ", save_steps, "\n",
        "seed: 11\n",
        "num_threads: 1\n",
        "export_merged: false\n",
        "cache_dir: none\n",
        "output_dir: \"", output_dir.string(), "\"\n");
    const fs::path path = root_ / (spec_name + ".yaml");
    WriteFile(path, yaml);
    return path;
  }

  // mpirun -np `np` [extra mpirun flags] `program` --job spec [worker flags]
  std::vector<std::string> MpirunArgv(int np, const std::string& program, const fs::path& spec,
                                      const std::vector<std::string>& worker_flags,
                                      const std::vector<std::string>& extra_mpirun_flags = {}) {
    std::vector<std::string> argv = {*mpirun_,         "--oversubscribe", "--allow-run-as-root",
                                     "--bind-to",      "none",            "--mca",
                                     "btl",            "self,vader",      "--mca",
                                     "btl_vader_single_copy_mechanism", "none"};
    argv.insert(argv.end(), extra_mpirun_flags.begin(), extra_mpirun_flags.end());
    for (const std::string& a : {std::string("-np"), std::to_string(np), program, std::string("--job"), spec.string()}) {
      argv.push_back(a);
    }
    argv.insert(argv.end(), worker_flags.begin(), worker_flags.end());
    return argv;
  }

  // Runs to completion (deadline `seconds`); returns the exit code (-1 after the deadline).
  int RunToEnd(const std::vector<std::string>& argv, const fs::path& log, double seconds, double* elapsed = nullptr) {
    Launched run;
    run.Start(argv, log, *tmpdir_);
    if (!run.Finish(seconds)) return -1;
    if (elapsed != nullptr) *elapsed = run.elapsed_s();
    return run.exit_code();
  }

  static std::string* mpirun_;
  static std::string* tmpdir_;
  fs::path root_;
  std::string worker_;
};

std::string* MpiJobTest::mpirun_ = nullptr;
std::string* MpiJobTest::tmpdir_ = nullptr;

TEST_F(MpiJobTest, SameResultOnOneTwoAndThreeRanks) {
  constexpr int kSteps = 8;
  std::map<int, std::map<int64_t, std::vector<double>>> losses;
  for (int np : {1, 2, 3}) {
    SCOPED_TRACE(absl::StrCat(np, " ranks"));
    const fs::path out = root_ / absl::StrCat("ranks", np);
    const fs::path spec = WriteSpec(absl::StrCat("ranks", np), out, kSteps, 2);
    const fs::path log = root_ / absl::StrCat("ranks", np, ".log");
    double elapsed = 0;
    const int code = RunToEnd(MpirunArgv(np, worker_, spec, {"--quiet"}), log, 120, &elapsed);
    const std::string text = ReadFile(log);
    ASSERT_EQ(code, 0) << "mpirun -np " << np << " exited " << code << ":\n" << text;
    std::cout << "[ timing   ] mpirun -np " << np << ": " << elapsed << " s\n";
    // Each rank announced itself once.
    for (int r = 0; r < np; ++r) {
      EXPECT_EQ(CountMatches(text, absl::StrCat("sigmatune-worker: rank ", r, " of ", np,
                                                " \\(local [0-9]+ of [0-9]+\\) on \\S+, pid [0-9]+")),
                1)
          << "rank " << r << "'s line in:\n" << text;
    }
    // The report table goes to stdout from the leader only.
    EXPECT_EQ(CountMatches(text, "train: 8 steps, final loss"), 1) << text;
    // One report.json, the leader's, saying the job finished on np ranks; no leftover temporary files.
    EXPECT_EQ(FilesUnder(out, [](const std::string& n) { return absl::StartsWith(n, "report") &&
                                                                 absl::EndsWith(n, ".json"); }),
              std::vector<std::string>{"report.json"});
    EXPECT_EQ(FilesUnder(out, [](const std::string& n) { return absl::StartsWith(n, "."); }),
              std::vector<std::string>{});
    const nlohmann::json report = nlohmann::json::parse(ReadFile(out / "report.json"), nullptr, false);
    ASSERT_FALSE(report.is_discarded()) << ReadFile(out / "report.json");
    EXPECT_EQ(report.value("world_size", -1), np);
    EXPECT_EQ(report.value("job", ""), "mpi-e2e");
    EXPECT_FALSE(report.value("resumed", true));
    ASSERT_TRUE(report.contains("train")) << report.dump(2);
    EXPECT_EQ(report["train"].value("steps", -1), kSteps);
    EXPECT_EQ(report["train"].value("total_steps", -1), kSteps);
    EXPECT_TRUE(ReadFile(out / "metrics.jsonl").find("\"phase\":\"done\"") != std::string::npos);
    // metrics.jsonl: every record parses; steps 1..8, each written once (by the leader alone).
    int bad = 0;
    losses[np] = TrainLosses(out / "metrics.jsonl", &bad);
    EXPECT_EQ(bad, 0);
    ASSERT_EQ(losses[np].size(), static_cast<size_t>(kSteps));
    for (int64_t s = 1; s <= kSteps; ++s) {
      ASSERT_EQ(losses[np][s].size(), 1u) << "step " << s;
      EXPECT_TRUE(std::isfinite(losses[np][s][0]));
    }
    // The final checkpoint holds one optimizer shard per rank.
    auto store = checkpoint::CheckpointStore::Open((out / "checkpoints").string(), {});
    ASSERT_TRUE(store.ok()) << store.status();
    auto latest = store->LoadLatest();
    ASSERT_TRUE(latest.ok()) << latest.status();
    ASSERT_TRUE(latest->has_value());
    EXPECT_EQ((*latest)->step, kSteps);
    for (int r = 0; r < np; ++r) {
      EXPECT_EQ((*latest)->files.count(absl::StrCat("optimizer-", r, "-of-", np, ".safetensors")), 1u);
    }
  }
  for (int np : {2, 3}) {
    for (int64_t s = 1; s <= kSteps; ++s) {
      if (losses[np][s].empty() || losses[1][s].empty()) continue;
      EXPECT_NEAR(losses[np][s][0], losses[1][s][0], 1e-4 * std::abs(losses[1][s][0])) << np << " ranks, step " << s;
    }
    const fs::path one = root_ / "ranks1", other = root_ / absl::StrCat("ranks", np);
    EXPECT_LT(WorstRelative(one / "decomposition.safetensors", other / "decomposition.safetensors"), 1e-5)
        << np << " ranks";
    EXPECT_LT(WorstRelative(one / "adapter/adapter_model.safetensors", other / "adapter/adapter_model.safetensors"),
              1e-4)
        << np << " ranks";
  }
}

TEST_F(MpiJobTest, AKilledRankStopsTheGroupAndTheRerunResumes) {
  constexpr int kSteps = 300;
  constexpr int kSaveSteps = 5;
  const fs::path out = root_ / "killed";
  const fs::path spec = WriteSpec("killed", out, kSteps, kSaveSteps);
  const fs::path log = root_ / "killed.log";
  const fs::path metrics = out / "metrics.jsonl";

  Launched run;
  run.Start(MpirunArgv(3, worker_, spec, {"--quiet"}), log, *tmpdir_);
  // Wait for rank 1's pid line and step 12 in metrics.jsonl.
  const std::regex rank_line(
      "sigmatune-worker: rank ([0-9]+) of 3 \\(local [0-9]+ of [0-9]+\\) on \\S+, pid ([0-9]+)");
  std::map<int, int> pids;  // rank -> pid
  int64_t step = 0;
  const Clock::time_point wait_start = Clock::now();
  while (true) {
    const std::string text = ReadFile(log);
    for (auto it = std::sregex_iterator(text.begin(), text.end(), rank_line); it != std::sregex_iterator(); ++it) {
      pids[std::stoi((*it)[1])] = std::stoi((*it)[2]);
    }
    const auto seen = TrainLosses(metrics);
    step = seen.empty() ? 0 : seen.rbegin()->first;
    if (pids.count(1) && step >= 12) break;
    ASSERT_FALSE(run.WaitFor(0)) << "mpirun exited " << run.exit_code() << " before step 12:\n" << text;
    if (SecondsSince(wait_start) > 120) {
      run.KillAll();
      FAIL() << "no rank 1 pid line or no step 12 after 120 s (step " << step << "):\n" << text;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const int victim = pids.at(1);
  ASSERT_TRUE(absl::StrContains(ReadFile(fs::path("/proc") / std::to_string(victim) / "cmdline"), "sigmatune-worker"))
      << "pid " << victim << " is not a worker";
  ASSERT_EQ(kill(victim, SIGKILL), 0) << std::strerror(errno);
  const Clock::time_point killed_at = Clock::now();
  const bool ended = run.WaitFor(30);
  const double kill_to_exit = SecondsSince(killed_at);
  if (!ended) {
    run.KillAll();
    FAIL() << "mpirun still running 30 s after rank 1 (pid " << victim << ") was killed at step " << step << ":\n"
           << ReadFile(log);
  }
  std::cout << "[ timing   ] rank 1 killed at step " << step << "; mpirun exited " << run.exit_code() << " after "
            << kill_to_exit << " s\n";
  const std::string text = ReadFile(log);
  EXPECT_NE(run.exit_code(), 0) << text;
  EXPECT_LT(kill_to_exit, 30.0);
  EXPECT_TRUE(std::regex_search(text, std::regex("mpirun noticed that process rank 1 with PID [0-9]+ on node \\S+ "
                                                 "exited on signal 9")))
      << text;
  // The other ranks are gone too (within a moment of mpirun's exit).
  for (const auto& [rank, pid] : pids) {
    const Clock::time_point t = Clock::now();
    while (Alive(pid) && SecondsSince(t) < 5) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(Alive(pid)) << "rank " << rank << " (pid " << pid << ") outlived mpirun";
  }
  run.KillAll();

  // Only verified checkpoints: the newest is step >= 5, and every committed one is complete.
  const fs::path ckpt = out / "checkpoints";
  int64_t resumable = -1;
  {
    auto store = checkpoint::CheckpointStore::Open(ckpt.string(), {});
    ASSERT_TRUE(store.ok()) << store.status();
    auto latest = store->LoadLatest();
    ASSERT_TRUE(latest.ok()) << latest.status();
    ASSERT_TRUE(latest->has_value()) << "no checkpoint after step " << step;
    resumable = (*latest)->step;
    EXPECT_GE(resumable, kSaveSteps);
    EXPECT_EQ(resumable % kSaveSteps, 0);
    EXPECT_TRUE((*latest)->warnings.empty()) << absl::StrJoin((*latest)->warnings, "; ");
  }
  const std::vector<int64_t> committed = ExpectEveryCommittedCheckpointVerifies(ckpt, root_, 3);
  EXPECT_FALSE(committed.empty());
  EXPECT_LE(committed.size(), 3u) << "save_total_limit 2 (+ the one `latest` names)";

  // The same job on 2 ranks resumes from it and finishes.
  const fs::path log2 = root_ / "resumed.log";
  double elapsed = 0;
  const int code = RunToEnd(MpirunArgv(2, worker_, spec, {"--comm_timeout_s=20"}), log2, 240, &elapsed);
  const std::string text2 = ReadFile(log2);
  ASSERT_EQ(code, 0) << text2;
  std::cout << "[ timing   ] the 2-rank rerun took " << elapsed << " s\n";
  EXPECT_TRUE(absl::StrContains(
      text2, absl::StrCat("resumed from ", (ckpt / checkpoint::StepDirName(resumable)).string(), " (step ", resumable,
                          " of ", kSteps, ")")))
      << text2;
  int bad = 0;
  const auto all = TrainLosses(metrics, &bad);
  EXPECT_LE(bad, 1) << "at most the line being written when the leader was killed";
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.rbegin()->first, kSteps);
  for (int64_t s = 1; s <= kSteps; ++s) EXPECT_EQ(all.count(s), 1u) << "step " << s << " missing";
  // Steps both runs took (after the checkpoint, before the kill) agree across 3 and 2 ranks.
  int overlap = 0;
  for (const auto& [s, ls] : all) {
    if (ls.size() < 2) continue;
    ++overlap;
    EXPECT_GT(s, resumable);
    EXPECT_NEAR(ls.back(), ls.front(), 1e-4 * std::abs(ls.front())) << "step " << s;
  }
  // (None when the kill came right after a checkpoint's step was logged.)
  std::cout << "[ info     ] " << overlap << " step(s) taken by both runs, resumed from step " << resumable << "\n";
  const nlohmann::json report = nlohmann::json::parse(ReadFile(out / "report.json"), nullptr, false);
  ASSERT_FALSE(report.is_discarded());
  EXPECT_TRUE(report.value("resumed", false));
  EXPECT_EQ(report.value("world_size", -1), 2);
  ASSERT_TRUE(report.contains("train"));
  EXPECT_EQ(report["train"].value("total_steps", -1), kSteps);
  auto store = checkpoint::CheckpointStore::Open(ckpt.string(), {});
  ASSERT_TRUE(store.ok()) << store.status();
  auto latest = store->LoadLatest();
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->step, kSteps);
  EXPECT_EQ((*latest)->files.count("optimizer-1-of-2.safetensors"), 1u);
  EXPECT_EQ((*latest)->files.count("optimizer-2-of-3.safetensors"), 0u);
  // The killed run's temporary directory (if any) was pruned.
  EXPECT_EQ(FilesUnder(ckpt, [](const std::string& n) { return absl::StrContains(n, ".tmp-"); }),
            std::vector<std::string>{});
}

TEST_F(MpiJobTest, AFailingRankAbortsTheGroupAndNothingIsLost) {
  // Rank 1 may write files of up to 8 KiB only (bash's `ulimit -f` counts KiB), with SIGXFSZ
  // ignored so that write() fails with EFBIG; its optimizer shard is about 20 KB (checked below),
  // so the first checkpoint (step 2) fails on rank 1 alone.
  constexpr int kLimitKiB = 8;
  constexpr int kSteps = 8;
  const fs::path out = root_ / "failing";
  const fs::path spec = WriteSpec("failing", out, kSteps, 2);
  const fs::path wrapper = root_ / "limit-rank1.sh";
  WriteFile(wrapper, absl::StrCat("#!/bin/bash\n",
                                  "if [ \"${OMPI_COMM_WORLD_RANK:-}\" = 1 ]; then\n",
                                  "  trap '' XFSZ\n",
                                  "  ulimit -f ", kLimitKiB, " || exit 99\n",
                                  "fi\n",
                                  "exec \"", worker_, "\" \"$@\"\n"));
  fs::permissions(wrapper, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
  // Open MPI's shared-memory transport backs its 4 MiB segment with a file (ftruncate), which the
  // file size limit forbids; System V shared memory is not a file, so every rank uses it here.
  const fs::path log = root_ / "failing.log";
  double elapsed = 0;
  const int code = RunToEnd(MpirunArgv(3, wrapper.string(), spec, {"--quiet"}, {"--mca", "shmem", "sysv"}), log,
                            90, &elapsed);
  const std::string text = ReadFile(log);
  std::cout << "[ timing   ] the failing 3-rank run ended (exit " << code << ") after " << elapsed << " s\n";
  ASSERT_NE(code, -1) << "mpirun hung:\n" << text;
  EXPECT_NE(code, 0) << text;
  EXPECT_LT(elapsed, 30.0) << "the group was not ended at once:\n" << text;
  EXPECT_TRUE(absl::StrContains(text, "sigmatune-worker: rank 1 of 3")) << "rank 1 did not start:\n" << text;
  EXPECT_TRUE(absl::StrContains(text, "(rank 1)")) << text;
  EXPECT_TRUE(absl::StrContains(text, "aborts the worker group")) << text;
  EXPECT_TRUE(absl::StrContains(text, "optimizer-1-of-3.safetensors")) << text;
  EXPECT_TRUE(absl::StrContains(text, "step 2")) << text;

  // Step 2 was never committed; what is there verifies.
  const fs::path ckpt = out / "checkpoints";
  {
    auto store = checkpoint::CheckpointStore::Open(ckpt.string(), {});
    ASSERT_TRUE(store.ok()) << store.status();
    auto latest = store->LoadLatest();
    ASSERT_TRUE(latest.ok()) << "a corrupt checkpoint: " << latest.status();
    if (latest->has_value()) {
      EXPECT_LT((*latest)->step, 2);
    }
    EXPECT_EQ(store->ListSteps(), std::vector<int64_t>{});
  }
  ExpectEveryCommittedCheckpointVerifies(ckpt, root_, 3);
  // The leader aborted the staged checkpoint before the group ended: no temporary directory left.
  EXPECT_EQ(FilesUnder(ckpt, [](const std::string& n) { return absl::StrContains(n, ".tmp-"); }),
            std::vector<std::string>{});

  // Without the limit the same job finishes.
  const fs::path log2 = root_ / "rerun.log";
  const int code2 = RunToEnd(MpirunArgv(3, worker_, spec, {"--quiet"}), log2, 120);
  ASSERT_EQ(code2, 0) << ReadFile(log2);
  auto store = checkpoint::CheckpointStore::Open(ckpt.string(), {});
  ASSERT_TRUE(store.ok()) << store.status();
  auto latest = store->LoadLatest();
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->step, kSteps);
  const auto shard = (*latest)->files.find("optimizer-1-of-3.safetensors");
  ASSERT_NE(shard, (*latest)->files.end());
  EXPECT_GT(shard->second.size(), kLimitKiB * 1024u) << "the limit no longer makes rank 1's shard write fail";
  const auto losses = TrainLosses(out / "metrics.jsonl");
  ASSERT_FALSE(losses.empty());
  EXPECT_EQ(losses.rbegin()->first, kSteps);
  const nlohmann::json report = nlohmann::json::parse(ReadFile(out / "report.json"), nullptr, false);
  ASSERT_FALSE(report.is_discarded());
  EXPECT_EQ(report.value("world_size", -1), 3);
}

}  // namespace
}  // namespace sigmatune
