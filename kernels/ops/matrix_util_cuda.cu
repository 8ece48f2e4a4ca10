// CUDA square-matrix reductions. Every reduction is two deterministic passes in double: each block
// sums its grid-stride share into partial[block], then one block sums the partials in a fixed order,
// so a result does not depend on scheduling. The value is copied back and the stream synchronized.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/matrix_util.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

// Terms of the sums, one per index i in [0, count).
template <typename T>
struct DiagonalTerm {  // count = n
  const T* a;
  int64_t n;
  __device__ double operator()(int64_t i) const { return static_cast<double>(a[i * (n + 1)]); }
};
template <typename T>
struct DistanceTerm {  // count = n * n
  const T* a;
  int64_t n;
  __device__ double operator()(int64_t i) const {
    const double d = static_cast<double>(a[i]) - (i / n == i % n ? 1.0 : 0.0);
    return d * d;
  }
};
template <typename T>
struct NonFiniteTerm {  // count = numel
  const T* t;
  __device__ double operator()(int64_t i) const { return isfinite(t[i]) ? 0.0 : 1.0; }
};

// Tree sum of one value per thread (blockDim.x == kThreads); thread 0 gets the result.
__device__ double BlockSum(double v) {
  __shared__ double scratch[kThreads];
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  return scratch[0];
}

template <typename Term>
__global__ void PartialSumKernel(Term term, int64_t count, double* partial) {
  double sum = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step) sum += term(i);
  sum = BlockSum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void FinalSumKernel(const double* partial, int blocks, double* out) {
  double sum = 0;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) sum += partial[i];
  sum = BlockSum(sum);
  if (threadIdx.x == 0) *out = sum;
}

template <typename T>
__global__ void AddToDiagonalKernel(T value, T* a, int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    a[i * (n + 1)] += value;
  }
}

int BlocksFor(int64_t count) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((count + kThreads - 1) / kThreads, kMaxBlocks)));
}

// Sum of term(i) over [0, count), in double, back on the host.
template <typename Term>
absl::StatusOr<double> DeviceSum(GpuContext& ctx, Term term, int64_t count, const char* what) {
  if (count == 0) return 0.0;
  const int blocks = BlocksFor(count);
  ST_ASSIGN_OR_RETURN(void* scratch, ctx.Workspace((blocks + 1) * sizeof(double)));
  double* partial = static_cast<double*>(scratch);
  double* out = partial + blocks;
  PartialSumKernel<Term><<<blocks, kThreads, 0, ctx.stream()>>>(term, count, partial);
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), what));
  FinalSumKernel<<<1, kThreads, 0, ctx.stream()>>>(partial, blocks, out);
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), what));
  double host = 0;
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&host, out, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream()));
  ST_RETURN_IF_ERROR(ctx.Synchronize());
  return host;
}

absl::Status CheckCudaSquare(GpuContext& ctx, const Tensor& a, const char* what) {
  ST_RETURN_IF_ERROR(CheckSquareMatrix(a, what));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, what));
  return ctx.Activate();
}

}  // namespace

absl::StatusOr<double> DiagonalMean(GpuContext& ctx, const Tensor& a) {
  ST_RETURN_IF_ERROR(CheckCudaSquare(ctx, a, "DiagonalMean input A"));
  const int64_t n = a.dim(0);
  if (n == 0) return absl::InvalidArgumentError("DiagonalMean input A is empty (0 x 0); its mean is undefined");
  double sum = 0;
  if (a.dtype() == DType::kF32) {
    ST_ASSIGN_OR_RETURN(sum, DeviceSum(ctx, DiagonalTerm<float>{a.data<float>(), n}, n, "DiagonalMean kernels"));
  } else {
    ST_ASSIGN_OR_RETURN(sum, DeviceSum(ctx, DiagonalTerm<double>{a.data<double>(), n}, n, "DiagonalMean kernels"));
  }
  return sum / static_cast<double>(n);
}

absl::Status AddScaledIdentity(GpuContext& ctx, double alpha, Tensor* a) {
  ST_CHECK(a != nullptr);
  ST_RETURN_IF_ERROR(CheckCudaSquare(ctx, *a, "AddScaledIdentity matrix A"));
  const int64_t n = a->dim(0);
  if (n == 0) return absl::OkStatus();
  // alpha is rounded to A's dtype first, then added (as the CPU reference and PEFT's fp32 path).
  if (a->dtype() == DType::kF32) {
    AddToDiagonalKernel<float><<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(static_cast<float>(alpha),
                                                                             a->data<float>(), n);
  } else {
    AddToDiagonalKernel<double><<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(alpha, a->data<double>(), n);
  }
  return CudaStatus(cudaGetLastError(), "AddScaledIdentity AddToDiagonalKernel launch");
}

absl::StatusOr<double> DistanceFromIdentity(GpuContext& ctx, const Tensor& a) {
  ST_RETURN_IF_ERROR(CheckCudaSquare(ctx, a, "DistanceFromIdentity input A"));
  const int64_t n = a.dim(0);
  double sum = 0;
  if (a.dtype() == DType::kF32) {
    ST_ASSIGN_OR_RETURN(
        sum, DeviceSum(ctx, DistanceTerm<float>{a.data<float>(), n}, n * n, "DistanceFromIdentity kernels"));
  } else {
    ST_ASSIGN_OR_RETURN(
        sum, DeviceSum(ctx, DistanceTerm<double>{a.data<double>(), n}, n * n, "DistanceFromIdentity kernels"));
  }
  return std::sqrt(sum);
}

absl::StatusOr<int64_t> CountNonFinite(GpuContext& ctx, const Tensor& t) {
  if (!t.defined() || !t.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CountNonFinite input must be a defined contiguous tensor, got ", t.DebugString()));
  }
  ST_RETURN_IF_ERROR(ExpectRealFloat(t, "CountNonFinite input"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, t, "CountNonFinite input"));
  ST_RETURN_IF_ERROR(ctx.Activate());
  double count = 0;  // exact: counts stay far below 2^53
  if (t.dtype() == DType::kF32) {
    ST_ASSIGN_OR_RETURN(count, DeviceSum(ctx, NonFiniteTerm<float>{t.data<float>()}, t.numel(), "CountNonFinite"));
  } else {
    ST_ASSIGN_OR_RETURN(count,
                        DeviceSum(ctx, NonFiniteTerm<double>{t.data<double>()}, t.numel(), "CountNonFinite"));
  }
  return static_cast<int64_t>(count);
}

}  // namespace sigmatune::kernels::cuda
