#include <cblas.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/matmul.h"

namespace sigmatune::kernels {

absl::StatusOr<MatmulDims> CheckMatmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                                       const Tensor& c) {
  for (const Tensor* t : {&a, &b, &c}) {
    if (!t->defined() || t->rank() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("matmul operands must be matrices, got ", t->DebugString()));
    }
  }
  const MatmulDims dims{OpRows(a, ta), OpCols(b, tb), OpCols(a, ta)};
  if (OpRows(b, tb) != dims.k || c.dim(0) != dims.m || c.dim(1) != dims.n) {
    return absl::InvalidArgumentError(absl::StrCat("matmul shapes do not chain: op(A) ", dims.m, "x", dims.k,
                                                   ", op(B) ", OpRows(b, tb), "x", dims.n, ", C ",
                                                   ShapeToString(c.shape())));
  }
  if (a.dtype() != b.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("matmul A and B dtypes differ: ", DTypeName(a.dtype()),
                                                   " vs ", DTypeName(b.dtype())));
  }
  const bool half = a.dtype() == DType::kBF16 || a.dtype() == DType::kF16;
  const bool ok = (a.dtype() == DType::kF32 && c.dtype() == DType::kF32) ||
                  (a.dtype() == DType::kF64 && c.dtype() == DType::kF64) ||
                  (half && (c.dtype() == DType::kF32 || c.dtype() == a.dtype()));
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat("matmul does not support ", DTypeName(a.dtype()),
                                                   " inputs with a ", DTypeName(c.dtype()), " output"));
  }
  ST_ASSIGN_OR_RETURN(RowMajorOperand c_layout, AsRowMajorOperand(c, "matmul output C"));
  if (c_layout.storage != Transpose::kNo) {
    return absl::InvalidArgumentError(
        absl::StrCat("matmul output C must be row-major with unit column stride, got ", c.DebugString()));
  }
  return dims;
}

namespace cpu {
namespace {

CBLAS_TRANSPOSE ToCblas(Transpose t) { return t == Transpose::kNo ? CblasNoTrans : CblasTrans; }

}  // namespace

absl::Status Matmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, double alpha, double beta,
                    Tensor* c) {
  ST_CHECK(c != nullptr);
  ST_ASSIGN_OR_RETURN(const MatmulDims dims, CheckMatmul(a, ta, b, tb, *c));
  for (const Tensor* t : {&a, &b, static_cast<const Tensor*>(c)}) {
    if (!t->device().is_cpu()) {
      return absl::InvalidArgumentError(absl::StrCat("cpu::Matmul needs CPU tensors, got ", t->DebugString()));
    }
  }
  if (a.dtype() == DType::kBF16 || a.dtype() == DType::kF16) {
    // Widen exactly to f32, then accumulate in f32 like the GPU path.
    const Tensor a32 = a.To(DType::kF32), b32 = b.To(DType::kF32);
    if (c->dtype() == DType::kF32) return Matmul(a32, ta, b32, tb, alpha, beta, c);
    Tensor c32 = c->To(DType::kF32);
    ST_RETURN_IF_ERROR(Matmul(a32, ta, b32, tb, alpha, beta, &c32));
    c->CopyFrom(c32);
    return absl::OkStatus();
  }
  ST_ASSIGN_OR_RETURN(const RowMajorOperand la, AsRowMajorOperand(a, "matmul A"));
  ST_ASSIGN_OR_RETURN(const RowMajorOperand lb, AsRowMajorOperand(b, "matmul B"));
  ST_ASSIGN_OR_RETURN(const RowMajorOperand lc, AsRowMajorOperand(*c, "matmul C"));
  // op(A) over storage S_A: a transposed-storage operand flips the BLAS transpose flag.
  const Transpose op_a = la.storage == Transpose::kNo ? ta : Flip(ta);
  const Transpose op_b = lb.storage == Transpose::kNo ? tb : Flip(tb);
  if (dims.m == 0 || dims.n == 0) return absl::OkStatus();
  if (a.dtype() == DType::kF32) {
    cblas_sgemm(CblasRowMajor, ToCblas(op_a), ToCblas(op_b), dims.m, dims.n, dims.k, static_cast<float>(alpha),
                a.data<float>(), la.ld, b.data<float>(), lb.ld, static_cast<float>(beta), c->data<float>(), lc.ld);
  } else {
    cblas_dgemm(CblasRowMajor, ToCblas(op_a), ToCblas(op_b), dims.m, dims.n, dims.k, alpha, a.data<double>(),
                la.ld, b.data<double>(), lb.ld, beta, c->data<double>(), lc.ld);
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
