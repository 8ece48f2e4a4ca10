// Inverse: A^{-1} of a square matrix by LU factorisation with partial pivoting, the algorithm of
// torch.linalg.inv (getrf + getri). CorDA's damping rule (METHODS.md §4) judges each damped
// covariance by ||C_d C_d^{-1} - I||_F, so the inverse must be the same kind PEFT computes.
//
// Contract:
//  - a: contiguous row-major n x n, f32 or f64, every entry finite (InvalidArgument otherwise).
//  - inv: caller-allocated, contiguous, n x n, a's dtype and device, not overlapping a.
//  - An exactly singular matrix (a zero pivot) is FailedPrecondition naming the pivot; a nearly
//    singular one returns whatever LU gives (the caller judges it with DistanceFromIdentity).
//  - n == 0 does nothing.
//  - CPU reference: LAPACKE {s,d}getrf_work + {s,d}getri_work with an explicit workspace.
//  - CUDA: cusolverDn{S,D}getrf then getrs against the identity; ctx.stream() is synchronized
//    (devInfo is read).
#ifndef SIGMATUNE_KERNELS_OPS_INVERSE_H_
#define SIGMATUNE_KERNELS_OPS_INVERSE_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// Validation shared by both backends (not the device or finiteness checks).
absl::Status CheckInverse(const Tensor& a, const Tensor& inv);

namespace cpu {
absl::Status Inverse(const Tensor& a, Tensor* inv);
}  // namespace cpu

namespace cuda {
absl::Status Inverse(GpuContext& ctx, const Tensor& a, Tensor* inv);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_INVERSE_H_
