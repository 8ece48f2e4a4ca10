// The PEFT methods against HF PEFT on the tiny LLaMA checkpoints (tools/golden/make_peft_fixtures.py):
//  - CorDA's calibration covariances from one packed batch equal PEFT's sample-by-sample ones;
//  - PiSSA's and KaSA's residual base weights and PiSSA's adapter products s*B*A equal PEFT's
//    (relative Frobenius error <= 1e-4; products, not factors, since singular vectors carry signs);
//  - CorDA IPM/KPM: PEFT inverts the damped covariance in fp32, so its own result is off the exact
//    answer by up to a few 1e-4 on these layers (cond(C_d) ~ 1e3). The fixture holds that exact
//    answer (PEFT's algorithm replayed in float64); ours, from our own f32 covariances, must be at
//    least as close to it as PEFT's is (and within 1e-4 where PEFT is), and our inverse-free
//    algorithm run in f64 on PEFT's covariance must reproduce it to 1e-9.
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/peft/covariance_collector.h"
#include "kernels/peft/init.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "worker/model/llama_loader.h"

namespace sigmatune {
namespace {

using model::LinearKind;
using peft::Method;
using ::sigmatune::testing::RelativeError;

class PeftGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto loaded = LoadLlamaFromHfDirectory(testing::RunfilePath("tests/testdata/llama/" + GetParam()), backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto golden = testing::LoadGolden(testing::RunfilePath("tests/testdata/peft/" + GetParam() + ".safetensors"));
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(*golden);
    auto m = model::LlamaModel::Create(loaded->config, loaded->weights, &backend_);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    for (int64_t l = 0; l < model_->config().num_layers; ++l) {
      for (LinearKind kind : model::kAllLinears) linears_.push_back({l, kind});
    }
  }

  // CorDA statistics over the fixture's calibration samples, packed into one batch.
  peft::CovarianceSet Calibrate() {
    const Tensor& ids = golden_.at("calib_ids");
    const Tensor& cu = golden_.at("calib_cu_seqlens");
    std::vector<std::vector<int32_t>> samples;
    for (int64_t s = 0; s + 1 < cu.numel(); ++s) {
      samples.emplace_back(ids.data<int32_t>() + cu.data<int32_t>()[s], ids.data<int32_t>() + cu.data<int32_t>()[s + 1]);
    }
    auto batch = model::PackCausalLmBatch(backend_, samples);
    EXPECT_TRUE(batch.ok()) << batch.status();
    auto collector = peft::CovarianceCollector::Create(&backend_, model_->config(), peft::SitesOf(linears_),
                                                       peft::Accumulation::kF32);
    EXPECT_TRUE(collector.ok()) << collector.status();
    EXPECT_TRUE((*collector)->BeginBatch(batch->cu_seqlens).ok());
    const absl::Status observed = model_->Observe(*batch, collector->get());
    EXPECT_TRUE(observed.ok()) << observed;
    auto set = (*collector)->Finish();
    EXPECT_TRUE(set.ok()) << set.status();
    return std::move(*set);
  }

  // s * B * A in the factors' dtype.
  Tensor Product(const peft::AdapterInit& init) {
    Tensor delta = Tensor::Zeros({init.b.dim(0), init.a.dim(1)}, init.a.dtype());
    EXPECT_TRUE(
        backend_.Matmul(init.b, kernels::Transpose::kNo, init.a, kernels::Transpose::kNo, init.scale, 0.0, &delta).ok());
    return delta;
  }

  model::CpuBackend backend_;
  std::map<std::string, Tensor> golden_;
  std::unique_ptr<model::LlamaModel> model_;
  std::vector<std::pair<int64_t, LinearKind>> linears_;
};

TEST_P(PeftGoldenTest, CovariancesMatchPeft) {
  const peft::CovarianceSet set = Calibrate();
  EXPECT_EQ(set.samples, golden_.at("calib_cu_seqlens").numel() - 1);
  // 4 matrices per layer where PEFT keeps 7.
  EXPECT_EQ(static_cast<int64_t>(set.covariance.size()), 4 * model_->config().num_layers);
  for (const auto& [layer, kind] : linears_) {
    const std::string name = model::LinearName(layer, kind);
    SCOPED_TRACE(name);
    const Tensor& c = set.covariance.at({layer, model::InputSiteOf(kind)});
    EXPECT_LE(RelativeError(c, golden_.at(name + ".covariance")), 1e-5);
  }
}

TEST_P(PeftGoldenTest, InitialisationsMatchPeft) {
  const peft::CovarianceSet set = Calibrate();
  double worst_ours = 0.0, worst_peft = 0.0;
  std::map<peft::SiteKey, Tensor> damped;
  for (const auto& [key, c] : set.covariance) {
    auto d = peft::DampCovariance(backend_, peft::SiteTensorName(key), c);
    ASSERT_TRUE(d.ok()) << d.status();
    damped[key] = d->c_d;
  }
  for (Method method : {Method::kPissa, Method::kCordaIpm, Method::kCordaKpm, Method::kKasa}) {
    const std::string method_name(peft::MethodName(method));
    peft::AdapterOptions options;
    options.method = method;
    options.rank = 4;
    options.alpha = 8.0;
    for (const auto& [layer, kind] : linears_) {
      const std::string name = model::LinearName(layer, kind);
      SCOPED_TRACE(name + " " + method_name);
      const Tensor& w = model_->weights().layers[layer].linear(kind);
      const Tensor* cov = peft::NeedsCovariance(method) ? &damped.at({layer, model::InputSiteOf(kind)}) : nullptr;
      auto init = peft::InitializeAdapter(backend_, options, name, w, cov, /*seed=*/7);
      ASSERT_TRUE(init.ok()) << init.status();
      if (method == Method::kKasa) {  // B = 0: PEFT's random A and d are not comparable
        EXPECT_LE(RelativeError(init->w_res, golden_.at(name + ".kasa.residual")), 1e-4);
        continue;
      }
      const Tensor delta = Product(*init);
      const Tensor& peft_delta = golden_.at(name + "." + method_name + ".delta");
      if (!peft::NeedsCovariance(method)) {
        EXPECT_LE(RelativeError(init->w_res, golden_.at(name + "." + method_name + ".residual")), 1e-4);
        EXPECT_LE(RelativeError(delta, peft_delta), 1e-4);
        continue;
      }
      const Tensor& exact = golden_.at(name + "." + method_name + ".delta_f64");
      const double ours = RelativeError(delta, exact), theirs = RelativeError(peft_delta, exact);
      EXPECT_LE(ours, std::max(1e-4, 1.5 * theirs)) << "PEFT's own error: " << theirs;
      worst_ours = std::max(worst_ours, ours);
      worst_peft = std::max(worst_peft, theirs);
      // The residual is W minus the product, so it inherits the same (absolute) error.
      Tensor w_minus_exact = w.To(DType::kF64);
      ASSERT_TRUE(backend_.Axpy(-1.0, exact, &w_minus_exact).ok());
      EXPECT_LE(RelativeError(init->w_res, w_minus_exact), std::max(1e-4, 1.5 * theirs));

      // Our algorithm in f64 on PEFT's own covariance reproduces the exact answer.
      const Tensor c64 = golden_.at(name + ".covariance").To(DType::kF64);
      auto damped64 = peft::DampCovariance(backend_, name, c64);
      ASSERT_TRUE(damped64.ok()) << damped64.status();
      auto init64 = peft::InitializeAdapter(backend_, options, name, w.To(DType::kF64), &damped64->c_d, 7);
      ASSERT_TRUE(init64.ok()) << init64.status();
      EXPECT_LE(RelativeError(Product(*init64), exact), 1e-9);
    }
  }
  std::printf("CorDA worst relative error vs the exact answer: sigmatune f32 %.2e, PEFT f32 %.2e\n", worst_ours,
              worst_peft);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, PeftGoldenTest, ::testing::Values("tiny_gqa_tied", "tiny_mha_llama3"));

}  // namespace
}  // namespace sigmatune
