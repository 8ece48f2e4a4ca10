#include "kernels/peft/covariance_collector.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::peft {
namespace {

using model::InputSite;
using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::Tolerance;

model::LlamaConfig SmallConfig() {
  model::LlamaConfig c;
  c.vocab_size = 11;
  c.hidden_size = 6;
  c.intermediate_size = 10;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 4;  // attn_out width 8
  return c;
}

// PEFT's computation, sample by sample, in double: C = (1/N) sum_s (X_s/|max X_s|)^T (X_s/|max X_s|).
Tensor Reference(const std::vector<Tensor>& batches, const std::vector<std::vector<int32_t>>& cus) {
  const int64_t n = batches[0].dim(1);
  Tensor c = Tensor::Zeros({n, n}, DType::kF64);
  int64_t samples = 0;
  for (size_t b = 0; b < batches.size(); ++b) {
    const Tensor x = batches[b].To(DType::kF64);
    const std::vector<int32_t>& cu = cus[b];
    for (size_t s = 0; s + 1 < cu.size(); ++s) {
      if (cu[s + 1] == cu[s]) continue;
      ++samples;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
        for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x.data<double>()[t * n + i]);
      const double mu = std::abs(mx);
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j)
            c.data<double>()[i * n + j] += x.data<double>()[t * n + i] * x.data<double>()[t * n + j] / (mu * mu);
    }
  }
  for (int64_t i = 0; i < n * n; ++i) c.data<double>()[i] /= static_cast<double>(samples);
  return c;
}

TEST(SitesTest, QkvAndGateUpShareOneInput) {
  using model::LinearKind;
  const std::vector<SiteKey> sites =
      SitesOf({{0, LinearKind::kQ}, {0, LinearKind::kK}, {0, LinearKind::kV}, {0, LinearKind::kO},
               {0, LinearKind::kGate}, {0, LinearKind::kUp}, {0, LinearKind::kDown}, {1, LinearKind::kV}});
  ASSERT_EQ(sites.size(), 5u);
  EXPECT_EQ(SiteTensorName(sites[0]), "model.layers.0.attn_in");
  EXPECT_EQ(SiteTensorName(sites[3]), "model.layers.0.mlp_act");
  EXPECT_EQ(SiteTensorName(sites[4]), "model.layers.1.attn_in");
}

TEST(CovarianceCollectorTest, MatchesPerSampleReferenceWithPackingAndPadding) {
  model::CpuBackend backend;
  for (Accumulation acc : {Accumulation::kF32, Accumulation::kF64}) {
    auto collector = CovarianceCollector::Create(&backend, SmallConfig(),
                                                 {{0, InputSite::kAttnIn}, {1, InputSite::kMlpAct}}, acc);
    ASSERT_TRUE(collector.ok()) << collector.status();
    // Two batches: 3 samples (one empty) + 2 padding rows; then 1 sample.
    const std::vector<std::vector<int32_t>> cus = {{0, 4, 4, 9, 12}, {0, 7}};
    const std::vector<int64_t> rows = {14, 7};
    std::vector<Tensor> attn_in, mlp_act;
    for (size_t b = 0; b < cus.size(); ++b) {
      attn_in.push_back(RandomNormal({rows[b], 6}, DType::kF32, 10 + b));
      mlp_act.push_back(RandomNormal({rows[b], 10}, DType::kF32, 20 + b));
      // A sample whose entries are all negative: mu = |max| is then the smallest magnitude.
      if (b == 1) {
        for (int64_t i = 0; i < 7 * 6; ++i) attn_in[b].data<float>()[i] = -std::abs(attn_in[b].data<float>()[i]) - 0.1f;
      }
      ASSERT_TRUE((*collector)->BeginBatch(Tensor::FromVector<int32_t>({int64_t(cus[b].size())}, cus[b])).ok());
      ASSERT_TRUE((*collector)->OnLinearInput(0, InputSite::kAttnIn, attn_in[b]).ok());
      ASSERT_TRUE((*collector)->OnLinearInput(0, InputSite::kMlpIn, attn_in[b]).ok());  // not requested: ignored
      ASSERT_TRUE((*collector)->OnLinearInput(1, InputSite::kMlpAct, mlp_act[b]).ok());
    }
    auto set = (*collector)->Finish();
    ASSERT_TRUE(set.ok()) << set.status();
    EXPECT_EQ(set->samples, 4);  // 3 + 1: the empty segment is not a sample
    EXPECT_EQ(set->tokens, 12 + 7);
    ASSERT_EQ(set->covariance.size(), 2u);
    // Padding rows (12, 13 of batch 0) must not count: drop them from the reference input.
    std::vector<Tensor> in_no_pad = {attn_in[0].Slice(0, 0, 12).Contiguous(), attn_in[1]};
    std::vector<Tensor> act_no_pad = {mlp_act[0].Slice(0, 0, 12).Contiguous(), mlp_act[1]};
    const Tolerance tol = acc == Accumulation::kF64 ? Tolerance{1e-6, 1e-12} : Tolerance{1e-5, 1e-6};
    const Tensor& c0 = set->covariance.at({0, InputSite::kAttnIn});
    EXPECT_EQ(c0.dtype(), acc == Accumulation::kF64 ? DType::kF64 : DType::kF32);
    EXPECT_TRUE(AllClose(c0, Reference(in_no_pad, cus), tol));
    EXPECT_TRUE(AllClose(set->covariance.at({1, InputSite::kMlpAct}), Reference(act_no_pad, cus), tol));
    // Exactly symmetric.
    const Tensor c64 = c0.To(DType::kF64);
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 6; ++j) EXPECT_EQ(c64.data<double>()[i * 6 + j], c64.data<double>()[j * 6 + i]);
  }
}

TEST(CovarianceCollectorTest, ScalingTheDataLeavesTheCovarianceUnchanged) {
  model::CpuBackend backend;
  Tensor x = RandomNormal({9, 6}, DType::kF64, 3);
  Tensor x3 = x.Contiguous();
  for (int64_t i = 0; i < x3.numel(); ++i) x3.data<double>()[i] *= 3.0;
  std::vector<Tensor> out;
  for (const Tensor* in : {&x, &x3}) {
    auto c = CovarianceCollector::Create(&backend, SmallConfig(), {{0, InputSite::kAttnIn}}, Accumulation::kF64);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->BeginBatch(Tensor::FromVector<int32_t>({3}, {0, 4, 9})).ok());
    ASSERT_TRUE((*c)->OnLinearInput(0, InputSite::kAttnIn, *in).ok());
    auto set = (*c)->Finish();
    ASSERT_TRUE(set.ok()) << set.status();
    out.push_back(set->covariance.at({0, InputSite::kAttnIn}));
  }
  EXPECT_TRUE(AllClose(out[0], out[1], Tolerance{1e-14, 1e-14}));
}

TEST(CovarianceCollectorTest, ReportsBadSamplesAndMissingLayersClearly) {
  model::CpuBackend backend;
  const Tensor cu = Tensor::FromVector<int32_t>({3}, {0, 3, 5});
  {  // A NaN in one sample, an all-zero sample: both counted, reported once at Finish.
    auto c = CovarianceCollector::Create(&backend, SmallConfig(), {{0, InputSite::kAttnIn}}, Accumulation::kF32);
    ASSERT_TRUE(c.ok());
    Tensor x = RandomNormal({5, 6}, DType::kF32, 4);
    x.data<float>()[2] = std::numeric_limits<float>::quiet_NaN();
    for (int i = 18; i < 30; ++i) x.data<float>()[i] = 0.0f;
    ASSERT_TRUE((*c)->BeginBatch(cu).ok());
    ASSERT_TRUE((*c)->OnLinearInput(0, InputSite::kAttnIn, x).ok());
    EXPECT_ERROR_MENTIONS((*c)->Finish().status(), "2 (layer input, sample) pairs");
  }
  {  // A requested layer the forward pass never reaches.
    auto c = CovarianceCollector::Create(&backend, SmallConfig(), {{0, InputSite::kAttnIn}, {1, InputSite::kAttnIn}},
                                         Accumulation::kF32);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->BeginBatch(cu).ok());
    ASSERT_TRUE((*c)->OnLinearInput(0, InputSite::kAttnIn, RandomNormal({5, 6}, DType::kF32, 5)).ok());
    EXPECT_ERROR_MENTIONS((*c)->Finish().status(), "model.layers.1.attn_in was observed in 0 of 1");
  }
  {  // No samples.
    auto c = CovarianceCollector::Create(&backend, SmallConfig(), {{0, InputSite::kAttnIn}}, Accumulation::kF32);
    ASSERT_TRUE(c.ok());
    EXPECT_ERROR_MENTIONS((*c)->Finish().status(), "no calibration samples");
  }
  {  // Misuse and bad arguments.
    EXPECT_ERROR_MENTIONS(
        CovarianceCollector::Create(&backend, SmallConfig(), {{2, InputSite::kAttnIn}}, Accumulation::kF32).status(),
        "layer 2");
    auto c = CovarianceCollector::Create(&backend, SmallConfig(), {{0, InputSite::kAttnIn}}, Accumulation::kF32);
    ASSERT_TRUE(c.ok());
    EXPECT_ERROR_MENTIONS((*c)->OnLinearInput(0, InputSite::kAttnIn, RandomNormal({5, 6}, DType::kF32, 6)),
                          "BeginBatch");
    EXPECT_ERROR_MENTIONS((*c)->BeginBatch(Tensor::FromVector<int32_t>({3}, {0, 4, 2})), "non-decreasing");
    ASSERT_TRUE((*c)->BeginBatch(cu).ok());
    EXPECT_ERROR_MENTIONS((*c)->OnLinearInput(0, InputSite::kAttnIn, RandomNormal({5, 7}, DType::kF32, 6)),
                          "width 7");
  }
}

}  // namespace
}  // namespace sigmatune::peft
