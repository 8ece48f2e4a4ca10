#include "formats/covariance_file.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "formats/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"

namespace sigmatune::formats {
namespace {

std::string TempPath(const std::string& name) { return absl::StrCat(::testing::TempDir(), "/", name); }

CovarianceFile MakeFile(DType dtype) {
  CovarianceFile f;
  f.key = {"model-fp", "data-fp", {"model.layers.1.mlp_in", "model.layers.0.attn_in"},
           dtype == DType::kF32 ? "f32" : "f64"};
  f.samples = 12;
  f.tokens = 345;
  f.covariance["model.layers.0.attn_in"] = testing::RandomNormal({5, 5}, dtype, 1);
  f.covariance["model.layers.1.mlp_in"] = testing::RandomNormal({7, 7}, dtype, 2);
  return f;
}

TEST(CovarianceFileTest, RoundTripsBitExactly) {
  for (DType dtype : {DType::kF32, DType::kF64}) {
    const CovarianceFile f = MakeFile(dtype);
    const std::string path = TempPath(absl::StrCat("cov_", DTypeName(dtype), ".safetensors"));
    ASSERT_TRUE(WriteCovarianceFile(path, f).ok());
    auto read = ReadCovarianceFile(path, f.key);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->samples, 12);
    EXPECT_EQ(read->tokens, 345);
    EXPECT_EQ(read->key.ContentKey(), f.key.ContentKey());
    ASSERT_EQ(read->covariance.size(), 2u);
    for (const auto& [name, c] : f.covariance) {
      const Tensor& got = read->covariance.at(name);
      ASSERT_EQ(got.shape(), c.shape());
      EXPECT_EQ(0, std::memcmp(got.raw_data(), c.raw_data(), c.nbytes())) << name;
    }
  }
}

TEST(CovarianceFileTest, ContentKeyDependsOnEveryFieldButNotSiteOrder) {
  const CovarianceFileKey k = MakeFile(DType::kF32).key;
  CovarianceFileKey reordered = k;
  std::swap(reordered.sites[0], reordered.sites[1]);
  EXPECT_EQ(k.ContentKey(), reordered.ContentKey());
  CovarianceFileKey m = k, d = k, s = k, a = k;
  m.model = "other";
  d.data = "other";
  s.sites.pop_back();
  a.accumulation = "f64";
  for (const CovarianceFileKey* other : {&m, &d, &s, &a}) EXPECT_NE(other->ContentKey(), k.ContentKey());
}

TEST(CovarianceFileTest, RefusesAFileMadeForAnotherJob) {
  const CovarianceFile f = MakeFile(DType::kF32);
  const std::string path = TempPath("cov_other.safetensors");
  ASSERT_TRUE(WriteCovarianceFile(path, f).ok());
  CovarianceFileKey other_model = f.key, other_data = f.key, other_sites = f.key;
  other_model.model = "another-model";
  other_data.data = "another-data";
  other_sites.sites = {"model.layers.0.attn_in"};
  EXPECT_ERROR_MENTIONS(ReadCovarianceFile(path, other_model).status(), "another model");
  EXPECT_ERROR_MENTIONS(ReadCovarianceFile(path, other_data).status(), "another data");
  EXPECT_ERROR_MENTIONS(ReadCovarianceFile(path, other_sites).status(), "another sites");
}

TEST(CovarianceFileTest, DetectsDamage) {
  const CovarianceFile f = MakeFile(DType::kF32);
  // A NaN inside a covariance.
  CovarianceFile bad = f;
  bad.covariance["model.layers.0.attn_in"] = bad.covariance["model.layers.0.attn_in"].Contiguous();
  bad.covariance["model.layers.0.attn_in"].data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan_path = TempPath("cov_nan.safetensors");
  ASSERT_TRUE(WriteCovarianceFile(nan_path, bad).ok());
  EXPECT_ERROR_MENTIONS(ReadCovarianceFile(nan_path, f.key).status(), "NaN");
  // An edited metadata field: the content key no longer matches.
  auto reader = SafetensorsReader::Open(nan_path);
  ASSERT_TRUE(reader.ok());
  std::map<std::string, std::string> meta = reader->metadata();
  meta["content_key"] = "0123";
  std::map<std::string, Tensor> tensors = f.covariance;
  const std::string edited = TempPath("cov_edited.safetensors");
  ASSERT_TRUE(WriteSafetensors(edited, tensors, meta).ok());
  EXPECT_ERROR_MENTIONS(ReadCovarianceFile(edited, f.key).status(), "content_key");
  // A plain safetensors file without our metadata.
  const std::string plain = TempPath("cov_plain.safetensors");
  ASSERT_TRUE(WriteSafetensors(plain, tensors, {{"format", "pt"}}).ok());
  EXPECT_ERROR_MENTIONS(ReadCovarianceFile(plain, f.key).status(), "not a sigmatune covariance file");
  // A truncated file.
  const std::string good = TempPath("cov_good.safetensors");
  ASSERT_TRUE(WriteCovarianceFile(good, f).ok());
  std::ifstream in(good, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string cut = TempPath("cov_cut.safetensors");
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() - 10);
  EXPECT_ERROR_MENTIONS(ReadCovarianceFile(cut, f.key).status(), "cov_cut.safetensors");
}

TEST(CovarianceFileTest, WriterRefusesInconsistentSets) {
  CovarianceFile f = MakeFile(DType::kF32);
  f.covariance.erase("model.layers.1.mlp_in");
  EXPECT_ERROR_MENTIONS(WriteCovarianceFile(TempPath("x.safetensors"), f), "covariances for 2 sites");
  f = MakeFile(DType::kF32);
  f.key.accumulation = "f16";
  EXPECT_ERROR_MENTIONS(WriteCovarianceFile(TempPath("x.safetensors"), f), "accumulation");
  f = MakeFile(DType::kF64);
  f.key.accumulation = "f32";
  EXPECT_ERROR_MENTIONS(WriteCovarianceFile(TempPath("x.safetensors"), f), "square CPU f32");
}

}  // namespace
}  // namespace sigmatune::formats
