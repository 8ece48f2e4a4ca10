#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/adapter_ops.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels {
namespace {

constexpr std::initializer_list<DType> kAnyFloat = {DType::kF32, DType::kF64, DType::kBF16};

absl::Status ExpectSameDevice(const Tensor& t, const Tensor& ref, const char* op, const char* what,
                              const char* what_ref) {
  if (t.device() == ref.device()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " (", t.device().ToString(), ") and ", what_ref,
                                                 " (", ref.device().ToString(), ") must be on the same device"));
}

// `t` matches `ref`'s dtype and device (after ExpectTensor checked its shape).
absl::Status ExpectLike(const Tensor& t, const Tensor& ref, const char* op, const char* what, const char* what_ref) {
  ST_RETURN_IF_ERROR(nn::ExpectSameDType(t, ref, op, what, what_ref));
  return ExpectSameDevice(t, ref, op, what, what_ref);
}

absl::Status CheckCpuDType(const Tensor& t, const char* op) {
  if (t.dtype() == DType::kF32 || t.dtype() == DType::kF64) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("cpu ", op, ": operands must be f32 or f64, got ", DTypeName(t.dtype())));
}

template <typename T>
void ScaleColumnsImpl(const T* x, const T* d, int64_t rows, int64_t cols, T* y) {
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < cols; ++j) y[t * cols + j] = x[t * cols + j] * d[j];
  }
}

template <typename T>
void ColumnDotImpl(const T* a, const T* b, int64_t rows, int64_t cols, double beta, T* out) {
  std::vector<double> sum(cols, 0.0);
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < cols; ++j) {
      sum[j] += static_cast<double>(a[t * cols + j]) * static_cast<double>(b[t * cols + j]);
    }
  }
  for (int64_t j = 0; j < cols; ++j) {
    out[j] = static_cast<T>(beta == 0 ? sum[j] : beta * static_cast<double>(out[j]) + sum[j]);
  }
}

template <typename T>
void DropoutImpl(const T* x, int64_t n, double p, uint64_t seed, T* y) {
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = static_cast<double>(DropoutUniform(seed, static_cast<uint64_t>(i))) >= p;
    y[i] = keep ? x[i] * scale : T(0);
  }
}

}  // namespace

absl::Status CheckScaleColumns(const Tensor& x, const Tensor& d, const Tensor& y) {
  constexpr char kOp[] = "ScaleColumns";
  ST_RETURN_IF_ERROR(nn::ExpectTensor(x, kOp, "x", {-1, -1}, kAnyFloat));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(d, kOp, "d", {x.dim(1)}, kAnyFloat));
  ST_RETURN_IF_ERROR(ExpectLike(d, x, kOp, "d", "x"));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(y, kOp, "y", x.shape(), kAnyFloat));
  return ExpectLike(y, x, kOp, "y", "x");
}

absl::Status CheckColumnDot(const Tensor& a, const Tensor& b, const Tensor& out) {
  constexpr char kOp[] = "ColumnDot";
  ST_RETURN_IF_ERROR(nn::ExpectTensor(a, kOp, "a", {-1, -1}, kAnyFloat));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(b, kOp, "b", a.shape(), kAnyFloat));
  ST_RETURN_IF_ERROR(ExpectLike(b, a, kOp, "b", "a"));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(out, kOp, "out", {a.dim(1)}, kAnyFloat));
  return ExpectLike(out, a, kOp, "out", "a");
}

absl::Status CheckDropout(const Tensor& x, double p, const Tensor& y) {
  constexpr char kOp[] = "Dropout";
  if (!(p >= 0.0 && p < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": p must be in [0, 1), got ", p));
  }
  if (!x.defined()) return absl::InvalidArgumentError("Dropout: x is not defined");
  Shape any(x.rank(), -1);
  ST_RETURN_IF_ERROR(nn::ExpectTensor(x, kOp, "x", any, kAnyFloat));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(y, kOp, "y", x.shape(), kAnyFloat));
  return ExpectLike(y, x, kOp, "y", "x");
}

namespace cpu {

absl::Status ScaleColumns(const Tensor& x, const Tensor& d, Tensor* y) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckScaleColumns(x, d, *y));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(x, "ScaleColumns", "x"));
  ST_RETURN_IF_ERROR(CheckCpuDType(x, "ScaleColumns"));
  if (x.dtype() == DType::kF32) {
    ScaleColumnsImpl(x.data<float>(), d.data<float>(), x.dim(0), x.dim(1), y->data<float>());
  } else {
    ScaleColumnsImpl(x.data<double>(), d.data<double>(), x.dim(0), x.dim(1), y->data<double>());
  }
  return absl::OkStatus();
}

absl::Status ColumnDot(const Tensor& a, const Tensor& b, double beta, Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckColumnDot(a, b, *out));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(a, "ColumnDot", "a"));
  ST_RETURN_IF_ERROR(CheckCpuDType(a, "ColumnDot"));
  if (a.dtype() == DType::kF32) {
    ColumnDotImpl(a.data<float>(), b.data<float>(), a.dim(0), a.dim(1), beta, out->data<float>());
  } else {
    ColumnDotImpl(a.data<double>(), b.data<double>(), a.dim(0), a.dim(1), beta, out->data<double>());
  }
  return absl::OkStatus();
}

absl::Status Dropout(const Tensor& x, double p, uint64_t seed, Tensor* y) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckDropout(x, p, *y));
  ST_RETURN_IF_ERROR(nn::ExpectCpu(x, "Dropout", "x"));
  ST_RETURN_IF_ERROR(CheckCpuDType(x, "Dropout"));
  if (x.dtype() == DType::kF32) {
    DropoutImpl(x.data<float>(), x.numel(), p, seed, y->data<float>());
  } else {
    DropoutImpl(x.data<double>(), x.numel(), p, seed, y->data<double>());
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
