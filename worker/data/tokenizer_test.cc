// Tests of the byte-level BPE tokenizer against Hugging Face `tokenizers` fixtures
// (tests/testdata/tokenizer/, made by tools/golden/make_tokenizer_fixtures.py).
#include "worker/data/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "nlohmann/json.hpp"
#include "worker/data/tokenizer_pretokenize.h"

namespace sigmatune::data {
namespace {

using Json = nlohmann::json;

constexpr char kDir[] = "tests/testdata/tokenizer/";

std::string ReadText(const std::string& name) {
  std::ifstream in(testing::RunfilePath(absl::StrCat(kDir, name)), std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Json ReadJson(const std::string& name) {
  const std::string text = ReadText(name);
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << name;
  return j;
}

std::vector<int32_t> Ids(const Json& j) {
  std::vector<int32_t> ids;
  for (const Json& v : j) ids.push_back(v.get<int32_t>());
  return ids;
}

std::string Escaped(const std::string& s) { return Json(s).dump(); }

// The SmolLM2 tokenizer.json with its pre_tokenizer replaced (nullptr: as committed).
Tokenizer LoadSmolLM2(const Json* pre_tokenizer) {
  std::string text = ReadText("smollm2_tokenizer.json");
  if (pre_tokenizer != nullptr) {
    Json j = Json::parse(text, nullptr, false);
    j["pre_tokenizer"] = *pre_tokenizer;
    text = j.dump();
  }
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromJson(text, "smollm2_tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(tok).value();
}

const Json& DigitsPreTokenizer() {
  static const Json* const j = new Json(Json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]})"));
  return *j;
}

// Checks every corpus line; reports each mismatch with the line, the text and both id lists.
void CheckCorpus(const Tokenizer& tok, const char* ids_key) {
  const Json corpus = ReadJson("corpus.json");
  ASSERT_GE(corpus["lines"].size(), 200u);
  int mismatches = 0;
  int lossy = 0;
  for (size_t i = 0; i < corpus["lines"].size(); ++i) {
    const Json& line = corpus["lines"][i];
    const std::string text = line["text"].get<std::string>();
    const std::vector<int32_t> want = Ids(line[ids_key]);
    absl::StatusOr<std::vector<int32_t>> got = tok.Encode(text);
    ASSERT_TRUE(got.ok()) << got.status();
    if (*got != want) {
      ++mismatches;
      ADD_FAILURE() << ids_key << " line " << i << " " << Escaped(text) << "\n  want "
                    << absl::StrJoin(want, ",") << "\n  got  " << absl::StrJoin(*got, ",");
    }
    EXPECT_EQ(tok.Decode(want, SkipSpecialTokens::kNo), line["decoded"].get<std::string>())
        << "line " << i;
    EXPECT_EQ(tok.Decode(want, SkipSpecialTokens::kYes),
              line["decoded_skip_special"].get<std::string>())
        << "line " << i;
    // Round trip; HF drops bytes whose character is missing from the vocab (SmolLM2 lacks 21 of
    // the 256, e.g. 0x04 and the lead bytes 0xF1/0xF2), and so do we: compare with HF's decode.
    EXPECT_EQ(tok.Decode(*got, SkipSpecialTokens::kNo), line["decoded"].get<std::string>())
        << "round trip, line " << i;
    if (line["decoded"] != text) ++lossy;
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_LE(lossy, 3);  // only the lines written to show the dropped bytes
}

TEST(TokenizerTest, KnownSentence) {
  const Tokenizer tok = LoadSmolLM2(nullptr);
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(*tok.Encode("Hello world! 123"),
            (std::vector<int32_t>{19556, 905, 17, 216, 33, 34, 35}));
  EXPECT_EQ(*tok.TokenToId("<|im_start|>"), 1);
  EXPECT_TRUE(tok.IsSpecial(2));
  EXPECT_FALSE(tok.IsSpecial(19556));
  EXPECT_EQ(*tok.IdToToken(19556), "Hello");
  // The post-processor of this tokenizer.json adds nothing.
  EXPECT_EQ(*tok.Encode("Hi", AddSpecialTokens::kYes), *tok.Encode("Hi"));
}

TEST(TokenizerTest, CorpusMatchesHuggingFaceByteLevel) { CheckCorpus(LoadSmolLM2(nullptr), "ids_bytelevel"); }

TEST(TokenizerTest, CorpusMatchesHuggingFaceDigitsThenByteLevel) {
  CheckCorpus(LoadSmolLM2(&DigitsPreTokenizer()), "ids_digits");
}

TEST(TokenizerTest, DecodeMatchesHuggingFace) {
  const Tokenizer tok = LoadSmolLM2(nullptr);
  const Json cases = ReadJson("decode.json");
  ASSERT_GE(cases["cases"].size(), 100u);
  for (size_t i = 0; i < cases["cases"].size(); ++i) {
    const Json& c = cases["cases"][i];
    const std::vector<int32_t> ids = Ids(c["ids"]);
    EXPECT_EQ(tok.Decode(ids, SkipSpecialTokens::kNo), c["text"].get<std::string>())
        << "case " << i << " ids " << absl::StrJoin(ids, ",");
    EXPECT_EQ(tok.Decode(ids, SkipSpecialTokens::kYes), c["text_skip_special"].get<std::string>())
        << "case " << i << " ids " << absl::StrJoin(ids, ",");
  }
}

// The plain-data path (what GGUF metadata gives: tokens, merges, token types) must agree with the
// tokenizer.json path. gguf_check.json records that the GGUF arrays equal the tokenizer.json ones.
TEST(TokenizerTest, PlainDataMatchesJson) {
  const Json check = ReadJson("gguf_check.json");
  ASSERT_TRUE(check["tokens_equal"].get<bool>());
  ASSERT_TRUE(check["merges_equal"].get<bool>());
  ASSERT_EQ(check["gguf_pre"].get<std::string>(), "smollm");
  const Json j = ReadJson("smollm2_tokenizer.json");
  TokenizerData data;
  data.tokens.resize(j["model"]["vocab"].size());
  for (const auto& [token, id] : j["model"]["vocab"].items()) data.tokens[id.get<size_t>()] = token;
  for (const Json& m : j["model"]["merges"]) {
    data.merges.push_back(absl::StrCat(m[0].get<std::string>(), " ", m[1].get<std::string>()));
  }
  data.token_types.assign(data.tokens.size(), TokenType::kNormal);
  for (const Json& id : check["control_ids"]) data.token_types[id.get<size_t>()] = TokenType::kControl;
  data.pre_tokenizer = PreTokenizerKind::kDigitsThenByteLevel;  // GGUF pre = "smollm"
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromData(data, "gguf");
  ASSERT_TRUE(tok.ok()) << tok.status();
  CheckCorpus(*tok, "ids_digits");
  data.pre_tokenizer = PreTokenizerKind::kByteLevel;
  data.prefix_ids = {1};
  data.suffix_ids = {2};
  tok = Tokenizer::FromData(data, "gguf");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*tok->Encode("Hello world! 123", AddSpecialTokens::kYes),
            (std::vector<int32_t>{1, 19556, 905, 17, 216, 33, 34, 35, 2}));
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{1, 19556, 2}, SkipSpecialTokens::kYes), "Hello");

  data.token_types.pop_back();
  EXPECT_EQ(Tokenizer::FromData(data, "gguf").status().code(), absl::StatusCode::kInvalidArgument);
  data.token_types.clear();
  data.merges.push_back("nospace");
  absl::Status bad = Tokenizer::FromData(data, "gguf").status();
  EXPECT_NE(bad.message().find("merges[48900]"), std::string::npos) << bad;
}

// Random valid UTF-8 (all planes, no surrogates) round-trips and never fails.
TEST(TokenizerTest, RandomStringsRoundTrip) {
  const Tokenizer tok = LoadSmolLM2(&DigitsPreTokenizer());
  std::mt19937 rng(7);
  for (int t = 0; t < 300; ++t) {
    std::string s;
    const int n = static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) {
      char32_t c;
      switch (rng() % 4) {
        case 0: c = rng() % 0x80; break;
        case 1: c = rng() % 0x800; break;
        case 2: c = rng() % 0x10000; break;
        default: c = rng() % 0x110000; break;
      }
      if (c >= 0xD800 && c <= 0xDFFF) c = ' ';
      std::string utf8;
      AppendUtf8(c, &utf8);
      // Skip characters with a byte that the SmolLM2 vocab lacks (HF drops those bytes).
      bool known = true;
      for (const char b : utf8) {
        std::string mapped;
        AppendUtf8(ByteToUnicode(static_cast<unsigned char>(b)), &mapped);
        known = known && tok.TokenToId(mapped).has_value();
      }
      if (known) s += utf8;
    }
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(s);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(tok.Decode(*ids, SkipSpecialTokens::kNo), s) << Escaped(s);
  }
}

// Like HF (no unk_token): bytes whose character is not in the vocab are dropped.
TEST(TokenizerTest, BytesMissingFromVocabAreDropped) {
  const Tokenizer tok = LoadSmolLM2(nullptr);
  EXPECT_EQ(*tok.Encode("a\x04" "b"), (std::vector<int32_t>{81, 82}));
  EXPECT_EQ(*tok.Encode("x\U00040000y"), (std::vector<int32_t>{104, 218, 218, 218, 105}));
  EXPECT_EQ(tok.Decode(*tok.Encode("x\U00040000y"), SkipSpecialTokens::kNo),
            "x\uFFFD\uFFFD\uFFFDy");
}

TEST(TokenizerTest, InvalidUtf8IsRejected) {
  const Tokenizer tok = LoadSmolLM2(nullptr);
  for (const std::string& bad : {std::string("ab\xff"), std::string("\xc3"),
                                std::string("x\xed\xa0\x80"), std::string("\xc0\xaf")}) {
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(bad);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(ids.status().message().find("not valid UTF-8"), std::string::npos);
  }
  EXPECT_NE(tok.Encode("ab\xff").status().message().find("offset 2"), std::string::npos);
}

// A small byte-level tokenizer.json written here, for the loader and added-token options.
Json SmallTokenizer() {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    AppendUtf8(ByteToUnicode(static_cast<unsigned char>(b)), &s);
    vocab[s] = vocab.size();
  }
  for (const char* t : {"he", "hel", "hell", "hello", "Ġw", "Ġwo"}) vocab[t] = vocab.size();
  Json j = {
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", Json::array({
          {{"id", 300}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
          {{"id", 301}, {"content", "[L]"}, {"lstrip", true}, {"normalized", false}},
          {{"id", 302}, {"content", "[R]"}, {"rstrip", true}, {"normalized", false}},
          {{"id", 303}, {"content", "word"}, {"single_word", true}, {"normalized", true}},
          {{"id", 304}, {"content", "<s>x"}, {"special", true}, {"normalized", false}}})},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                 {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab},
                 {"merges", Json::array({"h e", "he l", "hel l", "hell o", "Ġ w", "Ġw o"})}}},
  };
  return j;
}

TEST(TokenizerTest, MergesAsStringsOrPairs) {
  Json j = SmallTokenizer();
  absl::StatusOr<Tokenizer> strings = Tokenizer::FromJson(j.dump(), "small.json");
  ASSERT_TRUE(strings.ok()) << strings.status();
  Json pairs = Json::array();
  for (const Json& m : j["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    pairs.push_back({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  j["model"]["merges"] = pairs;
  absl::StatusOr<Tokenizer> pair_form = Tokenizer::FromJson(j.dump(), "small.json");
  ASSERT_TRUE(pair_form.ok()) << pair_form.status();
  const Tokenizer& t = *strings;
  const std::vector<int32_t> want = {*t.TokenToId("hello"), *t.TokenToId("Ġwo"), *t.TokenToId("r"),
                                     *t.TokenToId("l"), *t.TokenToId("d")};
  EXPECT_EQ(*strings->Encode("hello world"), want);
  EXPECT_EQ(*pair_form->Encode("hello world"), want);
  EXPECT_EQ(strings->Decode(want, SkipSpecialTokens::kNo), "hello world");
}

TEST(TokenizerTest, AddedTokenOptions) {
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromJson(SmallTokenizer().dump(), "small.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto enc = [&](const std::string& s) { return *tok->Encode(s); };
  const int32_t space = *tok->TokenToId("Ġ");
  const int32_t a = *tok->TokenToId("a");
  // Longest match first: "<s>x" beats "<s>".
  EXPECT_EQ(enc("<s>x<s>"), (std::vector<int32_t>{304, 300}));
  // lstrip eats the spaces before [L]; rstrip eats those after [R].
  EXPECT_EQ(enc("a  [L]a"), (std::vector<int32_t>{a, 301, a}));
  EXPECT_EQ(enc("a[R]  a"), (std::vector<int32_t>{a, 302, a}));
  EXPECT_EQ(enc("a [R]"), (std::vector<int32_t>{a, space, 302}));
  // single_word: only between non-word characters.
  EXPECT_EQ(enc("a word a"), (std::vector<int32_t>{a, space, 303, space, a}));
  const std::vector<int32_t> swords = enc("swords");
  EXPECT_EQ(std::count(swords.begin(), swords.end(), 303), 0);
  // Special tokens are skipped on request.
  EXPECT_EQ(tok->Decode(enc("<s>a[L]"), SkipSpecialTokens::kYes), "a[L]");
  EXPECT_EQ(tok->Decode(enc("<s>a"), SkipSpecialTokens::kNo), "<s>a");
}

TEST(TokenizerTest, BadFilesNameTheFieldAndTheFile) {
  struct Case {
    const char* what;
    std::function<void(Json&)> edit;
    const char* expect;  // substring of the message
  };
  const std::vector<Case> cases = {
      {"model type", [](Json& j) { j["model"]["type"] = "WordPiece"; }, "'model.type'"},
      {"normalizer", [](Json& j) { j["normalizer"] = {{"type", "NFC"}}; }, "'normalizer'"},
      {"byte fallback", [](Json& j) { j["model"]["byte_fallback"] = true; }, "'model.byte_fallback'"},
      {"dropout", [](Json& j) { j["model"]["dropout"] = 0.1; }, "'model.dropout'"},
      {"merge form", [](Json& j) { j["model"]["merges"][2] = 7; }, "'model.merges[2]'"},
      {"merge string", [](Json& j) { j["model"]["merges"][1] = "abc"; }, "'model.merges[1]'"},
      {"merge not in vocab", [](Json& j) { j["model"]["merges"][0] = "h zz"; }, "merges[0]"},
      {"vocab id", [](Json& j) { j["model"]["vocab"]["a"] = "x"; }, "'model.vocab[\"a\"]'"},
      {"vocab missing", [](Json& j) { j["model"].erase("vocab"); }, "'model.vocab'"},
      {"added id", [](Json& j) { j["added_tokens"][0].erase("id"); }, "'added_tokens[0].id'"},
      {"added flag", [](Json& j) { j["added_tokens"][1]["lstrip"] = "yes"; }, "'added_tokens[1].lstrip'"},
      {"pre_tokenizer", [](Json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }, "'pre_tokenizer.type'"},
      {"digits", [](Json& j) {
         j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", Json::array({
             {{"type", "Digits"}, {"individual_digits", false}}, {{"type", "ByteLevel"}}})}};
       }, "'pre_tokenizer.pretokenizers[0]'"},
      {"split", [](Json& j) {
         j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", Json::array({
             {{"type", "Split"}, {"pattern", {{"Regex", "\\d+"}}}, {"behavior", "Isolated"}},
             {{"type", "ByteLevel"}, {"use_regex", false}}})}};
       }, "'pre_tokenizer.pretokenizers[0]'"},
      {"decoder", [](Json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "'decoder'"},
      {"post_processor", [](Json& j) { j["post_processor"] = {{"type", "BertProcessing"}}; }, "'post_processor.type'"},
      {"truncation", [](Json& j) { j["truncation"] = {{"max_length", 5}}; }, "'truncation'"},
  };
  for (const Case& c : cases) {
    Json j = SmallTokenizer();
    c.edit(j);
    const absl::Status status = Tokenizer::FromJson(j.dump(), "bad/tokenizer.json").status();
    EXPECT_FALSE(status.ok()) << c.what;
    EXPECT_NE(status.message().find("bad/tokenizer.json"), std::string::npos) << status;
    EXPECT_NE(status.message().find(c.expect), std::string::npos) << c.what << ": " << status;
  }
  const absl::Status not_json = Tokenizer::FromJson("{\"model\": [", "x.json").status();
  EXPECT_NE(not_json.message().find("x.json: not a JSON object"), std::string::npos) << not_json;
  const absl::Status missing = Tokenizer::FromJsonFile("/nonexistent/tokenizer.json").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("/nonexistent/tokenizer.json"), std::string::npos);
}

TEST(TokenizerTest, TemplateProcessingAddsSpecialTokens) {
  Json j = SmallTokenizer();
  j["post_processor"] = Json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[R]", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [300], "tokens": ["<s>"]},
                         "[R]": {"id": "[R]", "ids": [302], "tokens": ["[R]"]}}})");
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromJson(j.dump(), "small.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int32_t a = *tok->TokenToId("a");
  EXPECT_EQ(*tok->Encode("a", AddSpecialTokens::kYes), (std::vector<int32_t>{300, a, 302}));
  EXPECT_EQ(*tok->Encode("a", AddSpecialTokens::kNo), (std::vector<int32_t>{a}));
}

}  // namespace
}  // namespace sigmatune::data
