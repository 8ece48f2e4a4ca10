// Adapter initialisation of every method (METHODS.md §1-§5) for one linear layer, on any
// ModelBackend, in f32 or f64 (the dtype of W; all SVDs run in that dtype, fp32 at least, as PEFT).
//
//   LoRA      A ~ U(-1/sqrt(n), 1/sqrt(n)) (Kaiming-uniform, a = sqrt(5)), B = 0, W_res = W.
//   PiSSA     W = P S Q^T (full thin SVD, or RandomizedSvd(rank, niter) when options.pissa_niter > 0);
//             A = diag(sqrt(S_top / s)) Q_top^T, B = P_top diag(sqrt(S_top / s)), W_res = W - s B A.
//   MiLoRA    the same with the last r triplets.
//   CorDA     W C_d = U S V~^T (C_d the damped covariance, DampCovariance); IPM keeps the first r
//             triplets, KPM the last r. Inverse-free form (METHODS.md §4):
//             A = diag(1 / sqrt(s S_sel)) U_sel^T W,  B = U_sel diag(sqrt(S_sel / s)),
//             W_res = W - s B A  (= (I - U_sel U_sel^T) W), which equals PEFT's factors.
//   KaSA      W = P S Q^T; W_res = P[:, :k-r] S Q[:, :k-r]^T (top k - r kept); A Kaiming-uniform,
//             B = 0, d ~ N(0, 1); the truncated tail (P_tail, S_tail, Q_tail^T) is kept for the
//             exact plain-LoRA export (METHODS.md §11).
//
// Contract:
//  - w: contiguous [m, n], f32 or f64, finite, on the backend's device; 1 <= rank <= min(m, n)
//    for the SVD methods (else InvalidArgument naming the layer, its shape and the rank). LoRA
//    has no upper limit (as PEFT). KaSA at rank == min(m, n) is allowed (as PEFT): everything is
//    truncated, W_res = 0, and the whole of W lives in the tail triplets.
//  - covariance: for CorDA the damped C_d [n, n] of w's dtype (from DampCovariance); ignored
//    (may be nullptr) for other methods; missing for CorDA is InvalidArgument.
//  - CorDA: a selected singular value of W C_d that is zero (KPM on a W that is rank-deficient
//    along those directions; PEFT would produce 0/0) is FailedPrecondition naming the layer.
//    Rescaling the covariance by c^2 (C -> c^2 C) leaves DampCovariance's damping, s B A and W_res
//    unchanged but maps B -> c B, A -> A / c (PEFT's factors do the same); the collector's
//    per-sample |max| normalisation makes C itself invariant to scaling the calibration data.
//  - Random draws (LoRA/KaSA A, KaSA d, the randomized SVD's test matrix) come from `seed` through
//    kernels/base/rng.h on the host, so every backend starts from the same numbers: A is the first
//    r * n uniforms of Rng(seed) (row-major), KaSA's d the next r normals of the same Rng, and the
//    randomized SVD receives `seed` itself. The same inputs and seed give the same bits.
//  - Errors name `layer_name` (backend errors are prefixed with it).
//  - The outputs are new tensors on the backend's device in w's dtype; for LoRA w_res shares w.
#ifndef SIGMATUNE_KERNELS_PEFT_INIT_H_
#define SIGMATUNE_KERNELS_PEFT_INIT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/peft/method.h"

namespace sigmatune::peft {

struct AdapterInit {
  Tensor a;      // [r, n]
  Tensor b;      // [m, r]
  Tensor d;      // [r], KaSA only (undefined otherwise)
  Tensor w_res;  // [m, n]
  double scale = 1.0;
  // KaSA only: the r smallest singular triplets removed from W (W = W_res + tail_u diag(tail_s) tail_vt).
  Tensor tail_u;   // [m, r]
  Tensor tail_s;   // [r]
  Tensor tail_vt;  // [r, n]
};

// `layer_name` only labels errors ("model.layers.3.self_attn.q_proj").
absl::StatusOr<AdapterInit> InitializeAdapter(model::ModelBackend& backend, const AdapterOptions& options,
                                              const std::string& layer_name, const Tensor& w,
                                              const Tensor* covariance, uint64_t seed);

// CorDA's damping rule, exactly as PEFT (METHODS.md §4): d = 0.01; loop
//   C_d = C + d * mean(diag C) * I;  accept when ||C_d inv(C_d) - I||_F < 0.05;  else d *= 2.
// C [n, n] f32/f64 symmetric (the collector's normalised covariance); the result is a new
// tensor. PEFT's failure modes become errors naming `layer_name`: a covariance holding NaN/Inf
// (PEFT loops forever), a zero or negative mean diagonal (PEFT divides by zero / inverts a zero
// matrix), and no acceptable d after max_doublings (FailedPrecondition with the last error).
struct DampedCovariance {
  Tensor c_d;
  double damping = 0.0;  // the accepted d
  int doublings = 0;     // how often d was doubled
  double inverse_error = 0.0;  // ||C_d inv(C_d) - I||_F at the accepted d
};
absl::StatusOr<DampedCovariance> DampCovariance(model::ModelBackend& backend, const std::string& layer_name,
                                                const Tensor& c, int max_doublings = 40);

}  // namespace sigmatune::peft

#endif  // SIGMATUNE_KERNELS_PEFT_INIT_H_
