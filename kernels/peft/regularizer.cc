#include "kernels/peft/regularizer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"

namespace sigmatune::peft {
namespace {

using kernels::Transpose;

absl::Status CheckTensor(const char* where, const char* what, const Tensor& t, const Shape& shape, DType dtype,
                         Device device) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", what, " is undefined"));
  if (t.shape() != shape || t.dtype() != dtype || !t.is_contiguous() || t.device() != device) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", what, " must be a contiguous ", DTypeName(dtype),
                                                   " tensor of shape ", ShapeToString(shape), " on ",
                                                   device.ToString(), ", got ", t.DebugString()));
  }
  return absl::OkStatus();
}

// a [r, n] and b [m, r] (the first fixes r and the dtype), grads shaped alike or nullptr.
absl::Status CheckFactors(const char* where, model::ModelBackend& backend, const char* a_name, const Tensor& a,
                          const char* b_name, const Tensor& b, const Tensor* grad_a, const Tensor* grad_b) {
  if (!a.defined() || a.rank() != 2 || (a.dtype() != DType::kF32 && a.dtype() != DType::kF64)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", a_name, " must be an f32/f64 matrix [r, n], got ",
                                                   a.defined() ? a.DebugString() : "undefined"));
  }
  const Device device = backend.device();
  ST_RETURN_IF_ERROR(CheckTensor(where, a_name, a, a.shape(), a.dtype(), device));
  if (!b.defined() || b.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", b_name, " must be a matrix [m, ", a.dim(0),
                                                   "], got ", b.defined() ? b.DebugString() : "undefined"));
  }
  ST_RETURN_IF_ERROR(CheckTensor(where, b_name, b, {b.dim(0), a.dim(0)}, a.dtype(), device));
  if (grad_a != nullptr) ST_RETURN_IF_ERROR(CheckTensor(where, "the gradient of a", *grad_a, a.shape(), a.dtype(), device));
  if (grad_b != nullptr) ST_RETURN_IF_ERROR(CheckTensor(where, "the gradient of b", *grad_b, b.shape(), b.dtype(), device));
  return absl::OkStatus();
}

absl::Status CheckCoefficient(const char* where, const char* what, double value) {
  if (!std::isfinite(value) || value < 0.0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", what, " must be finite and >= 0, got ", value));
  }
  return absl::OkStatus();
}

// Which r x r Gram matrix of `m` a term uses: kRows for A [r, n] (A A^T, gradient E A),
// kColumns for B [m, r] (B^T B, gradient B E).
enum class Side { kRows, kColumns };

// With G the r x r Gram matrix and E = G - I_r: the norm ||E||_F, or with `full` the norm of the
// big Gram matrix's distance from identity, sqrt(||E||_F^2 + (big - r)). When grad != nullptr and
// the norm is positive, adds coeff * 2 E A / norm (kRows) or coeff * 2 B E / norm (kColumns).
absl::StatusOr<double> GramTerm(model::ModelBackend& backend, const Tensor& m, Side side, bool full, double coeff,
                                Tensor* grad) {
  const int64_t r = side == Side::kRows ? m.dim(0) : m.dim(1);
  const int64_t big = side == Side::kRows ? m.dim(1) : m.dim(0);
  ST_ASSIGN_OR_RETURN(Tensor g, backend.Allocate({r, r}, m.dtype()));
  if (side == Side::kRows) {
    ST_RETURN_IF_ERROR(backend.Matmul(m, Transpose::kNo, m, Transpose::kYes, 1.0, 0.0, &g));
  } else {
    ST_RETURN_IF_ERROR(backend.Matmul(m, Transpose::kYes, m, Transpose::kNo, 1.0, 0.0, &g));
  }
  ST_ASSIGN_OR_RETURN(const double distance, backend.DistanceFromIdentity(g));
  const double squared = distance * distance + (full ? static_cast<double>(big - r) : 0.0);
  const double norm = std::sqrt(std::max(squared, 0.0));
  if (grad == nullptr || coeff == 0.0 || !(norm > 0.0)) return norm;
  ST_RETURN_IF_ERROR(backend.AddScaledIdentity(-1.0, &g));
  const double alpha = 2.0 * coeff / norm;
  if (side == Side::kRows) {
    ST_RETURN_IF_ERROR(backend.Matmul(g, Transpose::kNo, m, Transpose::kNo, alpha, 1.0, grad));
  } else {
    ST_RETURN_IF_ERROR(backend.Matmul(m, Transpose::kNo, g, Transpose::kNo, alpha, 1.0, grad));
  }
  return norm;
}

}  // namespace

absl::StatusOr<KasaRegularizerValue> KasaRegularizer(model::ModelBackend& backend,
                                                     const KasaRegularizerOptions& options, const Tensor& a,
                                                     const Tensor& b, const Tensor& d, Tensor* grad_a, Tensor* grad_b,
                                                     Tensor* grad_d) {
  constexpr const char* kWhere = "KaSA regularizer";
  ST_RETURN_IF_ERROR(CheckCoefficient(kWhere, "beta", options.beta));
  ST_RETURN_IF_ERROR(CheckCoefficient(kWhere, "gamma", options.gamma));
  ST_RETURN_IF_ERROR(CheckCoefficient(kWhere, "weight", options.weight));
  ST_RETURN_IF_ERROR(CheckFactors(kWhere, backend, "a", a, "b", b, grad_a, grad_b));
  const int64_t r = a.dim(0);
  ST_RETURN_IF_ERROR(CheckTensor(kWhere, "d", d, {r}, a.dtype(), backend.device()));
  if (grad_d != nullptr) {
    ST_RETURN_IF_ERROR(CheckTensor(kWhere, "the gradient of d", *grad_d, {r}, a.dtype(), backend.device()));
  }

  KasaRegularizerValue value;
  // L2 = sum d^2 (a column dot of d as an [r, 1] matrix); its gradient 2 d.
  ST_ASSIGN_OR_RETURN(Tensor l2, backend.Allocate({1}, a.dtype()));
  ST_RETURN_IF_ERROR(backend.ColumnDot(d.Reshape({r, 1}), d.Reshape({r, 1}), 0.0, &l2));
  ST_ASSIGN_OR_RETURN(const Tensor l2_host, backend.Download(l2));
  value.l2 = GetAsDouble(l2_host, 0);
  const double l2_coeff = options.weight * options.beta;
  if (grad_d != nullptr && l2_coeff != 0.0) ST_RETURN_IF_ERROR(backend.Axpy(2.0 * l2_coeff, d, grad_d));

  // L3: the same r x r Gram matrices for both forms, which differ only in the norm.
  const bool full = options.form == KasaRegularizerForm::kReference;
  const double l3_coeff = options.weight * options.gamma;
  ST_ASSIGN_OR_RETURN(const double a_term, GramTerm(backend, a, Side::kRows, full, l3_coeff, grad_a));
  ST_ASSIGN_OR_RETURN(const double b_term, GramTerm(backend, b, Side::kColumns, full, l3_coeff, grad_b));
  value.l3 = a_term + b_term;
  value.total = options.weight * (options.beta * value.l2 + options.gamma * value.l3);
  return value;
}

absl::StatusOr<double> SorsaRegularizer(model::ModelBackend& backend, double weight, const Tensor& vt,
                                        const Tensor& u, Tensor* grad_vt, Tensor* grad_u) {
  constexpr const char* kWhere = "SORSA regularizer";
  ST_RETURN_IF_ERROR(CheckCoefficient(kWhere, "weight", weight));
  ST_RETURN_IF_ERROR(CheckFactors(kWhere, backend, "vt", vt, "u", u, grad_vt, grad_u));
  ST_ASSIGN_OR_RETURN(const double v_term, GramTerm(backend, vt, Side::kRows, /*full=*/false, weight, grad_vt));
  ST_ASSIGN_OR_RETURN(const double u_term, GramTerm(backend, u, Side::kColumns, /*full=*/false, weight, grad_u));
  return weight * (v_term + u_term);
}

}  // namespace sigmatune::peft
