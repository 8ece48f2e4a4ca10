// Cast: dst = src converted elementwise between f32, f64, bf16 and f16.
// Narrowing rounds to nearest, ties to even (f64 -> 16-bit goes through f32, on both backends);
// NaN stays NaN, overflow gives inf. src and dst must be contiguous and of the same shape.
#ifndef SIGMATUNE_KERNELS_OPS_CAST_H_
#define SIGMATUNE_KERNELS_OPS_CAST_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

absl::Status CheckCast(const Tensor& src, const Tensor& dst);

namespace cpu {
absl::Status Cast(const Tensor& src, Tensor* dst);
}  // namespace cpu

namespace cuda {
// One elementwise kernel on ctx.stream().
absl::Status Cast(GpuContext& ctx, const Tensor& src, Tensor* dst);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_CAST_H_
