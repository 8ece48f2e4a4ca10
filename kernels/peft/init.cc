// Adapter initialisation (init.h), written once against ModelBackend: every matrix product, SVD,
// inverse and reduction is a backend call, so a CUDA backend runs the same code. Only O(r) and
// O(r * n) host work remains: the selected singular values are downloaded to form the r x r
// diagonal scalings (uploaded back as small matrices and applied by Matmul, which multiplies by
// the diagonal exactly), and the random draws are made on the host with Rng and uploaded.
//
// Random streams (seed): LoRA/KaSA A are the first r * n draws of Rng(seed) (row-major), KaSA's d the
// next r normals of the same Rng; the randomized SVD (PiSSA fast mode) gets `seed` itself.
#include "kernels/peft/init.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::peft {
namespace {

using kernels::Transpose;
using model::ModelBackend;

// PEFT's acceptance threshold for ||C_d inv(C_d) - I||_F and the first damping factor.
constexpr double kMaxInverseError = 0.05;
constexpr double kInitialDamping = 0.01;

bool IsFloat(DType dtype) { return dtype == DType::kF32 || dtype == DType::kF64; }

// The same status with "<what>: " in front of its message, unless it already names `layer`.
absl::Status Annotate(const absl::Status& status, const std::string& layer) {
  if (status.ok() || status.message().find(layer) != absl::string_view::npos) return status;
  return absl::Status(status.code(), absl::StrCat("layer ", layer, ": ", status.message()));
}

// A host vector, rounded to `dtype`, as a new tensor on the backend's device.
absl::StatusOr<Tensor> UploadValues(ModelBackend& backend, const Shape& shape, const std::vector<double>& values,
                                    DType dtype) {
  ST_CHECK_EQ(NumElements(shape), static_cast<int64_t>(values.size()));
  Tensor host = Tensor::Empty(shape, dtype);
  if (dtype == DType::kF32) {
    float* out = host.data<float>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<float>(values[i]);
  } else {
    ST_CHECK(dtype == DType::kF64) << DTypeName(dtype);
    double* out = host.data<double>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  }
  return backend.Upload(host);
}

// The values of a (small) device tensor, in double.
absl::StatusOr<std::vector<double>> DownloadValues(ModelBackend& backend, const Tensor& t) {
  ST_ASSIGN_OR_RETURN(Tensor host, backend.Download(t));
  std::vector<double> values(static_cast<size_t>(host.numel()));
  for (int64_t i = 0; i < host.numel(); ++i) values[static_cast<size_t>(i)] = GetAsDouble(host, i);
  return values;
}

// diag(values) [r, r] on the device.
absl::StatusOr<Tensor> Diagonal(ModelBackend& backend, const std::vector<double>& values, DType dtype) {
  const int64_t r = static_cast<int64_t>(values.size());
  std::vector<double> dense(static_cast<size_t>(r * r), 0.0);
  for (int64_t i = 0; i < r; ++i) dense[static_cast<size_t>(i * r + i)] = values[static_cast<size_t>(i)];
  return UploadValues(backend, {r, r}, dense, dtype);
}

// alpha * op(a) op(b) as a new contiguous tensor (the inner dimension must be >= 1).
absl::StatusOr<Tensor> Product(ModelBackend& backend, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                               double alpha = 1.0) {
  ST_CHECK_GT(kernels::OpCols(a, ta), 0);
  ST_ASSIGN_OR_RETURN(Tensor c, backend.Allocate({kernels::OpRows(a, ta), kernels::OpCols(b, tb)}, a.dtype()));
  ST_RETURN_IF_ERROR(backend.Matmul(a, ta, b, tb, alpha, 0.0, &c));
  return c;
}

// A contiguous copy of a (possibly strided) matrix view, made by multiplying with the identity
// (exact: every product is x * 1 or x * 0).
absl::StatusOr<Tensor> ContiguousCopy(ModelBackend& backend, const Tensor& view) {
  ST_ASSIGN_OR_RETURN(Tensor eye,
                      Diagonal(backend, std::vector<double>(static_cast<size_t>(view.dim(1)), 1.0), view.dtype()));
  return Product(backend, view, Transpose::kNo, eye, Transpose::kNo);
}

// A copy of a contiguous view (a row block or a 1-D slice) as a new tensor.
absl::StatusOr<Tensor> CopyOf(ModelBackend& backend, const Tensor& view) {
  ST_ASSIGN_OR_RETURN(Tensor out, backend.Allocate(view.shape(), view.dtype()));
  ST_RETURN_IF_ERROR(backend.Copy(view, &out));
  return out;
}

// W_res = W - s B A, from the computed factors, into a copy of W.
absl::StatusOr<Tensor> Residual(ModelBackend& backend, const Tensor& w, const Tensor& b, const Tensor& a,
                                double scale) {
  ST_ASSIGN_OR_RETURN(Tensor w_res, CopyOf(backend, w));
  ST_RETURN_IF_ERROR(backend.Matmul(b, Transpose::kNo, a, Transpose::kNo, -scale, 1.0, &w_res));
  return w_res;
}

// PEFT's kaiming_uniform_(a = sqrt(5)) on A [r, n]: gain sqrt(2 / (1 + 5)), bound
// gain * sqrt(3 / fan_in) = 1 / sqrt(n). Values that round past the bound in f32 are pulled back
// onto it, so |A_ij| <= 1 / sqrt(n) holds exactly.
std::vector<double> KaimingUniform(int64_t r, int64_t n, DType dtype, Rng& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(n));
  std::vector<double> values(static_cast<size_t>(r * n));
  for (double& v : values) {
    v = (2.0 * rng.Uniform01() - 1.0) * bound;
    if (dtype == DType::kF32) {
      float f = static_cast<float>(v);
      if (std::fabs(static_cast<double>(f)) > bound) f = std::nextafter(f, 0.0f);
      v = f;
    }
  }
  return values;
}

absl::Status CheckWeight(ModelBackend& backend, const std::string& layer, const Tensor& w) {
  if (!w.defined() || w.rank() != 2 || !IsFloat(w.dtype()) || !w.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat("weight of layer ", layer,
                                                   " must be a contiguous f32/f64 matrix [out, in], got ",
                                                   w.defined() ? w.DebugString() : "an undefined tensor"));
  }
  if (w.device() != backend.device()) {
    return absl::InvalidArgumentError(absl::StrCat("weight of layer ", layer, " is on ", w.device().ToString(),
                                                   ", the backend on ", backend.device().ToString()));
  }
  if (w.dim(0) < 1 || w.dim(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat("weight of layer ", layer, " is empty: ", ShapeToString(w.shape())));
  }
  ST_ASSIGN_OR_RETURN(const int64_t bad, backend.CountNonFinite(w));
  if (bad > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight of layer ", layer, " ", ShapeToString(w.shape()), " holds ", bad, " non-finite values"));
  }
  return absl::OkStatus();
}

absl::Status CheckCovariance(ModelBackend& backend, const std::string& layer, const Tensor& w, const Tensor* c) {
  const int64_t n = w.dim(1);
  if (c == nullptr || !c->defined()) {
    return absl::InvalidArgumentError(absl::StrCat("CorDA needs the damped covariance of layer ", layer,
                                                   " (the input statistics were not collected)"));
  }
  if (c->rank() != 2 || c->dim(0) != n || c->dim(1) != n || c->dtype() != w.dtype() || !c->is_contiguous() ||
      c->device() != w.device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "covariance of layer ", layer, " must be a contiguous [", n, ", ", n, "] ", DTypeName(w.dtype()), " matrix on ",
        w.device().ToString(), " (the weight is ", ShapeToString(w.shape()), "), got ", c->DebugString()));
  }
  ST_ASSIGN_OR_RETURN(const int64_t bad, backend.CountNonFinite(*c));
  if (bad > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("covariance of layer ", layer, " holds ", bad, " non-finite values"));
  }
  return absl::OkStatus();
}

// Singular factors held on the device: u [m, q], s [q], vt [q, n] with q = k or q = r.
struct Triplets {
  Tensor u, s, vt;
};

absl::StatusOr<Triplets> FullSvd(ModelBackend& backend, const Tensor& a) {
  const int64_t m = a.dim(0), n = a.dim(1), k = std::min(m, n);
  Triplets t;
  ST_ASSIGN_OR_RETURN(t.u, backend.Allocate({m, k}, a.dtype()));
  ST_ASSIGN_OR_RETURN(t.s, backend.Allocate({k}, a.dtype()));
  ST_ASSIGN_OR_RETURN(t.vt, backend.Allocate({k, n}, a.dtype()));
  ST_RETURN_IF_ERROR(backend.Svd(a, &t.u, &t.s, &t.vt));
  return t;
}

// PiSSA / MiLoRA from the triplets [begin, begin + r) of W = U S Vt:
//   A = diag(sqrt(S_sel / s)) Vt_sel,  B = U_sel diag(sqrt(S_sel / s)),  W_res = W - s B A.
absl::Status SplitTriplets(ModelBackend& backend, const Tensor& w, const Triplets& t, int64_t begin, int64_t r,
                           double scale, AdapterInit* out) {
  ST_ASSIGN_OR_RETURN(std::vector<double> s_all, DownloadValues(backend, t.s));
  std::vector<double> root(static_cast<size_t>(r));
  for (int64_t i = 0; i < r; ++i) {
    root[static_cast<size_t>(i)] = std::sqrt(std::max(s_all[static_cast<size_t>(begin + i)], 0.0) / scale);
  }
  ST_ASSIGN_OR_RETURN(Tensor d, Diagonal(backend, root, w.dtype()));
  ST_ASSIGN_OR_RETURN(out->a, Product(backend, d, Transpose::kNo, t.vt.Slice(0, begin, begin + r), Transpose::kNo));
  ST_ASSIGN_OR_RETURN(out->b, Product(backend, t.u.Slice(1, begin, begin + r), Transpose::kNo, d, Transpose::kNo));
  ST_ASSIGN_OR_RETURN(out->w_res, Residual(backend, w, out->b, out->a, scale));
  return absl::OkStatus();
}

absl::Status InitCorda(ModelBackend& backend, const std::string& layer, const Tensor& w, const Tensor& c_d, bool ipm,
                       int64_t r, double scale, AdapterInit* out) {
  const int64_t k = std::min(w.dim(0), w.dim(1));
  ST_ASSIGN_OR_RETURN(Tensor wc, Product(backend, w, Transpose::kNo, c_d, Transpose::kNo));
  ST_ASSIGN_OR_RETURN(Triplets t, FullSvd(backend, wc));
  const int64_t begin = ipm ? 0 : k - r;
  ST_ASSIGN_OR_RETURN(std::vector<double> s_all, DownloadValues(backend, t.s));
  std::vector<double> inv_root(static_cast<size_t>(r)), root(static_cast<size_t>(r));
  const double largest =
      w.dtype() == DType::kF32 ? std::numeric_limits<float>::max() : std::numeric_limits<double>::max();
  for (int64_t i = 0; i < r; ++i) {
    const double sv = s_all[static_cast<size_t>(begin + i)];
    const double inv = 1.0 / std::sqrt(scale * sv);
    if (!(sv > 0.0) || !std::isfinite(inv) || inv > largest) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "CorDA-%s of layer %s %s at rank %d: singular value %d of W C_d is %g, so A = diag(1/sqrt(s S)) U^T W is "
          "undefined (W is rank-deficient along the selected directions; use a lower rank, IPM, or another method "
          "for this layer)",
          ipm ? "IPM" : "KPM", layer, ShapeToString(w.shape()), r, begin + i, sv));
    }
    inv_root[static_cast<size_t>(i)] = inv;
    root[static_cast<size_t>(i)] = std::sqrt(sv / scale);
  }
  const Tensor u_sel = t.u.Slice(1, begin, begin + r);
  // A = diag(1 / sqrt(s S_sel)) (U_sel^T W);  B = U_sel diag(sqrt(S_sel / s)).
  ST_ASSIGN_OR_RETURN(Tensor g, Product(backend, u_sel, Transpose::kYes, w, Transpose::kNo));
  ST_ASSIGN_OR_RETURN(Tensor d_inv, Diagonal(backend, inv_root, w.dtype()));
  ST_ASSIGN_OR_RETURN(out->a, Product(backend, d_inv, Transpose::kNo, g, Transpose::kNo));
  ST_ASSIGN_OR_RETURN(Tensor d, Diagonal(backend, root, w.dtype()));
  ST_ASSIGN_OR_RETURN(out->b, Product(backend, u_sel, Transpose::kNo, d, Transpose::kNo));
  ST_ASSIGN_OR_RETURN(out->w_res, Residual(backend, w, out->b, out->a, scale));
  return absl::OkStatus();
}

absl::Status InitKasa(ModelBackend& backend, const Tensor& w, int64_t r, uint64_t seed, AdapterInit* out) {
  const int64_t m = w.dim(0), n = w.dim(1), k = std::min(m, n), keep = k - r;
  ST_ASSIGN_OR_RETURN(Triplets t, FullSvd(backend, w));
  if (keep > 0) {
    // W_res = P[:, :keep] diag(S[:keep]) Q[:, :keep]^T (PEFT keeps the top k - r).
    ST_ASSIGN_OR_RETURN(std::vector<double> s_all, DownloadValues(backend, t.s));
    s_all.resize(static_cast<size_t>(keep));
    ST_ASSIGN_OR_RETURN(Tensor s_keep, Diagonal(backend, s_all, w.dtype()));
    ST_ASSIGN_OR_RETURN(Tensor us, Product(backend, t.u.Slice(1, 0, keep), Transpose::kNo, s_keep, Transpose::kNo));
    ST_ASSIGN_OR_RETURN(out->w_res, Product(backend, us, Transpose::kNo, t.vt.Slice(0, 0, keep), Transpose::kNo));
  } else {
    ST_ASSIGN_OR_RETURN(out->w_res, backend.Zeros({m, n}, w.dtype()));
  }
  ST_ASSIGN_OR_RETURN(out->tail_u, ContiguousCopy(backend, t.u.Slice(1, keep, k)));
  ST_ASSIGN_OR_RETURN(out->tail_s, CopyOf(backend, t.s.Slice(0, keep, k)));
  ST_ASSIGN_OR_RETURN(out->tail_vt, CopyOf(backend, t.vt.Slice(0, keep, k)));

  Rng rng(seed);
  ST_ASSIGN_OR_RETURN(out->a, UploadValues(backend, {r, n}, KaimingUniform(r, n, w.dtype(), rng), w.dtype()));
  std::vector<double> d(static_cast<size_t>(r));
  for (double& v : d) v = rng.Normal();
  ST_ASSIGN_OR_RETURN(out->d, UploadValues(backend, {r}, d, w.dtype()));
  ST_ASSIGN_OR_RETURN(out->b, backend.Zeros({m, r}, w.dtype()));
  return absl::OkStatus();
}

absl::StatusOr<AdapterInit> InitializeAdapterImpl(ModelBackend& backend, const AdapterOptions& options,
                                                  const std::string& layer, const Tensor& w, const Tensor* covariance,
                                                  uint64_t seed) {
  ST_RETURN_IF_ERROR(options.Validate());
  ST_RETURN_IF_ERROR(CheckWeight(backend, layer, w));
  const int64_t m = w.dim(0), n = w.dim(1), k = std::min(m, n), r = options.rank;
  if (options.method != Method::kLora && r > k) {
    return absl::InvalidArgumentError(absl::StrCat(MethodName(options.method), " rank ", r, " of layer ", layer,
                                                   " exceeds min(m, n) = ", k, " of its weight ",
                                                   ShapeToString(w.shape())));
  }
  AdapterInit init;
  init.scale = AdapterScale(options);
  switch (options.method) {
    case Method::kLora: {
      Rng rng(seed);
      ST_ASSIGN_OR_RETURN(init.a, UploadValues(backend, {r, n}, KaimingUniform(r, n, w.dtype(), rng), w.dtype()));
      ST_ASSIGN_OR_RETURN(init.b, backend.Zeros({m, r}, w.dtype()));
      init.w_res = w;
      return init;
    }
    case Method::kPissa: {
      Triplets t;
      if (options.pissa_niter > 0) {
        ST_ASSIGN_OR_RETURN(t.u, backend.Allocate({m, r}, w.dtype()));
        ST_ASSIGN_OR_RETURN(t.s, backend.Allocate({r}, w.dtype()));
        ST_ASSIGN_OR_RETURN(t.vt, backend.Allocate({r, n}, w.dtype()));
        ST_RETURN_IF_ERROR(backend.RandomizedSvd(w, r, options.pissa_niter, seed, &t.u, &t.s, &t.vt));
      } else {
        ST_ASSIGN_OR_RETURN(t, FullSvd(backend, w));
      }
      ST_RETURN_IF_ERROR(SplitTriplets(backend, w, t, /*begin=*/0, r, init.scale, &init));
      break;
    }
    case Method::kMilora: {
      ST_ASSIGN_OR_RETURN(Triplets t, FullSvd(backend, w));
      ST_RETURN_IF_ERROR(SplitTriplets(backend, w, t, /*begin=*/k - r, r, init.scale, &init));
      break;
    }
    case Method::kCordaIpm:
    case Method::kCordaKpm: {
      ST_RETURN_IF_ERROR(CheckCovariance(backend, layer, w, covariance));
      ST_RETURN_IF_ERROR(
          InitCorda(backend, layer, w, *covariance, options.method == Method::kCordaIpm, r, init.scale, &init));
      break;
    }
    case Method::kKasa:
      ST_RETURN_IF_ERROR(InitKasa(backend, w, r, seed, &init));
      return init;
  }
  // The SVD methods: factors that over- or underflowed would poison training silently.
  for (const Tensor* t : {&init.a, &init.b, &init.w_res}) {
    ST_ASSIGN_OR_RETURN(const int64_t bad, backend.CountNonFinite(*t));
    if (bad > 0) {
      return absl::InternalError(absl::StrCat(MethodName(options.method), " initialisation of layer ", layer, " ",
                                              ShapeToString(w.shape()), " produced ", bad, " non-finite values in ",
                                              t == &init.w_res ? "W_res" : "A or B"));
    }
  }
  return init;
}

}  // namespace

absl::StatusOr<AdapterInit> InitializeAdapter(ModelBackend& backend, const AdapterOptions& options,
                                              const std::string& layer_name, const Tensor& w, const Tensor* covariance,
                                              uint64_t seed) {
  absl::StatusOr<AdapterInit> init = InitializeAdapterImpl(backend, options, layer_name, w, covariance, seed);
  if (!init.ok()) return Annotate(init.status(), layer_name);
  return init;
}

absl::StatusOr<DampedCovariance> DampCovariance(ModelBackend& backend, const std::string& layer_name, const Tensor& c,
                                                int max_doublings) {
  if (max_doublings < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_doublings must be >= 0, got ", max_doublings));
  }
  if (!c.defined() || c.rank() != 2 || c.dim(0) != c.dim(1) || c.dim(0) < 1 || !IsFloat(c.dtype()) ||
      !c.is_contiguous() || c.device() != backend.device()) {
    return absl::InvalidArgumentError(
        absl::StrCat("covariance of ", layer_name, " must be a non-empty contiguous square f32/f64 matrix on ",
                     backend.device().ToString(), ", got ", c.defined() ? c.DebugString() : "an undefined tensor"));
  }
  const int64_t n = c.dim(0);
  ST_ASSIGN_OR_RETURN(const int64_t bad, backend.CountNonFinite(c));
  if (bad > 0) {
    return absl::InvalidArgumentError(absl::StrCat("covariance of ", layer_name, " holds ", bad,
                                                   " non-finite values; the calibration data or the model "
                                                   "produced NaN/Inf"));
  }
  ST_ASSIGN_OR_RETURN(const double mean_diag, backend.DiagonalMean(c));
  if (!(mean_diag > 0.0)) {
    return absl::FailedPreconditionError(absl::StrCat("covariance of ", layer_name, " has mean diagonal ", mean_diag,
                                                      " <= 0: the layer never saw non-zero input"));
  }

  ST_ASSIGN_OR_RETURN(Tensor c_d, backend.Allocate({n, n}, c.dtype()));
  ST_ASSIGN_OR_RETURN(Tensor inv, backend.Allocate({n, n}, c.dtype()));
  ST_ASSIGN_OR_RETURN(Tensor product, backend.Allocate({n, n}, c.dtype()));
  double damping = kInitialDamping;
  std::string last;
  for (int doublings = 0;; ++doublings, damping *= 2.0) {
    ST_RETURN_IF_ERROR(backend.Copy(c, &c_d));
    ST_RETURN_IF_ERROR(backend.AddScaledIdentity(damping * mean_diag, &c_d));
    const absl::Status inverted = backend.Inverse(c_d, &inv);
    if (inverted.ok()) {
      ST_RETURN_IF_ERROR(backend.Matmul(c_d, Transpose::kNo, inv, Transpose::kNo, 1.0, 0.0, &product));
      ST_ASSIGN_OR_RETURN(const double error, backend.DistanceFromIdentity(product));
      if (error < kMaxInverseError) {  // NaN (a blown-up inverse) is never accepted, as in PEFT
        DampedCovariance result;
        result.c_d = std::move(c_d);
        result.damping = damping;
        result.doublings = doublings;
        result.inverse_error = error;
        return result;
      }
      last = absl::StrCat("||C_d inv(C_d) - I||_F = ", error);
    } else if (absl::IsFailedPrecondition(inverted)) {  // exactly singular: keep doubling
      last = std::string(inverted.message());
    } else {
      return Annotate(inverted, layer_name);
    }
    if (doublings == max_doublings) {
      return absl::FailedPreconditionError(
          absl::StrCat("CorDA damping of the covariance of ", layer_name, " [", n, ", ", n,
                       "] found no d with ||C_d inv(C_d) - I||_F < ", kMaxInverseError, " after ", max_doublings,
                       " doublings (mean diagonal ", mean_diag, "); at d = ", damping, ": ", last));
    }
  }
}

}  // namespace sigmatune::peft
