// The train phase: AdamW on the adapters of a model whose base is frozen, over a DataLoader, with
// gradient accumulation, the learning-rate schedule, gradient clipping, the method's regulariser,
// progress events and checkpoints, data-parallel over the ranks of a worker group with the
// optimizer state sharded (ZeRO-1, sharded_optimizer.h).
//
// Every rank holds the whole model and adapters and an identical DataLoader. One optimizer step:
//   1. every rank draws the step's `accumulation` micro-batches; N = their trained tokens (known
//      locally: every rank draws all of them);
//   2. rank r runs the micro-batches i with i % world_size == r: a new dropout seed per adapter (a
//      pure function of the job seed, the step, i and the adapter, so independent of the world
//      size), Forward, then Backward with grad_scale n_i / N, so the group's summed gradient is that
//      of the mean loss over ALL trained tokens of the step (transformers' num_items_in_batch
//      behaviour). The logged loss is that token-weighted mean: the per-micro-batch sums are
//      all-reduced and added in micro-batch order (the same bits on every world size). When
//      accumulation < world_size some ranks idle in a step;
//   3. KaSA: the regulariser's value and gradient added once, by the leader (it does not depend on
//      the data);
//   4. ShardedAdamW::Step at lr = peak * LearningRateFactor(step): the gradients are summed over the
//      ranks, the global gradient norm clipped, each rank updates its part and the parts are
//      gathered into every rank's adapters; ZeroGrad.
// The job's global batch is micro_batch_size x accumulation whatever the world size, and the
// result on 1, 2 or 3 ranks differs only by the order of floating-point additions (the gradient
// sum over ranks).
// A loss or gradient norm that is NaN/Inf stops training with FailedPrecondition naming the step,
// on every rank (the parameters are left as they were before that step; no checkpoint is written
// after it, so the newest checkpoint is the last good one).
//
// Checkpoints (when a store is given, on every rank: the store's root is visible to all ranks):
// after every save_steps-th step and after the last one, the group writes one checkpoint with the
// store's staged protocol (checkpoint.h): the leader begins it and broadcasts the directory, every
// rank writes "optimizer-<rank>-of-<size>.safetensors" (its ShardedAdamW shard), the leader also
// "adapter.safetensors" (<module>.lora_A / lora_B / lora_diag) and "trainer_state.json" (step,
// data position, tokens seen, world size, identity); the entries are gathered to the leader, which
// commits (or aborts), and the outcome is broadcast, so a failure on any rank fails the save on
// every rank and leaves the previous checkpoint in place. Restore() loads a checkpoint written by
// any world size (the optimizer shards are re-sharded; the old single-process
// "optimizer.safetensors" is accepted too); continuing from a checkpoint on the CPU with the same
// world size gives the same bits as never stopping (the data order, dropout masks and schedule are
// pure functions of the step), and on another world size the same result to rounding.
//
// Stopping early: when *options.stop becomes true, or after options.stop_after_step, the trainer
// finishes the current step, writes a checkpoint and returns with summary.stopped_early. With
// several ranks the decision is collective after every step (any rank's stop flag stops them all
// at that step), so a signal that reaches the ranks at different moments still ends them together.
//
// Collectives: Run is collective (every rank calls it); Create, Restore and CheckpointFiles are
// not. A rank's own error (e.g. a device failure) is returned by its Run while its peers fail in
// their next collective (the communicator names the peer), as the job's contract expects.
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
#include "worker/train/sharded_optimizer.h"

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
  // Every pointer must outlive the trainer; store and sink may be null (the sink is used on the
  // leader only; the store on every rank, or on none). Parameters of the adapters become the
  // optimizer's (named "<module>.lora_A", "<module>.lora_B", "<module>.lora_diag"), sharded over
  // comm's ranks.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(model::LlamaModel* model,
                                                         std::vector<TrainableLinear> linears,
                                                         data::DataLoader* loader, TrainerOptions options,
                                                         ProgressSink* sink, checkpoint::CheckpointStore* store,
                                                         comm::Communicator* comm);

  // Loads adapter parameters, this rank's part of the optimizer state and the data position from a
  // checkpoint written by any world size (every rank passes the same checkpoint; not collective).
  // FailedPrecondition when the checkpoint belongs to another job (identity) or has other
  // parameters; DataLoss when a file is missing or does not parse, or the optimizer shards do not
  // fit together.
  absl::Status Restore(const checkpoint::LoadedCheckpoint& checkpoint);
  int64_t step() const { return step_; }

  absl::StatusOr<TrainSummary> Run();

  // The files this rank contributes to a checkpoint of the current state (what Run saves): its
  // optimizer shard, and on the leader also adapter.safetensors and trainer_state.json. On a group
  // of one, the complete checkpoint. Not collective.
  absl::StatusOr<std::map<std::string, std::string>> CheckpointFiles() const;

 private:
  Trainer(model::LlamaModel* model, std::vector<TrainableLinear> linears, data::DataLoader* loader,
          TrainerOptions options, ProgressSink* sink, checkpoint::CheckpointStore* store, comm::Communicator* comm);
  absl::StatusOr<double> StepOnce(int64_t* tokens, double* grad_norm, double* reg_value, double* lr);
  absl::Status Save(TrainSummary* summary);
  // The staged save of the current step by the whole group (see the header comment).
  absl::Status SaveStaged();
  absl::Status Emit(const ProgressEvent& event);

  model::LlamaModel* model_;
  std::vector<TrainableLinear> linears_;
  data::DataLoader* loader_;
  TrainerOptions options_;
  ProgressSink* sink_;
  checkpoint::CheckpointStore* store_;
  comm::Communicator* comm_;
  std::unique_ptr<ShardedAdamW> optimizer_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
};

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_TRAINER_H_
