// LAPACK reference of Inverse. LAPACK is column-major: the row-major n x n buffer of A read
// column-major is A^T, and getrf + getri on it leave (A^T)^{-1} = (A^{-1})^T column-major, which is
// A^{-1} row-major. No transposes are needed. (The LU is that of A^T, so a zero pivot's index is the
// one LAPACK reports for A^T; A is singular either way.)
#include <lapacke.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/inverse.h"
#include "kernels/ops/linalg_util.h"

namespace sigmatune::kernels {
namespace {

bool Overlap(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || a.device() != b.device()) return false;
  const char* a0 = static_cast<const char*>(a.raw_data());
  const char* b0 = static_cast<const char*>(b.raw_data());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

}  // namespace

absl::Status CheckInverse(const Tensor& a, const Tensor& inv) {
  ST_RETURN_IF_ERROR(ExpectFloatMatrixInput(a, "inverse input A"));
  if (a.dim(0) != a.dim(1)) {
    return absl::InvalidArgumentError(absl::StrCat("inverse input A must be square, got ", ShapeToString(a.shape())));
  }
  const int64_t n = a.dim(0);
  ST_RETURN_IF_ERROR(ExpectMatrix(inv, n, n, a.dtype(), "inverse output inv"));
  if (inv.device() != a.device()) {
    return absl::InvalidArgumentError(absl::StrCat("inverse output inv must be on the device of input A (",
                                                   a.DebugString(), "), got ", inv.DebugString()));
  }
  if (Overlap(a, inv)) {
    return absl::InvalidArgumentError("inverse output inv must not overlap input A");
  }
  return ExpectInt32Index(n, "inverse size n");
}

namespace cpu {
namespace {

lapack_int Getrf(lapack_int n, float* a, lapack_int* ipiv) {
  return LAPACKE_sgetrf_work(LAPACK_COL_MAJOR, n, n, a, n, ipiv);
}
lapack_int Getrf(lapack_int n, double* a, lapack_int* ipiv) {
  return LAPACKE_dgetrf_work(LAPACK_COL_MAJOR, n, n, a, n, ipiv);
}
lapack_int Getri(lapack_int n, float* a, const lapack_int* ipiv, float* work, lapack_int lwork) {
  return LAPACKE_sgetri_work(LAPACK_COL_MAJOR, n, a, n, ipiv, work, lwork);
}
lapack_int Getri(lapack_int n, double* a, const lapack_int* ipiv, double* work, lapack_int lwork) {
  return LAPACKE_dgetri_work(LAPACK_COL_MAJOR, n, a, n, ipiv, work, lwork);
}

template <typename T>
absl::Status InverseImpl(const Tensor& a, int64_t n, Tensor* inv) {
  constexpr bool kSingle = DTypeOf<T>::value == DType::kF32;
  T* out = inv->data<T>();
  std::memcpy(out, a.data<T>(), static_cast<size_t>(n * n) * sizeof(T));
  std::vector<lapack_int> ipiv(n);
  const lapack_int info = Getrf(static_cast<lapack_int>(n), out, ipiv.data());
  if (info > 0) {
    return absl::FailedPreconditionError(absl::StrCat("inverse input A (", n, " x ", n,
                                                      ") is singular: LU pivot ", info - 1,
                                                      " (0-based) is exactly zero"));
  }
  ST_RETURN_IF_ERROR(LapackStatus(info, kSingle ? "LAPACK sgetrf" : "LAPACK dgetrf"));
  T work_query = 0;
  ST_RETURN_IF_ERROR(LapackStatus(Getri(static_cast<lapack_int>(n), out, ipiv.data(), &work_query, -1),
                                  "LAPACK getri workspace query"));
  // The query comes back as a T; in f32 it may round down (see LapackWorkLength). Minimum: n.
  const int64_t lwork = LapackWorkLength(work_query, n);
  ST_RETURN_IF_ERROR(ExpectInt32Index(lwork, "the getri workspace length"));
  std::unique_ptr<T[]> work(new T[lwork]);
  const lapack_int info_ri =
      Getri(static_cast<lapack_int>(n), out, ipiv.data(), work.get(), static_cast<lapack_int>(lwork));
  if (info_ri > 0) {  // getrf would have reported it first; kept for completeness
    return absl::FailedPreconditionError(absl::StrCat("inverse input A (", n, " x ", n,
                                                      ") is singular: LU pivot ", info_ri - 1,
                                                      " (0-based) is exactly zero"));
  }
  return LapackStatus(info_ri, kSingle ? "LAPACK sgetri" : "LAPACK dgetri");
}

}  // namespace

absl::Status Inverse(const Tensor& a, Tensor* inv) {
  ST_CHECK(inv != nullptr);
  ST_RETURN_IF_ERROR(CheckInverse(a, *inv));
  ST_RETURN_IF_ERROR(ExpectOnCpu(a, "inverse input A"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(*inv, "inverse output inv"));
  ST_RETURN_IF_ERROR(ExpectFiniteOnCpu(a, "inverse input A"));
  const int64_t n = a.dim(0);
  if (n == 0) return absl::OkStatus();
  if (a.dtype() == DType::kF32) return InverseImpl<float>(a, n, inv);
  return InverseImpl<double>(a, n, inv);
}

}  // namespace cpu
}  // namespace sigmatune::kernels
