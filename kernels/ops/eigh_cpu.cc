// LAPACK reference of SymmetricEigen. LAPACK is column-major: the row-major n x n buffer of A read
// column-major is A^T, so LAPACK's UPPER triangle (uplo 'U') is our LOWER triangle, and the
// eigenvectors come back as the columns of a column-major matrix, i.e. the rows of the row-major
// buffer: they are transposed into the caller's [n, k] layout (column j = eigenvector j).
#include <lapacke.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/eigh.h"
#include "kernels/ops/linalg_util.h"

namespace sigmatune::kernels {

absl::StatusOr<int64_t> CheckSymmetricEigen(const Tensor& a, int64_t begin, int64_t end, const Tensor& eigenvalues,
                                            const Tensor& eigenvectors) {
  ST_RETURN_IF_ERROR(ExpectFloatMatrixInput(a, "eigh input A"));
  if (a.dim(0) != a.dim(1)) {
    return absl::InvalidArgumentError(absl::StrCat("eigh input A must be square, got ", ShapeToString(a.shape())));
  }
  const int64_t n = a.dim(0);
  if (begin < 0 || begin > end || end > n) {
    return absl::InvalidArgumentError(absl::StrCat("eigh index range [begin, end) = [", begin, ", ", end,
                                                   ") must satisfy 0 <= begin <= end <= n = ", n));
  }
  ST_RETURN_IF_ERROR(ExpectVector(eigenvalues, end - begin, a.dtype(), "eigh output eigenvalues"));
  ST_RETURN_IF_ERROR(ExpectMatrix(eigenvectors, n, end - begin, a.dtype(), "eigh output eigenvectors"));
  return n;
}

namespace cpu {
namespace {

// Column-major LAPACKE wrappers, overloaded on the element type.
lapack_int Syevd(lapack_int n, float* a, float* w, float* work, lapack_int lwork, lapack_int* iwork,
                 lapack_int liwork) {
  return LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'U', n, a, n, w, work, lwork, iwork, liwork);
}
lapack_int Syevd(lapack_int n, double* a, double* w, double* work, lapack_int lwork, lapack_int* iwork,
                 lapack_int liwork) {
  return LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'U', n, a, n, w, work, lwork, iwork, liwork);
}
lapack_int Syevr(lapack_int n, float* a, lapack_int il, lapack_int iu, lapack_int* found, float* w, float* z,
                 lapack_int* isuppz, float* work, lapack_int lwork, lapack_int* iwork, lapack_int liwork) {
  const float abstol = LAPACKE_slamch('S');  // most accurate eigenvalues (LAPACK's recommendation)
  return LAPACKE_ssyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'U', n, a, n, 0.0f, 0.0f, il, iu, abstol, found, w, z, n,
                             isuppz, work, lwork, iwork, liwork);
}
lapack_int Syevr(lapack_int n, double* a, lapack_int il, lapack_int iu, lapack_int* found, double* w, double* z,
                 lapack_int* isuppz, double* work, lapack_int lwork, lapack_int* iwork, lapack_int liwork) {
  const double abstol = LAPACKE_dlamch('S');
  return LAPACKE_dsyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'U', n, a, n, 0.0, 0.0, il, iu, abstol, found, w, z, n, isuppz,
                             work, lwork, iwork, liwork);
}

absl::Status CheckCpuOperands(const Tensor& a, const Tensor& eigenvalues, const Tensor& eigenvectors) {
  ST_RETURN_IF_ERROR(ExpectOnCpu(a, "eigh input A"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(eigenvalues, "eigh output eigenvalues"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(eigenvectors, "eigh output eigenvectors"));
  return ExpectFiniteOnCpu(a, "eigh input A");
}

template <typename T>
absl::Status SyevdImpl(const Tensor& a, int64_t n, Tensor* eigenvalues, Tensor* eigenvectors) {
  ST_RETURN_IF_ERROR(ExpectInt32Index(SyevdMinWork(n), "the syevd workspace length 1 + 6n + 2n^2"));
  // Factor in place in the output: its column-major view is A^T, and LAPACK reads our lower triangle.
  T* z = eigenvectors->data<T>();
  std::memcpy(z, a.data<T>(), static_cast<size_t>(n * n) * sizeof(T));
  T work_query = 0;
  lapack_int iwork_query = 0;
  ST_RETURN_IF_ERROR(LapackStatus(Syevd(n, z, eigenvalues->data<T>(), &work_query, -1, &iwork_query, -1),
                                  "LAPACK syevd workspace query"));
  const int64_t lwork = LapackWorkLength(work_query, SyevdMinWork(n));
  const int64_t liwork = std::max<int64_t>(iwork_query, SyevdMinIwork(n));
  ST_RETURN_IF_ERROR(ExpectInt32Index(lwork, "the syevd workspace length"));
  // Uninitialised: zero-filling a 2n^2 workspace costs ~10% of a 2048 solve.
  std::unique_ptr<T[]> work(new T[lwork]);
  std::vector<lapack_int> iwork(liwork);
  ST_RETURN_IF_ERROR(LapackStatus(Syevd(n, z, eigenvalues->data<T>(), work.get(), lwork, iwork.data(), liwork),
                                  DTypeOf<T>::value == DType::kF32 ? "LAPACK ssyevd" : "LAPACK dsyevd"));
  // Eigenvector j is column j of the column-major result = row j of the buffer; make it column j.
  TransposeSquareInPlace(z, n);
  return absl::OkStatus();
}

template <typename T>
absl::Status SyevrImpl(const Tensor& a, int64_t n, int64_t begin, int64_t end, Tensor* eigenvalues,
                       Tensor* eigenvectors) {
  const int64_t k = end - begin;
  ST_RETURN_IF_ERROR(ExpectInt32Index(SyevrMinWork(n), "the syevr workspace length 26n"));
  std::vector<T> copy(a.data<T>(), a.data<T>() + n * n);  // syevr destroys its input
  std::vector<T> w_all(n), z(n * k);
  std::vector<lapack_int> isuppz(2 * n);
  lapack_int found = 0;
  const lapack_int il = static_cast<lapack_int>(begin + 1), iu = static_cast<lapack_int>(end);
  T work_query = 0;
  lapack_int iwork_query = 0;
  ST_RETURN_IF_ERROR(LapackStatus(
      Syevr(n, copy.data(), il, iu, &found, w_all.data(), z.data(), isuppz.data(), &work_query, -1, &iwork_query, -1),
      "LAPACK syevr workspace query"));
  const int64_t lwork = LapackWorkLength(work_query, SyevrMinWork(n));
  const int64_t liwork = std::max<int64_t>(iwork_query, SyevrMinIwork(n));
  ST_RETURN_IF_ERROR(ExpectInt32Index(lwork, "the syevr workspace length"));
  // Uninitialised: zero-filling a 2n^2 workspace costs ~10% of a 2048 solve.
  std::unique_ptr<T[]> work(new T[lwork]);
  std::vector<lapack_int> iwork(liwork);
  ST_RETURN_IF_ERROR(LapackStatus(Syevr(n, copy.data(), il, iu, &found, w_all.data(), z.data(), isuppz.data(),
                                        work.get(), lwork, iwork.data(), liwork),
                                  DTypeOf<T>::value == DType::kF32 ? "LAPACK ssyevr" : "LAPACK dsyevr"));
  if (found != k) {
    return absl::InternalError(
        absl::StrCat("LAPACK syevr returned ", found, " eigenpairs for the index range [", begin, ", ", end, ")"));
  }
  std::copy(w_all.begin(), w_all.begin() + k, eigenvalues->data<T>());
  // z is column-major n x k (eigenvector j contiguous), i.e. row-major k x n: transpose to [n, k].
  TransposeCopy(z.data(), k, n, n, eigenvectors->data<T>(), k);
  return absl::OkStatus();
}

}  // namespace

absl::Status SymmetricEigen(const Tensor& a, Tensor* eigenvalues, Tensor* eigenvectors) {
  ST_CHECK(eigenvalues != nullptr && eigenvectors != nullptr);
  const int64_t n = a.defined() && a.rank() == 2 ? a.dim(0) : 0;
  ST_ASSIGN_OR_RETURN(const int64_t checked_n, CheckSymmetricEigen(a, 0, n, *eigenvalues, *eigenvectors));
  ST_RETURN_IF_ERROR(CheckCpuOperands(a, *eigenvalues, *eigenvectors));
  if (checked_n == 0) return absl::OkStatus();
  if (a.dtype() == DType::kF32) return SyevdImpl<float>(a, n, eigenvalues, eigenvectors);
  return SyevdImpl<double>(a, n, eigenvalues, eigenvectors);
}

absl::Status SymmetricEigenRange(const Tensor& a, int64_t begin, int64_t end, Tensor* eigenvalues,
                                 Tensor* eigenvectors) {
  ST_CHECK(eigenvalues != nullptr && eigenvectors != nullptr);
  ST_ASSIGN_OR_RETURN(const int64_t n, CheckSymmetricEigen(a, begin, end, *eigenvalues, *eigenvectors));
  ST_RETURN_IF_ERROR(CheckCpuOperands(a, *eigenvalues, *eigenvectors));
  if (begin == end) return absl::OkStatus();
  if (a.dtype() == DType::kF32) return SyevrImpl<float>(a, n, begin, end, eigenvalues, eigenvectors);
  return SyevrImpl<double>(a, n, begin, end, eigenvalues, eigenvectors);
}

}  // namespace cpu
}  // namespace sigmatune::kernels
