// Dequantisation against gguf-py: dequant.gguf (tools/golden/make_gguf_fixtures.py) holds random
// blocks "q.<TYPE>" of every supported type and "ref.<TYPE>", gguf.quants.dequantize's f32 output.
// The f32 path must match bit for bit; the bf16 path must equal FloatToBFloat16 of it.
#include "formats/gguf_dequant.h"

#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"

namespace sigmatune {
namespace {

using ::testing::HasSubstr;

class GgufDequant : public ::testing::TestWithParam<const char*> {};

TEST_P(GgufDequant, MatchesGgufPyBitForBit) {
  const std::string path = testing::RunfilePath("tests/testdata/formats/gguf/dequant.gguf");
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const std::string type = GetParam();
  auto got = DequantizeTensor(*f, "q." + type, DType::kF32);
  ASSERT_TRUE(got.ok()) << got.status();
  auto ref = DequantizeTensor(*f, "ref." + type, DType::kF32);  // stored as F32: a plain copy
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_EQ(f->FindTensor("ref." + type)->type, GgmlType::kF32);
  ASSERT_EQ(got->shape(), ref->shape());
  const float* g = got->data<float>();
  const float* r = ref->data<float>();
  int64_t mismatches = 0;
  for (int64_t i = 0; i < got->numel(); ++i) {
    uint32_t gb, rb;
    std::memcpy(&gb, g + i, 4);
    std::memcpy(&rb, r + i, 4);
    if (gb != rb && ++mismatches <= 5) {
      ADD_FAILURE() << type << " element " << i << ": got " << g[i] << " (0x" << std::hex << gb
                    << "), gguf-py " << r[i] << " (0x" << rb << ")" << std::dec;
    }
  }
  EXPECT_EQ(mismatches, 0) << type;

  auto bf = DequantizeTensor(*f, "q." + type, DType::kBF16);
  ASSERT_TRUE(bf.ok()) << bf.status();
  ASSERT_EQ(bf->shape(), ref->shape());
  const BFloat16* b = bf->data<BFloat16>();
  for (int64_t i = 0; i < got->numel(); ++i) {
    ASSERT_EQ(b[i].bits, FloatToBFloat16(r[i]).bits) << type << " element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GgufDequant,
                         ::testing::Values("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K",
                                           "Q6_K"));

TEST(GgufDequantErrors, UnsupportedTypeNamesFileTensorAndType) {
  // A hand-made file with one Q5_K tensor (known layout, no dequantiser).
  std::string bytes;
  auto u32 = [&bytes](uint32_t v) { bytes.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&bytes](uint64_t v) { bytes.append(reinterpret_cast<const char*>(&v), 8); };
  u32(0x46554747);
  u32(3);
  u64(1);
  u64(0);
  u64(1);
  bytes += "w";
  u32(1);
  u64(256);
  u32(13);  // Q5_K
  u64(0);
  while (bytes.size() % 32 != 0) bytes.push_back('\0');
  bytes.append(176, '\0');
  auto f = GgufFile::FromBytes("q5k.gguf", bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  auto t = DequantizeTensor(*f, "w", DType::kF32);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("gguf q5k.gguf: tensor 'w'"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("Q5_K"));
  EXPECT_EQ(DequantizeTensor(*f, "missing", DType::kF32).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(GgufDequantBlocks, HandComputedQ4_1AndQ6_K) {
  // Q4_1: d = 0.5, m = -1, qs[j] = j | (15 - j) << 4.
  uint8_t blk[20] = {};
  const uint16_t half = FloatToFloat16(0.5f).bits, minus1 = FloatToFloat16(-1.0f).bits;
  std::memcpy(blk, &half, 2);
  std::memcpy(blk + 2, &minus1, 2);
  for (int j = 0; j < 16; ++j) blk[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  DequantizeBlocks(GgmlType::kQ4_1, absl::MakeConstSpan(blk, 20), absl::MakeSpan(y, 32));
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * j - 1.0f);
    EXPECT_EQ(y[j + 16], 0.5f * (15 - j) - 1.0f);
  }
  // Q6_K: all q = 33 (value 1 after -32), scales i+1, d = 0.25 (at the end).
  uint8_t k6[210] = {};
  for (int i = 0; i < 128; ++i) k6[i] = 0x11;   // low nibbles 1
  for (int i = 128; i < 192; ++i) k6[i] = 0xAA; // high bits 2 for every 2-bit group: 1 | 2<<4 = 33
  for (int i = 0; i < 16; ++i) k6[192 + i] = static_cast<uint8_t>(i + 1);
  const uint16_t quarter = FloatToFloat16(0.25f).bits;
  std::memcpy(k6 + 208, &quarter, 2);
  float z[256];
  DequantizeBlocks(GgmlType::kQ6_K, absl::MakeConstSpan(k6, 210), absl::MakeSpan(z, 256));
  for (int i = 0; i < 256; ++i) EXPECT_EQ(z[i], 0.25f * (i / 16 + 1)) << i;
}

}  // namespace
}  // namespace sigmatune
