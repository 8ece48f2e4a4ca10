#include "formats/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "formats/atomic_file.h"
#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/status.h"
#include "nlohmann/json.hpp"

namespace sigmatune::formats {
namespace {

namespace fs = std::filesystem;
using ::sigmatune::testing::RunfilePath;

constexpr char kFixtureDir[] = "tests/testdata/formats/safetensors/";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp ? tmp : "/tmp") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

// A file image: 8-byte length, `header`, `data`.
std::string Image(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&out[0], &n, 8);
  return out + header + data;
}

// The status of parsing `bytes` named "mem.safetensors".
absl::Status ParseStatus(const std::string& bytes) {
  return SafetensorsReader::FromBuffer(bytes, "mem.safetensors").status();
}

// --- the fixture written by python safetensors -------------------------------------------------

TEST(SafetensorsTest, ReadsPythonWrittenFixture) {
  const std::string path = RunfilePath(std::string(kFixtureDir) + "python_written.safetensors");
  absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->metadata().at("format"), "pt");

  const nlohmann::json expected = nlohmann::json::parse(
      ReadAll(RunfilePath(std::string(kFixtureDir) + "python_written.json")), nullptr, false);
  ASSERT_TRUE(expected.is_object());
  EXPECT_EQ(reader->names().size(), expected.size());
  for (const auto& [name, want] : expected.items()) {
    SCOPED_TRACE(name);
    const SafetensorsEntry* e = reader->Find(name);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->shape, want["shape"].get<Shape>());
    const std::vector<double> values = want["values"].get<std::vector<double>>();
    absl::StatusOr<Tensor> t = reader->GetTensor(name);
    if (ToKernelDType(e->dtype).has_value()) {
      ASSERT_TRUE(t.ok()) << t.status();
      ASSERT_EQ(t->numel(), static_cast<int64_t>(values.size()));
      for (int64_t i = 0; i < t->numel(); ++i) EXPECT_EQ(GetAsDouble(*t, i), values[i]) << i;
    } else {
      // U8/I8/I16/BOOL: Unimplemented as a Tensor, but the bytes are there.
      EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
      EXPECT_ERROR_MENTIONS(t.status(), path.c_str(), name.c_str(), "RawBytes");
      absl::StatusOr<absl::string_view> raw = reader->RawBytes(name);
      ASSERT_TRUE(raw.ok());
      const int width = SafetensorsDTypeBits(e->dtype) / 8;
      ASSERT_EQ(raw->size(), values.size() * width);
      for (size_t i = 0; i < values.size(); ++i) {
        int64_t v = 0;
        if (e->dtype == SafetensorsDType::kI8) v = static_cast<int8_t>((*raw)[i]);
        if (e->dtype == SafetensorsDType::kU8 || e->dtype == SafetensorsDType::kBool) {
          v = static_cast<uint8_t>((*raw)[i]);
        }
        if (e->dtype == SafetensorsDType::kI16) {
          int16_t x;
          std::memcpy(&x, raw->data() + 2 * i, 2);
          v = x;
        }
        EXPECT_EQ(static_cast<double>(v), values[i]) << i;
      }
    }
  }
}

TEST(SafetensorsTest, WriterIsByteIdenticalToPython) {
  const std::string path = RunfilePath(std::string(kFixtureDir) + "python_written.safetensors");
  const std::string original = ReadAll(path);
  absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::FromBuffer(original, path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  // Every tensor again, as raw bytes (all dtypes) ...
  std::map<std::string, RawTensor> raw;
  for (const SafetensorsEntry& e : reader->entries()) {
    raw[e.name] = RawTensor{e.dtype, e.shape, *reader->RawBytes(e.name)};
  }
  absl::StatusOr<std::string> bytes = SerializeSafetensors(raw, {{"format", "pt"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_TRUE(*bytes == original) << "header ours:   " << bytes->substr(8, 200)
                                  << "\nheader python: " << original.substr(8, 200);
  // ... and written to disk (the "format": "pt" metadata is added by default).
  const std::string out = TempDir("identical") + "/copy.safetensors";
  ASSERT_TRUE(WriteSafetensors(out, raw, {}).ok());
  EXPECT_TRUE(ReadAll(out) == original);
}

// --- round trip --------------------------------------------------------------------------------

TEST(SafetensorsTest, RoundTripAndViewsOutliveTheReader) {
  std::map<std::string, Tensor> tensors;
  tensors["a.f32"] = Tensor::FromVector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  tensors["b.transposed"] = tensors["a.f32"].Transposed();  // non-contiguous: copied on write
  tensors["c.f64"] = Tensor::FromVector<double>({}, {3.25});
  tensors["d.bf16"] = Tensor::FromVector<float>({4}, {1, -2, 0.5, 1e30f}).To(DType::kBF16);
  tensors["e.i64"] = Tensor::FromVector<int64_t>({1, 2}, {int64_t{1} << 50, -3});
  tensors["f.empty"] = Tensor::Zeros({0, 5}, DType::kF16);
  tensors["g.i32"] = Tensor::FromVector<int32_t>({3}, {7, -8, 9});
  const std::string path = TempDir("roundtrip") + "/model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"note", "x\"y\n"}}).ok());

  Tensor view;
  {
    absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(path);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ(reader->metadata().at("note"), "x\"y\n");
    EXPECT_EQ(reader->metadata().at("format"), "pt");
    ASSERT_EQ(reader->names().size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      absl::StatusOr<Tensor> got = reader->GetTensor(name);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->dtype(), t.dtype()) << name;
      EXPECT_EQ(got->shape(), t.shape()) << name;
      EXPECT_TRUE(sigmatune::testing::AllClose(*got, t, {0, 0})) << name;
      // Standard files keep every tensor aligned, so these are views into the mapping.
      const absl::string_view raw = *reader->RawBytes(name);
      EXPECT_EQ(got->raw_data(), static_cast<const void*>(raw.data())) << name;
    }
    view = *reader->GetTensor("a.f32");
  }
  // The reader is gone; the view keeps the mapping alive.
  EXPECT_EQ(view.at<float>({1, 2}), 6.0f);
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  EXPECT_ERROR_MENTIONS(
      SerializeSafetensors(std::map<std::string, Tensor>{{"__metadata__", Tensor::Zeros({1}, DType::kF32)}}, {}).status(),
      "__metadata__");
  EXPECT_ERROR_MENTIONS(SerializeSafetensors(std::map<std::string, Tensor>{{"w", Tensor()}}, {}).status(),
                        "'w'", "undefined");
  const std::string two_bytes = "ab";
  EXPECT_ERROR_MENTIONS(
      SerializeSafetensors(std::map<std::string, RawTensor>{{"r", {SafetensorsDType::kF32, {1}, two_bytes}}}, {})
          .status(),
      "'r'", "2 bytes", "needs 4");
  EXPECT_ERROR_MENTIONS(
      SerializeSafetensors(std::map<std::string, RawTensor>{{std::string("\xff\xfe"), {SafetensorsDType::kU8, {2}, two_bytes}}}, {})
          .status(),
      "not UTF-8");
  EXPECT_ERROR_MENTIONS(WriteSafetensors("/nonexistent-dir/x.safetensors",
                                         std::map<std::string, Tensor>{}, {}),
                        "/nonexistent-dir/x.safetensors");
}

// --- malformed files, each built from a good one -----------------------------------------------

constexpr char kGoodHeader[] =
    R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
    R"("b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})";

TEST(SafetensorsTest, GoodBaseParses) {
  ASSERT_TRUE(ParseStatus(Image(kGoodHeader, std::string(16, '\1'))).ok());
  // Leading/trailing whitespace, zero-size and rank-0 tensors are legal.
  EXPECT_TRUE(ParseStatus(Image(
      R"(  {"z":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}   )",
      std::string(4, '\0'))).ok());
  EXPECT_TRUE(ParseStatus(Image("{}", "")).ok());
}

TEST(SafetensorsTest, RejectsMalformedFilesNamingFileAndTensor) {
  const std::string data(16, '\1');
  struct Case {
    const char* what;
    std::string bytes;
    std::vector<const char*> mentions;
  };
  std::string huge(8, '\0');
  const uint64_t big = kMaxSafetensorsHeaderBytes + 1;
  std::memcpy(&huge[0], &big, 8);
  std::string past_end = Image(kGoodHeader, data);
  const uint64_t too_long = past_end.size();
  std::memcpy(&past_end[0], &too_long, 8);
  const auto with = [&](const std::string& header) { return Image(header, data); };
  const std::vector<Case> cases = {
      {"short file", "abc", {"mem.safetensors", "3 bytes", "8-byte"}},
      {"header cap", huge, {"mem.safetensors", "header length", "limit"}},
      {"header past end", past_end, {"mem.safetensors", "runs past the end"}},
      {"not json", with("{\"w\":"), {"mem.safetensors", "not valid UTF-8 JSON"}},
      {"not utf8", with("{\"\xff\":1}"), {"mem.safetensors", "not valid UTF-8 JSON"}},
      {"array header", with("[1,2]"), {"mem.safetensors", "header is a JSON array"}},
      {"entry not object", with(R"({"w":[0,8]})"), {"'w'", "expected an object"}},
      {"missing dtype", with(R"({"w":{"shape":[2],"data_offsets":[0,8]}})"), {"'w'", "'dtype'"}},
      {"dtype not string", with(R"({"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})"), {"'w'", "'dtype'"}},
      {"unknown dtype", with(R"({"w":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})"), {"'w'", "F17", "known:"}},
      {"shape missing", with(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})"), {"'w'", "'shape'"}},
      {"negative dim", with(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})"), {"'w'", "'shape'", "-2"}},
      {"float dim", with(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})"), {"'w'", "'shape'"}},
      {"shape overflow", with(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})"), {"'w'", "overflows"}},
      {"offsets missing", with(R"({"w":{"dtype":"F32","shape":[2]}})"), {"'w'", "'data_offsets'"}},
      {"offsets three", with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})"), {"'w'", "'data_offsets'"}},
      {"offsets strings", with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}})"), {"'w'", "'data_offsets'"}},
      {"end before begin", with(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})"), {"'w'", "end before"}},
      {"size mismatch", with(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})"),
       {"'w'", "8 bytes", "needs 12"}},
      {"sub-byte", with(R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})"), {"'w'", "byte boundary"}},
      {"past data", with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[2],"data_offsets":[8,24]}})"),
       {"'b'", "past the data section"}},
      {"overlap", with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[4,12]}})"),
       {"'b'", "overlap", "'w'"}},
      {"gap", with(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})"),
       {"'b'", "gap of 4 bytes", "'w'"}},
      {"gap at start", with(R"({"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})"), {"'b'", "gap", "start"}},
      {"trailing bytes", Image(kGoodHeader, data + "xx"), {"mem.safetensors", "trailing"}},
      {"metadata not strings", with(R"({"__metadata__":{"format":1234},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})"), {"'__metadata__'", "'format'", "strings"}},
      {"metadata not object", with(R"({"__metadata__":[],"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})"),
       {"'__metadata__'", "object"}},
      {"duplicate tensor", with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})"),
       {"'w'", "twice"}},
      {"duplicate field", with(R"({"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})"),
       {"'dtype'", "twice"}},
      {"deep nesting", with("{\"w\":" + std::string(100, '[') + std::string(100, ']') + "}"), {"nested"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const absl::Status s = ParseStatus(c.bytes);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("mem.safetensors"), absl::string_view::npos) << s;
    for (const char* part : c.mentions) {
      EXPECT_NE(s.message().find(part), absl::string_view::npos) << "'" << part << "' not in: " << s;
    }
  }
}

TEST(SafetensorsTest, OpenNamesThePathOfABadFile) {
  const std::string dir = TempDir("bad");
  const std::string path = dir + "/broken.safetensors";
  ASSERT_TRUE(WriteFileAtomically(path, Image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'))).ok());
  EXPECT_ERROR_MENTIONS(SafetensorsReader::Open(path).status(), path.c_str(), "'w'");
  ASSERT_TRUE(WriteFileAtomically(path, "1234").ok());
  EXPECT_ERROR_MENTIONS(SafetensorsReader::Open(path).status(), path.c_str(), "8-byte");
  EXPECT_EQ(SafetensorsReader::Open(dir + "/missing.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<SafetensorsReader> ok = SafetensorsReader::FromBuffer(Image(kGoodHeader, std::string(16, '\0')), "x");
  ASSERT_TRUE(ok.ok());
  EXPECT_ERROR_MENTIONS(ok->GetTensor("nope").status(), "'nope'", "x");
}

TEST(SafetensorsTest, MisalignedTensorIsCopied) {
  // A non-standard writer: the header length is not a multiple of 8.
  const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} )";
  ASSERT_NE(header.size() % 4, 0u);
  float one = 1.0f;
  std::string data(4, '\0');
  std::memcpy(&data[0], &one, 4);
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::FromBuffer(Image(header, data), "m");
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<Tensor> t = r->GetTensor("w");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->at<float>({0}), 1.0f);
}

// --- sharded checkpoints -----------------------------------------------------------------------

TEST(SafetensorsTest, ShardedCheckpointLooksUpByName) {
  const std::string index = RunfilePath(std::string(kFixtureDir) + "sharded/model.safetensors.index.json");
  absl::StatusOr<ShardedCheckpoint> ckpt = ShardedCheckpoint::Open(index);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->num_shards(), 5u);
  EXPECT_EQ(ckpt->names().size(), 21u);
  absl::StatusOr<Tensor> k = ckpt->GetTensor("model.layers.1.self_attn.k_proj.weight");
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->shape(), (Shape{8, 16}));
  EXPECT_EQ(k->dtype(), DType::kF32);
  EXPECT_EQ(ckpt->TensorShapes().at("lm_head.weight"), (Shape{64, 16}));
  EXPECT_ERROR_MENTIONS(ckpt->GetTensor("model.layers.9.mlp.up_proj.weight").status(),
                        index.c_str(), "'model.layers.9.mlp.up_proj.weight'");
  // The directory form finds the index.
  absl::StatusOr<ShardedCheckpoint> by_dir = ShardedCheckpoint::OpenDirectory(fs::path(index).parent_path().string());
  ASSERT_TRUE(by_dir.ok()) << by_dir.status();
  EXPECT_EQ(by_dir->names(), ckpt->names());
}

TEST(SafetensorsTest, SingleFileDirectory) {
  const std::string dir = TempDir("single");
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               std::map<std::string, Tensor>{{"x", Tensor::Zeros({2}, DType::kF32)}}, {})
                  .ok());
  absl::StatusOr<ShardedCheckpoint> ckpt = ShardedCheckpoint::OpenDirectory(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->names(), std::vector<std::string>{"x"});
  EXPECT_TRUE(ckpt->GetTensor("x").ok());
  EXPECT_EQ(ShardedCheckpoint::OpenDirectory(TempDir("emptydir")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, BrokenIndexesNameIndexShardAndTensor) {
  const std::string src = RunfilePath(std::string(kFixtureDir) + "sharded");
  const std::string dir = TempDir("broken_index");
  for (const auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), fs::path(dir) / e.path().filename());
  const std::string index = dir + "/model.safetensors.index.json";
  const auto write_index = [&](const std::string& weight_map) {
    ASSERT_TRUE(WriteFileAtomically(index, "{\"metadata\":{\"total_size\":1},\"weight_map\":" + weight_map + "}").ok());
  };
  write_index(R"({"model.norm.weight":"model-00001-of-00005.safetensors"})");
  EXPECT_ERROR_MENTIONS(ShardedCheckpoint::Open(index).status(), index.c_str(), "'model.norm.weight'",
                        "model-00001-of-00005.safetensors", "does not contain");
  write_index(R"({"model.norm.weight":"model-00009-of-00009.safetensors"})");
  EXPECT_ERROR_MENTIONS(ShardedCheckpoint::Open(index).status(), index.c_str(),
                        "model-00009-of-00009.safetensors", "'model.norm.weight'");
  write_index(R"({"model.norm.weight":"../model-00004-of-00005.safetensors"})");
  EXPECT_ERROR_MENTIONS(ShardedCheckpoint::Open(index).status(), index.c_str(), "not a relative path");
  write_index(R"({"model.norm.weight":4})");
  EXPECT_ERROR_MENTIONS(ShardedCheckpoint::Open(index).status(), index.c_str(), "'model.norm.weight'");
  write_index(R"([])");
  EXPECT_ERROR_MENTIONS(ShardedCheckpoint::Open(index).status(), index.c_str(), "'weight_map'");
  ASSERT_TRUE(WriteFileAtomically(index, "not json").ok());
  EXPECT_ERROR_MENTIONS(ShardedCheckpoint::Open(index).status(), index.c_str(), "not a JSON object");
  EXPECT_EQ(ShardedCheckpoint::Open(dir + "/none.json").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sigmatune::formats
