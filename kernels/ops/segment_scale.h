// ScaleSegmentsByAbsMax: the per-sample normalisation of CorDA's covariance statistics (METHODS.md
// §4): each calibration sample X_t is divided by mu_t = |max(X_t)| (the signed maximum over all of
// the sample's entries, then its absolute value, as PEFT's hook does) before X_t^T X_t is formed.
// With a packed batch the samples are the segments of cu_seqlens, so one SYRK of the result over
// all T rows equals the sum of the per-sample products.
//
//   for each segment s = [cu[s], cu[s+1]):  y[rows of s] = x[rows of s] / |max over x[rows of s]|
//   rows outside [cu[0], cu[num_segments]) (padding): y = 0, so they add nothing to a covariance.
//
// Contract:
//  - x: [T, n] row-major with unit column stride (row stride >= n); f32/f64 (cpu), also bf16/f16
//    (cuda). y: contiguous [T, n], f32 or f64, at least as wide as x (the division happens in y's
//    dtype, after widening x, as PEFT's fp32 path does); y may alias x when the dtypes are equal.
//  - cu_seqlens: i32 [num_segments + 1] on the CPU, non-decreasing, 0 <= cu[0], cu[last] <= T.
//  - bad: i32 [1] on x's device. It is NOT reset: for every non-empty segment whose mu is zero or
//    not finite, or that holds a non-finite entry, bad[0] is incremented. Callers zero it once and
//    read it once when collection ends, so the device never waits on the host per sample. The rows
//    of such a bad segment are written as 0 (like padding), so one bad sample cannot poison a
//    covariance; bad[0] is how the caller learns of it.
//  - Errors (InvalidArgument naming the operand): shapes, dtypes, layouts, devices, cu_seqlens.
//  - CUDA: one block per (segment, column tile) for the max, then one elementwise pass; enqueued
//    on ctx.stream() without synchronizing.
#ifndef SIGMATUNE_KERNELS_OPS_SEGMENT_SCALE_H_
#define SIGMATUNE_KERNELS_OPS_SEGMENT_SCALE_H_

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

absl::Status CheckScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, const Tensor& y, const Tensor& bad);

namespace cpu {
absl::Status ScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad);
}  // namespace cpu

namespace cuda {
absl::Status ScaleSegmentsByAbsMax(GpuContext& ctx, const Tensor& x, const Tensor& cu_seqlens, Tensor* y,
                                   Tensor* bad);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_SEGMENT_SCALE_H_
