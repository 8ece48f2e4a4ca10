#include <cblas.h>

#include "absl/strings/str_cat.h"
#include "kernels/model/backend.h"
#include "kernels/ops/adapter_ops.h"
#include "kernels/ops/cast.h"
#include "kernels/ops/covariance.h"
#include "kernels/ops/embedding.h"
#include "kernels/ops/inverse.h"
#include "kernels/ops/matrix_util.h"
#include "kernels/ops/matmul.h"
#include "kernels/ops/rms_norm.h"
#include "kernels/ops/rsvd.h"
#include "kernels/ops/segment_scale.h"
#include "kernels/ops/svd.h"
#include "kernels/ops/swiglu.h"

namespace sigmatune::model {

absl::StatusOr<Tensor> CpuBackend::Allocate(const Shape& shape, DType dtype) { return Tensor::Empty(shape, dtype); }

absl::StatusOr<Tensor> CpuBackend::Zeros(const Shape& shape, DType dtype) { return Tensor::Zeros(shape, dtype); }

absl::StatusOr<Tensor> CpuBackend::Upload(const Tensor& host) {
  if (!host.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("CpuBackend::Upload needs a CPU tensor, got ", host.DebugString()));
  }
  return host.is_contiguous() ? host : host.Contiguous();
}

absl::StatusOr<Tensor> CpuBackend::Download(const Tensor& t) { return Upload(t); }

absl::Status CpuBackend::Copy(const Tensor& src, Tensor* dst) {
  if (src.shape() != dst->shape() || src.dtype() != dst->dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("copy ", src.DebugString(), " -> ", dst->DebugString()));
  }
  dst->CopyFrom(src);
  return absl::OkStatus();
}

absl::Status CpuBackend::Axpy(double alpha, const Tensor& x, Tensor* y) {
  if (x.shape() != y->shape() || x.dtype() != y->dtype() || !x.is_contiguous() || !y->is_contiguous() ||
      (x.dtype() != DType::kF32 && x.dtype() != DType::kF64)) {
    return absl::InvalidArgumentError(absl::StrCat("axpy needs contiguous f32/f64 tensors of one shape, got ",
                                                   x.DebugString(), " and ", y->DebugString()));
  }
  if (x.dtype() == DType::kF32) {
    cblas_saxpy(x.numel(), static_cast<float>(alpha), x.data<float>(), 1, y->data<float>(), 1);
  } else {
    cblas_daxpy(x.numel(), alpha, x.data<double>(), 1, y->data<double>(), 1);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Matmul(const Tensor& a, kernels::Transpose ta, const Tensor& b, kernels::Transpose tb,
                                double alpha, double beta, Tensor* c) {
  return kernels::cpu::Matmul(a, ta, b, tb, alpha, beta, c);
}

absl::Status CpuBackend::EmbeddingForward(const Tensor& table, const Tensor& ids, Tensor* out) {
  return kernels::cpu::EmbeddingForward(table, ids, out);
}

absl::Status CpuBackend::RmsNormForward(const Tensor& x, const Tensor& w, double eps, Tensor* y) {
  return kernels::cpu::RmsNormForward(x, w, eps, y);
}

absl::Status CpuBackend::RmsNormBackward(const Tensor& x, const Tensor& w, double eps, const Tensor& dy, Tensor* dx) {
  return kernels::cpu::RmsNormBackward(x, w, eps, dy, dx, nullptr);
}

absl::Status CpuBackend::ApplyRope(const Tensor& x, const Tensor& positions, const kernels::RopeConfig& config,
                                   kernels::RopeDirection direction, Tensor* out) {
  return kernels::cpu::ApplyRope(x, positions, config, direction, out);
}

absl::Status CpuBackend::AttentionForward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                                          Tensor* out, Tensor* lse) {
  return kernels::cpu::AttentionForward(q, k, v, cu_seqlens, out, lse);
}

absl::Status CpuBackend::AttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& cu_seqlens, const Tensor& out, const Tensor& lse,
                                           const Tensor& dout, Tensor* dq, Tensor* dk, Tensor* dv) {
  return kernels::cpu::AttentionBackward(q, k, v, cu_seqlens, out, lse, dout, dq, dk, dv);
}

absl::Status CpuBackend::SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out) {
  return kernels::cpu::SwigluForward(gate, up, out);
}

absl::Status CpuBackend::SwigluBackward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor* dgate,
                                        Tensor* dup) {
  return kernels::cpu::SwigluBackward(gate, up, dout, dgate, dup);
}

absl::StatusOr<kernels::CrossEntropyStats> CpuBackend::LmHeadCrossEntropyForward(
    const Tensor& hidden, const Tensor& weight, const Tensor& targets, const kernels::CrossEntropyOptions& options) {
  return kernels::cpu::LmHeadCrossEntropyForward(hidden, weight, targets, options);
}

absl::Status CpuBackend::LmHeadCrossEntropyBackward(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                                    const kernels::CrossEntropyOptions& options, double grad_scale,
                                                    Tensor* dhidden) {
  return kernels::cpu::LmHeadCrossEntropyBackward(hidden, weight, targets, options, grad_scale, dhidden, nullptr);
}

absl::Status CpuBackend::Cast(const Tensor& src, Tensor* dst) { return kernels::cpu::Cast(src, dst); }

absl::Status CpuBackend::Svd(const Tensor& a, Tensor* u, Tensor* s, Tensor* vt) {
  return kernels::cpu::Svd(a, u, s, vt);
}

absl::Status CpuBackend::RandomizedSvd(const Tensor& a, int64_t rank, int niter, uint64_t seed, Tensor* u, Tensor* s,
                                       Tensor* vt) {
  return kernels::cpu::RandomizedSvd(a, rank, niter, seed, u, s, vt);
}

absl::Status CpuBackend::Inverse(const Tensor& a, Tensor* inv) { return kernels::cpu::Inverse(a, inv); }

absl::StatusOr<double> CpuBackend::DiagonalMean(const Tensor& a) { return kernels::cpu::DiagonalMean(a); }

absl::Status CpuBackend::AddScaledIdentity(double alpha, Tensor* a) {
  return kernels::cpu::AddScaledIdentity(alpha, a);
}

absl::StatusOr<double> CpuBackend::DistanceFromIdentity(const Tensor& a) {
  return kernels::cpu::DistanceFromIdentity(a);
}

absl::StatusOr<int64_t> CpuBackend::CountNonFinite(const Tensor& t) { return kernels::cpu::CountNonFinite(t); }

absl::Status CpuBackend::AccumulateCovariance(const Tensor& x, double alpha, Tensor* c,
                                              kernels::CovarianceFill fill) {
  return kernels::cpu::AccumulateCovariance(x, alpha, c, fill);
}

absl::Status CpuBackend::SymmetrizeFromUpper(Tensor* c) { return kernels::cpu::SymmetrizeFromUpper(c); }

absl::Status CpuBackend::ScaleSegmentsByAbsMax(const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) {
  return kernels::cpu::ScaleSegmentsByAbsMax(x, cu_seqlens, y, bad);
}

absl::Status CpuBackend::ScaleColumns(const Tensor& x, const Tensor& d, Tensor* y) {
  return kernels::cpu::ScaleColumns(x, d, y);
}

absl::Status CpuBackend::ColumnDot(const Tensor& a, const Tensor& b, double beta, Tensor* out) {
  return kernels::cpu::ColumnDot(a, b, beta, out);
}

absl::Status CpuBackend::Dropout(const Tensor& x, double p, uint64_t seed, Tensor* y) {
  return kernels::cpu::Dropout(x, p, seed, y);
}

}  // namespace sigmatune::model
