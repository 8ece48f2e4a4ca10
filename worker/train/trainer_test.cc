// The trainer on the tiny example model: gradient accumulation over micro-batches gives the step
// of one big batch (token-weighted mean), the schedule's rate reaches the optimizer, a diverged
// loss stops with an error and leaves the parameters alone, and checkpoint files restore the
// exact state. Data parallel: the same training on 1, 2 and 3 ranks (threads of a LocalGroup,
// each with its own backend, model, loader and adapters) gives the same losses and adapters to
// rounding, and a run stopped on 3 ranks resumes on 2 to the result of an uninterrupted run.
#include "worker/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/peft/adapter.h"
#include "kernels/peft/init.h"
#include "kernels/testing/golden.h"
#include "kernels/base/status_macros.h"
#include "kernels/testing/status.h"
#include "nlohmann/json.hpp"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/comm/local_communicator.h"
#include "worker/data/loader.h"
#include "worker/data/tokenizer.h"
#include "worker/model/llama_loader.h"

namespace sigmatune::train {
namespace {

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = testing::RunfilePath("examples/models/tiny-llama");
    auto loaded = LoadLlamaFromHfDirectory(dir, backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    config_ = loaded->config;
    weights_ = loaded->weights;
    auto tokenizer = data::Tokenizer::FromJsonFile(dir + "/tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    const char* texts[] = {"Mia has 7 marbles. She finds 5 more.", "7 + 5 = 12. 12 - 3 = 9. #### 9",
                           "The licensee may copy the program.", "Tom buys 4 pens and loses 1.",
                           "4 - 1 = 3. #### 3", "Anna reads 6 pages a day for 3 days.",
                           "6 x 3 = 18. #### 18", "Permission is granted to anyone."};
    for (const char* text : texts) {
      data::TokenizedSample s;
      s.ids = *tokenizer->Encode(text);
      s.targets = s.ids;
      s.targets[0] = -100;
      dataset_.samples.push_back(s);
    }
    uint64_t seed = 5;
    for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
      for (model::LinearKind kind : {model::LinearKind::kQ, model::LinearKind::kDown}) {
        const Tensor& w = weights_.layers[layer].linear(kind);
        peft::AdapterOptions options;
        options.rank = 4;
        options.alpha = 8;
        auto init = peft::InitializeAdapter(backend_, options, "t", w, nullptr, ++seed);
        ASSERT_TRUE(init.ok()) << init.status();
        Tensor b = Tensor::Zeros({w.dim(0), 4}, DType::kF32);
        for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = 0.01f * static_cast<float>((i * 7) % 13 - 6);
        inits_.push_back({{layer, kind}, init->a.Contiguous(), b, init->scale});
      }
    }
  }

  // A fresh model with LoRA-style adapters (B nonzero so that every gradient is live) on
  // `backend` (the fixture's by default); with `kasa`, a KaSA diagonal too.
  struct Setup {
    std::unique_ptr<model::LlamaModel> model;
    std::vector<std::unique_ptr<peft::LowRankAdapter>> adapters;
    std::vector<TrainableLinear> linears;
  };
  Setup Make(model::ModelBackend* backend = nullptr, double dropout = 0.0, bool kasa = false) {
    if (backend == nullptr) backend = &backend_;
    Setup s;
    s.model = *model::LlamaModel::Create(config_, weights_, backend);
    for (const InitialAdapter& init : inits_) {
      Tensor d;
      if (kasa) d = Tensor::FromVector<float>({4}, {0.3f, 0.2f, 0.1f, 0.05f});
      auto adapter = peft::LowRankAdapter::Create(backend, init.a.Contiguous(), init.b.Contiguous(), d, init.scale,
                                                  dropout);
      ST_CHECK(adapter.ok()) << adapter.status();
      s.model->SetAdapter(init.target.layer, init.target.kind, adapter->get());
      s.linears.push_back({init.target, adapter->get()});
      s.adapters.push_back(*std::move(adapter));
    }
    return s;
  }

  // One data-parallel run: `size` ranks, each with its own backend, model, adapters, loader and
  // (with a root) checkpoint store.
  struct GroupRun {
    int size = 1;
    int64_t micro = 2;
    int64_t accumulation = 4;
    int64_t steps = 3;
    double dropout = 0.1;
    bool kasa = false;
    std::string root;          // checkpoint store root; empty: no store
    int64_t stop_after = -1;   // TrainerOptions::stop_after_step
    bool restore = false;      // resume from the store's latest checkpoint first
  };
  struct GroupResult {
    std::vector<double> losses;  // the leader's summary
    std::vector<double> params;  // every adapter tensor, flat (the leader's)
    bool ranks_agree = true;     // every rank ended with the leader's parameters, bit for bit
    int64_t start_step = 0;
    int64_t steps_done = 0;
    bool stopped_early = false;
  };

  GroupResult RunGroup(const GroupRun& run) {
    GroupResult result;
    std::mutex mu;
    std::vector<std::vector<double>> params(run.size);
    const std::vector<absl::Status> statuses =
        comm::LocalGroup::Run(run.size, [&](comm::Communicator& comm) -> absl::Status {
          model::CpuBackend backend(1);
          Setup s = Make(&backend, run.dropout, run.kasa);
          data::LoaderOptions loader_options;
          loader_options.micro_batch_size = run.micro;
          loader_options.sequence_len = 64;
          ST_ASSIGN_OR_RETURN(data::DataLoader loader, data::DataLoader::Create(&dataset_, loader_options));
          std::optional<checkpoint::CheckpointStore> store;
          if (!run.root.empty()) {
            ST_ASSIGN_OR_RETURN(checkpoint::CheckpointStore opened,
                                checkpoint::CheckpointStore::Open(run.root, checkpoint::CheckpointOptions{}));
            store.emplace(std::move(opened));
          }
          TrainerOptions options = Options(run.accumulation, run.steps);
          options.adamw.max_grad_norm = 0.5;
          options.adamw.weight_decay = 0.01;
          options.stop_after_step = run.stop_after;
          if (run.kasa) {
            options.regularizer = Regularizer::kKasa;
            options.kasa.beta = 0.05;
            options.kasa.gamma = 0.05;
          }
          ST_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(s.model.get(), s.linears, &loader, options, nullptr,
                                                            store ? &*store : nullptr, &comm));
          if (run.restore) {
            ST_ASSIGN_OR_RETURN(auto latest, store->LoadLatest());
            if (!latest.has_value()) return absl::NotFoundError("no checkpoint to resume from");
            ST_RETURN_IF_ERROR(trainer->Restore(*latest));
          }
          ST_ASSIGN_OR_RETURN(const TrainSummary summary, trainer->Run());
          std::vector<double> flat;
          for (auto& a : s.adapters) {
            for (const Tensor* t : {&a->a(), &a->b(), &a->d()}) {
              if (!t->defined()) continue;
              for (int64_t i = 0; i < t->numel(); ++i) flat.push_back(t->data<float>()[i]);
            }
          }
          std::lock_guard<std::mutex> lock(mu);
          params[comm.rank()] = std::move(flat);
          if (comm.is_leader()) {
            result.losses = summary.losses;
            result.start_step = summary.start_step;
            result.steps_done = summary.steps_done;
            result.stopped_early = summary.stopped_early;
          }
          return absl::OkStatus();
        });
    for (int r = 0; r < run.size; ++r) EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
    result.params = params[0];
    for (int r = 1; r < run.size; ++r) result.ranks_agree = result.ranks_agree && params[r] == params[0];
    return result;
  }

  // max |got - want| / max |want| (parameters), and the largest relative difference of the losses.
  static double ParamDiff(const std::vector<double>& got, const std::vector<double>& want) {
    EXPECT_EQ(got.size(), want.size());
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
      diff = std::max(diff, std::fabs(got[i] - want[i]));
      scale = std::max(scale, std::fabs(want[i]));
    }
    return got.size() == want.size() ? diff / std::max(scale, 1e-30) : 1.0;
  }
  static double LossDiff(const std::vector<double>& got, const std::vector<double>& want) {
    EXPECT_EQ(got.size(), want.size());
    double diff = 0.0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
      diff = std::max(diff, std::fabs(got[i] - want[i]) / std::max(std::fabs(want[i]), 1e-30));
    }
    return got.size() == want.size() ? diff : 1.0;
  }

  static std::string FreshRoot(const std::string& name) {
    const char* tmp = std::getenv("TEST_TMPDIR");
    const std::filesystem::path dir = std::filesystem::path(tmp ? tmp : "/tmp") / "trainer_test" / name;
    std::filesystem::remove_all(dir);
    return dir.string();
  }

  TrainerOptions Options(int64_t accumulation, int64_t steps) {
    TrainerOptions options;
    options.total_steps = steps;
    options.accumulation = accumulation;
    options.adamw.lr = 1e-2;
    options.adamw.max_grad_norm = -1;
    options.schedule.kind = ScheduleKind::kConstant;
    options.schedule.total_steps = steps;
    options.identity = "test";
    return options;
  }

  struct InitialAdapter {
    peft::TargetModule target;
    Tensor a, b;
    double scale;
  };

  model::CpuBackend backend_{1};
  std::vector<InitialAdapter> inits_;
  model::LlamaConfig config_;
  model::LlamaWeights weights_;
  data::Dataset dataset_;
  comm::SingleProcessCommunicator comm_;
};

TEST_F(TrainerTest, AccumulationEqualsOneBigBatch) {
  std::vector<std::vector<float>> results;
  for (int64_t micro : {8, 4, 2}) {
    Setup s = Make();
    data::LoaderOptions loader_options;
    loader_options.micro_batch_size = micro;
    loader_options.sequence_len = 64;
    auto loader = data::DataLoader::Create(&dataset_, loader_options);
    ASSERT_TRUE(loader.ok()) << loader.status();
    auto trainer = Trainer::Create(s.model.get(), s.linears, &*loader, Options(8 / micro, 1), nullptr, nullptr, &comm_);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    auto summary = (*trainer)->Run();
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->steps_done, 1);
    std::vector<float> params;
    for (auto& a : s.adapters) {
      for (const Tensor* t : {&a->a(), &a->b()}) {
        params.insert(params.end(), t->data<float>(), t->data<float>() + t->numel());
      }
    }
    results.push_back(params);
  }
  ASSERT_EQ(results[0].size(), results[1].size());
  double max_diff = 0.0, max_change = 0.0;
  Setup fresh = Make();
  std::vector<float> initial;
  for (auto& a : fresh.adapters) {
    for (const Tensor* t : {&a->a(), &a->b()}) initial.insert(initial.end(), t->data<float>(), t->data<float>() + t->numel());
  }
  for (size_t i = 0; i < results[0].size(); ++i) {
    max_diff = std::max({max_diff, std::fabs(double{results[0][i]} - results[1][i]),
                         std::fabs(double{results[0][i]} - results[2][i])});
    max_change = std::max(max_change, std::fabs(double{results[0][i]} - initial[i]));
  }
  EXPECT_GT(max_change, 1e-3);  // the step moved the parameters (lr 1e-2, Adam's step ~ lr)
  EXPECT_LT(max_diff, 1e-5);    // ... by the same amounts with and without accumulation
}

TEST_F(TrainerTest, CheckpointFilesRestoreTheExactState) {
  data::LoaderOptions loader_options;
  loader_options.micro_batch_size = 2;
  loader_options.sequence_len = 64;
  // Straight: 4 steps.
  Setup a = Make();
  auto loader_a = *data::DataLoader::Create(&dataset_, loader_options);
  auto trainer_a = *Trainer::Create(a.model.get(), a.linears, &loader_a, Options(1, 4), nullptr, nullptr, &comm_);
  ASSERT_TRUE(trainer_a->Run().ok());
  // Interrupted after 2, restored into a new model, 2 more.
  Setup b = Make();
  auto loader_b = *data::DataLoader::Create(&dataset_, loader_options);
  TrainerOptions options = Options(1, 4);
  options.stop_after_step = 2;
  auto trainer_b = *Trainer::Create(b.model.get(), b.linears, &loader_b, options, nullptr, nullptr, &comm_);
  auto first = trainer_b->Run();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->stopped_early);
  auto files = trainer_b->CheckpointFiles();
  ASSERT_TRUE(files.ok()) << files.status();
  checkpoint::LoadedCheckpoint loaded;
  loaded.step = 2;
  loaded.dir = "memory";
  loaded.files = *files;
  Setup c = Make();
  auto loader_c = *data::DataLoader::Create(&dataset_, loader_options);
  auto trainer_c = *Trainer::Create(c.model.get(), c.linears, &loader_c, Options(1, 4), nullptr, nullptr, &comm_);
  ASSERT_TRUE(trainer_c->Restore(loaded).ok());
  EXPECT_EQ(trainer_c->step(), 2);
  ASSERT_TRUE(trainer_c->Run().ok());
  for (size_t i = 0; i < a.adapters.size(); ++i) {
    for (auto [x, y] : {std::make_pair(&a.adapters[i]->a(), &c.adapters[i]->a()),
                        std::make_pair(&a.adapters[i]->b(), &c.adapters[i]->b())}) {
      ASSERT_EQ(x->numel(), y->numel());
      EXPECT_EQ(0, std::memcmp(x->raw_data(), y->raw_data(), x->nbytes())) << "adapter " << i;
    }
  }
  // Another job's checkpoint is refused.
  TrainerOptions other = Options(1, 4);
  other.identity = "another job";
  Setup d = Make();
  auto loader_d = *data::DataLoader::Create(&dataset_, loader_options);
  auto trainer_d = *Trainer::Create(d.model.get(), d.linears, &loader_d, other, nullptr, nullptr, &comm_);
  EXPECT_ERROR_MENTIONS(trainer_d->Restore(loaded), "another job");
}

TEST_F(TrainerTest, DivergedLossStopsAndNamesTheStep) {
  Setup s = Make();
  s.adapters[0]->a().data<float>()[0] = std::nanf("");
  data::LoaderOptions loader_options;
  loader_options.micro_batch_size = 4;
  loader_options.sequence_len = 64;
  auto loader = *data::DataLoader::Create(&dataset_, loader_options);
  auto trainer = *Trainer::Create(s.model.get(), s.linears, &loader, Options(1, 3), nullptr, nullptr, &comm_);
  const float b0 = s.adapters[1]->b().data<float>()[3];
  EXPECT_ERROR_MENTIONS(trainer->Run().status(), "diverged", "step 1");
  EXPECT_EQ(s.adapters[1]->b().data<float>()[3], b0);  // nothing was updated
  EXPECT_EQ(trainer->step(), 0);
}

// Tolerance across world sizes: the ranks' gradients are summed in another order than one rank
// accumulates them, so the results agree to rounding (observed: see the printed differences).
constexpr double kWorldSizeTolerance = 1e-5;

TEST_F(TrainerTest, SameTrainingOnOneTwoAndThreeRanks) {
  struct Case {
    int64_t accumulation;
    bool kasa;
  };
  // accumulation 4: ranks take 4/0, 2/2, 2/1/1 micro-batches; accumulation 2 on 3 ranks: one rank
  // idles. KaSA: the regulariser is added once for the group whatever its size.
  for (const Case& c : {Case{4, false}, Case{2, false}, Case{4, true}}) {
    SCOPED_TRACE(::testing::Message() << "accumulation " << c.accumulation << (c.kasa ? ", KaSA" : ""));
    GroupRun run;
    run.accumulation = c.accumulation;
    run.kasa = c.kasa;
    run.steps = 3;
    const GroupResult one = RunGroup(run);
    ASSERT_EQ(one.losses.size(), 3u);
    for (int size : {2, 3}) {
      SCOPED_TRACE(::testing::Message() << size << " ranks");
      run.size = size;
      const GroupResult many = RunGroup(run);
      EXPECT_TRUE(many.ranks_agree);
      EXPECT_EQ(many.steps_done, 3);
      // The first step's loss is the same sum in the same order: bit for bit.
      ASSERT_EQ(many.losses.size(), 3u);
      EXPECT_EQ(many.losses[0], one.losses[0]);
      const double loss_diff = LossDiff(many.losses, one.losses);
      const double param_diff = ParamDiff(many.params, one.params);
      std::cout << "accumulation " << c.accumulation << (c.kasa ? " KaSA" : "") << ", " << size
                << " ranks vs 1: max relative loss difference " << loss_diff
                << ", max parameter difference / max |parameter| " << param_diff << "\n";
      EXPECT_LE(loss_diff, kWorldSizeTolerance);
      EXPECT_LE(param_diff, kWorldSizeTolerance);
    }
    // The training moved the adapters well beyond that tolerance.
    std::vector<double> initial;
    {
      Setup fresh = Make(nullptr, 0.0, c.kasa);
      for (auto& a : fresh.adapters) {
        for (const Tensor* t : {&a->a(), &a->b(), &a->d()}) {
          if (!t->defined()) continue;
          for (int64_t i = 0; i < t->numel(); ++i) initial.push_back(t->data<float>()[i]);
        }
      }
    }
    EXPECT_GT(ParamDiff(one.params, initial), 100 * kWorldSizeTolerance);
  }
}

TEST_F(TrainerTest, StoppedOnThreeRanksResumesOnTwo) {
  GroupRun straight;
  straight.accumulation = 3;
  straight.steps = 5;
  const GroupResult uninterrupted = RunGroup(straight);
  ASSERT_EQ(uninterrupted.losses.size(), 5u);

  const std::string root = FreshRoot("three_then_two");
  GroupRun first = straight;
  first.size = 3;
  first.root = root;
  first.stop_after = 2;
  const GroupResult stopped = RunGroup(first);
  EXPECT_TRUE(stopped.stopped_early);
  EXPECT_EQ(stopped.steps_done, 2);
  // The group's checkpoint: every rank's shard, the leader's adapter and state.
  auto store = checkpoint::CheckpointStore::Open(root, {});
  ASSERT_TRUE(store.ok()) << store.status();
  auto latest = store->LoadLatest();
  ASSERT_TRUE(latest.ok() && latest->has_value()) << latest.status();
  EXPECT_EQ((*latest)->step, 2);
  std::vector<std::string> names;
  for (const auto& [name, bytes] : (*latest)->files) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"adapter.safetensors", "optimizer-0-of-3.safetensors",
                                             "optimizer-1-of-3.safetensors", "optimizer-2-of-3.safetensors",
                                             "trainer_state.json"}));
  const nlohmann::json state = nlohmann::json::parse((*latest)->files.at("trainer_state.json"));
  EXPECT_EQ(state["world_size"], 3);
  EXPECT_EQ(state["step"], 2);

  GroupRun second = straight;
  second.size = 2;
  second.root = root;
  second.restore = true;
  const GroupResult resumed = RunGroup(second);
  EXPECT_TRUE(resumed.ranks_agree);
  EXPECT_EQ(resumed.start_step, 2);
  EXPECT_EQ(resumed.steps_done, 5);
  ASSERT_EQ(stopped.losses.size(), 2u);
  ASSERT_EQ(resumed.losses.size(), 3u);
  std::vector<double> losses = stopped.losses;
  losses.insert(losses.end(), resumed.losses.begin(), resumed.losses.end());
  const double loss_diff = LossDiff(losses, uninterrupted.losses);
  const double param_diff = ParamDiff(resumed.params, uninterrupted.params);
  std::cout << "3 ranks stopped at step 2, resumed on 2 ranks, vs 1 rank: max relative loss difference "
            << loss_diff << ", max parameter difference / max |parameter| " << param_diff << "\n";
  EXPECT_LE(loss_diff, kWorldSizeTolerance);
  EXPECT_LE(param_diff, kWorldSizeTolerance);
  // The final checkpoint was written by the 2 ranks.
  auto last = store->LoadLatest();
  ASSERT_TRUE(last.ok() && last->has_value());
  EXPECT_EQ((*last)->step, 5);
  EXPECT_EQ((*last)->files.count("optimizer-1-of-2.safetensors"), 1u);
  EXPECT_EQ((*last)->files.count("optimizer-0-of-3.safetensors"), 0u);

  // And back onto one rank from the 2-rank checkpoint: nothing left to do, the state loads.
  GroupRun third = straight;
  third.root = root;
  third.restore = true;
  const GroupResult done = RunGroup(third);
  EXPECT_EQ(done.start_step, 5);
  EXPECT_TRUE(done.losses.empty());
  EXPECT_EQ(done.params, resumed.params);
}

}  // namespace
}  // namespace sigmatune::train
