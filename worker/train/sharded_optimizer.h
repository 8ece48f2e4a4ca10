// ShardedAdamW: AdamW over the ranks of a worker group with the optimizer state sharded (ZeRO
// stage 1), so that the same training gives the same parameters on 1, 2 or 3 ranks and a
// checkpoint written by one world size resumes on another.
//
// The flat vector: the concatenation of every parameter (in the order given to Create, each
// row-major) has `total` elements; rank r owns the part comm::ShardOf(total, size, r) and keeps
// exp_avg / exp_avg_sq for that part only (on the backend's device). One Step:
//   1. every rank copies its local gradients into a flat buffer and ReduceScatterSum gives it its
//      part of the group's summed gradient;
//   2. the squared norm of each part (double, per parameter segment with the backend's
//      SumOfSquares) is all-reduced: the global norm of the scaled gradients is grad_scale times
//      its square root; a non-finite norm fails the step with FailedPrecondition "gradient norm is
//      NaN/Inf at step N ..." on every rank, before anything changed;
//   3. the clipping coefficient is AdamW's (torch clip_grad_norm_: min(1, max / (norm + 1e-6)));
//   4. the backend's AdamWStep (kernels/ops/adamw.h) updates this rank's part of the parameters and
//      its moments, viewed as 1-D tensors;
//   5. AllGather of the updated parts, written back into every parameter tensor on every rank.
// With a group of one the arithmetic is exactly AdamW's (optimizer.h): the same norm (the same
// per-parameter sums in the same order) and the same elementwise update. With more ranks the
// gradient sum and the norm are added in another order (the part sums, then over ranks), so the
// results agree with one rank to rounding.
//
// Memory: besides its part of the moments (2 x total / size elements), every rank keeps flat
// gradient and parameter buffers of `total` elements and two part buffers, where the
// communicator's collectives want them (host memory, or the backend's device for a communicator
// whose memory() is kDevice). Scalar reductions (the norm) go through AllReduceScalars below.
//
// Checkpoints: SerializeShard() is one safetensors file per rank (1-D "exp_avg" and "exp_avg_sq"
// of the rank's part; metadata "sigmatune_optimizer" = "adamw-zero1/1", begin, end, total,
// world_size, rank, step, dtype and "layout", a fingerprint of the parameters' names, shapes and
// dtype). LoadShards rebuilds this rank's part from the shard files of a checkpoint written by any
// world size (picking the overlapping slices), or from the single-process file of AdamW
// ("<param>.exp_avg" / "<param>.exp_avg_sq", the trainer's old "optimizer.safetensors"). Errors
// name the file: DataLoss for a file that does not parse, lacks a field or tensor, holds a
// non-finite moment, is of another step, or when the shards do not cover [0, total) exactly once
// (gap, overlap, missing or duplicate rank, mixed world sizes); FailedPrecondition for a checkpoint of other parameters (layout,
// total, dtype) or another format. On any error nothing is changed.
//
// Ownership: as AdamW, the optimizer points at parameter and gradient tensors the caller keeps
// alive (every rank holds the whole parameters and its own gradients). Step is collective: every
// rank of the group calls it, in the same order as the group's other collectives. Errors other
// than the ones above (a device or communication failure) may leave a step half done; the job
// then stops and resumes from its last checkpoint. Not thread safe.
#ifndef SIGMATUNE_WORKER_TRAIN_SHARDED_OPTIMIZER_H_
#define SIGMATUNE_WORKER_TRAIN_SHARDED_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "worker/comm/communicator.h"
#include "worker/train/optimizer.h"

namespace sigmatune::train {

// Sums host `values` over the group (every rank gets the sum). When comm.memory() is kDevice the
// values travel through a buffer on `backend`'s device.
absl::Status AllReduceScalars(comm::Communicator& comm, model::ModelBackend& backend, absl::Span<double> values);

class ShardedAdamW {
 public:
  using Param = AdamW::Param;
  using StepStats = AdamW::StepStats;

  // The same parameter checks as AdamW::Create, plus: one dtype for all parameters, and a
  // backend on a device when comm.memory() is kDevice (InvalidArgument otherwise). Allocates the
  // zeroed moments of this rank's part and the flat buffers. `backend` and `comm` must outlive the
  // optimizer. Not collective.
  static absl::StatusOr<std::unique_ptr<ShardedAdamW>> Create(model::ModelBackend* backend, comm::Communicator* comm,
                                                              std::vector<Param> params, AdamWOptions options);

  // One optimizer step (collective; see the header comment). lr >= 0 and grad_scale > 0, finite
  // (InvalidArgument otherwise, before any communication, so every rank fails alike). The
  // gradients are read, never modified.
  absl::StatusOr<StepStats> Step(double lr, double grad_scale);

  int64_t step() const { return step_; }
  // Elements of all parameters, and this rank's part of them.
  int64_t total() const { return total_; }
  comm::ShardRange range() const { return range_; }
  // The fingerprint of the parameters' names, shapes and dtype (32 hex digits).
  const std::string& layout() const { return layout_; }
  const std::vector<Param>& params() const { return params_; }
  const AdamWOptions& options() const { return options_; }

  // CPU copies of this rank's moments (1-D, range().size() elements).
  struct PartState {
    comm::ShardRange range;
    Tensor exp_avg;
    Tensor exp_avg_sq;
  };
  absl::StatusOr<PartState> LocalState() const;

  // This rank's shard file (see the header comment). Not collective.
  absl::StatusOr<std::string> SerializeShard() const;
  // Restores this rank's part and the step count from `files` (name for errors, bytes): every shard
  // file of one checkpoint, or the single file of AdamW's format. `step` (>= 0) becomes step() and
  // must equal the step recorded in the shards. Not collective.
  absl::Status LoadShards(const std::vector<std::pair<std::string, std::string>>& files, int64_t step);

  // "optimizer-<rank>-of-<size>.safetensors": the name the trainer gives a rank's shard file.
  static std::string ShardFileName(int rank, int size);

 private:
  ShardedAdamW() = default;

  // `src` (on the backend) into `dst`, a contiguous view of a flat buffer, and back.
  absl::Status ToFlat(const Tensor& src, Tensor dst) const;
  absl::Status FromFlat(const Tensor& src, Tensor* dst) const;

  model::ModelBackend* backend_ = nullptr;
  comm::Communicator* comm_ = nullptr;
  std::vector<Param> params_;
  std::vector<int64_t> offsets_;  // where each parameter begins in the flat vector (+ total at the end)
  AdamWOptions options_;
  DType dtype_ = DType::kF32;
  int64_t total_ = 0;
  comm::ShardRange range_;
  std::string layout_;
  // Flat buffers in the communicator's memory: the whole gradient and parameter vectors and this
  // rank's parts of them.
  Tensor flat_grad_, flat_param_, grad_part_, param_part_;
  // This rank's moments on the backend's device (undefined when the part is empty).
  Tensor exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;
};

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_SHARDED_OPTIMIZER_H_
