#include "kernels/peft/method.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sigmatune::peft {

absl::string_view MethodName(Method method) {
  switch (method) {
    case Method::kLora:
      return "lora";
    case Method::kPissa:
      return "pissa";
    case Method::kMilora:
      return "milora";
    case Method::kCordaIpm:
      return "corda_ipm";
    case Method::kCordaKpm:
      return "corda_kpm";
    case Method::kKasa:
      return "kasa";
  }
  return "unknown";
}

absl::StatusOr<Method> ParseMethod(absl::string_view name) {
  for (Method m : {Method::kLora, Method::kPissa, Method::kMilora, Method::kCordaIpm, Method::kCordaKpm,
                   Method::kKasa}) {
    if (name == MethodName(m)) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown method \"", name,
                                                 "\": use one of lora, pissa, milora, corda_ipm, corda_kpm, kasa"));
}

bool NeedsCovariance(Method method) { return method == Method::kCordaIpm || method == Method::kCordaKpm; }

bool ChangesBase(Method method) { return method != Method::kLora; }

absl::Status AdapterOptions::Validate() const {
  if (rank < 1) return absl::InvalidArgumentError(absl::StrCat("rank must be >= 1, got ", rank));
  if (!(alpha > 0.0) || !std::isfinite(alpha)) {
    return absl::InvalidArgumentError(absl::StrCat("alpha must be a finite number > 0, got ", alpha));
  }
  if (!(dropout >= 0.0 && dropout < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("dropout must be in [0, 1), got ", dropout));
  }
  if (pissa_niter < 0) return absl::InvalidArgumentError(absl::StrCat("pissa_niter must be >= 0, got ", pissa_niter));
  if (!(kasa_beta >= 0.0) || !std::isfinite(kasa_beta)) {
    return absl::InvalidArgumentError(absl::StrCat("kasa_beta must be a finite number >= 0, got ", kasa_beta));
  }
  if (!(kasa_gamma >= 0.0) || !std::isfinite(kasa_gamma)) {
    return absl::InvalidArgumentError(absl::StrCat("kasa_gamma must be a finite number >= 0, got ", kasa_gamma));
  }
  return absl::OkStatus();
}

double AdapterScale(const AdapterOptions& options) {
  const double r = static_cast<double>(options.rank);
  return options.scaling == Scaling::kRankStabilized ? options.alpha / std::sqrt(r) : options.alpha / r;
}

}  // namespace sigmatune::peft
