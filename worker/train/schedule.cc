#include "worker/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"

namespace sigmatune::train {
namespace {

constexpr double kPi = 3.14159265358979323846;  // Python's math.pi

}  // namespace

absl::StatusOr<ScheduleKind> ParseScheduleKind(absl::string_view name) {
  if (name == "constant") return ScheduleKind::kConstant;
  if (name == "linear") return ScheduleKind::kLinear;
  if (name == "cosine") return ScheduleKind::kCosine;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown learning-rate schedule '", name, "' (expected constant, linear or cosine)"));
}

absl::string_view ScheduleKindName(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kConstant:
      return "constant";
    case ScheduleKind::kLinear:
      return "linear";
    case ScheduleKind::kCosine:
      return "cosine";
  }
  return "unknown";
}

absl::Status ValidateScheduleOptions(const ScheduleOptions& options) {
  if (options.warmup_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("schedule warmup_steps must be >= 0, got ", options.warmup_steps));
  }
  if (options.total_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("schedule total_steps must be >= 0, got ", options.total_steps));
  }
  return absl::OkStatus();
}

double LearningRateFactor(const ScheduleOptions& options, int64_t step) {
  ST_CHECK(ValidateScheduleOptions(options).ok()) << ValidateScheduleOptions(options);
  ST_CHECK_GE(step, 0);
  const int64_t warmup = options.warmup_steps;
  // The same double operations as transformers' lambdas (float(a) / float(max(1, b))).
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, options.total_steps - warmup));
  switch (options.kind) {
    case ScheduleKind::kConstant:
      return 1.0;
    case ScheduleKind::kLinear:
      return std::max(0.0, static_cast<double>(options.total_steps - step) / decay_steps);
    case ScheduleKind::kCosine: {
      const double progress = static_cast<double>(step - warmup) / decay_steps;
      if (progress > 1.0) return 0.0;  // past the end (see the header)
      constexpr double kNumCycles = 0.5;
      return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * kNumCycles * 2.0 * progress)));
    }
  }
  return 0.0;
}

int64_t WarmupStepsFor(int64_t warmup_steps, double warmup_ratio, int64_t total_steps) {
  if (warmup_steps > 0) return warmup_steps;
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

}  // namespace sigmatune::train
