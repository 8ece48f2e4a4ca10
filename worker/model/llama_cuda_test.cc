// The LLaMA engine on CudaBackend against transformers, on the golden tiny checkpoints of
// llama_golden_test (GQA + tied embeddings; MHA + llama3 rope):
//  - f32 (no TF32): logits, loss, every linear's input and output, the gradient of every linear's
//    output and input, and of the input embeddings, within the CPU test's tolerance (relative
//    Frobenius error <= 1e-4);
//  - bf16 (the production setting): the loss within 2e-2 relative, and the logits' argmax agreeing
//    with transformers' on >= 95% of the tokens (a disagreement on a near-tie, where the two top
//    fp32 logits are closer than bf16 can resolve, counts as agreement).
// Skips without a CUDA device, and (one placeholder test) in a build without CUDA.
#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/testing/gpu.h"

#if SIGMATUNE_WITH_CUDA
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/model/backend.h"
#include "kernels/model/backend_cuda.h"
#include "kernels/model/llama.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "worker/model/llama_loader.h"
#endif

namespace sigmatune {
namespace {

#if SIGMATUNE_WITH_CUDA

using model::InputSite;
using model::LinearKind;

constexpr double kF32Tolerance = 1e-4;  // as llama_golden_test
constexpr double kBf16Tolerance = 2e-2;
constexpr double kMinArgmaxAgreement = 0.95;

// Records (a host copy of) what passes through a linear slot without changing it.
class ProbeAdapter : public model::LinearAdapter {
 public:
  void set_backend(model::ModelBackend* backend) { backend_ = backend; }
  absl::Status Forward(const Tensor& x, Tensor* y) override {
    ST_ASSIGN_OR_RETURN(x_, backend_->Download(x));
    ST_ASSIGN_OR_RETURN(y_, backend_->Download(*y));
    return absl::OkStatus();
  }
  absl::Status Backward(const Tensor& x, const Tensor& dy, Tensor* dx) override {
    ST_ASSIGN_OR_RETURN(dy_, backend_->Download(dy));
    return absl::OkStatus();
  }
  Tensor x_, y_, dy_;

 private:
  model::ModelBackend* backend_ = nullptr;
};

class RecordingObserver : public model::ModelObserver {
 public:
  explicit RecordingObserver(model::ModelBackend* backend) : backend_(backend) {}
  absl::Status OnLinearInput(int64_t layer, InputSite site, const Tensor& x) override {
    ++inputs_[{layer, site}];
    return absl::OkStatus();
  }
  absl::Status OnLinearOutputGrad(int64_t layer, LinearKind kind, const Tensor& dy) override {
    ST_ASSIGN_OR_RETURN((output_grads_[{layer, kind}]), backend_->Download(dy));
    return absl::OkStatus();
  }
  absl::Status OnLinearInputGrad(int64_t layer, InputSite site, const Tensor& dx) override {
    ST_ASSIGN_OR_RETURN((input_grads_[{layer, site}]), backend_->Download(dx));
    return absl::OkStatus();
  }
  std::map<std::pair<int64_t, InputSite>, int> inputs_;
  std::map<std::pair<int64_t, LinearKind>, Tensor> output_grads_;
  std::map<std::pair<int64_t, InputSite>, Tensor> input_grads_;

 private:
  model::ModelBackend* backend_;
};

class LlamaCudaTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    if (!sigmatune::testing::GpuAvailable(&why)) GTEST_SKIP() << why;
    dir_ = sigmatune::testing::RunfilePath("tests/testdata/llama/" + GetParam());
    auto golden = sigmatune::testing::LoadGolden(dir_ + "/expected.safetensors");
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(*golden);
  }

  // The checkpoint on a fresh CudaBackend of `dtype`, and the fixture's batch on its device
  // (cu_seqlens stays on the host, as the model wants it).
  void Load(DType dtype) {
    auto backend = model::CudaBackend::Create(0, dtype);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    auto loaded = LoadLlamaFromHfDirectory(dir_, *backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto m = model::LlamaModel::Create(loaded->config, loaded->weights, backend_.get());
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    for (const auto& [field, name] : std::vector<std::pair<Tensor*, const char*>>{
             {&batch_.input_ids, "input_ids"}, {&batch_.positions, "positions"}, {&batch_.labels, "labels"}}) {
      auto on_device = backend_->Upload(Expected(name));
      ASSERT_TRUE(on_device.ok()) << on_device.status();
      *field = std::move(*on_device);
    }
    batch_.cu_seqlens = Expected("cu_seqlens");
  }

  const Tensor& Expected(const std::string& name) {
    auto it = golden_.find(name);
    ST_CHECK(it != golden_.end()) << name;
    return it->second;
  }

  void ExpectClose(const Tensor& actual, const std::string& name) {
    const Tensor& expected = Expected(name);
    ASSERT_EQ(actual.shape(), expected.shape()) << name;
    EXPECT_LE(sigmatune::testing::RelativeError(actual, expected), kF32Tolerance) << name;
  }

  absl::StatusOr<Tensor> HostLogits() {
    ST_ASSIGN_OR_RETURN(const Tensor logits, model_->Logits(batch_));
    return backend_->Download(logits);
  }

  std::string dir_;
  std::map<std::string, Tensor> golden_;
  // Declared before the model and the batch, so that they (and their device tensors) go first.
  std::unique_ptr<model::CudaBackend> backend_;
  std::unique_ptr<model::LlamaModel> model_;
  model::Batch batch_;
};

TEST_P(LlamaCudaTest, F32LogitsMatchTransformers) {
  ASSERT_NO_FATAL_FAILURE(Load(DType::kF32));
  auto logits = HostLogits();
  ASSERT_TRUE(logits.ok()) << logits.status();
  ExpectClose(*logits, "logits");
}

TEST_P(LlamaCudaTest, F32ForwardBackwardMatchTransformersAtEveryLinear) {
  ASSERT_NO_FATAL_FAILURE(Load(DType::kF32));
  const int64_t layers = model_->config().num_layers;
  std::vector<std::array<ProbeAdapter, 7>> probes(layers);
  for (int64_t l = 0; l < layers; ++l) {
    for (LinearKind kind : model::kAllLinears) {
      ProbeAdapter& probe = probes[l][static_cast<int>(kind)];
      probe.set_backend(backend_.get());
      model_->SetAdapter(l, kind, &probe);
    }
  }
  RecordingObserver observer(backend_.get());
  auto result = model_->Forward(batch_, &observer);
  ASSERT_TRUE(result.ok()) << result.status();
  const double loss = GetAsDouble(Expected("loss"), 0);
  EXPECT_NEAR(result->loss, loss, kF32Tolerance * loss);
  EXPECT_EQ(observer.inputs_.size(), static_cast<size_t>(4 * layers));
  for (const auto& [key, count] : observer.inputs_) EXPECT_EQ(count, 1);

  auto dembed = model_->Backward(&observer);
  ASSERT_TRUE(dembed.ok()) << dembed.status();
  auto host_dembed = backend_->Download(*dembed);
  ASSERT_TRUE(host_dembed.ok()) << host_dembed.status();
  ExpectClose(*host_dembed, "hidden.grad");
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

TEST_P(LlamaCudaTest, Bf16LossAndArgmaxAgreeWithTransformers) {
  ASSERT_NO_FATAL_FAILURE(Load(DType::kBF16));
  auto result = model_->Forward(batch_);
  ASSERT_TRUE(result.ok()) << result.status();
  const double loss = GetAsDouble(Expected("loss"), 0);
  EXPECT_NEAR(result->loss, loss, kBf16Tolerance * loss);

  auto logits = HostLogits();
  ASSERT_TRUE(logits.ok()) << logits.status();
  const Tensor& expected = Expected("logits");
  ASSERT_EQ(logits->shape(), expected.shape());
  ASSERT_EQ(logits->dtype(), DType::kF32);
  const Tensor want = expected.To(DType::kF32);
  const int64_t tokens = want.dim(0), vocab = want.dim(1);
  // Two logits closer than bf16's resolution at this scale are a tie bf16 cannot break.
  double max_abs = 0;
  for (int64_t i = 0; i < want.numel(); ++i) max_abs = std::max(max_abs, std::fabs(double{want.data<float>()[i]}));
  const double tie = kBf16Tolerance * max_abs;
  int64_t agree = 0;
  std::string disagreements;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* got_row = logits->data<float>() + t * vocab;
    const float* want_row = want.data<float>() + t * vocab;
    const int64_t got_top = std::max_element(got_row, got_row + vocab) - got_row;
    const int64_t want_top = std::max_element(want_row, want_row + vocab) - want_row;
    if (got_top == want_top || want_row[want_top] - want_row[got_top] <= tie) {
      ++agree;
    } else {
      absl::StrAppend(&disagreements, "\n  token ", t, ": argmax ", got_top, " (transformers' logit ",
                      want_row[got_top], "), transformers ", want_top, " (", want_row[want_top], ")");
    }
  }
  EXPECT_GE(static_cast<double>(agree), kMinArgmaxAgreement * static_cast<double>(tokens))
      << agree << " of " << tokens << " tokens agree:" << disagreements;
}

INSTANTIATE_TEST_SUITE_P(TinyModels, LlamaCudaTest, ::testing::Values("tiny_gqa_tied", "tiny_mha_llama3"));

#else  // !SIGMATUNE_WITH_CUDA

TEST(LlamaCudaTest, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif

}  // namespace
}  // namespace sigmatune
