// cuBLAS covariance accumulation. A row-major X [T, n] (leading dimension ld) read column-major
// is M = X^T (n x T, ld), so X^T X = M M^T: SYRK with op N. The row-major upper triangle is the
// column-major lower one.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/covariance.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr int kTile = 32;

// Copies the row-major upper triangle of an n x n matrix onto its lower triangle.
template <typename T>
__global__ void MirrorUpperToLowerKernel(T* c, int64_t n) {
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (row < n && col < row) c[row * n + col] = c[col * n + row];
}

template <typename T>
absl::Status MirrorUpperToLower(const GpuContext& ctx, T* c, int64_t n) {
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile), static_cast<unsigned>((n + kTile - 1) / kTile));
  MirrorUpperToLowerKernel<T><<<grid, block, 0, ctx.stream()>>>(c, n);
  return CudaStatus(cudaGetLastError(), "MirrorUpperToLowerKernel launch");
}

// Widens a row-major [rows, cols] 16-bit matrix with leading dimension ld into contiguous f64.
template <typename In>
__global__ void WidenToDoubleKernel(const In* in, int64_t ld, int64_t rows, int64_t cols, double* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, k = i % cols;
  out[i] = static_cast<double>(static_cast<float>(in[r * ld + k]));
}

}  // namespace

absl::Status SymmetrizeFromUpper(GpuContext& ctx, Tensor* c) {
  ST_CHECK(c != nullptr);
  ST_RETURN_IF_ERROR(CheckSymmetrize(*c));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *c, "symmetrize matrix C"));
  if (c->dim(0) == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx.Activate());
  if (c->dtype() == DType::kF32) return MirrorUpperToLower(ctx, c->data<float>(), c->dim(0));
  return MirrorUpperToLower(ctx, c->data<double>(), c->dim(0));
}

absl::Status AccumulateCovariance(GpuContext& ctx, const Tensor& x, double alpha, Tensor* c, CovarianceFill fill) {
  ST_CHECK(c != nullptr);
  ST_RETURN_IF_ERROR(CheckCovariance(x, *c));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, x, "covariance input X"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *c, "covariance accumulator C"));
  const int64_t tokens = x.dim(0), n = x.dim(1);
  if (tokens == 0 || n == 0) return absl::OkStatus();
  ST_ASSIGN_OR_RETURN(const RowMajorOperand layout, AsRowMajorOperand(x, "covariance input X"));
  for (int64_t v : {tokens, n, layout.ld}) {
    if (v > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("cuda::AccumulateCovariance dimension ", v, " exceeds 2^31-1"));
    }
  }
  ST_RETURN_IF_ERROR(ctx.Activate());
  const int in = static_cast<int>(n), k = static_cast<int>(tokens), ld = static_cast<int>(layout.ld);
  const bool half_input = x.dtype() == DType::kBF16 || x.dtype() == DType::kF16;

  if (c->dtype() == DType::kF64) {
    const double* xd = nullptr;
    Tensor widened;
    int ldd = ld;
    if (x.dtype() == DType::kF64) {
      xd = x.data<double>();
    } else {
      // f32 / bf16 / f16 into an f64 accumulator: widen exactly on the device first.
      ST_ASSIGN_OR_RETURN(widened, ctx.Allocate({tokens, n}, DType::kF64));
      const int64_t total = tokens * n;
      const int threads = 256;
      const unsigned blocks = static_cast<unsigned>((total + threads - 1) / threads);
      if (x.dtype() == DType::kF32) {
        WidenToDoubleKernel<float><<<blocks, threads, 0, ctx.stream()>>>(
            static_cast<const float*>(x.raw_data()), layout.ld, tokens, n, widened.data<double>());
      } else if (x.dtype() == DType::kBF16) {
        WidenToDoubleKernel<__nv_bfloat16><<<blocks, threads, 0, ctx.stream()>>>(
            static_cast<const __nv_bfloat16*>(x.raw_data()), layout.ld, tokens, n, widened.data<double>());
      } else {
        WidenToDoubleKernel<__half><<<blocks, threads, 0, ctx.stream()>>>(
            static_cast<const __half*>(x.raw_data()), layout.ld, tokens, n, widened.data<double>());
      }
      ST_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      xd = widened.data<double>();
      ldd = in;
    }
    const double beta = 1.0;
    ST_CUBLAS_RETURN_IF_ERROR(cublasDsyrk(ctx.cublas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, in, k, &alpha, xd,
                                          ldd, &beta, c->data<double>(), in));
    // `widened` is freed (synchronously) when it goes out of scope, after the queued work.
    return fill == CovarianceFill::kFull ? MirrorUpperToLower(ctx, c->data<double>(), n) : absl::OkStatus();
  }

  const float alpha32 = static_cast<float>(alpha), beta32 = 1.0f;
  if (half_input) {
    // Full GEMM M M^T with fp32 accumulation (both triangles; the mirror makes them bit-equal).
    const cudaDataType_t type = x.dtype() == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
    ST_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, in, in, k, &alpha32,
                                           x.raw_data(), type, ld, x.raw_data(), type, ld, &beta32,
                                           c->raw_data(), CUDA_R_32F, in, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
  } else {
    ST_CUBLAS_RETURN_IF_ERROR(cublasSsyrk(ctx.cublas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, in, k, &alpha32,
                                          x.data<float>(), ld, &beta32, c->data<float>(), in));
  }
  return fill == CovarianceFill::kFull ? MirrorUpperToLower(ctx, c->data<float>(), n) : absl::OkStatus();
}

}  // namespace sigmatune::kernels::cuda
