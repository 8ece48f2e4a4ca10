#include "worker/train/schedule.h"

#include <cmath>
#include <cstdint>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/status.h"

namespace sigmatune::train {
namespace {

using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RunfilePath;

constexpr ScheduleKind kKinds[] = {ScheduleKind::kConstant, ScheduleKind::kLinear, ScheduleKind::kCosine};

ScheduleOptions Options(ScheduleKind kind, int64_t warmup, int64_t total) {
  ScheduleOptions o;
  o.kind = kind;
  o.warmup_steps = warmup;
  o.total_steps = total;
  return o;
}

// The factors transformers' LambdaLR gave at steps 0..n-1 (tools/golden/make_optim_fixtures.py).
TEST(ScheduleTest, MatchesTransformers) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/optim/adamw.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  struct Case {
    const char* prefix;
    int64_t warmup, total;
  };
  for (const Case& c : {Case{"schedule", 3, 10}, Case{"schedule_w0", 0, 4}}) {
    for (ScheduleKind kind : kKinds) {
      const std::string key = std::string(c.prefix) + "." + std::string(ScheduleKindName(kind));
      SCOPED_TRACE(key);
      const Tensor& want = golden->at(key);
      ASSERT_GT(want.numel(), c.total + 1);  // the fixture goes past the end
      for (int64_t step = 0; step < want.numel(); ++step) {
        SCOPED_TRACE(::testing::Message() << "step " << step);
        const double got = LearningRateFactor(Options(kind, c.warmup, c.total), step);
        if (kind == ScheduleKind::kCosine && step > c.total) {
          // Deliberately 0 past the end, where transformers' cosine rises again.
          EXPECT_EQ(got, 0.0);
          EXPECT_GT(GetAsDouble(want, step), 0.0);
          continue;
        }
        EXPECT_NEAR(got, GetAsDouble(want, step), 1e-12);
      }
    }
  }
}

TEST(ScheduleTest, WarmupStartsAtZeroAndRisesLinearly) {
  for (ScheduleKind kind : kKinds) {
    SCOPED_TRACE(ScheduleKindName(kind));
    const ScheduleOptions o = Options(kind, 4, 20);
    EXPECT_EQ(LearningRateFactor(o, 0), 0.0);  // HF's first step with warmup uses lr 0
    EXPECT_EQ(LearningRateFactor(o, 1), 0.25);
    EXPECT_EQ(LearningRateFactor(o, 2), 0.5);
    EXPECT_EQ(LearningRateFactor(o, 3), 0.75);
    EXPECT_EQ(LearningRateFactor(o, 4), 1.0);  // the peak, right after warmup
  }
}

TEST(ScheduleTest, EdgeCases) {
  // No warmup: the first step is at the full rate.
  for (ScheduleKind kind : kKinds) {
    SCOPED_TRACE(ScheduleKindName(kind));
    EXPECT_EQ(LearningRateFactor(Options(kind, 0, 10), 0), 1.0);
  }
  // A run of no decay steps (total == warmup): HF's max(1, total - warmup) gives linear 0 and cosine 1.
  EXPECT_EQ(LearningRateFactor(Options(ScheduleKind::kConstant, 0, 0), 0), 1.0);
  EXPECT_EQ(LearningRateFactor(Options(ScheduleKind::kLinear, 0, 0), 0), 0.0);
  EXPECT_EQ(LearningRateFactor(Options(ScheduleKind::kCosine, 0, 0), 0), 1.0);
  // The last step of a run and beyond: linear and cosine reach 0 and stay there.
  for (ScheduleKind kind : {ScheduleKind::kLinear, ScheduleKind::kCosine}) {
    SCOPED_TRACE(ScheduleKindName(kind));
    const ScheduleOptions o = Options(kind, 2, 10);
    EXPECT_GT(LearningRateFactor(o, 9), 0.0);
    for (int64_t step : {10, 11, 12, 15, 18, 19, 100, 1000000}) {
      EXPECT_EQ(LearningRateFactor(o, step), 0.0) << "step " << step;
    }
  }
  EXPECT_EQ(LearningRateFactor(Options(ScheduleKind::kConstant, 2, 10), 1000), 1.0);
  // Linear is linear; cosine is symmetric about the middle of its decay.
  EXPECT_DOUBLE_EQ(LearningRateFactor(Options(ScheduleKind::kLinear, 2, 10), 6), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateFactor(Options(ScheduleKind::kCosine, 2, 10), 6), 0.5);
  EXPECT_NEAR(LearningRateFactor(Options(ScheduleKind::kCosine, 2, 10), 4) +
                  LearningRateFactor(Options(ScheduleKind::kCosine, 2, 10), 8),
              1.0, 1e-15);
  // Warmup longer than the run (a misconfiguration HF accepts): warmup factors, then HF's values.
  EXPECT_EQ(LearningRateFactor(Options(ScheduleKind::kLinear, 5, 3), 4), 0.8);
  EXPECT_EQ(LearningRateFactor(Options(ScheduleKind::kLinear, 5, 3), 5), 0.0);
}

TEST(ScheduleTest, WarmupStepsFor) {
  EXPECT_EQ(WarmupStepsFor(7, 0.5, 100), 7);  // explicit steps win
  EXPECT_EQ(WarmupStepsFor(0, 0.1, 100), 10);
  EXPECT_EQ(WarmupStepsFor(0, 0.1, 101), 11);  // ceil(10.1)
  EXPECT_EQ(WarmupStepsFor(0, 0.03, 1000), 30);
  EXPECT_EQ(WarmupStepsFor(0, 0.0, 100), 0);
  EXPECT_EQ(WarmupStepsFor(0, 0.05, 0), 0);
}

TEST(ScheduleTest, ParseAndValidate) {
  for (ScheduleKind kind : kKinds) {
    auto parsed = ParseScheduleKind(ScheduleKindName(kind));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_ERROR_MENTIONS(ParseScheduleKind("Cosine").status(), "'Cosine'", "constant, linear or cosine");
  EXPECT_ERROR_MENTIONS(ParseScheduleKind("").status(), "unknown learning-rate schedule");
  EXPECT_ERROR_MENTIONS(ValidateScheduleOptions(Options(ScheduleKind::kLinear, -1, 10)), "warmup_steps", "-1");
  EXPECT_ERROR_MENTIONS(ValidateScheduleOptions(Options(ScheduleKind::kLinear, 1, -10)), "total_steps", "-10");
  EXPECT_TRUE(ValidateScheduleOptions(Options(ScheduleKind::kCosine, 0, 0)).ok());
}

}  // namespace
}  // namespace sigmatune::train
