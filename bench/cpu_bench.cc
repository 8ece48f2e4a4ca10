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

// Every benchmark runs its body once untimed first (thread pools, page faults), then times it.
template <typename F>
void Time(benchmark::State& state, F&& body) {
  body();
  for (auto _ : state) body();
}

double GemmFlops(int64_t n) { return 2.0 * n * n * n; }

// ---- matmul: C = A B, n x n x n, f32 -----------------------------------------------------
void BM_MatmulOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = testing::RandomNormal({n, n}, DType::kF32, 1);
  const Tensor b = testing::RandomNormal({n, n}, DType::kF32, 2);
  Tensor c = Tensor::Empty({n, n}, DType::kF32);
  Time(state, [&] {
    Check(kernels::cpu::Matmul(a, Transpose::kNo, b, Transpose::kNo, 1.0, 0.0, &c).ok(), state, "matmul");
  });
  state.counters["GFLOP/s"] =
      benchmark::Counter(GemmFlops(n), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_MatmulRaw(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = testing::RandomNormal({n, n}, DType::kF32, 1);
  const Tensor b = testing::RandomNormal({n, n}, DType::kF32, 2);
  Tensor c = Tensor::Empty({n, n}, DType::kF32);
  Time(state, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n,
                0.0f, c.data<float>(), n);
  });
  state.counters["GFLOP/s"] =
      benchmark::Counter(GemmFlops(n), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// ---- covariance: C += X^T X, X is 2n x n tokens, f32 ----------------------------------------
void BM_SyrkOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor x = testing::RandomNormal({2 * n, n}, DType::kF32, 3);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  Time(state, [&] { Check(kernels::cpu::AccumulateCovariance(x, 1.0, &c).ok(), state, "syrk"); });
}

// The same update leaving the lower triangle stale (what a calibration loop does per batch,
// symmetrizing once at the end): the same work as the bare SYRK.
void BM_SyrkUpperOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor x = testing::RandomNormal({2 * n, n}, DType::kF32, 3);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  Time(state, [&] {
    Check(kernels::cpu::AccumulateCovariance(x, 1.0, &c, kernels::CovarianceFill::kUpperOnly).ok(), state, "syrk");
  });
}

void BM_SyrkRaw(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor x = testing::RandomNormal({2 * n, n}, DType::kF32, 3);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  // The bare SYRK leaves the lower triangle stale; ours also mirrors it (part of the contract).
  Time(state, [&] {
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, 2 * n, 1.0f, x.data<float>(), n, 1.0f, c.data<float>(), n);
  });
}

// A well-conditioned symmetric input: X^T X / n of a Gaussian X.
Tensor SymmetricInput(int64_t n) {
  const Tensor x = testing::RandomNormal({n, n}, DType::kF32, 4);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  ST_CHECK(kernels::cpu::AccumulateCovariance(x, 1.0 / n, &c).ok());
  return c;
}

// ---- symmetric eigendecomposition, all pairs, f32 -----------------------------------------
void BM_EighOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor c = SymmetricInput(n);
  Tensor w = Tensor::Empty({n}, DType::kF32), v = Tensor::Empty({n, n}, DType::kF32);
  Time(state, [&] { Check(kernels::cpu::SymmetricEigen(c, &w, &v).ok(), state, "eigh"); });
}

void BM_EighRaw(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor c = SymmetricInput(n);
  std::vector<float> work_a(n * n), w(n);
  // Documented minimum sizes (the float workspace query is unreliable at large n).
  std::vector<float> work(1 + 6 * n + 2 * n * n);
  std::vector<lapack_int> iwork(3 + 5 * n);
  Time(state, [&] {
    std::copy(c.data<float>(), c.data<float>() + n * n, work_a.begin());  // syevd destroys A
    const lapack_int info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'L', n, work_a.data(), n, w.data(),
                                                work.data(), work.size(), iwork.data(), iwork.size());
    Check(info == 0, state, "ssyevd");
  });
}

// ---- thin SVD, n x n, f32 -----------------------------------------------------------------
void BM_SvdOurs(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = testing::RandomNormal({n, n}, DType::kF32, 5);
  Tensor u = Tensor::Empty({n, n}, DType::kF32), s = Tensor::Empty({n}, DType::kF32),
         vt = Tensor::Empty({n, n}, DType::kF32);
  Time(state, [&] { Check(kernels::cpu::Svd(a, &u, &s, &vt).ok(), state, "svd"); });
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
  Time(state, [&] {
    std::copy(a.data<float>(), a.data<float>() + n * n, work_a.begin());  // gesdd destroys A
    const lapack_int info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', n, n, work_a.data(), n, s.data(), u.data(),
                                                n, vt.data(), n, work.data(), work.size(), iwork.data());
    Check(info == 0, state, "sgesdd");
  });
}

// "ours" and the anchor alternate per size so drift hits both alike.
#define ST_PAIR(op, ours, raw, anchor, iterations)                                                     \
  BENCHMARK(ours)->Name(#op "/ours")->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations); \
  BENCHMARK(raw)->Name(#op "/" anchor)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations); \
  BENCHMARK(ours)->Name(#op "/ours")->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations); \
  BENCHMARK(raw)->Name(#op "/" anchor)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iterations)

ST_PAIR(Matmul, BM_MatmulOurs, BM_MatmulRaw, "sgemm", 10);
ST_PAIR(Syrk, BM_SyrkOurs, BM_SyrkRaw, "ssyrk", 10);
ST_PAIR(SyrkUpper, BM_SyrkUpperOurs, BM_SyrkRaw, "ssyrk", 10);
ST_PAIR(Eigh, BM_EighOurs, BM_EighRaw, "ssyevd", 5);
ST_PAIR(Svd, BM_SvdOurs, BM_SvdRaw, "sgesdd", 3);

}  // namespace
}  // namespace sigmatune::bench

int main(int argc, char** argv) { return sigmatune::bench::RunBenchmarksWithRatios(argc, argv); }
