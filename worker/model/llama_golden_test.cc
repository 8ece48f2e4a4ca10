// The LLaMA engine against transformers on two tiny random checkpoints (GQA + tied embeddings;
// MHA + llama3 rope): logits, loss, every linear's input and output, the gradient of every linear's
// output and input, and of the input embeddings (tools/golden/make_llama_fixtures.py). fp32 CPU:
// relative Frobenius error <= 1e-4.
#include <algorithm>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "worker/model/llama_loader.h"

namespace sigmatune {
namespace {

using model::InputSite;
using model::LinearKind;

constexpr double kTolerance = 1e-4;

// Records what passes through a linear slot without changing it.
class ProbeAdapter : public model::LinearAdapter {
 public:
  absl::Status Forward(const Tensor& x, Tensor* y) override {
    x_ = x.Contiguous();
    y_ = y->Contiguous();
    return absl::OkStatus();
  }
  absl::Status Backward(const Tensor& x, const Tensor& dy, Tensor* dx) override {
    dy_ = dy.Contiguous();
    return absl::OkStatus();
  }
  Tensor x_, y_, dy_;
};

class RecordingObserver : public model::ModelObserver {
 public:
  absl::Status OnLinearInput(int64_t layer, InputSite site, const Tensor& x) override {
    ++inputs_[{layer, site}];
    return absl::OkStatus();
  }
  absl::Status OnLinearOutputGrad(int64_t layer, LinearKind kind, const Tensor& dy) override {
    output_grads_[{layer, kind}] = dy.Contiguous();
    return absl::OkStatus();
  }
  absl::Status OnLinearInputGrad(int64_t layer, InputSite site, const Tensor& dx) override {
    input_grads_[{layer, site}] = dx.Contiguous();
    return absl::OkStatus();
  }
  std::map<std::pair<int64_t, InputSite>, int> inputs_;
  std::map<std::pair<int64_t, LinearKind>, Tensor> output_grads_;
  std::map<std::pair<int64_t, InputSite>, Tensor> input_grads_;
};

class LlamaGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = testing::RunfilePath("tests/testdata/llama/" + GetParam());
    auto loaded = LoadLlamaFromHfDirectory(dir, backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto m = model::LlamaModel::Create(loaded->config, loaded->weights, &backend_);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    auto golden = testing::LoadGolden(dir + "/expected.safetensors");
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(*golden);
    batch_.input_ids = golden_.at("input_ids");
    batch_.positions = golden_.at("positions");
    batch_.cu_seqlens = golden_.at("cu_seqlens");
    batch_.labels = golden_.at("labels");
  }

  const Tensor& Expected(const std::string& name) {
    auto it = golden_.find(name);
    ST_CHECK(it != golden_.end()) << name;
    return it->second;
  }

  void ExpectClose(const Tensor& actual, const std::string& name) {
    const Tensor& expected = Expected(name);
    ASSERT_EQ(actual.shape(), expected.shape()) << name;
    EXPECT_LE(testing::RelativeError(actual, expected), kTolerance) << name;
  }

  model::CpuBackend backend_;
  std::unique_ptr<model::LlamaModel> model_;
  std::map<std::string, Tensor> golden_;
  model::Batch batch_;
};

TEST_P(LlamaGoldenTest, LogitsMatchTransformers) {
  auto logits = model_->Logits(batch_);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ExpectClose(*logits, "logits");
}

TEST_P(LlamaGoldenTest, ForwardBackwardMatchTransformersAtEveryLinear) {
  const int64_t layers = model_->config().num_layers;
  std::vector<std::array<ProbeAdapter, 7>> probes(layers);
  for (int64_t l = 0; l < layers; ++l) {
    for (LinearKind kind : model::kAllLinears) model_->SetAdapter(l, kind, &probes[l][static_cast<int>(kind)]);
  }
  RecordingObserver observer;
  auto result = model_->Forward(batch_, &observer);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NEAR(result->loss, GetAsDouble(Expected("loss"), 0), 1e-4 * GetAsDouble(Expected("loss"), 0));
  // Every site was observed exactly once per layer.
  EXPECT_EQ(observer.inputs_.size(), static_cast<size_t>(4 * layers));
  for (const auto& [key, count] : observer.inputs_) EXPECT_EQ(count, 1);

  auto dembed = model_->Backward(&observer);
  ASSERT_TRUE(dembed.ok()) << dembed.status();
  ExpectClose(*dembed, "hidden.grad");
  for (int64_t l = 0; l < layers; ++l) {
    for (LinearKind kind : model::kAllLinears) {
      const std::string name = model::LinearName(l, kind);
      const ProbeAdapter& probe = probes[l][static_cast<int>(kind)];
      ExpectClose(probe.x_, name + ".input");
      ExpectClose(probe.y_, name + ".output");
      ExpectClose(probe.dy_, name + ".grad_output");
      ExpectClose(observer.output_grads_.at({l, kind}), name + ".grad_output");
      ExpectClose(observer.input_grads_.at({l, model::InputSiteOf(kind)}), name + ".grad_input");
    }
  }
}

TEST_P(LlamaGoldenTest, RecomputeGivesIdenticalGradients) {
  ASSERT_TRUE(model_->Forward(batch_).ok());
  auto stored = model_->Backward();
  ASSERT_TRUE(stored.ok()) << stored.status();
  model_->set_recompute(model::Recompute::kPerLayer);
  ASSERT_TRUE(model_->Forward(batch_).ok());
  auto recomputed = model_->Backward();
  ASSERT_TRUE(recomputed.ok()) << recomputed.status();
  EXPECT_TRUE(testing::AllClose(*recomputed, *stored, testing::Tolerance{0, 0}));
}

TEST_P(LlamaGoldenTest, GreedyGenerationAgreesWithFullRecomputation) {
  const std::vector<int32_t> prompt = {5, 17, 3, 42, 8};
  auto generated = model_->GenerateGreedy(prompt, 6, {});
  ASSERT_TRUE(generated.ok()) << generated.status();
  ASSERT_EQ(generated->size(), 6u);
  // Without the cache: the argmax of the full logits at each position reproduces every token.
  std::vector<int32_t> sequence = prompt;
  sequence.insert(sequence.end(), generated->begin(), generated->end());
  auto batch = model::PackCausalLmBatch(backend_, {sequence});
  ASSERT_TRUE(batch.ok());
  auto logits = model_->Logits(*batch);
  ASSERT_TRUE(logits.ok());
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < generated->size(); ++i) {
    const float* row = logits->data<float>() + (prompt.size() - 1 + i) * vocab;
    EXPECT_EQ(std::max_element(row, row + vocab) - row, (*generated)[i]) << "token " << i;
  }
}

TEST_P(LlamaGoldenTest, DecodingWithoutTheCacheGivesTheSameTokens) {
  const std::vector<int32_t> prompt = {5, 17, 3, 42, 8};
  auto cached = model_->GenerateGreedy(prompt, 6, {});
  ASSERT_TRUE(cached.ok()) << cached.status();
  auto uncached = model_->GenerateGreedyWithoutCache(prompt, 6, {});
  ASSERT_TRUE(uncached.ok()) << uncached.status();
  EXPECT_EQ(*uncached, *cached);
  // A stop id ends both after it, included.
  const std::vector<int32_t> stop = {(*cached)[2]};
  auto stopped = model_->GenerateGreedyWithoutCache(prompt, 6, stop);
  ASSERT_TRUE(stopped.ok());
  const auto first = std::find(cached->begin(), cached->end(), stop[0]);
  EXPECT_EQ(*stopped, std::vector<int32_t>(cached->begin(), first + 1));
}

TEST_P(LlamaGoldenTest, BackwardWithoutForwardIsAnError) {
  auto status = model_->Backward().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

INSTANTIATE_TEST_SUITE_P(TinyModels, LlamaGoldenTest, ::testing::Values("tiny_gqa_tied", "tiny_mha_llama3"));

}  // namespace
}  // namespace sigmatune
