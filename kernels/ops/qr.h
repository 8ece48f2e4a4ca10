// Qr: thin (reduced) QR decomposition A = Q R (torch.linalg.qr, mode='reduced').
//
// Contract:
//  - a: contiguous row-major m x n, f32 or f64, every entry finite (InvalidArgument otherwise).
//  - Outputs are caller-allocated, contiguous, on a's device, of a's dtype, not overlapping a or each
//    other; k = min(m, n):  q [m, k] with orthonormal columns, r [k, n] upper triangular (entries
//    below the diagonal are written as zeros).
//  - Sign convention: LAPACK's Householder QR (geqrf + orgqr), the one torch.linalg.qr uses; the
//    diagonal of R may be negative. Both backends follow it, so results agree entry by entry (up to
//    rounding) wherever the factorisation is well conditioned.
//  - m == 0 or n == 0 is allowed and does nothing (k = 0).
//  - Errors: InvalidArgument naming the operand for shape/dtype/layout/device/non-finite problems;
//    InternalError when the routine rejects an argument.
//  - CUDA: enqueued on ctx.stream(), which is synchronized before returning (devInfo is read);
//    scratch comes from ctx.Workspace().
#ifndef SIGMATUNE_KERNELS_OPS_QR_H_
#define SIGMATUNE_KERNELS_OPS_QR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// Validation shared by both backends (not the device or finiteness checks): returns k = min(m, n).
absl::StatusOr<int64_t> CheckQr(const Tensor& a, const Tensor& q, const Tensor& r);

namespace cpu {
// LAPACKE {s,d}geqrf_work + {s,d}orgqr_work on a column-major copy of A.
absl::Status Qr(const Tensor& a, Tensor* q, Tensor* r);
}  // namespace cpu

namespace cuda {
// cusolverDn{S,D}geqrf + {S,D}orgqr on a column-major copy of A made by cublas<t>geam.
absl::Status Qr(GpuContext& ctx, const Tensor& a, Tensor* q, Tensor* r);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_QR_H_
