// peft::LowRankAdapter inside the LLaMA engine (tiny GQA checkpoint with tied embeddings, fp32 CPU):
//  - with B = 0 every adapter adds exactly nothing: the loss equals the adapter-free loss bit for bit;
//  - the loss gradient w.r.t. adapter parameters (A, B and KaSA's d, in both layers, attention and
//    MLP) matches central finite differences of LlamaModel::Forward's loss (fp32: eps 3e-3,
//    relative 2e-2 on the coordinates with the largest gradients);
//  - with dropout 0.2, Recompute::kPerLayer gives the gradients of Recompute::kNone (same seeds).
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/peft/adapter.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/random.h"
#include "worker/model/llama_loader.h"

namespace sigmatune {
namespace {

using model::LinearKind;
using peft::LowRankAdapter;
using testing::AllClose;
using testing::RandomNormal;
using testing::Tolerance;

constexpr int64_t kRank = 2;
constexpr double kScale = 1.5;

class AdapterModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loaded = LoadLlamaFromHfDirectory(testing::RunfilePath("tests/testdata/llama/tiny_gqa_tied"), backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto m = model::LlamaModel::Create(loaded->config, loaded->weights, &backend_);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    auto batch = model::PackCausalLmBatch(backend_, {{1, 5, 17, 33, 2, 90, 45, 12, 7, 64, 3},
                                                     {4, 8, 15, 16, 23, 42, 96, 0, 11}});
    ASSERT_TRUE(batch.ok()) << batch.status();
    batch_ = std::move(*batch);
  }

  // One adapter on every linear of every layer; KaSA-style d on every other one. `zero_b` makes
  // B = 0 (the init of LoRA and KaSA).
  void AttachAdapters(bool zero_b, double dropout) {
    adapters_.clear();
    uint64_t seed = 100;
    for (int64_t layer = 0; layer < model_->config().num_layers; ++layer) {
      for (LinearKind kind : model::kAllLinears) {
        const Tensor& w = model_->weights().layers[layer].linear(kind);
        const int64_t out = w.dim(0), in = w.dim(1);
        Tensor a = RandomNormal({kRank, in}, DType::kF32, ++seed);
        Tensor b = zero_b ? Tensor::Zeros({out, kRank}, DType::kF32) : RandomNormal({out, kRank}, DType::kF32, ++seed);
        for (int64_t i = 0; i < a.numel(); ++i) a.data<float>()[i] *= 0.3f;
        for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] *= 0.3f;
        const Tensor d = adapters_.size() % 2 == 1 ? RandomNormal({kRank}, DType::kF32, ++seed) : Tensor();
        auto adapter = LowRankAdapter::Create(&backend_, a, b, d, kScale, dropout);
        ASSERT_TRUE(adapter.ok()) << adapter.status();
        (*adapter)->set_dropout_seed(1000 + adapters_.size());
        model_->SetAdapter(layer, kind, adapter->get());
        adapters_.push_back(std::move(*adapter));
      }
    }
  }

  double Loss() {
    auto result = model_->Forward(batch_);
    ST_CHECK(result.ok()) << result.status();
    return result->loss;
  }

  void ForwardBackward() {
    for (auto& adapter : adapters_) ASSERT_TRUE(adapter->ZeroGrad().ok());
    ASSERT_TRUE(model_->Forward(batch_).ok());
    auto dembed = model_->Backward();
    ASSERT_TRUE(dembed.ok()) << dembed.status();
  }

  // Copies of every adapter's gradients (A, B, d when present).
  std::vector<Tensor> Gradients() {
    std::vector<Tensor> grads;
    for (auto& adapter : adapters_) {
      grads.push_back(adapter->grad_a().Contiguous());
      grads.push_back(adapter->grad_b().Contiguous());
      if (adapter->grad_d().defined()) grads.push_back(adapter->grad_d().Contiguous());
    }
    return grads;
  }

  model::CpuBackend backend_;
  std::unique_ptr<model::LlamaModel> model_;
  model::Batch batch_;
  std::vector<std::unique_ptr<LowRankAdapter>> adapters_;
};

TEST_F(AdapterModelTest, ZeroBLeavesTheLossUnchanged) {
  const double base = Loss();
  AttachAdapters(/*zero_b=*/true, /*dropout=*/0.0);
  EXPECT_EQ(Loss(), base);
  AttachAdapters(/*zero_b=*/true, /*dropout=*/0.2);
  EXPECT_EQ(Loss(), base);
  AttachAdapters(/*zero_b=*/false, /*dropout=*/0.0);
  EXPECT_GT(std::fabs(Loss() - base), 1e-4);  // the adapters are live
}

TEST_F(AdapterModelTest, GradientsMatchFiniteDifferences) {
  AttachAdapters(/*zero_b=*/false, /*dropout=*/0.0);
  ForwardBackward();
  constexpr double kEps = 3e-3;
  int checked = 0;
  // Adapter index = 7 * layer + kind; d on the odd ones. Layer 0 q (no d), layer 0 k (d), layer 1 o
  // (no d), layer 1 down (d), layer 1 gate (d).
  for (int index : {0, 1, 10, 13, 11}) {
    LowRankAdapter& adapter = *adapters_[index];
    std::vector<std::pair<const char*, Tensor*>> params = {{"a", &adapter.a()}, {"b", &adapter.b()}};
    std::vector<Tensor> grads = {adapter.grad_a().Contiguous(), adapter.grad_b().Contiguous()};
    if (adapter.d().defined()) {
      params.push_back({"d", &adapter.d()});
      grads.push_back(adapter.grad_d().Contiguous());
    }
    for (size_t p = 0; p < params.size(); ++p) {
      // The two coordinates with the largest analytic gradient (where fp32 differences resolve it).
      const Tensor& g = grads[p];
      std::vector<int64_t> order(g.numel());
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + 2, order.end(), [&](int64_t i, int64_t j) {
        return std::fabs(g.data<float>()[i]) > std::fabs(g.data<float>()[j]);
      });
      for (int k = 0; k < 2; ++k) {
        float* value = params[p].second->data<float>() + order[k];
        const float original = *value;
        *value = original + static_cast<float>(kEps);
        const double plus = Loss();
        *value = original - static_cast<float>(kEps);
        const double minus = Loss();
        *value = original;
        const double numeric = (plus - minus) / (2 * kEps);
        const double analytic = g.data<float>()[order[k]];
        EXPECT_NEAR(analytic, numeric, 2e-2 * std::fabs(numeric) + 1e-5)
            << "adapter " << index << " " << params[p].first << "[" << order[k] << "]";
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 26);
}

TEST_F(AdapterModelTest, RecomputePerLayerGivesTheSameGradientsWithDropout) {
  AttachAdapters(/*zero_b=*/false, /*dropout=*/0.2);
  model_->set_recompute(model::Recompute::kNone);
  ForwardBackward();
  const std::vector<Tensor> stored = Gradients();
  model_->set_recompute(model::Recompute::kPerLayer);
  ForwardBackward();
  const std::vector<Tensor> recomputed = Gradients();
  ASSERT_EQ(stored.size(), recomputed.size());
  for (size_t i = 0; i < stored.size(); ++i) {
    EXPECT_TRUE(AllClose(recomputed[i], stored[i], Tolerance{1e-7, 1e-5})) << "gradient " << i;
  }
  // Dropout is live: other seeds give other gradients.
  for (auto& adapter : adapters_) adapter->set_dropout_seed(7);
  ForwardBackward();
  EXPECT_GT(testing::RelativeError(Gradients()[0], stored[0]), 1e-3);
}

}  // namespace
}  // namespace sigmatune
