// How a rank-2 tensor maps onto a BLAS operand (shared by the CPU and CUDA ops).
//
// A BLAS-compatible matrix is either row-major with unit column stride (storage "as is") or the
// transpose of such a matrix (e.g. a Transposed() view); either way it has a leading dimension.
#ifndef SIGMATUNE_KERNELS_OPS_BLAS_LAYOUT_H_
#define SIGMATUNE_KERNELS_OPS_BLAS_LAYOUT_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune::kernels {

enum class Transpose { kNo, kYes };

inline Transpose Flip(Transpose t) { return t == Transpose::kNo ? Transpose::kYes : Transpose::kNo; }

struct RowMajorOperand {
  // The tensor equals S (kNo) or S^T (kYes), where S is row-major with leading dimension `ld`.
  Transpose storage;
  int64_t ld;
};

// InvalidArgument naming `what` when `t` is not rank 2 or its strides fit neither layout.
absl::StatusOr<RowMajorOperand> AsRowMajorOperand(const Tensor& t, const char* what);

// Rows/columns of op(t) for a rank-2 tensor.
inline int64_t OpRows(const Tensor& t, Transpose op) { return op == Transpose::kNo ? t.dim(0) : t.dim(1); }
inline int64_t OpCols(const Tensor& t, Transpose op) { return op == Transpose::kNo ? t.dim(1) : t.dim(0); }

// InvalidArgument unless `t` is a contiguous rank-2 tensor of `dtype` with the given shape.
absl::Status ExpectMatrix(const Tensor& t, int64_t rows, int64_t cols, DType dtype, const char* what);

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_BLAS_LAYOUT_H_
