// CudaBackend: the ModelBackend (backend.h) on one CUDA device. Every method forwards to the
// kernels::cuda op of the same name (kernels/ops/*.h: shapes, dtypes and errors are theirs) on the
// backend's GpuContext stream, so the model code (llama.cc), the PEFT math (kernels/peft) and the
// trainer run unchanged on a GPU.
//
// Precision: the activation dtype is chosen at Create:
//   kBF16  weights and activations in bf16, every GEMM and reduction accumulating in fp32 (the
//          production setting; attention's log-sum-exp, the loss and the adapters' parameters,
//          gradients and optimizer state stay f32);
//   kF32   everything in f32 without TF32 (METHODS.md section 0): the setting the CUDA-vs-CPU
//          model tests compare at 1e-4.
// The linear algebra of kernels/peft (Svd, Inverse, covariance, ...) takes f32/f64 as on the CPU.
//
// Memory: Allocate/Zeros hand out stream-ordered allocations (cudaMallocAsync from the device's
// default pool, whose release threshold is raised so freed blocks are reused instead of returned
// to the driver); a tensor's memory is freed on the stream when its last reference goes away (a
// tensor may outlive the backend: the destructor drains the stream, later frees are plain).
// ResourceExhausted names the request and the free/total device memory when the device is full.
//
// Synchronisation: ops are only enqueued; the methods that return a host value (DiagonalMean,
// DistanceFromIdentity, CountNonFinite, SumOfSquares, the cross-entropy stats) and Download
// synchronize the stream and report asynchronous errors. Upload copies from pageable host memory.
//
// Only built with CUDA (SIGMATUNE_WITH_CUDA); callers guard their use with
// `#if SIGMATUNE_WITH_CUDA`. Not thread safe (one model drives it); the calling thread must be
// the one that created it (the context's device is made current there).
#ifndef SIGMATUNE_KERNELS_MODEL_BACKEND_CUDA_H_
#define SIGMATUNE_KERNELS_MODEL_BACKEND_CUDA_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"

namespace sigmatune::model {

class CudaBackend final : public ModelBackend {
 public:
  // Device `ordinal` with activations in `activation_dtype` (kBF16 or kF32; InvalidArgument
  // otherwise). Unavailable (with the CUDA runtime's reason) where the device cannot be used.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int ordinal, DType activation_dtype);
  ~CudaBackend() override;

  GpuContext& context() { return *ctx_; }

  Device device() const override { return Device::Cuda(ctx_->ordinal()); }
  DType activation_dtype() const override { return activation_dtype_; }
  absl::StatusOr<Tensor> Allocate(const Shape& shape, DType dtype) override;
  absl::StatusOr<Tensor> Zeros(const Shape& shape, DType dtype) override;
  absl::StatusOr<Tensor> Upload(const Tensor& host) override;
  absl::StatusOr<Tensor> Download(const Tensor& t) override;
  absl::Status Synchronize() override;
  // The high-water mark of the device's default pool (cudaMemPoolAttrUsedMemHigh), where every
  // tensor of this backend is allocated; op workspaces (plain cudaMalloc) are not counted.
  absl::StatusOr<int64_t> PeakDeviceBytes() const override;
  absl::Status Copy(const Tensor& src, Tensor* dst) override;
  absl::Status Axpy(double alpha, const Tensor& x, Tensor* y) override;
  absl::Status Matmul(const Tensor& a, kernels::Transpose ta, const Tensor& b, kernels::Transpose tb, double alpha,
                      double beta, Tensor* c) override;
  absl::Status EmbeddingForward(const Tensor& table, const Tensor& ids, Tensor* out) override;
  absl::Status RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y) override;
  absl::Status RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx) override;
  absl::Status ApplyRope(const Tensor& x, const Tensor& positions, const kernels::RopeConfig& config,
                         kernels::RopeDirection direction, Tensor* out) override;
  absl::Status AttentionForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                Tensor* out, Tensor* lse) override;
  absl::Status AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                 const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor* dq, Tensor* dk,
                                 Tensor* dv) override;
  absl::Status SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out) override;
  absl::Status SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate,
                              Tensor* dup) override;
  absl::StatusOr<kernels::CrossEntropyStats> LmHeadCrossEntropyForward(
      const Tensor& hidden, const Tensor& weight, const Tensor& targets, const kernels::CrossEntropyOptions& options,
      Tensor* dhidden_unit) override;
  absl::Status LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                          const kernels::CrossEntropyOptions& options, double grad_scale,
                                          Tensor* dhidden) override;
  absl::Status Cast(const Tensor& src, Tensor* dst) override;
  absl::Status Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) override;
  absl::Status RandomizedSvd(const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u, Tensor* s,
                             Tensor* vt) override;
  absl::Status Inverse(const Tensor& a, Tensor* inv) override;
  absl::StatusOr<double> DiagonalMean(const Tensor& a) override;
  absl::Status AddScaledIdentity(double alpha, Tensor* a) override;
  absl::StatusOr<double> DistanceFromIdentity(const Tensor& a) override;
  absl::StatusOr<int64_t> CountNonFinite(const Tensor& t) override;
  absl::Status AccumulateCovariance(const Tensor& x, double alpha, Tensor* c, kernels::CovarianceFill fill) override;
  absl::Status SymmetrizeFromUpper(Tensor* c) override;
  absl::Status ScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) override;
  absl::Status ScaleColumns(const Tensor& x, const Tensor& d, Tensor* y) override;
  absl::Status ColumnDot(const Tensor& a, const Tensor& b, double beta, Tensor* out) override;
  absl::Status Dropout(const Tensor& x, double p, uint64_t seed, Tensor* y) override;
  absl::Status AdamWStep(Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                         const kernels::AdamWStepArgs& args) override;
  absl::StatusOr<double> SumOfSquares(const Tensor& x) override;

 private:
  // What the deleters of the tensors Allocate hands out share with the backend (backend_cuda.cc):
  // the stream their memory is freed on. The destructor clears it after draining the stream, so a
  // tensor that outlives the backend is freed with a plain cudaFree instead of on a dead stream.
  struct AllocState;

  CudaBackend(std::unique_ptr<GpuContext> ctx, DType activation_dtype, cudaMemPool_t pool, size_t device_bytes);

  // ResourceExhausted naming the request and the device's free/total memory.
  absl::Status OutOfMemory(const Shape& shape, DType dtype, size_t bytes) const;
  // InvalidArgument naming `what` unless `t` lives on this backend's device.
  absl::Status ExpectHere(const Tensor& t, const char* what) const;

  std::unique_ptr<GpuContext> ctx_;
  DType activation_dtype_;
  cudaMemPool_t pool_;    // the device's default pool, which cudaMallocAsync draws from
  size_t device_bytes_;   // total device memory: larger requests fail without asking the driver
  std::shared_ptr<AllocState> alloc_;
};

}  // namespace sigmatune::model

#endif  // SIGMATUNE_KERNELS_MODEL_BACKEND_CUDA_H_
