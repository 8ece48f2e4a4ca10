// The CUDA randomized SVD: rsvd_impl.h's algorithm over cuBLAS Matmul and cuSOLVER Qr / Svd. The
// Gaussian start matrix is made on the host (same bits as the CPU version) and uploaded.
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"
#include "kernels/ops/linalg_util_cuda.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/qr.h"
#include "kernels/ops/rsvd.h"
#include "kernels/ops/rsvd_impl.h"
#include "kernels/ops/svd.h"

namespace sigmatune::kernels::cuda {
namespace {

class CudaBackend {
 public:
  CudaBackend(GpuContext& ctx, SvdSolver solver) : ctx_(ctx), solver_(solver) {}
  absl::StatusOr<Tensor> Allocate(const Shape& shape, DType dtype) { return ctx_.Allocate(shape, dtype); }
  absl::StatusOr<Tensor> Upload(const Tensor& host) { return ctx_.ToDevice(host); }
  absl::Status ExpectFinite(const Tensor& t, const char* what) { return ExpectFiniteOnDevice(ctx_, t, what); }
  absl::Status Matmul(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, Tensor* c) {
    return cuda::Matmul(ctx_, a, ta, b, tb, 1.0, 0.0, c);
  }
  absl::Status Qr(const Tensor& a, Tensor* q, Tensor* r) { return cuda::Qr(ctx_, a, q, r); }
  absl::Status Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) { return cuda::Svd(ctx_, a, u, s, vt, solver_); }
  // The last Matmul is only enqueued, and the scratch it reads is freed when the algorithm returns.
  absl::Status Finish() { return ctx_.Synchronize(); }

 private:
  GpuContext& ctx_;
  SvdSolver solver_;
};

}  // namespace

absl::Status RandomizedSvd(GpuContext& ctx, const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u,
                           Tensor* s, Tensor* vt, SvdSolver solver) {
  ST_CHECK(u != nullptr && s != nullptr && vt != nullptr);
  ST_RETURN_IF_ERROR(CheckRandomizedSvd(a, rank, niter, *u, *s, *vt));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, a, "randomized svd input A"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *u, "randomized svd output U"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *s, "randomized svd output S"));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *vt, "randomized svd output Vt"));
  ST_RETURN_IF_ERROR(ctx.Activate());
  CudaBackend backend(ctx, solver);
  return internal::RandomizedSvdImpl(backend, a, rank, niter, seed, u, s, vt);
}

}  // namespace sigmatune::kernels::cuda
