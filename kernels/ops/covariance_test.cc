#include "kernels/ops/covariance.h"

#include "gtest/gtest.h"
#include "kernels/ops/matmul.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RandomSmallIntegers;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

bool ExactlySymmetric(const Tensor& c) {
  const int64_t n = c.dim(0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      if (GetAsDouble(c, i * n + j) != GetAsDouble(c, j * n + i)) return false;
    }
  }
  return true;
}

TEST(CovarianceCpuTest, MatchesTorchGolden) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/ops/covariance.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  Tensor c = golden->at("c0").Contiguous();
  ASSERT_TRUE(cpu::AccumulateCovariance(golden->at("x"), 0.25, &c).ok());
  EXPECT_TRUE(AllClose(c, golden->at("expected"), Tolerance{1e-4, 1e-5}));
  EXPECT_TRUE(ExactlySymmetric(c));

  Tensor cb = Tensor::Zeros({9, 9}, DType::kF32);
  ASSERT_TRUE(cpu::AccumulateCovariance(golden->at("bf16_x"), 1.0, &cb).ok());
  EXPECT_TRUE(AllClose(cb, golden->at("bf16_expected"), Tolerance{1e-4, 1e-5}));
}

TEST(CovarianceCpuTest, SyrkEqualsGemmOverAwkwardShapes) {
  for (int64_t tokens : {1, 7, 4097}) {
    for (int64_t n : {1, 7, 111}) {
      for (DType acc : {DType::kF32, DType::kF64}) {
        SCOPED_TRACE(::testing::Message() << tokens << "x" << n << " " << DTypeName(acc));
        const Tensor x = RandomNormal({tokens, n}, acc, tokens * 1000 + n);
        Tensor c = Tensor::Zeros({n, n}, acc);
        ASSERT_TRUE(cpu::AccumulateCovariance(x, 0.5, &c).ok());
        Tensor gemm = Tensor::Zeros({n, n}, acc);
        ASSERT_TRUE(cpu::Matmul(x, Transpose::kYes, x, Transpose::kNo, 0.5, 0.0, &gemm).ok());
        const double tol = acc == DType::kF32 ? 2e-6 * tokens : 1e-12 * tokens;
        EXPECT_TRUE(AllClose(c, gemm, Tolerance{tol, tol}));
        EXPECT_TRUE(ExactlySymmetric(c));
      }
    }
  }
}

TEST(CovarianceCpuTest, AccumulatesAcrossCallsAndViews) {
  // Two halves of X accumulated separately equal one call on all of X (small integers: exact).
  const Tensor x = RandomSmallIntegers({40, 6}, DType::kF32, 4, 21);
  Tensor whole = Tensor::Zeros({6, 6}, DType::kF32);
  ASSERT_TRUE(cpu::AccumulateCovariance(x, 1.0, &whole).ok());
  Tensor parts = Tensor::Zeros({6, 6}, DType::kF32);
  ASSERT_TRUE(cpu::AccumulateCovariance(x.Slice(0, 0, 17), 1.0, &parts).ok());
  ASSERT_TRUE(cpu::AccumulateCovariance(x.Slice(0, 17, 40), 1.0, &parts).ok());
  EXPECT_TRUE(AllClose(parts, whole, Tolerance{0, 0}));
  // A column slice (leading dimension 10) of a wider activation matrix.
  const Tensor wide = RandomSmallIntegers({25, 10}, DType::kF32, 3, 22);
  Tensor from_view = Tensor::Zeros({4, 4}, DType::kF32);
  ASSERT_TRUE(cpu::AccumulateCovariance(wide.Slice(1, 3, 7), 1.0, &from_view).ok());
  Tensor from_copy = Tensor::Zeros({4, 4}, DType::kF32);
  ASSERT_TRUE(cpu::AccumulateCovariance(wide.Slice(1, 3, 7).Contiguous(), 1.0, &from_copy).ok());
  EXPECT_TRUE(AllClose(from_view, from_copy, Tolerance{0, 0}));
}

TEST(CovarianceCpuTest, UpperOnlyBatchesThenSymmetrizeEqualsFull) {
  const Tensor x = RandomNormal({90, 13}, DType::kF64, 24);
  Tensor full = Tensor::Zeros({13, 13}, DType::kF64);
  Tensor upper = Tensor::Zeros({13, 13}, DType::kF64);
  for (int64_t b = 0; b < 90; b += 30) {
    ASSERT_TRUE(cpu::AccumulateCovariance(x.Slice(0, b, b + 30), 1.0, &full).ok());
    ASSERT_TRUE(cpu::AccumulateCovariance(x.Slice(0, b, b + 30), 1.0, &upper, CovarianceFill::kUpperOnly).ok());
  }
  EXPECT_EQ((upper.at<double>({12, 0})), 0.0);  // the lower triangle was not touched on the CPU
  EXPECT_FALSE(ExactlySymmetric(upper));
  ASSERT_TRUE(cpu::SymmetrizeFromUpper(&upper).ok());
  EXPECT_TRUE(AllClose(upper, full, Tolerance{0, 0}));
  Tensor not_square = Tensor::Zeros({3, 4}, DType::kF32);
  EXPECT_EQ(cpu::SymmetrizeFromUpper(&not_square).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CovarianceCpuTest, HalfInputsAccumulateExactlyInFp32) {
  // bf16/f16 small integers: every product and partial sum is exact in fp32.
  for (DType in : {DType::kBF16, DType::kF16}) {
    const Tensor x = RandomSmallIntegers({300, 5}, in, 5, 23);
    Tensor c = Tensor::Zeros({5, 5}, DType::kF32);
    ASSERT_TRUE(cpu::AccumulateCovariance(x, 1.0, &c).ok());
    Tensor expected = Tensor::Zeros({5, 5}, DType::kF64);
    ASSERT_TRUE(cpu::AccumulateCovariance(x.To(DType::kF64), 1.0, &expected).ok());
    EXPECT_TRUE(AllClose(c, expected, Tolerance{0, 0}));
    Tensor c64 = Tensor::Zeros({5, 5}, DType::kF64);  // 16-bit input into an f64 accumulator
    ASSERT_TRUE(cpu::AccumulateCovariance(x, 1.0, &c64).ok());
    EXPECT_TRUE(AllClose(c64, expected, Tolerance{0, 0}));
  }
}

TEST(CovarianceCpuTest, BadInputsGetClearErrors) {
  Tensor c = Tensor::Zeros({4, 4}, DType::kF32);
  absl::Status s = cpu::AccumulateCovariance(Tensor::Zeros({3, 5}, DType::kF32), 1.0, &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("f32[5, 5]"), std::string::npos) << s;
  s = cpu::AccumulateCovariance(Tensor::Zeros({3, 4}, DType::kF64), 1.0, &c);
  EXPECT_NE(s.message().find("cannot accumulate"), std::string::npos) << s;
  Tensor cb = Tensor::Zeros({4, 4}, DType::kBF16);
  s = cpu::AccumulateCovariance(Tensor::Zeros({3, 4}, DType::kBF16), 1.0, &cb);
  EXPECT_NE(s.message().find("must be f32 or f64"), std::string::npos) << s;
  s = cpu::AccumulateCovariance(Tensor::Zeros({4, 3}, DType::kF32).Transposed(), 1.0, &c);
  EXPECT_NE(s.message().find("row-major"), std::string::npos) << s;
}

#if SIGMATUNE_WITH_CUDA
TEST(CovarianceCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t tokens : {1, 7, 4097}) {
    for (int64_t n : {1, 7, 111}) {
      for (DType in : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16}) {
        for (DType acc : {DType::kF32, DType::kF64}) {
          if (in == DType::kF64 && acc == DType::kF32) continue;
          SCOPED_TRACE(::testing::Message() << tokens << "x" << n << " " << DTypeName(in) << "->" << DTypeName(acc));
          const Tensor x = RandomNormal({tokens, n}, in, 31);
          Tensor c = RandomNormal({n, n}, acc, 32);
          ASSERT_TRUE(cpu::AccumulateCovariance(RandomNormal({3, n}, acc, 33), 1.0, &c).ok());  // symmetric start
          auto dx = ctx->ToDevice(x);
          auto dc = ctx->ToDevice(c);
          ASSERT_TRUE(dx.ok() && dc.ok());
          ASSERT_TRUE(cuda::AccumulateCovariance(*ctx, *dx, 0.125, &*dc).ok());
          ASSERT_TRUE(cpu::AccumulateCovariance(x, 0.125, &c).ok());
          auto host = ctx->ToHost(*dc);
          ASSERT_TRUE(host.ok()) << host.status();
          const double tol = acc == DType::kF32 ? 2e-6 * tokens : 1e-12 * tokens;
          EXPECT_TRUE(AllClose(*host, c, Tolerance{tol, tol}));
          EXPECT_TRUE(ExactlySymmetric(*host));
          // Upper-only accumulation plus one symmetrize gives the same matrix.
          auto dc2 = ctx->ToDevice(Tensor::Zeros({n, n}, acc));
          ASSERT_TRUE(dc2.ok());
          ASSERT_TRUE(cuda::AccumulateCovariance(*ctx, *dx, 0.125, &*dc2, CovarianceFill::kUpperOnly).ok());
          ASSERT_TRUE(cuda::SymmetrizeFromUpper(*ctx, &*dc2).ok());
          Tensor expected = Tensor::Zeros({n, n}, acc);
          ASSERT_TRUE(cpu::AccumulateCovariance(x, 0.125, &expected).ok());
          auto host2 = ctx->ToHost(*dc2);
          ASSERT_TRUE(host2.ok()) << host2.status();
          EXPECT_TRUE(AllClose(*host2, expected, Tolerance{tol, tol}));
          EXPECT_TRUE(ExactlySymmetric(*host2));
        }
      }
    }
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
