#include "kernels/ops/svd.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

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
using ::sigmatune::kernels::testing::ApplySigns;
using ::sigmatune::kernels::testing::ColumnSigns;
using ::sigmatune::kernels::testing::IsDescending;
using ::sigmatune::kernels::testing::OrthonormalityError;
using ::sigmatune::kernels::testing::ReconstructF64;
using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RandomWithSingularValues;
using ::sigmatune::testing::RelativeError;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

double Tol(DType dt) { return dt == DType::kF32 ? 1e-5 : 1e-12; }

struct Factors {
  Tensor u, s, vt;
};

Factors EmptyFactors(int64_t m, int64_t n, DType dt) {
  const int64_t k = std::min(m, n);
  return Factors{Tensor::Empty({m, k}, dt), Tensor::Empty({k}, dt), Tensor::Empty({k, n}, dt)};
}

Factors CpuSvd(const Tensor& a) {
  Factors f = EmptyFactors(a.dim(0), a.dim(1), a.dtype());
  const absl::Status s = cpu::Svd(a, &f.u, &f.s, &f.vt);
  EXPECT_TRUE(s.ok()) << s;
  return f;
}

// U^T U = I, Vt Vt^T = I, S descending and >= 0, U diag(S) Vt = A.
void ExpectSvdIdentities(const Tensor& a, const Factors& f, double tol) {
  EXPECT_TRUE(IsDescending(f.s));
  if (f.s.numel() > 0) {
    EXPECT_GE(GetAsDouble(f.s, f.s.numel() - 1), 0.0);
  }
  EXPECT_LE(OrthonormalityError(f.u, Along::kColumns), tol);
  EXPECT_LE(OrthonormalityError(f.vt, Along::kRows), tol);
  EXPECT_LE(RelativeError(ReconstructF64(f.u, f.s, f.vt), a), tol);
}

// Compares singular vectors up to a common sign per triplet (fixed by U's columns).
void ExpectSameFactors(const Factors& got, const Factors& expected, Tolerance s_tol, Tolerance vec_tol) {
  EXPECT_TRUE(AllClose(got.s, expected.s, s_tol));
  const Tensor signs = ColumnSigns(got.u, expected.u);
  EXPECT_TRUE(AllClose(ApplySigns(got.u, signs, Along::kColumns), expected.u, vec_tol));
  EXPECT_TRUE(AllClose(ApplySigns(got.vt, signs, Along::kRows), expected.vt, vec_tol));
}

TEST(SvdCpuTest, MatchesTorchGolden) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/ops/svd.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const std::string tag : {"m7n5", "m5n7", "m1n7", "m33n33"}) {
    SCOPED_TRACE(tag);
    const Factors got = CpuSvd(golden->at(tag + "_a"));
    const Factors expected{golden->at(tag + "_u"), golden->at(tag + "_s"), golden->at(tag + "_vh")};
    ExpectSameFactors(got, expected, Tolerance{1e-12, 1e-12}, Tolerance{1e-10, 1e-10});
  }
}

TEST(SvdCpuTest, IdentitiesOverAwkwardShapes) {
  struct Case {
    int64_t m, n;
  };
  for (const Case& c : {Case{1, 1}, Case{1, 7}, Case{7, 1}, Case{7, 111}, Case{111, 7}, Case{111, 111}, Case{4097, 7},
                        Case{7, 4097}, Case{1, 4097}}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << c.m << "x" << c.n << " " << DTypeName(dt));
      const Tensor a = RandomNormal({c.m, c.n}, dt, 10 + c.m + c.n);
      ExpectSvdIdentities(a, CpuSvd(a), Tol(dt));
    }
  }
}

TEST(SvdCpuTest, RecoversKnownSingularValues) {
  std::vector<double> sigma(33);
  for (int i = 0; i < 33; ++i) sigma[i] = std::pow(0.8, i);  // distinct, condition number ~1e3
  for (DType dt : {DType::kF32, DType::kF64}) {
    for (bool tall : {true, false}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(dt) << (tall ? " tall" : " wide"));
      const Tensor a =
          tall ? RandomWithSingularValues(111, 33, sigma, dt, 3) : RandomWithSingularValues(33, 111, sigma, dt, 3);
      const Factors f = CpuSvd(a);
      EXPECT_TRUE(AllClose(f.s, Tensor::FromVector<double>({33}, sigma), Tolerance{10 * Tol(dt), 0}));
    }
  }
}

TEST(SvdCpuTest, ZeroSizedInputIsANoOp) {
  for (const Shape& shape : {Shape{0, 5}, Shape{5, 0}}) {
    Factors f = EmptyFactors(shape[0], shape[1], DType::kF32);
    EXPECT_TRUE(cpu::Svd(Tensor::Empty(shape, DType::kF32), &f.u, &f.s, &f.vt).ok());
  }
}

TEST(SvdCpuTest, BadInputsGetClearErrors) {
  const Tensor a = RandomNormal({5, 3}, DType::kF64, 1);
  auto expect_error = [](const absl::Status& s, const std::string& needle) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), std::string::npos) << "missing '" << needle << "' in: " << s;
  };
  Factors f = EmptyFactors(5, 3, DType::kF64);
  Tensor u_wrong = Tensor::Empty({5, 5}, DType::kF64);
  expect_error(cpu::Svd(a, &u_wrong, &f.s, &f.vt), "svd output U must be a contiguous f64[5, 3] matrix");
  Tensor s_wrong = Tensor::Empty({3}, DType::kF32);
  expect_error(cpu::Svd(a, &f.u, &s_wrong, &f.vt), "svd output S must be a contiguous f64[3] vector");
  Tensor vt_wrong = Tensor::Empty({3, 5}, DType::kF64);
  expect_error(cpu::Svd(a, &f.u, &f.s, &vt_wrong), "svd output Vt must be a contiguous f64[3, 3]");
  expect_error(cpu::Svd(a.To(DType::kF16), &f.u, &f.s, &f.vt), "svd input A must be f32 or f64");
  expect_error(cpu::Svd(RandomNormal({3, 5}, DType::kF64, 2).Transposed(), &f.u, &f.s, &f.vt),
               "svd input A must be contiguous");
  Tensor inf_a = a.Contiguous();
  inf_a.at<double>({4, 0}) = INFINITY;
  expect_error(cpu::Svd(inf_a, &f.u, &f.s, &f.vt), "svd input A has a non-finite entry inf at (4, 0)");
}

#if SIGMATUNE_WITH_CUDA
absl::StatusOr<Factors> CudaSvd(GpuContext& ctx, const Tensor& a, cuda::SvdSolver solver) {
  const Factors shapes = EmptyFactors(a.dim(0), a.dim(1), a.dtype());
  ST_ASSIGN_OR_RETURN(Tensor da, ctx.ToDevice(a));
  ST_ASSIGN_OR_RETURN(Tensor du, ctx.Allocate(shapes.u.shape(), a.dtype()));
  ST_ASSIGN_OR_RETURN(Tensor ds, ctx.Allocate(shapes.s.shape(), a.dtype()));
  ST_ASSIGN_OR_RETURN(Tensor dvt, ctx.Allocate(shapes.vt.shape(), a.dtype()));
  ST_RETURN_IF_ERROR(cuda::Svd(ctx, da, &du, &ds, &dvt, solver));
  Factors out;
  ST_ASSIGN_OR_RETURN(out.u, ctx.ToHost(du));
  ST_ASSIGN_OR_RETURN(out.s, ctx.ToHost(ds));
  ST_ASSIGN_OR_RETURN(out.vt, ctx.ToHost(dvt));
  return out;
}

TEST(SvdCudaTest, MatchesCpuOverAwkwardShapesAndSolvers) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  struct Case {
    int64_t m, n;
  };
  for (const Case& c :
       {Case{1, 1}, Case{1, 7}, Case{7, 1}, Case{7, 111}, Case{111, 7}, Case{111, 111}, Case{4097, 7}, Case{7, 4097}}) {
    const int64_t k = std::min(c.m, c.n);
    // Distinct, well separated singular values keep the singular vectors comparable across solvers.
    std::vector<double> sigma(k);
    for (int64_t i = 0; i < k; ++i) sigma[i] = 1.0 + static_cast<double>(k - i);
    for (DType dt : {DType::kF32, DType::kF64}) {
      const Tensor a = RandomWithSingularValues(c.m, c.n, sigma, dt, 20 + c.m);
      const Factors cpu_f = CpuSvd(a);
      for (cuda::SvdSolver solver : {cuda::SvdSolver::kQr, cuda::SvdSolver::kJacobi}) {
        SCOPED_TRACE(::testing::Message()
                     << c.m << "x" << c.n << " " << DTypeName(dt) << " solver " << static_cast<int>(solver));
        auto got = CudaSvd(*ctx, a, solver);
        ASSERT_TRUE(got.ok()) << got.status();
        ExpectSvdIdentities(a, *got, 10 * Tol(dt));
        ExpectSameFactors(*got, cpu_f, Tolerance{k * Tol(dt), 0}, Tolerance{100 * Tol(dt), 0});
      }
    }
  }
}

TEST(SvdCudaTest, BadInputsGetClearErrors) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  Tensor a = RandomNormal({6, 4}, DType::kF32, 5);
  a.at<float>({0, 3}) = NAN;
  auto da = ctx->ToDevice(a);
  auto du = ctx->Allocate({6, 4}, DType::kF32), ds = ctx->Allocate({4}, DType::kF32),
       dvt = ctx->Allocate({4, 4}, DType::kF32);
  ASSERT_TRUE(da.ok() && du.ok() && ds.ok() && dvt.ok());
  for (cuda::SvdSolver solver : {cuda::SvdSolver::kQr, cuda::SvdSolver::kJacobi}) {
    const absl::Status s = cuda::Svd(*ctx, *da, &*du, &*ds, &*dvt, solver);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("svd input A has a non-finite entry"), std::string::npos) << s;
  }
  Tensor host_s = Tensor::Empty({4}, DType::kF32);
  const absl::Status s = cuda::Svd(*ctx, *da, &*du, &host_s, &*dvt);
  EXPECT_NE(s.message().find("svd output S must be on cuda"), std::string::npos) << s;
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
