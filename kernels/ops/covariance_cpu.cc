#include <cblas.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/covariance.h"

namespace sigmatune::kernels {

absl::Status CheckCovariance(const Tensor& x, const Tensor& c) {
  if (!x.defined() || x.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("covariance input X must be a [tokens, n] matrix, got ",
                                                   x.DebugString()));
  }
  const int64_t n = x.dim(1);
  if (c.dtype() != DType::kF32 && c.dtype() != DType::kF64) {
    return absl::InvalidArgumentError(
        absl::StrCat("covariance accumulator C must be f32 or f64, got ", c.DebugString()));
  }
  ST_RETURN_IF_ERROR(ExpectMatrix(c, n, n, c.dtype(), "covariance accumulator C"));
  if (!IsFloating(x.dtype()) || (x.dtype() == DType::kF64 && c.dtype() == DType::kF32)) {
    return absl::InvalidArgumentError(absl::StrCat("covariance input X of dtype ", DTypeName(x.dtype()),
                                                   " cannot accumulate into a ", DTypeName(c.dtype()), " C"));
  }
  ST_ASSIGN_OR_RETURN(const RowMajorOperand layout, AsRowMajorOperand(x, "covariance input X"));
  if (layout.storage != Transpose::kNo) {
    return absl::InvalidArgumentError(
        absl::StrCat("covariance input X must be row-major (tokens as rows), got ", x.DebugString()));
  }
  return absl::OkStatus();
}

absl::Status CheckSymmetrize(const Tensor& c) {
  if (!c.defined() || c.rank() != 2 || c.dim(0) != c.dim(1) || !c.is_contiguous() ||
      (c.dtype() != DType::kF32 && c.dtype() != DType::kF64)) {
    return absl::InvalidArgumentError(
        absl::StrCat("symmetrize needs a contiguous square f32/f64 matrix, got ", c.DebugString()));
  }
  return absl::OkStatus();
}

namespace cpu {
namespace {

// Copies the upper triangle onto the lower one in cache-sized tiles (a plain loop reads the
// upper triangle column-wise, which costs ~10% of a 2048^2 SYRK).
template <typename T>
void MirrorUpperToLower(T* c, int64_t n) {
  constexpr int64_t kTile = 16;  // fastest of 16/32/64 at n = 1024 and 2048 on the build VM
  for (int64_t ib = 0; ib < n; ib += kTile) {
    for (int64_t jb = 0; jb <= ib; jb += kTile) {
      const int64_t i_end = std::min(ib + kTile, n), j_end = std::min(jb + kTile, n);
      for (int64_t i = ib; i < i_end; ++i) {
        for (int64_t j = jb; j < std::min(j_end, i); ++j) c[i * n + j] = c[j * n + i];
      }
    }
  }
}

}  // namespace

absl::Status AccumulateCovariance(const Tensor& x, double alpha, Tensor* c, CovarianceFill fill) {
  ST_CHECK(c != nullptr);
  ST_RETURN_IF_ERROR(CheckCovariance(x, *c));
  if (!x.device().is_cpu() || !c->device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("cpu::AccumulateCovariance needs CPU tensors, got ",
                                                   x.DebugString(), " and ", c->DebugString()));
  }
  if (x.dtype() != c->dtype()) return AccumulateCovariance(x.To(c->dtype()), alpha, c, fill);
  const int64_t tokens = x.dim(0), n = x.dim(1);
  if (tokens == 0 || n == 0) return absl::OkStatus();
  ST_ASSIGN_OR_RETURN(const RowMajorOperand layout, AsRowMajorOperand(x, "covariance input X"));
  // Row-major, upper, transposed: C := alpha * X^T X + C on the upper triangle.
  if (c->dtype() == DType::kF32) {
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, tokens, static_cast<float>(alpha), x.data<float>(),
                layout.ld, 1.0f, c->data<float>(), n);
  } else {
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, tokens, alpha, x.data<double>(), layout.ld, 1.0,
                c->data<double>(), n);
  }
  return fill == CovarianceFill::kFull ? SymmetrizeFromUpper(c) : absl::OkStatus();
}

absl::Status SymmetrizeFromUpper(Tensor* c) {
  ST_CHECK(c != nullptr);
  ST_RETURN_IF_ERROR(CheckSymmetrize(*c));
  if (!c->device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("cpu::SymmetrizeFromUpper needs a CPU tensor, got ", c->DebugString()));
  }
  if (c->dtype() == DType::kF32) {
    MirrorUpperToLower(c->data<float>(), c->dim(0));
  } else {
    MirrorUpperToLower(c->data<double>(), c->dim(0));
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
