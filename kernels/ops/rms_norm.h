// RMSNorm over the last dimension of rows x [tokens, d] (LlamaRMSNorm):
//
//   rstd[t] = 1 / sqrt(mean_j x[t, j]^2 + eps)         (fp32; fp64 for f64 inputs)
//   y[t, j] = x[t, j] * rstd[t] * w[j]
//
// Backward, with n = x * rstd and g = dy * w:
//   dx[t, j] = rstd[t] * (g[t, j] - n[t, j] * mean_k(g[t, k] * n[t, k]))
//   dw[j]    = sum_t dy[t, j] * n[t, j]                (overwritten, not accumulated)
// The backward recomputes rstd from x (one extra pass over x; nothing is saved by the forward).
//
// Contract: x, y, dy, dx [tokens, d]; w, dw [d]; all contiguous on the backend's device; eps > 0.
// dw may be null (frozen norm weight). Dtypes:
//   cpu:  everything f32, or everything f64 (sum of squares accumulated in double).
//   cuda: x (and y, dy, dx) f32 or bf16; w f32 or bf16; dw f32. All arithmetic in fp32 and one
//         rounding to the output dtype. HF rounds x * rstd to the input dtype before multiplying
//         by w; for bf16 we round once at the end instead (differs by at most ~1 bf16 ulp).
//         dw is a deterministic column reduction (no atomics).
#ifndef SIGMATUNE_KERNELS_OPS_RMS_NORM_H_
#define SIGMATUNE_KERNELS_OPS_RMS_NORM_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

class CpuContext;

// Shape checks shared by both backends (dtype rules are per backend). dw may be null.
absl::Status CheckRmsNorm(const Tensor& x, const Tensor& w, double eps, const Tensor& y_or_dy, const Tensor* dx,
                          const Tensor* dw);

namespace cpu {
// ctx (may be null: serial) splits the rows; the results do not depend on it. A backward with dw
// runs on the calling thread (dw is summed in row order).
absl::Status RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y, CpuContext* ctx = nullptr);
absl::Status RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx,
                             Tensor* dw, CpuContext* ctx = nullptr);
}  // namespace cpu

namespace cuda {
// One block per row; dw by a second, column-parallel kernel over rstd kept in the workspace.
absl::Status RmsNormForward(GpuContext& ctx, const Tensor& x, const Tensor& w, double eps, Tensor* y);
absl::Status RmsNormBackward(GpuContext& ctx, const Tensor& x, const Tensor& w, double eps, const Tensor& dy,
                             Tensor* dx, Tensor* dw);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_RMS_NORM_H_
