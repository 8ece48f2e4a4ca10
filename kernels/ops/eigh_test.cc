#include "kernels/ops/eigh.h"

#include <chrono>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/linalg_testing.h"
#include "kernels/ops/matmul.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::kernels::testing::Along;
using ::sigmatune::kernels::testing::ApplySigns;
using ::sigmatune::kernels::testing::ColumnSigns;
using ::sigmatune::kernels::testing::IsAscending;
using ::sigmatune::kernels::testing::OrthonormalityError;
using ::sigmatune::kernels::testing::ProductF64;
using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::FrobeniusNorm;
using ::sigmatune::testing::LoadGolden;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RandomSymmetric;
using ::sigmatune::testing::RelativeError;
using ::sigmatune::testing::RunfilePath;
using ::sigmatune::testing::Tolerance;

// Relative accuracy we ask of backward-stable results at the test sizes (n <= 111).
double Tol(DType dt) { return dt == DType::kF32 ? 1e-5 : 1e-12; }

// (M + M^T) / 2 for a Gaussian M: a generic symmetric matrix, O(n^2) to make.
Tensor GaussianSymmetric(int64_t n, DType dt, uint64_t seed) {
  const Tensor m = RandomNormal({n, n}, DType::kF64, seed);
  Tensor a = Tensor::Empty({n, n}, DType::kF64);
  const double* pm = m.data<double>();
  double* pa = a.data<double>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) pa[i * n + j] = 0.5 * (pm[i * n + j] + pm[j * n + i]);
  }
  return a.To(dt);
}

// Evenly spaced eigenvalues lambda_i = i - n/2 (distinct, gap 1): eigenvectors are well conditioned.
std::vector<double> SpacedSpectrum(int64_t n) {
  std::vector<double> lambda(n);
  for (int64_t i = 0; i < n; ++i) lambda[i] = static_cast<double>(i) - 0.5 * static_cast<double>(n);
  return lambda;
}

// ||A V - V diag(w)||_F / ||A||_F, in double.
double EigenResidual(const Tensor& a, const Tensor& w, const Tensor& v) {
  const Tensor av = ProductF64(a, Transpose::kNo, v, Transpose::kNo);
  Tensor vw = v.To(DType::kF64);
  const int64_t n = vw.dim(0), k = vw.dim(1);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) vw.data<double>()[i * k + j] *= GetAsDouble(w, j);
  }
  return RelativeError(av, vw) * FrobeniusNorm(vw) / std::max(FrobeniusNorm(a), 1e-300);
}

struct Eigh {
  Tensor w, v;
};

Eigh CpuEigh(const Tensor& a) {
  const int64_t n = a.dim(0);
  Eigh out{Tensor::Empty({n}, a.dtype()), Tensor::Empty({n, n}, a.dtype())};
  const absl::Status s = cpu::SymmetricEigen(a, &out.w, &out.v);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(EighCpuTest, MatchesTorchGolden) {
  auto golden = LoadGolden(RunfilePath("tests/testdata/ops/eigh.safetensors"));
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (const std::string tag : {"n1", "n7", "n33"}) {
    SCOPED_TRACE(tag);
    const Tensor& a = golden->at(tag + "_a");
    const Eigh got = CpuEigh(a);
    EXPECT_TRUE(AllClose(got.w, golden->at(tag + "_w"), Tolerance{1e-12, 1e-12}));
    // Eigenvectors are defined up to sign: align each column with torch's before comparing.
    const Tensor& expected_v = golden->at(tag + "_v");
    const Tensor aligned = ApplySigns(got.v, ColumnSigns(got.v, expected_v), Along::kColumns);
    EXPECT_TRUE(AllClose(aligned, expected_v, Tolerance{1e-10, 1e-10}));
  }
}

TEST(EighCpuTest, IdentitiesOverAwkwardShapes) {
  for (int64_t n : {1, 2, 7, 111}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " " << DTypeName(dt));
      const Tensor a = GaussianSymmetric(n, dt, 100 + n);
      const Eigh got = CpuEigh(a);
      EXPECT_TRUE(IsAscending(got.w));
      EXPECT_LE(OrthonormalityError(got.v, Along::kColumns), 10 * Tol(dt));
      EXPECT_LE(EigenResidual(a, got.w, got.v), Tol(dt));
    }
  }
}

TEST(EighCpuTest, RecoversAKnownSpectrum) {
  const int64_t n = 111;
  const std::vector<double> lambda = SpacedSpectrum(n);
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Eigh got = CpuEigh(RandomSymmetric(n, lambda, dt, 7));
    EXPECT_TRUE(AllClose(got.w, Tensor::FromVector<double>({n}, lambda), Tolerance{n * Tol(dt), 0}));
  }
}

TEST(EighCpuTest, ReadsOnlyTheLowerTriangle) {
  const int64_t n = 33;
  for (DType dt : {DType::kF32, DType::kF64}) {
    const Tensor a = GaussianSymmetric(n, dt, 5);
    Tensor scrambled = a.Contiguous();
    const Tensor noise = RandomNormal({n, n}, dt, 6);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = i + 1; j < n; ++j) {
        if (dt == DType::kF32) {
          scrambled.at<float>({i, j}) = 1e3f * noise.at<float>({i, j});
        } else {
          scrambled.at<double>({i, j}) = 1e3 * noise.at<double>({i, j});
        }
      }
    }
    const Eigh clean = CpuEigh(a), got = CpuEigh(scrambled);
    EXPECT_TRUE(AllClose(got.w, clean.w, Tolerance{0, 0}));
    EXPECT_TRUE(AllClose(got.v, clean.v, Tolerance{0, 0}));
  }
}

TEST(EighCpuTest, RangeMatchesTheSliceOfTheFullDecomposition) {
  const int64_t n = 111;
  struct Range {
    int64_t begin, end;
  };
  for (DType dt : {DType::kF32, DType::kF64}) {
    const Tensor a = RandomSymmetric(n, SpacedSpectrum(n), dt, 9);
    const Eigh full = CpuEigh(a);
    for (const Range& r : {Range{0, 1}, Range{0, 5}, Range{50, 61}, Range{106, 111}, Range{0, 111}, Range{3, 3}}) {
      SCOPED_TRACE(::testing::Message() << "[" << r.begin << ", " << r.end << ") " << DTypeName(dt));
      const int64_t k = r.end - r.begin;
      Tensor w = Tensor::Empty({k}, dt), v = Tensor::Empty({n, k}, dt);
      const absl::Status s = cpu::SymmetricEigenRange(a, r.begin, r.end, &w, &v);
      ASSERT_TRUE(s.ok()) << s;
      if (k == 0) continue;
      const Tensor full_v = full.v.Slice(1, r.begin, r.end).Contiguous();
      EXPECT_TRUE(AllClose(w, full.w.Slice(0, r.begin, r.end).Contiguous(), Tolerance{n * Tol(dt), 0}));
      const Tensor aligned = ApplySigns(v, ColumnSigns(v, full_v), Along::kColumns);
      EXPECT_TRUE(AllClose(aligned, full_v, Tolerance{100 * Tol(dt), 0}));
      EXPECT_LE(OrthonormalityError(v, Along::kColumns), 10 * Tol(dt));
      EXPECT_LE(EigenResidual(a, w, v) * FrobeniusNorm(a) / std::max(FrobeniusNorm(w), 1.0), 10 * Tol(dt));
    }
  }
}

// n = 4096 is where LAPACKE_ssyevd's float workspace query (1 + 6n + 2n^2 = 33579009 -> 33579008)
// comes back one element short; the op must size the workspace from the documented minimum.
TEST(EighCpuTest, Float32AtN4096SurvivesTheWorkspaceQueryRounding) {
  const int64_t n = 4096;
  const Tensor a = GaussianSymmetric(n, DType::kF32, 4096);
  Tensor w = Tensor::Empty({n}, DType::kF32), v = Tensor::Empty({n, n}, DType::kF32);
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = cpu::SymmetricEigen(a, &w, &v);
  ASSERT_TRUE(s.ok()) << s;
  std::cout << "ssyevd n=4096: " << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s\n";
  EXPECT_TRUE(IsAscending(w));
  // Spot-check a few eigenpairs: unit length and ||A v_j - w_j v_j|| relative to ||A||_2, which is
  // about sqrt(2n) for this ensemble (semicircle law).
  const float* pa = a.data<float>();
  const float* pv = v.data<float>();
  const double norm_a = std::sqrt(2.0 * static_cast<double>(n));
  for (int64_t j : {int64_t{0}, int64_t{1}, n / 2, n - 1}) {
    double residual = 0, norm = 0;
    for (int64_t i = 0; i < n; ++i) {
      double av = 0;
      for (int64_t l = 0; l < n; ++l) av += double{pa[i * n + l]} * pv[l * n + j];
      const double r = av - double{w.data<float>()[j]} * pv[i * n + j];
      residual += r * r;
      norm += double{pv[i * n + j]} * pv[i * n + j];
    }
    EXPECT_LE(std::sqrt(residual) / norm_a, 1e-5) << "eigenpair " << j;
    EXPECT_NEAR(norm, 1.0, 1e-4) << "eigenpair " << j;
  }
}

TEST(EighCpuTest, BadInputsGetClearErrors) {
  const Tensor a = GaussianSymmetric(4, DType::kF64, 1);
  Tensor w = Tensor::Empty({4}, DType::kF64), v = Tensor::Empty({4, 4}, DType::kF64);
  auto expect_error = [](const absl::Status& s, const std::string& needle) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), std::string::npos) << "missing '" << needle << "' in: " << s;
  };
  Tensor w3 = Tensor::Empty({3}, DType::kF64), v43 = Tensor::Empty({4, 3}, DType::kF64);
  expect_error(cpu::SymmetricEigen(Tensor::Zeros({4, 3}, DType::kF64), &w, &v), "eigh input A must be square");
  expect_error(cpu::SymmetricEigen(a, &w3, &v), "eigh output eigenvalues");
  expect_error(cpu::SymmetricEigen(a, &w, &v43), "eigh output eigenvectors");
  Tensor v32 = Tensor::Empty({4, 4}, DType::kF32);
  expect_error(cpu::SymmetricEigen(a, &w, &v32), "eigh output eigenvectors must be a contiguous f64[4, 4]");
  expect_error(cpu::SymmetricEigen(a.To(DType::kBF16), &w, &v), "eigh input A must be f32 or f64");
  expect_error(cpu::SymmetricEigen(Tensor::Zeros({4}, DType::kF64), &w, &v), "eigh input A must be a matrix");
  const Tensor wide = Tensor::Zeros({4, 8}, DType::kF64);
  expect_error(cpu::SymmetricEigen(wide.Slice(1, 0, 4), &w, &v), "eigh input A must be contiguous");
  Tensor nan_a = a.Contiguous();
  nan_a.at<double>({2, 1}) = NAN;
  expect_error(cpu::SymmetricEigen(nan_a, &w, &v), "eigh input A has a non-finite entry nan at (2, 1)");
  expect_error(cpu::SymmetricEigenRange(a, 2, 5, &w3, &v43), "0 <= begin <= end <= n = 4");
  expect_error(cpu::SymmetricEigenRange(a, 3, 2, &w3, &v43), "[begin, end) = [3, 2)");
  expect_error(cpu::SymmetricEigenRange(a, -1, 2, &w3, &v43), "[begin, end) = [-1, 2)");
  expect_error(cpu::SymmetricEigenRange(a, 1, 4, &w, &v43), "eigh output eigenvalues must be a contiguous f64[3]");
}

TEST(EighCpuTest, EmptyMatrixIsANoOp) {
  Tensor w = Tensor::Empty({0}, DType::kF32), v = Tensor::Empty({0, 0}, DType::kF32);
  EXPECT_TRUE(cpu::SymmetricEigen(Tensor::Empty({0, 0}, DType::kF32), &w, &v).ok());
}

#if SIGMATUNE_WITH_CUDA
struct CudaEigh {
  Tensor w, v;  // on the host
};

absl::StatusOr<CudaEigh> RunCuda(GpuContext& ctx, const Tensor& a, int64_t begin, int64_t end, cuda::EighSolver solver,
                                 bool full) {
  const int64_t n = a.dim(0), k = end - begin;
  ST_ASSIGN_OR_RETURN(Tensor da, ctx.ToDevice(a));
  ST_ASSIGN_OR_RETURN(Tensor dw, ctx.Allocate({k}, a.dtype()));
  ST_ASSIGN_OR_RETURN(Tensor dv, ctx.Allocate({n, k}, a.dtype()));
  if (full) {
    ST_RETURN_IF_ERROR(cuda::SymmetricEigen(ctx, da, &dw, &dv, solver));
  } else {
    ST_RETURN_IF_ERROR(cuda::SymmetricEigenRange(ctx, da, begin, end, &dw, &dv, solver));
  }
  ST_ASSIGN_OR_RETURN(Tensor w, ctx.ToHost(dw));
  ST_ASSIGN_OR_RETURN(Tensor v, ctx.ToHost(dv));
  return CudaEigh{w, v};
}

TEST(EighCudaTest, MatchesCpuOverAwkwardShapesAndSolvers) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  for (int64_t n : {1, 7, 111}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      const Tensor a = RandomSymmetric(n, SpacedSpectrum(n), dt, 31 + n);
      const Eigh cpu_full = CpuEigh(a);
      for (cuda::EighSolver solver : {cuda::EighSolver::kDivideAndConquer, cuda::EighSolver::kJacobi}) {
        SCOPED_TRACE(::testing::Message()
                     << "n=" << n << " " << DTypeName(dt) << " solver " << static_cast<int>(solver));
        auto got = RunCuda(*ctx, a, 0, n, solver, /*full=*/true);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_TRUE(AllClose(got->w, cpu_full.w, Tolerance{n * Tol(dt), 0}));
        EXPECT_TRUE(AllClose(ApplySigns(got->v, ColumnSigns(got->v, cpu_full.v), Along::kColumns), cpu_full.v,
                             Tolerance{100 * Tol(dt), 0}));
        EXPECT_LE(EigenResidual(a, got->w, got->v), Tol(dt));
        // Index ranges: the bottom, a middle and the top slice.
        for (int64_t begin : {int64_t{0}, n / 2, n - 1}) {
          const int64_t end = std::min(n, begin + 5);
          auto part = RunCuda(*ctx, a, begin, end, solver, /*full=*/false);
          ASSERT_TRUE(part.ok()) << part.status();
          const Tensor cpu_v = cpu_full.v.Slice(1, begin, end).Contiguous();
          EXPECT_TRUE(AllClose(part->w, cpu_full.w.Slice(0, begin, end).Contiguous(), Tolerance{n * Tol(dt), 0}));
          EXPECT_TRUE(AllClose(ApplySigns(part->v, ColumnSigns(part->v, cpu_v), Along::kColumns), cpu_v,
                               Tolerance{100 * Tol(dt), 0}));
        }
      }
    }
  }
}

// n = 4097 with divide and conquer on the device; checked by A V = V diag(w) computed with cuBLAS.
TEST(EighCudaTest, LargeMatrixIdentities) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  const int64_t n = 4097;
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor a = GaussianSymmetric(n, dt, 77);
    auto da = ctx->ToDevice(a);
    auto dw = ctx->Allocate({n}, dt), dv = ctx->Allocate({n, n}, dt), dav = ctx->Allocate({n, n}, dt);
    ASSERT_TRUE(da.ok() && dw.ok() && dv.ok() && dav.ok());
    const absl::Status s = cuda::SymmetricEigen(*ctx, *da, &*dw, &*dv);
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_TRUE(cuda::Matmul(*ctx, *da, Transpose::kNo, *dv, Transpose::kNo, 1.0, 0.0, &*dav).ok());
    auto w = ctx->ToHost(*dw), v = ctx->ToHost(*dv), av = ctx->ToHost(*dav);
    ASSERT_TRUE(w.ok() && v.ok() && av.ok());
    EXPECT_TRUE(IsAscending(*w));
    Tensor vw = v->To(DType::kF64);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) vw.data<double>()[i * n + j] *= GetAsDouble(*w, j);
    }
    EXPECT_LE(RelativeError(*av, vw) * FrobeniusNorm(vw) / FrobeniusNorm(a), dt == DType::kF32 ? 1e-4 : 1e-11);
  }
}

TEST(EighCudaTest, BadInputsGetClearErrors) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  const Tensor a = GaussianSymmetric(4, DType::kF32, 3);
  auto da = ctx->ToDevice(a);
  auto dw = ctx->Allocate({4}, DType::kF32), dv = ctx->Allocate({4, 4}, DType::kF32);
  ASSERT_TRUE(da.ok() && dw.ok() && dv.ok());
  Tensor host_w = Tensor::Empty({4}, DType::kF32);
  absl::Status s = cuda::SymmetricEigen(*ctx, *da, &host_w, &*dv);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("eigh output eigenvalues must be on cuda"), std::string::npos) << s;
  Tensor nan_a = a.Contiguous();
  nan_a.at<float>({3, 0}) = INFINITY;
  auto dnan = ctx->ToDevice(nan_a);
  ASSERT_TRUE(dnan.ok());
  for (cuda::EighSolver solver : {cuda::EighSolver::kDivideAndConquer, cuda::EighSolver::kJacobi}) {
    s = cuda::SymmetricEigen(*ctx, *dnan, &*dw, &*dv, solver);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("eigh input A has a non-finite entry"), std::string::npos) << s;
  }
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
