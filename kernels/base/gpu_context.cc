#include "kernels/base/gpu_context.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace sigmatune {

namespace {

// cudaMalloc, and once more after giving the idle blocks of the device's stream-ordered pool back
// to the driver when it fails: the CUDA model backend allocates activations from that pool and
// keeps freed blocks for reuse, which plain cudaMalloc (op workspaces, solver scratch) cannot use.
cudaError_t MallocTrimmingThePool(int ordinal, cudaStream_t stream, void** data, size_t bytes) {
  cudaError_t code = cudaMalloc(data, bytes);
  if (code != cudaErrorMemoryAllocation) return code;
  (void)cudaGetLastError();  // the failure is retried, not reported later by Synchronize
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, ordinal) != cudaSuccess || cudaStreamSynchronize(stream) != cudaSuccess ||
      cudaMemPoolTrimTo(pool, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    return code;
  }
  code = cudaMalloc(data, bytes);
  if (code != cudaSuccess) (void)cudaGetLastError();
  return code;
}

}  // namespace

absl::Status CudaStatus(cudaError_t code, const char* what) {
  if (code == cudaSuccess) return absl::OkStatus();
  const std::string message =
      absl::StrCat(what, " failed: ", cudaGetErrorName(code), ": ", cudaGetErrorString(code));
  if (code == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  if (code == cudaErrorInsufficientDriver || code == cudaErrorNoDevice ||
      code == cudaErrorInvalidDevice) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

absl::Status CublasStatus(cublasStatus_t code, const char* what) {
  if (code == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrCat(what, " failed: ", cublasGetStatusName(code), ": ",
                                           cublasGetStatusString(code));
  if (code == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  if (code == CUBLAS_STATUS_INVALID_VALUE) return absl::InvalidArgumentError(message);
  return absl::InternalError(message);
}

absl::Status CusolverStatus(cusolverStatus_t code, const char* what) {
  if (code == CUSOLVER_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrCat(what, " failed with cusolverStatus_t ", static_cast<int>(code));
  if (code == CUSOLVER_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  if (code == CUSOLVER_STATUS_INVALID_VALUE) return absl::InvalidArgumentError(message);
  return absl::InternalError(message);
}

absl::StatusOr<std::unique_ptr<GpuContext>> GpuContext::Create(int ordinal) {
  int count = 0;
  ST_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  if (ordinal < 0 || ordinal >= count) {
    return absl::UnavailableError(
        absl::StrCat("CUDA device ", ordinal, " requested but ", count, " device(s) are visible"));
  }
  std::unique_ptr<GpuContext> ctx(new GpuContext(ordinal));
  ST_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal));
  ST_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&ctx->stream_, cudaStreamNonBlocking));
  ST_CUBLAS_RETURN_IF_ERROR(cublasCreate(&ctx->cublas_));
  ST_CUBLAS_RETURN_IF_ERROR(cublasSetStream(ctx->cublas_, ctx->stream_));
  // Default math: fp32 GEMMs stay fp32 (no TF32, which would perturb the small singular
  // directions KPM relies on, METHODS.md §0); bf16/f16 inputs still use tensor cores.
  ST_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(ctx->cublas_, CUBLAS_DEFAULT_MATH));
  ST_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&ctx->cublas_lt_));
  ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnCreate(&ctx->cusolver_));
  ST_CUSOLVER_RETURN_IF_ERROR(cusolverDnSetStream(ctx->cusolver_, ctx->stream_));
  return ctx;
}

GpuContext::~GpuContext() {
  cudaSetDevice(ordinal_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (cusolver_ != nullptr) cusolverDnDestroy(cusolver_);
  if (cublas_lt_ != nullptr) cublasLtDestroy(cublas_lt_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status GpuContext::Activate() const { return CudaStatus(cudaSetDevice(ordinal_), "cudaSetDevice"); }

absl::Status GpuContext::Synchronize() const {
  ST_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return CudaStatus(cudaGetLastError(), "a kernel on this stream");
}

absl::StatusOr<Tensor> GpuContext::Allocate(const Shape& shape, DType dtype) const {
  ST_RETURN_IF_ERROR(Activate());
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * SizeOf(dtype);
  void* data = nullptr;
  if (bytes > 0) {
    const cudaError_t code = MallocTrimmingThePool(ordinal_, stream_, &data, bytes);
    if (code != cudaSuccess) {
      return CudaStatus(code, absl::StrCat("cudaMalloc of ", bytes, " bytes for ", DTypeName(dtype),
                                           ShapeToString(shape))
                                  .c_str());
    }
  }
  const int ordinal = ordinal_;
  auto storage = std::make_shared<Storage>(data, bytes, Device::Cuda(ordinal), [ordinal](void* p) {
    cudaSetDevice(ordinal);
    cudaFree(p);
  });
  return Tensor(std::move(storage), dtype, shape, Tensor::ContiguousStrides(shape), 0);
}

absl::StatusOr<Tensor> GpuContext::Zeros(const Shape& shape, DType dtype) const {
  ST_ASSIGN_OR_RETURN(Tensor t, Allocate(shape, dtype));
  if (t.nbytes() > 0) {
    ST_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), stream_));
  }
  return t;
}

absl::StatusOr<Tensor> GpuContext::ToDevice(const Tensor& host) const {
  if (!host.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("ToDevice needs a CPU tensor, got ", host.DebugString()));
  }
  const Tensor src = host.is_contiguous() ? host : host.Contiguous();
  ST_ASSIGN_OR_RETURN(Tensor dst, Allocate(src.shape(), src.dtype()));
  if (src.nbytes() > 0) {
    ST_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyHostToDevice, stream_));
    // The host buffer may die when we return: finish the copy first.
    ST_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  }
  return dst;
}

absl::StatusOr<Tensor> GpuContext::ToHost(const Tensor& device) const {
  ST_RETURN_IF_ERROR(ExpectOnDevice(*this, device, "ToHost source"));
  if (!device.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ToHost needs a contiguous device tensor, got ", device.DebugString()));
  }
  Tensor host = Tensor::Empty(device.shape(), device.dtype());
  if (host.nbytes() > 0) {
    ST_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host.raw_data(), device.raw_data(), host.nbytes(), cudaMemcpyDeviceToHost, stream_));
  }
  ST_RETURN_IF_ERROR(Synchronize());
  return host;
}

absl::StatusOr<void*> GpuContext::Workspace(size_t bytes) {
  if (bytes <= workspace_bytes_) return workspace_;
  ST_RETURN_IF_ERROR(Activate());
  ST_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));  // the old buffer may be in use
  if (workspace_ != nullptr) ST_CUDA_RETURN_IF_ERROR(cudaFree(workspace_));
  workspace_ = nullptr;
  workspace_bytes_ = 0;
  const cudaError_t code = MallocTrimmingThePool(ordinal_, stream_, &workspace_, bytes);
  if (code != cudaSuccess) {
    workspace_ = nullptr;
    return CudaStatus(code, absl::StrCat("cudaMalloc of a ", bytes, "-byte workspace").c_str());
  }
  workspace_bytes_ = bytes;
  return workspace_;
}

cudaDataType_t CudaDataType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kF64:
      return CUDA_R_64F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kI32:
    case DType::kI64:
      break;
  }
  ST_CHECK(false) << "no CUDA floating type for " << DTypeName(dtype);
  return CUDA_R_32F;
}

absl::Status ExpectOnDevice(const GpuContext& ctx, const Tensor& t, const char* what) {
  if (t.defined() && t.device() == Device::Cuda(ctx.ordinal())) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be on cuda:", ctx.ordinal(), ", got ",
                                                 t.DebugString()));
}

}  // namespace sigmatune
