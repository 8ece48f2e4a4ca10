#include "kernels/peft/adapter.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"

namespace sigmatune::peft {
namespace {

using kernels::Transpose;

// The parameters' dtypes (AdamW steps f32 and f64).
bool IsParamDType(DType dtype) { return dtype == DType::kF32 || dtype == DType::kF64; }

// The activation dtypes an adapter with `param` parameters accepts: its own, and the 16-bit
// floats of a half-precision model when the parameters are f32.
bool IsActivationDType(DType activation, DType param) {
  return activation == param ||
         (param == DType::kF32 && (activation == DType::kBF16 || activation == DType::kF16));
}

// InvalidArgument unless `t` is a defined contiguous tensor of `dtype` on `device` shaped `shape`.
absl::Status CheckOperand(const Tensor& t, const char* what, const Shape& shape, DType dtype, Device device) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: ", what, " is undefined"));
  if (t.shape() != shape || t.dtype() != dtype || !t.is_contiguous() || !(t.device() == device)) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: ", what, " must be a contiguous ",
                                                   DTypeName(dtype), " tensor of shape ", ShapeToString(shape),
                                                   " on the adapter's device, got ", t.DebugString()));
  }
  return absl::OkStatus();
}

// drop(x): x itself when p == 0, else a new tensor masked and scaled by the backend's Dropout.
absl::StatusOr<Tensor> DroppedInput(model::ModelBackend& backend, const Tensor& x, double p, uint64_t seed) {
  if (p == 0.0) return x;
  ST_ASSIGN_OR_RETURN(Tensor xd, backend.Allocate(x.shape(), x.dtype()));
  ST_RETURN_IF_ERROR(backend.Dropout(x, p, seed, &xd));
  return xd;
}

// x [T, n] and out [T, out_cols], contiguous, on the parameters' device, of one activation dtype
// the parameters accept (IsActivationDType).
absl::Status CheckActivations(const Tensor& a, const Tensor& x, const Tensor& out, const char* out_name,
                              int64_t out_cols) {
  if (!x.defined() || x.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: x must be [T, ", a.dim(1), "], got ",
                                                   x.defined() ? x.DebugString() : "undefined"));
  }
  if (!IsActivationDType(x.dtype(), a.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: x is ", DTypeName(x.dtype()), " but the ",
                                                   DTypeName(a.dtype()),
                                                   " parameters take activations of their own dtype "
                                                   "(or bf16/f16 with f32 parameters)"));
  }
  ST_RETURN_IF_ERROR(CheckOperand(x, "x", {x.dim(0), a.dim(1)}, x.dtype(), a.device()));
  return CheckOperand(out, out_name, {x.dim(0), out_cols}, x.dtype(), a.device());
}

// `t` in `dtype`: itself when it already is, else a widened copy.
absl::StatusOr<Tensor> InDType(model::ModelBackend& backend, const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  ST_ASSIGN_OR_RETURN(Tensor wide, backend.Allocate(t.shape(), dtype));
  ST_RETURN_IF_ERROR(backend.Cast(t, &wide));
  return wide;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LowRankAdapter>> LowRankAdapter::Create(model::ModelBackend* backend, const Tensor& a,
                                                                      const Tensor& b, const Tensor& d, double scale,
                                                                      double dropout) {
  ST_CHECK(backend != nullptr);
  if (!a.defined() || !b.defined() || a.rank() != 2 || b.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: a [r, n] and b [m, r] must be matrices, got a ",
                                                   a.DebugString(), ", b ", b.DebugString()));
  }
  const int64_t r = a.dim(0);
  if (r < 1 || b.dim(1) != r || a.dim(1) < 1 || b.dim(0) < 1) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: rank mismatch: a ", ShapeToString(a.shape()),
                                                   " (r = rows), b ", ShapeToString(b.shape()),
                                                   " (r = columns), r >= 1"));
  }
  if (!IsParamDType(a.dtype()) || b.dtype() != a.dtype() || (d.defined() && d.dtype() != a.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: a, b and d must share one f32/f64 dtype, got a ",
                                                   a.DebugString(), ", b ", b.DebugString(),
                                                   d.defined() ? absl::StrCat(", d ", d.DebugString()) : ""));
  }
  const Device device = backend->device();
  if (!(a.device() == device) || !(b.device() == device) || (d.defined() && !(d.device() == device))) {
    return absl::InvalidArgumentError("LowRankAdapter: a, b and d must live on the backend's device");
  }
  if (d.defined() && d.shape() != Shape{r}) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: d must have shape [", r, "] (the rank), got ",
                                                   ShapeToString(d.shape())));
  }
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: scale must be finite, got ", scale));
  }
  if (!(dropout >= 0.0 && dropout < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("LowRankAdapter: dropout must be in [0, 1), got ", dropout));
  }

  std::unique_ptr<LowRankAdapter> adapter(new LowRankAdapter(backend, scale, dropout));
  auto copy_of = [&](const Tensor& src, Tensor* dst) -> absl::Status {
    ST_ASSIGN_OR_RETURN(*dst, backend->Allocate(src.shape(), src.dtype()));
    return backend->Copy(src, dst);
  };
  ST_RETURN_IF_ERROR(copy_of(a, &adapter->a_));
  ST_RETURN_IF_ERROR(copy_of(b, &adapter->b_));
  if (d.defined()) ST_RETURN_IF_ERROR(copy_of(d, &adapter->d_));
  ST_ASSIGN_OR_RETURN(adapter->grad_a_, backend->Zeros(a.shape(), a.dtype()));
  ST_ASSIGN_OR_RETURN(adapter->grad_b_, backend->Zeros(b.shape(), b.dtype()));
  if (d.defined()) {
    ST_ASSIGN_OR_RETURN(adapter->grad_d_, backend->Zeros(d.shape(), d.dtype()));
  }
  return adapter;
}

absl::Status LowRankAdapter::Forward(const Tensor& x, Tensor* y) {
  ST_CHECK(y != nullptr);
  ST_RETURN_IF_ERROR(CheckActivations(a_, x, *y, "y", b_.dim(0)));
  const int64_t t = x.dim(0), r = rank();
  if (t == 0) return absl::OkStatus();
  // A half-precision model: the math in the parameters' dtype on widened copies (see the header).
  ST_ASSIGN_OR_RETURN(const Tensor xw, InDType(*backend_, x, a_.dtype()));
  ST_ASSIGN_OR_RETURN(Tensor yw, InDType(*backend_, *y, a_.dtype()));
  ST_ASSIGN_OR_RETURN(const Tensor xd, DroppedInput(*backend_, xw, active_dropout(), dropout_seed_));
  // u = drop(x) A^T [T, r]; v = u diag(d); y += s v B^T.
  ST_ASSIGN_OR_RETURN(Tensor u, backend_->Allocate({t, r}, a_.dtype()));
  ST_RETURN_IF_ERROR(backend_->Matmul(xd, Transpose::kNo, a_, Transpose::kYes, 1.0, 0.0, &u));
  if (d_.defined()) ST_RETURN_IF_ERROR(backend_->ScaleColumns(u, d_, &u));
  ST_RETURN_IF_ERROR(backend_->Matmul(u, Transpose::kNo, b_, Transpose::kYes, scale_, 1.0, &yw));
  return yw.dtype() == y->dtype() ? absl::OkStatus() : backend_->Cast(yw, y);
}

absl::Status LowRankAdapter::Backward(const Tensor& x, const Tensor& dy, Tensor* dx) {
  ST_CHECK(dx != nullptr);
  ST_RETURN_IF_ERROR(CheckActivations(a_, x, dy, "dy", b_.dim(0)));
  ST_RETURN_IF_ERROR(CheckActivations(a_, x, *dx, "dx", a_.dim(1)));
  const int64_t t = x.dim(0), r = rank();
  if (t == 0) return absl::OkStatus();
  if (x.dtype() != a_.dtype()) {
    // A half-precision model: the f32 path on widened copies, dx rounded once (see the header).
    ST_ASSIGN_OR_RETURN(const Tensor xw, InDType(*backend_, x, a_.dtype()));
    ST_ASSIGN_OR_RETURN(const Tensor dyw, InDType(*backend_, dy, a_.dtype()));
    ST_ASSIGN_OR_RETURN(Tensor dxw, InDType(*backend_, *dx, a_.dtype()));
    ST_RETURN_IF_ERROR(Backward(xw, dyw, &dxw));
    return backend_->Cast(dxw, dx);
  }
  // Recomputed rather than kept from Forward: the same mask (a pure function of the seed), and
  // nothing [T, n]-sized stays alive between the passes.
  ST_ASSIGN_OR_RETURN(const Tensor xd, DroppedInput(*backend_, x, active_dropout(), dropout_seed_));
  ST_ASSIGN_OR_RETURN(Tensor u, backend_->Allocate({t, r}, a_.dtype()));
  ST_RETURN_IF_ERROR(backend_->Matmul(xd, Transpose::kNo, a_, Transpose::kYes, 1.0, 0.0, &u));
  // g = s dy B [T, r]: the gradient w.r.t. v = u diag(d).
  ST_ASSIGN_OR_RETURN(Tensor g, backend_->Allocate({t, r}, a_.dtype()));
  ST_RETURN_IF_ERROR(backend_->Matmul(dy, Transpose::kNo, b_, Transpose::kNo, scale_, 0.0, &g));
  if (d_.defined()) {
    // dd += sum_t g * u; then u <- v = u diag(d) and g <- g diag(d) (the gradient w.r.t. u).
    ST_RETURN_IF_ERROR(backend_->ColumnDot(g, u, 1.0, &grad_d_));
    ST_RETURN_IF_ERROR(backend_->ScaleColumns(u, d_, &u));
    ST_RETURN_IF_ERROR(backend_->ScaleColumns(g, d_, &g));
  }
  // dB += s dy^T v [m, r]; dA += g^T drop(x) [r, n].
  ST_RETURN_IF_ERROR(backend_->Matmul(dy, Transpose::kYes, u, Transpose::kNo, scale_, 1.0, &grad_b_));
  ST_RETURN_IF_ERROR(backend_->Matmul(g, Transpose::kYes, xd, Transpose::kNo, 1.0, 1.0, &grad_a_));
  // dx += drop'(g A): the dropout's Jacobian is the same mask and 1 / (1 - p) scale.
  if (active_dropout() == 0.0) return backend_->Matmul(g, Transpose::kNo, a_, Transpose::kNo, 1.0, 1.0, dx);
  ST_ASSIGN_OR_RETURN(Tensor dxd, backend_->Allocate(x.shape(), a_.dtype()));
  ST_RETURN_IF_ERROR(backend_->Matmul(g, Transpose::kNo, a_, Transpose::kNo, 1.0, 0.0, &dxd));
  ST_RETURN_IF_ERROR(backend_->Dropout(dxd, active_dropout(), dropout_seed_, &dxd));
  return backend_->Axpy(1.0, dxd, dx);
}

absl::Status LowRankAdapter::ZeroGrad() {
  // In place: callers (the optimizer) may hold views of the gradient tensors.
  for (Tensor* grad : {&grad_a_, &grad_b_, &grad_d_}) {
    if (!grad->defined()) continue;
    ST_ASSIGN_OR_RETURN(const Tensor zeros, backend_->Zeros(grad->shape(), grad->dtype()));
    ST_RETURN_IF_ERROR(backend_->Copy(zeros, grad));
  }
  return absl::OkStatus();
}

}  // namespace sigmatune::peft
