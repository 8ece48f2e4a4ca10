// Small reductions and updates on square matrices, used by CorDA's damping rule and the
// orthogonality regularisers (METHODS.md §4, §5, §7):
//   DiagonalMean(A)         = mean_i A[i, i]
//   AddScaledIdentity(a, A):  A += a * I
//   DistanceFromIdentity(A) = ||A - I||_F        (computed in double)
//   CountNonFinite(T)       = number of NaN/Inf entries of any contiguous f32/f64 tensor
//
// Contract: A contiguous row-major n x n (n >= 0; DiagonalMean of an empty matrix is
// InvalidArgument), f32 or f64, on the backend's device. Shape/dtype/layout problems are
// InvalidArgument naming the operand. The CUDA versions that return a value synchronize
// ctx.stream() (one small device-to-host copy); AddScaledIdentity is only enqueued.
#ifndef SIGMATUNE_KERNELS_OPS_MATRIX_UTIL_H_
#define SIGMATUNE_KERNELS_OPS_MATRIX_UTIL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// A must be a contiguous square f32/f64 matrix.
absl::Status CheckSquareMatrix(const Tensor& a, const char* what);

namespace cpu {
absl::StatusOr<double> DiagonalMean(const Tensor& a);
absl::Status AddScaledIdentity(double alpha, Tensor* a);
absl::StatusOr<double> DistanceFromIdentity(const Tensor& a);
absl::StatusOr<int64_t> CountNonFinite(const Tensor& t);
}  // namespace cpu

namespace cuda {
absl::StatusOr<double> DiagonalMean(GpuContext& ctx, const Tensor& a);
absl::Status AddScaledIdentity(GpuContext& ctx, double alpha, Tensor* a);
absl::StatusOr<double> DistanceFromIdentity(GpuContext& ctx, const Tensor& a);
absl::StatusOr<int64_t> CountNonFinite(GpuContext& ctx, const Tensor& t);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_MATRIX_UTIL_H_
