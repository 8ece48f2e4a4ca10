#include <cuda_bf16.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/nn_cuda_util.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/rope.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr int kMaxHalf = 512;

// Passed by value (2 KiB + a few words, under the 4 KiB kernel-parameter limit).
struct RopeFreqs {
  float inv_freq[kMaxHalf];
  int half;
};

template <typename T>
__global__ void RopeKernel(const T* x, const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
                           const RopeFreqs freqs, float sign, T* out) {
  const int64_t half = freqs.half;
  const int64_t rotary_dim = 2 * half;
  const int64_t tail = head_dim - rotary_dim;
  const int64_t per_head = half + tail;  // work items per (token, head): pairs, then pass-through
  const int64_t n = tokens * heads * per_head;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t item = idx % per_head;
    const int64_t row = idx / per_head;  // t * heads + h
    const int64_t t = row / heads;
    const int64_t base = row * head_dim;
    if (item < half) {
      const float angle = static_cast<float>(positions[t]) * freqs.inv_freq[item];
      float s, c;
      sincosf(angle, &s, &c);
      s *= sign;
      const float a = nn::Load(x + base + item), b = nn::Load(x + base + item + half);
      nn::Store(out + base + item, a * c - b * s);
      nn::Store(out + base + item + half, b * c + a * s);
    } else {
      const int64_t j = rotary_dim + (item - half);
      out[base + j] = x[base + j];
    }
  }
}

}  // namespace

absl::Status ApplyRope(GpuContext& ctx, const Tensor& x, const Tensor& positions, const RopeConfig& config,
                       RopeDirection direction, Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckRope(x, positions, config, *out));
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda rope: x must be f32 or bf16, got ", DTypeName(x.dtype())));
  }
  ST_ASSIGN_OR_RETURN(const std::vector<float> inv_freq, RopeInvFreq(config));
  if (inv_freq.size() > static_cast<size_t>(kMaxHalf)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda rope: rotary_dim ", 2 * inv_freq.size(), " exceeds the supported ", 2 * kMaxHalf));
  }
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, x, "rope x"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, positions, "rope positions"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *out, "rope out"));
  if (x.numel() == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx.Activate());
  RopeFreqs freqs{};
  for (size_t i = 0; i < inv_freq.size(); ++i) freqs.inv_freq[i] = inv_freq[i];
  freqs.half = static_cast<int>(inv_freq.size());
  const float sign = direction == RopeDirection::kForward ? 1.0f : -1.0f;
  const int64_t items = x.dim(0) * x.dim(1) * (x.dim(2) - static_cast<int64_t>(inv_freq.size()));
  const unsigned grid = nn::GridFor(items, 256);
  if (x.dtype() == DType::kF32) {
    RopeKernel<<<grid, 256, 0, ctx.stream()>>>(x.data<float>(), positions.data<int32_t>(), x.dim(0), x.dim(1),
                                               x.dim(2), freqs, sign, out->data<float>());
  } else {
    RopeKernel<<<grid, 256, 0, ctx.stream()>>>(static_cast<const __nv_bfloat16*>(x.raw_data()),
                                               positions.data<int32_t>(), x.dim(0), x.dim(1), x.dim(2), freqs, sign,
                                               static_cast<__nv_bfloat16*>(out->raw_data()));
  }
  return CudaStatus(cudaGetLastError(), "RopeKernel launch");
}

}  // namespace sigmatune::kernels::cuda
