// CPU benchmarks: each of our op wrappers against the raw OpenBLAS / LAPACK call it wraps, on the
// same inputs, in the same run. Goal (issue 2): overhead within 1.1x at n = 1024 and 2048.
//   bazel run -c opt //bench:cpu_bench            (or ./dev.sh bench)
// The raw side does the same unavoidable work as ours (e.g. copying A, which LAPACK destroys)
// so the ratio measures the wrapper, not the problem.
#include <lapacke.h>
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "bench/ratio_reporter.h"
#include "benchmark/benchmark.h"
#include "kernels/ops/covariance.h"
#include "kernels/ops/eigh.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/svd.h"
#include "kernels/testing/random.h"

namespace sigmatune::bench {
namespace {

using kernels::Transpose;

void Check(bool ok, benchmark::State& state, const char* what) {
  if (!ok) state.SkipWithError(what);
}

// ---- matmul: C = A B, n x n x n, f32 -----------------------------------------------------
void BM_MatmulOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = testing::RandomNormal({n, n}, DType::kF32, 1);
  const Tensor b = testing::RandomNormal({n, n}, DType::kF32, 2);
  Tensor c = Tensor::Empty({n, n}, DType::kF32);
  for (auto _ : state) {
    Check(kernels::cpu::Matmul(a, Transpose::kNo, b, Transpose::kNo, 1.0, 0.0, &c).ok(), state, "matmul");
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}

void BM_MatmulRaw(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = testing::RandomNormal({n, n}, DType::kF32, 1);
  const Tensor b = testing::RandomNormal({n, n}, DType::kF32, 2);
  Tensor c = Tensor::Empty({n, n}, DType::kF32);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n,
                0.0f, c.data<float>(), n);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}

// ---- covariance: C += X^T X, X is 2n x n tokens, f32 ----------------------------------------
void BM_SyrkOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor x = testing::RandomNormal({2 * n, n}, DType::kF32, 3);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  for (auto _ : state) Check(kernels::cpu::AccumulateCovariance(x, 1.0, &c).ok(), state, "syrk");
}

void BM_SyrkRaw(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor x = testing::RandomNormal({2 * n, n}, DType::kF32, 3);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  for (auto _ : state) {
    // The bare SYRK leaves the lower triangle stale; ours also mirrors it (part of the contract).
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, 2 * n, 1.0f, x.data<float>(), n, 1.0f, c.data<float>(), n);
  }
}

// ---- symmetric eigendecomposition, all pairs, f32 -----------------------------------------
void BM_EighOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  Tensor a = testing::RandomNormal({n, n}, DType::kF32, 4);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  Check(kernels::cpu::AccumulateCovariance(a, 1.0 / n, &c).ok(), state, "covariance");
  Tensor w = Tensor::Empty({n}, DType::kF32), v = Tensor::Empty({n, n}, DType::kF32);
  for (auto _ : state) Check(kernels::cpu::SymmetricEigen(c, &w, &v).ok(), state, "eigh");
}

void BM_EighRaw(benchmark::State& state) {
  const int64_t n = state.range(0);
  Tensor a = testing::RandomNormal({n, n}, DType::kF32, 4);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  Check(kernels::cpu::AccumulateCovariance(a, 1.0 / n, &c).ok(), state, "covariance");
  std::vector<float> work_a(n * n), w(n);
  // Documented minimum sizes (the float workspace query is unreliable at large n).
  std::vector<float> work(1 + 6 * n + 2 * n * n);
  std::vector<lapack_int> iwork(3 + 5 * n);
  for (auto _ : state) {
    std::copy(c.data<float>(), c.data<float>() + n * n, work_a.begin());
    const lapack_int info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'L', n, work_a.data(), n, w.data(),
                                                work.data(), work.size(), iwork.data(), iwork.size());
    Check(info == 0, state, "ssyevd");
  }
}

// ---- thin SVD, n x n, f32 -----------------------------------------------------------------
void BM_SvdOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = testing::RandomNormal({n, n}, DType::kF32, 5);
  Tensor u = Tensor::Empty({n, n}, DType::kF32), s = Tensor::Empty({n}, DType::kF32),
         vt = Tensor::Empty({n, n}, DType::kF32);
  for (auto _ : state) Check(kernels::cpu::Svd(a, &u, &s, &vt).ok(), state, "svd");
}

void BM_SvdRaw(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = testing::RandomNormal({n, n}, DType::kF32, 5);
  std::vector<float> work_a(n * n), s(n), u(n * n), vt(n * n);
  std::vector<lapack_int> iwork(8 * n);
  float query = 0;
  LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', n, n, work_a.data(), n, s.data(), u.data(), n, vt.data(), n, &query,
                      -1, iwork.data());
  std::vector<float> work(std::max<int64_t>(static_cast<int64_t>(query * 1.001) + 1, 4 * n * n + 7 * n));
  for (auto _ : state) {
    std::copy(a.data<float>(), a.data<float>() + n * n, work_a.begin());
    const lapack_int info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', n, n, work_a.data(), n, s.data(), u.data(),
                                                n, vt.data(), n, work.data(), work.size(), iwork.data());
    Check(info == 0, state, "sgesdd");
  }
}

// "ours" and the anchor alternate per size so drift hits both alike.
#define ST_PAIR(op, ours, raw, anchor, iterations)                                                     \
  BENCHMARK(ours)->Name(#op "/ours/1024")->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations); \
  BENCHMARK(raw)->Name(#op "/" anchor "/1024")->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations); \
  BENCHMARK(ours)->Name(#op "/ours/2048")->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations); \
  BENCHMARK(raw)->Name(#op "/" anchor "/2048")->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations)

ST_PAIR(Matmul, BM_MatmulOurs, BM_MatmulRaw, "sgemm", 10);
ST_PAIR(Syrk, BM_SyrkOurs, BM_SyrkRaw, "ssyrk", 10);
ST_PAIR(Eigh, BM_EighOurs, BM_EighRaw, "ssyevd", 3);
ST_PAIR(Svd, BM_SvdOurs, BM_SvdRaw, "sgesdd", 2);

}  // namespace
}  // namespace sigmatune::bench

int main(int argc, char** argv) { return sigmatune::bench::RunBenchmarksWithRatios(argc, argv); }
