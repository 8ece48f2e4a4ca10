// The train phase: AdamW on the adapters of a model whose base is frozen, over a DataLoader, with
// gradient accumulation, the learning-rate schedule, gradient clipping, the method's regulariser,
// progress events and checkpoints.
//
// One optimizer step:
//   1. draw the step's `accumulation` micro-batches; N = their trained tokens (summed over the
//      group's ranks through the Communicator);
//   2. for each micro-batch i: a new dropout seed per adapter (a pure function of the job seed, the
//      step, i and the adapter), Forward, then Backward with grad_scale n_i / N, so the gradient is
//      that of the mean loss over ALL trained tokens of the step (transformers' num_items_in_batch
//      behaviour), and the logged loss is that token-weighted mean;
//   3. KaSA: the regulariser's value and gradient added once (it does not depend on the data);
//   4. AdamW::Step at lr = peak * LearningRateFactor(step): clipping of the global gradient norm,
//      then the update; ZeroGrad.
// A loss or gradient norm that is NaN/Inf stops training with FailedPrecondition naming the step
// (the parameters are left as they were before that step; no checkpoint is written after it, so the
// newest checkpoint is the last good one).
//
// Checkpoints (when a store is given): after every save_steps-th step and after the last one, the
// files "adapter.safetensors" (<module>.lora_A / lora_B / lora_diag), "optimizer.safetensors"
// (<param>.exp_avg / exp_avg_sq) and "trainer_state.json" (step, data position, tokens seen,
// identity). Restore() loads them back; continuing from a checkpoint on the CPU gives the same
// bits as never stopping (the data order, dropout masks and schedule are pure functions of the
// step).
//
// Stopping early: when *options.stop becomes true, or after options.stop_after_step, the trainer
// finishes the current step, writes a checkpoint and returns with summary.stopped_early.
#ifndef SIGMATUNE_WORKER_TRAIN_TRAINER_H_
#define SIGMATUNE_WORKER_TRAIN_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/model/llama.h"
#include "kernels/peft/adapter.h"
#include "kernels/peft/method.h"
#include "kernels/peft/regularizer.h"
#include "kernels/peft/targets.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/comm/communicator.h"
#include "worker/data/loader.h"
#include "worker/train/optimizer.h"
#include "worker/train/progress.h"
#include "worker/train/schedule.h"

namespace sigmatune::train {

struct TrainableLinear {
  peft::TargetModule target;
  peft::LowRankAdapter* adapter = nullptr;  // not owned; already in the model's slot
};

enum class Regularizer { kNone, kKasa };

struct TrainerOptions {
  int64_t total_steps = 1;
  int64_t accumulation = 1;
  AdamWOptions adamw;
  ScheduleOptions schedule;
  int64_t save_steps = 0;     // 0: only after the last step
  int64_t logging_steps = 1;  // progress events every N steps (and the last)
  uint64_t seed = 42;
  Regularizer regularizer = Regularizer::kNone;
  peft::KasaRegularizerOptions kasa;
  // Written into trainer_state.json and checked by Restore: a checkpoint of another job is refused.
  std::string identity;
  const std::atomic<bool>* stop = nullptr;
  int64_t stop_after_step = -1;  // < 0: never
};

struct TrainSummary {
  int64_t start_step = 0;   // steps already done when Run began (resume)
  int64_t steps_done = 0;   // steps done when Run returned
  double last_loss = 0.0;
  std::vector<double> losses;  // of the steps run in this call
  int64_t tokens = 0;          // tokens processed in this call
  double seconds = 0.0;
  double tokens_per_second = 0.0;
  bool stopped_early = false;
  int64_t last_checkpoint_step = -1;
};

class Trainer {
 public:
  // Every pointer must outlive the trainer; store and sink may be null. Parameters of the
  // adapters become the optimizer's (named "<module>.lora_A", "<module>.lora_B", "<module>.lora_diag").
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(model::LlamaModel* model,
                                                         std::vector<TrainableLinear> linears,
                                                         data::DataLoader* loader, TrainerOptions options,
                                                         ProgressSink* sink, checkpoint::CheckpointStore* store,
                                                         comm::Communicator* comm);

  // Loads adapter parameters, optimizer state and the data position. FailedPrecondition when the
  // checkpoint belongs to another job (identity) or has other parameters; DataLoss when a file is
  // missing or does not parse.
  absl::Status Restore(const checkpoint::LoadedCheckpoint& checkpoint);
  int64_t step() const { return step_; }

  absl::StatusOr<TrainSummary> Run();

  // The checkpoint files of the current state (also what Run saves).
  absl::StatusOr<std::map<std::string, std::string>> CheckpointFiles() const;

 private:
  Trainer(model::LlamaModel* model, std::vector<TrainableLinear> linears, data::DataLoader* loader,
          TrainerOptions options, ProgressSink* sink, checkpoint::CheckpointStore* store, comm::Communicator* comm);
  absl::StatusOr<double> StepOnce(int64_t* tokens, double* grad_norm, double* reg_value, double* lr);
  absl::Status Save(TrainSummary* summary);
  absl::Status Emit(const ProgressEvent& event);

  model::LlamaModel* model_;
  std::vector<TrainableLinear> linears_;
  data::DataLoader* loader_;
  TrainerOptions options_;
  ProgressSink* sink_;
  checkpoint::CheckpointStore* store_;
  comm::Communicator* comm_;
  std::unique_ptr<AdamW> optimizer_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
};

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_TRAINER_H_
