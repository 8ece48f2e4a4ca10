#include <cblas.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/matmul.h"

namespace sigmatune::kernels {

absl::StatusOr<MatmulPlan> PlanMatmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                                      const Tensor& c) {
  for (const Tensor* t : {&a, &b, &c}) {
    if (!t->defined() || t->rank() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("matmul operands must be matrices, got ", t->DebugString()));
    }
  }
  const int64_t m = OpRows(a, ta), n = OpCols(b, tb), k = OpCols(a, ta);
  if (OpRows(b, tb) != k || c.dim(0) != m || c.dim(1) != n) {
    return absl::InvalidArgumentError(absl::StrCat("matmul shapes do not chain: op(A) ", m, "x", k, ", op(B) ",
                                                   OpRows(b, tb), "x", n, ", C ", ShapeToString(c.shape())));
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
  ST_ASSIGN_OR_RETURN(const RowMajorOperand la, AsRowMajorOperand(a, "matmul A"));
  ST_ASSIGN_OR_RETURN(const RowMajorOperand lb, AsRowMajorOperand(b, "matmul B"));
  ST_ASSIGN_OR_RETURN(const RowMajorOperand lc, AsRowMajorOperand(c, "matmul output C"));
  if (lc.storage != Transpose::kNo) {
    return absl::InvalidArgumentError(
        absl::StrCat("matmul output C must be row-major with unit column stride, got ", c.DebugString()));
  }
  return MatmulPlan{m,
                    n,
                    k,
                    la.storage == Transpose::kNo ? ta : Flip(ta),
                    lb.storage == Transpose::kNo ? tb : Flip(tb),
                    la.ld,
                    lb.ld,
                    lc.ld};
}

namespace cpu {
namespace {

CBLAS_TRANSPOSE ToCblas(Transpose t) { return t == Transpose::kNo ? CblasNoTrans : CblasTrans; }

}  // namespace

absl::Status Matmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, double alpha, double beta,
                    Tensor* c) {
  ST_CHECK(c != nullptr);
  ST_ASSIGN_OR_RETURN(const MatmulPlan p, PlanMatmul(a, ta, b, tb, *c));
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
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (a.dtype() == DType::kF32) {
    cblas_sgemm(CblasRowMajor, ToCblas(p.op_a), ToCblas(p.op_b), p.m, p.n, p.k, static_cast<float>(alpha),
                a.data<float>(), p.lda, b.data<float>(), p.ldb, static_cast<float>(beta), c->data<float>(), p.ldc);
  } else {
    cblas_dgemm(CblasRowMajor, ToCblas(p.op_a), ToCblas(p.op_b), p.m, p.n, p.k, alpha, a.data<double>(), p.lda,
                b.data<double>(), p.ldb, beta, c->data<double>(), p.ldc);
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
