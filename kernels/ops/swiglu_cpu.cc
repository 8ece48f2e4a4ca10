#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/swiglu.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "swiglu";

template <typename T>
void Forward(const T* g, const T* u, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-g[i]));
    out[i] = g[i] * s * u[i];
  }
}

template <typename T>
void Backward(const T* g, const T* u, const T* dout, int64_t n, T* dg, T* du) {
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i], ui = u[i], d = dout[i];
    const T s = T(1) / (T(1) + std::exp(-gi));
    dg[i] = d * ui * s * (T(1) + gi * (T(1) - s));
    du[i] = d * gi * s;
  }
}

absl::Status CheckCpu(std::initializer_list<std::pair<const Tensor*, const char*>> operands) {
  ST_RETURN_IF_ERROR(CheckSwiglu(operands));
  for (const auto& [t, what] : operands) ST_RETURN_IF_ERROR(nn::ExpectCpu(*t, kOp, what));
  const DType dt = operands.begin()->first->dtype();
  if (dt != DType::kF32 && dt != DType::kF64) {
    return absl::InvalidArgumentError(absl::StrCat("cpu swiglu: operands must be f32 or f64, got ", DTypeName(dt)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckSwiglu(std::initializer_list<std::pair<const Tensor*, const char*>> operands) {
  const Tensor& first = *operands.begin()->first;
  for (const auto& [t, what] : operands) {
    ST_RETURN_IF_ERROR(nn::ExpectTensor(*t, kOp, what, first.shape(), {DType::kF32, DType::kF64, DType::kBF16}));
    ST_RETURN_IF_ERROR(nn::ExpectSameDType(*t, first, kOp, what, operands.begin()->second));
  }
  return absl::OkStatus();
}

namespace cpu {

absl::Status SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckCpu({{&gate, "gate"}, {&up, "up"}, {out, "out"}}));
  if (gate.dtype() == DType::kF32) {
    Forward(gate.data<float>(), up.data<float>(), gate.numel(), out->data<float>());
  } else {
    Forward(gate.data<double>(), up.data<double>(), gate.numel(), out->data<double>());
  }
  return absl::OkStatus();
}

absl::Status SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate, Tensor* dup) {
  ST_CHECK(dgate != nullptr && dup != nullptr);
  ST_RETURN_IF_ERROR(CheckCpu({{&gate, "gate"}, {&up, "up"}, {&dout, "dout"}, {dgate, "dgate"}, {dup, "dup"}}));
  if (gate.dtype() == DType::kF32) {
    Backward(gate.data<float>(), up.data<float>(), dout.data<float>(), gate.numel(), dgate->data<float>(),
             dup->data<float>());
  } else {
    Backward(gate.data<double>(), up.data<double>(), dout.data<double>(), gate.numel(), dgate->data<double>(),
             dup->data<double>());
  }
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
