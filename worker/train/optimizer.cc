#include "worker/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/adamw.h"

namespace sigmatune::train {
namespace {

// Added to the total norm before dividing, as torch.nn.utils.clip_grad_norm_.
constexpr double kClipEpsilon = 1e-6;

absl::Status ExpectOption(bool ok, const char* what, double value, const char* rule) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("AdamW option ", what, " must be ", rule, ", got ", value));
}

// `t` is a defined contiguous f32 tensor (f64 allowed on the CPU) on `device`.
absl::Status ExpectTrainable(const Tensor& t, Device device, const std::string& what) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat("AdamW: ", what, " is not defined"));
  const bool dtype_ok = t.dtype() == DType::kF32 || (t.dtype() == DType::kF64 && device.is_cpu());
  if (!dtype_ok) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW: ", what, " must be f32", device.is_cpu() ? " or f64" : "",
                                                   " on ", device.ToString(), ", got ", t.DebugString()));
  }
  if (t.device() != device) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW: ", what, " must be on the backend's device ",
                                                   device.ToString(), ", got ", t.DebugString()));
  }
  if (!t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW: ", what, " must be contiguous, got ", t.DebugString()));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status ExpectFiniteState(const Tensor& t, bool non_negative, const std::string& name) {
  const T* data = t.data<T>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(data[i]) || (non_negative && data[i] < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("AdamW state ", name, ": element ", i, " is ", static_cast<double>(data[i]),
                       non_negative ? " (must be finite and >= 0)" : " (must be finite)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAdamWOptions(const AdamWOptions& o) {
  ST_RETURN_IF_ERROR(ExpectOption(std::isfinite(o.lr) && o.lr >= 0, "lr", o.lr, "finite and >= 0"));
  ST_RETURN_IF_ERROR(ExpectOption(o.beta1 >= 0 && o.beta1 < 1, "beta1", o.beta1, "in [0, 1)"));
  ST_RETURN_IF_ERROR(ExpectOption(o.beta2 >= 0 && o.beta2 < 1, "beta2", o.beta2, "in [0, 1)"));
  ST_RETURN_IF_ERROR(ExpectOption(std::isfinite(o.eps) && o.eps >= 0, "eps", o.eps, "finite and >= 0"));
  ST_RETURN_IF_ERROR(ExpectOption(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "weight_decay", o.weight_decay,
                                  "finite and >= 0"));
  return ExpectOption(std::isfinite(o.max_grad_norm), "max_grad_norm", o.max_grad_norm,
                      "finite (<= 0 turns clipping off)");
}

absl::Status ValidateAdamWParams(Device device, const std::vector<AdamW::Param>& params) {
  if (params.empty()) return absl::InvalidArgumentError("AdamW: no parameters to optimize");
  std::set<std::string> names;
  std::set<const void*> buffers;
  for (const AdamW::Param& p : params) {
    if (p.name.empty()) return absl::InvalidArgumentError("AdamW: a parameter has an empty name");
    if (!names.insert(p.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("AdamW: duplicate parameter name '", p.name, "'"));
    }
    if (p.value == nullptr || p.grad == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("AdamW: parameter '", p.name, "' has a null value or grad"));
    }
    ST_RETURN_IF_ERROR(ExpectTrainable(*p.value, device, absl::StrCat("parameter '", p.name, "'")));
    ST_RETURN_IF_ERROR(ExpectTrainable(*p.grad, device, absl::StrCat("gradient of '", p.name, "'")));
    if (p.grad->shape() != p.value->shape() || p.grad->dtype() != p.value->dtype()) {
      return absl::InvalidArgumentError(absl::StrCat("AdamW: gradient of '", p.name, "' is ", p.grad->DebugString(),
                                                     ", the parameter ", p.value->DebugString()));
    }
    for (const Tensor* t : {p.value, p.grad}) {
      if (t->numel() > 0 && !buffers.insert(t->raw_data()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("AdamW: parameter '", p.name, "' shares its value or gradient memory with another"));
      }
    }
  }
  return absl::OkStatus();
}

AdamW::AdamW(model::ModelBackend* backend, std::vector<Param> params, AdamWOptions options, std::vector<Tensor> exp_avg,
             std::vector<Tensor> exp_avg_sq)
    : backend_(backend),
      params_(std::move(params)),
      options_(options),
      exp_avg_(std::move(exp_avg)),
      exp_avg_sq_(std::move(exp_avg_sq)) {}

absl::StatusOr<std::unique_ptr<AdamW>> AdamW::Create(model::ModelBackend* backend, std::vector<Param> params,
                                                     AdamWOptions options) {
  ST_CHECK(backend != nullptr);
  ST_RETURN_IF_ERROR(ValidateAdamWOptions(options));
  ST_RETURN_IF_ERROR(ValidateAdamWParams(backend->device(), params));
  std::vector<Tensor> exp_avg, exp_avg_sq;
  for (const Param& p : params) {
    ST_ASSIGN_OR_RETURN(Tensor m, backend->Zeros(p.value->shape(), p.value->dtype()));
    ST_ASSIGN_OR_RETURN(Tensor v, backend->Zeros(p.value->shape(), p.value->dtype()));
    exp_avg.push_back(std::move(m));
    exp_avg_sq.push_back(std::move(v));
  }
  return std::unique_ptr<AdamW>(
      new AdamW(backend, std::move(params), options, std::move(exp_avg), std::move(exp_avg_sq)));
}

absl::StatusOr<AdamW::StepStats> AdamW::Step(double lr, double grad_scale) {
  if (!(std::isfinite(lr) && lr >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW::Step: lr must be finite and >= 0, got ", lr));
  }
  if (!(std::isfinite(grad_scale) && grad_scale > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW::Step: grad_scale must be finite and > 0, got ", grad_scale));
  }
  // clip_grad_norm_ on the scaled gradients: ||s * g|| = s * ||g||.
  double sum_of_squares = 0;
  for (const Param& p : params_) {
    ST_ASSIGN_OR_RETURN(const double sum, backend_->SumOfSquares(*p.grad));
    sum_of_squares += sum;
  }
  StepStats stats;
  stats.lr = lr;
  stats.grad_norm = grad_scale * std::sqrt(sum_of_squares);
  if (!std::isfinite(stats.grad_norm)) {
    return absl::FailedPreconditionError(absl::StrCat("gradient norm is NaN/Inf at step ", step_ + 1, " (",
                                                      stats.grad_norm, "); no parameter was changed"));
  }
  if (options_.max_grad_norm > 0) {
    stats.clip_coef = std::min(1.0, options_.max_grad_norm / (stats.grad_norm + kClipEpsilon));
  }
  kernels::AdamWStepArgs args;
  args.lr = lr;
  args.beta1 = options_.beta1;
  args.beta2 = options_.beta2;
  args.eps = options_.eps;
  args.weight_decay = options_.weight_decay;
  args.grad_scale = grad_scale * stats.clip_coef;
  args.step = step_ + 1;
  for (size_t i = 0; i < params_.size(); ++i) {
    // Shapes were checked by Create, so an error here is the device's; the step is then incomplete.
    const absl::Status status =
        backend_->AdamWStep(params_[i].value, *params_[i].grad, &exp_avg_[i], &exp_avg_sq_[i], args);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("AdamW step ", step_ + 1, ", parameter '", params_[i].name,
                                                      "': ", status.message()));
    }
  }
  ++step_;
  return stats;
}

absl::StatusOr<std::map<std::string, Tensor>> AdamW::StateTensors() const {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const auto& [suffix, state] :
         {std::make_pair(".exp_avg", &exp_avg_[i]), std::make_pair(".exp_avg_sq", &exp_avg_sq_[i])}) {
      ST_ASSIGN_OR_RETURN(Tensor host, backend_->Download(*state));
      // The CPU backend "downloads" without copying; a checkpoint must not change with later steps.
      if (host.raw_data() == state->raw_data()) host = host.Contiguous();
      out.emplace(params_[i].name + suffix, std::move(host));
    }
  }
  return out;
}

absl::Status AdamW::LoadState(const std::map<std::string, Tensor>& tensors, int64_t step) {
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("AdamW state: step must be >= 0, got ", step));
  std::set<std::string> expected;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& value = *params_[i].value;
    for (const auto& [suffix, non_negative] :
         {std::make_pair(".exp_avg", false), std::make_pair(".exp_avg_sq", true)}) {
      const std::string name = params_[i].name + suffix;
      expected.insert(name);
      auto it = tensors.find(name);
      if (it == tensors.end()) return absl::InvalidArgumentError(absl::StrCat("AdamW state: missing tensor ", name));
      const Tensor& t = it->second;
      if (!t.defined() || !t.device().is_cpu() || t.shape() != value.shape() || t.dtype() != value.dtype()) {
        return absl::InvalidArgumentError(absl::StrCat("AdamW state: tensor ", name, " is ", t.DebugString(),
                                                       ", expected ", DTypeName(value.dtype()), " ",
                                                       ShapeToString(value.shape()), " on the CPU"));
      }
      const Tensor dense = t.is_contiguous() ? t : t.Contiguous();
      ST_RETURN_IF_ERROR(value.dtype() == DType::kF32 ? ExpectFiniteState<float>(dense, non_negative, name)
                                                      : ExpectFiniteState<double>(dense, non_negative, name));
    }
  }
  for (const auto& [name, t] : tensors) {
    if (expected.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("AdamW state: unexpected tensor ", name, " (no parameter of that name in this optimizer)"));
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const auto& [suffix, state] :
         {std::make_pair(".exp_avg", &exp_avg_[i]), std::make_pair(".exp_avg_sq", &exp_avg_sq_[i])}) {
      const Tensor& host = tensors.at(params_[i].name + suffix);
      ST_ASSIGN_OR_RETURN(const Tensor uploaded, backend_->Upload(host));
      ST_RETURN_IF_ERROR(backend_->Copy(uploaded, state));
    }
  }
  step_ = step;
  return absl::OkStatus();
}

}  // namespace sigmatune::train
