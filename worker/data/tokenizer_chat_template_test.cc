#include "worker/data/tokenizer_chat_template.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "nlohmann/json.hpp"
#include "worker/data/tokenizer.h"

namespace sigmatune::data {
namespace {

using Json = nlohmann::json;

std::string ReadText(const std::string& name) {
  std::ifstream in(testing::RunfilePath("tests/testdata/tokenizer/" + name), std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(ChatTemplateTest, MatchesTransformersApplyChatTemplate) {
  absl::StatusOr<ChatTemplate> tmpl =
      ChatTemplate::FromJinja(ReadText("smollm2_chat_template.jinja"), "smollm2_chat_template.jinja");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  EXPECT_EQ(tmpl->kind(), ChatTemplateKind::kSmolLM2);
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromJsonFile(
      testing::RunfilePath("tests/testdata/tokenizer/smollm2_tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Json chats = Json::parse(ReadText("chat.json"), nullptr, false);
  ASSERT_FALSE(chats.is_discarded());
  ASSERT_GE(chats["chats"].size(), 10u);
  for (size_t i = 0; i < chats["chats"].size(); ++i) {
    const Json& c = chats["chats"][i];
    std::vector<ChatMessage> messages;
    for (const Json& m : c["messages"]) {
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    const GenerationPrompt prompt =
        c["add_generation_prompt"].get<bool>() ? GenerationPrompt::kYes : GenerationPrompt::kNo;
    const std::string text = tmpl->Render(messages, prompt);
    EXPECT_EQ(text, c["text"].get<std::string>()) << "chat " << i;
    std::vector<int32_t> want;
    for (const Json& id : c["ids"]) want.push_back(id.get<int32_t>());
    absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, want) << "chat " << i << "\n got  " << absl::StrJoin(*ids, ",")
                          << "\n want " << absl::StrJoin(want, ",");
  }
}

TEST(ChatTemplateTest, UnknownTemplateIsRejected) {
  const absl::Status s = ChatTemplate::FromJinja("{{ bos_token }}{{ messages }}", "x/tokenizer_config.json").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("x/tokenizer_config.json"), std::string::npos);
}

TEST(ChatTemplateTest, PlainChatML) {
  const ChatTemplate t(ChatTemplateKind::kChatML);
  EXPECT_EQ(t.Render({{"user", "hi"}}, GenerationPrompt::kYes),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

}  // namespace
}  // namespace sigmatune::data
