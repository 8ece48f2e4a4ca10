// The tokenizer built from the real SmolLM2 GGUF metadata reproduces Hugging Face's ids for the
// fixture corpus (digit-split variant, which tokenizer.ggml.pre = "smollm" selects).
#include "worker/data/tokenizer_gguf.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "nlohmann/json.hpp"
#include "kernels/testing/model_files.h"

namespace sigmatune::data {
namespace {

TEST(TokenizerFromGgufTest, SmolLM2MatchesHuggingFaceIds) {
  std::string tried;
  const std::string path = testing::FindSmolLM2Gguf(&tried);
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF not found: " << tried;
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tokenizer = TokenizerFromGguf(*file);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();

  std::ifstream in(testing::RunfilePath("tests/testdata/tokenizer/corpus.json"));
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json corpus = nlohmann::json::parse(text.str(), nullptr, false);
  ASSERT_FALSE(corpus.is_discarded());
  int mismatches = 0;
  for (const auto& line : corpus["lines"]) {
    const std::string s = line["text"].get<std::string>();
    auto ids = tokenizer->Encode(s, AddSpecialTokens::kNo);
    ASSERT_TRUE(ids.ok()) << ids.status();
    const std::vector<int32_t> expected = line["ids_digits"].get<std::vector<int32_t>>();
    if (*ids != expected && ++mismatches <= 5) ADD_FAILURE() << "ids differ for: " << s;
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerFromGgufTest, RejectsUnsupportedModel) {
  auto file = GgufFile::Open(testing::RunfilePath("tests/testdata/formats/gguf/dequant.gguf"));
  ASSERT_TRUE(file.ok()) << file.status();
  auto tokenizer = TokenizerFromGguf(*file);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_NE(tokenizer.status().message().find("dequant.gguf"), std::string::npos) << tokenizer.status();
}

}  // namespace
}  // namespace sigmatune::data
