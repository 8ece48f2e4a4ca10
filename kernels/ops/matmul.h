// Matmul: C = alpha * op(A) * op(B) + beta * C for rank-2 tensors.
//
// Operands: row-major with unit column stride or transposed views of such (see blas_layout.h);
// C must be row-major with unit column stride (it may be a column slice of a wider matrix).
// Supported dtypes (A and B equal):
//   f32 x f32 -> f32, f64 x f64 -> f64,
//   bf16 / f16 x same -> f32 or same (products exact in fp32, fp32 accumulation).
// No TF32 on f32 inputs anywhere (METHODS.md §0).
// Errors: InvalidArgument naming the operand for shape/dtype/layout problems.
// With beta == 0, C's old contents are ignored (NaNs in C do not propagate).
#ifndef SIGMATUNE_KERNELS_OPS_MATMUL_H_
#define SIGMATUNE_KERNELS_OPS_MATMUL_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"
#include "kernels/ops/blas_layout.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// What both backends hand to BLAS, after validation: C (m x n) = op_a(S_A) op_b(S_B), where
// S_A, S_B are the row-major storages of A and B (a transposed-storage operand flips its flag).
struct MatmulPlan {
  int64_t m, n, k;
  Transpose op_a, op_b;
  int64_t lda, ldb, ldc;
};
absl::StatusOr<MatmulPlan> PlanMatmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                                      const Tensor& c);

namespace cpu {
// OpenBLAS sgemm/dgemm; half inputs are widened to f32 first.
absl::Status Matmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, double alpha, double beta,
                    Tensor* c);
}  // namespace cpu

namespace cuda {
// cublasGemmEx on ctx.stream() (fp32 compute for f32 and half inputs, fp64 for f64).
absl::Status Matmul(GpuContext& ctx, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                    double alpha, double beta, Tensor* c);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_MATMUL_H_
