#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/ops/cpu_vec.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/swiglu.h"

namespace sigmatune::kernels {
namespace {

constexpr char kOp[] = "swiglu";
constexpr int64_t kGrain = 1 << 14;  // elements per thread at least (a few microseconds of work)

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

// f32: four lanes at a time with vec::Exp4 (the tail through the same lanes).
void Forward(const float* g, const float* u, int64_t n, float* out) {
  using vec::F4;
  const F4 one = vec::Splat(1.0f);
  for (int64_t i = 0; i < n; i += 4) {
    const int64_t m = std::min<int64_t>(4, n - i);
    const F4 gi = m == 4 ? vec::Load(g + i) : vec::LoadPartial(g + i, m, 0.0f);
    const F4 ui = m == 4 ? vec::Load(u + i) : vec::LoadPartial(u + i, m, 0.0f);
    const F4 s = one / (one + vec::Exp4(-gi));
    const F4 o = gi * s * ui;
    if (m == 4) {
      vec::Store(out + i, o);
    } else {
      vec::StorePartial(out + i, o, m);
    }
  }
}

void Backward(const float* g, const float* u, const float* dout, int64_t n, float* dg, float* du) {
  using vec::F4;
  const F4 one = vec::Splat(1.0f);
  for (int64_t i = 0; i < n; i += 4) {
    const int64_t m = std::min<int64_t>(4, n - i);
    const F4 gi = m == 4 ? vec::Load(g + i) : vec::LoadPartial(g + i, m, 0.0f);
    const F4 ui = m == 4 ? vec::Load(u + i) : vec::LoadPartial(u + i, m, 0.0f);
    const F4 d = m == 4 ? vec::Load(dout + i) : vec::LoadPartial(dout + i, m, 0.0f);
    const F4 s = one / (one + vec::Exp4(-gi));
    const F4 dgi = d * ui * s * (one + gi * (one - s));
    const F4 dui = d * gi * s;
    if (m == 4) {
      vec::Store(dg + i, dgi);
      vec::Store(du + i, dui);
    } else {
      vec::StorePartial(dg + i, dgi, m);
      vec::StorePartial(du + i, dui, m);
    }
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

absl::Status SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out, CpuContext* ctx) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckCpu({{&gate, "gate"}, {&up, "up"}, {out, "out"}}));
  ParallelFor(ctx, gate.numel(), kGrain, [&](int64_t b, int64_t e) {
    if (gate.dtype() == DType::kF32) {
      Forward(gate.data<float>() + b, up.data<float>() + b, e - b, out->data<float>() + b);
    } else {
      Forward(gate.data<double>() + b, up.data<double>() + b, e - b, out->data<double>() + b);
    }
  });
  return absl::OkStatus();
}

absl::Status SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate, Tensor* dup,
                            CpuContext* ctx) {
  ST_CHECK(dgate != nullptr && dup != nullptr);
  ST_RETURN_IF_ERROR(CheckCpu({{&gate, "gate"}, {&up, "up"}, {&dout, "dout"}, {dgate, "dgate"}, {dup, "dup"}}));
  ParallelFor(ctx, gate.numel(), kGrain, [&](int64_t b, int64_t e) {
    if (gate.dtype() == DType::kF32) {
      Backward(gate.data<float>() + b, up.data<float>() + b, dout.data<float>() + b, e - b, dgate->data<float>() + b,
               dup->data<float>() + b);
    } else {
      Backward(gate.data<double>() + b, up.data<double>() + b, dout.data<double>() + b, e - b,
               dgate->data<double>() + b, dup->data<double>() + b);
    }
  });
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
