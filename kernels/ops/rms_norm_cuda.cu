#include <cuda_bf16.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/nn_cuda_util.h"
#include "kernels/ops/nn_util.h"
#include "kernels/ops/rms_norm.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr char kOp[] = "rms_norm";
constexpr int kThreads = 256;

template <typename T>
__device__ float RowRstd(const T* x, int64_t d, float eps, float* scratch) {
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = nn::Load(x + j);
    sum += v * v;
  }
  sum = nn::BlockSum(sum, scratch);
  return rsqrtf(sum / static_cast<float>(d) + eps);
}

template <typename T, typename W>
__global__ void ForwardKernel(const T* x, const W* w, int64_t d, float eps, T* y) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * d;
  const float r = RowRstd(xr, d, eps, scratch);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) nn::Store(y + row * d + j, nn::Load(xr + j) * r * nn::Load(w + j));
}

template <typename T, typename W>
__global__ void BackwardKernel(const T* x, const W* w, const T* dy, int64_t d, float eps, T* dx, float* rstd) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * d;
  const T* gr = dy + row * d;
  const float r = RowRstd(xr, d, eps, scratch);
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dot += nn::Load(gr + j) * nn::Load(w + j) * nn::Load(xr + j);
  const float mean = nn::BlockSum(dot, scratch) * r / static_cast<float>(d);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float n = nn::Load(xr + j) * r;
    nn::Store(dx + row * d + j, r * (nn::Load(gr + j) * nn::Load(w + j) - n * mean));
  }
  if (threadIdx.x == 0) rstd[row] = r;
}

template <typename T>
__global__ void WeightGradKernel(const T* x, const T* dy, const float* rstd, int64_t rows, int64_t d, float* dw) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < d;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t t = 0; t < rows; ++t) sum += nn::Load(dy + t * d + j) * nn::Load(x + t * d + j) * rstd[t];
    dw[j] = sum;
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

absl::Status CheckCudaOperands(GpuContext& ctx, const Tensor& x, const Tensor& w, const Tensor* dw,
                               std::initializer_list<std::pair<const Tensor*, const char*>> all) {
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda rms_norm: x must be f32 or bf16, got ", DTypeName(x.dtype())));
  }
  if (w.dtype() != DType::kF32 && w.dtype() != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda rms_norm: w must be f32 or bf16, got ", DTypeName(w.dtype())));
  }
  if (dw != nullptr && dw->dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("cuda rms_norm: dw must be f32, got ", DTypeName(dw->dtype())));
  }
  for (const auto& [t, what] : all) {
    if (t != nullptr) ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *t, what));
  }
  if (x.dim(0) > 2147483647LL) return absl::InvalidArgumentError("cuda rms_norm: more than 2^31-1 rows");
  return ctx.Activate();
}

template <typename T, typename W>
void LaunchForward(GpuContext& ctx, const Tensor& x, const Tensor& w, float eps, Tensor* y) {
  ForwardKernel<T, W><<<static_cast<unsigned>(x.dim(0)), kThreads, 0, ctx.stream()>>>(In<T>(x), In<W>(w), x.dim(1),
                                                                                       eps, Out<T>(y));
}

template <typename T, typename W>
void LaunchBackward(GpuContext& ctx, const Tensor& x, const Tensor& w, float eps, const Tensor& dy, Tensor* dx,
                    float* rstd) {
  BackwardKernel<T, W><<<static_cast<unsigned>(x.dim(0)), kThreads, 0, ctx.stream()>>>(
      In<T>(x), In<W>(w), In<T>(dy), x.dim(1), eps, Out<T>(dx), rstd);
}

}  // namespace

absl::Status RmsNormForward(GpuContext& ctx, const Tensor& x, const Tensor& w, double eps, Tensor* y) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckRmsNorm(x, w, eps, *y, nullptr, nullptr));
  ST_RETURN_IF_ERROR(CheckCudaOperands(ctx, x, w, nullptr, {{&x, "rms_norm x"}, {&w, "rms_norm w"}, {y, "rms_norm y"}}));
  if (x.numel() == 0) return absl::OkStatus();
  const float e = static_cast<float>(eps);
  const bool xb = x.dtype() == DType::kBF16, wb = w.dtype() == DType::kBF16;
  if (!xb && !wb) LaunchForward<float, float>(ctx, x, w, e, y);
  if (!xb && wb) LaunchForward<float, __nv_bfloat16>(ctx, x, w, e, y);
  if (xb && !wb) LaunchForward<__nv_bfloat16, float>(ctx, x, w, e, y);
  if (xb && wb) LaunchForward<__nv_bfloat16, __nv_bfloat16>(ctx, x, w, e, y);
  return CudaStatus(cudaGetLastError(), "rms_norm ForwardKernel launch");
}

absl::Status RmsNormBackward(GpuContext& ctx, const Tensor& x, const Tensor& w, double eps, const Tensor& dy,
                             Tensor* dx, Tensor* dw) {
  ST_CHECK(dx != nullptr);
  ST_RETURN_IF_ERROR(CheckRmsNorm(x, w, eps, dy, dx, dw));
  ST_RETURN_IF_ERROR(CheckCudaOperands(
      ctx, x, w, dw,
      {{&x, "rms_norm x"}, {&w, "rms_norm w"}, {&dy, "rms_norm dy"}, {dx, "rms_norm dx"}, {dw, "rms_norm dw"}}));
  const int64_t rows = x.dim(0), d = x.dim(1);
  if (d == 0) return absl::OkStatus();
  if (rows == 0) {
    if (dw != nullptr) ST_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dw->raw_data(), 0, dw->nbytes(), ctx.stream()));
    return absl::OkStatus();
  }
  ST_ASSIGN_OR_RETURN(void* scratch, ctx.Workspace(static_cast<size_t>(rows) * sizeof(float)));
  float* rstd = static_cast<float*>(scratch);
  const float e = static_cast<float>(eps);
  const bool xb = x.dtype() == DType::kBF16, wb = w.dtype() == DType::kBF16;
  if (!xb && !wb) LaunchBackward<float, float>(ctx, x, w, e, dy, dx, rstd);
  if (!xb && wb) LaunchBackward<float, __nv_bfloat16>(ctx, x, w, e, dy, dx, rstd);
  if (xb && !wb) LaunchBackward<__nv_bfloat16, float>(ctx, x, w, e, dy, dx, rstd);
  if (xb && wb) LaunchBackward<__nv_bfloat16, __nv_bfloat16>(ctx, x, w, e, dy, dx, rstd);
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "rms_norm BackwardKernel launch"));
  if (dw == nullptr) return absl::OkStatus();
  const unsigned grid = nn::GridFor(d, kThreads);
  if (xb) {
    WeightGradKernel<<<grid, kThreads, 0, ctx.stream()>>>(In<__nv_bfloat16>(x), In<__nv_bfloat16>(dy), rstd, rows, d,
                                                          dw->data<float>());
  } else {
    WeightGradKernel<<<grid, kThreads, 0, ctx.stream()>>>(x.data<float>(), dy.data<float>(), rstd, rows, d,
                                                          dw->data<float>());
  }
  return CudaStatus(cudaGetLastError(), "rms_norm WeightGradKernel launch");
}

}  // namespace sigmatune::kernels::cuda
