#include "kernels/ops/linalg_testing.h"

#include <algorithm>
#include <cmath>

namespace sigmatune::kernels::testing {
namespace {

// Contiguous f64 copy of op(x).
Tensor OpF64(const Tensor& x, Transpose t) { return (t == Transpose::kNo ? x : x.Transposed()).To(DType::kF64); }

}  // namespace

Tensor ProductF64(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb) {
  const Tensor a64 = OpF64(a, ta), b64 = OpF64(b, tb);
  const int64_t m = a64.dim(0), k = a64.dim(1), n = b64.dim(1);
  ST_CHECK_EQ(b64.dim(0), k);
  Tensor out = Tensor::Zeros({m, n}, DType::kF64);
  const double* pa = a64.data<double>();
  const double* pb = b64.data<double>();
  double* po = out.data<double>();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t l = 0; l < k; ++l) {
      const double x = pa[i * k + l];
      for (int64_t j = 0; j < n; ++j) po[i * n + j] += x * pb[l * n + j];
    }
  }
  return out;
}

Tensor ReconstructF64(const Tensor& u, const Tensor& s, const Tensor& vt) {
  Tensor us = u.To(DType::kF64);
  const Tensor s64 = s.To(DType::kF64);
  const int64_t m = us.dim(0), k = us.dim(1);
  ST_CHECK_EQ(s64.numel(), k);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < k; ++j) us.data<double>()[i * k + j] *= s64.data<double>()[j];
  }
  return ProductF64(us, Transpose::kNo, vt, Transpose::kNo);
}

double OrthonormalityError(const Tensor& x, Along along) {
  const Tensor gram = along == Along::kColumns ? ProductF64(x, Transpose::kYes, x, Transpose::kNo)
                                               : ProductF64(x, Transpose::kNo, x, Transpose::kYes);
  const int64_t k = gram.dim(0);
  double worst = 0;
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      worst = std::max(worst, std::fabs(gram.data<double>()[i * k + j] - (i == j ? 1.0 : 0.0)));
    }
  }
  return worst;
}

double MaxBelowDiagonal(const Tensor& r) {
  const Tensor r64 = r.To(DType::kF64);
  const int64_t rows = r64.dim(0), cols = r64.dim(1);
  double worst = 0;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < std::min(i, cols); ++j)
      worst = std::max(worst, std::fabs(r64.data<double>()[i * cols + j]));
  }
  return worst;
}

Tensor ColumnSigns(const Tensor& actual, const Tensor& expected) {
  const Tensor a = actual.To(DType::kF64), e = expected.To(DType::kF64);
  ST_CHECK(a.shape() == e.shape());
  const int64_t rows = a.dim(0), cols = a.dim(1);
  Tensor signs = Tensor::Empty({cols}, DType::kF64);
  for (int64_t j = 0; j < cols; ++j) {
    double dot = 0;
    for (int64_t i = 0; i < rows; ++i) dot += a.data<double>()[i * cols + j] * e.data<double>()[i * cols + j];
    signs.data<double>()[j] = dot < 0 ? -1.0 : 1.0;
  }
  return signs;
}

Tensor ApplySigns(const Tensor& x, const Tensor& signs, Along along) {
  Tensor out = x.To(DType::kF64);
  const int64_t rows = out.dim(0), cols = out.dim(1);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      out.data<double>()[i * cols + j] *= signs.data<double>()[along == Along::kColumns ? j : i];
    }
  }
  return out;
}

bool IsAscending(const Tensor& v) {
  for (int64_t i = 0; i + 1 < v.numel(); ++i) {
    if (GetAsDouble(v, i + 1) < GetAsDouble(v, i)) return false;
  }
  return true;
}

bool IsDescending(const Tensor& v) {
  for (int64_t i = 0; i + 1 < v.numel(); ++i) {
    if (GetAsDouble(v, i + 1) > GetAsDouble(v, i)) return false;
  }
  return true;
}

}  // namespace sigmatune::kernels::testing
