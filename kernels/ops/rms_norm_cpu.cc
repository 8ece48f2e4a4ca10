#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/rms_norm.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "rms_norm";

// rstd of one row, the way LlamaRMSNorm computes it for T (mean and rsqrt in T's precision).
template <typename T>
T RowRstd(const T* x, int64_t d, double eps) {
  double sum = 0;
  for (int64_t j = 0; j < d; ++j) sum += static_cast<double>(x[j]) * x[j];
  const T var = static_cast<T>(sum / static_cast<double>(d));
  return T(1) / std::sqrt(var + static_cast<T>(eps));
}

template <typename T>
void Forward(const T* x, const T* w, int64_t rows, int64_t d, double eps, T* y) {
  for (int64_t t = 0; t < rows; ++t) {
    const T r = RowRstd(x + t * d, d, eps);
    for (int64_t j = 0; j < d; ++j) y[t * d + j] = x[t * d + j] * r * w[j];
  }
}

template <typename T>
void Backward(const T* x, const T* w, int64_t rows, int64_t d, double eps, const T* dy, T* dx, T* dw) {
  std::vector<double> dw_acc(dw != nullptr ? d : 0, 0.0);
  for (int64_t t = 0; t < rows; ++t) {
    const T* xr = x + t * d;
    const T* gr = dy + t * d;
    const double r = RowRstd(xr, d, eps);
    double dot = 0;  // sum_k g_k n_k
    for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(gr[j]) * w[j] * xr[j] * r;
    const double mean = dot / static_cast<double>(d);
    for (int64_t j = 0; j < d; ++j) {
      const double n = xr[j] * r;
      dx[t * d + j] = static_cast<T>(r * (static_cast<double>(gr[j]) * w[j] - n * mean));
      if (dw != nullptr) dw_acc[j] += static_cast<double>(gr[j]) * n;
    }
  }
  if (dw != nullptr) {
    for (int64_t j = 0; j < d; ++j) dw[j] = static_cast<T>(dw_acc[j]);
  }
}

absl::Status CheckCpuDTypes(const Tensor& x, std::initializer_list<const Tensor*> others) {
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kF64) {
    return absl::InvalidArgumentError(absl::StrCat("cpu rms_norm: x must be f32 or f64, got ", DTypeName(x.dtype())));
  }
  for (const Tensor* t : others) {
    if (t == nullptr) continue;
    ST_RETURN_IF_ERROR(nn::ExpectSameDType(x, *t, kOp, "x", "every other operand"));
    ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, "operand"));
  }
  return nn::ExpectCpu(x, kOp, "x");
}

}  // namespace

absl::Status CheckRmsNorm(const Tensor& x, const Tensor& w, double eps, const Tensor& y_or_dy, const Tensor* dx,
                          const Tensor* dw) {
  const std::initializer_list<DType> floats = {DType::kF32, DType::kF64, DType::kBF16};
  ST_RETURN_IF_ERROR(nn::ExpectTensor(x, kOp, "x", {-1, -1}, floats));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(w, kOp, "w", {x.dim(1)}, floats));
  ST_RETURN_IF_ERROR(nn::ExpectTensor(y_or_dy, kOp, dx == nullptr ? "y" : "dy", x.shape(), {x.dtype()}));
  if (dx != nullptr) ST_RETURN_IF_ERROR(nn::ExpectTensor(*dx, kOp, "dx", x.shape(), {x.dtype()}));
  if (dw != nullptr) ST_RETURN_IF_ERROR(nn::ExpectTensor(*dw, kOp, "dw", {x.dim(1)}, floats));
  if (!(eps > 0) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(absl::StrCat("rms_norm: eps must be positive and finite, got ", eps));
  }
  return absl::OkStatus();
}

namespace cpu {

absl::Status RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckRmsNorm(x, w, eps, *y, nullptr, nullptr));
  ST_RETURN_IF_ERROR(CheckCpuDTypes(x, {&w, y}));
  if (x.dtype() == DType::kF32) {
    Forward(x.data<float>(), w.data<float>(), x.dim(0), x.dim(1), eps, y->data<float>());
  } else {
    Forward(x.data<double>(), w.data<double>(), x.dim(0), x.dim(1), eps, y->data<double>());
  }
  return absl::OkStatus();
}

absl::Status RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx,
                             Tensor* dw) {
  ST_CHECK(dx != nullptr);
  ST_RETURN_IF_ERROR(CheckRmsNorm(x, w, eps, dy, dx, dw));
  ST_RETURN_IF_ERROR(CheckCpuDTypes(x, {&w, &dy, dx, dw}));
  if (x.dtype() == DType::kF32) {
    Backward(x.data<float>(), w.data<float>(), x.dim(0), x.dim(1), eps, dy.data<float>(), dx->data<float>(),
             dw != nullptr ? dw->data<float>() : nullptr);
  } else {
    Backward(x.data<double>(), w.data<double>(), x.dim(0), x.dim(1), eps, dy.data<double>(), dx->data<double>(),
             dw != nullptr ? dw->data<double>() : nullptr);
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
