// GPU benchmarks: our CUDA wrappers against the raw cuBLAS / cuSOLVER calls, and the cuSOLVER
// routines against each other (which solver wins per shape decides what the decomposition phase
// uses). Needs a CUDA device; without one it prints why and exits 0.
//   bazel run -c opt //bench:gpu_bench -- --benchmark_repetitions=3
// Every timed body ends with a stream synchronize, so times are device times as a caller sees them.
#include <cublas_v2.h>
#include <cusolverDn.h>

#include <cstdio>
#include <functional>
#include <string>

#include "absl/strings/str_cat.h"
#include "bench/ratio_reporter.h"
#include "benchmark/benchmark.h"
#include "kernels/base/gpu_context.h"
#include "kernels/ops/covariance.h"
#include "kernels/ops/eigh.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/rsvd.h"
#include "kernels/ops/svd.h"
#include "kernels/testing/random.h"

namespace sigmatune::bench {
namespace {

using kernels::Transpose;

Tensor OnDevice(GpuContext& ctx, const Tensor& host) {
  auto t = ctx.ToDevice(host);
  ST_CHECK(t.ok()) << t.status();
  return *std::move(t);
}

Tensor DeviceEmpty(GpuContext& ctx, const Shape& shape, DType dtype) {
  auto t = ctx.Allocate(shape, dtype);
  ST_CHECK(t.ok()) << t.status();
  return *std::move(t);
}

// Runs `body` once untimed, then times body + synchronize.
void TimeOnDevice(benchmark::State& state, GpuContext& ctx, const std::function<bool()>& body) {
  if (!body() || !ctx.Synchronize().ok()) {
    state.SkipWithError("the first call failed");
    return;
  }
  for (auto _ : state) {
    if (!body()) state.SkipWithError("a call failed");
    ST_CHECK(ctx.Synchronize().ok());
  }
}

// A symmetric positive definite n x n f32 input (X^T X / n) on the device.
Tensor SymmetricOnDevice(GpuContext& ctx, int64_t n) {
  const Tensor x = testing::RandomNormal({n, n}, DType::kF32, 4);
  Tensor c = Tensor::Zeros({n, n}, DType::kF32);
  ST_CHECK(kernels::cpu::AccumulateCovariance(x, 1.0 / n, &c).ok());
  return OnDevice(ctx, c);
}

void RegisterMatmul(GpuContext& ctx, int64_t n) {
  const std::string size = absl::StrCat(n);
  benchmark::RegisterBenchmark(("MatmulBf16/ours/" + size).c_str(), [&ctx, n](benchmark::State& state) {
    Tensor a = OnDevice(ctx, testing::RandomNormal({n, n}, DType::kBF16, 1));
    Tensor b = OnDevice(ctx, testing::RandomNormal({n, n}, DType::kBF16, 2));
    Tensor c = DeviceEmpty(ctx, {n, n}, DType::kF32);
    TimeOnDevice(state, ctx, [&] {
      return kernels::cuda::Matmul(ctx, a, Transpose::kNo, b, Transpose::kNo, 1.0, 0.0, &c).ok();
    });
  })->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("MatmulBf16/cublas/" + size).c_str(), [&ctx, n](benchmark::State& state) {
    Tensor a = OnDevice(ctx, testing::RandomNormal({n, n}, DType::kBF16, 1));
    Tensor b = OnDevice(ctx, testing::RandomNormal({n, n}, DType::kBF16, 2));
    Tensor c = DeviceEmpty(ctx, {n, n}, DType::kF32);
    const float one = 1.0f, zero = 0.0f;
    const int in = static_cast<int>(n);
    TimeOnDevice(state, ctx, [&] {
      return cublasGemmEx(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, in, in, in, &one, b.raw_data(), CUDA_R_16BF, in,
                          a.raw_data(), CUDA_R_16BF, in, &zero, c.raw_data(), CUDA_R_32F, in, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
    });
  })->UseRealTime()->Unit(benchmark::kMillisecond);
}

void RegisterCovariance(GpuContext& ctx, int64_t n) {
  const std::string size = absl::StrCat(n);
  const int64_t tokens = 2 * n;
  benchmark::RegisterBenchmark(("SyrkF32/ours/" + size).c_str(), [&ctx, n, tokens](benchmark::State& state) {
    Tensor x = OnDevice(ctx, testing::RandomNormal({tokens, n}, DType::kF32, 3));
    Tensor c = DeviceEmpty(ctx, {n, n}, DType::kF32);
    TimeOnDevice(state, ctx, [&] {
      return kernels::cuda::AccumulateCovariance(ctx, x, 1.0, &c, kernels::CovarianceFill::kUpperOnly).ok();
    });
  })->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("SyrkF32/cublas/" + size).c_str(), [&ctx, n, tokens](benchmark::State& state) {
    Tensor x = OnDevice(ctx, testing::RandomNormal({tokens, n}, DType::kF32, 3));
    Tensor c = DeviceEmpty(ctx, {n, n}, DType::kF32);
    const float one = 1.0f;
    TimeOnDevice(state, ctx, [&] {
      return cublasSsyrk(ctx.cublas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, static_cast<int>(n),
                         static_cast<int>(tokens), &one, x.data<float>(), static_cast<int>(n), &one, c.data<float>(),
                         static_cast<int>(n)) == CUBLAS_STATUS_SUCCESS;
    });
  })->UseRealTime()->Unit(benchmark::kMillisecond);
  // bf16 activations (the model's dtype) into an fp32 accumulator: full GemmEx + mirror.
  benchmark::RegisterBenchmark(("SyrkBf16/ours/" + size).c_str(), [&ctx, n, tokens](benchmark::State& state) {
    Tensor x = OnDevice(ctx, testing::RandomNormal({tokens, n}, DType::kBF16, 3));
    Tensor c = DeviceEmpty(ctx, {n, n}, DType::kF32);
    TimeOnDevice(state, ctx, [&] { return kernels::cuda::AccumulateCovariance(ctx, x, 1.0, &c).ok(); });
  })->UseRealTime()->Unit(benchmark::kMillisecond);
}

void RegisterEigh(GpuContext& ctx, int64_t n) {
  const std::string size = absl::StrCat(n);
  using kernels::cuda::EighSolver;
  for (const auto& [name, solver] : {std::pair<const char*, EighSolver>{"ours", EighSolver::kDivideAndConquer},
                                     std::pair<const char*, EighSolver>{"syevj", EighSolver::kJacobi}}) {
    benchmark::RegisterBenchmark(absl::StrCat("Eigh/", name, "/", size).c_str(),
                                 [&ctx, n, solver = solver](benchmark::State& state) {
                                   Tensor a = SymmetricOnDevice(ctx, n);
                                   Tensor w = DeviceEmpty(ctx, {n}, DType::kF32);
                                   Tensor v = DeviceEmpty(ctx, {n, n}, DType::kF32);
                                   TimeOnDevice(state, ctx, [&] {
                                     return kernels::cuda::SymmetricEigen(ctx, a, &w, &v, solver).ok();
                                   });
                                 })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  // Raw cusolverDnXsyevd on a copy of A (it destroys its input), workspaces allocated once.
  benchmark::RegisterBenchmark(("Eigh/cusolver-syevd/" + size).c_str(), [&ctx, n](benchmark::State& state) {
    Tensor a = SymmetricOnDevice(ctx, n);
    Tensor work_a = DeviceEmpty(ctx, {n, n}, DType::kF32);
    Tensor w = DeviceEmpty(ctx, {n}, DType::kF32);
    Tensor info = DeviceEmpty(ctx, {1}, DType::kI32);
    cusolverDnParams_t params;
    ST_CHECK(cusolverDnCreateParams(&params) == CUSOLVER_STATUS_SUCCESS);
    size_t device_bytes = 0, host_bytes = 0;
    ST_CHECK(cusolverDnXsyevd_bufferSize(ctx.cusolver(), params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n,
                                         CUDA_R_32F, work_a.raw_data(), n, CUDA_R_32F, w.raw_data(), CUDA_R_32F,
                                         &device_bytes, &host_bytes) == CUSOLVER_STATUS_SUCCESS);
    Tensor device_work = DeviceEmpty(ctx, {static_cast<int64_t>(device_bytes) + 1}, DType::kI32);
    std::vector<char> host_work(host_bytes + 1);
    TimeOnDevice(state, ctx, [&] {
      cudaMemcpyAsync(work_a.raw_data(), a.raw_data(), a.nbytes(), cudaMemcpyDeviceToDevice, ctx.stream());
      return cusolverDnXsyevd(ctx.cusolver(), params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n,
                              CUDA_R_32F, work_a.raw_data(), n, CUDA_R_32F, w.raw_data(), CUDA_R_32F,
                              device_work.raw_data(), device_bytes, host_work.data(), host_bytes,
                              info.data<int32_t>()) == CUSOLVER_STATUS_SUCCESS;
    });
    cusolverDnDestroyParams(params);
  })->UseRealTime()->Unit(benchmark::kMillisecond);
  // The r = n/32 largest eigenpairs only (syevdx) against all of them.
  benchmark::RegisterBenchmark(("EighTop/ours/" + size).c_str(), [&ctx, n](benchmark::State& state) {
    const int64_t r = std::max<int64_t>(1, n / 32);
    Tensor a = SymmetricOnDevice(ctx, n);
    Tensor w = DeviceEmpty(ctx, {r}, DType::kF32);
    Tensor v = DeviceEmpty(ctx, {n, r}, DType::kF32);
    TimeOnDevice(state, ctx, [&] { return kernels::cuda::SymmetricEigenRange(ctx, a, n - r, n, &w, &v).ok(); });
  })->UseRealTime()->Unit(benchmark::kMillisecond);
}

void RegisterSvd(GpuContext& ctx, int64_t m, int64_t n) {
  const std::string size = absl::StrCat(m, "x", n);
  using kernels::cuda::SvdSolver;
  for (const auto& [name, solver] : {std::pair<const char*, SvdSolver>{"ours", SvdSolver::kQr},
                                     std::pair<const char*, SvdSolver>{"gesvdj", SvdSolver::kJacobi}}) {
    benchmark::RegisterBenchmark(absl::StrCat("Svd/", name, "/", size).c_str(),
                                 [&ctx, m, n, solver = solver](benchmark::State& state) {
                                   const int64_t k = std::min(m, n);
                                   Tensor a = OnDevice(ctx, testing::RandomNormal({m, n}, DType::kF32, 5));
                                   Tensor u = DeviceEmpty(ctx, {m, k}, DType::kF32);
                                   Tensor s = DeviceEmpty(ctx, {k}, DType::kF32);
                                   Tensor vt = DeviceEmpty(ctx, {k, n}, DType::kF32);
                                   TimeOnDevice(state, ctx, [&] {
                                     return kernels::cuda::Svd(ctx, a, &u, &s, &vt, solver).ok();
                                   });
                                 })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  // PiSSA fast mode: rank 128, 4 subspace iterations, against the full SVD.
  benchmark::RegisterBenchmark(("Svd/rsvd-r128-niter4/" + size).c_str(), [&ctx, m, n](benchmark::State& state) {
    const int64_t r = std::min<int64_t>(128, std::min(m, n));
    Tensor a = OnDevice(ctx, testing::RandomNormal({m, n}, DType::kF32, 5));
    Tensor u = DeviceEmpty(ctx, {m, r}, DType::kF32);
    Tensor s = DeviceEmpty(ctx, {r}, DType::kF32);
    Tensor vt = DeviceEmpty(ctx, {r, n}, DType::kF32);
    TimeOnDevice(state, ctx, [&] { return kernels::cuda::RandomizedSvd(ctx, a, r, 4, 7, &u, &s, &vt).ok(); });
  })->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace
}  // namespace sigmatune::bench

int main(int argc, char** argv) {
  auto ctx = sigmatune::GpuContext::Create(0);
  if (!ctx.ok()) {
    std::printf("gpu_bench: no usable GPU (%s); nothing to measure\n", std::string(ctx.status().message()).c_str());
    return 0;
  }
  for (int64_t n : {1024, 4096}) sigmatune::bench::RegisterMatmul(**ctx, n);
  for (int64_t n : {1024, 4096}) sigmatune::bench::RegisterCovariance(**ctx, n);
  for (int64_t n : {1024, 2048, 4096}) sigmatune::bench::RegisterEigh(**ctx, n);
  // Square, and LLaMA-7B's MLP shape (11008 x 4096) both ways round.
  sigmatune::bench::RegisterSvd(**ctx, 1024, 1024);
  sigmatune::bench::RegisterSvd(**ctx, 4096, 4096);
  sigmatune::bench::RegisterSvd(**ctx, 11008, 4096);
  sigmatune::bench::RegisterSvd(**ctx, 4096, 11008);
  return sigmatune::bench::RunBenchmarksWithRatios(argc, argv);
}
