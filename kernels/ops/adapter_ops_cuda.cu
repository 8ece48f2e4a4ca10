// CUDA adapter elementwise ops. f32 and bf16 compute in fp32, f64 in double; bf16 results are
// rounded once. The dropout mask comes from DropoutUniform, bit-identical to the CPU reference.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/adapter_ops.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// The arithmetic type of an element type.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ double Load(const double* p) { return *p; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(double* p, double v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T>
__global__ void ScaleColumnsKernel(const T* x, const T* d, int64_t rows, int64_t cols, T* y) {
  const int64_t total = rows * cols;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    Store(y + i, Load(x + i) * Load(d + i % cols));
  }
}

// One block per 32 columns: threadIdx.x picks the column, threadIdx.y strides over the rows, and
// the kColumnDotRows partial sums of a column are added in a fixed order (deterministic).
constexpr int kColumnDotRows = 16;

template <typename T>
__global__ void ColumnDotKernel(const T* a, const T* b, int64_t rows, int64_t cols, double beta, T* out) {
  using A = typename Acc<T>::type;
  __shared__ A partial[kColumnDotRows][32];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  A sum = 0;
  if (j < cols) {
    for (int64_t t = threadIdx.y; t < rows; t += kColumnDotRows) sum += Load(a + t * cols + j) * Load(b + t * cols + j);
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    for (int k = 1; k < kColumnDotRows; ++k) sum += partial[k][threadIdx.x];
    Store(out + j, beta == 0 ? sum : static_cast<A>(beta) * Load(out + j) + sum);
  }
}

template <typename T>
__global__ void DropoutKernel(const T* x, int64_t n, double p, typename Acc<T>::type scale, uint64_t seed, T* y) {
  using A = typename Acc<T>::type;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const bool keep = static_cast<double>(DropoutUniform(seed, static_cast<uint64_t>(i))) >= p;
    Store(y + i, keep ? Load(x + i) * scale : A(0));
  }
}

unsigned GridFor(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)));
}

absl::Status CheckCuda(GpuContext& ctx, const char* op, std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  for (const auto& [t, what] : ts) ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *t, what));
  const DType dt = ts.begin()->first->dtype();
  if (dt != DType::kF32 && dt != DType::kF64 && dt != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda ", op, ": operands must be f32, f64 or bf16, got ", DTypeName(dt)));
  }
  return ctx.Activate();
}

template <typename T>
const T* In(const Tensor& t) {
  return static_cast<const T*>(t.raw_data());
}
template <typename T>
T* Out(Tensor* t) {
  return static_cast<T*>(t->raw_data());
}

template <typename T>
void LaunchScaleColumns(GpuContext& ctx, const Tensor& x, const Tensor& d, Tensor* y) {
  ScaleColumnsKernel<T><<<GridFor(x.numel()), kThreads, 0, ctx.stream()>>>(In<T>(x), In<T>(d), x.dim(0), x.dim(1),
                                                                           Out<T>(y));
}

template <typename T>
void LaunchColumnDot(GpuContext& ctx, const Tensor& a, const Tensor& b, double beta, Tensor* out) {
  const unsigned blocks = static_cast<unsigned>((a.dim(1) + 31) / 32);
  ColumnDotKernel<T><<<blocks, dim3(32, kColumnDotRows), 0, ctx.stream()>>>(In<T>(a), In<T>(b), a.dim(0), a.dim(1),
                                                                            beta, Out<T>(out));
}

template <typename T>
void LaunchDropout(GpuContext& ctx, const Tensor& x, double p, uint64_t seed, Tensor* y) {
  using A = typename Acc<T>::type;
  DropoutKernel<T><<<GridFor(x.numel()), kThreads, 0, ctx.stream()>>>(In<T>(x), x.numel(), p,
                                                                      static_cast<A>(1.0 / (1.0 - p)), seed, Out<T>(y));
}

}  // namespace

absl::Status ScaleColumns(GpuContext& ctx, const Tensor& x, const Tensor& d, Tensor* y) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckScaleColumns(x, d, *y));
  ST_RETURN_IF_ERROR(CheckCuda(ctx, "ScaleColumns", {{&x, "ScaleColumns x"}, {&d, "ScaleColumns d"}, {y, "ScaleColumns y"}}));
  if (x.numel() == 0) return absl::OkStatus();
  switch (x.dtype()) {
    case DType::kF32:
      LaunchScaleColumns<float>(ctx, x, d, y);
      break;
    case DType::kF64:
      LaunchScaleColumns<double>(ctx, x, d, y);
      break;
    default:
      LaunchScaleColumns<__nv_bfloat16>(ctx, x, d, y);
      break;
  }
  return CudaStatus(cudaGetLastError(), "ScaleColumnsKernel launch");
}

absl::Status ColumnDot(GpuContext& ctx, const Tensor& a, const Tensor& b, double beta, Tensor* out) {
  ST_CHECK(out != nullptr);
  ST_RETURN_IF_ERROR(CheckColumnDot(a, b, *out));
  ST_RETURN_IF_ERROR(CheckCuda(ctx, "ColumnDot", {{&a, "ColumnDot a"}, {&b, "ColumnDot b"}, {out, "ColumnDot out"}}));
  if (a.dim(1) == 0) return absl::OkStatus();
  switch (a.dtype()) {
    case DType::kF32:
      LaunchColumnDot<float>(ctx, a, b, beta, out);
      break;
    case DType::kF64:
      LaunchColumnDot<double>(ctx, a, b, beta, out);
      break;
    default:
      LaunchColumnDot<__nv_bfloat16>(ctx, a, b, beta, out);
      break;
  }
  return CudaStatus(cudaGetLastError(), "ColumnDotKernel launch");
}

absl::Status Dropout(GpuContext& ctx, const Tensor& x, double p, uint64_t seed, Tensor* y) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckDropout(x, p, *y));
  ST_RETURN_IF_ERROR(CheckCuda(ctx, "Dropout", {{&x, "Dropout x"}, {y, "Dropout y"}}));
  if (x.numel() == 0) return absl::OkStatus();
  switch (x.dtype()) {
    case DType::kF32:
      LaunchDropout<float>(ctx, x, p, seed, y);
      break;
    case DType::kF64:
      LaunchDropout<double>(ctx, x, p, seed, y);
      break;
    default:
      LaunchDropout<__nv_bfloat16>(ctx, x, p, seed, y);
      break;
  }
  return CudaStatus(cudaGetLastError(), "DropoutKernel launch");
}

}  // namespace sigmatune::kernels::cuda
