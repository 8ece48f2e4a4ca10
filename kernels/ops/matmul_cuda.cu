// cuBLAS matmul. cuBLAS is column-major: a row-major C (M x N) is the column-major C^T, so we
// compute C^T = op(B)^T op(A)^T, i.e. call gemm with the operands swapped; a row-major storage S
// read column-major is S^T, so each operand's transpose flag carries over unchanged.
#include <library_types.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/matmul.h"

namespace sigmatune::kernels::cuda {
namespace {

cublasOperation_t ToCublas(Transpose t) { return t == Transpose::kNo ? CUBLAS_OP_N : CUBLAS_OP_T; }

cudaDataType_t ToCudaType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kF64:
      return CUDA_R_64F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    default:
      ST_CHECK(false) << "no CUDA data type for " << DTypeName(dtype);
      return CUDA_R_32F;
  }
}

}  // namespace

absl::Status Matmul(GpuContext& ctx, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                    double alpha, double beta, Tensor* c) {
  ST_CHECK(c != nullptr);
  ST_ASSIGN_OR_RETURN(const MatmulDims dims, CheckMatmul(a, ta, b, tb, *c));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, "matmul A"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, b, "matmul B"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *c, "matmul C"));
  ST_ASSIGN_OR_RETURN(const RowMajorOperand la, AsRowMajorOperand(a, "matmul A"));
  ST_ASSIGN_OR_RETURN(const RowMajorOperand lb, AsRowMajorOperand(b, "matmul B"));
  ST_ASSIGN_OR_RETURN(const RowMajorOperand lc, AsRowMajorOperand(*c, "matmul C"));
  const Transpose op_a = la.storage == Transpose::kNo ? ta : Flip(ta);
  const Transpose op_b = lb.storage == Transpose::kNo ? tb : Flip(tb);
  if (dims.m == 0 || dims.n == 0) return absl::OkStatus();
  for (int64_t v : {dims.m, dims.n, dims.k, la.ld, lb.ld, lc.ld}) {
    if (v > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("cuda::Matmul dimension ", v, " exceeds 2^31-1"));
    }
  }
  ST_RETURN_IF_ERROR(ctx.Activate());

  const bool f64 = a.dtype() == DType::kF64;
  const float alpha32 = static_cast<float>(alpha), beta32 = static_cast<float>(beta);
  const void* alpha_ptr = f64 ? static_cast<const void*>(&alpha) : static_cast<const void*>(&alpha32);
  const void* beta_ptr = f64 ? static_cast<const void*>(&beta) : static_cast<const void*>(&beta32);
  ST_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
      ctx.cublas(), ToCublas(op_b), ToCublas(op_a), static_cast<int>(dims.n), static_cast<int>(dims.m),
      static_cast<int>(dims.k), alpha_ptr, b.raw_data(), ToCudaType(b.dtype()), static_cast<int>(lb.ld),
      a.raw_data(), ToCudaType(a.dtype()), static_cast<int>(la.ld), beta_ptr, c->raw_data(),
      ToCudaType(c->dtype()), static_cast<int>(lc.ld), f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace sigmatune::kernels::cuda
