#include "kernels/ops/gaussian.h"

#include "kernels/base/rng.h"


namespace sigmatune::kernels {

Tensor HostGaussianMatrix(int64_t rows, int64_t cols, DType dtype, uint64_t seed) {
  ST_CHECK(dtype == DType::kF32 || dtype == DType::kF64) << DTypeName(dtype);
  ST_CHECK(rows >= 0 && cols >= 0) << rows << "x" << cols;
  Rng rng(seed);
  Tensor out = Tensor::Empty({rows, cols}, dtype);
  const int64_t n = rows * cols;
  if (dtype == DType::kF64) {
    double* data = out.data<double>();
    for (int64_t i = 0; i < n; ++i) data[i] = rng.Normal();
  } else {
    float* data = out.data<float>();
    for (int64_t i = 0; i < n; ++i) data[i] = static_cast<float>(rng.Normal());
  }
  return out;
}

}  // namespace sigmatune::kernels
