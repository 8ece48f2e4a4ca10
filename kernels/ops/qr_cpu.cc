// LAPACK reference of Qr. The row-major A is transposed once into a column-major m x n buffer
// (lda = m); geqrf leaves R in its upper triangle and the Householder vectors below it; R is copied
// out, then orgqr turns the first k columns into Q, which is copied into the row-major q.
#include <lapacke.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/qr.h"

namespace sigmatune::kernels {

absl::StatusOr<int64_t> CheckQr(const Tensor& a, const Tensor& q, const Tensor& r) {
  ST_RETURN_IF_ERROR(ExpectFloatMatrixInput(a, "qr input A"));
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  ST_RETURN_IF_ERROR(ExpectMatrix(q, m, k, a.dtype(), "qr output Q"));
  ST_RETURN_IF_ERROR(ExpectMatrix(r, k, n, a.dtype(), "qr output R"));
  return k;
}

namespace cpu {
namespace {

lapack_int Geqrf(lapack_int m, lapack_int n, float* a, float* tau, float* work, lapack_int lwork) {
  return LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, m, n, a, m, tau, work, lwork);
}
lapack_int Geqrf(lapack_int m, lapack_int n, double* a, double* tau, double* work, lapack_int lwork) {
  return LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, m, n, a, m, tau, work, lwork);
}
// Q (m x k, the first k columns of a, lda = m) from the k reflectors of geqrf.
lapack_int Orgqr(lapack_int m, lapack_int k, float* a, const float* tau, float* work, lapack_int lwork) {
  return LAPACKE_sorgqr_work(LAPACK_COL_MAJOR, m, k, k, a, m, tau, work, lwork);
}
lapack_int Orgqr(lapack_int m, lapack_int k, double* a, const double* tau, double* work, lapack_int lwork) {
  return LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, m, k, k, a, m, tau, work, lwork);
}

template <typename T>
absl::Status QrImpl(const Tensor& a, int64_t m, int64_t n, Tensor* q, Tensor* r) {
  const int64_t k = std::min(m, n);
  ST_RETURN_IF_ERROR(ExpectInt32Index(std::max(m, n), "the qr input dimension"));
  std::vector<T> buf(m * n);
  TransposeCopy(a.data<T>(), m, n, n, buf.data(), m);  // column-major A, lda = m
  std::vector<T> tau(k);
  T geqrf_query = 0, orgqr_query = 0;
  ST_RETURN_IF_ERROR(
      LapackStatus(Geqrf(m, n, buf.data(), tau.data(), &geqrf_query, -1), "LAPACK geqrf workspace query"));
  ST_RETURN_IF_ERROR(
      LapackStatus(Orgqr(m, k, buf.data(), tau.data(), &orgqr_query, -1), "LAPACK orgqr workspace query"));
  // Documented minima: max(1, n) for geqrf, max(1, k) for orgqr.
  const int64_t lwork =
      std::max(LapackWorkLength(geqrf_query, std::max<int64_t>(1, n)), LapackWorkLength(orgqr_query, k));
  ST_RETURN_IF_ERROR(ExpectInt32Index(lwork, "the qr workspace length"));
  // Uninitialised: zero-filling a 2n^2 workspace costs ~10% of a 2048 solve.
  std::unique_ptr<T[]> work(new T[lwork]);
  const bool f32 = DTypeOf<T>::value == DType::kF32;
  ST_RETURN_IF_ERROR(
      LapackStatus(Geqrf(m, n, buf.data(), tau.data(), work.get(), lwork), f32 ? "LAPACK sgeqrf" : "LAPACK dgeqrf"));
  T* r_out = r->data<T>();
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < n; ++j) r_out[i * n + j] = j >= i ? buf[j * m + i] : T(0);
  }
  ST_RETURN_IF_ERROR(
      LapackStatus(Orgqr(m, k, buf.data(), tau.data(), work.get(), lwork), f32 ? "LAPACK sorgqr" : "LAPACK dorgqr"));
  // Column-major m x k Q = row-major k x m buffer: transpose into the row-major [m, k] output.
  TransposeCopy(buf.data(), k, m, m, q->data<T>(), k);
  return absl::OkStatus();
}

}  // namespace

absl::Status Qr(const Tensor& a, Tensor* q, Tensor* r) {
  ST_CHECK(q != nullptr && r != nullptr);
  ST_ASSIGN_OR_RETURN(const int64_t k, CheckQr(a, *q, *r));
  ST_RETURN_IF_ERROR(ExpectOnCpu(a, "qr input A"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*q, "qr output Q"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*r, "qr output R"));
  ST_RETURN_IF_ERROR(ExpectFiniteOnCpu(a, "qr input A"));
  if (k == 0) return absl::OkStatus();
  if (a.dtype() == DType::kF32) return QrImpl<float>(a, a.dim(0), a.dim(1), q, r);
  return QrImpl<double>(a, a.dim(0), a.dim(1), q, r);
}

}  // namespace cpu
}  // namespace sigmatune::kernels
