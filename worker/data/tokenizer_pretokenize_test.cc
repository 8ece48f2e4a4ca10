#include "worker/data/tokenizer_pretokenize.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/data/unicode_tables.h"

namespace sigmatune::data {
namespace {

std::vector<std::string> Gpt2(const std::string& s) {
  std::vector<absl::string_view> pieces;
  SplitGpt2(s, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

TEST(PreTokenizeTest, Gpt2Pattern) {
  using V = std::vector<std::string>;
  EXPECT_EQ(Gpt2("Hello world! 123"), (V{"Hello", " world", "!", " 123"}));
  EXPECT_EQ(Gpt2("I'm they're ''s"), (V{"I", "'m", " they", "'re", " ''", "s"}));
  EXPECT_EQ(Gpt2("a   b"), (V{"a", "  ", " b"}));
  EXPECT_EQ(Gpt2("a \n b"), (V{"a", " \n", " b"}));
  EXPECT_EQ(Gpt2("a\nb"), (V{"a", "\n", "b"}));
  EXPECT_EQ(Gpt2("end  "), (V{"end", "  "}));
  EXPECT_EQ(Gpt2(" ?!x"), (V{" ?!", "x"}));
  EXPECT_EQ(Gpt2("日本語 テスト"), (V{"日本語", " テスト"}));
  EXPECT_EQ(Gpt2(""), V{});
}

TEST(PreTokenizeTest, Digits) {
  std::vector<absl::string_view> pieces;
  SplitDigits("ab12 ٣x", &pieces);
  EXPECT_EQ(std::vector<std::string>(pieces.begin(), pieces.end()),
            (std::vector<std::string>{"ab", "1", "2", " ", "٣", "x"}));
}

TEST(PreTokenizeTest, ByteMap) {
  EXPECT_EQ(ByteToUnicode(' '), 0x120u);
  EXPECT_EQ(ByteToUnicode('\n'), 0x10Au);
  EXPECT_EQ(ByteToUnicode(0x7F), 0x121u);
  EXPECT_EQ(ByteToUnicode(0xAD), 0x143u);
  EXPECT_EQ(ByteToUnicode('A'), static_cast<char32_t>('A'));
  for (int b = 0; b < 256; ++b) EXPECT_EQ(UnicodeToByte(ByteToUnicode(b)), b);
  EXPECT_EQ(UnicodeToByte(0x20), -1);
}

TEST(PreTokenizeTest, Utf8) {
  EXPECT_TRUE(IsValidUtf8("héllo 😀"));
  size_t at = 0;
  EXPECT_FALSE(IsValidUtf8("ab\xe2\x82", &at));
  EXPECT_EQ(at, 2u);
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));  // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  // Maximal subparts, as Rust's from_utf8_lossy.
  EXPECT_EQ(Utf8Lossy("a\xe2\x82" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(Utf8Lossy("\xe0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xf0\x9f\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xff\xfe"), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(UnicodeTablesTest, Classes) {
  EXPECT_STREQ(kUnicodeVersion, "14.0.0");
  EXPECT_TRUE(IsLetter('a'));
  EXPECT_TRUE(IsLetter(0x65E5));   // 日
  EXPECT_FALSE(IsLetter('1'));
  EXPECT_TRUE(IsNumber(0x663));    // Arabic-Indic three
  EXPECT_TRUE(IsNumber(0x2167));   // Roman numeral eight (Nl)
  EXPECT_TRUE(IsNumber(0xBD));     // ½ (No)
  EXPECT_TRUE(IsWhiteSpace(0x3000));
  EXPECT_TRUE(IsWhiteSpace(0x85));
  EXPECT_FALSE(IsWhiteSpace(0x200B));  // zero width space is not White_Space
  EXPECT_FALSE(IsWhiteSpace(0x1C));
  EXPECT_FALSE(IsLetter(0x110000));
}

}  // namespace
}  // namespace sigmatune::data
