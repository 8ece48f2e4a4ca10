// Cross-entropy loss of next-token targets, the mean over non-ignored targets of
//   -log softmax(logits[t])[targets[t]]
// with the log-sum-exp in fp32 or better (F.cross_entropy(..., ignore_index=-100, reduction="mean")).
//
// Two forms:
//  - LmHead*: logits = hidden @ weight^T are computed IN CHUNKS of `chunk_tokens` rows, so only a
//    [chunk_tokens, vocab] block is ever stored (never [tokens, vocab]); the backward recomputes the
//    chunk's logits and turns them into d logits in place.
//  - plain: from a given logits [tokens, vocab] (tests, small vocabularies).
//
// Forward returns CrossEntropyStats: count = number of targets != ignore_index, loss_sum = the sum of
// their losses (in double, in token order), loss = loss_sum / count. An all-ignored batch is
// defined as loss = loss_sum = 0 with count = 0 (not NaN as in PyTorch), and its gradients are 0.
//
// Backward takes grad_scale = d(objective) / d(per-token loss), the same for every valid token:
// for the mean loss of this call pass 1 / count (times d objective / d loss); for a loss normalised
// over several micro-batches or ranks pass 1 / global_count. Then
//   d logits[t] = grad_scale * (softmax(logits[t]) - onehot(targets[t]))   (0 for ignored rows)
//   dhidden     = d logits @ weight                                        (overwritten)
//   dweight    += d logits^T @ hidden                                      (ACCUMULATED; may be null
//                                                                           for a frozen lm_head)
//
// LmHeadCrossEntropyForward can also form the hidden gradient while it holds each chunk's logits:
// when dhidden_unit is not null it is overwritten with Backward's dhidden for grad_scale = 1,
//   dhidden_unit = (softmax(logits) - onehot(targets)) @ weight                (0 rows where ignored)
// (one more [tokens, vocab] x [vocab, d] GEMM in the forward). Backward's dhidden for any grad_scale
// is then grad_scale * dhidden_unit, so a caller with a frozen lm_head skips Backward and its
// recomputation of the logits. dhidden_unit has Backward's dhidden dtypes (below); on cuda with
// bf16 weights the unscaled d logits are rounded to bf16 before the GEMM.
//
// Contract: hidden [tokens, d], weight [vocab, d], logits/dlogits [tokens, vocab], targets i32
// [tokens], dhidden and dhidden_unit [tokens, d], dweight [vocab, d]; contiguous, on the backend's
// device. Each target is ignore_index or in [0, vocab); otherwise InvalidArgument "cross_entropy:
// targets[<pos>] = <v> is outside [0, <vocab>) and is not ignore_index <i>" naming the first bad
// position. chunk_tokens > 0.
// Dtypes:
//   cpu:  everything f32 or everything f64 (log-sum-exp accumulated in double; for f32 the exps
//         are f32 SIMD exps, about 2 ulp, summed in double).
//   cuda: hidden and weight both f32 or both bf16 (cuBLAS, fp32 accumulation, no TF32); logits f32 or
//         bf16 with dlogits of the same dtype; dhidden f32 or hidden's dtype; dweight f32. For bf16
//         weights the d logits chunk is rounded to bf16 before the two backward GEMMs (as PyTorch's
//         bf16 autograd does). Forward and backward each read the targets and per-token losses back
//         to the host (one stream synchronisation per call); the loss sum is then formed on the host
//         in token order, so it is deterministic.
#ifndef SIGMATUNE_KERNELS_OPS_CROSS_ENTROPY_H_
#define SIGMATUNE_KERNELS_OPS_CROSS_ENTROPY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

class CpuContext;

inline constexpr int32_t kIgnoreIndex = -100;

struct CrossEntropyOptions {
  int64_t chunk_tokens = 1024;  // rows of logits materialised at a time (LmHead* only)
  int32_t ignore_index = kIgnoreIndex;
};

struct CrossEntropyStats {
  double loss = 0.0;      // loss_sum / count, or 0 when count == 0
  double loss_sum = 0.0;  // sum over valid targets
  int64_t count = 0;      // number of targets != ignore_index
};

// Shape checks shared by both backends.
absl::Status CheckLmHeadCrossEntropy(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                     const CrossEntropyOptions& options);
absl::Status CheckCrossEntropy(const Tensor& logits, const Tensor& targets);

namespace cpu {
// ctx (may be null: serial) splits each chunk's rows; the results do not depend on it.
absl::StatusOr<CrossEntropyStats> LmHeadCrossEntropyForward(const Tensor& hidden, const Tensor& weight,
                                                            const Tensor& targets,
                                                            const CrossEntropyOptions& options,
                                                            Tensor* dhidden_unit = nullptr,
                                                            CpuContext* ctx = nullptr);
absl::Status LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                        const CrossEntropyOptions& options, double grad_scale, Tensor* dhidden,
                                        Tensor* dweight, CpuContext* ctx = nullptr);
absl::StatusOr<CrossEntropyStats> CrossEntropyForward(const Tensor& logits, const Tensor& targets,
                                                      int32_t ignore_index);
absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                                  double grad_scale, Tensor* dlogits);
}  // namespace cpu

namespace cuda {
// The chunk buffer (chunk_tokens x vocab f32, plus a bf16 copy for bf16 weights) lives in
// ctx.Workspace(); ResourceExhausted if it does not fit.
absl::StatusOr<CrossEntropyStats> LmHeadCrossEntropyForward(GpuContext& ctx, const Tensor& hidden,
                                                            const Tensor& weight, const Tensor& targets,
                                                            const CrossEntropyOptions& options,
                                                            Tensor* dhidden_unit = nullptr);
absl::Status LmHeadCrossEntropyBackward(GpuContext& ctx, const Tensor& hidden, const Tensor& weight,
                                        const Tensor& targets, const CrossEntropyOptions& options,
                                        double grad_scale, Tensor* dhidden, Tensor* dweight);
absl::StatusOr<CrossEntropyStats> CrossEntropyForward(GpuContext& ctx, const Tensor& logits, const Tensor& targets,
                                                      int32_t ignore_index);
absl::Status CrossEntropyBackward(GpuContext& ctx, const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                                  double grad_scale, Tensor* dlogits);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_CROSS_ENTROPY_H_
