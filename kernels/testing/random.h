// Seeded random tensors for tests and benchmarks. The same seed gives the same values on every
// machine (kernels/base/rng.h).
#ifndef SIGMATUNE_KERNELS_TESTING_RANDOM_H_
#define SIGMATUNE_KERNELS_TESTING_RANDOM_H_

#include <cstdint>
#include <vector>

#include "kernels/base/tensor.h"

namespace sigmatune::testing {

// Standard normal entries, generated in double and rounded to `dtype`.
Tensor RandomNormal(const Shape& shape, DType dtype, uint64_t seed);
// Uniform entries in [low, high).
Tensor RandomUniform(const Shape& shape, DType dtype, double low, double high, uint64_t seed);
// Small integers in [-bound, bound] (exact in every float dtype; sums exact in any order).
Tensor RandomSmallIntegers(const Shape& shape, DType dtype, int bound, uint64_t seed);
// An m x n matrix U diag(sigma) V^T with random orthonormal U, V (computed in double, rounded to
// `dtype`). sigma.size() must be min(m, n).
Tensor RandomWithSingularValues(int64_t m, int64_t n, const std::vector<double>& sigma, DType dtype,
                                uint64_t seed);
// A symmetric n x n matrix Q diag(lambda) Q^T with random orthonormal Q.
Tensor RandomSymmetric(int64_t n, const std::vector<double>& lambda, DType dtype, uint64_t seed);

}  // namespace sigmatune::testing

#endif  // SIGMATUNE_KERNELS_TESTING_RANDOM_H_
