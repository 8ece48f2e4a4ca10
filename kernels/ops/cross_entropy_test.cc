#include "kernels/ops/cross_entropy.h"

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/finite_diff.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::NumericalGradient;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

Tensor Targets(int64_t n, int32_t vocab, int ignore_every, uint64_t seed) {
  const Tensor u = ::sigmatune::testing::RandomUniform({n}, DType::kF64, 0, vocab, seed);
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = (ignore_every > 0 && i % ignore_every == 1) ? kIgnoreIndex
                                                                                     : static_cast<int32_t>(u.data<double>()[i]);
  return Tensor::FromVector<int32_t>({n}, v);
}

TEST(CrossEntropyCpuTest, MatchesTorchGolden) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/nn/cross_entropy.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  const Tensor& hidden = golden->at("hidden");
  const Tensor& weight = golden->at("weight");
  const Tensor& targets = golden->at("targets");
  for (int64_t chunk : {1, 7, 64, 1024}) {  // 111 tokens: chunk sizes that do and do not divide it
    SCOPED_TRACE(chunk);
    CrossEntropyOptions options;
    options.chunk_tokens = chunk;
    auto stats = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->count, 111 - 23);  // every 5th of 111 ignored
    EXPECT_NEAR(stats->loss, golden->at("loss_f64").data<double>()[0], 1e-5);
    Tensor dh = Tensor::Empty(hidden.shape(), DType::kF32), dw = Tensor::Zeros(weight.shape(), DType::kF32);
    ASSERT_TRUE(
        cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, options, 1.0 / stats->count, &dh, &dw).ok());
    EXPECT_TRUE(AllClose(dh, golden->at("dhidden_f64"), Tolerance{1e-6, 1e-4}));
    EXPECT_TRUE(AllClose(dw, golden->at("dweight_f64"), Tolerance{1e-6, 1e-4}));
  }
  const Tensor& logits = golden->at("logits");
  auto stats = cpu::CrossEntropyForward(logits, golden->at("logits_targets"), kIgnoreIndex);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->count, 5);
  EXPECT_NEAR(stats->loss, golden->at("logits_loss_f64").data<double>()[0], 1e-6);
  Tensor dl = Tensor::Empty(logits.shape(), DType::kF32);
  ASSERT_TRUE(cpu::CrossEntropyBackward(logits, golden->at("logits_targets"), kIgnoreIndex, 0.2, &dl).ok());
  EXPECT_TRUE(AllClose(dl, golden->at("dlogits_f64"), Tolerance{1e-7, 1e-5}));
}

TEST(CrossEntropyCpuTest, BackwardMatchesFiniteDifferences) {
  const Tensor hidden = RandomNormal({7, 5}, DType::kF64, 1);
  const Tensor weight = RandomNormal({13, 5}, DType::kF64, 2);
  const Tensor targets = Targets(7, 13, 3, 3);
  CrossEntropyOptions options;
  options.chunk_tokens = 3;
  auto loss_h = [&](const Tensor& h) { return cpu::LmHeadCrossEntropyForward(h, weight, targets, options)->loss; };
  auto loss_w = [&](const Tensor& w) { return cpu::LmHeadCrossEntropyForward(hidden, w, targets, options)->loss; };
  auto stats = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->count, 5);
  Tensor dh = Tensor::Empty(hidden.shape(), DType::kF64), dw = Tensor::Zeros(weight.shape(), DType::kF64);
  ASSERT_TRUE(cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, options, 1.0 / stats->count, &dh, &dw).ok());
  EXPECT_TRUE(AllClose(dh, NumericalGradient(loss_h, hidden), Tolerance{1e-8, 1e-7}));
  EXPECT_TRUE(AllClose(dw, NumericalGradient(loss_w, weight), Tolerance{1e-8, 1e-7}));
  // The plain form agrees with the chunked one.
  const Tensor logits = RandomNormal({7, 13}, DType::kF64, 4);
  auto loss_l = [&](const Tensor& l) { return cpu::CrossEntropyForward(l, targets, kIgnoreIndex)->loss; };
  Tensor dl = Tensor::Empty(logits.shape(), DType::kF64);
  ASSERT_TRUE(cpu::CrossEntropyBackward(logits, targets, kIgnoreIndex, 1.0 / 5, &dl).ok());
  EXPECT_TRUE(AllClose(dl, NumericalGradient(loss_l, logits), Tolerance{1e-8, 1e-7}));
}

TEST(CrossEntropyCpuTest, ChunkingDoesNotChangeResultsAtVocab4097) {
  const Tensor hidden = RandomNormal({111, 8}, DType::kF32, 5);
  const Tensor weight = RandomNormal({4097, 8}, DType::kF32, 6);
  const Tensor targets = Targets(111, 4097, 4, 7);
  CrossEntropyOptions whole;
  whole.chunk_tokens = 111;
  auto ref = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, whole);
  ASSERT_TRUE(ref.ok());
  Tensor ref_dh = Tensor::Empty(hidden.shape(), DType::kF32), ref_dw = Tensor::Zeros(weight.shape(), DType::kF32);
  ASSERT_TRUE(cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, whole, 0.5, &ref_dh, &ref_dw).ok());
  for (int64_t chunk : {1, 7, 50, 4097}) {
    SCOPED_TRACE(chunk);
    CrossEntropyOptions options;
    options.chunk_tokens = chunk;
    auto stats = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options);
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->count, ref->count);
    EXPECT_NEAR(stats->loss_sum, ref->loss_sum, 1e-6 * std::fabs(ref->loss_sum)  /* f32 GEMM blocking differs */);
    Tensor dh = Tensor::Empty(hidden.shape(), DType::kF32), dw = Tensor::Zeros(weight.shape(), DType::kF32);
    ASSERT_TRUE(cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, options, 0.5, &dh, &dw).ok());
    EXPECT_TRUE(AllClose(dh, ref_dh, Tolerance{1e-6, 1e-5}));
    EXPECT_TRUE(AllClose(dw, ref_dw, Tolerance{1e-6, 1e-5}));
  }
}

TEST(CrossEntropyCpuTest, ForwardFormsTheUnitHiddenGradient) {
  // dhidden_unit from the forward, scaled, is the backward's dhidden; the loss is unchanged; a
  // context (rows split over threads, logits in its workspace) changes no bit.
  CpuContext ctx(2);
  for (DType dt : {DType::kF32, DType::kF64}) {
    for (int64_t chunk : {1, 7, 1024}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(dt) << " chunk " << chunk);
      const Tensor hidden = RandomNormal({111, 8}, dt, 14), weight = RandomNormal({4097, 8}, dt, 15);
      const Tensor targets = Targets(111, 4097, 4, 16);
      CrossEntropyOptions options;
      options.chunk_tokens = chunk;
      auto plain = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options);
      ASSERT_TRUE(plain.ok());
      Tensor unit = RandomNormal(hidden.shape(), dt, 17), unit_ctx = RandomNormal(hidden.shape(), dt, 18);
      auto stats = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options, &unit);
      auto stats_ctx = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options, &unit_ctx, &ctx);
      ASSERT_TRUE(stats.ok() && stats_ctx.ok());
      EXPECT_EQ(stats->count, plain->count);
      EXPECT_EQ(stats->loss_sum, plain->loss_sum);
      EXPECT_EQ(stats_ctx->loss_sum, plain->loss_sum);
      EXPECT_TRUE(AllClose(unit_ctx, unit, Tolerance{0, 0}));
      const double scale = 0.37;
      Tensor dh = Tensor::Empty(hidden.shape(), dt), dh_ctx = Tensor::Empty(hidden.shape(), dt);
      ASSERT_TRUE(cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, options, scale, &dh, nullptr).ok());
      ASSERT_TRUE(
          cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, options, scale, &dh_ctx, nullptr, &ctx).ok());
      EXPECT_TRUE(AllClose(dh_ctx, dh, Tolerance{0, 0}));
      Tensor scaled = unit.To(DType::kF64);
      for (int64_t i = 0; i < scaled.numel(); ++i) scaled.data<double>()[i] *= scale;
      const Tolerance tol = dt == DType::kF32 ? Tolerance{1e-6, 1e-5} : Tolerance{1e-15, 1e-12};
      EXPECT_TRUE(AllClose(dh, scaled, tol));
      // Ignored rows are zero.
      EXPECT_EQ(unit.To(DType::kF64).data<double>()[1 * 8], 0.0);
    }
  }
  Tensor wrong = Tensor::Empty({111, 9}, DType::kF32);
  auto s = cpu::LmHeadCrossEntropyForward(RandomNormal({111, 8}, DType::kF32, 1), RandomNormal({50, 8}, DType::kF32, 2),
                                          Targets(111, 50, 4, 3), CrossEntropyOptions{}, &wrong);
  EXPECT_NE(s.status().message().find("dhidden_unit must have shape"), std::string::npos) << s.status();
}

TEST(CrossEntropyCpuTest, AllIgnoredIsZeroLossWithCountZero) {
  const Tensor hidden = RandomNormal({7, 4}, DType::kF32, 8);
  const Tensor weight = RandomNormal({11, 4}, DType::kF32, 9);
  const Tensor targets = Tensor::FromVector<int32_t>({7}, std::vector<int32_t>(7, kIgnoreIndex));
  auto stats = cpu::LmHeadCrossEntropyForward(hidden, weight, targets, CrossEntropyOptions{});
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->count, 0);
  EXPECT_EQ(stats->loss, 0.0);
  EXPECT_EQ(stats->loss_sum, 0.0);
  Tensor dh = RandomNormal(hidden.shape(), DType::kF32, 10), dw = Tensor::Zeros(weight.shape(), DType::kF32);
  ASSERT_TRUE(cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, CrossEntropyOptions{}, 1.0, &dh, &dw).ok());
  EXPECT_TRUE(AllClose(dh, Tensor::Zeros(hidden.shape(), DType::kF32), Tolerance{0, 0}));
  EXPECT_TRUE(AllClose(dw, Tensor::Zeros(weight.shape(), DType::kF32), Tolerance{0, 0}));
  // A custom ignore_index.
  const Tensor t2 = Tensor::FromVector<int32_t>({7}, {0, 1, 2, 3, 4, 5, 6});
  CrossEntropyOptions options;
  options.ignore_index = 3;
  stats = cpu::LmHeadCrossEntropyForward(hidden, weight, t2, options);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->count, 6);
}

TEST(CrossEntropyCpuTest, BadInputsGetClearErrors) {
  const Tensor hidden = Tensor::Zeros({4, 3}, DType::kF32);
  const Tensor weight = Tensor::Zeros({5, 3}, DType::kF32);
  auto s = cpu::LmHeadCrossEntropyForward(hidden, weight, Tensor::FromVector<int32_t>({4}, {0, -100, 5, -1}),
                                          CrossEntropyOptions{});
  EXPECT_NE(s.status().message().find("targets[2] = 5 is outside [0, 5)"), std::string::npos) << s.status();
  CrossEntropyOptions zero;
  zero.chunk_tokens = 0;
  s = cpu::LmHeadCrossEntropyForward(hidden, weight, Tensor::Zeros({4}, DType::kI32), zero);
  EXPECT_NE(s.status().message().find("chunk_tokens must be positive"), std::string::npos) << s.status();
  s = cpu::LmHeadCrossEntropyForward(hidden, Tensor::Zeros({5, 2}, DType::kF32), Tensor::Zeros({4}, DType::kI32),
                                     CrossEntropyOptions{});
  EXPECT_NE(s.status().message().find("lm_head weight must have shape"), std::string::npos) << s.status();
}

#if SIGMATUNE_WITH_CUDA
TEST(CrossEntropyCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t tokens : {1, 7, 111}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      for (int64_t chunk : {1, 50, 4096}) {
        SCOPED_TRACE(::testing::Message() << tokens << " " << DTypeName(dt) << " chunk " << chunk);
        const Tensor hidden = RandomNormal({tokens, 16}, dt, 11), weight = RandomNormal({4097, 16}, dt, 12);
        const Tensor targets = Targets(tokens, 4097, 3, 13);
        CrossEntropyOptions options;
        options.chunk_tokens = chunk;
        const Tensor h32 = hidden.To(DType::kF32), w32 = weight.To(DType::kF32);
        auto ref = cpu::LmHeadCrossEntropyForward(h32, w32, targets, options);
        ASSERT_TRUE(ref.ok());
        Tensor ref_dh = Tensor::Empty(hidden.shape(), DType::kF32), ref_dw = Tensor::Zeros(weight.shape(), DType::kF32);
        const double scale = ref->count > 0 ? 1.0 / ref->count : 0.0;
        ASSERT_TRUE(cpu::LmHeadCrossEntropyBackward(h32, w32, targets, options, scale, &ref_dh, &ref_dw).ok());
        auto dh_in = ctx->ToDevice(hidden), dw_in = ctx->ToDevice(weight), dt_in = ctx->ToDevice(targets);
        auto dh = ctx->Allocate(hidden.shape(), DType::kF32), dw = ctx->Zeros(weight.shape(), DType::kF32);
        ASSERT_TRUE(dh_in.ok() && dw_in.ok() && dt_in.ok() && dh.ok() && dw.ok());
        auto stats = cuda::LmHeadCrossEntropyForward(*ctx, *dh_in, *dw_in, *dt_in, options);
        ASSERT_TRUE(stats.ok()) << stats.status();
        EXPECT_EQ(stats->count, ref->count);
        EXPECT_NEAR(stats->loss, ref->loss, 1e-4 * (1 + std::fabs(ref->loss)));
        ASSERT_TRUE(cuda::LmHeadCrossEntropyBackward(*ctx, *dh_in, *dw_in, *dt_in, options, scale, &*dh, &*dw).ok());
        auto hdh = ctx->ToHost(*dh), hdw = ctx->ToHost(*dw);
        ASSERT_TRUE(hdh.ok() && hdw.ok());
        const Tolerance tol = dt == DType::kBF16 ? Tolerance{1e-3, 2e-2} : Tolerance{1e-6, 1e-4};
        EXPECT_TRUE(AllClose(*hdh, ref_dh, tol));
        EXPECT_TRUE(AllClose(*hdw, ref_dw, tol));
        // The forward's unit hidden gradient, scaled, is the backward's dhidden.
        auto unit = ctx->Allocate(hidden.shape(), DType::kF32);
        ASSERT_TRUE(unit.ok());
        auto stats_unit = cuda::LmHeadCrossEntropyForward(*ctx, *dh_in, *dw_in, *dt_in, options, &*unit);
        ASSERT_TRUE(stats_unit.ok()) << stats_unit.status();
        EXPECT_EQ(stats_unit->loss_sum, stats->loss_sum);
        auto hunit = ctx->ToHost(*unit);
        ASSERT_TRUE(hunit.ok());
        Tensor scaled = hunit->To(DType::kF64);
        for (int64_t i = 0; i < scaled.numel(); ++i) scaled.data<double>()[i] *= scale;
        EXPECT_TRUE(AllClose(scaled, ref_dh, tol));
      }
    }
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
