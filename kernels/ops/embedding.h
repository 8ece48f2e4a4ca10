// Embedding: gather rows of a [vocab, d] table by int32 token ids.
//
//   forward:  out[t, :] = table[ids[t], :]                    out [tokens, d]
//   backward: dtable[ids[t], :] += dout[t, :] for every t     (accumulates: zero dtable first)
//
// Contract (both backends): ids is i32 [tokens], table [vocab, d], out/dout [tokens, d], dtable
// [vocab, d]; all contiguous and on the backend's device. Every id must lie in [0, vocab): the
// first out-of-range id is reported as InvalidArgument "embedding: ids[<pos>] = <id> is outside
// [0, <vocab>)" before anything is written. The backward is only needed for a trainable table.
// Dtypes:
//   cpu:  forward table f32/f64/bf16/f16 with out of the same dtype (a copy);
//         backward dout and dtable both f32 or both f64; sums in token order (deterministic).
//   cuda: forward table f32/bf16 with out of the same dtype;
//         backward dout f32/bf16, dtable f32, by atomicAdd: repeated ids make the fp32 sums
//         order-dependent (not bit-reproducible run to run; within fp32 rounding of the CPU).
//         The id check reads one int back to the host (a stream synchronisation per call).
#ifndef SIGMATUNE_KERNELS_OPS_EMBEDDING_H_
#define SIGMATUNE_KERNELS_OPS_EMBEDDING_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// Shape/dtype checks shared by both backends (no id range check, which needs the ids' values).
absl::Status CheckEmbeddingForward(const Tensor& table, const Tensor& ids, const Tensor& out);
absl::Status CheckEmbeddingBackward(const Tensor& ids, const Tensor& dout, const Tensor& dtable);

namespace cpu {
absl::Status EmbeddingForward(const Tensor& table, const Tensor& ids, Tensor* out);
absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, Tensor* dtable);
}  // namespace cpu

namespace cuda {
absl::Status EmbeddingForward(GpuContext& ctx, const Tensor& table, const Tensor& ids, Tensor* out);
absl::Status EmbeddingBackward(GpuContext& ctx, const Tensor& ids, const Tensor& dout, Tensor* dtable);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_EMBEDDING_H_
