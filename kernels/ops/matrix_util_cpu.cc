#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/linalg_util.h"
#include "kernels/ops/matrix_util.h"

namespace sigmatune::kernels {

absl::Status CheckSquareMatrix(const Tensor& a, const char* what) {
  ST_RETURN_IF_ERROR(ExpectFloatMatrixInput(a, what));
  if (a.dim(0) != a.dim(1)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be square, got ", ShapeToString(a.shape())));
  }
  return absl::OkStatus();
}

namespace cpu {
namespace {

absl::Status CheckCpuSquare(const Tensor& a, const char* what) {
  ST_RETURN_IF_ERROR(CheckSquareMatrix(a, what));
  return ExpectOnCpu(a, what);
}

template <typename T>
double DiagonalSum(const T* a, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(a[i * n + i]);
  return sum;
}

template <typename T>
void AddToDiagonal(T value, T* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i * n + i] += value;
}

template <typename T>
double SquaredDistance(const T* a, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double d = static_cast<double>(a[i * n + j]) - (i == j ? 1.0 : 0.0);
      sum += d * d;
    }
  }
  return sum;
}

template <typename T>
int64_t NonFinite(const T* t, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += std::isfinite(t[i]) ? 0 : 1;
  return count;
}

}  // namespace

absl::StatusOr<double> DiagonalMean(const Tensor& a) {
  ST_RETURN_IF_ERROR(CheckCpuSquare(a, "DiagonalMean input A"));
  const int64_t n = a.dim(0);
  if (n == 0) return absl::InvalidArgumentError("DiagonalMean input A is empty (0 x 0); its mean is undefined");
  const double sum = a.dtype() == DType::kF32 ? DiagonalSum(a.data<float>(), n) : DiagonalSum(a.data<double>(), n);
  return sum / static_cast<double>(n);
}

absl::Status AddScaledIdentity(double alpha, Tensor* a) {
  ST_CHECK(a != nullptr);
  ST_RETURN_IF_ERROR(CheckCpuSquare(*a, "AddScaledIdentity matrix A"));
  // alpha is rounded to A's dtype first, then added: C + (d * mean) * I in fp32, as PEFT does.
  if (a->dtype() == DType::kF32) {
    AddToDiagonal(static_cast<float>(alpha), a->data<float>(), a->dim(0));
  } else {
    AddToDiagonal(alpha, a->data<double>(), a->dim(0));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> DistanceFromIdentity(const Tensor& a) {
  ST_RETURN_IF_ERROR(CheckCpuSquare(a, "DistanceFromIdentity input A"));
  const int64_t n = a.dim(0);
  return std::sqrt(a.dtype() == DType::kF32 ? SquaredDistance(a.data<float>(), n)
                                            : SquaredDistance(a.data<double>(), n));
}

absl::StatusOr<int64_t> CountNonFinite(const Tensor& t) {
  if (!t.defined() || !t.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CountNonFinite input must be a defined contiguous tensor, got ", t.DebugString()));
  }
  ST_RETURN_IF_ERROR(ExpectRealFloat(t, "CountNonFinite input"));
  ST_RETURN_IF_ERROR(ExpectOnCpu(t, "CountNonFinite input"));
  if (t.dtype() == DType::kF32) return NonFinite(t.data<float>(), t.numel());
  return NonFinite(t.data<double>(), t.numel());
}

}  // namespace cpu
}  // namespace sigmatune::kernels
