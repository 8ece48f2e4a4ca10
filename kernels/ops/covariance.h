// Covariance accumulation: C += alpha * X^T X (a symmetric rank-k update, SYRK).
//
// X: [tokens, n] rows of layer inputs (row-major, unit column stride; a row slice or a matrix
//    with a larger leading dimension is fine). C: contiguous symmetric [n, n] accumulator.
// Dtypes: C is f32 or f64. X may be f32 or f64, or bf16 / f16 (each product of two 16-bit
//    floats is exact in fp32, so the result equals an fp32 GEMM of the widened inputs up to
//    summation order). X wider than C (f64 into f32) is refused.
// SYRK updates the upper triangle. With CovarianceFill::kFull (the default) the lower triangle is
// then mirrored from it, so C stays exactly symmetric. A calibration loop that accumulates many
// batches passes kUpperOnly (the lower triangle is then unspecified: stale or updated) and calls
// SymmetrizeFromUpper once at the end, saving an O(n^2) pass per batch (~7-10% of a SYRK at
// n = 1024..2048, bench/RESULTS.md).
// No TF32 is ever used on f32 inputs (METHODS.md §0). An empty X leaves C unchanged.
#ifndef SIGMATUNE_KERNELS_OPS_COVARIANCE_H_
#define SIGMATUNE_KERNELS_OPS_COVARIANCE_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

enum class CovarianceFill { kFull, kUpperOnly };

// Validation shared by both backends.
absl::Status CheckCovariance(const Tensor& x, const Tensor& c);
// C must be a contiguous square f32/f64 matrix.
absl::Status CheckSymmetrize(const Tensor& c);

namespace cpu {
// OpenBLAS ssyrk/dsyrk (X widened to C's dtype first when it is narrower).
absl::Status AccumulateCovariance(const Tensor& x, double alpha, Tensor* c,
                                  CovarianceFill fill = CovarianceFill::kFull);
// Copies the upper triangle of the square matrix C onto its lower triangle.
absl::Status SymmetrizeFromUpper(Tensor* c);
}  // namespace cpu

namespace cuda {
// cublas{S,D}syrk for f32/f64 X; cublasGemmEx (fp32 compute) for bf16/f16 X into f32 C; 16-bit
// X into f64 C is widened on the device first. Enqueued on ctx.stream().
absl::Status AccumulateCovariance(GpuContext& ctx, const Tensor& x, double alpha, Tensor* c,
                                  CovarianceFill fill = CovarianceFill::kFull);
absl::Status SymmetrizeFromUpper(GpuContext& ctx, Tensor* c);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_COVARIANCE_H_
