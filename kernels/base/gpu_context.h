// GpuContext: one CUDA device, one stream, and the cuBLAS / cuSOLVER handles bound to it.
// Every CUDA op takes a GpuContext& and enqueues its work on ctx.stream(); results are ready
// after ctx.Synchronize() (ToHost synchronizes for you).
//
// Only built when the CUDA toolkit was found at build time (SIGMATUNE_WITH_CUDA); code that
// must also build without CUDA guards its use with `#if SIGMATUNE_WITH_CUDA`.
// A context is not thread safe; use one per thread.
#ifndef SIGMATUNE_KERNELS_BASE_GPU_CONTEXT_H_
#define SIGMATUNE_KERNELS_BASE_GPU_CONTEXT_H_

#include <memory>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <library_types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"

namespace sigmatune {

// Turn a CUDA library return code into a Status naming the call that failed.
absl::Status CudaStatus(cudaError_t code, const char* what);
absl::Status CublasStatus(cublasStatus_t code, const char* what);
absl::Status CusolverStatus(cusolverStatus_t code, const char* what);

#define ST_CUDA_RETURN_IF_ERROR(expr) ST_RETURN_IF_ERROR(::sigmatune::CudaStatus((expr), #expr))
#define ST_CUBLAS_RETURN_IF_ERROR(expr) ST_RETURN_IF_ERROR(::sigmatune::CublasStatus((expr), #expr))
#define ST_CUSOLVER_RETURN_IF_ERROR(expr) \
  ST_RETURN_IF_ERROR(::sigmatune::CusolverStatus((expr), #expr))

class GpuContext {
 public:
  // Unavailable (with the CUDA runtime's reason) when the device cannot be used, e.g. on a
  // machine without a driver: "CUDA driver version is insufficient for CUDA runtime version".
  static absl::StatusOr<std::unique_ptr<GpuContext>> Create(int ordinal);

  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;
  ~GpuContext();

  int ordinal() const { return ordinal_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cublasLtHandle_t cublas_lt() const { return cublas_lt_; }
  cusolverDnHandle_t cusolver() const { return cusolver_; }

  // Makes this context's device current on the calling thread.
  absl::Status Activate() const;
  // Waits for all work enqueued on the stream; reports asynchronous kernel errors.
  absl::Status Synchronize() const;

  // Uninitialised / zeroed contiguous device tensors. ResourceExhausted when the device is full.
  absl::StatusOr<Tensor> Allocate(const Shape& shape, DType dtype) const;
  absl::StatusOr<Tensor> Zeros(const Shape& shape, DType dtype) const;
  // Copies a CPU tensor (any layout) to a new contiguous device tensor.
  absl::StatusOr<Tensor> ToDevice(const Tensor& host) const;
  // Copies a contiguous device tensor to a new CPU tensor; synchronizes the stream.
  absl::StatusOr<Tensor> ToHost(const Tensor& device) const;

  // Scratch device memory of at least `bytes`, reused across calls (grows, never shrinks).
  // Valid until the next Workspace() call on this context.
  absl::StatusOr<void*> Workspace(size_t bytes);

 private:
  explicit GpuContext(int ordinal) : ordinal_(ordinal) {}

  int ordinal_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublas_lt_ = nullptr;
  cusolverDnHandle_t cusolver_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

// The CUDA library element type of a floating dtype (f32, f64, bf16, f16); CHECK-fails on
// integer dtypes, which no cuBLAS/cuSOLVER call here takes.
cudaDataType_t CudaDataType(DType dtype);

// Checks that `t` lives on this context's device; InvalidArgument naming `what` otherwise.
absl::Status ExpectOnDevice(const GpuContext& ctx, const Tensor& t, const char* what);

}  // namespace sigmatune

#endif  // SIGMATUNE_KERNELS_BASE_GPU_CONTEXT_H_
