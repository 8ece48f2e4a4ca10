// One fine-tuning job end to end on one worker group (options.comm; a group of one by default):
//   load -> evaluate (before) -> calibrate (CorDA) -> decompose -> train -> evaluate (after) -> export
// writing into spec.output_dir:
//   job.json                  the spec as run (defaults filled in)
//   metrics.jsonl             one record per progress event (worker/train/progress.h)
//   tensorboard/<name>/       TensorBoard scalars
//   eval_before.json          the "before" evaluation (reused when the job is resumed)
//   decomposition.safetensors the adapter initialisation (reused when the job is resumed)
//   checkpoints/              step-N/ directories + latest (worker/checkpoint)
//   adapter/, residual_base/, adapter_lora/, merged/   the exports (worker/train/export.h)
//   report.json, report.txt   what the model learned and what it kept
//
// Contract:
//  - `spec` has been through job::LoadJobSpec (defaults filled, paths absolute); it is validated
//    again here (without re-reading files) and bad specs are InvalidArgument listing every problem.
//  - Resume: when output_dir holds checkpoints of the same job (the identity: model content +
//    every field that changes the numbers), training continues from the newest checkpoint that
//    verifies (a corrupt one is skipped with a warning); on the CPU the result is bit-identical to
//    an uninterrupted run. Checkpoints of another job are FailedPrecondition (use a new
//    output_dir). A finished job run again re-evaluates and re-exports without training.
//  - Errors name the phase and what to change (a missing file, a format error with its line, a
//    rank too large for a module, targets the model lacks, an empty dataset, a diverged loss —
//    after which the newest checkpoint is still the last good one).
//  - Stopping early (options.stop / stop_after_step) checkpoints and returns stopped_early. The stop
//    flag is looked at collectively after every training step and at every phase boundary before
//    training (after load, evaluate-before, calibrate, decompose): a stop before training returns
//    with nothing half-written and no checkpoint.
//  - A group: every rank calls RunJob with the same spec and its own communicator; output_dir (and
//    cache_dir) must be one directory every rank sees. Every rank loads the model and data; the
//    calibration samples and each step's micro-batches are split across the ranks, each layer is
//    decomposed by the rank that owns it (worker/job/work_plan.h) and broadcast, training is
//    data-parallel with a sharded optimizer (worker/train/trainer.h). Only the leader (rank 0)
//    reports progress, evaluates, exports and writes the report; the others return after the final
//    barrier with `train` filled in. The result does not depend on the world size beyond
//    floating-point reduction order. A rank's error must end the group (Communicator::Abort), or
//    its peers fail at their next collective after the timeout.
#ifndef SIGMATUNE_WORKER_JOB_RUN_JOB_H_
#define SIGMATUNE_WORKER_JOB_RUN_JOB_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sigmatune/v1/job.pb.h"
#include "worker/comm/communicator.h"
#include "worker/train/evaluate.h"
#include "worker/train/export.h"
#include "worker/train/progress.h"
#include "worker/train/trainer.h"

namespace sigmatune::job {

enum class TerminalOutput { kAuto, kOff };

struct RunOptions {
  comm::Communicator* comm = nullptr;  // nullptr: a group of one
  train::ProgressSink* extra_sink = nullptr;  // also receives every event (tests, the service)
  TerminalOutput terminal = TerminalOutput::kAuto;
  const std::atomic<bool>* stop = nullptr;
  int64_t stop_after_step = -1;
};

struct PhaseTime {
  std::string phase;
  double seconds = 0.0;
};

struct JobResult {
  std::string output_dir;
  int world_size = 1;
  std::string device;
  bool resumed = false;
  bool stopped_early = false;
  train::TrainSummary train;
  int64_t total_steps = 0;
  std::vector<train::EvalResult> before;
  std::vector<train::EvalResult> after;
  train::ExportPaths exports;
  std::vector<PhaseTime> times;
  std::vector<std::string> notes;  // warnings and cache messages, also in the report
  std::string report_text;
};

absl::StatusOr<JobResult> RunJob(const v1::JobSpec& spec, const RunOptions& options);

}  // namespace sigmatune::job

#endif  // SIGMATUNE_WORKER_JOB_RUN_JOB_H_
