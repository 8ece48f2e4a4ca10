// Shape/dtype/device validation shared by the neural-network ops (embedding, rms_norm, rope,
// swiglu, cross_entropy, attention). Every failure is an InvalidArgument that names the op and
// the operand, so callers can pass tensors from the outside world straight in.
#ifndef SIGMATUNE_KERNELS_OPS_NN_UTIL_H_
#define SIGMATUNE_KERNELS_OPS_NN_UTIL_H_

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/tensor.h"

namespace sigmatune::kernels::nn {

// `t` is defined, contiguous, of rank shape.size() with these dims (a dim of -1 matches any
// size) and one of `dtypes`.
inline absl::Status ExpectTensor(const Tensor& t, const char* op, const char* what, const Shape& shape,
                                 std::initializer_list<DType> dtypes) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " is not defined"));
  bool shape_ok = t.rank() == static_cast<int>(shape.size());
  for (int i = 0; shape_ok && i < t.rank(); ++i) shape_ok = shape[i] < 0 || shape[i] == t.dim(i);
  if (!shape_ok) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " must have shape ", ShapeToString(shape),
                                                   " (-1 = any), got ", ShapeToString(t.shape())));
  }
  bool dtype_ok = false;
  std::string names;
  for (DType d : dtypes) {
    dtype_ok = dtype_ok || d == t.dtype();
    absl::StrAppend(&names, names.empty() ? "" : "/", DTypeName(d));
  }
  if (!dtype_ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", what, " must be ", names, ", got ", DTypeName(t.dtype())));
  }
  if (!t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " must be contiguous, got ", t.DebugString()));
  }
  return absl::OkStatus();
}

inline absl::Status ExpectSameDType(const Tensor& a, const Tensor& b, const char* op, const char* what_a,
                                    const char* what_b) {
  if (a.dtype() == b.dtype()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what_a, " (", DTypeName(a.dtype()), ") and ", what_b,
                                                 " (", DTypeName(b.dtype()), ") must have the same dtype"));
}

inline absl::Status ExpectCpu(const Tensor& t, const char* op, const char* what) {
  if (t.device().is_cpu()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " must be a CPU tensor, got ", t.DebugString()));
}

}  // namespace sigmatune::kernels::nn

#endif  // SIGMATUNE_KERNELS_OPS_NN_UTIL_H_
