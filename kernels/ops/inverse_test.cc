#include "kernels/ops/inverse.h"

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomWithSingularValues;
using ::sigmatune::testing::Tolerance;

// Singular values spread over [1, 10]: condition number 10.
std::vector<double> WellConditioned(int64_t n) {
  std::vector<double> sigma(n);
  for (int64_t i = 0; i < n; ++i) sigma[i] = 10.0 - 9.0 * static_cast<double>(i) / std::max<int64_t>(1, n - 1);
  return sigma;
}

// Gauss-Jordan elimination with partial pivoting, in double (independent of LAPACK).
Tensor ReferenceInverse(const Tensor& a) {
  const int64_t n = a.dim(0);
  std::vector<double> m(n * 2 * n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) m[i * 2 * n + j] = GetAsDouble(a, i * n + j);
    m[i * 2 * n + n + i] = 1.0;
  }
  for (int64_t c = 0; c < n; ++c) {
    int64_t p = c;
    for (int64_t r = c + 1; r < n; ++r) {
      if (std::fabs(m[r * 2 * n + c]) > std::fabs(m[p * 2 * n + c])) p = r;
    }
    for (int64_t j = 0; j < 2 * n; ++j) std::swap(m[c * 2 * n + j], m[p * 2 * n + j]);
    const double pivot = m[c * 2 * n + c];
    for (int64_t j = 0; j < 2 * n; ++j) m[c * 2 * n + j] /= pivot;
    for (int64_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = m[r * 2 * n + c];
      if (f == 0.0) continue;
      for (int64_t j = 0; j < 2 * n; ++j) m[r * 2 * n + j] -= f * m[c * 2 * n + j];
    }
  }
  Tensor inv = Tensor::Empty({n, n}, DType::kF64);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) inv.data<double>()[i * n + j] = m[i * 2 * n + n + j];
  }
  return inv;
}

// max_ij |(A inv - I)_ij|, in double.
double MaxIdentityError(const Tensor& a, const Tensor& inv) {
  const int64_t n = a.dim(0);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < n; ++k) s += GetAsDouble(a, i * n + k) * GetAsDouble(inv, k * n + j);
      worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
    }
  }
  return worst;
}

TEST(InverseCpuTest, KnownClosedForms) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    // [[4, 7], [2, 6]]^{-1} = [[0.6, -0.7], [-0.2, 0.4]].
    const Tensor a2 = Tensor::FromVector<double>({2, 2}, {4, 7, 2, 6}).To(dt);
    Tensor inv2 = Tensor::Empty({2, 2}, dt);
    ASSERT_TRUE(cpu::Inverse(a2, &inv2).ok());
    const Tensor want2 = Tensor::FromVector<double>({2, 2}, {0.6, -0.7, -0.2, 0.4});
    EXPECT_TRUE(AllClose(inv2, want2, dt == DType::kF32 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-15, 1e-15}));
    // A non-symmetric 3 x 3 with determinant 1 and an integer inverse (catches a transposed result).
    const Tensor a3 = Tensor::FromVector<double>({3, 3}, {1, 2, 3, 0, 1, 4, 5, 6, 0}).To(dt);
    Tensor inv3 = Tensor::Empty({3, 3}, dt);
    ASSERT_TRUE(cpu::Inverse(a3, &inv3).ok());
    const Tensor want3 = Tensor::FromVector<double>({3, 3}, {-24, 18, 5, 20, -15, -4, -5, 4, 1});
    EXPECT_TRUE(AllClose(inv3, want3, dt == DType::kF32 ? Tolerance{1e-4, 1e-5} : Tolerance{1e-12, 1e-13}));
  }
}

TEST(InverseCpuTest, RandomWellConditionedMatchesReference) {
  for (int64_t n : {1, 7, 111, 300}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      const Tensor a = RandomWithSingularValues(n, n, WellConditioned(n), dt, 10 + n);
      Tensor inv = Tensor::Empty({n, n}, dt);
      ASSERT_TRUE(cpu::Inverse(a, &inv).ok());
      const bool f32 = dt == DType::kF32;
      EXPECT_LT(MaxIdentityError(a, inv), f32 ? 2e-5 : 1e-13);
      EXPECT_TRUE(AllClose(inv, ReferenceInverse(a), f32 ? Tolerance{2e-5, 1e-4} : Tolerance{1e-13, 1e-11}));
    }
  }
}

TEST(InverseCpuTest, SingularIsFailedPrecondition) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor rank1 = Tensor::FromVector<double>({2, 2}, {1, 2, 2, 4}).To(dt);
    Tensor inv = Tensor::Empty({2, 2}, dt);
    absl::Status s = cpu::Inverse(rank1, &inv);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_ERROR_MENTIONS(s, "inverse input A", "singular", "pivot 1");
    const Tensor zeros = Tensor::Zeros({3, 3}, dt);
    Tensor inv3 = Tensor::Empty({3, 3}, dt);
    s = cpu::Inverse(zeros, &inv3);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_ERROR_MENTIONS(s, "singular", "pivot 0");
  }
}

TEST(InverseCpuTest, EmptyDoesNothing) {
  const Tensor a = Tensor::Empty({0, 0}, DType::kF32);
  Tensor inv = Tensor::Empty({0, 0}, DType::kF32);
  EXPECT_TRUE(cpu::Inverse(a, &inv).ok());
}

TEST(InverseCpuTest, BadOperands) {
  const Tensor a = RandomWithSingularValues(3, 3, {3, 2, 1}, DType::kF32, 1);
  Tensor inv = Tensor::Empty({3, 3}, DType::kF32);
  Tensor rect = Tensor::Empty({3, 4}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::Inverse(rect, &inv), "inverse input A", "square", "[3, 4]");
  const Tensor ints = Tensor::Zeros({3, 3}, DType::kI32);
  EXPECT_ERROR_MENTIONS(cpu::Inverse(ints, &inv), "inverse input A", "f32 or f64", "i32");
  EXPECT_ERROR_MENTIONS(cpu::Inverse(a.Transposed(), &inv), "inverse input A", "contiguous");
  Tensor small = Tensor::Empty({2, 2}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::Inverse(a, &small), "inverse output inv", "f32[3, 3]");
  Tensor wide = Tensor::Empty({3, 3}, DType::kF64);
  EXPECT_ERROR_MENTIONS(cpu::Inverse(a, &wide), "inverse output inv", "f32[3, 3]");
  Tensor same = a;
  EXPECT_ERROR_MENTIONS(cpu::Inverse(a, &same), "inverse output inv", "overlap");
  Tensor nan = a.Contiguous();
  nan.data<float>()[4] = std::numeric_limits<float>::quiet_NaN();
  const absl::Status s = cpu::Inverse(nan, &inv);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(s, "inverse input A", "non-finite", "(1, 1)");
}

#if SIGMATUNE_WITH_CUDA
TEST(InverseCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t n : {1, 7, 111, 300}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      const Tensor a = RandomWithSingularValues(n, n, WellConditioned(n), dt, 20 + n);
      Tensor want = Tensor::Empty({n, n}, dt);
      ASSERT_TRUE(cpu::Inverse(a, &want).ok());
      auto da = ctx->ToDevice(a);
      auto dinv = ctx->Allocate({n, n}, dt);
      ASSERT_TRUE(da.ok() && dinv.ok());
      const absl::Status s = cuda::Inverse(*ctx, *da, &*dinv);
      ASSERT_TRUE(s.ok()) << s;
      auto got = ctx->ToHost(*dinv);
      ASSERT_TRUE(got.ok()) << got.status();
      const bool f32 = dt == DType::kF32;
      EXPECT_LT(MaxIdentityError(a, *got), f32 ? 2e-5 : 1e-13);
      EXPECT_TRUE(AllClose(*got, want, f32 ? Tolerance{2e-5, 1e-4} : Tolerance{1e-13, 1e-11}));
    }
  }
}

TEST(InverseCudaTest, SingularAndBadOperands) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  auto da = ctx->ToDevice(Tensor::FromVector<double>({2, 2}, {1, 2, 2, 4}));
  auto dinv = ctx->Allocate({2, 2}, DType::kF64);
  ASSERT_TRUE(da.ok() && dinv.ok());
  absl::Status s = cuda::Inverse(*ctx, *da, &*dinv);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_ERROR_MENTIONS(s, "inverse input A", "singular", "pivot 1");
  Tensor host_inv = Tensor::Empty({2, 2}, DType::kF64);
  EXPECT_ERROR_MENTIONS(cuda::Inverse(*ctx, *da, &host_inv), "inverse output inv", "device");
  Tensor nan = Tensor::FromVector<double>({2, 2}, {1, 0, 0, std::numeric_limits<double>::infinity()});
  auto dnan = ctx->ToDevice(nan);
  ASSERT_TRUE(dnan.ok());
  EXPECT_ERROR_MENTIONS(cuda::Inverse(*ctx, *dnan, &*dinv), "inverse input A", "non-finite");
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
