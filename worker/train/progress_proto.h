// A progress event (progress.h) as the coordinator's API carries it (v1::Progress in
// proto/sigmatune/v1/coordinator.proto), both ways: the worker reports its events with
// ProgressToProto, the CLI turns what it watches back into events for TerminalProgress.
//
// Contract: ProgressFromProto(ProgressToProto(e)) == e for every event whose scalar names are
// unique (wall_time to the nanosecond). A Progress without a phase (JOB_PHASE_UNSPECIFIED: no
// progress yet) has no event; negative steps become 0; of repeated scalar names the first is kept.
#ifndef SIGMATUNE_WORKER_TRAIN_PROGRESS_PROTO_H_
#define SIGMATUNE_WORKER_TRAIN_PROGRESS_PROTO_H_

#include <optional>

#include "sigmatune/v1/coordinator.pb.h"
#include "worker/train/progress.h"

namespace sigmatune::train {

v1::JobPhase PhaseToProto(Phase phase);
// nullopt for JOB_PHASE_UNSPECIFIED (and values this build does not know).
std::optional<Phase> PhaseFromProto(v1::JobPhase phase);

v1::Progress ProgressToProto(const ProgressEvent& event);
std::optional<ProgressEvent> ProgressFromProto(const v1::Progress& progress);

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_PROGRESS_PROTO_H_
