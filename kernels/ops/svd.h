// Svd: thin singular value decomposition A = U diag(S) Vt (torch.linalg.svd, full_matrices=False).
//
// Contract:
//  - a: contiguous row-major m x n, f32 or f64, every entry finite (InvalidArgument otherwise).
//  - Outputs are caller-allocated, contiguous, on a's device, of a's dtype, not overlapping a or each
//    other; k = min(m, n):  u [m, k] (orthonormal columns), s [k] (descending, >= 0),
//    vt [k, n] (orthonormal rows). Singular vectors are defined up to sign (and up to a rotation
//    within repeated singular values): compare products or projectors, never raw vectors, across
//    implementations (METHODS.md §12).
//  - m == 0 or n == 0 is allowed and does nothing (k = 0).
//  - Errors: InvalidArgument naming the operand for shape/dtype/layout/device/non-finite problems;
//    InternalError when the solver reports that it did not converge or rejected an argument.
//  - CPU reference: LAPACK gesdd (divide and conquer), jobz 'S'.
//  - CUDA: enqueued on ctx.stream(), which is synchronized before returning (the solver's devInfo is
//    read); scratch comes from ctx.Workspace().
#ifndef SIGMATUNE_KERNELS_OPS_SVD_H_
#define SIGMATUNE_KERNELS_OPS_SVD_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// Validation shared by both backends (not the device or finiteness checks): returns k = min(m, n).
absl::StatusOr<int64_t> CheckSvd(const Tensor& a, const Tensor& u, const Tensor& s, const Tensor& vt);

namespace cpu {
// LAPACKE {s,d}gesdd_work, jobz 'S', applied to the column-major view of a (which is A^T), so no
// transposes are needed: A^T = V S U^T.
absl::Status Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt);
}  // namespace cpu

namespace cuda {
// Which cuSOLVER algorithm computes the SVD (CUDA only; the CPU reference always uses gesdd).
enum class SvdSolver {
  kQr,      // cusolverDnXgesvd (64-bit API; Householder bidiagonalisation + QR iteration)
  kJacobi,  // cusolverDn{S,D}gesvdj, econ = 1 (32-bit API, default tolerance and sweeps)
};

absl::Status Svd(GpuContext& ctx, const Tensor& a, Tensor* u, Tensor* s, Tensor* vt, SvdSolver solver = SvdSolver::kQr);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_SVD_H_
