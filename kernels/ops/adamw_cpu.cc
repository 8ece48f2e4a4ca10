#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/adamw.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "AdamWStep";

absl::Status ExpectArg(bool ok, const char* what, double value, const char* rule) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(kOp, ": ", what, " must be ", rule, ", got ", value));
}

absl::Status ExpectSameDevice(const Tensor& t, const Tensor& ref, const char* what) {
  if (t.device() == ref.device()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(kOp, ": ", what, " (", t.device().ToString(), ") and param (",
                                                 ref.device().ToString(), ") must be on the same device"));
}

// One element of the step, in T (f32 or f64) with the coefficients rounded to T once. std::fma is
// torch's fused lerp / addcmul (its vectorised CPU kernels use fmadd there); everything else is a
// separately rounded operation, in torch's order.
template <typename T>
struct StepCoefficients {
  explicit StepCoefficients(const AdamWCoefficients& c)
      : grad_scale(static_cast<T>(c.grad_scale)),
        decay(static_cast<T>(c.decay)),
        avg_weight(static_cast<T>(c.avg_weight)),
        avg_weight_m1(static_cast<T>(c.avg_weight) - T(1)),
        beta2(static_cast<T>(c.beta2)),
        sq_weight(static_cast<T>(c.sq_weight)),
        bias2_sqrt(static_cast<T>(c.bias2_sqrt)),
        eps(static_cast<T>(c.eps)),
        neg_step_size(static_cast<T>(c.neg_step_size)),
        small_weight(std::abs(avg_weight) < T(0.5)) {}
  T grad_scale, decay, avg_weight, avg_weight_m1, beta2, sq_weight, bias2_sqrt, eps, neg_step_size;
  bool small_weight;
};

template <typename T>
void AdamWStepImpl(const StepCoefficients<T>& c, bool decay, int64_t n, const T* grad, T* param, T* m, T* v) {
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * c.grad_scale;
    T p = param[i];
    if (decay) p = p * c.decay;
    const T diff = g - m[i];
    const T new_m = c.small_weight ? std::fma(c.avg_weight, diff, m[i]) : std::fma(c.avg_weight_m1, diff, g);
    const T scaled_v = v[i] * c.beta2;
    const T new_v = std::fma(c.sq_weight * g, g, scaled_v);
    const T denom = std::sqrt(new_v) / c.bias2_sqrt + c.eps;
    param[i] = p + (c.neg_step_size * new_m) / denom;
    m[i] = new_m;
    v[i] = new_v;
  }
}

template <typename T>
double SumOfSquaresImpl(const T* x, int64_t n) {
  // Four interleaved double accumulators, added in a fixed order: deterministic, and as accurate as
  // one running double sum for any gradient this sees.
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const double value = static_cast<double>(x[i + k]);
      acc[k] += value * value;
    }
  }
  for (; i < n; ++i) {
    const double value = static_cast<double>(x[i]);
    acc[0] += value * value;
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace

AdamWCoefficients ComputeAdamWCoefficients(const AdamWStepArgs& args) {
  const double step = static_cast<double>(args.step);
  const double bias1 = 1.0 - std::pow(args.beta1, step);
  const double bias2 = 1.0 - std::pow(args.beta2, step);
  AdamWCoefficients c;
  c.grad_scale = args.grad_scale;
  c.decay = args.weight_decay != 0 ? 1.0 - args.lr * args.weight_decay : 1.0;
  c.avg_weight = 1.0 - args.beta1;
  c.beta2 = args.beta2;
  c.sq_weight = 1.0 - args.beta2;
  c.bias2_sqrt = std::sqrt(bias2);
  c.eps = args.eps;
  c.neg_step_size = -(args.lr / bias1);
  return c;
}

absl::Status CheckAdamWStep(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                            const AdamWStepArgs& args) {
  ST_RETURN_IF_ERROR(ExpectArg(std::isfinite(args.lr) && args.lr >= 0, "lr", args.lr, "finite and >= 0"));
  ST_RETURN_IF_ERROR(ExpectArg(args.beta1 >= 0 && args.beta1 < 1, "beta1", args.beta1, "in [0, 1)"));
  ST_RETURN_IF_ERROR(ExpectArg(args.beta2 >= 0 && args.beta2 < 1, "beta2", args.beta2, "in [0, 1)"));
  ST_RETURN_IF_ERROR(ExpectArg(std::isfinite(args.eps) && args.eps >= 0, "eps", args.eps, "finite and >= 0"));
  ST_RETURN_IF_ERROR(ExpectArg(std::isfinite(args.weight_decay) && args.weight_decay >= 0, "weight_decay",
                               args.weight_decay, "finite and >= 0"));
  ST_RETURN_IF_ERROR(ExpectArg(std::isfinite(args.grad_scale), "grad_scale", args.grad_scale, "finite"));
  if (args.step < 1) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": step must be >= 1 (1-based), got ", args.step));
  }
  if (!param.defined()) return absl::InvalidArgumentError(absl::StrCat(kOp, ": param is not defined"));
  const Shape any(param.rank(), -1);
  ST_RETURN_IF_ERROR(nn::ExpectTensor(param, kOp, "param", any, {DType::kF32, DType::kF64}));
  const std::initializer_list<std::pair<const Tensor*, const char*>> others = {
      {&grad, "grad"}, {&exp_avg, "exp_avg"}, {&exp_avg_sq, "exp_avg_sq"}};
  for (const auto& [t, what] : others) {
    ST_RETURN_IF_ERROR(nn::ExpectTensor(*t, kOp, what, param.shape(), {DType::kF32, DType::kF64}));
    ST_RETURN_IF_ERROR(nn::ExpectSameDType(*t, param, kOp, what, "param"));
    ST_RETURN_IF_ERROR(ExpectSameDevice(*t, param, what));
  }
  return absl::OkStatus();
}

namespace cpu {

absl::Status AdamWStep(Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                       const AdamWStepArgs& args) {
  ST_CHECK(param != nullptr && exp_avg != nullptr && exp_avg_sq != nullptr);
  ST_RETURN_IF_ERROR(CheckAdamWStep(*param, grad, *exp_avg, *exp_avg_sq, args));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(*param, kOp, "param"));
  const AdamWCoefficients c = ComputeAdamWCoefficients(args);
  const bool decay = args.weight_decay != 0;
  if (param->dtype() == DType::kF32) {
    AdamWStepImpl(StepCoefficients<float>(c), decay, param->numel(), grad.data<float>(), param->data<float>(),
                  exp_avg->data<float>(), exp_avg_sq->data<float>());
  } else {
    AdamWStepImpl(StepCoefficients<double>(c), decay, param->numel(), grad.data<double>(), param->data<double>(),
                  exp_avg->data<double>(), exp_avg_sq->data<double>());
  }
  return absl::OkStatus();
}

absl::StatusOr<double> SumOfSquares(const Tensor& x) {
  constexpr char kSum[] = "SumOfSquares";
  if (!x.defined()) return absl::InvalidArgumentError("SumOfSquares: x is not defined");
  ST_RETURN_IF_ERROR(nn::ExpectTensor(x, kSum, "x", Shape(x.rank(), -1), {DType::kF32, DType::kF64}));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(x, kSum, "x"));
  if (x.dtype() == DType::kF32) return SumOfSquaresImpl(x.data<float>(), x.numel());
  return SumOfSquaresImpl(x.data<double>(), x.numel());
}

}  // namespace cpu
}  // namespace sigmatune::kernels
