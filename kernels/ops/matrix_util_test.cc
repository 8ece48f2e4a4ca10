#include "kernels/ops/matrix_util.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::Tolerance;

constexpr int64_t kSizes[] = {1, 7, 111, 1500};

double ReferenceDiagonalMean(const Tensor& a) {
  const int64_t n = a.dim(0);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += GetAsDouble(a, i * n + i);
  return sum / n;
}

double ReferenceDistance(const Tensor& a) {
  const int64_t n = a.dim(0);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double d = GetAsDouble(a, i * n + j) - (i == j ? 1.0 : 0.0);
      sum += d * d;
    }
  }
  return std::sqrt(sum);
}

// A random n x n matrix close to the identity (as C_d C_d^{-1} is), entries rounded to dt.
Tensor NearIdentity(int64_t n, DType dt, uint64_t seed) {
  Tensor a = RandomNormal({n, n}, DType::kF64, seed);
  for (int64_t i = 0; i < n * n; ++i) a.data<double>()[i] *= 1e-3;
  for (int64_t i = 0; i < n; ++i) a.data<double>()[i * n + i] += 1.0;
  return a.To(dt);
}

TEST(MatrixUtilCpuTest, DiagonalMeanMatchesReference) {
  for (int64_t n : kSizes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      const Tensor a = RandomNormal({n, n}, dt, n);
      auto mean = cpu::DiagonalMean(a);
      ASSERT_TRUE(mean.ok()) << mean.status();
      EXPECT_NEAR(*mean, ReferenceDiagonalMean(a), 1e-12);
    }
  }
  const Tensor known = Tensor::FromVector<float>({2, 2}, {1.5f, 100.0f, -7.0f, 2.5f});
  EXPECT_EQ(*cpu::DiagonalMean(known), 2.0);
}

TEST(MatrixUtilCpuTest, AddScaledIdentityTouchesOnlyTheDiagonal) {
  for (int64_t n : kSizes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      const Tensor a = RandomNormal({n, n}, dt, 100 + n);
      Tensor b = a.Contiguous();
      const double alpha = 0.1;  // not representable: f32 adds float(0.1), as PEFT's fp32 path
      ASSERT_TRUE(cpu::AddScaledIdentity(alpha, &b).ok());
      Tensor want = a.Contiguous();
      for (int64_t i = 0; i < n; ++i) {
        if (dt == DType::kF32) {
          want.data<float>()[i * n + i] += 0.1f;
        } else {
          want.data<double>()[i * n + i] += 0.1;
        }
      }
      EXPECT_TRUE(AllClose(b, want, Tolerance{0, 0}));
    }
  }
}

TEST(MatrixUtilCpuTest, DistanceFromIdentityMatchesReference) {
  for (int64_t n : kSizes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      const Tensor a = NearIdentity(n, dt, 200 + n);
      auto d = cpu::DistanceFromIdentity(a);
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_NEAR(*d, ReferenceDistance(a), 1e-12 * (1 + ReferenceDistance(a)));
    }
  }
  // Exact cases: ||I||, ||[[1, 1], [0, 1]] - I|| = 1, ||diag(3, 1) - I|| = 2, empty = 0.
  EXPECT_EQ(*cpu::DistanceFromIdentity(Tensor::FromVector<double>({2, 2}, {1, 0, 0, 1})), 0.0);
  EXPECT_EQ(*cpu::DistanceFromIdentity(Tensor::FromVector<float>({2, 2}, {1, 1, 0, 1})), 1.0);
  EXPECT_EQ(*cpu::DistanceFromIdentity(Tensor::FromVector<double>({2, 2}, {3, 0, 0, 1})), 2.0);
  EXPECT_EQ(*cpu::DistanceFromIdentity(Tensor::Empty({0, 0}, DType::kF32)), 0.0);
}

TEST(MatrixUtilCpuTest, CountNonFiniteAnyShape) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    Tensor t = RandomNormal({3, 5, 7}, DType::kF64, 5);
    t.data<double>()[0] = std::numeric_limits<double>::quiet_NaN();
    t.data<double>()[17] = std::numeric_limits<double>::infinity();
    t.data<double>()[104] = -std::numeric_limits<double>::infinity();
    t.data<double>()[50] = std::numeric_limits<double>::max();  // finite in f64, inf once rounded to f32
    auto count = cpu::CountNonFinite(t.To(dt));
    ASSERT_TRUE(count.ok()) << count.status();
    EXPECT_EQ(*count, dt == DType::kF32 ? 4 : 3);
  }
  EXPECT_EQ(*cpu::CountNonFinite(Tensor::Empty({0}, DType::kF32)), 0);
}

TEST(MatrixUtilCpuTest, BadOperands) {
  Tensor rect = Tensor::Empty({3, 4}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::DiagonalMean(rect).status(), "DiagonalMean input A", "square", "[3, 4]");
  EXPECT_ERROR_MENTIONS(cpu::AddScaledIdentity(1.0, &rect), "AddScaledIdentity matrix A", "square");
  EXPECT_ERROR_MENTIONS(cpu::DistanceFromIdentity(rect).status(), "DistanceFromIdentity input A", "square");
  EXPECT_ERROR_MENTIONS(cpu::DiagonalMean(Tensor::Empty({0, 0}, DType::kF64)).status(), "DiagonalMean", "empty");
  const Tensor ints = Tensor::Zeros({3, 3}, DType::kI32);
  EXPECT_ERROR_MENTIONS(cpu::DiagonalMean(ints).status(), "DiagonalMean input A", "f32 or f64", "i32");
  EXPECT_ERROR_MENTIONS(cpu::CountNonFinite(ints).status(), "CountNonFinite input", "i32");
  const Tensor square = RandomNormal({4, 4}, DType::kF32, 1);
  EXPECT_ERROR_MENTIONS(cpu::DistanceFromIdentity(square.Slice(1, 0, 3).Slice(0, 0, 3)).status(),
                        "DistanceFromIdentity input A", "contiguous");
  EXPECT_ERROR_MENTIONS(cpu::CountNonFinite(square.Transposed()).status(), "CountNonFinite", "contiguous");
  const Tensor vector = Tensor::Empty({4}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cpu::DiagonalMean(vector).status(), "DiagonalMean input A", "matrix");
}

#if SIGMATUNE_WITH_CUDA
TEST(MatrixUtilCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t n : kSizes) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << " " << DTypeName(dt));
      Tensor a = NearIdentity(n, dt, 300 + n);
      if (n > 1) {
        if (dt == DType::kF32) {
          a.data<float>()[1] = std::numeric_limits<float>::quiet_NaN();
        } else {
          a.data<double>()[n * n - 1] = -std::numeric_limits<double>::infinity();
        }
      }
      const Tensor finite = NearIdentity(n, dt, 400 + n);
      auto da = ctx->ToDevice(a), dfinite = ctx->ToDevice(finite);
      ASSERT_TRUE(da.ok() && dfinite.ok());

      auto mean = cuda::DiagonalMean(*ctx, *dfinite);
      ASSERT_TRUE(mean.ok()) << mean.status();
      EXPECT_NEAR(*mean, *cpu::DiagonalMean(finite), 1e-12);
      auto dist = cuda::DistanceFromIdentity(*ctx, *dfinite);
      ASSERT_TRUE(dist.ok()) << dist.status();
      EXPECT_NEAR(*dist, *cpu::DistanceFromIdentity(finite), 1e-12 * (1 + *dist));
      auto count = cuda::CountNonFinite(*ctx, *da);
      ASSERT_TRUE(count.ok()) << count.status();
      EXPECT_EQ(*count, *cpu::CountNonFinite(a));

      ASSERT_TRUE(cuda::AddScaledIdentity(*ctx, 0.1, &*dfinite).ok());
      Tensor want = finite.Contiguous();
      ASSERT_TRUE(cpu::AddScaledIdentity(0.1, &want).ok());
      auto got = ctx->ToHost(*dfinite);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(AllClose(*got, want, Tolerance{0, 0}));
    }
  }
}

TEST(MatrixUtilCudaTest, BadOperands) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  auto rect = ctx->Allocate({3, 4}, DType::kF32);
  ASSERT_TRUE(rect.ok());
  EXPECT_ERROR_MENTIONS(cuda::DiagonalMean(*ctx, *rect).status(), "DiagonalMean input A", "square");
  auto empty = ctx->Allocate({0, 0}, DType::kF32);
  ASSERT_TRUE(empty.ok());
  EXPECT_ERROR_MENTIONS(cuda::DiagonalMean(*ctx, *empty).status(), "DiagonalMean", "empty");
  const Tensor host = Tensor::Zeros({2, 2}, DType::kF32);
  EXPECT_ERROR_MENTIONS(cuda::DistanceFromIdentity(*ctx, host).status(), "DistanceFromIdentity input A");
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
