#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/cast.h"

namespace sigmatune::kernels::cuda {
namespace {

// Every conversion goes through float (or double for f64 <-> f32), like the CPU reference.
__device__ float ToFloat(float v) { return v; }
__device__ float ToFloat(double v) { return static_cast<float>(v); }
__device__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ float ToFloat(__half v) { return __half2float(v); }

template <typename Out>
struct Convert;
template <>
struct Convert<float> {
  template <typename In>
  __device__ static float Apply(In v) { return ToFloat(v); }
};
template <>
struct Convert<double> {
  template <typename In>
  __device__ static double Apply(In v) { return static_cast<double>(ToFloat(v)); }
  __device__ static double Apply(double v) { return v; }
};
template <>
struct Convert<__nv_bfloat16> {
  template <typename In>
  __device__ static __nv_bfloat16 Apply(In v) { return __float2bfloat16_rn(ToFloat(v)); }
};
template <>
struct Convert<__half> {
  template <typename In>
  __device__ static __half Apply(In v) { return __float2half_rn(ToFloat(v)); }
};

template <typename In, typename Out>
__global__ void CastKernel(const In* in, Out* out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = Convert<Out>::Apply(in[i]);
  }
}

template <typename In, typename Out>
absl::Status Launch(const GpuContext& ctx, const Tensor& src, Tensor* dst) {
  const int64_t n = src.numel();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535);
  CastKernel<In, Out><<<static_cast<unsigned>(blocks), threads, 0, ctx.stream()>>>(
      static_cast<const In*>(src.raw_data()), static_cast<Out*>(dst->raw_data()), n);
  return CudaStatus(cudaGetLastError(), "CastKernel launch");
}

template <typename In>
absl::Status LaunchFrom(const GpuContext& ctx, const Tensor& src, Tensor* dst) {
  switch (dst->dtype()) {
    case DType::kF32:
      return Launch<In, float>(ctx, src, dst);
    case DType::kF64:
      return Launch<In, double>(ctx, src, dst);
    case DType::kBF16:
      return Launch<In, __nv_bfloat16>(ctx, src, dst);
    case DType::kF16:
      return Launch<In, __half>(ctx, src, dst);
    default:
      return absl::InvalidArgumentError(absl::StrCat("cast to ", DTypeName(dst->dtype())));
  }
}

}  // namespace

absl::Status Cast(GpuContext& ctx, const Tensor& src, Tensor* dst) {
  ST_CHECK(dst != nullptr);
  ST_RETURN_IF_ERROR(CheckCast(src, *dst));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, src, "cast source"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *dst, "cast destination"));
  if (src.numel() == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx.Activate());
  switch (src.dtype()) {
    case DType::kF32:
      return LaunchFrom<float>(ctx, src, dst);
    case DType::kF64:
      return LaunchFrom<double>(ctx, src, dst);
    case DType::kBF16:
      return LaunchFrom<__nv_bfloat16>(ctx, src, dst);
    case DType::kF16:
      return LaunchFrom<__half>(ctx, src, dst);
    default:
      return absl::InvalidArgumentError(absl::StrCat("cast from ", DTypeName(src.dtype())));
  }
}

}  // namespace sigmatune::kernels::cuda
