#include "kernels/ops/rsvd.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/gaussian.h"
#include "kernels/ops/linalg_testing.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/gpu.h"
#include "kernels/testing/random.h"

namespace sigmatune::kernels {
namespace {

using ::sigmatune::kernels::testing::Along;
using ::sigmatune::kernels::testing::IsDescending;
using ::sigmatune::kernels::testing::OrthonormalityError;
using ::sigmatune::kernels::testing::ReconstructF64;
using ::sigmatune::testing::AllClose;
using ::sigmatune::testing::RandomNormal;
using ::sigmatune::testing::RandomWithSingularValues;
using ::sigmatune::testing::RelativeError;
using ::sigmatune::testing::Tolerance;

double Tol(DType dt) { return dt == DType::kF32 ? 1e-5 : 1e-12; }

std::vector<double> Geometric(int64_t k, double ratio) {
  std::vector<double> sigma(k);
  for (int64_t i = 0; i < k; ++i) sigma[i] = std::pow(ratio, static_cast<double>(i));
  return sigma;
}

struct Factors {
  Tensor u, s, vt;
};

Factors CpuRsvd(const Tensor& a, int64_t rank, int niter, uint64_t seed) {
  const DType dt = a.dtype();
  Factors f{Tensor::Empty({a.dim(0), rank}, dt), Tensor::Empty({rank}, dt), Tensor::Empty({rank, a.dim(1)}, dt)};
  const absl::Status s = cpu::RandomizedSvd(a, rank, niter, seed, &f.u, &f.s, &f.vt);
  EXPECT_TRUE(s.ok()) << s;
  return f;
}

// ||A - U diag(S) Vt||_F / ||A||_F.
double ApproximationError(const Tensor& a, const Factors& f) {
  return RelativeError(ReconstructF64(f.u, f.s, f.vt), a);
}

TEST(RsvdCpuTest, StartMatrixIsTheSeededHostGaussian) {
  // Pins the generator: the same mapping as the test helpers' RandomNormal, on every machine.
  EXPECT_TRUE(
      AllClose(HostGaussianMatrix(5, 3, DType::kF64, 42), RandomNormal({5, 3}, DType::kF64, 42), Tolerance{0, 0}));
  EXPECT_TRUE(
      AllClose(HostGaussianMatrix(4097, 2, DType::kF32, 7), RandomNormal({4097, 2}, DType::kF32, 7), Tolerance{0, 0}));
}

TEST(RsvdCpuTest, RecoversTheTopSingularValuesOfADecayingSpectrum) {
  struct Case {
    int64_t m, n;
  };
  for (const Case& c : {Case{111, 70}, Case{70, 111}, Case{4097, 33}, Case{33, 4097}}) {
    const int64_t k = std::min(c.m, c.n), rank = 5;
    const std::vector<double> sigma = Geometric(k, 0.5);
    for (DType dt : {DType::kF32, DType::kF64}) {
      SCOPED_TRACE(::testing::Message() << c.m << "x" << c.n << " " << DTypeName(dt));
      const Tensor a = RandomWithSingularValues(c.m, c.n, sigma, dt, 60 + c.m);
      // sigma_5 converges like (sigma_6 / sigma_5)^(4 niter + 2) = 2^-50: at rounding level.
      const Factors f = CpuRsvd(a, rank, /*niter=*/12, /*seed=*/1);
      const std::vector<double> top(sigma.begin(), sigma.begin() + rank);
      EXPECT_TRUE(AllClose(f.s, Tensor::FromVector<double>({rank}, top), Tolerance{0, 100 * Tol(dt)}));
      EXPECT_TRUE(IsDescending(f.s));
      EXPECT_LE(OrthonormalityError(f.u, Along::kColumns), Tol(dt));
      EXPECT_LE(OrthonormalityError(f.vt, Along::kRows), Tol(dt));
      // The best rank-5 error is sqrt(sum_{i >= 5} sigma_i^2) / ||A||_F; we should be at it.
      double tail = 0, total = 0;
      for (int64_t i = 0; i < k; ++i) {
        total += sigma[i] * sigma[i];
        if (i >= rank) tail += sigma[i] * sigma[i];
      }
      EXPECT_NEAR(ApproximationError(a, f), std::sqrt(tail / total), 100 * Tol(dt));
    }
  }
}

TEST(RsvdCpuTest, ErrorDoesNotGrowWithNiter) {
  const std::vector<double> sigma = Geometric(70, 0.85);  // slow decay: the iterations matter
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor a = RandomWithSingularValues(111, 70, sigma, dt, 5);
    std::vector<double> errors;
    for (int niter = 0; niter <= 6; ++niter) errors.push_back(ApproximationError(a, CpuRsvd(a, 10, niter, 3)));
    for (int niter = 1; niter <= 6; ++niter) {
      EXPECT_LE(errors[niter], errors[niter - 1] * (1 + 10 * Tol(dt))) << "niter " << niter;
    }
    EXPECT_LT(errors[6], errors[0]);  // and strictly improves over the plain range finder
  }
}

TEST(RsvdCpuTest, FullRankReconstructsExactly) {
  struct Case {
    int64_t m, n;
  };
  for (const Case& c : {Case{1, 1}, Case{1, 7}, Case{7, 1}, Case{7, 111}, Case{111, 7}, Case{33, 33}, Case{4097, 7}}) {
    for (DType dt : {DType::kF32, DType::kF64}) {
      for (int niter : {0, 2}) {
        SCOPED_TRACE(::testing::Message() << c.m << "x" << c.n << " " << DTypeName(dt) << " niter " << niter);
        const Tensor a = RandomNormal({c.m, c.n}, dt, 70 + c.m);
        const Factors f = CpuRsvd(a, std::min(c.m, c.n), niter, 11);
        EXPECT_LE(ApproximationError(a, f), 10 * Tol(dt));
        EXPECT_LE(OrthonormalityError(f.u, Along::kColumns), 10 * Tol(dt));
        EXPECT_LE(OrthonormalityError(f.vt, Along::kRows), 10 * Tol(dt));
      }
    }
  }
}

TEST(RsvdCpuTest, SameSeedGivesTheSameBits) {
  const Tensor a = RandomWithSingularValues(111, 70, Geometric(70, 0.85), DType::kF32, 8);
  const Factors first = CpuRsvd(a, 6, 1, 99), again = CpuRsvd(a, 6, 1, 99), other = CpuRsvd(a, 6, 1, 100);
  EXPECT_TRUE(AllClose(again.u, first.u, Tolerance{0, 0}));
  EXPECT_TRUE(AllClose(again.s, first.s, Tolerance{0, 0}));
  EXPECT_TRUE(AllClose(again.vt, first.vt, Tolerance{0, 0}));
  EXPECT_FALSE(AllClose(other.s, first.s, Tolerance{0, 0}));  // the seed matters
}

TEST(RsvdCpuTest, BadInputsGetClearErrors) {
  const Tensor a = RandomNormal({6, 4}, DType::kF64, 1);
  auto expect_error = [](const absl::Status& s, const std::string& needle) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), std::string::npos) << "missing '" << needle << "' in: " << s;
  };
  Tensor u = Tensor::Empty({6, 2}, DType::kF64), s = Tensor::Empty({2}, DType::kF64),
         vt = Tensor::Empty({2, 4}, DType::kF64);
  expect_error(cpu::RandomizedSvd(a, 0, 2, 1, &u, &s, &vt), "rank must be in [1, min(m, n) = 4]");
  expect_error(cpu::RandomizedSvd(a, 5, 2, 1, &u, &s, &vt), "got 5");
  expect_error(cpu::RandomizedSvd(a, 2, -1, 1, &u, &s, &vt), "niter must be >= 0, got -1");
  Tensor u_wrong = Tensor::Empty({6, 3}, DType::kF64);
  expect_error(cpu::RandomizedSvd(a, 2, 2, 1, &u_wrong, &s, &vt),
               "randomized svd output U must be a contiguous f64[6, 2] matrix");
  Tensor vt_wrong = Tensor::Empty({2, 4}, DType::kF32);
  expect_error(cpu::RandomizedSvd(a, 2, 2, 1, &u, &s, &vt_wrong), "randomized svd output Vt");
  Tensor nan_a = a.Contiguous();
  nan_a.at<double>({3, 3}) = NAN;
  expect_error(cpu::RandomizedSvd(nan_a, 2, 2, 1, &u, &s, &vt), "randomized svd input A has a non-finite entry");
  expect_error(cpu::RandomizedSvd(Tensor::Empty({0, 4}, DType::kF64), 1, 2, 1, &u, &s, &vt),
               "rank must be in [1, min(m, n) = 0]");
}

#if SIGMATUNE_WITH_CUDA
absl::StatusOr<Factors> CudaRsvd(GpuContext& ctx, const Tensor& a, int64_t rank, int niter, uint64_t seed,
                                 cuda::SvdSolver solver) {
  const DType dt = a.dtype();
  ST_ASSIGN_OR_RETURN(Tensor da, ctx.ToDevice(a));
  ST_ASSIGN_OR_RETURN(Tensor du, ctx.Allocate({a.dim(0), rank}, dt));
  ST_ASSIGN_OR_RETURN(Tensor ds, ctx.Allocate({rank}, dt));
  ST_ASSIGN_OR_RETURN(Tensor dvt, ctx.Allocate({rank, a.dim(1)}, dt));
  ST_RETURN_IF_ERROR(cuda::RandomizedSvd(ctx, da, rank, niter, seed, &du, &ds, &dvt, solver));
  Factors out;
  ST_ASSIGN_OR_RETURN(out.u, ctx.ToHost(du));
  ST_ASSIGN_OR_RETURN(out.s, ctx.ToHost(ds));
  ST_ASSIGN_OR_RETURN(out.vt, ctx.ToHost(dvt));
  return out;
}

TEST(RsvdCudaTest, MatchesCpuOverAwkwardShapesAndSolvers) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  struct Case {
    int64_t m, n, rank;
  };
  for (const Case& c : {Case{7, 111, 7}, Case{111, 70, 5}, Case{4097, 33, 5}, Case{33, 4097, 5}, Case{1, 7, 1}}) {
    const int64_t k = std::min(c.m, c.n);
    for (DType dt : {DType::kF32, DType::kF64}) {
      const Tensor a = RandomWithSingularValues(c.m, c.n, Geometric(k, 0.5), dt, 80 + c.m);
      const Factors cpu_f = CpuRsvd(a, c.rank, 4, 21);
      const Tensor cpu_usv = ReconstructF64(cpu_f.u, cpu_f.s, cpu_f.vt);
      for (cuda::SvdSolver solver : {cuda::SvdSolver::kQr, cuda::SvdSolver::kJacobi}) {
        SCOPED_TRACE(::testing::Message() << c.m << "x" << c.n << " rank " << c.rank << " " << DTypeName(dt)
                                          << " solver " << static_cast<int>(solver));
        auto got = CudaRsvd(*ctx, a, c.rank, 4, 21, solver);
        ASSERT_TRUE(got.ok()) << got.status();
        // Same start matrix on both backends: same singular values and the same low-rank matrix.
        EXPECT_TRUE(AllClose(got->s, cpu_f.s, Tolerance{10 * Tol(dt), 10 * Tol(dt)}));
        EXPECT_LE(RelativeError(ReconstructF64(got->u, got->s, got->vt), cpu_usv), 10 * Tol(dt));
        EXPECT_LE(OrthonormalityError(got->u, Along::kColumns), 10 * Tol(dt));
        EXPECT_LE(OrthonormalityError(got->vt, Along::kRows), 10 * Tol(dt));
      }
    }
  }
}

TEST(RsvdCudaTest, BadInputsGetClearErrors) {
  ST_GPU_CONTEXT_OR_SKIP(ctx);
  Tensor a = RandomNormal({6, 4}, DType::kF32, 1);
  a.at<float>({2, 2}) = NAN;
  auto da = ctx->ToDevice(a);
  auto du = ctx->Allocate({6, 2}, DType::kF32), ds = ctx->Allocate({2}, DType::kF32),
       dvt = ctx->Allocate({2, 4}, DType::kF32);
  ASSERT_TRUE(da.ok() && du.ok() && ds.ok() && dvt.ok());
  absl::Status s = cuda::RandomizedSvd(*ctx, *da, 2, 1, 1, &*du, &*ds, &*dvt);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("randomized svd input A has a non-finite entry"), std::string::npos) << s;
  s = cuda::RandomizedSvd(*ctx, *da, 9, 1, 1, &*du, &*ds, &*dvt);
  EXPECT_NE(s.message().find("rank must be in [1, min(m, n) = 4]"), std::string::npos) << s;
}
#endif

}  // namespace
}  // namespace sigmatune::kernels
