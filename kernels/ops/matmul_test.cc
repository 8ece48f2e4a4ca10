#include "kernels/ops/matmul.h"

#include <cmath>

#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

// Plain double-precision reference of alpha * op(A) op(B) + beta * C.
Tensor NaiveMatmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, double alpha, double beta,
                   const Tensor& c) {
  const Tensor opa = ta == Transpose::kNo ? a : a.Transposed();
  const Tensor opb = tb == Transpose::kNo ? b : b.Transposed();
  const int64_t m = opa.dim(0), k = opa.dim(1), n = opb.dim(1);
  const Tensor a64 = opa.To(DType::kF64), b64 = opb.To(DType::kF64), c64 = c.To(DType::kF64);
  Tensor out = Tensor::Empty({m, n}, DType::kF64);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t l = 0; l < k; ++l) sum += a64.data<double>()[i * k + l] * b64.data<double>()[l * n + j];
      out.data<double>()[i * n + j] = alpha * sum + (beta == 0 ? 0.0 : beta * c64.data<double>()[i * n + j]);
    }
  }
  return out;
}

// f32 results: error grows with k; bound by k * eps relative to the sum of |products|.
Tolerance F32Tolerance(int64_t k) { return Tolerance{1e-6 * (k + 1), 1e-6 * (k + 1)}; }

TEST(MatmulCpuTest, MatchesTorchGolden) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/ops/matmul.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const char* tag : {"f32", "f64"}) {
    SCOPED_TRACE(tag);
    const Tensor& a = golden->at(std::string(tag) + "_a");
    const Tensor& b = golden->at(std::string(tag) + "_b");
    Tensor c = golden->at(std::string(tag) + "_c0").Contiguous();
    ASSERT_TRUE(cpu::Matmul(a, Transpose::kNo, b, Transpose::kYes, 0.5, -2.0, &c).ok());
    EXPECT_TRUE(AllClose(c, golden->at(std::string(tag) + "_expected")));
  }
  Tensor c = Tensor::Empty({9, 4}, DType::kF32);
  ASSERT_TRUE(cpu::Matmul(golden->at("bf16_a"), Transpose::kNo, golden->at("bf16_b"), Transpose::kNo, 1.0, 0.0, &c)
                  .ok());
  EXPECT_TRUE(AllClose(c, golden->at("bf16_expected"), F32Tolerance(6)));
}

TEST(MatmulCpuTest, AwkwardShapesAndTransposes) {
  struct Case {
    int64_t m, n, k;
  };
  for (const Case& s : {Case{1, 1, 1}, Case{7, 1, 111}, Case{1, 7, 4097}, Case{111, 7, 7}, Case{4097, 1, 7},
                        Case{33, 65, 0}}) {
    for (Transpose ta : {Transpose::kNo, Transpose::kYes}) {
      for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
        for (DType dt : {DType::kF32, DType::kF64}) {
          SCOPED_TRACE(::testing::Message() << s.m << "x" << s.n << "x" << s.k << " ta=" << (ta == Transpose::kYes)
                                            << " tb=" << (tb == Transpose::kYes) << " " << DTypeName(dt));
          const Tensor a = RandomNormal(ta == Transpose::kNo ? Shape{s.m, s.k} : Shape{s.k, s.m}, dt, 1);
          const Tensor b = RandomNormal(tb == Transpose::kNo ? Shape{s.k, s.n} : Shape{s.n, s.k}, dt, 2);
          Tensor c = RandomNormal({s.m, s.n}, dt, 3);
          const Tensor expected = NaiveMatmul(a, ta, b, tb, 1.5, 0.25, c);
          ASSERT_TRUE(cpu::Matmul(a, ta, b, tb, 1.5, 0.25, &c).ok());
          EXPECT_TRUE(AllClose(c, expected, dt == DType::kF32 ? F32Tolerance(s.k) : Tolerance{1e-12, 1e-12}));
        }
      }
    }
  }
}

TEST(MatmulCpuTest, StridedViewsMatchContiguousCopies) {
  const Tensor wide = RandomNormal({12, 20}, DType::kF32, 4);
  const Tensor a = wide.Slice(1, 3, 10);             // 12 x 7, row stride 20
  const Tensor b = RandomNormal({5, 7}, DType::kF32, 5).Transposed();  // 7 x 5 view, column-major
  Tensor out_wide = Tensor::Zeros({12, 9}, DType::kF32);
  Tensor c = out_wide.Slice(1, 2, 7);               // 12 x 5 column slice of the output
  ASSERT_TRUE(cpu::Matmul(a, Transpose::kNo, b, Transpose::kNo, 1.0, 0.0, &c).ok());
  Tensor expected = Tensor::Empty({12, 5}, DType::kF32);
  ASSERT_TRUE(cpu::Matmul(a.Contiguous(), Transpose::kNo, b.Contiguous(), Transpose::kNo, 1.0, 0.0, &expected).ok());
  EXPECT_TRUE(AllClose(c.Contiguous(), expected, Tolerance{0, 0}));
  EXPECT_EQ((out_wide.at<float>({0, 0})), 0.0f);  // outside the slice untouched
  EXPECT_EQ((out_wide.at<float>({11, 8})), 0.0f);
}

TEST(MatmulCpuTest, BetaZeroIgnoresGarbageInC) {
  const Tensor a = RandomNormal({3, 4}, DType::kF32, 6);
  const Tensor b = RandomNormal({4, 2}, DType::kF32, 7);
  Tensor c = Tensor::FromVector<float>({3, 2}, std::vector<float>(6, NAN));
  ASSERT_TRUE(cpu::Matmul(a, Transpose::kNo, b, Transpose::kNo, 1.0, 0.0, &c).ok());
  for (int i = 0; i < 6; ++i) EXPECT_FALSE(std::isnan(c.data<float>()[i]));
}

TEST(MatmulCpuTest, HalfInputsToHalfOutputRoundOnce) {
  const Tensor a = RandomNormal({5, 6}, DType::kBF16, 8);
  const Tensor b = RandomNormal({6, 3}, DType::kBF16, 9);
  Tensor c16 = Tensor::Zeros({5, 3}, DType::kBF16);
  ASSERT_TRUE(cpu::Matmul(a, Transpose::kNo, b, Transpose::kNo, 1.0, 0.0, &c16).ok());
  const Tensor expected = NaiveMatmul(a, Transpose::kNo, b, Transpose::kNo, 1.0, 0.0, c16).To(DType::kBF16);
  EXPECT_TRUE(AllClose(c16, expected, Tolerance{0, 1e-2}));
}

TEST(MatmulCpuTest, BadInputsGetClearErrors) {
  const Tensor a = Tensor::Zeros({3, 4}, DType::kF32);
  const Tensor b = Tensor::Zeros({5, 2}, DType::kF32);
  Tensor c = Tensor::Zeros({3, 2}, DType::kF32);
  absl::Status s = cpu::Matmul(a, Transpose::kNo, b, Transpose::kNo, 1, 0, &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("do not chain"), std::string::npos) << s;
  Tensor c64 = Tensor::Zeros({3, 2}, DType::kF64);
  s = cpu::Matmul(a, Transpose::kNo, Tensor::Zeros({4, 2}, DType::kF32), Transpose::kNo, 1, 0, &c64);
  EXPECT_NE(s.message().find("f32 inputs with a f64 output"), std::string::npos) << s;
  Tensor ct = Tensor::Zeros({2, 3}, DType::kF32).Transposed();
  s = cpu::Matmul(a, Transpose::kNo, Tensor::Zeros({4, 2}, DType::kF32), Transpose::kNo, 1, 0, &ct);
  EXPECT_NE(s.message().find("row-major"), std::string::npos) << s;
}

#if SIGMATUNE_WITH_CUDA
TEST(MatmulCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  struct Case {
    int64_t m, n, k;
  };
  for (const Case& s : {Case{1, 1, 1}, Case{7, 1, 111}, Case{1, 7, 4097}, Case{111, 7, 7}, Case{4097, 111, 7}}) {
    for (Transpose ta : {Transpose::kNo, Transpose::kYes}) {
      for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
        for (DType in : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16}) {
          const DType out = in == DType::kF64 ? DType::kF64 : DType::kF32;
          SCOPED_TRACE(::testing::Message() << s.m << "x" << s.n << "x" << s.k << " " << DTypeName(in));
          const Tensor a = RandomNormal(ta == Transpose::kNo ? Shape{s.m, s.k} : Shape{s.k, s.m}, in, 11);
          const Tensor b = RandomNormal(tb == Transpose::kNo ? Shape{s.k, s.n} : Shape{s.n, s.k}, in, 12);
          Tensor c = RandomNormal({s.m, s.n}, out, 13);
          auto da = ctx->ToDevice(a), db = ctx->ToDevice(b), dc = ctx->ToDevice(c);
          ASSERT_TRUE(da.ok() && db.ok() && dc.ok());
          ASSERT_TRUE(cuda::Matmul(*ctx, *da, ta, *db, tb, 0.5, 2.0, &*dc).ok());
          ASSERT_TRUE(cpu::Matmul(a, ta, b, tb, 0.5, 2.0, &c).ok());
          auto host = ctx->ToHost(*dc);
          ASSERT_TRUE(host.ok()) << host.status();
          EXPECT_TRUE(AllClose(*host, c, out == DType::kF64 ? Tolerance{1e-12, 1e-12} : F32Tolerance(s.k)));
        }
      }
    }
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
