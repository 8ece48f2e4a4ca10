// Built by //worker/model:hf_model_writer_test (it reloads what it writes with the worker's
// LoadLlamaFromHfDirectory, and formats/ must not depend on worker/).
#include "formats/hf_model_writer.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "formats/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/status.h"
#include "nlohmann/json.hpp"
#include "worker/model/llama_loader.h"

namespace sigmatune::formats {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp != nullptr ? tmp : "/tmp") / "hf_model_writer_test" / name;
  fs::remove_all(dir);
  return dir.string();
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void ExpectSameValues(const Tensor& actual, const Tensor& expected, const std::string& name) {
  ASSERT_EQ(actual.shape(), expected.shape()) << name;
  EXPECT_TRUE(testing::AllClose(actual, expected, testing::Tolerance{0.0, 0.0})) << name;
}

// Every field ParseModelConfig fills, except the layout.
void ExpectSameModelConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.architectures, b.architectures);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope.type, b.rope.type);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.dtype, b.dtype);
}

void ExpectSameLlamaConfig(const model::LlamaConfig& a, const model::LlamaConfig& b) {
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.head_dim, b.rope.head_dim);
  EXPECT_EQ(a.rope.rotary_dim, b.rope.rotary_dim);
  EXPECT_EQ(a.rope.scaling, b.rope.scaling);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  EXPECT_EQ(a.embeddings, b.embeddings);
}

class HfModelWriterTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string FixtureDir() const {
    return testing::RunfilePath("tests/testdata/llama/" + GetParam());
  }
  model::CpuBackend backend_;
};

TEST_P(HfModelWriterTest, RoundTripThroughTheLoader) {
  const std::string src = FixtureDir();
  auto hc = LoadModelConfig(src + "/config.json");
  ASSERT_TRUE(hc.ok()) << hc.status();
  auto loaded = LoadLlamaFromHfDirectory(src, backend_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto tensors = HfTensorsFromLlama(loaded->config, loaded->weights);
  ASSERT_TRUE(tensors.ok()) << tensors.status();

  // The same tensor names as the original file (lm_head absent when tied).
  auto original = SafetensorsReader::Open(src + "/model.safetensors");
  ASSERT_TRUE(original.ok()) << original.status();
  std::vector<std::string> names;
  for (const auto& [name, t] : *tensors) names.push_back(name);
  EXPECT_EQ(names, original->names());
  EXPECT_EQ(tensors->count("lm_head.weight"), hc->tie_word_embeddings ? 0u : 1u);

  const std::string out = TempDir(GetParam()) + "/export";
  ASSERT_TRUE(WriteHfCheckpoint(out, *hc, *tensors).ok());

  auto reloaded = LoadLlamaFromHfDirectory(out, backend_);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  ExpectSameLlamaConfig(reloaded->config, loaded->config);
  auto again = HfTensorsFromLlama(reloaded->config, reloaded->weights);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->size(), tensors->size());
  for (const auto& [name, t] : *tensors) ExpectSameValues(again->at(name), t, name);
  // The written bytes equal the original file's tensors too.
  for (const std::string& name : original->names()) {
    auto t = original->GetTensor(name);
    ASSERT_TRUE(t.ok()) << t.status();
    ExpectSameValues(again->at(name), *t, name);
  }

  // config.json re-parses to the same ModelConfig (in the v4 layout).
  auto written = LoadModelConfig(out + "/config.json");
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->layout, ConfigLayout::kTransformersV4);
  ExpectSameModelConfig(*written, *hc);

  const nlohmann::json j = nlohmann::json::parse(ReadText(out + "/config.json"), nullptr, false);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["torch_dtype"], "float32");
  EXPECT_EQ(j["head_dim"], 8);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_TRUE(j["pad_token_id"].is_null());
  if (hc->rope.type == RopeType::kLlama3) {
    EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
    EXPECT_EQ(j["rope_scaling"]["factor"], 8.0);
    EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 16);
    EXPECT_EQ(j["rope_theta"], 500000.0);
  } else {
    EXPECT_TRUE(j["rope_scaling"].is_null());
  }
  auto reader = SafetensorsReader::Open(out + "/model.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->metadata().at("format"), "pt");
}

TEST_P(HfModelWriterTest, Bf16Checkpoint) {
  const std::string src = FixtureDir();
  auto hc = LoadModelConfig(src + "/config.json");
  ASSERT_TRUE(hc.ok()) << hc.status();
  auto loaded = LoadLlamaFromHfDirectory(src, backend_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto tensors = HfTensorsFromLlama(loaded->config, loaded->weights);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  std::map<std::string, Tensor> bf16;
  for (const auto& [name, t] : *tensors) bf16[name] = t.To(DType::kBF16);

  const std::string out = TempDir(GetParam() + "_bf16");
  ASSERT_TRUE(WriteHfCheckpoint(out, *hc, bf16).ok());
  auto written = LoadModelConfig(out + "/config.json");
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->dtype, "bfloat16");
  auto reloaded = LoadLlamaFromHfDirectory(out, backend_);  // the loader converts to f32
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  auto again = HfTensorsFromLlama(reloaded->config, reloaded->weights);
  ASSERT_TRUE(again.ok()) << again.status();
  for (const auto& [name, t] : bf16) ExpectSameValues(again->at(name), t.To(DType::kF32), name);
}

TEST_P(HfModelWriterTest, ModelConfigFromLlama) {
  const std::string src = FixtureDir();
  auto hc = LoadModelConfig(src + "/config.json");
  ASSERT_TRUE(hc.ok()) << hc.status();
  auto loaded = LoadLlamaFromHfDirectory(src, backend_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto mc = ModelConfigFromLlama(loaded->config, hc->max_position_embeddings);
  ASSERT_TRUE(mc.ok()) << mc.status();
  mc->bos_token_id = hc->bos_token_id;
  mc->eos_token_ids = hc->eos_token_ids;
  mc->pad_token_id = hc->pad_token_id;
  mc->dtype = hc->dtype;
  ExpectSameModelConfig(*mc, *hc);
  EXPECT_FALSE(ModelConfigFromLlama(loaded->config, 0).ok());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfModelWriterTest,
                         ::testing::Values("tiny_gqa_tied", "tiny_mha_llama3"));

class HfModelWriterErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string src = testing::RunfilePath("tests/testdata/llama/tiny_gqa_tied");
    auto hc = LoadModelConfig(src + "/config.json");
    ASSERT_TRUE(hc.ok()) << hc.status();
    config_ = *hc;
    auto loaded = LoadLlamaFromHfDirectory(src, backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto t = HfTensorsFromLlama(loaded->config, loaded->weights);
    ASSERT_TRUE(t.ok()) << t.status();
    tensors_ = *t;
    llama_ = loaded->config;
    weights_ = loaded->weights;
  }
  model::CpuBackend backend_;
  ModelConfig config_;
  std::map<std::string, Tensor> tensors_;
  model::LlamaConfig llama_;
  model::LlamaWeights weights_;
};

TEST_F(HfModelWriterErrorTest, TensorProblemsNameTheTensor) {
  const std::string out = TempDir("errors");
  auto t = tensors_;
  t.erase("model.layers.1.mlp.up_proj.weight");
  EXPECT_ERROR_MENTIONS(WriteHfCheckpoint(out, config_, t), "model.safetensors",
                        "model.layers.1.mlp.up_proj.weight", "missing");
  t = tensors_;
  t["model.layers.0.self_attn.k_proj.weight"] = Tensor::Zeros({48, 48}, DType::kF32);
  EXPECT_ERROR_MENTIONS(WriteHfCheckpoint(out, config_, t), "model.layers.0.self_attn.k_proj.weight",
                        "[48, 48]", "[16, 48]");
  t = tensors_;
  t["model.norm.weight"] = t["model.norm.weight"].To(DType::kBF16);
  EXPECT_ERROR_MENTIONS(WriteHfCheckpoint(out, config_, t), "model.norm.weight", "one dtype");
  t = tensors_;
  t["model.norm.weight"] = Tensor::Zeros({48}, DType::kI32);
  EXPECT_ERROR_MENTIONS(WriteHfCheckpoint(out, config_, t), "model.norm.weight", "i32");
  t = tensors_;
  t["extra.weight"] = Tensor::Zeros({2}, DType::kF32);
  EXPECT_ERROR_MENTIONS(WriteHfCheckpoint(out, config_, t), "unexpected tensor 'extra.weight'");
  EXPECT_FALSE(fs::exists(out));  // nothing written on error

  model::LlamaWeights w = weights_;
  w.layers[1].gate = Tensor();
  EXPECT_ERROR_MENTIONS(HfTensorsFromLlama(llama_, w).status(), "model.layers.1.mlp.gate_proj.weight",
                        "missing");
}

TEST_F(HfModelWriterErrorTest, ConfigProblems) {
  ModelConfig c = config_;
  c.model_type = "gpt2";
  EXPECT_ERROR_MENTIONS(SerializeModelConfig(c).status(), "model_type", "gpt2");
  c = config_;
  c.qkv_bias = true;
  EXPECT_ERROR_MENTIONS(SerializeModelConfig(c).status(), "attention_bias", "o_proj bias");
  c = config_;
  c.num_key_value_heads = 4;
  EXPECT_ERROR_MENTIONS(SerializeModelConfig(c).status(), "num_key_value_heads", "4");
  model::LlamaConfig l = llama_;
  l.rope.rotary_dim = 4;
  EXPECT_ERROR_MENTIONS(ModelConfigFromLlama(l, 64).status(), "RoPE rotates 4 of 8");
}

TEST_F(HfModelWriterErrorTest, OtherModelTypesRoundTrip) {
  for (const char* type : {"mistral", "qwen2"}) {
    ModelConfig c = config_;
    c.model_type = type;
    c.architectures.clear();
    c.sliding_window = 32;
    c.eos_token_ids = {2, 5};
    c.pad_token_id = 0;
    if (c.model_type == "qwen2") c.qkv_bias = true;
    auto text = SerializeModelConfig(c);
    ASSERT_TRUE(text.ok()) << text.status();
    auto back = ParseModelConfig(*text, "written");
    ASSERT_TRUE(back.ok()) << back.status();
    c.architectures = {type == std::string("qwen2") ? "Qwen2ForCausalLM" : "MistralForCausalLM"};
    ExpectSameModelConfig(*back, c);
    c.sliding_window.reset();
    text = SerializeModelConfig(c);
    ASSERT_TRUE(text.ok()) << text.status();
    back = ParseModelConfig(*text, "written");
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSameModelConfig(*back, c);
  }
}

// With SIGMATUNE_PEFT_EXPORT_DIR set, writes tiny_gqa_tied re-exported by WriteHfCheckpoint to
// $SIGMATUNE_PEFT_EXPORT_DIR/base_tiny_gqa_tied for tools/peft_export_check.py (which loads it
// with transformers).
TEST_F(HfModelWriterErrorTest, ExportBaseForPythonCheck) {
  const char* out = std::getenv("SIGMATUNE_PEFT_EXPORT_DIR");
  if (out == nullptr || *out == '\0') GTEST_SKIP() << "SIGMATUNE_PEFT_EXPORT_DIR not set";
  ASSERT_TRUE(WriteHfCheckpoint(std::string(out) + "/base_tiny_gqa_tied", config_, tensors_).ok());
}

}  // namespace
}  // namespace sigmatune::formats
