// The learning-rate schedules of adapter training, as transformers' Trainer applies them: the
// lambdas of get_constant_schedule_with_warmup, get_linear_schedule_with_warmup and
// get_cosine_schedule_with_warmup (num_cycles 0.5) evaluated by torch's LambdaLR, which sets
// lr = base_lr * factor(step) before optimizer step `step` (0-based; LambdaLR.step() runs after each
// optimizer step). With warmup, the first step therefore uses factor 0, as in HF.
//
//   factor(step) = step / max(1, warmup)                                     step < warmup
//   constant:      1
//   linear:        max(0, (total - step) / max(1, total - warmup))
//   cosine:        0.5 * (1 + cos(pi * progress)),  progress = (step - warmup) / max(1, total - warmup)
//
// One deliberate difference from transformers: past the end of the cosine schedule (progress > 1,
// i.e. step > total_steps) the factor is 0; transformers' lambda would rise again along the cosine.
// Every step a run of total_steps takes (step < total_steps) gets exactly transformers' value.
#ifndef SIGMATUNE_WORKER_TRAIN_SCHEDULE_H_
#define SIGMATUNE_WORKER_TRAIN_SCHEDULE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sigmatune::train {

enum class ScheduleKind { kConstant, kLinear, kCosine };

// "constant", "linear", "cosine"; InvalidArgument naming the value and the accepted ones otherwise.
absl::StatusOr<ScheduleKind> ParseScheduleKind(absl::string_view name);
// The name ParseScheduleKind accepts.
absl::string_view ScheduleKindName(ScheduleKind kind);

struct ScheduleOptions {
  ScheduleKind kind = ScheduleKind::kLinear;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
};

// InvalidArgument unless warmup_steps >= 0 and total_steps >= 0.
absl::Status ValidateScheduleOptions(const ScheduleOptions& options);

// The factor of base lr for the optimizer step after `step` steps were taken (0 for the first).
// options must pass ValidateScheduleOptions and step >= 0 (checked: programmer errors).
double LearningRateFactor(const ScheduleOptions& options, int64_t step);

// transformers' TrainingArguments.get_warmup_steps: warmup_steps when > 0, else
// ceil(warmup_ratio * total_steps).
int64_t WarmupStepsFor(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_SCHEDULE_H_
