// AdamW over the trainable tensors of an adapter, as transformers' Trainer runs torch.optim.AdamW
// (foreach=False): each Step first scales every gradient by grad_scale (1 / accumulation steps),
// then clips the scaled gradients like torch.nn.utils.clip_grad_norm_ (total 2-norm over all
// parameters, coefficient min(1, max_grad_norm / (total + 1e-6))), then applies one AdamW step per
// parameter (kernels/ops/adamw.h) on the backend's device. The gradient norm is accumulated in
// double (torch: in the gradients' dtype).
//
// A non-finite total gradient norm fails the step with FailedPrecondition and changes nothing
// (parameters, moments and step count stay as they were): the trainer stops and keeps its last good
// checkpoint. Other errors (bad arguments) are InvalidArgument, also before anything changes.
//
// The optimizer neither owns the parameters nor their gradients: Param points at tensors the
// caller keeps alive (and at their current storage) for the optimizer's lifetime. Not thread safe.
#ifndef SIGMATUNE_WORKER_TRAIN_OPTIMIZER_H_
#define SIGMATUNE_WORKER_TRAIN_OPTIMIZER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"

namespace sigmatune::train {

struct AdamWOptions {
  double lr = 2e-4;  // the base learning rate (the schedule's factor multiplies it; Step takes the product)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // <= 0: no clipping
};

// InvalidArgument naming the option unless lr >= 0, 0 <= beta1, beta2 < 1, eps >= 0,
// weight_decay >= 0 and max_grad_norm is a number (all finite).
absl::Status ValidateAdamWOptions(const AdamWOptions& options);

class AdamW {
 public:
  struct Param {
    std::string name;
    Tensor* value;  // f32 (or f64 on a CPU backend), contiguous, on the backend's device
    Tensor* grad;   // same shape, dtype and device as value
  };

  // Allocates zeroed exp_avg / exp_avg_sq for each parameter on the backend. InvalidArgument for a
  // bad option, no parameters, an empty or duplicate name, a null pointer, two params sharing
  // memory, or a value/grad that is not as described above. `backend` must outlive the optimizer.
  static absl::StatusOr<std::unique_ptr<AdamW>> Create(model::ModelBackend* backend, std::vector<Param> params,
                                                       AdamWOptions options);

  struct StepStats {
    double grad_norm = 0;  // of the scaled gradients, before clipping
    double clip_coef = 1;  // what the scaled gradients were multiplied by (1: not clipped)
    double lr = 0;
  };

  // One optimizer step at learning rate `lr` (>= 0, finite) with every gradient multiplied by
  // grad_scale (> 0, finite) first. FailedPrecondition "gradient norm is NaN/Inf at step N" (N =
  // step() + 1) with nothing changed when the gradients are not finite. The gradients are read,
  // never modified.
  absl::StatusOr<StepStats> Step(double lr, double grad_scale);

  // Steps taken (successful Step calls, or the count restored by LoadState).
  int64_t step() const { return step_; }

  // The checkpoint state: "<name>.exp_avg" and "<name>.exp_avg_sq" for every parameter, as CPU
  // copies (they never alias the optimizer's buffers), plus step() saved by the caller.
  absl::StatusOr<std::map<std::string, Tensor>> StateTensors() const;
  // Restores a state saved by StateTensors. The map must hold exactly those names with the
  // parameters' shapes and dtypes, as finite CPU tensors (exp_avg_sq >= 0), and step >= 0;
  // otherwise InvalidArgument naming the tensor, and nothing is changed.
  absl::Status LoadState(const std::map<std::string, Tensor>& tensors, int64_t step);

  const std::vector<Param>& params() const { return params_; }
  const AdamWOptions& options() const { return options_; }

 private:
  AdamW(model::ModelBackend* backend, std::vector<Param> params, AdamWOptions options, std::vector<Tensor> exp_avg,
        std::vector<Tensor> exp_avg_sq);

  model::ModelBackend* backend_;
  std::vector<Param> params_;
  AdamWOptions options_;
  std::vector<Tensor> exp_avg_;
  std::vector<Tensor> exp_avg_sq_;
  int64_t step_ = 0;
};

// What AdamW::Create checks of its parameters for a backend on `device` (InvalidArgument naming the
// parameter otherwise); shared with ShardedAdamW (sharded_optimizer.h).
absl::Status ValidateAdamWParams(Device device, const std::vector<AdamW::Param>& params);

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_OPTIMIZER_H_
