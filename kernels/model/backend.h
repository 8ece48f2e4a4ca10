// The ops the LLaMA engine needs, behind one interface, so the model code (llama.cc) is written
// once for every device. CpuBackend (fp32, OpenBLAS + the kernels::cpu references) is here; the
// CUDA backend (bf16 weights/activations, fp32 accumulation) implements the same interface with
// the kernels::cuda ops.
//
// Every method forwards to the op of the same name in kernels/ops (see those headers for shapes,
// dtypes and errors) on this backend's device. The model (llama.h) uses the first group; the
// PEFT statistics, decompositions and adapters (kernels/peft) use the second.
#ifndef SIGMATUNE_KERNELS_MODEL_BACKEND_H_
#define SIGMATUNE_KERNELS_MODEL_BACKEND_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/ops/adamw.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/covariance.h"
#include "kernels/ops/cpu_context.h"
#include "kernels/ops/cross_entropy.h"
#include "kernels/ops/rope.h"

namespace sigmatune::model {

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;

  virtual Device device() const = 0;
  // The dtype activations are kept in (f32 on the CPU).
  virtual DType activation_dtype() const = 0;

  virtual absl::StatusOr<Tensor> Allocate(const Shape& shape, DType dtype) = 0;
  virtual absl::StatusOr<Tensor> Zeros(const Shape& shape, DType dtype) = 0;
  // A copy of a CPU tensor on this device (the same tensor on the CPU backend is not copied).
  virtual absl::StatusOr<Tensor> Upload(const Tensor& host) = 0;
  virtual absl::StatusOr<Tensor> Download(const Tensor& t) = 0;
  // Waits for every op enqueued so far (a device backend's ops are asynchronous; the CPU's are
  // done when they return) and reports their asynchronous errors. For timing and hand-offs.
  virtual absl::Status Synchronize() { return absl::OkStatus(); }
  // The most device memory this backend's tensors held at once so far, in bytes (for reports);
  // Unimplemented on a host backend.
  virtual absl::StatusOr<int64_t> PeakDeviceBytes() const {
    return absl::UnimplementedError("a host backend has no device memory");
  }
  // dst = src (same shape and dtype, contiguous).
  virtual absl::Status Copy(const Tensor& src, Tensor* dst) = 0;
  // y += alpha * x (same shape and dtype, contiguous).
  virtual absl::Status Axpy(double alpha, const Tensor& x, Tensor* y) = 0;

  virtual absl::Status Matmul(const Tensor& a, kernels::Transpose ta, const Tensor& b, kernels::Transpose tb,
                              double alpha, double beta, Tensor* c) = 0;
  virtual absl::Status EmbeddingForward(const Tensor& table, const Tensor& ids, Tensor* out) = 0;
  virtual absl::Status RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y) = 0;
  virtual absl::Status RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx) = 0;
  virtual absl::Status ApplyRope(const Tensor& x, const Tensor& positions, const kernels::RopeConfig& config,
                                 kernels::RopeDirection direction, Tensor* out) = 0;
  virtual absl::Status AttentionForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                        Tensor* out, Tensor* lse) = 0;
  virtual absl::Status AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                         const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor* dq,
                                         Tensor* dk, Tensor* dv) = 0;
  virtual absl::Status SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out) = 0;
  virtual absl::Status SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate,
                                      Tensor* dup) = 0;
  // dhidden_unit may be null (see kernels/ops/cross_entropy.h).
  virtual absl::StatusOr<kernels::CrossEntropyStats> LmHeadCrossEntropyForward(
      const Tensor& hidden, const Tensor& weight, const Tensor& targets, const kernels::CrossEntropyOptions& options,
      Tensor* dhidden_unit) = 0;
  virtual absl::Status LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                                  const kernels::CrossEntropyOptions& options, double grad_scale,
                                                  Tensor* dhidden) = 0;

  // --- Linear algebra and the adapter/statistics ops of kernels/peft (f32 and f64 everywhere). ---
  virtual absl::Status Cast(const Tensor& src, Tensor* dst) = 0;
  virtual absl::Status Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) = 0;
  virtual absl::Status RandomizedSvd(const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u, Tensor* s,
                                     Tensor* vt) = 0;
  virtual absl::Status Inverse(const Tensor& a, Tensor* inv) = 0;
  virtual absl::StatusOr<double> DiagonalMean(const Tensor& a) = 0;
  virtual absl::Status AddScaledIdentity(double alpha, Tensor* a) = 0;
  virtual absl::StatusOr<double> DistanceFromIdentity(const Tensor& a) = 0;
  virtual absl::StatusOr<int64_t> CountNonFinite(const Tensor& t) = 0;
  virtual absl::Status AccumulateCovariance(const Tensor& x, double alpha, Tensor* c, kernels::CovarianceFill fill) = 0;
  virtual absl::Status SymmetrizeFromUpper(Tensor* c) = 0;
  virtual absl::Status ScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) = 0;
  virtual absl::Status ScaleColumns(const Tensor& x, const Tensor& d, Tensor* y) = 0;
  virtual absl::Status ColumnDot(const Tensor& a, const Tensor& b, double beta, Tensor* out) = 0;
  virtual absl::Status Dropout(const Tensor& x, double p, uint64_t seed, Tensor* y) = 0;
  // The optimizer step of adapter training (worker/train/optimizer.h).
  virtual absl::Status AdamWStep(Tensor* param, const Tensor& grad, Tensor* exp_avg, Tensor* exp_avg_sq,
                                 const kernels::AdamWStepArgs& args) = 0;
  virtual absl::StatusOr<double> SumOfSquares(const Tensor& x) = 0;
};

// fp32 on the host: OpenBLAS GEMMs and the kernels::cpu reference ops. It owns the
// kernels::CpuContext the ops run with (a thread pool for their row/elementwise loops: GEMMs use
// OpenBLAS's own threads and the two never run at the same time; a reusable scratch workspace) and
// a cache of the buffers Allocate/Zeros hand out: a freed buffer of 64 KiB or more is kept (up to
// 2 GiB of them) for the next request of its size class (four classes per power of two), so the
// activations of one step reuse the memory of the previous one instead of faulting in fresh pages.
// Not thread safe (one model at a time drives it).
class CpuBackend final : public ModelBackend {
 public:
  // As many threads as OpenBLAS uses (openblas_get_num_threads(): OPENBLAS_NUM_THREADS or the cores).
  CpuBackend();
  // num_threads >= 1 (1: every loop on the calling thread).
  explicit CpuBackend(int num_threads);
  ~CpuBackend() override;

  Device device() const override { return Device::Cpu(); }
  DType activation_dtype() const override { return DType::kF32; }
  absl::StatusOr<Tensor> Allocate(const Shape& shape, DType dtype) override;
  absl::StatusOr<Tensor> Zeros(const Shape& shape, DType dtype) override;
  absl::StatusOr<Tensor> Upload(const Tensor& host) override;
  absl::StatusOr<Tensor> Download(const Tensor& t) override;
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
  class BufferCache;

  std::unique_ptr<kernels::CpuContext> ctx_;
  std::shared_ptr<BufferCache> cache_;
};

}  // namespace sigmatune::model

#endif  // SIGMATUNE_KERNELS_MODEL_BACKEND_H_
