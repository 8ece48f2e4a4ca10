#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/ops/cpu_vec.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/rms_norm.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "rms_norm";

constexpr int64_t kGrainElements = 1 << 14;  // elements per thread at least

// rstd of one row, the way LlamaRMSNorm computes it for T (mean and rsqrt in T's precision).
template <typename T>
T RowRstd(const T* x, int64_t d, double eps) {
  double sum = 0;
  for (int64_t j = 0; j < d; ++j) sum += static_cast<double>(x[j]) * x[j];
  const T var = static_cast<T>(sum / static_cast<double>(d));
  return T(1) / std::sqrt(var + static_cast<T>(eps));
}

// f32: the sum of squares in double over SIMD lanes.
template <>
float RowRstd(const float* x, int64_t d, double eps) {
  vec::D2 acc = {0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    const vec::F4 v = vec::Load(x + j);
    const vec::D2 lo = vec::WidenLo(v), hi = vec::WidenHi(v);
    acc += lo * lo + hi * hi;
  }
  double sum = acc[0] + acc[1];
  for (; j < d; ++j) sum += static_cast<double>(x[j]) * x[j];
  const float var = static_cast<float>(sum / static_cast<double>(d));
  return 1.0f / std::sqrt(var + static_cast<float>(eps));
}

// Rows [begin, end).
template <typename T>
void Forward(const T* x, const T* w, int64_t begin, int64_t end, int64_t d, double eps, T* y) {
  for (int64_t t = begin; t < end; ++t) {
    const T* xr = x + t * d;
    T* yr = y + t * d;
    const T r = RowRstd(xr, d, eps);
    int64_t j = 0;
    if constexpr (std::is_same_v<T, float>) {
      const vec::F4 r4 = vec::Splat(r);
      for (; j + 4 <= d; j += 4) vec::Store(yr + j, vec::Load(xr + j) * r4 * vec::Load(w + j));
    }
    for (; j < d; ++j) yr[j] = xr[j] * r * w[j];
  }
}

// Rows [begin, end) of dx; with dw_acc (sized d), also adds sum_t dy * n to it.
template <typename T>
void Backward(const T* x, const T* w, int64_t begin, int64_t end, int64_t d, double eps, const T* dy, T* dx,
              double* dw_acc) {
  for (int64_t t = begin; t < end; ++t) {
    const T* xr = x + t * d;
    const T* gr = dy + t * d;
    T* dxr = dx + t * d;
    const double r = RowRstd(xr, d, eps);
    int64_t j = 0;
    double dot = 0;  // sum_k g_k n_k
    if constexpr (std::is_same_v<T, float>) {
      const vec::D2 r2 = {r, r};
      vec::D2 acc = {0.0, 0.0};
      for (; j + 4 <= d; j += 4) {
        const vec::F4 g = vec::Load(gr + j), wj = vec::Load(w + j), xj = vec::Load(xr + j);
        acc += vec::WidenLo(g) * vec::WidenLo(wj) * vec::WidenLo(xj) * r2;
        acc += vec::WidenHi(g) * vec::WidenHi(wj) * vec::WidenHi(xj) * r2;
      }
      dot = acc[0] + acc[1];
    }
    for (; j < d; ++j) dot += static_cast<double>(gr[j]) * w[j] * xr[j] * r;
    const double mean = dot / static_cast<double>(d);
    j = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (dw_acc == nullptr) {
        const vec::D2 r2 = {r, r}, m2 = {mean, mean};
        for (; j + 4 <= d; j += 4) {
          const vec::F4 g = vec::Load(gr + j), wj = vec::Load(w + j), xj = vec::Load(xr + j);
          const vec::D2 lo = r2 * (vec::WidenLo(g) * vec::WidenLo(wj) - vec::WidenLo(xj) * r2 * m2);
          const vec::D2 hi = r2 * (vec::WidenHi(g) * vec::WidenHi(wj) - vec::WidenHi(xj) * r2 * m2);
          vec::Store(dxr + j, vec::Narrow(lo, hi));
        }
      }
    }
    for (; j < d; ++j) {
      const double n = xr[j] * r;
      dxr[j] = static_cast<T>(r * (static_cast<double>(gr[j]) * w[j] - n * mean));
      if (dw_acc != nullptr) dw_acc[j] += static_cast<double>(gr[j]) * n;
    }
  }
}

// Rows per thread at least, for rows of d elements.
int64_t RowGrain(int64_t d) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(d, 1)); }

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

absl::Status RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y, CpuContext* ctx) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckRmsNorm(x, w, eps, *y, nullptr, nullptr));
  ST_RETURN_IF_ERROR(CheckCpuDTypes(x, {&w, y}));
  const int64_t d = x.dim(1);
  ParallelFor(ctx, x.dim(0), RowGrain(d), [&](int64_t begin, int64_t end) {
    if (x.dtype() == DType::kF32) {
      Forward(x.data<float>(), w.data<float>(), begin, end, d, eps, y->data<float>());
    } else {
      Forward(x.data<double>(), w.data<double>(), begin, end, d, eps, y->data<double>());
    }
  });
  return absl::OkStatus();
}

absl::Status RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx,
                             Tensor* dw, CpuContext* ctx) {
  ST_CHECK(dx != nullptr);
  ST_RETURN_IF_ERROR(CheckRmsNorm(x, w, eps, dy, dx, dw));
  ST_RETURN_IF_ERROR(CheckCpuDTypes(x, {&w, &dy, dx, dw}));
  const int64_t rows = x.dim(0), d = x.dim(1);
  if (dw != nullptr) {  // one thread, so that dw is summed in row order
    std::vector<double> dw_acc(d, 0.0);
    if (x.dtype() == DType::kF32) {
      Backward(x.data<float>(), w.data<float>(), 0, rows, d, eps, dy.data<float>(), dx->data<float>(), dw_acc.data());
      for (int64_t j = 0; j < d; ++j) dw->data<float>()[j] = static_cast<float>(dw_acc[j]);
    } else {
      Backward(x.data<double>(), w.data<double>(), 0, rows, d, eps, dy.data<double>(), dx->data<double>(),
               dw_acc.data());
      for (int64_t j = 0; j < d; ++j) dw->data<double>()[j] = dw_acc[j];
    }
    return absl::OkStatus();
  }
  ParallelFor(ctx, rows, RowGrain(d), [&](int64_t begin, int64_t end) {
    if (x.dtype() == DType::kF32) {
      Backward(x.data<float>(), w.data<float>(), begin, end, d, eps, dy.data<float>(), dx->data<float>(), nullptr);
    } else {
      Backward(x.data<double>(), w.data<double>(), begin, end, d, eps, dy.data<double>(), dx->data<double>(),
               nullptr);
    }
  });
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
