// Elementwise pieces of a low-rank adapter's forward and backward (kernels/peft/adapter.h):
//   ScaleColumns(x, d, y):        y[t, j] = x[t, j] * d[j]           (KaSA's diag(d), SVFit's sigma)
//   ColumnDot(a, b, beta, out):   out[j] = beta * out[j] + sum_t a[t, j] * b[t, j]
//                                  (the gradient of a per-column scale; beta == 0 does not
//                                  read out, as in BLAS)
//   Dropout(x, p, seed, y):       y[i] = keep(i) ? x[i] / (1 - p) : 0,
//                                  keep(i) = DropoutUniform(seed, i) >= p, i the flat index
// The dropout mask is a pure function of (seed, index), the same bits on every backend, so a
// layer recomputed during backward (Recompute::kPerLayer) drops the same elements again.
//
// Contract: x, y, a, b contiguous [T, r] (ScaleColumns, ColumnDot) or any contiguous shape
// (Dropout); d and out contiguous [r]; every operand of one call has one dtype and device.
// y may alias x. 0 <= p < 1 (p == 0 copies). Dtypes: cpu f32/f64; cuda f32/f64/bf16 (fp32
// arithmetic for bf16, one rounding; ColumnDot accumulates in fp32 or f64).
// Errors: InvalidArgument naming the operand or p.
#ifndef SIGMATUNE_KERNELS_OPS_ADAPTER_OPS_H_
#define SIGMATUNE_KERNELS_OPS_ADAPTER_OPS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

#if defined(__CUDACC__)
#define ST_HOST_DEVICE __host__ __device__
#else
#define ST_HOST_DEVICE
#endif

namespace sigmatune {
class GpuContext;
}

namespace sigmatune::kernels {

// A uniform in [0, 1) with 24 random bits from (seed, index): splitmix64 of seed + index * golden
// ratio constant. Identical on host and device.
ST_HOST_DEVICE inline float DropoutUniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

absl::Status CheckScaleColumns(const Tensor& x, const Tensor& d, const Tensor& y);
absl::Status CheckColumnDot(const Tensor& a, const Tensor& b, const Tensor& out);
absl::Status CheckDropout(const Tensor& x, double p, const Tensor& y);

namespace cpu {
absl::Status ScaleColumns(const Tensor& x, const Tensor& d, Tensor* y);
absl::Status ColumnDot(const Tensor& a, const Tensor& b, double beta, Tensor* out);
absl::Status Dropout(const Tensor& x, double p, uint64_t seed, Tensor* y);
}  // namespace cpu

namespace cuda {
absl::Status ScaleColumns(GpuContext& ctx, const Tensor& x, const Tensor& d, Tensor* y);
absl::Status ColumnDot(GpuContext& ctx, const Tensor& a, const Tensor& b, double beta, Tensor* out);
absl::Status Dropout(GpuContext& ctx, const Tensor& x, double p, uint64_t seed, Tensor* y);
}  // namespace cuda

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_ADAPTER_OPS_H_
