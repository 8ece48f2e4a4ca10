#include "kernels/testing/random.h"

#include <cmath>

#include "kernels/base/rng.h"

namespace sigmatune::testing {
namespace {

// Rows x cols matrix (row-major, double) with orthonormal columns (rows >= cols), from
// modified Gram-Schmidt on Gaussian columns, applied twice for accuracy.
std::vector<double> RandomOrthonormalColumns(int64_t rows, int64_t cols, Rng& rng) {
  ST_CHECK_GE(rows, cols);
  std::vector<double> q(rows * cols);
  for (double& v : q) v = rng.Normal();
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t j = 0; j < cols; ++j) {
      for (int64_t k = 0; k < j; ++k) {
        double dot = 0.0;
        for (int64_t i = 0; i < rows; ++i) dot += q[i * cols + k] * q[i * cols + j];
        for (int64_t i = 0; i < rows; ++i) q[i * cols + j] -= dot * q[i * cols + k];
      }
      double norm = 0.0;
      for (int64_t i = 0; i < rows; ++i) norm += q[i * cols + j] * q[i * cols + j];
      norm = std::sqrt(norm);
      for (int64_t i = 0; i < rows; ++i) q[i * cols + j] /= norm;
    }
  }
  return q;
}

Tensor FromDoubles(const Shape& shape, const std::vector<double>& values, DType dtype) {
  return Tensor::FromVector<double>(shape, values).To(dtype);
}

}  // namespace

Tensor RandomNormal(const Shape& shape, DType dtype, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> values(NumElements(shape));
  for (double& v : values) v = rng.Normal();
  return FromDoubles(shape, values, dtype);
}

Tensor RandomUniform(const Shape& shape, DType dtype, double low, double high, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> values(NumElements(shape));
  for (double& v : values) v = low + (high - low) * rng.Uniform01();
  return FromDoubles(shape, values, dtype);
}

Tensor RandomSmallIntegers(const Shape& shape, DType dtype, int bound, uint64_t seed) {
  Rng rng(seed);
  std::vector<double> values(NumElements(shape));
  for (double& v : values) v = static_cast<double>(static_cast<int64_t>(rng.Next() % (2 * bound + 1)) - bound);
  return FromDoubles(shape, values, dtype);
}

Tensor RandomWithSingularValues(int64_t m, int64_t n, const std::vector<double>& sigma, DType dtype,
                                uint64_t seed) {
  const int64_t k = std::min(m, n);
  ST_CHECK_EQ(static_cast<int64_t>(sigma.size()), k);
  Rng rng(seed);
  const std::vector<double> u = RandomOrthonormalColumns(m, k, rng);
  const std::vector<double> v = RandomOrthonormalColumns(n, k, rng);
  std::vector<double> a(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t l = 0; l < k; ++l) {
      const double us = u[i * k + l] * sigma[l];
      for (int64_t j = 0; j < n; ++j) a[i * n + j] += us * v[j * k + l];
    }
  }
  return FromDoubles({m, n}, a, dtype);
}

Tensor RandomSymmetric(int64_t n, const std::vector<double>& lambda, DType dtype, uint64_t seed) {
  ST_CHECK_EQ(static_cast<int64_t>(lambda.size()), n);
  Rng rng(seed);
  const std::vector<double> q = RandomOrthonormalColumns(n, n, rng);
  std::vector<double> a(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      double sum = 0.0;
      for (int64_t l = 0; l < n; ++l) sum += q[i * n + l] * lambda[l] * q[j * n + l];
      a[i * n + j] = sum;
      a[j * n + i] = sum;
    }
  }
  return FromDoubles({n, n}, a, dtype);
}

}  // namespace sigmatune::testing
