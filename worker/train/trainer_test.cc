// The trainer on the tiny example model: gradient accumulation over micro-batches gives the step
// of one big batch (token-weighted mean), the schedule's rate reaches the optimizer, a diverged
// loss stops with an error and leaves the parameters alone, and checkpoint files restore the
// exact state.
#include "worker/train/trainer.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/peft/adapter.h"
#include "kernels/peft/init.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/status.h"
#include "worker/comm/communicator.h"
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
  }

  // A fresh model with LoRA-style adapters (B nonzero so that every gradient is live).
  struct Setup {
    std::unique_ptr<model::LlamaModel> model;
    std::vector<std::unique_ptr<peft::LowRankAdapter>> adapters;
    std::vector<TrainableLinear> linears;
  };
  Setup Make() {
    Setup s;
    s.model = *model::LlamaModel::Create(config_, weights_, &backend_);
    uint64_t seed = 5;
    for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
      for (model::LinearKind kind : {model::LinearKind::kQ, model::LinearKind::kDown}) {
        const Tensor& w = weights_.layers[layer].linear(kind);
        peft::AdapterOptions options;
        options.rank = 4;
        options.alpha = 8;
        auto init = peft::InitializeAdapter(backend_, options, "t", w, nullptr, ++seed);
        ST_CHECK(init.ok());
        Tensor b = Tensor::Zeros({w.dim(0), 4}, DType::kF32);
        for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = 0.01f * static_cast<float>((i * 7) % 13 - 6);
        auto adapter = *peft::LowRankAdapter::Create(&backend_, init->a, b, Tensor(), init->scale, 0.0);
        s.model->SetAdapter(layer, kind, adapter.get());
        s.linears.push_back({{layer, kind}, adapter.get()});
        s.adapters.push_back(std::move(adapter));
      }
    }
    return s;
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

  model::CpuBackend backend_{1};
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

}  // namespace
}  // namespace sigmatune::train
