// Test-only helpers of the linear-algebra op tests (eigh, svd, qr, rsvd): products and the identities
// the decompositions must satisfy, all evaluated in double on CPU tensors of any float dtype.
// Plain loops: meant for the test shapes (up to ~4097 x 111), not for big square matrices.
#ifndef SIGMATUNE_KERNELS_OPS_LINALG_TESTING_H_
#define SIGMATUNE_KERNELS_OPS_LINALG_TESTING_H_

#include "kernels/base/tensor.h"
#include "kernels/ops/blas_layout.h"

namespace sigmatune::kernels::testing {

// op(a) op(b) as a contiguous f64 tensor.
Tensor ProductF64(const Tensor& a, Transpose ta, const Tensor& b, Transpose tb);

// u diag(s) vt as a contiguous f64 tensor (u [m, k], s [k], vt [k, n]).
Tensor ReconstructF64(const Tensor& u, const Tensor& s, const Tensor& vt);

// max |X^T X - I| over the entries, X = x (columns) or x^T (rows).
enum class Along { kColumns, kRows };
double OrthonormalityError(const Tensor& x, Along along);

// max |r[i][j]| over j < i (0 for an upper triangular matrix).
double MaxBelowDiagonal(const Tensor& r);

// Signs (+1 / -1, as an f64 tensor [k]) that make column j of `actual` best match column j of
// `expected` (the sign of their dot product; +1 for a zero dot product).
Tensor ColumnSigns(const Tensor& actual, const Tensor& expected);
// x with column j (kColumns) or row j (kRows) multiplied by signs[j], as a contiguous f64 tensor.
Tensor ApplySigns(const Tensor& x, const Tensor& signs, Along along);

// Whether a vector's entries never decrease / never increase.
bool IsAscending(const Tensor& v);
bool IsDescending(const Tensor& v);

}  // namespace sigmatune::kernels::testing

#endif  // SIGMATUNE_KERNELS_OPS_LINALG_TESTING_H_
