// cuBLAS matmul. cuBLAS is column-major: a row-major C (M x N) is the column-major C^T, so we
// compute C^T = op(B)^T op(A)^T, i.e. call gemm with the operands swapped; a row-major storage S
// read column-major is S^T, so each operand's transpose flag carries over unchanged.
#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/matmul.h"

namespace sigmatune::kernels::cuda {
namespace {

cublasOperation_t ToCublas(Transpose t) { return t == Transpose::kNo ? CUBLAS_OP_N : CUBLAS_OP_T; }

}  // namespace

absl::Status Matmul(GpuContext& ctx, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                    double alpha, double beta, Tensor* c) {
  ST_CHECK(c != nullptr);
  ST_ASSIGN_OR_RETURN(const MatmulPlan p, PlanMatmul(a, ta, b, tb, *c));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, "matmul A"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, b, "matmul B"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *c, "matmul C"));
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  for (int64_t v : {p.m, p.n, p.k, p.lda, p.ldb, p.ldc}) {
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
      ctx.cublas(), ToCublas(p.op_b), ToCublas(p.op_a), static_cast<int>(p.n), static_cast<int>(p.m),
      static_cast<int>(p.k), alpha_ptr, b.raw_data(), CudaDataType(b.dtype()), static_cast<int>(p.ldb),
      a.raw_data(), CudaDataType(a.dtype()), static_cast<int>(p.lda), beta_ptr, c->raw_data(),
      CudaDataType(c->dtype()), static_cast<int>(p.ldc), f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace sigmatune::kernels::cuda
