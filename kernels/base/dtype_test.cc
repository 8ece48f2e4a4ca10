#include "kernels/base/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace sigmatune {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(SizeOf(DType::kBF16), 2u);
  EXPECT_EQ(SizeOf(DType::kF64), 8u);
  EXPECT_EQ(DTypeName(DType::kF16), "f16");
  EXPECT_EQ(ParseDType("bf16").value(), DType::kBF16);
  const auto bad = ParseDType("float8");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("float8"), absl::string_view::npos);
}

TEST(BFloat16Test, RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
  EXPECT_EQ(BFloat16ToFloat(FloatToBFloat16(1.0f + 0x1p-8f)), 1.0f);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
  EXPECT_EQ(BFloat16ToFloat(FloatToBFloat16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  // Just above the tie rounds up.
  EXPECT_EQ(BFloat16ToFloat(FloatToBFloat16(1.0f + 0x1p-8f + 0x1p-20f)), 1.0f + 0x1p-7f);
  EXPECT_EQ(BFloat16ToFloat(FloatToBFloat16(-2.5f)), -2.5f);
  // Largest finite float overflows to inf when rounded.
  EXPECT_TRUE(std::isinf(BFloat16ToFloat(FloatToBFloat16(std::numeric_limits<float>::max()))));
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
}

TEST(BFloat16Test, EveryBf16ValueRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = BFloat16ToFloat(BFloat16{static_cast<uint16_t>(bits)});
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBFloat16(f).bits, bits) << std::hex << bits;
  }
}

TEST(BFloat16Test, MatchesExactNearestRounding) {
  // Compare against a direct "pick the closer neighbour, ties to even" on many floats.
  uint32_t state = 12345;
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    const float f = FromBits(state & 0x7EFFFFFFu);  // finite, positive, below the top binade
    const uint32_t bits = [&] {
      uint32_t b;
      std::memcpy(&b, &f, 4);
      return b;
    }();
    const float lo = FromBits(bits & 0xFFFF0000u);
    const float hi = FromBits((bits & 0xFFFF0000u) + 0x10000u);
    const double dlo = static_cast<double>(f) - lo;
    const double dhi = static_cast<double>(hi) - f;
    float expected = dlo < dhi ? lo : (dhi < dlo ? hi : (((bits >> 16) & 1) ? hi : lo));
    ASSERT_EQ(BFloat16ToFloat(FloatToBFloat16(f)), expected) << f;
  }
}

TEST(Float16Test, EveryHalfValueRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = Float16ToFloat(Float16{static_cast<uint16_t>(bits)});
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToFloat16(f).bits, bits) << std::hex << bits << " " << f;
  }
}

TEST(Float16Test, MatchesCompilerConversion) {
  // GCC's _Float16 conversion (round to nearest even, subnormals) is the reference.
  uint32_t state = 777;
  for (int i = 0; i < 400000; ++i) {
    state = state * 1664525u + 1013904223u;
    // Exponents spread over the half range and beyond (subnormals, overflow).
    const uint32_t exponent = 96 + (state >> 27) % 50;
    const float f = FromBits((state & 0x807FFFFFu) | (exponent << 23));
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t expected;
    std::memcpy(&expected, &h, 2);
    ASSERT_EQ(FloatToFloat16(f).bits, expected) << f;
  }
  EXPECT_EQ(Float16ToFloat(FloatToFloat16(65504.0f)), 65504.0f);
  EXPECT_EQ(Float16ToFloat(FloatToFloat16(65519.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(Float16ToFloat(FloatToFloat16(65520.0f))));
  EXPECT_EQ(Float16ToFloat(FloatToFloat16(0x1p-24f)), 0x1p-24f);  // smallest subnormal
  EXPECT_EQ(Float16ToFloat(FloatToFloat16(0x1p-25f)), 0.0f);      // tie to even: zero
  EXPECT_EQ(Float16ToFloat(FloatToFloat16(0x1.8p-25f)), 0x1p-24f);
}

}  // namespace
}  // namespace sigmatune
