// LAPACK reference of Svd. The row-major m x n buffer of A, read column-major, is the n x m matrix
// A^T. gesdd of A^T gives A^T = U' S V'^T, hence A = V' S U'^T: the column-major U' (n x k, ldu = n)
// is the row-major vt [k, n], and the column-major V'^T (k x m, ldvt = k) is the row-major u [m, k].
// LAPACK writes straight into the caller's outputs; only the destroyed input is copied.
#include <lapacke.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/svd.h"

namespace sigmatune::kernels {

absl::StatusOr<int64_t> CheckSvd(const Tensor& a, const Tensor& u, const Tensor& s, const Tensor& vt) {
  ST_RETURN_IF_ERROR(ExpectFloatMatrixInput(a, "svd input A"));
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  ST_RETURN_IF_ERROR(ExpectMatrix(u, m, k, a.dtype(), "svd output U"));
  ST_RETURN_IF_ERROR(ExpectVector(s, k, a.dtype(), "svd output S"));
  ST_RETURN_IF_ERROR(ExpectMatrix(vt, k, n, a.dtype(), "svd output Vt"));
  return k;
}

namespace cpu {
namespace {

// Column-major gesdd, jobz 'S', of the rows x cols matrix `a` (lda = rows).
lapack_int Gesdd(lapack_int rows, lapack_int cols, float* a, float* s, float* u, lapack_int ldu, float* vt,
                 lapack_int ldvt, float* work, lapack_int lwork, lapack_int* iwork) {
  return LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', rows, cols, a, rows, s, u, ldu, vt, ldvt, work, lwork, iwork);
}
lapack_int Gesdd(lapack_int rows, lapack_int cols, double* a, double* s, double* u, lapack_int ldu, double* vt,
                 lapack_int ldvt, double* work, lapack_int lwork, lapack_int* iwork) {
  return LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'S', rows, cols, a, rows, s, u, ldu, vt, ldvt, work, lwork, iwork);
}

template <typename T>
absl::Status GesddImpl(const Tensor& a, int64_t m, int64_t n, Tensor* u, Tensor* s, Tensor* vt) {
  const int64_t k = std::min(m, n);
  ST_RETURN_IF_ERROR(ExpectInt32Index(std::max(m, n), "the svd input dimension"));
  ST_RETURN_IF_ERROR(ExpectInt32Index(GesddMinWork(m, n), "the gesdd workspace length 4k^2 + 7k + max(m, n)"));
  std::vector<T> copy(a.data<T>(), a.data<T>() + m * n);  // gesdd destroys its input
  std::vector<lapack_int> iwork(GesddIwork(m, n));
  // LAPACK's matrix is A^T: rows = n, cols = m. Its U goes to vt (ldu = n), its VT to u (ldvt = k).
  T query = 0;
  ST_RETURN_IF_ERROR(
      LapackStatus(Gesdd(n, m, copy.data(), s->data<T>(), vt->data<T>(), n, u->data<T>(), k, &query, -1, iwork.data()),
                   "LAPACK gesdd workspace query"));
  const int64_t lwork = LapackWorkLength(query, GesddMinWork(m, n));
  ST_RETURN_IF_ERROR(ExpectInt32Index(lwork, "the gesdd workspace length"));
  // Uninitialised: zero-filling a 2n^2 workspace costs ~10% of a 2048 solve.
  std::unique_ptr<T[]> work(new T[lwork]);
  return LapackStatus(
      Gesdd(n, m, copy.data(), s->data<T>(), vt->data<T>(), n, u->data<T>(), k, work.get(), lwork, iwork.data()),
      DTypeOf<T>::value == DType::kF32 ? "LAPACK sgesdd" : "LAPACK dgesdd");
}

}  // namespace

absl::Status Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) {
  ST_CHECK(u != nullptr && s != nullptr && vt != nullptr);
  ST_ASSIGN_OR_RETURN(const int64_t k, CheckSvd(a, *u, *s, *vt));
  ST_RETURN_IF_ERROR(ExpectOnCpu(a, "svd input A"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*u, "svd output U"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*s, "svd output S"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*vt, "svd output Vt"));
  ST_RETURN_IF_ERROR(ExpectFiniteOnCpu(a, "svd input A"));
  if (k == 0) return absl::OkStatus();
  if (a.dtype() == DType::kF32) return GesddImpl<float>(a, a.dim(0), a.dim(1), u, s, vt);
  return GesddImpl<double>(a, a.dim(0), a.dim(1), u, s, vt);
}

}  // namespace cpu
}  // namespace sigmatune::kernels
