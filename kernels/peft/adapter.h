// LowRankAdapter: the trainable part of every method, in the model's per-linear adapter slot
// (model::LinearAdapter). It adds
//     y += s * B diag(d) A drop(x)          (d is all ones unless the adapter has one: KaSA)
// to the frozen layer's output, and in Backward accumulates the parameter gradients
//     u = A drop(x) [T, r], v = d * u, g = s * dy B [T, r]
//     dB += s * dy^T v,  dd += sum_t g * u,  dA += (g * d)^T drop(x),
// and adds (g * d) A, masked and scaled as the dropout was, to dx.
//
// Contract:
//  - Parameters and their gradients live on the backend's device in f32 (f64 works too, for
//    tests). Gradients accumulate across Backward calls until ZeroGrad (gradient accumulation).
//  - Activations (x, y, dy, dx) are in the parameters' dtype, or in bf16/f16 with f32 parameters
//    (the CUDA backend's bf16 model): then the adapter works as PEFT does on a bf16 base with fp32
//    adapter weights: x and dy are widened to f32, the adapter's math is f32, and its output (its
//    input gradient) is added to y (dx) in f32 and rounded once to the activation dtype. So the
//    mixed path gives bit for bit the f32 path's results on the widened activations, rounded.
//  - Dropout (p > 0) draws its mask from kernels::Dropout with the seed set by set_dropout_seed
//    (the trainer sets a new one per micro-batch): Forward and a recomputed Forward
//    (Recompute::kPerLayer) of the same micro-batch drop the same elements, and Backward uses the
//    same mask. With p == 0 nothing is drawn.
//  - AdapterMode::kEval (evaluation, generation) turns dropout off (PEFT's model.eval()); the mode
//    starts as kTrain. Backward in kEval computes the gradients of the undropped forward.
//  - Backward must follow a Forward on the same x (the model guarantees it). Not thread safe.
#ifndef SIGMATUNE_KERNELS_PEFT_ADAPTER_H_
#define SIGMATUNE_KERNELS_PEFT_ADAPTER_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"

namespace sigmatune::peft {

enum class HasDiagonal { kNo, kYes };
enum class AdapterMode { kTrain, kEval };

class LowRankAdapter final : public model::LinearAdapter {
 public:
  // a [r, n], b [m, r], d [r] (undefined unless KaSA), all f32 or all f64 on the backend's device;
  // copied into the adapter. InvalidArgument for mismatched shapes, dtypes or 0 > dropout >= 1.
  static absl::StatusOr<std::unique_ptr<LowRankAdapter>> Create(model::ModelBackend* backend, const Tensor& a,
                                                                const Tensor& b, const Tensor& d, double scale,
                                                                double dropout);

  absl::Status Forward(const Tensor& x, Tensor* y) override;
  absl::Status Backward(const Tensor& x, const Tensor& dy, Tensor* dx) override;

  void set_dropout_seed(uint64_t seed) { dropout_seed_ = seed; }
  void set_mode(AdapterMode mode) { mode_ = mode; }
  AdapterMode mode() const { return mode_; }
  absl::Status ZeroGrad();

  int64_t rank() const { return a_.dim(0); }
  double scale() const { return scale_; }
  double dropout() const { return dropout_; }
  HasDiagonal has_diagonal() const { return d_.defined() ? HasDiagonal::kYes : HasDiagonal::kNo; }
  // Parameters and gradients (same shapes); the optimizer updates the parameters in place.
  Tensor& a() { return a_; }
  Tensor& b() { return b_; }
  Tensor& d() { return d_; }
  Tensor& grad_a() { return grad_a_; }
  Tensor& grad_b() { return grad_b_; }
  Tensor& grad_d() { return grad_d_; }

 private:
  LowRankAdapter(model::ModelBackend* backend, double scale, double dropout)
      : backend_(backend), scale_(scale), dropout_(dropout) {}

  model::ModelBackend* backend_;
  double scale_;
  double dropout_;
  uint64_t dropout_seed_ = 0;
  AdapterMode mode_ = AdapterMode::kTrain;
  // The dropout probability in effect (0 in kEval).
  double active_dropout() const { return mode_ == AdapterMode::kTrain ? dropout_ : 0.0; }
  Tensor a_, b_, d_;
  Tensor grad_a_, grad_b_, grad_d_;
};

}  // namespace sigmatune::peft

#endif  // SIGMATUNE_KERNELS_PEFT_ADAPTER_H_
