#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/ops/linalg_util.h"

namespace sigmatune::kernels {
namespace {

template <typename T>
int64_t FirstNonFinite(const T* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) return i;
  }
  return -1;
}

}  // namespace

absl::Status ExpectRealFloat(const Tensor& t, const char* what) {
  if (t.dtype() == DType::kF32 || t.dtype() == DType::kF64) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be f32 or f64, got ", DTypeName(t.dtype())));
}

absl::Status ExpectFloatMatrixInput(const Tensor& t, const char* what) {
  if (!t.defined() || t.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a matrix, got ", t.DebugString()));
  }
  if (!t.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be contiguous (row-major), got ", t.DebugString(), "; make it contiguous first"));
  }
  return ExpectRealFloat(t, what);
}

absl::Status ExpectVector(const Tensor& t, int64_t size, DType dtype, const char* what) {
  if (!t.defined() || t.rank() != 1 || t.dim(0) != size || t.dtype() != dtype || !t.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be a contiguous ", DTypeName(dtype), "[", size, "] vector, got ", t.DebugString()));
  }
  return absl::OkStatus();
}

absl::Status ExpectOnCpu(const Tensor& t, const char* what) {
  if (t.device().is_cpu()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be a CPU tensor, got ", t.DebugString()));
}

absl::Status ExpectFiniteOnCpu(const Tensor& t, const char* what) {
  ST_CHECK(t.device().is_cpu() && t.is_contiguous());
  int64_t bad = -1;
  double value = 0;
  if (t.dtype() == DType::kF32) {
    bad = FirstNonFinite(t.data<float>(), t.numel());
    if (bad >= 0) value = t.data<float>()[bad];
  } else if (t.dtype() == DType::kF64) {
    bad = FirstNonFinite(t.data<double>(), t.numel());
    if (bad >= 0) value = t.data<double>()[bad];
  } else {
    ST_CHECK(false) << "ExpectFiniteOnCpu on " << DTypeName(t.dtype());
  }
  if (bad < 0) return absl::OkStatus();
  std::string where = absl::StrCat(bad);
  if (t.rank() == 2 && t.dim(1) > 0) where = absl::StrCat("(", bad / t.dim(1), ", ", bad % t.dim(1), ")");
  return absl::InvalidArgumentError(
      absl::StrCat(what, " has a non-finite entry ", value, " at ", where, "; the decomposition needs finite input"));
}

absl::Status ExpectInt32Index(int64_t value, const char* what) {
  if (value <= std::numeric_limits<int32_t>::max()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " is ", value, ", beyond the 32-bit index range of the LAPACK/cuSOLVER routine"));
}

int64_t LapackWorkLength(double query, int64_t minimum) {
  int64_t from_query = 0;
  if (std::isfinite(query) && query > 0) {
    from_query = static_cast<int64_t>(std::ceil(query * (1.0 + 1e-6))) + 1;
  }
  return std::max<int64_t>({minimum, from_query, 1});
}

int64_t SyevdMinWork(int64_t n) { return n <= 1 ? 1 : 1 + 6 * n + 2 * n * n; }
int64_t SyevdMinIwork(int64_t n) { return n <= 1 ? 1 : 3 + 5 * n; }
int64_t SyevrMinWork(int64_t n) { return std::max<int64_t>(1, 26 * n); }
int64_t SyevrMinIwork(int64_t n) { return std::max<int64_t>(1, 10 * n); }

int64_t GesddMinWork(int64_t m, int64_t n) {
  const int64_t k = std::min(m, n), big = std::max(m, n);
  const int64_t old_formula = 3 * k + std::max(big, 4 * k * k + 4 * k);
  const int64_t new_formula = 4 * k * k + 6 * k + big;
  return std::max<int64_t>({1, old_formula, new_formula});
}

int64_t GesddIwork(int64_t m, int64_t n) { return std::max<int64_t>(1, 8 * std::min(m, n)); }

absl::Status LapackStatus(int64_t info, const char* routine) {
  if (info == 0) return absl::OkStatus();
  if (info < 0) {
    return absl::InternalError(
        absl::StrCat(routine, " rejected argument ", -info, " (info = ", info, "); this is a bug in sigmatune"));
  }
  return absl::InternalError(
      absl::StrCat(routine, " did not converge (info = ", info, "); the input may be badly scaled"));
}

}  // namespace sigmatune::kernels
