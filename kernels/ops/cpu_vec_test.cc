#include "kernels/ops/cpu_vec.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace sigmatune::kernels::vec {
namespace {

TEST(CpuVecTest, ExpIsWithinTwoUlpOverTheNormalRange) {
  double worst = 0;
  for (float x = -87.0f; x < 88.3f; x += 0.0137f) {
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(Exp(x) - ref) / ref);
  }
  EXPECT_LT(worst, 2 * std::numeric_limits<float>::epsilon());
  EXPECT_EQ(Exp(0.0f), 1.0f);
}

TEST(CpuVecTest, ExpEdges) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Exp(-inf), 0.0f);
  EXPECT_EQ(Exp(-1000.0f), 0.0f);
  EXPECT_EQ(Exp(-88.0f), 0.0f);  // below FLT_MIN: flushed
  EXPECT_EQ(Exp(inf), inf);
  EXPECT_EQ(Exp(89.0f), inf);
  EXPECT_TRUE(std::isnan(Exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_NEAR(Exp(88.7f) / std::exp(88.7), 1.0, 1e-5);
}

TEST(CpuVecTest, LanesAgreeWithScalar) {
  const F4 x = {-3.5f, 0.25f, 10.0f, -60.0f};
  const F4 y = Exp4(x);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], Exp(x[i]));
  D2 acc = {0.0, 0.0};
  AccumulateDouble(F4{1.0f, 2.0f, 3.0f, 4.0f}, &acc);
  EXPECT_EQ(acc[0] + acc[1], 10.0);
  const F4 n = Narrow(WidenLo(x), WidenHi(x));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(n[i], x[i]);
  EXPECT_EQ(HorizontalMax(F4{1.0f, 7.0f, -2.0f, 3.0f}), 7.0f);
}

}  // namespace
}  // namespace sigmatune::kernels::vec
