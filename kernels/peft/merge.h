// Folding an adapter into its base weight, and exporting a trained adapter as a plain LoRA on the
// ORIGINAL (un-residualised) base weight (METHODS.md §1 merge, §5, §11; FORMATS.md §3).
//
// Merge:    W <- W + s B diag(d) A       (d only for KaSA; W is the residual base W_res)
// Unmerge:  W <- W - s B diag(d) A       (so Unmerge(Merge(W_res)) == W_res up to rounding; never W
//                                          for the residual methods)
// The delta is formed in the adapter's dtype (f32/f64); a W of another dtype (bf16 on the GPU) is
// widened, updated and rounded back once (as PEFT merges in fp32).
//
// ConvertToPlainLora: a standard LoRA (A' [r', n], B' [m, r'], alpha') that, applied to the
// original W with the same scaling rule (s' = s), reproduces the trained layer:
//     W + s' B' A' == W_res + s B diag(d) A.
//   LoRA (W_res == W, B0 = 0):   unchanged copies, r' = r, alpha' = alpha.
//   PiSSA / MiLoRA / CorDA:      A' = [A; A0], B' = [B, -B0] (W = W_res + s B0 A0).
//   KaSA (W = W_res + P_t S_t Q_t^T, the truncated tail of init.h):
//                                A' = [A; Q_t^T], B' = [B diag(d), -P_t S_t / s]
//                                (FORMATS.md's [diag(d) A; S_t Q_t^T / s], [B, -P_t] is the same
//                                product; this one keeps A' rows orthonormal in the tail).
//   Both rank-doubling cases: r' = 2r and alpha' = 2 alpha (rsLoRA: sqrt(2) alpha), so s' = s.
// Exact in exact arithmetic; in fp32 only to the rounding of W_res (METHODS.md §11).
//
// Contract: a [r, n], b [m, r], d [r] (KaSA only), w [m, n]; the init tensors of the method
// (init.a/init.b, or init.tail_u [m, r] / tail_s [r] / tail_vt [r, n]) in a's dtype, all
// contiguous on the backend's device. options.rank must equal r; the scale is
// AdapterScale(options). Results are new tensors on the device. Errors: InvalidArgument naming
// the operand.
#ifndef SIGMATUNE_KERNELS_PEFT_MERGE_H_
#define SIGMATUNE_KERNELS_PEFT_MERGE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/peft/init.h"
#include "kernels/peft/method.h"

namespace sigmatune::peft {

// d may be undefined (no diagonal). w contiguous [m, n], f32/f64/bf16.
absl::Status Merge(model::ModelBackend& backend, const Tensor& a, const Tensor& b, const Tensor& d, double scale,
                   Tensor* w);
absl::Status Unmerge(model::ModelBackend& backend, const Tensor& a, const Tensor& b, const Tensor& d, double scale,
                     Tensor* w);

struct PlainLora {
  Tensor a;             // [rank, n]
  Tensor b;             // [m, rank]
  int64_t rank = 0;     // r'
  double alpha = 0.0;   // alpha' (same Scaling as the source adapter)
};

// The rank and alpha a converted adapter gets (r, alpha for LoRA; 2r and 2 alpha / sqrt(2) alpha
// with rsLoRA otherwise).
int64_t ConvertedRank(const AdapterOptions& options);
double ConvertedAlpha(const AdapterOptions& options);

// a, b (and d for KaSA) the trained factors; init what InitializeAdapter returned for the layer.
absl::StatusOr<PlainLora> ConvertToPlainLora(model::ModelBackend& backend, const AdapterOptions& options,
                                             const AdapterInit& init, const Tensor& a, const Tensor& b,
                                             const Tensor& d);

}  // namespace sigmatune::peft

#endif  // SIGMATUNE_KERNELS_PEFT_MERGE_H_
