#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/qr.h"
#include "kernels/ops/rsvd.h"
#include "kernels/ops/rsvd_impl.h"
#include "kernels/ops/svd.h"

namespace sigmatune::kernels {

absl::Status CheckRandomizedSvd(const Tensor& a, int64_t rank, int niter, const Tensor& u, const Tensor& s,
                                const Tensor& vt) {
  ST_RETURN_IF_ERROR(ExpectFloatMatrixInput(a, "randomized svd input A"));
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  if (rank < 1 || rank > k) {
    return absl::InvalidArgumentError(absl::StrCat("randomized svd rank must be in [1, min(m, n) = ", k,
                                                   "] for input A ", ShapeToString(a.shape()), ", got ", rank));
  }
  if (niter < 0) {
    return absl::InvalidArgumentError(absl::StrCat("randomized svd niter must be >= 0, got ", niter));
  }
  ST_RETURN_IF_ERROR(ExpectMatrix(u, m, rank, a.dtype(), "randomized svd output U"));
  ST_RETURN_IF_ERROR(ExpectVector(s, rank, a.dtype(), "randomized svd output S"));
  return ExpectMatrix(vt, rank, n, a.dtype(), "randomized svd output Vt");
}

namespace cpu {
namespace {

class CpuBackend {
 public:
  absl::StatusOr<Tensor> Allocate(const Shape& shape, DType dtype) { return Tensor::Empty(shape, dtype); }
  absl::StatusOr<Tensor> Upload(const Tensor& host) { return host; }
  absl::Status ExpectFinite(const Tensor& t, const char* what) { return ExpectFiniteOnCpu(t, what); }
  absl::Status Matmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, Tensor* c) {
    return cpu::Matmul(a, ta, b, tb, 1.0, 0.0, c);
  }
  absl::Status Qr(const Tensor& a, Tensor* q, Tensor* r) { return cpu::Qr(a, q, r); }
  absl::Status Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) { return cpu::Svd(a, u, s, vt); }
  absl::Status Finish() { return absl::OkStatus(); }  // everything ran synchronously
};

}  // namespace

absl::Status RandomizedSvd(const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u, Tensor* s, Tensor* vt) {
  ST_CHECK(u != nullptr && s != nullptr && vt != nullptr);
  ST_RETURN_IF_ERROR(CheckRandomizedSvd(a, rank, niter, *u, *s, *vt));
  ST_RETURN_IF_ERROR(ExpectOnCpu(a, "randomized svd input A"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*u, "randomized svd output U"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*s, "randomized svd output S"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*vt, "randomized svd output Vt"));
  CpuBackend backend;
  return internal::RandomizedSvdImpl(backend, a, rank, niter, seed, u, s, vt);
}

}  // namespace cpu
}  // namespace sigmatune::kernels
