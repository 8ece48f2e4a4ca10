// CUDA AdamW step and sum of squares. The step is the CPU reference's arithmetic written with
// round-to-nearest intrinsics (__fmul_rn, __fadd_rn, ..., __fmaf_rn where the reference fuses), so
// nvcc cannot contract or approximate any of it. The sum of squares is two deterministic passes in
// double: each block sums its grid-stride share into partial[block], then one block adds the
// partials in a fixed order into a device double, which is copied back (one synchronize).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/adamw.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

struct StepCoefficientsF32 {
  float grad_scale, decay, avg_weight, avg_weight_m1, beta2, sq_weight, bias2_sqrt, eps, neg_step_size;
  bool small_weight, apply_decay;
};

__global__ void AdamWStepKernel(StepCoefficientsF32 c, int64_t n, const float* grad, float* param, float* m, float* v) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = __fmul_rn(grad[i], c.grad_scale);
    float p = param[i];
    if (c.apply_decay) p = __fmul_rn(p, c.decay);
    const float old_m = m[i];
    const float diff = __fsub_rn(g, old_m);
    const float new_m = c.small_weight ? __fmaf_rn(c.avg_weight, diff, old_m) : __fmaf_rn(c.avg_weight_m1, diff, g);
    const float scaled_v = __fmul_rn(v[i], c.beta2);
    const float new_v = __fmaf_rn(__fmul_rn(c.sq_weight, g), g, scaled_v);
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(new_v), c.bias2_sqrt), c.eps);
    param[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(c.neg_step_size, new_m), denom));
    m[i] = new_m;
    v[i] = new_v;
  }
}

// Tree sum of one value per thread (blockDim.x == kThreads); thread 0 gets the result.
__device__ double BlockSum(double value) {
  __shared__ double scratch[kThreads];
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  return scratch[0];
}

template <typename T>
__global__ void PartialSumOfSquaresKernel(const T* x, int64_t n, double* partial) {
  double sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double value = static_cast<double>(x[i]);
    sum = __fma_rn(value, value, sum);
  }
  sum = BlockSum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void FinalSumKernel(const double* partial, int blocks, double* out) {
  double sum = 0;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) sum += partial[i];
  sum = BlockSum(sum);
  if (threadIdx.x == 0) *out = sum;
}

int BlocksFor(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

template <typename T>
absl::StatusOr<double> DeviceSumOfSquares(GpuContext& ctx, const T* x, int64_t n) {
  const int blocks = BlocksFor(n);
  ST_ASSIGN_OR_RETURN(void* scratch, ctx.Workspace((blocks + 1) * sizeof(double)));
  double* partial = static_cast<double*>(scratch);
  double* out = partial + blocks;
  PartialSumOfSquaresKernel<T><<<blocks, kThreads, 0, ctx.stream()>>>(x, n, partial);
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "PartialSumOfSquaresKernel launch"));
  FinalSumKernel<<<1, kThreads, 0, ctx.stream()>>>(partial, blocks, out);
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "SumOfSquares FinalSumKernel launch"));
  double host = 0;
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&host, out, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream()));
  ST_RETURN_IF_ERROR(ctx.Synchronize());
  return host;
}

}  // namespace

absl::Status AdamWStep(GpuContext& ctx, Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                       const AdamWStepArgs& args) {
  ST_CHECK(param != nullptr && exp_avg != nullptr && exp_avg_sq != nullptr);
  ST_RETURN_IF_ERROR(CheckAdamWStep(*param, grad, *exp_avg, *exp_avg_sq, args));
  if (param->dtype() != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda AdamWStep: operands must be f32, got ", DTypeName(param->dtype())));
  }
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *param, "AdamWStep param"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, grad, "AdamWStep grad"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *exp_avg, "AdamWStep exp_avg"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *exp_avg_sq, "AdamWStep exp_avg_sq"));
  ST_RETURN_IF_ERROR(ctx.Activate());
  const int64_t n = param->numel();
  if (n == 0) return absl::OkStatus();
  const AdamWCoefficients d = ComputeAdamWCoefficients(args);
  StepCoefficientsF32 c;
  c.grad_scale = static_cast<float>(d.grad_scale);
  c.decay = static_cast<float>(d.decay);
  c.avg_weight = static_cast<float>(d.avg_weight);
  c.avg_weight_m1 = c.avg_weight - 1.0f;
  c.beta2 = static_cast<float>(d.beta2);
  c.sq_weight = static_cast<float>(d.sq_weight);
  c.bias2_sqrt = static_cast<float>(d.bias2_sqrt);
  c.eps = static_cast<float>(d.eps);
  c.neg_step_size = static_cast<float>(d.neg_step_size);
  c.small_weight = std::fabs(c.avg_weight) < 0.5f;
  c.apply_decay = args.weight_decay != 0;
  AdamWStepKernel<<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(c, n, grad.data<float>(), param->data<float>(),
                                                               exp_avg->data<float>(), exp_avg_sq->data<float>());
  return CudaStatus(cudaGetLastError(), "AdamWStepKernel launch");
}

absl::StatusOr<double> SumOfSquares(GpuContext& ctx, const Tensor& x) {
  if (!x.defined() || !x.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SumOfSquares: x must be a defined contiguous tensor, got ", x.DebugString()));
  }
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kF64) {
    return absl::InvalidArgumentError(absl::StrCat("SumOfSquares: x must be f32/f64, got ", DTypeName(x.dtype())));
  }
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, x, "SumOfSquares x"));
  ST_RETURN_IF_ERROR(ctx.Activate());
  if (x.numel() == 0) return 0.0;
  if (x.dtype() == DType::kF32) return DeviceSumOfSquares(ctx, x.data<float>(), x.numel());
  return DeviceSumOfSquares(ctx, x.data<double>(), x.numel());
}

}  // namespace sigmatune::kernels::cuda
