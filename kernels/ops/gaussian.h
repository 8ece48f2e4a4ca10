// Seeded standard-normal test matrices generated on the host, so that every backend (and every
// machine) starts the randomized SVD from the same matrix. Not test code: the randomized SVD uses it.
#ifndef SIGMATUNE_KERNELS_OPS_GAUSSIAN_H_
#define SIGMATUNE_KERNELS_OPS_GAUSSIAN_H_

#include <cstdint>

#include "kernels/base/tensor.h"

namespace sigmatune::kernels {

// A contiguous CPU rows x cols tensor of `dtype` (f32 or f64; CHECK-fails otherwise) with independent
// N(0, 1) entries in row-major order, computed in double and rounded once to `dtype`. The generator
// is std::mt19937_64(seed) with our own mapping (53-bit uniforms, Box-Muller cosine branch, one normal
// per pair of draws), never std::normal_distribution, whose output differs between standard
// libraries. Same seed -> same bits everywhere.
Tensor HostGaussianMatrix(int64_t rows, int64_t cols, DType dtype, uint64_t seed);

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_GAUSSIAN_H_
