// GGUF reader: metadata of every type on a file written by gguf-py's GGUFWriter, tensor infos and
// shapes, version 2, and malformed files (truncation everywhere, bad magic/version, absurd counts
// and lengths, offsets past EOF, unknown types, misalignment, duplicates), each with an error that
// names the file and the key or tensor.
#include "formats/gguf.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"

namespace sigmatune {
namespace {

using ::testing::HasSubstr;

std::string Fixture(const std::string& name) {
  return testing::RunfilePath("tests/testdata/formats/gguf/" + name);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Little-endian builder for hand-made GGUF files.
class Builder {
 public:
  Builder& U32(uint32_t v) { return Raw(&v, 4); }
  Builder& U64(uint64_t v) { return Raw(&v, 8); }
  Builder& U8(uint8_t v) { return Raw(&v, 1); }
  Builder& F32(float v) { return Raw(&v, 4); }
  Builder& Str(const std::string& s) {
    U64(s.size());
    bytes_ += s;
    return *this;
  }
  Builder& Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return U32(0x46554747).U32(version).U64(n_tensors).U64(n_kv);
  }
  Builder& PadTo(uint64_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back('\0');
    return *this;
  }
  Builder& Zeros(size_t n) {
    bytes_.append(n, '\0');
    return *this;
  }
  // A 1-D F32 tensor info.
  Builder& F32Info(const std::string& name, uint64_t n, uint64_t offset) {
    return Str(name).U32(1).U64(n).U32(0).U64(offset);
  }
  const std::string& bytes() const { return bytes_; }

 private:
  Builder& Raw(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string bytes_;
};

absl::Status Parse(const std::string& bytes) {
  return GgufFile::FromBytes("test.gguf", bytes).status();
}

void ExpectError(const std::string& bytes, absl::StatusCode code,
                 const std::vector<std::string>& parts) {
  const absl::Status st = Parse(bytes);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), code) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("gguf test.gguf:"));
  for (const std::string& p : parts) EXPECT_THAT(std::string(st.message()), HasSubstr(p));
}

TEST(GgufFile, ReadsEveryMetadataType) {
  auto f = GgufFile::Open(Fixture("dequant.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  EXPECT_EQ(*f->GetString("general.architecture"), "sigmatune-test");
  EXPECT_EQ(*f->GetU64("test.u8"), 200u);
  EXPECT_EQ(*f->GetI64("test.i8"), -100);
  EXPECT_EQ(*f->GetU32("test.u16"), 60000u);
  EXPECT_EQ(*f->GetI64("test.i16"), -30000);
  EXPECT_EQ(*f->GetU32("test.u32"), 4000000000u);
  EXPECT_EQ(*f->GetI64("test.i32"), -2000000000);
  EXPECT_EQ(*f->GetF32("test.f32"), 0.15625f);
  EXPECT_EQ(*f->GetF64("test.f32"), 0.15625);
  EXPECT_TRUE(*f->GetBool("test.bool"));
  EXPECT_EQ(*f->GetString("test.string"), "h\xc3\xa9llo \xe2\x98\x83");
  EXPECT_EQ(*f->GetU64("test.u64"), (uint64_t{1} << 63) + 5);
  EXPECT_EQ(*f->GetI64("test.i64"), -(int64_t{1} << 62));
  EXPECT_EQ(*f->GetF64("test.f64"), 1.0 / 3.0);
  EXPECT_EQ(*f->GetIntArray("test.array_i32"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(*f->GetFloatArray("test.array_f32"), (std::vector<double>{0.5, -1.25}));
  EXPECT_EQ(*f->GetStringArray("test.array_string"), (std::vector<std::string>{"a", "", "b c"}));
  EXPECT_EQ(*f->GetArrayLength("test.array_nested"), 2u);

  const GgufValue* nested = f->FindValue("test.array_nested");
  ASSERT_NE(nested, nullptr);
  const std::vector<GgufValue> outer = f->ArrayElements(*nested);
  ASSERT_EQ(outer.size(), 2u);
  std::vector<std::vector<int64_t>> values;
  for (const GgufValue& inner : outer) {
    ASSERT_EQ(inner.type, GgufValueType::kArray);
    values.emplace_back();
    for (const GgufValue& e : f->ArrayElements(inner)) values.back().push_back(f->IntValue(e));
  }
  EXPECT_EQ(values, (std::vector<std::vector<int64_t>>{{1, 2}, {3}}));
  // Keys come in file order; the nested array is followed by more keys that must still parse.
  EXPECT_EQ(f->keys().front(), "general.architecture");
}

TEST(GgufFile, TypedAccessorErrorsNameKeyAndTypes) {
  auto f = GgufFile::Open(Fixture("dequant.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  const std::string path = Fixture("dequant.gguf");
  auto missing = f->GetU32("no.such.key");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("'no.such.key'"));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(path));
  auto wrong = f->GetString("test.u32");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong.status().message()),
              HasSubstr("key 'test.u32' should be string, but it is u32"));
  auto arr = f->GetStringArray("test.array_i32");
  EXPECT_THAT(std::string(arr.status().message()), HasSubstr("array of i32"));
  auto neg = f->GetU64("test.i8");
  EXPECT_THAT(std::string(neg.status().message()), HasSubstr("non-negative"));
  auto big = f->GetU32("test.u64");
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("does not fit in u32"));
  EXPECT_FALSE(f->GetF32("test.f64").ok());
}

TEST(GgufFile, TensorInfosUsePyTorchOrderShapes) {
  auto f = GgufFile::Open(Fixture("dequant.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufTensorInfo* q = f->FindTensor("q.Q4_K");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, GgmlType::kQ4_K);
  EXPECT_EQ(q->ggml_dims, (std::vector<int64_t>{512, 2}));
  EXPECT_EQ(q->shape, (Shape{2, 512}));
  EXPECT_EQ(q->numel, 1024);
  EXPECT_EQ(q->nbytes, 4u * 144u);
  EXPECT_EQ(q->file_offset, f->data_offset() + q->offset);
  auto bytes = f->TensorBytes("q.Q4_K");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->bytes.size(), 576u);
  EXPECT_EQ(f->TensorBytes("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(f->tensors().size(), 16u);
}

TEST(GgufFile, TensorBytesOutliveTheFile) {
  GgufTensorBytes bytes;
  std::vector<uint8_t> copy;
  {
    auto f = GgufFile::Open(Fixture("dequant.gguf"));
    ASSERT_TRUE(f.ok()) << f.status();
    GgufFile moved = std::move(*f);
    auto b = moved.TensorBytes("ref.F32");
    ASSERT_TRUE(b.ok());
    copy.assign(b->bytes.begin(), b->bytes.end());
    bytes = *b;
  }
  // The mapping is held by keepalive after the GgufFile is gone.
  ASSERT_EQ(bytes.bytes.size(), copy.size());
  EXPECT_EQ(std::memcmp(bytes.bytes.data(), copy.data(), copy.size()), 0);
}

TEST(GgufFile, AcceptsVersion2AndCustomAlignment) {
  std::string bytes = ReadAll(Fixture("tiny_llama.gguf"));
  bytes[4] = 2;
  auto f = GgufFile::FromBytes("v2.gguf", bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->alignment(), 64u);
  for (const GgufTensorInfo& t : f->tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;
}

TEST(GgufFile, OpenMissingFileNamesIt) {
  auto f = GgufFile::Open("/nonexistent/dir/model.gguf");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("/nonexistent/dir/model.gguf"));
}

TEST(GgufMalformed, TruncatedAnywhereBeforeTheLastTensorEnds) {
  const std::string bytes = ReadAll(Fixture("tiny_llama.gguf"));
  auto full = GgufFile::FromBytes("test.gguf", bytes);
  ASSERT_TRUE(full.ok()) << full.status();
  uint64_t end = 0;
  for (const GgufTensorInfo& t : full->tensors()) end = std::max(end, t.file_offset + t.nbytes);
  // Header, every metadata section, every tensor info, the data section.
  for (uint64_t n = 0; n < end; n += (n < full->data_offset() ? 1 : 61)) {
    const absl::Status st = Parse(bytes.substr(0, n));
    ASSERT_FALSE(st.ok()) << "prefix of " << n << " bytes parsed";
    ASSERT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    ASSERT_THAT(std::string(st.message()), HasSubstr("gguf test.gguf:")) << st;
    const bool names_something = st.message().find("key") != absl::string_view::npos ||
                                 st.message().find("tensor") != absl::string_view::npos ||
                                 st.message().find("header") != absl::string_view::npos ||
                                 st.message().find("magic") != absl::string_view::npos ||
                                 st.message().find("version") != absl::string_view::npos ||
                                 st.message().find("count") != absl::string_view::npos;
    ASSERT_TRUE(names_something) << st;
  }
  ExpectError(bytes.substr(0, end - 1), absl::StatusCode::kInvalidArgument,
              {"tensor 'output_norm.weight'", "runs past the end of the file"});
  ExpectError(bytes.substr(0, 30), absl::StatusCode::kInvalidArgument,
              {"metadata count 23 cannot fit in the 6 bytes"});
  const size_t merges = bytes.find("tokenizer.ggml.merges");
  ASSERT_NE(merges, std::string::npos);
  ExpectError(bytes.substr(0, merges + 30), absl::StatusCode::kInvalidArgument,
              {"truncated", "key 'tokenizer.ggml.merges'"});
  ExpectError(bytes.substr(0, full->data_offset() - 70), absl::StatusCode::kInvalidArgument,
              {"truncated", "tensor '"});
}

TEST(GgufMalformed, BadMagicAndVersion) {
  ExpectError(Builder().U32(0x46554746).U32(3).U64(0).U64(0).bytes(),
              absl::StatusCode::kInvalidArgument, {"bad magic"});
  ExpectError(Builder().Header(0, 0, 1).bytes(), absl::StatusCode::kUnimplemented,
              {"unsupported GGUF version 1"});
  ExpectError(Builder().Header(0, 0, 4).bytes(), absl::StatusCode::kUnimplemented,
              {"version 4"});
  EXPECT_TRUE(Parse(Builder().Header(0, 0).bytes()).ok());
}

TEST(GgufMalformed, AbsurdCountsAndLengths) {
  ExpectError(Builder().Header(0, uint64_t{1} << 60).bytes(), absl::StatusCode::kInvalidArgument,
              {"metadata count"});
  ExpectError(Builder().Header(uint64_t{1} << 62, 0).bytes(), absl::StatusCode::kInvalidArgument,
              {"tensor count"});
  // A key length of 2^63.
  ExpectError(Builder().Header(0, 1).U64(uint64_t{1} << 63).Zeros(16).bytes(),
              absl::StatusCode::kInvalidArgument, {"key of metadata entry 0", "limit"});
  // A string value claiming 2^40 bytes.
  ExpectError(Builder().Header(0, 1).Str("a.b").U32(8).U64(uint64_t{1} << 40).bytes(),
              absl::StatusCode::kInvalidArgument, {"key 'a.b'", "truncated"});
  // An array of 2^61 u64.
  ExpectError(Builder().Header(0, 1).Str("a.arr").U32(9).U32(10).U64(uint64_t{1} << 61).bytes(),
              absl::StatusCode::kInvalidArgument, {"key 'a.arr'", "cannot fit"});
  // Unknown value type, unknown array element type.
  ExpectError(Builder().Header(0, 1).Str("a.t").U32(13).U32(0).bytes(),
              absl::StatusCode::kInvalidArgument, {"key 'a.t'", "unknown value type 13"});
  ExpectError(Builder().Header(0, 1).Str("a.t").U32(9).U32(99).U64(1).U32(0).bytes(),
              absl::StatusCode::kInvalidArgument, {"key 'a.t'", "unknown array element type 99"});
  // Arrays nested too deep.
  Builder deep;
  deep.Header(0, 1).Str("a.deep").U32(9);
  for (int i = 0; i < 20; ++i) deep.U32(9).U64(1);
  deep.U32(4).U64(0);
  ExpectError(deep.bytes(), absl::StatusCode::kInvalidArgument, {"key 'a.deep'", "nested"});
  // Tensor name longer than 64 bytes; too many dims; dims overflowing.
  ExpectError(Builder().Header(1, 0).Str(std::string(65, 'x')).Zeros(64).bytes(),
              absl::StatusCode::kInvalidArgument, {"name of tensor 0", "limit 64"});
  ExpectError(Builder().Header(1, 0).Str("w").U32(5).Zeros(64).bytes(),
              absl::StatusCode::kInvalidArgument, {"tensor 'w'", "n_dims 5"});
  ExpectError(Builder().Header(1, 0).Str("w").U32(2).U64(uint64_t{1} << 40).U64(uint64_t{1} << 40)
                  .U32(0).U64(0).bytes(),
              absl::StatusCode::kInvalidArgument, {"tensor 'w'", "overflow"});
}

TEST(GgufMalformed, TensorLayoutErrors) {
  // Offset past EOF.
  ExpectError(Builder().Header(1, 0).F32Info("w", 4, 1 << 20).PadTo(32).Zeros(16).bytes(),
              absl::StatusCode::kInvalidArgument, {"tensor 'w'", "runs past the end of the file"});
  // Misaligned offset.
  ExpectError(Builder().Header(1, 0).F32Info("w", 4, 8).PadTo(32).Zeros(64).bytes(),
              absl::StatusCode::kInvalidArgument,
              {"tensor 'w'", "offset 8 is not a multiple of the alignment 32"});
  // Unknown ggml type; dims[0] not a multiple of the block.
  ExpectError(Builder().Header(1, 0).Str("w").U32(1).U64(32).U32(99).U64(0).PadTo(32).Zeros(64)
                  .bytes(),
              absl::StatusCode::kUnimplemented, {"tensor 'w'", "unknown ggml type id 99"});
  ExpectError(Builder().Header(1, 0).Str("w").U32(1).U64(33).U32(8).U64(0).PadTo(32).Zeros(64)
                  .bytes(),
              absl::StatusCode::kInvalidArgument, {"tensor 'w'", "Q8_0 block size 32"});
  // Duplicate tensor names, overlapping tensors, duplicate keys.
  ExpectError(Builder().Header(2, 0).F32Info("w", 4, 0).F32Info("w", 4, 32).PadTo(32).Zeros(64)
                  .bytes(),
              absl::StatusCode::kInvalidArgument, {"duplicate tensor name 'w'"});
  ExpectError(Builder().Header(2, 0).F32Info("a", 16, 0).F32Info("b", 4, 32).PadTo(32).Zeros(96)
                  .bytes(),
              absl::StatusCode::kInvalidArgument, {"tensor 'b'", "overlaps tensor 'a'"});
  ExpectError(Builder().Header(0, 2).Str("k").U32(4).U32(1).Str("k").U32(4).U32(2).bytes(),
              absl::StatusCode::kInvalidArgument, {"duplicate key 'k'"});
  // Bad alignment values and types.
  ExpectError(Builder().Header(0, 1).Str("general.alignment").U32(4).U32(12).bytes(),
              absl::StatusCode::kInvalidArgument, {"'general.alignment' is 12"});
  ExpectError(Builder().Header(0, 1).Str("general.alignment").U32(10).U64(32).bytes(),
              absl::StatusCode::kInvalidArgument, {"'general.alignment' must be u32"});
  // A good hand-made file with alignment 16.
  const std::string good = Builder()
                               .Header(2, 1)
                               .Str("general.alignment").U32(4).U32(16)
                               .F32Info("a", 4, 0)
                               .F32Info("b", 2, 16)
                               .PadTo(16)
                               .F32(1).F32(2).F32(3).F32(4).F32(5).F32(6)
                               .bytes();
  auto f = GgufFile::FromBytes("good.gguf", good);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->alignment(), 16u);
  auto b = f->TensorBytes("b");
  ASSERT_TRUE(b.ok());
  float v[2];
  std::memcpy(v, b->bytes.data(), 8);
  EXPECT_EQ(v[0], 5.0f);
  EXPECT_EQ(v[1], 6.0f);
}

}  // namespace
}  // namespace sigmatune
