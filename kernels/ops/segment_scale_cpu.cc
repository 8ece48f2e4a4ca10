#include <cmath>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/segment_scale.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "ScaleSegmentsByAbsMax";

bool Overlap(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || a.device() != b.device()) return false;
  const char* a0 = static_cast<const char*>(a.raw_data());
  const char* b0 = static_cast<const char*>(b.raw_data());
  // a's last byte: its rows may be strided.
  const int64_t a_span = (a.dim(0) - 1) * a.stride(0) + a.dim(1);
  return a0 < b0 + b.nbytes() && b0 < a0 + a_span * static_cast<int64_t>(SizeOf(a.dtype()));
}

// Rows of segment s: [cu[s], cu[s + 1]).
template <typename X, typename Y>
void ScaleImpl(const X* x, int64_t ld, int64_t rows, int64_t cols, const int32_t* cu, int64_t segments, Y* y,
               int32_t* bad) {
  const int64_t first = segments > 0 ? cu[0] : 0, last = segments > 0 ? cu[segments] : 0;
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t begin = cu[s], end = cu[s + 1];
    if (begin == end || cols == 0) continue;
    // Signed maximum in x's (widened) type; a NaN/Inf marks the segment as bad.
    Y max = -std::numeric_limits<Y>::infinity();
    bool finite = true;
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t j = 0; j < cols; ++j) {
        const Y v = static_cast<Y>(x[t * ld + j]);
        finite = finite && std::isfinite(v);
        max = v > max ? v : max;
      }
    }
    const Y mu = std::fabs(max);
    const bool ok = finite && mu != Y(0) && std::isfinite(mu);
    if (!ok) ++bad[0];
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t j = 0; j < cols; ++j) y[t * cols + j] = ok ? static_cast<Y>(x[t * ld + j]) / mu : Y(0);
    }
  }
  for (int64_t t = 0; t < rows; ++t) {
    if (t >= first && t < last) continue;
    for (int64_t j = 0; j < cols; ++j) y[t * cols + j] = Y(0);
  }
}

template <typename X>
void Dispatch(const Tensor& x, const int32_t* cu, int64_t segments, Tensor* y, int32_t* bad) {
  const int64_t ld = x.dim(0) > 1 ? x.stride(0) : x.dim(1);
  if (y->dtype() == DType::kF32) {
    ScaleImpl(x.data<X>(), ld, x.dim(0), x.dim(1), cu, segments, y->data<float>(), bad);
  } else {
    ScaleImpl(x.data<X>(), ld, x.dim(0), x.dim(1), cu, segments, y->data<double>(), bad);
  }
}

}  // namespace

absl::Status CheckScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, const Tensor& y,
                                        const Tensor& bad) {
  if (!x.defined() || x.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": x must be a [T, n] matrix, got ", x.DebugString()));
  }
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kF64 && x.dtype() != DType::kBF16 &&
      x.dtype() != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x must be f32/f64/bf16/f16, got ", DTypeName(x.dtype())));
  }
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if ((cols > 1 && x.stride(1) != 1) || (rows > 1 && x.stride(0) < cols)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": x must be row-major with unit column stride and row stride >= n, got ", x.DebugString()));
  }
  ST_RETURN_IF_ERROR(nn::ExpectTensor(y, kOp, "y", x.shape(), {DType::kF32, DType::kF64}));
  if (SizeOf(y.dtype()) < SizeOf(x.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": y (", DTypeName(y.dtype()),
                                                   ") must be at least as wide as x (", DTypeName(x.dtype()), ")"));
  }
  if (y.device() != x.device()) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": y (", y.device().ToString(), ") must be on x's device (",
                                                   x.device().ToString(), ")"));
  }
  if (Overlap(x, y) && (x.raw_data() != y.raw_data() || x.dtype() != y.dtype() || !x.is_contiguous())) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": y overlaps x; y may only alias x exactly (same address, same dtype, x contiguous)"));
  }
  ST_RETURN_IF_ERROR(nn::ExpectTensor(cu_seqlens, kOp, "cu_seqlens", {-1}, {DType::kI32}));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(cu_seqlens, kOp, "cu_seqlens"));
  const int64_t entries = cu_seqlens.dim(0);
  if (entries < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": cu_seqlens must hold num_segments + 1 >= 1 offsets, got none"));
  }
  const int32_t* cu = cu_seqlens.data<int32_t>();
  if (cu[0] < 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": cu_seqlens[0] = ", cu[0], " must be >= 0"));
  }
  for (int64_t s = 1; s < entries; ++s) {
    if (cu[s] < cu[s - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(kOp, ": cu_seqlens must be non-decreasing, got cu_seqlens[",
                                                     s - 1, "] = ", cu[s - 1], " > cu_seqlens[", s, "] = ", cu[s]));
    }
  }
  if (cu[entries - 1] > rows) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": cu_seqlens[", entries - 1, "] = ", cu[entries - 1],
                                                   " exceeds the ", rows, " rows of x"));
  }
  ST_RETURN_IF_ERROR(nn::ExpectTensor(bad, kOp, "bad", {1}, {DType::kI32}));
  if (bad.device() != x.device()) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": bad (", bad.device().ToString(),
                                                   ") must be on x's device (", x.device().ToString(), ")"));
  }
  return absl::OkStatus();
}

namespace cpu {

absl::Status ScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) {
  ST_CHECK(y != nullptr && bad != nullptr);
  ST_RETURN_IF_ERROR(CheckScaleSegmentsByAbsMax(x, cu_seqlens, *y, *bad));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(x, kOp, "x"));
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kF64) {
    return absl::InvalidArgumentError(absl::StrCat("cpu ", kOp, ": x must be f32 or f64, got ", DTypeName(x.dtype())));
  }
  const int32_t* cu = cu_seqlens.data<int32_t>();
  const int64_t segments = cu_seqlens.dim(0) - 1;
  if (x.dtype() == DType::kF32) {
    Dispatch<float>(x, cu, segments, y, bad->data<int32_t>());
  } else {
    Dispatch<double>(x, cu, segments, y, bad->data<int32_t>());
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
