// The committed tiny model (examples/models/tiny-llama) against its generator and the project's
// readers:
//  (a) :make_tiny_model with seed 7 on the committed data files writes byte-identical files, so the
//      generator is the source of the checkpoint;
//  (b) it loads with LoadLlamaFromHfDirectory on the CPU backend, its tokenizer with
//      Tokenizer::FromJsonFile and its chat template (tokenizer_config.json) as plain ChatML;
//      encode/decode round-trips every record of the example data files; a forward pass over
//      packed arithmetic chats gives a finite loss near ln(vocab).
// With --test_env=SIGMATUNE_TINY_DUMP=/abs/file.json the forward test also writes the token ids
// and the loss there, and the round-trip test the ids of every data record to
// file.json.all_ids.json, for the by-hand comparison with tokenizers/transformers (README.md).
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/testing/golden.h"
#include "nlohmann/json.hpp"
#include "worker/data/tokenizer.h"
#include "worker/data/tokenizer_chat_template.h"
#include "worker/model/llama_loader.h"

namespace sigmatune {
namespace {

using Json = nlohmann::json;

constexpr char kModelDir[] = "examples/models/tiny-llama";
constexpr const char* kModelFiles[] = {"config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"};
constexpr const char* kDataFiles[] = {"arith-train.jsonl", "arith-test.jsonl", "calibration.jsonl",
                                      "knowledge.jsonl", "knowledge-calibration.jsonl"};
constexpr int64_t kSequenceLen = 256;    // the tiny-*.yaml specs' sequence_len
constexpr int64_t kMaxPositions = 1024;  // config.json max_position_embeddings

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string ModelPath(const std::string& file) {
  return testing::RunfilePath(absl::StrCat(kModelDir, "/", file));
}

std::string DataPath(const std::string& file) {
  return testing::RunfilePath(absl::StrCat("examples/data/", file));
}

std::vector<Json> ReadJsonl(const std::string& path) {
  std::vector<Json> out;
  std::istringstream in(ReadFile(path));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(Json::parse(line));
  }
  return out;
}

// A record as the model sees it: chats rendered with the model's template, texts as they are.
std::string RenderRecord(const Json& record, const data::ChatTemplate& chat) {
  if (record.contains("text")) return record["text"].get<std::string>();
  std::vector<data::ChatMessage> turns;
  for (const Json& m : record["messages"]) {
    turns.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return chat.Render(turns, data::GenerationPrompt::kNo);
}

data::ChatTemplate LoadChatTemplate() {
  const Json config = Json::parse(ReadFile(ModelPath("tokenizer_config.json")));
  auto chat = data::ChatTemplate::FromJinja(config.at("chat_template").get<std::string>(),
                                            "tokenizer_config.json");
  EXPECT_TRUE(chat.ok()) << chat.status();
  return chat.ok() ? *chat : data::ChatTemplate(data::ChatTemplateKind::kSmolLM2);
}

TEST(TinyModelTest, GeneratorReproducesTheCommittedFiles) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  ASSERT_NE(tmp, nullptr);
  const std::string out = absl::StrCat(tmp, "/regenerated");
  const std::string command =
      absl::StrCat("'", testing::RunfilePath("examples/make_tiny_model"), "' '--out=", out,
                   "' --seed=7 '--arith_train=", DataPath("arith-train.jsonl"), "' '--knowledge=",
                   DataPath("knowledge.jsonl"), "'");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  for (const char* file : kModelFiles) {
    const std::string committed = ReadFile(ModelPath(file));
    const std::string regenerated = ReadFile(absl::StrCat(out, "/", file));
    EXPECT_FALSE(committed.empty()) << file;
    EXPECT_TRUE(committed == regenerated)
        << file << " differs from what make_tiny_model --seed=7 writes (" << committed.size()
        << " vs " << regenerated.size() << " bytes); regenerate examples/models/tiny-llama "
        << "(examples/README.md)";
  }
}

TEST(TinyModelTest, LoadsWithTheProjectReaders) {
  model::CpuBackend backend(1);
  auto loaded = LoadLlamaFromHfDirectory(testing::RunfilePath(kModelDir), backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const model::LlamaConfig& c = loaded->config;
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 176);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.embeddings, model::Embeddings::kTied);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);

  auto tok = data::Tokenizer::FromJsonFile(ModelPath("tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), c.vocab_size);
  EXPECT_EQ(tok->vocab_size(), 483);  // 3 specials + 256 bytes + 224 merges
  EXPECT_EQ(tok->TokenToId("<|endoftext|>"), 0);
  EXPECT_EQ(tok->TokenToId("<|im_start|>"), 1);
  EXPECT_EQ(tok->TokenToId("<|im_end|>"), 2);
  for (int32_t id = 0; id < 3; ++id) EXPECT_TRUE(tok->IsSpecial(id)) << id;

  const Json tok_config = Json::parse(ReadFile(ModelPath("tokenizer_config.json")));
  EXPECT_EQ(tok_config.at("eos_token"), "<|im_end|>");
  const Json config = Json::parse(ReadFile(ModelPath("config.json")));
  EXPECT_EQ(config.at("eos_token_id"), 2);
  EXPECT_EQ(config.at("bos_token_id"), 1);
  EXPECT_EQ(LoadChatTemplate().kind(), data::ChatTemplateKind::kChatML);
}

TEST(TinyModelTest, TokenizerRoundTripsTheDataFiles) {
  auto tok = data::Tokenizer::FromJsonFile(ModelPath("tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const data::ChatTemplate chat = LoadChatTemplate();
  Json all_ids;  // file -> ids of every record, for SIGMATUNE_TINY_DUMP
  for (const char* file : kDataFiles) {
    const std::vector<Json> records = ReadJsonl(DataPath(file));
    ASSERT_FALSE(records.empty()) << file;
    size_t longest = 0;
    for (size_t i = 0; i < records.size(); ++i) {
      const std::string text = RenderRecord(records[i], chat);
      auto ids = tok->Encode(text);
      ASSERT_TRUE(ids.ok()) << file << ":" << i + 1 << ": " << ids.status();
      all_ids[file].push_back(*ids);
      ASSERT_EQ(tok->Decode(*ids, data::SkipSpecialTokens::kNo), text) << file << ":" << i + 1;
      longest = std::max(longest, ids->size());
    }
    // Every chat fits the specs' sequence_len (training never truncates). The ~600-character
    // license passages take up to ~560 tokens with this 483-token vocabulary (the tiny specs
    // truncate them to sequence_len); whole passages still fit the model's context.
    if (records[0].contains("messages")) {
      EXPECT_LE(longest, static_cast<size_t>(kSequenceLen)) << file;
    } else {
      EXPECT_LE(longest, static_cast<size_t>(kMaxPositions)) << file;
    }
    std::cout << file << ": " << records.size() << " records, longest " << longest << " tokens\n";
  }
  if (const char* dump = std::getenv("SIGMATUNE_TINY_DUMP"); dump != nullptr && *dump != '\0') {
    std::ofstream(absl::StrCat(dump, ".all_ids.json")) << all_ids.dump() << "\n";
  }
  // The chat specials are single tokens, and digits are split one by one.
  auto ids = tok->Encode("<|im_start|>user\n123<|im_end|>");
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), 7u);  // <|im_start|> user \n 1 2 3 <|im_end|>
  EXPECT_EQ((*ids)[0], 1);
  EXPECT_EQ((*ids)[6], 2);
}

TEST(TinyModelTest, ForwardLossIsNearLnVocab) {
  model::CpuBackend backend(1);
  auto loaded = LoadLlamaFromHfDirectory(testing::RunfilePath(kModelDir), backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto tok = data::Tokenizer::FromJsonFile(ModelPath("tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const data::ChatTemplate chat = LoadChatTemplate();
  const std::vector<Json> train = ReadJsonl(DataPath("arith-train.jsonl"));
  const std::vector<Json> knowledge = ReadJsonl(DataPath("knowledge.jsonl"));
  // Four chats and one knowledge passage, packed.
  std::vector<std::vector<int32_t>> sequences;
  for (size_t i = 0; i < 4; ++i) {
    auto ids = tok->Encode(RenderRecord(train[i], chat));
    ASSERT_TRUE(ids.ok()) << ids.status();
    sequences.push_back(*ids);
  }
  auto passage = tok->Encode(RenderRecord(knowledge[0], chat));
  ASSERT_TRUE(passage.ok()) << passage.status();
  sequences.push_back(*passage);

  const int64_t vocab = loaded->config.vocab_size;
  auto m = model::LlamaModel::Create(loaded->config, loaded->weights, &backend);
  ASSERT_TRUE(m.ok()) << m.status();
  auto batch = model::PackCausalLmBatch(backend, sequences);
  ASSERT_TRUE(batch.ok()) << batch.status();
  auto result = (*m)->Forward(*batch);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(std::isfinite(result->loss));
  EXPECT_NEAR(result->loss, std::log(static_cast<double>(vocab)), 0.1);
  std::cout << "loss " << result->loss << " over " << result->num_targets << " targets; ln(vocab) "
            << std::log(static_cast<double>(vocab)) << "\n";

  if (const char* dump = std::getenv("SIGMATUNE_TINY_DUMP"); dump != nullptr && *dump != '\0') {
    Json j;
    j["sequences"] = sequences;
    j["texts"] = Json::array();
    for (size_t i = 0; i < 4; ++i) j["texts"].push_back(RenderRecord(train[i], chat));
    j["texts"].push_back(RenderRecord(knowledge[0], chat));
    j["loss"] = result->loss;
    j["num_targets"] = result->num_targets;
    std::ofstream(dump) << j.dump(1) << "\n";
  }
}

}  // namespace
}  // namespace sigmatune
