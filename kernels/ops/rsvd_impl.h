// The randomized SVD algorithm of rsvd.h, written once as a template over a backend adaptor, so the
// CPU (rsvd_cpu.cc) and CUDA (rsvd_cuda.cu) versions run the same sequence of Matmul / Qr / Svd.
//
// A Backend provides (all tensors contiguous, on the backend's device unless said otherwise):
//   absl::StatusOr<Tensor> Allocate(const Shape& shape, DType dtype);   // uninitialised scratch
//   absl::StatusOr<Tensor> Upload(const Tensor& host);                  // CPU tensor -> device copy
//   absl::Status ExpectFinite(const Tensor& t, const char* what);       // InvalidArgument on NaN/Inf
//   absl::Status Matmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, Tensor* c);
//                                                                       // c = op(a) op(b)
//   absl::Status Qr(const Tensor& a, Tensor* q, Tensor* r);             // thin QR (qr.h)
//   absl::Status Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt);  // thin SVD (svd.h)
//   absl::Status Finish();   // waits for all enqueued work (the scratch dies when the function returns)
// The caller validates the operands (CheckRandomizedSvd) and their device first.
#ifndef SIGMATUNE_KERNELS_OPS_RSVD_IMPL_H_
#define SIGMATUNE_KERNELS_OPS_RSVD_IMPL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/gaussian.h"

namespace sigmatune::kernels::internal {

template <typename Backend>
absl::Status RandomizedSvdImpl(Backend& backend, const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u,
                               Tensor* s, Tensor* vt) {
  const int64_t m = a.dim(0), n = a.dim(1);
  const DType dtype = a.dtype();
  constexpr Transpose kNo = Transpose::kNo, kYes = Transpose::kYes;
  ST_RETURN_IF_ERROR(backend.ExpectFinite(a, "randomized svd input A"));

  ST_ASSIGN_OR_RETURN(const Tensor omega, backend.Upload(HostGaussianMatrix(n, rank, dtype, seed)));
  ST_ASSIGN_OR_RETURN(Tensor y, backend.Allocate({m, rank}, dtype));            // A times a basis
  ST_ASSIGN_OR_RETURN(Tensor q, backend.Allocate({m, rank}, dtype));            // basis of the range of A
  ST_ASSIGN_OR_RETURN(Tensor z, backend.Allocate({n, rank}, dtype));            // A^T Q
  ST_ASSIGN_OR_RETURN(Tensor qz, backend.Allocate({n, rank}, dtype));           // basis of the range of A^T
  ST_ASSIGN_OR_RETURN(Tensor r_unused, backend.Allocate({rank, rank}, dtype));  // the QR R factors
  ST_ASSIGN_OR_RETURN(Tensor b, backend.Allocate({rank, n}, dtype));            // Q^T A
  ST_ASSIGN_OR_RETURN(Tensor ub, backend.Allocate({rank, rank}, dtype));        // left singular vectors of B

  // Range finder: Q = qr(A R).
  ST_RETURN_IF_ERROR(backend.Matmul(a, kNo, omega, kNo, &y));
  ST_RETURN_IF_ERROR(backend.Qr(y, &q, &r_unused));
  // Subspace iteration, re-orthonormalising after every product (plain powers lose the small
  // directions to rounding).
  for (int i = 0; i < niter; ++i) {
    ST_RETURN_IF_ERROR(backend.Matmul(a, kYes, q, kNo, &z));
    ST_RETURN_IF_ERROR(backend.Qr(z, &qz, &r_unused));
    ST_RETURN_IF_ERROR(backend.Matmul(a, kNo, qz, kNo, &y));
    ST_RETURN_IF_ERROR(backend.Qr(y, &q, &r_unused));
  }
  // B = Q^T A = Ub diag(S) Vt, U = Q Ub.
  ST_RETURN_IF_ERROR(backend.Matmul(q, kYes, a, kNo, &b));
  ST_RETURN_IF_ERROR(backend.Svd(b, &ub, s, vt));
  ST_RETURN_IF_ERROR(backend.Matmul(q, kNo, ub, kNo, u));
  return backend.Finish();
}

}  // namespace sigmatune::kernels::internal

#endif  // SIGMATUNE_KERNELS_OPS_RSVD_IMPL_H_
