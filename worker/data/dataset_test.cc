#include "worker/data/dataset.h"

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/status.h"
#include "worker/data/tokenizer.h"
#include "worker/data/tokenizer_chat_template.h"

namespace sigmatune::data {
namespace {

constexpr int32_t kEndOfText = 0;  // SmolLM2 <|endoftext|>
constexpr int32_t kImStart = 1;
constexpr int32_t kImEnd = 2;

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string TestData(const std::string& name) { return testing::RunfilePath("worker/data/testdata/" + name); }

// Writes a scratch JSONL file under the test's temp dir and returns its path.
std::string WriteTemp(const std::string& name, const std::string& text) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

class DatasetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<Tokenizer> tok =
        Tokenizer::FromJsonFile(testing::RunfilePath("tests/testdata/tokenizer/smollm2_tokenizer.json"));
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = new Tokenizer(std::move(*tok));
    absl::StatusOr<ChatTemplate> tmpl = ChatTemplate::FromJinja(
        ReadText(testing::RunfilePath("tests/testdata/tokenizer/smollm2_chat_template.jinja")), "jinja");
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    template_ = new ChatTemplate(*tmpl);
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete template_;
  }

  SampleEncoder Encoder() const { return {tokenizer_, template_, {}, kEndOfText}; }

  Dataset Load(const std::string& path, RecordFormat format = RecordFormat::kAuto,
               TrainOnInput train_on_input = TrainOnInput::kNo) const {
    DatasetOptions o;
    o.path = path;
    o.format = format;
    o.train_on_input = train_on_input;
    absl::StatusOr<Dataset> ds = LoadDataset(o, Encoder());
    EXPECT_TRUE(ds.ok()) << ds.status();
    return ds.ok() ? *std::move(ds) : Dataset{};
  }

  std::vector<int32_t> Enc(const std::string& text) const {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(text);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }
  std::string Dec(const std::vector<int32_t>& ids) const { return tokenizer_->Decode(ids, SkipSpecialTokens::kNo); }
  // The text of the trained tokens, in order.
  std::string Trained(const TokenizedSample& s) const {
    std::vector<int32_t> ids;
    for (int32_t t : s.targets) {
      if (t != -100) ids.push_back(t);
    }
    return Dec(ids);
  }
  // Checks the target invariant: -100 or the id itself, never at position 0.
  static void CheckTargets(const TokenizedSample& s) {
    ASSERT_EQ(s.ids.size(), s.targets.size());
    ASSERT_FALSE(s.ids.empty());
    EXPECT_EQ(s.targets[0], -100);
    for (size_t t = 0; t < s.ids.size(); ++t) {
      EXPECT_TRUE(s.targets[t] == -100 || s.targets[t] == s.ids[t]) << "t=" << t;
    }
  }
  static std::vector<int32_t> Cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  static Tokenizer* tokenizer_;
  static ChatTemplate* template_;
};

Tokenizer* DatasetTest::tokenizer_ = nullptr;
ChatTemplate* DatasetTest::template_ = nullptr;

TEST(RecordFormatTest, ParsesEveryName) {
  for (const char* name : {"auto", "text", "completion", "alpaca", "chat", "sharegpt", "segments", "tokenized"}) {
    absl::StatusOr<RecordFormat> f = ParseRecordFormat(name);
    ASSERT_TRUE(f.ok()) << name;
    EXPECT_EQ(RecordFormatName(*f), name);
  }
  EXPECT_EQ(*ParseRecordFormat("sharegpt"), RecordFormat::kShareGpt);
  EXPECT_ERROR_MENTIONS(ParseRecordFormat("jsonl").status(), "jsonl", "alpaca");
}

TEST_F(DatasetTest, TextIsAllTrainedWithEos) {
  const Dataset ds = Load(TestData("text.jsonl"), RecordFormat::kText);
  ASSERT_EQ(ds.samples.size(), 2u);
  EXPECT_EQ(ds.records, 2);
  EXPECT_EQ(ds.samples[0].line, 1);
  EXPECT_EQ(ds.samples[1].line, 3);  // the blank line 2 is skipped
  const TokenizedSample& s = ds.samples[0];
  CheckTargets(s);
  EXPECT_EQ(s.ids, Cat(Enc("Hello world"), {kEndOfText}));
  EXPECT_EQ(Trained(s), " world<|endoftext|>");  // nothing predicts the first token
  int64_t tokens = 0, trained = 0;
  for (const auto& x : ds.samples) {
    tokens += x.ids.size();
    for (int32_t t : x.targets) trained += t != -100;
  }
  EXPECT_EQ(ds.tokens, tokens);
  EXPECT_EQ(ds.trained_tokens, trained);
  EXPECT_EQ(ds.trained_tokens, ds.tokens - 2);
  EXPECT_EQ(ds.untrained_samples, 0);
}

TEST_F(DatasetTest, BosIsPrependedAndNotTrained) {
  DatasetOptions o;
  o.path = TestData("text.jsonl");
  SampleEncoder enc = Encoder();
  enc.bos_ids = {kImStart};
  absl::StatusOr<Dataset> ds = LoadDataset(o, enc);
  ASSERT_TRUE(ds.ok()) << ds.status();
  const TokenizedSample& s = ds->samples[0];
  CheckTargets(s);
  EXPECT_EQ(s.ids, Cat(Cat({kImStart}, Enc("Hello world")), {kEndOfText}));
  EXPECT_EQ(Trained(s), "Hello world<|endoftext|>");
}

TEST_F(DatasetTest, CompletionTrainsCompletionAndEos) {
  const Dataset ds = Load(TestData("completion.jsonl"), RecordFormat::kCompletion);
  ASSERT_EQ(ds.samples.size(), 2u);
  const TokenizedSample& s = ds.samples[0];
  CheckTargets(s);
  EXPECT_EQ(s.ids, Cat(Cat(Enc("Q: What is 2+2?\nA:"), Enc(" 4")), {kEndOfText}));
  EXPECT_EQ(Trained(s), " 4<|endoftext|>");
  EXPECT_EQ(Trained(ds.samples[1]), " Paris<|endoftext|>");
}

TEST_F(DatasetTest, AlpacaTemplateIsExact) {
  const Dataset ds = Load(TestData("alpaca.jsonl"), RecordFormat::kAlpaca);
  ASSERT_EQ(ds.samples.size(), 3u);
  const std::string with_input =
      "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
      "response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and "
      "3\n\n### Response:\n";
  const std::string no_input =
      "Below is an instruction that describes a task. Write a response that appropriately completes the "
      "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n";
  EXPECT_EQ(Dec(ds.samples[0].ids), with_input + "5<|endoftext|>");
  EXPECT_EQ(ds.samples[0].ids, Cat(Cat(Enc(with_input), Enc("5")), {kEndOfText}));
  EXPECT_EQ(Trained(ds.samples[0]), "5<|endoftext|>");
  EXPECT_EQ(Dec(ds.samples[1].ids), no_input + "Hi there!<|endoftext|>");
  EXPECT_EQ(Trained(ds.samples[1]), "Hi there!<|endoftext|>");
  // An absent input is the same as an empty one.
  EXPECT_EQ(Dec(ds.samples[2].ids),
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nName a color.\n\n### Response:\nBlue<|endoftext|>");
  for (const auto& s : ds.samples) CheckTargets(s);
}

TEST_F(DatasetTest, ChatTrainsAssistantContentAndEndOfTurn) {
  const Dataset ds = Load(TestData("chat.jsonl"), RecordFormat::kChat);
  ASSERT_EQ(ds.samples.size(), 2u);
  const TokenizedSample& s = ds.samples[0];
  CheckTargets(s);
  const std::vector<ChatMessage> messages = {
      {"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."}, {"user", "2+2?"}, {"assistant", "4"}};
  const std::string full = template_->Render(messages, GenerationPrompt::kNo);
  EXPECT_EQ(Dec(s.ids), full);
  EXPECT_EQ(s.ids, Enc(full));  // the pieces tokenize like the whole here
  EXPECT_EQ(Trained(s), "Hello.<|im_end|>4<|im_end|>");
  // The trained positions exactly: each content and the <|im_end|> right after it, not the "\n".
  for (size_t t = 0; t < s.ids.size(); ++t) {
    if (s.ids[t] == kImEnd && t + 1 < s.ids.size() && s.targets[t] != -100) {
      EXPECT_EQ(s.targets[t + 1], -100) << "the newline after <|im_end|> is not trained";
    }
  }
  int trained_im_end = 0;
  for (size_t t = 0; t < s.ids.size(); ++t) trained_im_end += s.ids[t] == kImEnd && s.targets[t] == kImEnd;
  EXPECT_EQ(trained_im_end, 2);  // system and user turns' <|im_end|> are not trained

  // No system message: the template's default system turn is rendered (and not trained).
  const TokenizedSample& s2 = ds.samples[1];
  CheckTargets(s2);
  EXPECT_EQ(Dec(s2.ids), template_->Render({{"user", "Name a fruit."}, {"assistant", "Apple"}}, GenerationPrompt::kNo));
  EXPECT_NE(Dec(s2.ids).find("SmolLM"), std::string::npos);
  EXPECT_EQ(Trained(s2), "Apple<|im_end|>");
}

TEST_F(DatasetTest, ShareGptIsChat) {
  const Dataset chat = Load(TestData("chat.jsonl"), RecordFormat::kChat);
  const Dataset share = Load(TestData("sharegpt.jsonl"), RecordFormat::kShareGpt);
  ASSERT_EQ(share.samples.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(share.samples[i].ids, chat.samples[i].ids);
    EXPECT_EQ(share.samples[i].targets, chat.samples[i].targets);
  }
}

TEST_F(DatasetTest, SegmentsTrainLabelledTextOnly) {
  const Dataset ds = Load(TestData("segments.jsonl"), RecordFormat::kSegments);
  ASSERT_EQ(ds.samples.size(), 2u);
  const TokenizedSample& s = ds.samples[0];
  CheckTargets(s);
  EXPECT_EQ(s.ids, Cat(Cat(Enc("Question: why? "), Enc("Because.")), Enc(" [end]")));  // no bos/eos
  EXPECT_EQ(Trained(s), "Because.");
  // A sample with nothing to train is kept and counted.
  EXPECT_EQ(Trained(ds.samples[1]), "");
  EXPECT_EQ(ds.untrained_samples, 1);
}

TEST_F(DatasetTest, TokenizedLabelsAndAttentionMask) {
  const Dataset ds = Load(TestData("tokenized.jsonl"), RecordFormat::kTokenized);
  ASSERT_EQ(ds.samples.size(), 3u);
  for (const auto& s : ds.samples) CheckTargets(s);
  EXPECT_EQ(ds.samples[0].ids, (std::vector<int32_t>{10, 11, 12, 13, 14}));
  EXPECT_EQ(ds.samples[0].targets, (std::vector<int32_t>{-100, 11, 12, 13, 14}));
  EXPECT_EQ(ds.samples[1].ids, (std::vector<int32_t>{20, 21, 22, 23}));
  EXPECT_EQ(ds.samples[1].targets, (std::vector<int32_t>{-100, -100, 22, 23}));
  EXPECT_EQ(ds.samples[2].ids, (std::vector<int32_t>{30, 31, 33, 34}));  // mask 0 dropped
  EXPECT_EQ(ds.samples[2].targets, (std::vector<int32_t>{-100, -100, 33, 34}));
}

TEST_F(DatasetTest, TrainOnInputTrainsEverything) {
  const Dataset chat = Load(TestData("chat.jsonl"), RecordFormat::kChat, TrainOnInput::kYes);
  const TokenizedSample& s = chat.samples[0];
  CheckTargets(s);
  for (size_t t = 1; t < s.ids.size(); ++t) EXPECT_EQ(s.targets[t], s.ids[t]) << t;
  const Dataset alpaca = Load(TestData("alpaca.jsonl"), RecordFormat::kAlpaca, TrainOnInput::kYes);
  EXPECT_EQ(alpaca.trained_tokens, alpaca.tokens - 3);
  const Dataset segments = Load(TestData("segments.jsonl"), RecordFormat::kSegments, TrainOnInput::kYes);
  EXPECT_EQ(segments.untrained_samples, 0);
  const Dataset tokenized = Load(TestData("tokenized.jsonl"), RecordFormat::kTokenized, TrainOnInput::kYes);
  EXPECT_EQ(tokenized.samples[1].targets, (std::vector<int32_t>{-100, 21, 22, 23}));
}

TEST_F(DatasetTest, AutoPicksPerRecord) {
  const Dataset mixed = Load(TestData("mixed.jsonl"));
  ASSERT_EQ(mixed.samples.size(), 7u);
  EXPECT_EQ(mixed.samples[0].ids, Load(TestData("text.jsonl"), RecordFormat::kText).samples[0].ids);
  EXPECT_EQ(mixed.samples[1].targets, Load(TestData("completion.jsonl")).samples[1].targets);
  EXPECT_EQ(mixed.samples[2].targets, Load(TestData("alpaca.jsonl")).samples[1].targets);
  const Dataset chat = Load(TestData("chat.jsonl"));
  EXPECT_EQ(mixed.samples[3].targets, chat.samples[1].targets);
  EXPECT_EQ(mixed.samples[4].targets, chat.samples[1].targets);
  EXPECT_EQ(Trained(mixed.samples[5]), "Because.");
  EXPECT_EQ(mixed.samples[6].ids, (std::vector<int32_t>{10, 11, 12, 13, 14}));
}

TEST_F(DatasetTest, MaxSamplesStopsEarly) {
  DatasetOptions o;
  o.path = TestData("mixed.jsonl");
  o.max_samples = 3;
  absl::StatusOr<Dataset> ds = LoadDataset(o, Encoder());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->samples.size(), 3u);
  EXPECT_EQ(ds->records, 3);
}

TEST_F(DatasetTest, LongSamplesErrorOrTruncate) {
  DatasetOptions o;
  o.path = TestData("alpaca.jsonl");
  o.max_seq_len = 10;
  absl::Status s = LoadDataset(o, Encoder()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(s, "alpaca.jsonl:1:", "max_seq_len 10", "raise sequence_len", "truncate_long_samples");
  o.long_samples = LongSamples::kTruncate;
  absl::StatusOr<Dataset> ds = LoadDataset(o, Encoder());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->truncated_samples, 3);
  const Dataset full = Load(TestData("alpaca.jsonl"));
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(ds->samples[i].ids.size(), 10u);
    EXPECT_EQ(ds->samples[i].ids, std::vector<int32_t>(full.samples[i].ids.begin(), full.samples[i].ids.begin() + 10));
  }
  // Truncated into the prompt: nothing trained, counted.
  EXPECT_EQ(ds->untrained_samples, 3);
  EXPECT_EQ(ds->trained_tokens, 0);
}

struct BadCase {
  const char* name;
  const char* text;
  RecordFormat format;
  std::vector<const char*> mentions;
};

TEST_F(DatasetTest, BadRecordsNameFileAndLine) {
  const std::vector<BadCase> cases = {
      {"not_json", "{\"text\": \"ok\"}\n\n{\"text\": oops}\n", RecordFormat::kAuto, {":3:", "not valid JSON"}},
      {"not_object", "[1, 2]\n", RecordFormat::kAuto, {":1:", "JSON object", "array"}},
      {"unknown_keys", "{\"text\": \"a\"}\n{\"question\": \"a\"}\n", RecordFormat::kAuto,
       {":2:", "question", "prompt", "messages", "input_ids"}},
      {"missing_key", "{\"txt\": \"a\"}\n", RecordFormat::kText, {":1:", "'text' is missing", "{\"text\": string}"}},
      {"wrong_type", "{\"text\": 5}\n", RecordFormat::kAuto, {":1:", "'text'", "must be a string", "number"}},
      {"completion_missing", "{\"prompt\": \"a\"}\n", RecordFormat::kCompletion,
       {":1:", "'completion' is missing", "\"prompt\": string, \"completion\": string"}},
      {"alpaca_input_type", "{\"instruction\": \"a\", \"input\": 3, \"output\": \"b\"}\n", RecordFormat::kAuto,
       {":1:", "'input'", "must be a string"}},
      {"unknown_role", "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n", RecordFormat::kAuto,
       {":1:", "messages[0].role", "unknown role 'bot'", "system, user or assistant"}},
      {"sharegpt_role", "{\"conversations\": [{\"from\": \"user\", \"value\": \"x\"}]}\n", RecordFormat::kAuto,
       {":1:", "conversations[0].from", "unknown role 'user'", "human"}},
      {"no_assistant", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n", RecordFormat::kAuto,
       {":1:", "no assistant turn"}},
      {"content_type", "{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}\n", RecordFormat::kAuto,
       {":1:", "messages[0].content", "must be a string"}},
      {"empty_messages", "{\"messages\": []}\n", RecordFormat::kAuto, {":1:", "'messages'", "empty"}},
      {"segment_label", "{\"segments\": [{\"text\": \"x\", \"label\": 1}]}\n", RecordFormat::kAuto,
       {":1:", "segments[0].label", "true or false"}},
      {"labels_length", "{\"input_ids\": [1, 2], \"labels\": [1]}\n", RecordFormat::kAuto,
       {":1:", "'labels'", "has 1 entries", "input_ids has 2"}},
      {"labels_shifted", "{\"input_ids\": [5, 6], \"labels\": [6, -100]}\n", RecordFormat::kAuto,
       {":1:", "labels[0]", "unshifted"}},
      {"id_range", "{\"input_ids\": [5, 99999999]}\n", RecordFormat::kAuto, {":1:", "input_ids[1]", "out of range"}},
      {"id_type", "{\"input_ids\": [5, \"6\"]}\n", RecordFormat::kAuto, {":1:", "input_ids[1]", "integer"}},
      {"mask_value", "{\"input_ids\": [5, 6], \"attention_mask\": [1, 2]}\n", RecordFormat::kAuto,
       {":1:", "attention_mask[1]"}},
      {"empty_sample", "{\"segments\": [{\"text\": \"\", \"label\": true}]}\n", RecordFormat::kAuto,
       {":1:", "no tokens"}},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    DatasetOptions o;
    o.path = WriteTemp(absl::StrCat(c.name, ".jsonl"), c.text);
    o.format = c.format;
    const absl::Status s = LoadDataset(o, Encoder()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    const std::string file_and_line = absl::StrCat(c.name, ".jsonl:");
    EXPECT_ERROR_MENTIONS(s, file_and_line.c_str());
    for (const char* m : c.mentions) EXPECT_ERROR_MENTIONS(s, m);
  }
}

TEST_F(DatasetTest, ChatWithoutTemplateIsAnError) {
  DatasetOptions o;
  o.path = TestData("chat.jsonl");
  SampleEncoder enc = Encoder();
  enc.chat_template = nullptr;
  const absl::Status s = LoadDataset(o, enc).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(s, "chat.jsonl:1:", "the model has no chat template");
}

TEST_F(DatasetTest, EmptyAndMissingFiles) {
  DatasetOptions o;
  o.path = WriteTemp("empty.jsonl", "");
  absl::Status s = LoadDataset(o, Encoder()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(s, "empty.jsonl: no records");
  o.path = WriteTemp("blank.jsonl", "\n   \n\n");
  EXPECT_ERROR_MENTIONS(LoadDataset(o, Encoder()).status(), "blank.jsonl: no records");
  o.path = "/nonexistent/dir/train.jsonl";
  s = LoadDataset(o, Encoder()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_ERROR_MENTIONS(s, "/nonexistent/dir/train.jsonl");
}

TEST_F(DatasetTest, PromptAnswerFromChat) {
  DatasetOptions o;
  o.path = TestData("chat.jsonl");
  absl::StatusOr<std::vector<PromptAnswer>> set = LoadPromptAnswerSet(o, Encoder());
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->size(), 2u);
  const std::vector<ChatMessage> before_last = {
      {"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."}, {"user", "2+2?"}};
  EXPECT_EQ(Dec((*set)[0].prompt_ids), template_->Render(before_last, GenerationPrompt::kYes));
  EXPECT_EQ((*set)[0].prompt_ids, Enc(template_->Render(before_last, GenerationPrompt::kYes)));
  EXPECT_EQ((*set)[0].answer, "4");
  EXPECT_EQ((*set)[0].line, 1);
  EXPECT_EQ((*set)[1].answer, "Apple");
  // The prompt is exactly the training sample's ids before the trained answer.
  const Dataset ds = Load(o.path);
  const std::vector<int32_t>& p = (*set)[1].prompt_ids;
  ASSERT_LT(p.size(), ds.samples[1].ids.size());
  EXPECT_EQ(p, std::vector<int32_t>(ds.samples[1].ids.begin(), ds.samples[1].ids.begin() + p.size()));
  EXPECT_NE(ds.samples[1].targets[p.size()], -100);
  EXPECT_EQ(ds.samples[1].targets[p.size() - 1], -100);
}

TEST_F(DatasetTest, PromptAnswerFromCompletionAlpacaShareGpt) {
  DatasetOptions o;
  o.path = TestData("completion.jsonl");
  absl::StatusOr<std::vector<PromptAnswer>> set = LoadPromptAnswerSet(o, Encoder());
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(Dec((*set)[0].prompt_ids), "Q: What is 2+2?\nA:");
  EXPECT_EQ((*set)[0].answer, " 4");
  o.path = TestData("alpaca.jsonl");
  set = LoadPromptAnswerSet(o, Encoder());
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->size(), 3u);
  EXPECT_EQ(Dec((*set)[1].prompt_ids),
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n");
  EXPECT_EQ((*set)[1].answer, "Hi there!");
  o.path = TestData("sharegpt.jsonl");
  o.format = RecordFormat::kShareGpt;
  set = LoadPromptAnswerSet(o, Encoder());
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ((*set)[1].answer, "Apple");
}

TEST_F(DatasetTest, PromptAnswerRejectsRecordsWithoutAnswers) {
  DatasetOptions o;
  o.path = TestData("text.jsonl");
  absl::Status s = LoadPromptAnswerSet(o, Encoder()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(s, "text.jsonl:1:", "exact_match", "prompt/answer");
  o.format = RecordFormat::kSegments;
  o.path = TestData("segments.jsonl");
  s = LoadPromptAnswerSet(o, Encoder()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_ERROR_MENTIONS(s, "segments.jsonl", "exact_match");
  o.format = RecordFormat::kAuto;
  o.path = TestData("mixed.jsonl");
  EXPECT_ERROR_MENTIONS(LoadPromptAnswerSet(o, Encoder()).status(), "mixed.jsonl:1:", "exact_match");
}

TEST_F(DatasetTest, PromptAnswerLongPromptErrorOrKeepTail) {
  DatasetOptions o;
  o.path = TestData("alpaca.jsonl");
  o.max_seq_len = 8;
  EXPECT_ERROR_MENTIONS(LoadPromptAnswerSet(o, Encoder()).status(), "alpaca.jsonl:1:", "prompt is", "max_seq_len 8");
  o.long_samples = LongSamples::kTruncate;
  absl::StatusOr<std::vector<PromptAnswer>> set = LoadPromptAnswerSet(o, Encoder());
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ((*set)[0].prompt_ids.size(), 8u);
  const std::string tail = Dec((*set)[0].prompt_ids);
  EXPECT_EQ(tail.substr(tail.size() - 14), "### Response:\n");
}

}  // namespace
}  // namespace sigmatune::data
