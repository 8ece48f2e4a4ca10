// Causal scaled-dot-product attention over packed sequences, with grouped-query attention (GQA).
//
// q [tokens, heads, hd], k and v [tokens, kv_heads, hd], heads a multiple of kv_heads; query head h
// reads kv head h / (heads / kv_heads) (transformers' repeat_kv order). cu_seqlens i32
// [num_seqs + 1] = 0, end of sequence 0, ..., tokens: the cumulative offsets of the packed
// sequences. Token i of a sequence starting at s attends to keys s..i only (causal and
// block-diagonal: nothing crosses a sequence boundary). With scale = 1 / sqrt(hd):
//   S[i, j] = scale * q_i . k_j,  lse[i] = log sum_j exp S[i, j],  out_i = sum_j exp(S[i, j] - lse[i]) v_j
// Softmax and accumulation in fp32 (f64 on cpu for f64 inputs). The forward writes lse [tokens,
// heads] for the backward. The backward (dq, dk, dv overwritten; GQA: dk/dv summed over the query
// heads of each group) uses D_i = dout_i . out_i and dS = P * (dP - D).
//
// Contract: q, k, v, out, dout, dq, dk, dv contiguous, same dtype, on the backend's device;
// lse f32 [tokens, heads] (f64 for f64 inputs on cpu); cu_seqlens is a CPU tensor on BOTH backends
// (packing is host-side data; the CUDA op copies what it needs). Empty sequences are allowed.
// Errors: InvalidArgument naming the operand (shapes, dtypes, heads % kv_heads != 0, cu_seqlens not
// starting at 0, decreasing, or not ending at tokens).
// Dtypes: cpu f32/f64; cuda f32/bf16 (fp32 accumulation, one rounding of each output).
#ifndef SIGMATUNE_KERNELS_OPS_ATTENTION_H_
#define SIGMATUNE_KERNELS_OPS_ATTENTION_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

class CpuContext;

// Shape / cu_seqlens checks shared by both backends (cu_seqlens must be a CPU tensor).
absl::Status CheckAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                            const Tensor& out, const Tensor& lse);

namespace cpu {
// GEMMs (OpenBLAS) per (sequence, kv head), the group's query heads stacked into one operand, with
// an explicit causal softmax; O(group * T^2) scratch per sequence (batched over sequences up to 4M
// scores). ctx (may be null: serial) splits the softmax rows; the results do not depend on it.
absl::Status AttentionForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                              Tensor* out, Tensor* lse, CpuContext* ctx = nullptr);
absl::Status AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                               const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor* dq, Tensor* dk,
                               Tensor* dv, CpuContext* ctx = nullptr);
}  // namespace cpu

namespace cuda {
// Tiled kernels with an online (flash-style) softmax; no [T, T] scratch. hd <= 256. The backward
// recomputes probabilities from lse: one kernel for dq (per query tile) and one for dk/dv (per key
// tile, looping over the group's query heads), so no atomics: results are deterministic. Not
// tensor-core kernels (fp32 FMA on CUDA cores); see docs/gpu-status.md for their status.
absl::Status AttentionForward(GpuContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& cu_seqlens, Tensor* out, Tensor* lse);
absl::Status AttentionBackward(GpuContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& cu_seqlens, const Tensor& out, const Tensor& lse, const Tensor& dout,
                               Tensor* dq, Tensor* dk, Tensor* dv);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_ATTENTION_H_
