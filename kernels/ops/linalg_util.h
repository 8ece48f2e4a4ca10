// Helpers shared by the dense linear-algebra ops (eigh, svd, qr, rsvd): operand validation for both
// backends and, for the CPU references, LAPACK workspace sizing, LAPACK info codes and layout copies.
//
// Contract:
//  - The Expect* functions return InvalidArgument naming `what` (the operand, e.g. "svd input A")
//    and saying what is wrong; they never CHECK-fail on bad input.
//  - The LAPACK helpers assume the system LAPACKE with 32-bit lapack_int (Debian's LP64 build).
//  - Nothing here touches a GPU; the CUDA helpers live in linalg_util_cuda.h.
#ifndef SIGMATUNE_KERNELS_OPS_LINALG_UTIL_H_
#define SIGMATUNE_KERNELS_OPS_LINALG_UTIL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/tensor.h"

namespace sigmatune::kernels {

// OK for f32 and f64; InvalidArgument naming `what` and the dtype otherwise.
absl::Status ExpectRealFloat(const Tensor& t, const char* what);

// InvalidArgument unless `t` is a contiguous rank-2 tensor (any shape) of f32 or f64.
absl::Status ExpectFloatMatrixInput(const Tensor& t, const char* what);

// InvalidArgument unless `t` is a contiguous rank-1 tensor of `dtype` with `size` entries.
absl::Status ExpectVector(const Tensor& t, int64_t size, DType dtype, const char* what);

// InvalidArgument unless `t` lives on the CPU.
absl::Status ExpectOnCpu(const Tensor& t, const char* what);

// InvalidArgument naming `what` and the first offending entry when a CPU f32/f64 tensor holds a NaN
// or an infinity (the solvers would return garbage or fail to converge on it).
absl::Status ExpectFiniteOnCpu(const Tensor& t, const char* what);

// InvalidArgument when `value` does not fit the 32-bit index type of a LAPACK / legacy cuSOLVER
// call (`what` names the quantity, e.g. "eigh workspace length").
absl::Status ExpectInt32Index(int64_t value, const char* what);

// Length of a LAPACK work array from the workspace query's answer (returned in work[0] as a float or
// double) and the routine's documented minimum. A float cannot represent every integer above 2^24
// (ssyevd's 1 + 6n + 2n^2 at n = 4096 rounds *down*), so the query is rounded up with a relative
// slack of 1e-6 plus 1 and the documented minimum is a floor: max(minimum, ceil(query*(1+1e-6))+1).
int64_t LapackWorkLength(double query, int64_t minimum);

// Documented minimum workspaces (jobz = 'V' / 'S'), as in the LAPACK 3.11 reference comments.
int64_t SyevdMinWork(int64_t n);   // 1 + 6n + 2n^2 (1 for n <= 1)
int64_t SyevdMinIwork(int64_t n);  // 3 + 5n (1 for n <= 1)
int64_t SyevrMinWork(int64_t n);   // max(1, 26n)
int64_t SyevrMinIwork(int64_t n);  // max(1, 10n)
// gesdd, jobz = 'S': the larger of the old (3k + max(K, 4k^2 + 4k)) and new (4k^2 + 6k + K)
// formulas, k = min(m, n), K = max(m, n).
int64_t GesddMinWork(int64_t m, int64_t n);
int64_t GesddIwork(int64_t m, int64_t n);  // 8 * min(m, n)

// OK for info == 0; otherwise InternalError naming `routine`: info < 0 says which argument LAPACK
// rejected (a bug in sigmatune), info > 0 that the algorithm did not converge.
absl::Status LapackStatus(int64_t info, const char* routine);

// dst = src^T: src is a row-major rows x cols matrix with row stride `ld_src`; dst is written as a
// row-major cols x rows matrix with row stride `ld_dst`. Host memory, no aliasing.
template <typename T>
void TransposeCopy(const T* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst, int64_t ld_dst) {
  constexpr int64_t kBlock = 32;  // cache blocking; the plain double loop thrashes at n = 4096
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t i1 = i0 + kBlock < rows ? i0 + kBlock : rows;
      const int64_t j1 = j0 + kBlock < cols ? j0 + kBlock : cols;
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
      }
    }
  }
}

// a = a^T in place for a contiguous n x n host matrix.
template <typename T>
void TransposeSquareInPlace(T* a, int64_t n) {
  constexpr int64_t kBlock = 32;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t i1 = i0 + kBlock < n ? i0 + kBlock : n;
    for (int64_t j0 = i0; j0 < n; j0 += kBlock) {
      const int64_t j1 = j0 + kBlock < n ? j0 + kBlock : n;
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0 > i + 1 ? j0 : i + 1; j < j1; ++j) {
          const T tmp = a[i * n + j];
          a[i * n + j] = a[j * n + i];
          a[j * n + i] = tmp;
        }
      }
    }
  }
}

}  // namespace sigmatune::kernels

#endif  // SIGMATUNE_KERNELS_OPS_LINALG_UTIL_H_
