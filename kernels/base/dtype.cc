#include "kernels/base/dtype.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sigmatune {
namespace {

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float BitsToFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Shifts `value` right by `shift` bits, rounding to nearest with ties to even.
uint32_t ShiftRoundNearestEven(uint32_t value, int shift) {
  const uint32_t kept = value >> shift;
  const uint32_t rest = value & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  return (rest > half || (rest == half && (kept & 1u))) ? kept + 1 : kept;
}

}  // namespace

size_t SizeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kBF16:
    case DType::kF16:
      return 2;
  }
  return 0;
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF64:
      return "f64";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (DType d : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16, DType::kI32, DType::kI64}) {
    if (DTypeName(d) == name) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "'; expected one of f32, f64, bf16, f16, i32, i64"));
}

bool IsFloating(DType dtype) { return dtype != DType::kI32 && dtype != DType::kI64; }

BFloat16 FloatToBFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep the sign, force a quiet NaN.
    return BFloat16{static_cast<uint16_t>((bits >> 16) | 0x0040u)};
  }
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; overflow gives inf.
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(rounded >> 16)};
}

float BFloat16ToFloat(BFloat16 value) { return BitsToFloat(static_cast<uint32_t>(value.bits) << 16); }

Float16 FloatToFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {  // inf, or NaN (kept quiet, top payload bits preserved)
    const uint16_t nan = magnitude > 0x7F800000u ? (0x0200u | ((magnitude >> 13) & 0x03FFu)) : 0;
    return Float16{static_cast<uint16_t>(sign | 0x7C00u | nan)};
  }
  if (magnitude >= 0x477FF000u) {  // >= 65520 rounds past the largest half (65504)
    return Float16{static_cast<uint16_t>(sign | 0x7C00u)};
  }
  const int exponent = static_cast<int>(magnitude >> 23);
  if (exponent < 113) {  // below 2^-14: a half subnormal (or zero) in units of 2^-24
    const int shift = 126 - exponent;
    if (shift > 24) return Float16{sign};  // below half the smallest subnormal
    const uint32_t mantissa = (magnitude & 0x007FFFFFu) | 0x00800000u;
    return Float16{static_cast<uint16_t>(sign | ShiftRoundNearestEven(mantissa, shift))};
  }
  // Normal: rebias the exponent (127 -> 15) and round the mantissa from 23 to 10 bits; a carry
  // out of the mantissa correctly bumps the exponent.
  const uint32_t rebased = ((static_cast<uint32_t>(exponent - 112)) << 23) | (magnitude & 0x007FFFFFu);
  return Float16{static_cast<uint16_t>(sign | ShiftRoundNearestEven(rebased, 13))};
}

float Float16ToFloat(Float16 value) {
  const uint32_t sign = static_cast<uint32_t>(value.bits & 0x8000u) << 16;
  const uint32_t exponent = (value.bits >> 10) & 0x1Fu;
  const uint32_t mantissa = value.bits & 0x03FFu;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;  // exact
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return BitsToFloat(sign | 0x7F800000u | (mantissa << 13));
  return BitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

}  // namespace sigmatune
