// The optimizer step of adapter training (worker/train/optimizer.h):
//   AdamWStep(param, grad, exp_avg, exp_avg_sq, args): one torch.optim.AdamW step of one tensor,
//     in torch's single-tensor (foreach=False) order of operations, elementwise, with every scalar
//     coefficient computed in double on the host and rounded once to the element type:
//       g  = grad * grad_scale
//       param *= 1 - lr * weight_decay                       (skipped when weight_decay == 0)
//       m  = lerp(m, g, 1 - beta1)                           (torch's lerp: m + w * (g - m) as one
//                                                             fused multiply-add for w < 0.5, else
//                                                             g - (1 - w) * (g - m), also fused)
//       v  = fma((1 - beta2) * g, g, v * beta2)              (torch's v.mul_(beta2).addcmul_(g, g))
//       denom = sqrt(v) / sqrt(1 - beta2^step) + eps
//       param += (-(lr / (1 - beta1^step)) * m) / denom      (torch's addcdiv_)
//     Torch's CPU sqrt (MKL VML) is within an ulp of the correctly rounded sqrt used here, so the
//     result matches PyTorch to an ulp or two per step, not always bit for bit.
//   SumOfSquares(x) = sum_i x[i]^2, accumulated in double (the squared gradient norm of one tensor).
//
// Contract: param, grad, exp_avg, exp_avg_sq contiguous, one shape (any rank), one dtype, one
// device. Dtypes: AdamWStep cpu f32/f64, cuda f32; SumOfSquares cpu and cuda f32/f64. args.step is
// the 1-based number of the step being taken; 0 <= beta1, beta2 < 1; lr, eps, weight_decay >= 0;
// every argument finite. Errors: InvalidArgument naming the operand or argument; nothing is written
// then. Non-finite gradients are not detected here (the optimizer checks the norm first).
// CUDA: AdamWStep is only enqueued on ctx.stream(); SumOfSquares reduces deterministically (two
// fixed-order passes) into a device double, copies it back and synchronizes the stream. The CUDA
// AdamWStep uses round-to-nearest intrinsics (no contraction), the same arithmetic as the CPU
// reference, so the two agree to the last bit wherever the host compiler does not contract either.
#ifndef SIGMATUNE_KERNELS_OPS_ADAMW_H_
#define SIGMATUNE_KERNELS_OPS_ADAMW_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

struct AdamWStepArgs {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  // Multiplies the gradient first: 1 / accumulation steps times the clipping coefficient.
  double grad_scale = 1;
  // 1 for the first step.
  int64_t step = 1;
};

// The scalar coefficients of one step, in double (rounded to the element type by the kernels).
struct AdamWCoefficients {
  double grad_scale;  // g = grad * grad_scale
  double decay;       // param *= decay (1 when weight_decay == 0)
  double avg_weight;  // lerp weight 1 - beta1
  double beta2;       // v * beta2
  double sq_weight;   // 1 - beta2
  double bias2_sqrt;  // sqrt(1 - beta2^step)
  double eps;
  double neg_step_size;  // -(lr / (1 - beta1^step))
};
AdamWCoefficients ComputeAdamWCoefficients(const AdamWStepArgs& args);

// Validates the arguments and the operands' shapes/dtypes/layout (not their device).
absl::Status CheckAdamWStep(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                            const AdamWStepArgs& args);

namespace cpu {
absl::Status AdamWStep(Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                       const AdamWStepArgs& args);
absl::StatusOr<double> SumOfSquares(const Tensor& x);
}  // namespace cpu

namespace cuda {
absl::Status AdamWStep(GpuContext& ctx, Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                       const AdamWStepArgs& args);
absl::StatusOr<double> SumOfSquares(GpuContext& ctx, const Tensor& x);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_ADAMW_H_
