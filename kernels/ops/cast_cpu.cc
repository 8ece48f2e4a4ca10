#include "absl/strings/str_cat.h"
#include "kernels/ops/cast.h"

namespace sigmatune::kernels {

absl::Status CheckCast(const Tensor& src, const Tensor& dst) {
  for (const Tensor* t : {&src, &dst}) {
    if (!t->defined() || !t->is_contiguous() || !IsFloating(t->dtype())) {
      return absl::InvalidArgumentError(
          absl::StrCat("cast needs contiguous f32/f64/bf16/f16 tensors, got ", t->DebugString()));
    }
  }
  if (src.shape() != dst.shape()) {
    return absl::InvalidArgumentError(absl::StrCat("cast shapes differ: ", ShapeToString(src.shape()), " -> ",
                                                   ShapeToString(dst.shape())));
  }
  return absl::OkStatus();
}

namespace cpu {

absl::Status Cast(const Tensor& src, Tensor* dst) {
  ST_CHECK(dst != nullptr);
  absl::Status status = CheckCast(src, *dst);
  if (!status.ok()) return status;
  if (!src.device().is_cpu() || !dst->device().is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu::Cast needs CPU tensors, got ", src.DebugString(), " -> ", dst->DebugString()));
  }
  dst->CopyFrom(src);
  return absl::OkStatus();
}

}  // namespace cpu
}  // namespace sigmatune::kernels
