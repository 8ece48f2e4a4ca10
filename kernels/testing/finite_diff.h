// Central finite-difference gradients, for checking hand-written backward passes.
#ifndef SIGMATUNE_KERNELS_TESTING_FINITE_DIFF_H_
#define SIGMATUNE_KERNELS_TESTING_FINITE_DIFF_H_

#include <functional>

#include "kernels/base/tensor.h"

namespace sigmatune::testing {

// d f / d x at `x` (any float dtype; perturbed and evaluated in f64), one central difference
// (f(x + h e_i) - f(x - h e_i)) / 2h per element, h = eps * max(1, |x_i|). Returns an f64
// tensor shaped like x. `f` must not keep references to its argument.
Tensor NumericalGradient(const std::function<double(const Tensor&)>& f, const Tensor& x, double eps = 1e-6);

}  // namespace sigmatune::testing

#endif  // SIGMATUNE_KERNELS_TESTING_FINITE_DIFF_H_
