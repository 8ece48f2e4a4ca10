// The orthogonality regularisers of KaSA (METHODS.md §5) and SORSA (§7), per adapted layer, with
// their gradients, on any ModelBackend (only r x r Gram matrices are formed).
//
// KaSA, per layer, A [r, n], B [m, r], d [r]:
//   kPeft       value = beta * sum_i d_i^2 + gamma * (||B^T B - I_r||_F + ||A A^T - I_r||_F)
//               (PEFT sums it over the layers: weight 1).
//   kReference  value = beta * sum_i d_i^2 + gamma * (||A^T A - I_n||_F + ||B B^T - I_m||_F)
//               (the KaSA repository divides the sum over layers by the number of layers: pass
//               weight = 1 / num_layers). Evaluated without n x n or m x m matrices:
//               ||A^T A - I_n||_F^2 = ||A A^T - I_r||_F^2 + (n - r), and its gradient
//               2 (A A^T A - A) / ||A^T A - I_n||_F = 2 (A A^T - I_r) A / ||A^T A - I_n||_F
//               (B likewise, with B^T B and m).
// SORSA, per layer, V_p^T [r, n], U_p [m, r]:
//   value = ||V_p^T V_p - I_r||_F + ||U_p^T U_p - I_r||_F (the trainer passes
//   weight = gamma / (eta_peak * 2 * num_layers), METHODS.md §7).
// The norms are not squared; their gradient 2 B (B^T B - I) / ||B^T B - I||_F is undefined where the
// norm is 0 and taken as 0 there (METHODS.md §12).
//
// Contract (both functions):
//  - Tensors contiguous, f32 or f64 (one dtype), on the backend's device, shapes as above.
//    Gradient tensors are either nullptr (value only) or shaped like their parameter; the function
//    adds weight * d value / d parameter into them (accumulating, like the task gradient).
//  - Returns weight * value, computed in double from the device's Gram matrices (a few small
//    device-to-host copies: the CUDA backend synchronises).
//  - Errors: InvalidArgument naming the operand for shapes/dtypes; weight, beta, gamma must be
//    finite and >= 0.
#ifndef SIGMATUNE_KERNELS_PEFT_REGULARIZER_H_
#define SIGMATUNE_KERNELS_PEFT_REGULARIZER_H_

#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/peft/method.h"

namespace sigmatune::peft {

struct KasaRegularizerValue {
  double l2 = 0.0;     // sum_i d_i^2
  double l3 = 0.0;     // the two orthogonality norms of the chosen form
  double total = 0.0;  // weight * (beta * l2 + gamma * l3)
};

struct KasaRegularizerOptions {
  KasaRegularizerForm form = KasaRegularizerForm::kPeft;
  double beta = 1e-4;
  double gamma = 1e-3;
  double weight = 1.0;  // 1 for kPeft, 1 / num_layers for kReference
};

absl::StatusOr<KasaRegularizerValue> KasaRegularizer(model::ModelBackend& backend,
                                                     const KasaRegularizerOptions& options, const Tensor& a,
                                                     const Tensor& b, const Tensor& d, Tensor* grad_a, Tensor* grad_b,
                                                     Tensor* grad_d);

// SORSA's orthonormal regulariser of one layer: vt = V_p^T [r, n], u = U_p [m, r]. Returns
// weight * (||vt vt^T - I_r||_F + ||u^T u - I_r||_F) and adds weight * its gradient.
absl::StatusOr<double> SorsaRegularizer(model::ModelBackend& backend, double weight, const Tensor& vt,
                                        const Tensor& u, Tensor* grad_vt, Tensor* grad_u);

}  // namespace sigmatune::peft

#endif  // SIGMATUNE_KERNELS_PEFT_REGULARIZER_H_
