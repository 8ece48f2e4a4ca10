// SymmetricEigen: eigenvalues and eigenvectors of a real symmetric matrix (torch.linalg.eigh).
//
// Contract:
//  - a: contiguous row-major n x n, f32 or f64. Only the LOWER triangle a[i][j], i >= j (diagonal
//    included) is read; the strict upper triangle is ignored (it is assumed to mirror the lower one).
//    Every entry of a must be finite (InvalidArgument otherwise).
//  - Outputs are caller-allocated, contiguous, on the same device and of the same dtype as a, and
//    must not overlap a or each other:
//      SymmetricEigen:      eigenvalues [n] ascending, eigenvectors [n, n];
//      SymmetricEigenRange: eigenvalues [end - begin], eigenvectors [n, end - begin], holding the
//                           eigenpairs with ascending indices begin .. end-1 (0 <= begin <= end <= n).
//    Column j of eigenvectors is the unit eigenvector of eigenvalue j (sign arbitrary, as in LAPACK);
//    within a cluster of equal eigenvalues any orthonormal basis may come back.
//  - Errors: InvalidArgument naming the operand for shape/dtype/layout/device/range/non-finite
//    problems; InternalError when the solver reports that it did not converge or rejected an argument.
//  - The CPU reference uses LAPACK syevd (all eigenpairs; divide and conquer) and syevr with
//    range 'I' (index range); it always uses these, whatever solver the CUDA side is asked for.
//  - The CUDA versions enqueue on ctx.stream() and synchronize it before returning (they read the
//    solver's devInfo); they use ctx.Workspace() as scratch.
#ifndef SIGMATUNE_KERNELS_OPS_EIGH_H_
#define SIGMATUNE_KERNELS_OPS_EIGH_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// Validation shared by both backends (not the device or finiteness checks): returns n.
absl::StatusOr<int64_t> CheckSymmetricEigen(const Tensor& a, int64_t begin, int64_t end, const Tensor& eigenvalues,
                                            const Tensor& eigenvectors);

namespace cpu {
// LAPACKE {s,d}syevd_work, jobz 'V'.
absl::Status SymmetricEigen(const Tensor& a, Tensor* eigenvalues, Tensor* eigenvectors);
// LAPACKE {s,d}syevr_work, jobz 'V', range 'I' (il = begin + 1, iu = end).
absl::Status SymmetricEigenRange(const Tensor& a, int64_t begin, int64_t end, Tensor* eigenvalues,
                                 Tensor* eigenvectors);
}  // namespace cpu

namespace cuda {
// Which cuSOLVER algorithm computes the eigenpairs (CUDA only; the benchmark of the decomposition
// phase chooses). The CPU reference always uses LAPACK syevd / syevr.
enum class EighSolver {
  kDivideAndConquer,  // cusolverDnXsyevd (64-bit API); SymmetricEigenRange: cusolverDnXsyevdx range I
  kJacobi,            // cusolverDn{S,D}syevj (32-bit API, default tolerance and sweeps); the Range
                      // variant computes all eigenpairs with syevj and copies out the requested ones
};

absl::Status SymmetricEigen(GpuContext& ctx, const Tensor& a, Tensor* eigenvalues, Tensor* eigenvectors,
                            EighSolver solver = EighSolver::kDivideAndConquer);
absl::Status SymmetricEigenRange(GpuContext& ctx, const Tensor& a, int64_t begin, int64_t end, Tensor* eigenvalues,
                                 Tensor* eigenvectors, EighSolver solver = EighSolver::kDivideAndConquer);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_EIGH_H_
