#include "kernels/testing/compare.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace sigmatune::testing {

double DefaultRtol(DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return 1e-12;
    case DType::kF32:
      return 1e-5;
    case DType::kF16:
      return 2e-3;
    case DType::kBF16:
      return 1.6e-2;
    case DType::kI32:
    case DType::kI64:
      return 0.0;
  }
  return 0.0;
}

Tolerance DefaultTolerance(DType a, DType b) {
  const double rtol = std::max(DefaultRtol(a), DefaultRtol(b));
  return Tolerance{rtol, rtol};
}

::testing::AssertionResult AllClose(const Tensor& actual, const Tensor& expected, Tolerance tol) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shape " << ShapeToString(actual.shape()) << " vs expected "
                                         << ShapeToString(expected.shape());
  }
  int64_t worst = -1;
  double worst_excess = 0.0;
  int64_t failures = 0;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double a = GetAsDouble(actual, i);
    const double e = GetAsDouble(expected, i);
    if (std::isnan(a) != std::isnan(e)) {
      ++failures;
      if (worst < 0 || std::isinf(worst_excess) == false) {
        worst = i;
        worst_excess = INFINITY;
      }
      continue;
    }
    if (std::isnan(a)) continue;
    if (a == e) continue;  // covers equal infinities
    const double excess = std::fabs(a - e) - (tol.atol + tol.rtol * std::fabs(e));
    if (excess > 0 || std::isnan(excess)) {
      ++failures;
      if (worst < 0 || excess > worst_excess || std::isnan(excess)) {
        worst = i;
        worst_excess = std::isnan(excess) ? INFINITY : excess;
      }
    }
  }
  if (failures == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << failures << " of " << actual.numel() << " elements differ beyond atol=" << tol.atol
         << " rtol=" << tol.rtol << "; worst at flat index " << worst << ": actual "
         << GetAsDouble(actual, worst) << " expected " << GetAsDouble(expected, worst);
}

::testing::AssertionResult AllClose(const Tensor& actual, const Tensor& expected) {
  return AllClose(actual, expected, DefaultTolerance(actual.dtype(), expected.dtype()));
}

double Dot(const Tensor& a, const Tensor& b) {
  ST_CHECK(a.shape() == b.shape()) << ShapeToString(a.shape()) << " vs " << ShapeToString(b.shape());
  double sum = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) sum += GetAsDouble(a, i) * GetAsDouble(b, i);
  return sum;
}

double FrobeniusNorm(const Tensor& t) {
  double sum = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = GetAsDouble(t, i);
    sum += v * v;
  }
  return std::sqrt(sum);
}

double RelativeError(const Tensor& actual, const Tensor& expected) {
  ST_CHECK(actual.shape() == expected.shape())
      << ShapeToString(actual.shape()) << " vs " << ShapeToString(expected.shape());
  double diff = 0.0;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double d = GetAsDouble(actual, i) - GetAsDouble(expected, i);
    diff += d * d;
  }
  return std::sqrt(diff) / std::max(FrobeniusNorm(expected), 1e-300);
}

}  // namespace sigmatune::testing
