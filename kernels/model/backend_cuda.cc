#include "kernels/model/backend_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/adamw.h"
#include "kernels/ops/adapter_ops.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/cast.h"
#include "kernels/ops/covariance.h"
#include "kernels/ops/cross_entropy.h"
#include "kernels/ops/embedding.h"
#include "kernels/ops/inverse.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/matrix_util.h"
#include "kernels/ops/rms_norm.h"
#include "kernels/ops/rope.h"
#include "kernels/ops/rsvd.h"
#include "kernels/ops/segment_scale.h"
#include "kernels/ops/svd.h"
#include "kernels/ops/swiglu.h"

namespace sigmatune::model {

// The deleters may run on any thread and after the backend is gone; the mutex orders a free
// against the destructor retiring the stream.
struct CudaBackend::AllocState {
  std::mutex mu;
  int ordinal = 0;
  cudaStream_t stream = nullptr;  // null once the backend (and so its stream) is gone
};

namespace {

// cuBLAS level-1 routines take an int count; longer vectors go through in pieces of this many
// elements (a multiple of every element size's alignment, well below INT_MAX).
constexpr int64_t kAxpyChunk = int64_t{1} << 30;

// Failed runtime calls leave their code as the thread's "last error", which the next
// GpuContext::Synchronize (cudaGetLastError) would report as if a later kernel had failed. A
// failure that is reported here, as a Status, is therefore cleared.
void ClearLastError() { (void)cudaGetLastError(); }

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int ordinal, DType activation_dtype) {
  if (activation_dtype != DType::kBF16 && activation_dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaBackend: the activation dtype must be bf16 or f32, got ", DTypeName(activation_dtype)));
  }
  ST_ASSIGN_OR_RETURN(std::unique_ptr<GpuContext> ctx, GpuContext::Create(ordinal));
  int pools_supported = 0;
  ST_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&pools_supported, cudaDevAttrMemoryPoolsSupported, ordinal));
  if (pools_supported == 0) {
    return absl::UnavailableError(
        absl::StrCat("CudaBackend: cuda:", ordinal, " does not support stream-ordered allocation (cudaMallocAsync)"));
  }
  cudaMemPool_t pool = nullptr;
  ST_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, ordinal));
  // By default the pool hands freed memory back to the driver at every synchronisation, and each
  // training step synchronizes (the loss is read back): the next step would then map all of its
  // activations afresh. Keeping freed blocks makes the steady state allocation-free.
  uint64_t threshold = std::numeric_limits<uint64_t>::max();
  ST_CUDA_RETURN_IF_ERROR(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  size_t free_bytes = 0, total_bytes = 0;
  ST_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));  // GpuContext::Create made it current
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(ctx), activation_dtype, pool, total_bytes));
}

CudaBackend::CudaBackend(std::unique_ptr<GpuContext> ctx, DType activation_dtype, cudaMemPool_t pool,
                         size_t device_bytes)
    : ctx_(std::move(ctx)),
      activation_dtype_(activation_dtype),
      pool_(pool),
      device_bytes_(device_bytes),
      alloc_(std::make_shared<AllocState>()) {
  alloc_->ordinal = ctx_->ordinal();
  alloc_->stream = ctx_->stream();
}

CudaBackend::~CudaBackend() {
  // Drain the stream before retiring it: frees of tensors that outlive us then go through cudaFree,
  // which (for stream-ordered memory) does not wait for pending work by itself.
  (void)ctx_->Activate();
  (void)cudaStreamSynchronize(ctx_->stream());
  {
    std::lock_guard<std::mutex> lock(alloc_->mu);
    alloc_->stream = nullptr;
  }
  // Give the pool's idle blocks back to the driver, so that memory kept for our reuse does not stay
  // out of reach of whatever runs on the device next.
  (void)cudaMemPoolTrimTo(pool_, 0);
  ClearLastError();
}

absl::Status CudaBackend::ExpectHere(const Tensor& t, const char* what) const { return ExpectOnDevice(*ctx_, t, what); }

absl::Status CudaBackend::OutOfMemory(const Shape& shape, DType dtype, size_t bytes) const {
  size_t free_bytes = 0, total_bytes = 0;
  const cudaError_t code = cudaMemGetInfo(&free_bytes, &total_bytes);
  std::string memory;
  if (code == cudaSuccess) {
    memory = absl::StrCat("device memory: ", free_bytes, " bytes free of ", total_bytes, " total");
  } else {
    memory = absl::StrCat("free memory unknown: cudaMemGetInfo failed: ", cudaGetErrorString(code));
    ClearLastError();
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("CudaBackend::Allocate: out of device memory on cuda:", ctx_->ordinal(), " allocating ", bytes,
                   " bytes for ", DTypeName(dtype), ShapeToString(shape), " (", memory, ")"));
}

absl::Status CudaBackend::Synchronize() { return ctx_->Synchronize(); }

absl::StatusOr<int64_t> CudaBackend::PeakDeviceBytes() const {
  uint64_t high = 0;
  const cudaError_t code = cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &high);
  if (code != cudaSuccess) {
    ClearLastError();
    return CudaStatus(code, "cudaMemPoolGetAttribute(cudaMemPoolAttrUsedMemHigh)");
  }
  return static_cast<int64_t>(high);
}

absl::StatusOr<Tensor> CudaBackend::Allocate(const Shape& shape, DType dtype) {
  // The element count with overflow checks: an absurd shape is a request that cannot fit, not UB.
  bool empty = false;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(absl::StrCat("CudaBackend::Allocate: bad shape ", ShapeToString(shape)));
    }
    empty = empty || dim == 0;
  }
  uint64_t numel = 1;
  bool overflow = false;
  if (!empty) {
    for (int64_t dim : shape) {
      if (numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(dim)) overflow = true;
      numel *= static_cast<uint64_t>(dim);
    }
  }
  const uint64_t elem = SizeOf(dtype);
  overflow = overflow || (!empty && numel > std::numeric_limits<uint64_t>::max() / elem) ||
             (!empty && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  if (overflow) {
    return absl::ResourceExhaustedError(absl::StrCat("CudaBackend::Allocate: ", DTypeName(dtype), ShapeToString(shape),
                                                     " has more bytes than any device holds"));
  }
  const size_t bytes = empty ? 0 : static_cast<size_t>(numel * elem);
  ST_RETURN_IF_ERROR(ctx_->Activate());
  void* data = nullptr;
  if (bytes > 0) {
    // A request beyond the whole device cannot succeed; refuse it without asking the driver (which
    // may report sizes it cannot even represent as other errors than out-of-memory).
    if (bytes > device_bytes_) return OutOfMemory(shape, dtype, bytes);
    const cudaError_t code = cudaMallocAsync(&data, bytes, ctx_->stream());
    if (code == cudaErrorMemoryAllocation) {
      ClearLastError();
      return OutOfMemory(shape, dtype, bytes);
    }
    if (code != cudaSuccess) {
      ClearLastError();
      return CudaStatus(
          code,
          absl::StrCat("cudaMallocAsync of ", bytes, " bytes for ", DTypeName(dtype), ShapeToString(shape)).c_str());
    }
  }
  // Storage does not call the deleter for a null pointer (zero-byte tensors allocate nothing).
  std::shared_ptr<AllocState> state = alloc_;
  auto storage = std::make_shared<Storage>(data, bytes, device(), [state = std::move(state)](void* p) {
    std::lock_guard<std::mutex> lock(state->mu);
    // The free must reach the device this memory belongs to (GpuContext's deleter does the same).
    cudaSetDevice(state->ordinal);
    const cudaError_t code = state->stream != nullptr ? cudaFreeAsync(p, state->stream) : cudaFree(p);
    if (code != cudaSuccess) ClearLastError();  // nowhere to report it; keep it from surfacing later
  });
  return Tensor(std::move(storage), dtype, shape, Tensor::ContiguousStrides(shape), 0);
}

absl::StatusOr<Tensor> CudaBackend::Zeros(const Shape& shape, DType dtype) {
  ST_ASSIGN_OR_RETURN(Tensor t, Allocate(shape, dtype));
  if (t.nbytes() > 0) ST_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), ctx_->stream()));
  return t;
}

absl::StatusOr<Tensor> CudaBackend::Upload(const Tensor& host) {
  // As on the CPU backend, a tensor already where it is wanted (or an undefined one) is not copied.
  if (!host.defined()) return host;
  if (host.device() == device()) {
    if (host.is_contiguous()) return host;
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaBackend::Upload: a strided device tensor cannot be made contiguous, got ", host.DebugString()));
  }
  if (!host.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("CudaBackend::Upload needs a CPU tensor (or one on ",
                                                   device().ToString(), "), got ", host.DebugString()));
  }
  const Tensor src = host.is_contiguous() ? host : host.Contiguous();
  ST_ASSIGN_OR_RETURN(Tensor dst, Allocate(src.shape(), src.dtype()));
  if (src.nbytes() > 0) {
    ST_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyHostToDevice, ctx_->stream()));
    // The source may die when we return, and if it happens to be pinned the copy above has not
    // read it yet: wait for it.
    ST_RETURN_IF_ERROR(ctx_->Synchronize());
  }
  return dst;
}

absl::StatusOr<Tensor> CudaBackend::Download(const Tensor& t) {
  if (!t.defined() || t.device().is_cpu()) return t.is_contiguous() ? t : t.Contiguous();  // as CpuBackend
  ST_RETURN_IF_ERROR(ExpectHere(t, "CudaBackend::Download source"));
  ST_RETURN_IF_ERROR(ctx_->Activate());
  const size_t elem = SizeOf(t.dtype());
  if (t.is_contiguous() || t.numel() == 0) {
    Tensor host = Tensor::Empty(t.shape(), t.dtype());
    if (host.nbytes() > 0) {
      ST_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(host.raw_data(), t.raw_data(), host.nbytes(), cudaMemcpyDeviceToHost, ctx_->stream()));
    }
    ST_RETURN_IF_ERROR(ctx_->Synchronize());
    return host;
  }
  // A strided view (a column slice, a transpose): bring back the span of storage its elements lie
  // in, then gather them on the host with the view's own strides.
  int64_t span = 1;
  for (int d = 0; d < t.rank(); ++d) {
    if (t.stride(d) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("CudaBackend::Download: negative strides are not supported, got ", t.DebugString()));
    }
    span += (t.dim(d) - 1) * t.stride(d);
  }
  const Tensor flat = Tensor::Empty({span}, t.dtype());
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(flat.raw_data(), t.raw_data(), static_cast<size_t>(span) * elem,
                                          cudaMemcpyDeviceToHost, ctx_->stream()));
  ST_RETURN_IF_ERROR(ctx_->Synchronize());
  // The view's storage keeps `flat` (and so its buffer) alive through the deleter's capture.
  auto storage =
      std::make_shared<Storage>(flat.raw_data(), static_cast<size_t>(span) * elem, Device::Cpu(), [flat](void*) {});
  return Tensor(std::move(storage), t.dtype(), t.shape(), t.strides(), 0).Contiguous();
}

absl::Status CudaBackend::Copy(const Tensor& src, Tensor* dst) {
  ST_CHECK(dst != nullptr);
  if (src.shape() != dst->shape() || src.dtype() != dst->dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("copy ", src.DebugString(), " -> ", dst->DebugString()));
  }
  if (!src.is_contiguous() || !dst->is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat("CudaBackend::Copy needs contiguous tensors, got ",
                                                   src.DebugString(), " -> ", dst->DebugString()));
  }
  ST_RETURN_IF_ERROR(ExpectHere(src, "CudaBackend::Copy source"));
  ST_RETURN_IF_ERROR(ExpectHere(*dst, "CudaBackend::Copy destination"));
  const size_t bytes = src.nbytes();
  if (bytes == 0 || src.raw_data() == dst->raw_data()) return absl::OkStatus();
  // cudaMemcpy does not allow overlap (the CPU backend's memmove does); refuse it rather than
  // produce garbage.
  const char* s = static_cast<const char*>(src.raw_data());
  const char* d = static_cast<const char*>(dst->raw_data());
  if (s < d + bytes && d < s + bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaBackend::Copy: source and destination overlap: ", src.DebugString(), " -> ", dst->DebugString()));
  }
  ST_RETURN_IF_ERROR(ctx_->Activate());
  ST_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst->raw_data(), src.raw_data(), bytes, cudaMemcpyDeviceToDevice, ctx_->stream()));
  return absl::OkStatus();
}

absl::Status CudaBackend::Axpy(double alpha, const Tensor& x, Tensor* y) {
  ST_CHECK(y != nullptr);
  const DType dt = x.dtype();
  if (x.shape() != y->shape() || dt != y->dtype() || !x.is_contiguous() || !y->is_contiguous() ||
      (dt != DType::kF32 && dt != DType::kF64 && dt != DType::kBF16)) {
    return absl::InvalidArgumentError(absl::StrCat("axpy needs contiguous f32/f64/bf16 tensors of one shape, got ",
                                                   x.DebugString(), " and ", y->DebugString()));
  }
  ST_RETURN_IF_ERROR(ExpectHere(x, "CudaBackend::Axpy x"));
  ST_RETURN_IF_ERROR(ExpectHere(*y, "CudaBackend::Axpy y"));
  const int64_t n = x.numel();
  if (n == 0) return absl::OkStatus();
  ST_RETURN_IF_ERROR(ctx_->Activate());
  cublasHandle_t handle = ctx_->cublas();
  // alpha is passed from the host; the handle is shared with the ops, so do not rely on its mode.
  ST_CUBLAS_RETURN_IF_ERROR(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
  const size_t elem = SizeOf(dt);
  const char* xs = static_cast<const char*>(x.raw_data());
  char* ys = static_cast<char*>(y->raw_data());
  const float alpha32 = static_cast<float>(alpha);
  for (int64_t begin = 0; begin < n; begin += kAxpyChunk) {
    const int count = static_cast<int>(std::min(kAxpyChunk, n - begin));
    const size_t at = static_cast<size_t>(begin) * elem;
    switch (dt) {
      case DType::kF32:
        ST_CUBLAS_RETURN_IF_ERROR(cublasSaxpy(handle, count, &alpha32, reinterpret_cast<const float*>(xs + at), 1,
                                              reinterpret_cast<float*>(ys + at), 1));
        break;
      case DType::kF64:
        ST_CUBLAS_RETURN_IF_ERROR(cublasDaxpy(handle, count, &alpha, reinterpret_cast<const double*>(xs + at), 1,
                                              reinterpret_cast<double*>(ys + at), 1));
        break;
      default:
        // bf16 vectors with an fp32 alpha and fp32 arithmetic, one rounding of each result.
        ST_CUBLAS_RETURN_IF_ERROR(cublasAxpyEx(handle, count, &alpha32, CUDA_R_32F, xs + at, CUDA_R_16BF, 1, ys + at,
                                               CUDA_R_16BF, 1, CUDA_R_32F));
        break;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Matmul(const Tensor& a, kernels::Transpose ta, const Tensor& b, kernels::Transpose tb,
                                 double alpha, double beta, Tensor* c) {
  return kernels::cuda::Matmul(*ctx_, a, ta, b, tb, alpha, beta, c);
}

absl::Status CudaBackend::EmbeddingForward(const Tensor& table, const Tensor& ids, Tensor* out) {
  return kernels::cuda::EmbeddingForward(*ctx_, table, ids, out);
}

absl::Status CudaBackend::RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y) {
  return kernels::cuda::RmsNormForward(*ctx_, x, w, eps, y);
}

absl::Status CudaBackend::RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx) {
  return kernels::cuda::RmsNormBackward(*ctx_, x, w, eps, dy, dx, nullptr);
}

absl::Status CudaBackend::ApplyRope(const Tensor& x, const Tensor& positions, const kernels::RopeConfig& config,
                                    kernels::RopeDirection direction, Tensor* out) {
  return kernels::cuda::ApplyRope(*ctx_, x, positions, config, direction, out);
}

absl::Status CudaBackend::AttentionForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                           Tensor* out, Tensor* lse) {
  return kernels::cuda::AttentionForward(*ctx_, q, k, v, cu_seqlens, out, lse);
}

absl::Status CudaBackend::AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                            const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor* dq,
                                            Tensor* dk, Tensor* dv) {
  return kernels::cuda::AttentionBackward(*ctx_, q, k, v, cu_seqlens, out, lse, dout, dq, dk, dv);
}

absl::Status CudaBackend::SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out) {
  return kernels::cuda::SwigluForward(*ctx_, gate, up, out);
}

absl::Status CudaBackend::SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate,
                                         Tensor* dup) {
  return kernels::cuda::SwigluBackward(*ctx_, gate, up, dout, dgate, dup);
}

absl::StatusOr<kernels::CrossEntropyStats> CudaBackend::LmHeadCrossEntropyForward(
    const Tensor& hidden, const Tensor& weight, const Tensor& targets, const kernels::CrossEntropyOptions& options,
    Tensor* dhidden_unit) {
  ST_ASSIGN_OR_RETURN(const kernels::CrossEntropyStats stats,
                      kernels::cuda::LmHeadCrossEntropyForward(*ctx_, hidden, weight, targets, options, dhidden_unit));
  // The op synchronizes except on its empty early return; the header promises it always.
  ST_RETURN_IF_ERROR(ctx_->Synchronize());
  return stats;
}

absl::Status CudaBackend::LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                                     const kernels::CrossEntropyOptions& options, double grad_scale,
                                                     Tensor* dhidden) {
  return kernels::cuda::LmHeadCrossEntropyBackward(*ctx_, hidden, weight, targets, options, grad_scale, dhidden,
                                                   nullptr);
}

absl::Status CudaBackend::Cast(const Tensor& src, Tensor* dst) { return kernels::cuda::Cast(*ctx_, src, dst); }

absl::Status CudaBackend::Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) {
  return kernels::cuda::Svd(*ctx_, a, u, s, vt);
}

absl::Status CudaBackend::RandomizedSvd(const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u, Tensor* s,
                                        Tensor* vt) {
  return kernels::cuda::RandomizedSvd(*ctx_, a, rank, niter, seed, u, s, vt);
}

absl::Status CudaBackend::Inverse(const Tensor& a, Tensor* inv) { return kernels::cuda::Inverse(*ctx_, a, inv); }

// The value-returning ops synchronize, except on their early returns for empty inputs; the
// explicit Synchronize after them (free on an idle stream) makes the header's promise hold always.

absl::StatusOr<double> CudaBackend::DiagonalMean(const Tensor& a) {
  ST_ASSIGN_OR_RETURN(const double mean, kernels::cuda::DiagonalMean(*ctx_, a));
  ST_RETURN_IF_ERROR(ctx_->Synchronize());
  return mean;
}

absl::Status CudaBackend::AddScaledIdentity(double alpha, Tensor* a) {
  return kernels::cuda::AddScaledIdentity(*ctx_, alpha, a);
}

absl::StatusOr<double> CudaBackend::DistanceFromIdentity(const Tensor& a) {
  ST_ASSIGN_OR_RETURN(const double distance, kernels::cuda::DistanceFromIdentity(*ctx_, a));
  ST_RETURN_IF_ERROR(ctx_->Synchronize());
  return distance;
}

absl::StatusOr<int64_t> CudaBackend::CountNonFinite(const Tensor& t) {
  ST_ASSIGN_OR_RETURN(const int64_t count, kernels::cuda::CountNonFinite(*ctx_, t));
  ST_RETURN_IF_ERROR(ctx_->Synchronize());
  return count;
}

absl::Status CudaBackend::AccumulateCovariance(const Tensor& x, double alpha, Tensor* c, kernels::CovarianceFill fill) {
  return kernels::cuda::AccumulateCovariance(*ctx_, x, alpha, c, fill);
}

absl::Status CudaBackend::SymmetrizeFromUpper(Tensor* c) { return kernels::cuda::SymmetrizeFromUpper(*ctx_, c); }

absl::Status CudaBackend::ScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) {
  return kernels::cuda::ScaleSegmentsByAbsMax(*ctx_, x, cu_seqlens, y, bad);
}

absl::Status CudaBackend::ScaleColumns(const Tensor& x, const Tensor& d, Tensor* y) {
  return kernels::cuda::ScaleColumns(*ctx_, x, d, y);
}

absl::Status CudaBackend::ColumnDot(const Tensor& a, const Tensor& b, double beta, Tensor* out) {
  return kernels::cuda::ColumnDot(*ctx_, a, b, beta, out);
}

absl::Status CudaBackend::Dropout(const Tensor& x, double p, uint64_t seed, Tensor* y) {
  return kernels::cuda::Dropout(*ctx_, x, p, seed, y);
}

absl::Status CudaBackend::AdamWStep(Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                                    const kernels::AdamWStepArgs& args) {
  return kernels::cuda::AdamWStep(*ctx_, param, grad, exp_avg, exp_avg_sq, args);
}

absl::StatusOr<double> CudaBackend::SumOfSquares(const Tensor& x) {
  ST_ASSIGN_OR_RETURN(const double sum, kernels::cuda::SumOfSquares(*ctx_, x));
  ST_RETURN_IF_ERROR(ctx_->Synchronize());
  return sum;
}

}  // namespace sigmatune::model
