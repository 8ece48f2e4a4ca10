// The real model: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32 on the CPU, to bf16 on a
// GPU) answers a short chat prompt coherently with greedy decoding, on the CPU and on the GPU (the
// job's CUDA backend). Runs when the file is present (tools/get_smollm2.sh), else skips with the
// reason; the GPU case also skips without a usable GPU.
#include <chrono>
#include <string>

#include "absl/strings/ascii.h"
#include "formats/gguf.h"
#include "gtest/gtest.h"
#include "kernels/base/backend.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/testing/model_files.h"
#include "worker/data/tokenizer_chat_template.h"
#include "worker/data/tokenizer_gguf.h"
#include "worker/job/device.h"
#include "worker/model/llama_loader.h"

namespace sigmatune {
namespace {

void ExpectACoherentAnswer(model::ModelBackend& backend) {
  std::string tried;
  const std::string path = testing::FindSmolLM2Gguf(&tried);
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF not found: " << tried;

  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto tokenizer = data::TokenizerFromGguf(*file);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto jinja = file->GetString("tokenizer.chat_template");
  ASSERT_TRUE(jinja.ok()) << jinja.status();
  auto chat = data::ChatTemplate::FromJinja(*jinja, path);
  ASSERT_TRUE(chat.ok()) << chat.status();

  const auto start = std::chrono::steady_clock::now();
  auto loaded = LoadLlamaFromGguf(path, backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->config.num_layers, 30);
  EXPECT_EQ(loaded->config.hidden_size, 576);
  EXPECT_EQ(loaded->config.num_heads, 9);
  EXPECT_EQ(loaded->config.num_kv_heads, 3);
  EXPECT_EQ(loaded->config.vocab_size, 49152);
  EXPECT_EQ(loaded->config.embeddings, model::Embeddings::kTied);
  auto llama = model::LlamaModel::Create(loaded->config, loaded->weights, &backend);
  ASSERT_TRUE(llama.ok()) << llama.status();

  const std::string prompt =
      chat->Render({{"user", "What is the capital of France? Answer in one sentence."}}, data::GenerationPrompt::kYes);
  auto ids = tokenizer->Encode(prompt, data::AddSpecialTokens::kNo);
  ASSERT_TRUE(ids.ok()) << ids.status();
  const std::optional<int32_t> im_end = tokenizer->TokenToId("<|im_end|>");
  ASSERT_TRUE(im_end.has_value());
  auto generated = (*llama)->GenerateGreedy(*ids, 32, {*im_end});
  ASSERT_TRUE(generated.ok()) << generated.status();
  const std::string answer = tokenizer->Decode(*generated, data::SkipSpecialTokens::kYes);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s: prompt tokens: %zu, generated %zu tokens in %.1f s (load included): %s\n",
              backend.device().ToString().c_str(), ids->size(), generated->size(), seconds, answer.c_str());
  EXPECT_NE(absl::AsciiStrToLower(answer).find("paris"), std::string::npos) << answer;
  EXPECT_EQ(generated->back(), *im_end) << "the answer should end its turn within 32 tokens: " << answer;
}

TEST(SmolLM2Test, AnswersAChatPromptCoherently) {
  model::CpuBackend backend;
  ExpectACoherentAnswer(backend);
}

TEST(SmolLM2Test, AnswersAChatPromptCoherentlyOnTheGpu) {
  const BackendChoice choice = ChooseBackend();
  if (choice.visible_gpus == 0) GTEST_SKIP() << "no GPU: " << choice.reason;
  absl::StatusOr<job::JobBackend> opened = job::OpenJobBackend("cuda", 0, 0);
  ASSERT_TRUE(opened.ok()) << opened.status();
  ExpectACoherentAnswer(*opened->backend);
}

}  // namespace
}  // namespace sigmatune
