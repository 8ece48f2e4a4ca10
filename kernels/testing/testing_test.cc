// The test helpers must themselves catch what they claim to catch.
#include <cmath>

#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/finite_diff.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/random.h"

namespace sigmatune::testing {
namespace {

TEST(CompareTest, AcceptsWithinAndRejectsBeyondTolerance) {
  Tensor a = Tensor::FromVector<float>({3}, {1.0f, 2.0f, 3.0f});
  Tensor b = Tensor::FromVector<double>({3}, {1.0, 2.0 + 1e-7, 3.0});
  EXPECT_TRUE(AllClose(a, b));
  Tensor c = Tensor::FromVector<double>({3}, {1.0, 2.1, 3.0});
  const ::testing::AssertionResult result = AllClose(a, c);
  EXPECT_FALSE(result);
  EXPECT_NE(std::string(result.message()).find("flat index 1"), std::string::npos) << result.message();
  EXPECT_FALSE(AllClose(a, Tensor::Zeros({4}, DType::kF32)));  // shape mismatch
  Tensor nan = Tensor::FromVector<float>({3}, {1.0f, NAN, 3.0f});
  EXPECT_FALSE(AllClose(nan, a));
}

TEST(RandomTest, SeededAndReproducible) {
  Tensor a = RandomNormal({50}, DType::kF64, 7);
  Tensor b = RandomNormal({50}, DType::kF64, 7);
  Tensor c = RandomNormal({50}, DType::kF64, 8);
  EXPECT_TRUE(AllClose(a, b, {0, 0}));
  EXPECT_FALSE(AllClose(a, c));
  Tensor ints = RandomSmallIntegers({100}, DType::kBF16, 3, 1);
  for (int64_t i = 0; i < 100; ++i) {
    const double v = GetAsDouble(ints, i);
    EXPECT_EQ(v, std::round(v));
    EXPECT_LE(std::fabs(v), 3.0);
  }
}

TEST(RandomTest, PrescribedSpectrum) {
  // Frobenius norm^2 equals the sum of squared singular values; trace equals sum of eigenvalues.
  const std::vector<double> sigma = {5, 3, 2, 1, 0.5};
  Tensor a = RandomWithSingularValues(9, 5, sigma, DType::kF64, 3);
  double expected = 0;
  for (double s : sigma) expected += s * s;
  EXPECT_NEAR(FrobeniusNorm(a) * FrobeniusNorm(a), expected, 1e-10);
  Tensor s = RandomSymmetric(4, {1, 2, 3, 4}, DType::kF64, 4);
  double trace = 0;
  for (int i = 0; i < 4; ++i) trace += s.at<double>({i, i});
  EXPECT_NEAR(trace, 10.0, 1e-12);
  EXPECT_EQ((s.at<double>({1, 3})), (s.at<double>({3, 1})));
}

TEST(FiniteDiffTest, GradientOfCubicSum) {
  Tensor x = Tensor::FromVector<double>({3}, {0.5, -1.0, 2.0});
  auto f = [](const Tensor& t) {
    double s = 0;
    for (int64_t i = 0; i < t.numel(); ++i) s += std::pow(GetAsDouble(t, i), 3);
    return s;
  };
  Tensor g = NumericalGradient(f, x);
  Tensor expected = Tensor::FromVector<double>({3}, {0.75, 3.0, 12.0});
  EXPECT_TRUE(AllClose(g, expected, {1e-6, 1e-6}));
}

TEST(GoldenTest, LoadsFixtureAndReportsMissingFile) {
  auto tensors = LoadGolden(RunfilePath("tests/testdata/ops/eigh.safetensors"));
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  const Tensor& a = tensors->at("n7_a");
  EXPECT_EQ(a.dtype(), DType::kF64);
  EXPECT_EQ(a.shape(), (Shape{7, 7}));
  EXPECT_EQ((a.at<double>({2, 5})), (a.at<double>({5, 2})));  // the fixture is symmetric
  auto missing = LoadGolden("/nonexistent/file.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/file.safetensors"), std::string::npos);
}

}  // namespace
}  // namespace sigmatune::testing
