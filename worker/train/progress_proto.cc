#include "worker/train/progress_proto.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace sigmatune::train {

v1::JobPhase PhaseToProto(Phase phase) {
  switch (phase) {
    case Phase::kLoad: return v1::JOB_PHASE_LOAD;
    case Phase::kCalibrate: return v1::JOB_PHASE_CALIBRATE;
    case Phase::kDecompose: return v1::JOB_PHASE_DECOMPOSE;
    case Phase::kEvaluate: return v1::JOB_PHASE_EVALUATE;
    case Phase::kTrain: return v1::JOB_PHASE_TRAIN;
    case Phase::kCheckpoint: return v1::JOB_PHASE_CHECKPOINT;
    case Phase::kExport: return v1::JOB_PHASE_EXPORT;
    case Phase::kDone: return v1::JOB_PHASE_DONE;
  }
  return v1::JOB_PHASE_UNSPECIFIED;
}

std::optional<Phase> PhaseFromProto(v1::JobPhase phase) {
  switch (phase) {
    case v1::JOB_PHASE_LOAD: return Phase::kLoad;
    case v1::JOB_PHASE_CALIBRATE: return Phase::kCalibrate;
    case v1::JOB_PHASE_DECOMPOSE: return Phase::kDecompose;
    case v1::JOB_PHASE_EVALUATE: return Phase::kEvaluate;
    case v1::JOB_PHASE_TRAIN: return Phase::kTrain;
    case v1::JOB_PHASE_CHECKPOINT: return Phase::kCheckpoint;
    case v1::JOB_PHASE_EXPORT: return Phase::kExport;
    case v1::JOB_PHASE_DONE: return Phase::kDone;
    default: return std::nullopt;
  }
}

v1::Progress ProgressToProto(const ProgressEvent& event) {
  v1::Progress p;
  p.set_phase(PhaseToProto(event.phase));
  p.set_step(event.step);
  p.set_total_steps(event.total_steps);
  const double seconds = std::floor(event.wall_time);
  p.mutable_time()->set_seconds(static_cast<int64_t>(seconds));
  p.mutable_time()->set_nanos(
      std::clamp(static_cast<int32_t>(std::llround((event.wall_time - seconds) * 1e9)), 0, 999999999));
  p.set_elapsed_s(event.elapsed_s);
  for (const auto& [name, value] : event.scalars) {
    v1::Scalar* scalar = p.add_scalars();
    scalar->set_name(name);
    scalar->set_value(value);
  }
  p.set_message(event.message);
  return p;
}

std::optional<ProgressEvent> ProgressFromProto(const v1::Progress& progress) {
  const std::optional<Phase> phase = PhaseFromProto(progress.phase());
  if (!phase.has_value()) return std::nullopt;
  ProgressEvent event;
  event.phase = *phase;
  event.step = std::max<int64_t>(progress.step(), 0);
  event.total_steps = std::max<int64_t>(progress.total_steps(), 0);
  event.wall_time = static_cast<double>(progress.time().seconds()) + progress.time().nanos() * 1e-9;
  event.elapsed_s = progress.elapsed_s();
  for (const v1::Scalar& s : progress.scalars()) {
    const bool seen = std::any_of(event.scalars.begin(), event.scalars.end(),
                                  [&s](const auto& known) { return known.first == s.name(); });
    if (!seen) event.scalars.emplace_back(s.name(), s.value());
  }
  event.message = progress.message();
  return event;
}

}  // namespace sigmatune::train
