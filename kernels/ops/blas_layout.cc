#include "kernels/ops/blas_layout.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sigmatune::kernels {

absl::StatusOr<RowMajorOperand> AsRowMajorOperand(const Tensor& t, const char* what) {
  if (!t.defined() || t.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a matrix, got ", t.DebugString()));
  }
  const int64_t rows = t.dim(0), cols = t.dim(1);
  const int64_t s0 = t.stride(0), s1 = t.stride(1);
  // Size-1 dimensions have meaningless strides; a leading dimension must be >= max(1, cols).
  if ((cols == 1 || s1 == 1) && (rows == 1 || s0 >= cols)) {
    return RowMajorOperand{Transpose::kNo, std::max<int64_t>(rows == 1 ? cols : s0, 1)};
  }
  if ((rows == 1 || s0 == 1) && (cols == 1 || s1 >= rows)) {
    return RowMajorOperand{Transpose::kYes, std::max<int64_t>(cols == 1 ? rows : s1, 1)};
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " ", t.DebugString(), " has strides [",
                                                 absl::StrJoin(t.strides(), ", "),
                                                 "] that no BLAS call accepts; make it contiguous first"));
}

absl::Status ExpectMatrix(const Tensor& t, int64_t rows, int64_t cols, DType dtype, const char* what) {
  if (!t.defined() || t.rank() != 2 || t.dim(0) != rows || t.dim(1) != cols || t.dtype() != dtype ||
      !t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a contiguous ", DTypeName(dtype), "[", rows,
                                                   ", ", cols, "] matrix, got ", t.DebugString()));
  }
  return absl::OkStatus();
}

}  // namespace sigmatune::kernels
