// cuSOLVER Inverse, the same algorithm as the CPU reference: the row-major a read column-major is
// A^T; getrf factors a copy of it and getrs solves A^T X = I with the identity written straight into
// inv, so X = A^{-T} column-major, which is A^{-1} row-major. No transposes are needed.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/inverse.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/linalg_util_cuda.h"

namespace sigmatune::kernels::cuda {
namespace {

// x = I for a contiguous n x n matrix.
template <typename T>
__global__ void IdentityKernel(T* x, int64_t n) {
  const int64_t total = n * n;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    x[i] = i / n == i % n ? T(1) : T(0);
  }
}

cusolverStatus_t GetrfBufferSize(cusolverDnHandle_t h, int n, float* a, int* lwork) {
  return cusolverDnSgetrf_bufferSize(h, n, n, a, n, lwork);
}
cusolverStatus_t GetrfBufferSize(cusolverDnHandle_t h, int n, double* a, int* lwork) {
  return cusolverDnDgetrf_bufferSize(h, n, n, a, n, lwork);
}
cusolverStatus_t Getrf(cusolverDnHandle_t h, int n, float* a, float* work, int* ipiv, int* info) {
  return cusolverDnSgetrf(h, n, n, a, n, work, ipiv, info);
}
cusolverStatus_t Getrf(cusolverDnHandle_t h, int n, double* a, double* work, int* ipiv, int* info) {
  return cusolverDnDgetrf(h, n, n, a, n, work, ipiv, info);
}
cusolverStatus_t Getrs(cusolverDnHandle_t h, int n, const float* lu, const int* ipiv, float* b, int* info) {
  return cusolverDnSgetrs(h, CUBLAS_OP_N, n, n, lu, n, ipiv, b, n, info);
}
cusolverStatus_t Getrs(cusolverDnHandle_t h, int n, const double* lu, const int* ipiv, double* b, int* info) {
  return cusolverDnDgetrs(h, CUBLAS_OP_N, n, n, lu, n, ipiv, b, n, info);
}

template <typename T>
absl::Status InverseImpl(GpuContext& ctx, const Tensor& a, int64_t n64, Tensor* inv) {
  const int n = static_cast<int>(n64);
  const bool f32 = DTypeOf<T>::value == DType::kF32;
  int lwork = 0;
  ST_CUSOLVER_RETURN_IF_ERROR(GetrfBufferSize(ctx.cusolver(), n, inv->data<T>(), &lwork));
  ScratchLayout layout;
  const int info_piece = layout.Add(2 * sizeof(int));
  const int ipiv_piece = layout.Add(static_cast<size_t>(n) * sizeof(int));
  const int lu_piece = layout.Add(static_cast<size_t>(n64 * n64) * sizeof(T));
  const int work_piece = layout.Add(static_cast<size_t>(std::max(lwork, 1)) * sizeof(T));
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(layout.total_bytes()));
  int* info = layout.At<int>(base, info_piece);
  int* ipiv = layout.At<int>(base, ipiv_piece);
  T* lu = layout.At<T>(base, lu_piece);
  T* work = layout.At<T>(base, work_piece);

  ST_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(info, 0, 2 * sizeof(int), ctx.stream()));
  ST_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(lu, a.raw_data(), a.nbytes(), cudaMemcpyDeviceToDevice, ctx.stream()));
  ST_CUSOLVER_RETURN_IF_ERROR(Getrf(ctx.cusolver(), n, lu, work, ipiv, info));
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n64 * n64 + kThreads - 1) / kThreads, 1024));
  IdentityKernel<T><<<blocks, kThreads, 0, ctx.stream()>>>(inv->data<T>(), n64);
  ST_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  ST_CUSOLVER_RETURN_IF_ERROR(Getrs(ctx.cusolver(), n, lu, ipiv, inv->data<T>(), info + 1));

  int host_info[2] = {0, 0};
  ST_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host_info, info, sizeof(host_info), cudaMemcpyDeviceToHost, ctx.stream()));
  ST_RETURN_IF_ERROR(ctx.Synchronize());
  if (host_info[0] > 0) {
    return absl::FailedPreconditionError(absl::StrCat("inverse input A (", n64, " x ", n64,
                                                      ") is singular: LU pivot ", host_info[0] - 1,
                                                      " (0-based) is exactly zero"));
  }
  if (host_info[0] < 0) {
    return absl::InternalError(absl::StrCat(f32 ? "cusolverDnSgetrf" : "cusolverDnDgetrf", " rejected argument ",
                                            -host_info[0], "; this is a bug in sigmatune"));
  }
  if (host_info[1] != 0) {
    return absl::InternalError(absl::StrCat(f32 ? "cusolverDnSgetrs" : "cusolverDnDgetrs", " rejected argument ",
                                            -host_info[1], "; this is a bug in sigmatune"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Inverse(GpuContext& ctx, const Tensor& a, Tensor* inv) {
  ST_CHECK(inv != nullptr);
  ST_RETURN_IF_ERROR(CheckInverse(a, *inv));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, "inverse input A"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *inv, "inverse output inv"));
  const int64_t n = a.dim(0);
  if (n == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx.Activate());
  ST_RETURN_IF_ERROR(ExpectFiniteOnDevice(ctx, a, "inverse input A"));
  if (a.dtype() == DType::kF32) return InverseImpl<float>(ctx, a, n, inv);
  return InverseImpl<double>(ctx, a, n, inv);
}

}  // namespace sigmatune::kernels::cuda
