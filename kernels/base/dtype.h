// Element types of tensors and the 16-bit float conversions (round to nearest, ties to even).
#ifndef SIGMATUNE_KERNELS_BASE_DTYPE_H_
#define SIGMATUNE_KERNELS_BASE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace sigmatune {

enum class DType { kF32, kF64, kBF16, kF16, kI32, kI64 };

// Bytes per element.
size_t SizeOf(DType dtype);
// "f32", "f64", "bf16", "f16", "i32", "i64".
absl::string_view DTypeName(DType dtype);
// Inverse of DTypeName; InvalidArgument naming the text for anything else.
absl::StatusOr<DType> ParseDType(absl::string_view name);
bool IsFloating(DType dtype);

// Raw 16-bit storage types. They carry bits only; arithmetic goes through float.
struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

// float -> bfloat16, round to nearest even; NaN stays a quiet NaN of the same sign.
BFloat16 FloatToBFloat16(float value);
float BFloat16ToFloat(BFloat16 value);
// float -> IEEE binary16, round to nearest even, with subnormals; overflow gives +-inf.
Float16 FloatToFloat16(float value);
float Float16ToFloat(Float16 value);

// Compile-time DType of a C++ element type (float, double, BFloat16, Float16, int32_t, int64_t).
template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::kF64;
};
template <>
struct DTypeOf<BFloat16> {
  static constexpr DType value = DType::kBF16;
};
template <>
struct DTypeOf<Float16> {
  static constexpr DType value = DType::kF16;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kI32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::kI64;
};

}  // namespace sigmatune

#endif  // SIGMATUNE_KERNELS_BASE_DTYPE_H_
