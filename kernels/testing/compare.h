// Tolerance comparison of tensors for tests: |actual - expected| <= atol + rtol * |expected|,
// elementwise. rtol defaults from the dtype (the coarser of the two tensors).
#ifndef SIGMATUNE_KERNELS_TESTING_COMPARE_H_
#define SIGMATUNE_KERNELS_TESTING_COMPARE_H_

#include "gtest/gtest.h"
#include "kernels/base/tensor.h"

namespace sigmatune::testing {

struct Tolerance {
  double atol = 0.0;
  double rtol = 0.0;
};

// Default relative tolerance of a dtype: a few units in the last place.
double DefaultRtol(DType dtype);
// atol = rtol = DefaultRtol of the coarser dtype of the two.
Tolerance DefaultTolerance(DType a, DType b);

// Shapes must match; dtypes may differ (compared in double). CPU tensors only.
// The failure message names the worst element, its index and both values.
::testing::AssertionResult AllClose(const Tensor& actual, const Tensor& expected, Tolerance tol);
::testing::AssertionResult AllClose(const Tensor& actual, const Tensor& expected);

// sum_i a_i * b_i in double (same shape; e.g. the scalar objective <y, dy> of a gradient check).
double Dot(const Tensor& a, const Tensor& b);

// Frobenius norm and relative Frobenius distance ||a - b|| / max(||b||, tiny), in double.
double FrobeniusNorm(const Tensor& t);
double RelativeError(const Tensor& actual, const Tensor& expected);

}  // namespace sigmatune::testing

#endif  // SIGMATUNE_KERNELS_TESTING_COMPARE_H_
