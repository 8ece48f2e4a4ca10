// RandomizedSvd: approximate top-`rank` SVD, the PiSSA fast mode (METHODS.md §2: torch.svd_lowrank
// with q = rank, no oversampling, `niter` subspace iterations with re-orthonormalisation).
//
// Algorithm (Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1), with R the n x rank Gaussian matrix
// HostGaussianMatrix(n, rank, dtype, seed) (gaussian.h; made on the host so every backend starts from
// the same R):
//   Q = qr(A R).Q;  repeat niter times { Q = qr(A^T Q).Q;  Q = qr(A Q).Q }
//   B = Q^T A  (rank x n);  B = Ub diag(S) Vt;  U = Q Ub.
// torch.svd_lowrank runs the same iteration on A^T when m < n or n > q; with its own random R the
// result differs from ours only by the (random) approximation error, never systematically.
//
// Contract:
//  - a: contiguous row-major m x n, f32 or f64, every entry finite; 1 <= rank <= min(m, n);
//    niter >= 0. Anything else is InvalidArgument naming the operand.
//  - Outputs caller-allocated, contiguous, on a's device, of a's dtype, not overlapping a or each
//    other: u [m, rank] (orthonormal columns), s [rank] (descending), vt [rank, n] (orthonormal rows).
//  - U diag(S) Vt = Q Q^T A exactly (up to rounding): it is the best rank-`rank` approximation of A
//    within the found subspace, and equals A when rank = min(m, n). The singular triplets approach
//    the true top ones as niter grows (geometrically, at the rate sigma_{rank+1} / sigma_rank).
//  - Deterministic: the same inputs and seed give the same bits on the same backend and build.
//  - Built from the Matmul, Qr and Svd ops (rsvd_impl.h holds the one algorithm both backends share);
//    the CUDA version allocates its intermediates with ctx.Allocate and synchronizes the stream.
#ifndef SIGMATUNE_KERNELS_OPS_RSVD_H_
#define SIGMATUNE_KERNELS_OPS_RSVD_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/tensor.h"
#include "kernels/ops/svd.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// Validation shared by both backends (not the device or finiteness checks).
absl::Status CheckRandomizedSvd(const Tensor& a, int64_t rank, int niter, const Tensor& u, const Tensor& s,
                                const Tensor& vt);

namespace cpu {
// cpu::Matmul (OpenBLAS), cpu::Qr and cpu::Svd (LAPACK).
absl::Status RandomizedSvd(const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u, Tensor* s, Tensor* vt);
}  // namespace cpu

namespace cuda {
// cuda::Matmul (cuBLAS), cuda::Qr and cuda::Svd (cuSOLVER); `solver` picks the SVD of the small
// rank x n matrix B.
absl::Status RandomizedSvd(GpuContext& ctx, const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u,
                           Tensor* s, Tensor* vt, SvdSolver solver = SvdSolver::kQr);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_RSVD_H_
