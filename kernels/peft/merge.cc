#include "kernels/peft/merge.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/blas_layout.h"

namespace sigmatune::peft {
namespace {

using kernels::Transpose;

bool IsAdapterDType(DType dtype) { return dtype == DType::kF32 || dtype == DType::kF64; }

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

// a [r, n] (f32/f64) and b [m, r] of its dtype, d [r] when defined.
absl::Status CheckAdapter(const char* where, model::ModelBackend& backend, const Tensor& a, const Tensor& b,
                          const Tensor& d) {
  if (!a.defined() || a.rank() != 2 || !IsAdapterDType(a.dtype()) || a.dim(0) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": a must be an f32/f64 matrix [r, n] with r >= 1, got ",
                                                   a.defined() ? a.DebugString() : "undefined"));
  }
  const Device device = backend.device();
  ST_RETURN_IF_ERROR(CheckTensor(where, "a", a, a.shape(), a.dtype(), device));
  if (!b.defined() || b.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": b must be a matrix [m, ", a.dim(0), "], got ",
                                                   b.defined() ? b.DebugString() : "undefined"));
  }
  ST_RETURN_IF_ERROR(CheckTensor(where, "b", b, {b.dim(0), a.dim(0)}, a.dtype(), device));
  if (d.defined()) ST_RETURN_IF_ERROR(CheckTensor(where, "d", d, {a.dim(0)}, a.dtype(), device));
  return absl::OkStatus();
}

// An r x r identity (scaled by the columns of `diag` when defined: diag(diag)) in `dtype`.
absl::StatusOr<Tensor> DiagonalMatrix(model::ModelBackend& backend, int64_t r, DType dtype, const Tensor& diag) {
  ST_ASSIGN_OR_RETURN(Tensor m, backend.Zeros({r, r}, dtype));
  ST_RETURN_IF_ERROR(backend.AddScaledIdentity(1.0, &m));
  if (diag.defined()) ST_RETURN_IF_ERROR(backend.ScaleColumns(m, diag, &m));
  return m;
}

// w += sign * s * B diag(d) A.
absl::Status AddDelta(const char* where, model::ModelBackend& backend, const Tensor& a, const Tensor& b,
                      const Tensor& d, double scale, double sign, Tensor* w) {
  ST_CHECK(w != nullptr);
  ST_RETURN_IF_ERROR(CheckAdapter(where, backend, a, b, d));
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": scale must be finite, got ", scale));
  }
  if (!w->defined() || !w->is_contiguous() || w->device() != backend.device() ||
      w->shape() != Shape{b.dim(0), a.dim(1)} ||
      (w->dtype() != DType::kF32 && w->dtype() != DType::kF64 && w->dtype() != DType::kBF16)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the weight must be a contiguous f32/f64/bf16 [",
                                                   b.dim(0), ", ", a.dim(1), "] (m = rows of b, n = columns of a) ",
                                                   "on the backend's device, got ",
                                                   w->defined() ? w->DebugString() : "undefined"));
  }
  Tensor bd = b;  // B diag(d)
  if (d.defined()) {
    ST_ASSIGN_OR_RETURN(bd, backend.Allocate(b.shape(), b.dtype()));
    ST_RETURN_IF_ERROR(backend.ScaleColumns(b, d, &bd));
  }
  if (w->dtype() == a.dtype()) {
    return backend.Matmul(bd, Transpose::kNo, a, Transpose::kNo, sign * scale, 1.0, w);
  }
  ST_ASSIGN_OR_RETURN(Tensor wide, backend.Allocate(w->shape(), a.dtype()));
  ST_RETURN_IF_ERROR(backend.Cast(*w, &wide));
  ST_RETURN_IF_ERROR(backend.Matmul(bd, Transpose::kNo, a, Transpose::kNo, sign * scale, 1.0, &wide));
  return backend.Cast(wide, w);
}

absl::StatusOr<Tensor> CopyOf(model::ModelBackend& backend, const Tensor& t) {
  ST_ASSIGN_OR_RETURN(Tensor out, backend.Allocate(t.shape(), t.dtype()));
  ST_RETURN_IF_ERROR(backend.Copy(t, &out));
  return out;
}

}  // namespace

absl::Status Merge(model::ModelBackend& backend, const Tensor& a, const Tensor& b, const Tensor& d, double scale,
                   Tensor* w) {
  return AddDelta("Merge", backend, a, b, d, scale, 1.0, w);
}

absl::Status Unmerge(model::ModelBackend& backend, const Tensor& a, const Tensor& b, const Tensor& d, double scale,
                     Tensor* w) {
  return AddDelta("Unmerge", backend, a, b, d, scale, -1.0, w);
}

int64_t ConvertedRank(const AdapterOptions& options) {
  return options.method == Method::kLora ? options.rank : 2 * options.rank;
}

double ConvertedAlpha(const AdapterOptions& options) {
  if (options.method == Method::kLora) return options.alpha;
  // s' = s: alpha' / r' = alpha / r, or alpha' / sqrt(r') = alpha / sqrt(r) with rsLoRA.
  return options.scaling == Scaling::kRankStabilized ? std::sqrt(2.0) * options.alpha : 2.0 * options.alpha;
}

absl::StatusOr<PlainLora> ConvertToPlainLora(model::ModelBackend& backend, const AdapterOptions& options,
                                             const AdapterInit& init, const Tensor& a, const Tensor& b,
                                             const Tensor& d) {
  constexpr const char* kWhere = "ConvertToPlainLora";
  ST_RETURN_IF_ERROR(options.Validate());
  ST_RETURN_IF_ERROR(CheckAdapter(kWhere, backend, a, b, d));
  const int64_t r = a.dim(0), n = a.dim(1), m = b.dim(0);
  if (r != options.rank) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhere, ": the adapter has rank ", r, " (rows of a) but the options say rank ", options.rank));
  }
  const bool kasa = options.method == Method::kKasa;
  if (kasa != d.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(kWhere, ": ", MethodName(options.method),
                                                   kasa ? " needs the trained diagonal d" : " has no diagonal d"));
  }
  const DType dtype = a.dtype();
  const Device device = backend.device();

  PlainLora out;
  out.rank = ConvertedRank(options);
  out.alpha = ConvertedAlpha(options);
  if (options.method == Method::kLora) {
    ST_ASSIGN_OR_RETURN(out.a, CopyOf(backend, a));
    ST_ASSIGN_OR_RETURN(out.b, CopyOf(backend, b));
    return out;
  }

  const double scale = AdapterScale(options);
  ST_ASSIGN_OR_RETURN(out.a, backend.Allocate({2 * r, n}, dtype));
  ST_ASSIGN_OR_RETURN(out.b, backend.Allocate({m, 2 * r}, dtype));
  Tensor a_top = out.a.Slice(0, 0, r), a_bottom = out.a.Slice(0, r, 2 * r);
  Tensor b_left = out.b.Slice(1, 0, r), b_right = out.b.Slice(1, r, 2 * r);
  ST_RETURN_IF_ERROR(backend.Copy(a, &a_top));
  // The column blocks of B' are written by GEMMs with an r x r diagonal right factor (each output
  // element is one rounded product, or an exact copy for the identity): the backends have no
  // strided copy, but their GEMMs accept a column slice as C.
  if (kasa) {
    ST_RETURN_IF_ERROR(CheckTensor(kWhere, "init.tail_u", init.tail_u, {m, r}, dtype, device));
    ST_RETURN_IF_ERROR(CheckTensor(kWhere, "init.tail_s", init.tail_s, {r}, dtype, device));
    ST_RETURN_IF_ERROR(CheckTensor(kWhere, "init.tail_vt", init.tail_vt, {r, n}, dtype, device));
    // A' = [A; Q_t^T], B' = [B diag(d), -P_t S_t / s].
    ST_RETURN_IF_ERROR(backend.Copy(init.tail_vt, &a_bottom));
    ST_ASSIGN_OR_RETURN(const Tensor diag_d, DiagonalMatrix(backend, r, dtype, d));
    ST_RETURN_IF_ERROR(backend.Matmul(b, Transpose::kNo, diag_d, Transpose::kNo, 1.0, 0.0, &b_left));
    ST_ASSIGN_OR_RETURN(const Tensor diag_s, DiagonalMatrix(backend, r, dtype, init.tail_s));
    ST_RETURN_IF_ERROR(
        backend.Matmul(init.tail_u, Transpose::kNo, diag_s, Transpose::kNo, -1.0 / scale, 0.0, &b_right));
    return out;
  }
  // PiSSA / MiLoRA / CorDA: A' = [A; A0], B' = [B, -B0].
  ST_RETURN_IF_ERROR(CheckTensor(kWhere, "init.a (A0)", init.a, {r, n}, dtype, device));
  ST_RETURN_IF_ERROR(CheckTensor(kWhere, "init.b (B0)", init.b, {m, r}, dtype, device));
  ST_RETURN_IF_ERROR(backend.Copy(init.a, &a_bottom));
  ST_ASSIGN_OR_RETURN(const Tensor identity, DiagonalMatrix(backend, r, dtype, Tensor()));
  ST_RETURN_IF_ERROR(backend.Matmul(b, Transpose::kNo, identity, Transpose::kNo, 1.0, 0.0, &b_left));
  ST_RETURN_IF_ERROR(backend.Matmul(init.b, Transpose::kNo, identity, Transpose::kNo, -1.0, 0.0, &b_right));
  return out;
}

}  // namespace sigmatune::peft
