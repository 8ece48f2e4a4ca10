// SwiGLU gating of the LLaMA MLP, elementwise over tensors of any (equal) shape:
//   forward:  out   = silu(gate) * up,   silu(g) = g * sigmoid(g)
//   backward: dgate = dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
//             dup   = dout * silu(g)
// Contract: every operand contiguous, same shape, on the backend's device; the outputs may alias
// their inputs elementwise (out may be gate or up; dgate may be gate, dup may be up).
// Dtypes: cpu all f32 or all f64; cuda all f32 or all bf16 (fp32 arithmetic, one rounding).
#ifndef SIGMATUNE_KERNELS_OPS_SWIGLU_H_
#define SIGMATUNE_KERNELS_OPS_SWIGLU_H_

#include <initializer_list>
#include <utility>

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

class CpuContext;

// Shapes equal, dtypes equal and floating, all contiguous (dtype sets are per backend).
absl::Status CheckSwiglu(std::initializer_list<std::pair<const Tensor*, const char*>> operands);

namespace cpu {
// ctx (may be null: serial) splits the elements; the results do not depend on it.
absl::Status SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out, CpuContext* ctx = nullptr);
absl::Status SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate, Tensor* dup,
                            CpuContext* ctx = nullptr);
}  // namespace cpu

namespace cuda {
absl::Status SwigluForward(GpuContext& ctx, const Tensor& gate, const Tensor& up, Tensor* out);
absl::Status SwigluBackward(GpuContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate,
                            Tensor* dup);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_SWIGLU_H_
