#include "kernels/ops/qr.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "gtest/gtest.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/linalg_testing.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::kernels::testing::Along;
using ::sigmatune::kernels::testing::MaxBelowDiagonal;
using ::sigmatune::kernels::testing::OrthonormalityError;
using ::sigmatune::kernels::testing::ProductF64;
using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RelativeError;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

double Tol(DType dt) { return dt == DType::kF32 ? 1e-5 : 1e-12; }

struct QrFactors {
  Tensor q, r;
};

QrFactors CpuQr(const Tensor& a) {
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  QrFactors f{Tensor::Empty({m, k}, a.dtype()), Tensor::Empty({k, n}, a.dtype())};
  const absl::Status s = cpu::Qr(a, &f.q, &f.r);
  EXPECT_TRUE(s.ok()) << s;
  return f;
}

// Q^T Q = I, R exactly upper triangular, Q R = A.
void ExpectQrIdentities(const Tensor& a, const QrFactors& f, double tol) {
  EXPECT_LE(OrthonormalityError(f.q, Along::kColumns), tol);
  EXPECT_EQ(MaxBelowDiagonal(f.r), 0.0);
  EXPECT_LE(RelativeError(ProductF64(f.q, Transpose::kNo, f.r, Transpose::kNo), a), tol);
}

TEST(QrCpuTest, MatchesTorchGoldenIncludingSigns) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/ops/qr.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const std::string tag : {"m7n5", "m5n7", "m33n33"}) {
    SCOPED_TRACE(tag);
    const QrFactors got = CpuQr(golden->at(tag + "_a"));
    // Same LAPACK Householder convention as torch.linalg.qr: compare entry by entry, no sign fixing.
    EXPECT_TRUE(AllClose(got.q, golden->at(tag + "_q"), Tolerance{1e-12, 1e-12}));
    EXPECT_TRUE(AllClose(got.r, golden->at(tag + "_r"), Tolerance{1e-12, 1e-12}));
  }
}

TEST(QrCpuTest, IdentitiesOverAwkwardShapes) {
  struct Case {
    int64_t m, n;
  };
  for (const Case& c :
       {Case{1, 1}, Case{1, 7}, Case{7, 1}, Case{7, 111}, Case{111, 7}, Case{111, 111}, Case{4097, 7}, Case{7, 4097}}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << c.m << "x" << c.n << " " << DTypeName(dt));
      const Tensor a = RandomNormal({c.m, c.n}, dt, 40 + c.m + c.n);
      ExpectQrIdentities(a, CpuQr(a), Tol(dt));
    }
  }
}

TEST(QrCpuTest, ZeroSizedInputIsANoOp) {
  Tensor q = Tensor::Empty({4, 0}, DType::kF64), r = Tensor::Empty({0, 0}, DType::kF64);
  EXPECT_TRUE(cpu::Qr(Tensor::Empty({4, 0}, DType::kF64), &q, &r).ok());
}

TEST(QrCpuTest, BadInputsGetClearErrors) {
  const Tensor a = RandomNormal({5, 3}, DType::kF32, 1);
  auto expect_error = [](const absl::Status& s, const std::string& needle) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), std::string::npos) << "missing '" << needle << "' in: " << s;
  };
  Tensor q = Tensor::Empty({5, 3}, DType::kF32), r = Tensor::Empty({3, 3}, DType::kF32);
  Tensor q_wrong = Tensor::Empty({5, 5}, DType::kF32), r_wrong = Tensor::Empty({3, 3}, DType::kF64);
  expect_error(cpu::Qr(a, &q_wrong, &r), "qr output Q must be a contiguous f32[5, 3] matrix");
  expect_error(cpu::Qr(a, &q, &r_wrong), "qr output R must be a contiguous f32[3, 3] matrix");
  expect_error(cpu::Qr(Tensor::Zeros({5, 3, 1}, DType::kF32), &q, &r), "qr input A must be a matrix");
  Tensor nan_a = a.Contiguous();
  nan_a.at<float>({0, 0}) = NAN;
  expect_error(cpu::Qr(nan_a, &q, &r), "qr input A has a non-finite entry nan at (0, 0)");
}

#if SIGMATUNE_WITH_CUDA
absl::StatusOr<QrFactors> CudaQr(GpuContext& ctx, const Tensor& a) {
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  ST_ASSIGN_OR_RETURN(Tensor da, ctx.ToDevice(a));
  ST_ASSIGN_OR_RETURN(Tensor dq, ctx.Allocate({m, k}, a.dtype()));
  ST_ASSIGN_OR_RETURN(Tensor dr, ctx.Allocate({k, n}, a.dtype()));
  ST_RETURN_IF_ERROR(cuda::Qr(ctx, da, &dq, &dr));
  QrFactors out;
  ST_ASSIGN_OR_RETURN(out.q, ctx.ToHost(dq));
  ST_ASSIGN_OR_RETURN(out.r, ctx.ToHost(dr));
  return out;
}

TEST(QrCudaTest, MatchesCpuOverAwkwardShapes) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  struct Case {
    int64_t m, n;
  };
  for (const Case& c : {Case{1, 1}, Case{1, 7}, Case{7, 1}, Case{7, 111}, Case{111, 7}, Case{111, 111}, Case{4097, 7},
                        Case{7, 4097}, Case{4097, 111}}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << c.m << "x" << c.n << " " << DTypeName(dt));
      const Tensor a = RandomNormal({c.m, c.n}, dt, 50 + c.m);
      auto got = CudaQr(*ctx, a);
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectQrIdentities(a, *got, 10 * Tol(dt));
      // Same Householder convention: entrywise agreement, scaled by the column norms (~sqrt(m)).
      const QrFactors cpu_f = CpuQr(a);
      const double scale = std::sqrt(static_cast<double>(c.m));
      EXPECT_TRUE(AllClose(got->q, cpu_f.q, Tolerance{100 * Tol(dt), 0}));
      EXPECT_TRUE(AllClose(got->r, cpu_f.r, Tolerance{100 * Tol(dt) * scale, 0}));
    }
  }
}

TEST(QrCudaTest, BadInputsGetClearErrors) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  Tensor a = RandomNormal({6, 4}, DType::kF64, 5);
  a.at<double>({5, 3}) = -INFINITY;
  auto da = ctx->ToDevice(a);
  auto dq = ctx->Allocate({6, 4}, DType::kF64), dr = ctx->Allocate({4, 4}, DType::kF64);
  ASSERT_TRUE(da.ok() && dq.ok() && dr.ok());
  absl::Status s = cuda::Qr(*ctx, *da, &*dq, &*dr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("qr input A has a non-finite entry"), std::string::npos) << s;
  s = cuda::Qr(*ctx, a, &*dq, &*dr);
  EXPECT_NE(s.message().find("qr input A must be on cuda"), std::string::npos) << s;
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
