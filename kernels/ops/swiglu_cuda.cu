#include <cuda_bf16.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/nn_cuda_util.h"
#include "kernels/ops/swiglu.h"

namespace sigmatune::kernels::cuda {
namespace {

__device__ __forceinline__ float Sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__global__ void ForwardKernel(const T* g, const T* u, int64_t n, T* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = nn::Load(g + i);
    nn::Store(out + i, gi * Sigmoid(gi) * nn::Load(u + i));
  }
}

template <typename T>
__global__ void BackwardKernel(const T* g, const T* u, const T* dout, int64_t n, T* dg, T* du) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = nn::Load(g + i), ui = nn::Load(u + i), d = nn::Load(dout + i);
    const float s = Sigmoid(gi);
    nn::Store(dg + i, d * ui * s * (1.0f + gi * (1.0f - s)));
    nn::Store(du + i, d * gi * s);
  }
}

template <typename T>
const T* In(const Tensor& t) {
  return static_cast<const T*>(t.raw_data());
}
template <typename T>
T* Out(Tensor* t) {
  return static_cast<T*>(t->raw_data());
}

absl::Status CheckCuda(GpuContext& ctx, std::initializer_list<std::pair<const Tensor*, const char*>> operands) {
  ST_RETURN_IF_ERROR(CheckSwiglu(operands));
  for (const auto& [t, what] : operands) ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *t, what));
  const DType dt = operands.begin()->first->dtype();
  if (dt != DType::kF32 && dt != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda swiglu: operands must be f32 or bf16, got ", DTypeName(dt)));
  }
  return ctx.Activate();
}

}  // namespace

absl::Status SwigluForward(GpuContext& ctx, const Tensor& gate, const Tensor& up, Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckCuda(ctx, {{&gate, "gate"}, {&up, "up"}, {out, "out"}}));
  const int64_t n = gate.numel();
  if (n == 0) return absl::OkStatus();
  const unsigned grid = nn::GridFor(n, 256);
  if (gate.dtype() == DType::kF32) {
    ForwardKernel<<<grid, 256, 0, ctx.stream()>>>(In<float>(gate), In<float>(up), n, Out<float>(out));
  } else {
    ForwardKernel<<<grid, 256, 0, ctx.stream()>>>(In<__nv_bfloat16>(gate), In<__nv_bfloat16>(up), n,
                                                  Out<__nv_bfloat16>(out));
  }
  return CudaStatus(cudaGetLastError(), "swiglu ForwardKernel launch");
}

absl::Status SwigluBackward(GpuContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate,
                            Tensor* dup) {
  ST_CHECK(dgate != nullptr && dup != nullptr);
  ST_RETURN_IF_ERROR(CheckCuda(ctx, {{&gate, "gate"}, {&up, "up"}, {&dout, "dout"}, {dgate, "dgate"}, {dup, "dup"}}));
  const int64_t n = gate.numel();
  if (n == 0) return absl::OkStatus();
  const unsigned grid = nn::GridFor(n, 256);
  if (gate.dtype() == DType::kF32) {
    BackwardKernel<<<grid, 256, 0, ctx.stream()>>>(In<float>(gate), In<float>(up), In<float>(dout), n,
                                                   Out<float>(dgate), Out<float>(dup));
  } else {
    BackwardKernel<<<grid, 256, 0, ctx.stream()>>>(In<__nv_bfloat16>(gate), In<__nv_bfloat16>(up),
                                                   In<__nv_bfloat16>(dout), n, Out<__nv_bfloat16>(dgate),
                                                   Out<__nv_bfloat16>(dup));
  }
  return CudaStatus(cudaGetLastError(), "swiglu BackwardKernel launch");
}

}  // namespace sigmatune::kernels::cuda
