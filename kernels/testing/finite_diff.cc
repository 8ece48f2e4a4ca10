#include "kernels/testing/finite_diff.h"

#include <algorithm>
#include <cmath>

namespace sigmatune::testing {

Tensor NumericalGradient(const std::function<double(const Tensor&)>& f, const Tensor& x, double eps) {
  Tensor point = x.To(DType::kF64);
  Tensor grad = Tensor::Empty(x.shape(), DType::kF64);
  double* p = point.data<double>();
  for (int64_t i = 0; i < point.numel(); ++i) {
    const double original = p[i];
    const double h = eps * std::max(1.0, std::fabs(original));
    p[i] = original + h;
    const double plus = f(point.To(x.dtype()));
    p[i] = original - h;
    const double minus = f(point.To(x.dtype()));
    p[i] = original;
    grad.data<double>()[i] = (plus - minus) / (2.0 * h);
  }
  return grad;
}

}  // namespace sigmatune::testing
