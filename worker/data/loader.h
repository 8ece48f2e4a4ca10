// Shuffled, resumable micro-batches over a Dataset, and the model Batch of a micro-batch.
//
//   ST_ASSIGN_OR_RETURN(DataLoader loader, DataLoader::Create(&dataset, {.micro_batch_size = 4}));
//   MicroBatch micro = loader.Next();
//   ST_ASSIGN_OR_RETURN(model::Batch batch, MakeBatch(backend, micro));
//
// Contract:
//  - Epoch e visits every sample exactly once, in a permutation made by Fisher-Yates with
//    kernels/base/rng.h's Rng seeded by a mix of (seed, e) (never std::shuffle), so the order is
//    the same on every platform and standard library.
//  - Without packing, micro-batches are consecutive groups of micro_batch_size samples of that
//    order (the last one may be smaller). With packing, whole samples are taken greedily in that
//    order while their total fits micro_batch_size * sequence_len tokens; a sample that does not
//    fit starts the next micro-batch. Every sample must be at most sequence_len tokens (Create
//    checks). Nothing is padded.
//  - Next() returns the micro-batches of the current epoch in order and, after the last one,
//    starts the next epoch. position() / Restore() make it resumable: after Restore(p) the loader
//    returns exactly what a loader that had reached p returns.
//  - MakeBatch packs a micro-batch's samples back to back: positions restart at 0 in each sample,
//    cu_seqlens (on the CPU) delimits them, labels[t] = targets[t + 1] within a sample and -100 at
//    each sample's last token. For plain id sequences (calibration) use model::PackCausalLmBatch.
// The Dataset must outlive the loader and the MicroBatches (they point into it). Not thread safe.
#ifndef SIGMATUNE_WORKER_DATA_LOADER_H_
#define SIGMATUNE_WORKER_DATA_LOADER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "worker/data/dataset.h"

namespace sigmatune::data {

enum class Packing { kNo, kYes };

struct LoaderOptions {
  int64_t micro_batch_size = 1;  // samples per micro-batch; with packing, sequence_len units of tokens
  int64_t sequence_len = 2048;   // the longest sample allowed
  Packing packing = Packing::kNo;
  uint64_t seed = 42;
};

struct MicroBatch {
  std::vector<const TokenizedSample*> samples;  // into the Dataset
  int64_t tokens = 0;                           // sum of the samples' ids
  int64_t trained_tokens = 0;                   // sum of their targets != -100
};

struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;  // micro-batches already taken in this epoch
};

class DataLoader {
 public:
  // InvalidArgument for an empty dataset, micro_batch_size or sequence_len < 1, or a sample longer
  // than sequence_len (naming its line).
  static absl::StatusOr<DataLoader> Create(const Dataset* dataset, LoaderOptions options);

  // The next micro-batch (never empty).
  MicroBatch Next();
  LoaderPosition position() const { return {epoch_, index_}; }
  // InvalidArgument unless epoch >= 0 and 0 <= index <= MicroBatchesInEpoch(epoch).
  absl::Status Restore(LoaderPosition position);
  // The number of micro-batches of an epoch (the same for every epoch without packing).
  int64_t MicroBatchesInEpoch(int64_t epoch) const;

  const LoaderOptions& options() const { return options_; }

 private:
  // An epoch's sample order and where each of its micro-batches starts in it (plus the end).
  struct Plan {
    std::vector<int64_t> order;
    std::vector<int64_t> starts;
  };

  DataLoader(const Dataset* dataset, LoaderOptions options) : dataset_(dataset), options_(options) {}
  Plan MakePlan(int64_t epoch) const;

  const Dataset* dataset_;
  LoaderOptions options_;
  int64_t epoch_ = 0;
  int64_t index_ = 0;
  Plan plan_;  // of epoch_
};

// The model Batch of a non-empty micro-batch: input_ids / positions / labels (i32 [T]) uploaded
// to the backend, cu_seqlens (i32 [samples + 1]) on the CPU.
absl::StatusOr<model::Batch> MakeBatch(model::ModelBackend& backend, const MicroBatch& micro);

}  // namespace sigmatune::data

#endif  // SIGMATUNE_WORKER_DATA_LOADER_H_
