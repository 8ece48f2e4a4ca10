#include "formats/hf_config.h"

#include <string>

#include "formats/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/status.h"

namespace sigmatune::formats {
namespace {

using ::sigmatune::testing::RunfilePath;

std::string Fixture(const std::string& name) {
  return RunfilePath("tests/testdata/formats/hf_config/" + name);
}

TEST(HfConfigTest, LlamaV5WrittenByTransformers) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(Fixture("llama_v5.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->architectures, std::vector<std::string>{"LlamaForCausalLM"});
  EXPECT_EQ(c->layout, ConfigLayout::kTransformersV5);
  EXPECT_EQ(c->hidden_size, 16);
  EXPECT_EQ(c->intermediate_size, 40);
  EXPECT_EQ(c->num_hidden_layers, 2);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_EQ(c->vocab_size, 64);
  EXPECT_EQ(c->max_position_embeddings, 128);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  EXPECT_FALSE(c->mlp_bias);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{2});
  EXPECT_FALSE(c->pad_token_id.has_value());
  EXPECT_EQ(c->dtype, "bfloat16");
}

TEST(HfConfigTest, MistralAndQwen2V5) {
  absl::StatusOr<ModelConfig> m = LoadModelConfig(Fixture("mistral_v5.json"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->model_type, "mistral");
  EXPECT_EQ(m->sliding_window, 64);
  EXPECT_FALSE(m->qkv_bias);

  absl::StatusOr<ModelConfig> q = LoadModelConfig(Fixture("qwen2_v5.json"));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->model_type, "qwen2");
  EXPECT_TRUE(q->qkv_bias);
  EXPECT_FALSE(q->o_bias);
  EXPECT_TRUE(q->tie_word_embeddings);
  EXPECT_FALSE(q->sliding_window.has_value());  // use_sliding_window: false
  EXPECT_TRUE(q->eos_token_ids.empty());
  EXPECT_EQ(q->head_dim, 4);
  const auto shapes = ExpectedTensorShapes(*q);
  EXPECT_EQ(shapes.count("lm_head.weight"), 0u);
  EXPECT_EQ(shapes.at("model.layers.1.self_attn.k_proj.bias"), (Shape{8}));
  EXPECT_EQ(shapes.count("model.layers.1.self_attn.o_proj.bias"), 0u);
}

TEST(HfConfigTest, Llama3V4WithRopeScaling) {
  for (const char* name : {"llama3_v4.json", "llama3_v4_type_key.json"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<ModelConfig> c = LoadModelConfig(Fixture(name));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->layout, ConfigLayout::kTransformersV4);
    EXPECT_EQ(c->head_dim, 32);  // explicit, not 64 / 4
    EXPECT_DOUBLE_EQ(c->rope.theta, 500000.0);
    EXPECT_EQ(c->rope.type, RopeType::kLlama3);
    EXPECT_DOUBLE_EQ(c->rope.factor, 32.0);
    EXPECT_DOUBLE_EQ(c->rope.low_freq_factor, 1.0);
    EXPECT_DOUBLE_EQ(c->rope.high_freq_factor, 4.0);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 8192);
    EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
    EXPECT_EQ(c->bos_token_id, 128000);
    EXPECT_EQ(c->dtype, "bfloat16");
    EXPECT_TRUE(c->tie_word_embeddings);
    const auto shapes = ExpectedTensorShapes(*c);
    EXPECT_EQ(shapes.at("model.layers.0.self_attn.q_proj.weight"), (Shape{128, 64}));
    EXPECT_EQ(shapes.at("model.layers.0.self_attn.o_proj.weight"), (Shape{64, 128}));
    EXPECT_EQ(shapes.at("model.layers.0.self_attn.v_proj.weight"), (Shape{64, 64}));
  }
}

TEST(HfConfigTest, SmolLmV4Defaults) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig(Fixture("smollm_v4.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);  // 576 / 9
  EXPECT_EQ(c->num_key_value_heads, 3);
  EXPECT_DOUBLE_EQ(c->rope.theta, 100000.0);  // written as an integer
  EXPECT_EQ(c->rope.type, RopeType::kDefault);  // rope_scaling: null
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{0});
  EXPECT_EQ(ExpectedTensorShapes(*c).size(), 2u + 30u * 9u);
}

// A minimal v4 config with `fields` (a comma-separated JSON fragment) added; each test names the
// fields under test exactly once.
std::string Config(const std::string& fields) {
  return "{\"model_type\":\"llama\",\"vocab_size\":32,\"intermediate_size\":48," +
         std::string("\"num_hidden_layers\":1,\"max_position_embeddings\":64") +
         (fields.empty() ? "" : "," + fields) + "}";
}

TEST(HfConfigTest, DefaultsWhenOptionalFieldsAreAbsent) {
  absl::StatusOr<ModelConfig> c =
      ParseModelConfig(Config("\"hidden_size\":16,\"num_attention_heads\":4"), "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 4);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);
  EXPECT_EQ(c->layout, ConfigLayout::kTransformersV4);
  EXPECT_EQ(c->dtype, "");
}

TEST(HfConfigTest, RejectsBadConfigsNamingFileAndField) {
  struct Case {
    const char* what;
    std::string text;
    absl::StatusCode code;
    std::vector<const char*> mentions;
  };
  const std::string hidden = "\"hidden_size\":16,\"num_attention_heads\":4,";
  const std::vector<Case> cases = {
      {"not an object", "[1]", absl::StatusCode::kInvalidArgument, {"not a JSON object"}},
      {"not json", "{\"a\":", absl::StatusCode::kInvalidArgument, {"not a JSON object"}},
      {"missing hidden", Config("\"num_attention_heads\":4"), absl::StatusCode::kInvalidArgument, {"'hidden_size'", "missing"}},
      {"hidden string", Config("\"hidden_size\":\"16\",\"num_attention_heads\":4"), absl::StatusCode::kInvalidArgument, {"'hidden_size'", "integer"}},
      {"hidden zero", Config("\"hidden_size\":0,\"num_attention_heads\":4"), absl::StatusCode::kInvalidArgument, {"'hidden_size'", "positive"}},
      {"not divisible", Config("\"hidden_size\":18,\"num_attention_heads\":4"), absl::StatusCode::kInvalidArgument, {"'hidden_size'", "head_dim"}},
      {"kv not dividing", Config(hidden + "\"num_key_value_heads\":3"), absl::StatusCode::kInvalidArgument, {"'num_key_value_heads'", "3"}},
      {"odd head_dim", Config(hidden + "\"head_dim\":5"), absl::StatusCode::kInvalidArgument, {"'head_dim'", "even"}},
      {"model type", "{\"model_type\":\"gpt2\"}", absl::StatusCode::kUnimplemented, {"'model_type'", "gpt2"}},
      {"rope yarn v4", Config(hidden + "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}"), absl::StatusCode::kUnimplemented,
       {"'rope_scaling.rope_type'", "yarn"}},
      {"rope linear v4 old key", Config(hidden + "\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}"), absl::StatusCode::kUnimplemented,
       {"'rope_scaling.rope_type'", "linear"}},
      {"rope dynamic v5", Config(hidden + "\"rope_parameters\":{\"rope_type\":\"dynamic\",\"rope_theta\":1e4}"), absl::StatusCode::kUnimplemented,
       {"'rope_parameters.rope_type'", "dynamic"}},
      {"rope type conflict", Config(hidden + "\"rope_scaling\":{\"rope_type\":\"llama3\",\"type\":\"linear\"}"), absl::StatusCode::kInvalidArgument,
       {"'rope_scaling.rope_type'", "linear"}},
      {"llama3 missing factor", Config(hidden + "\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":5e5,\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}"),
       absl::StatusCode::kInvalidArgument, {"'rope_parameters.factor'", "missing"}},
      {"llama3 bad freqs", Config(hidden + "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}"),
       absl::StatusCode::kInvalidArgument, {"'rope_scaling.high_freq_factor'"}},
      {"rope_scaling list", Config(hidden + "\"rope_scaling\":[1]"), absl::StatusCode::kInvalidArgument, {"'rope_scaling'"}},
      {"eos strings", Config(hidden + "\"eos_token_id\":[1,\"x\"]"), absl::StatusCode::kInvalidArgument, {"'eos_token_id'", "\"x\""}},
      {"tie not bool", Config(hidden + "\"tie_word_embeddings\":1"), absl::StatusCode::kInvalidArgument, {"'tie_word_embeddings'"}},
      {"eps", Config(hidden + "\"rms_norm_eps\":-1"), absl::StatusCode::kInvalidArgument, {"'rms_norm_eps'"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const absl::Status s = ParseModelConfig(c.text, "dir/config.json").status();
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_NE(s.message().find("dir/config.json"), absl::string_view::npos) << s;
    for (const char* part : c.mentions) {
      EXPECT_NE(s.message().find(part), absl::string_view::npos) << "'" << part << "' not in: " << s;
    }
  }
  EXPECT_EQ(LoadModelConfig("/nonexistent/config.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(HfConfigTest, CheckpointMatchesItsConfig) {
  const std::string dir = RunfilePath("tests/testdata/formats/safetensors/sharded");
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<ShardedCheckpoint> ckpt = ShardedCheckpoint::OpenDirectory(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::map<std::string, Shape> shapes = ckpt->TensorShapes();
  EXPECT_TRUE(CheckCheckpointAgainstConfig(*c, shapes, ckpt->source()).ok());
  EXPECT_EQ(shapes, ExpectedTensorShapes(*c));

  // A stray rotary buffer is ignored.
  auto with_buffer = shapes;
  with_buffer["model.layers.0.self_attn.rotary_emb.inv_freq"] = {2};
  EXPECT_TRUE(CheckCheckpointAgainstConfig(*c, with_buffer, "ckpt").ok());

  auto wrong = shapes;
  wrong["model.layers.1.self_attn.k_proj.weight"] = {16, 16};
  EXPECT_ERROR_MENTIONS(CheckCheckpointAgainstConfig(*c, wrong, "ckpt"), "ckpt",
                        "'model.layers.1.self_attn.k_proj.weight'", "[16, 16]", "expected [8, 16]");
  auto missing = shapes;
  missing.erase("model.norm.weight");
  EXPECT_ERROR_MENTIONS(CheckCheckpointAgainstConfig(*c, missing, "ckpt"), "'model.norm.weight'",
                        "missing", "[16]");
  auto extra = shapes;
  extra["model.layers.2.mlp.up_proj.weight"] = {40, 16};
  EXPECT_ERROR_MENTIONS(CheckCheckpointAgainstConfig(*c, extra, "ckpt"),
                        "unexpected tensor 'model.layers.2.mlp.up_proj.weight'", "[40, 16]");

  // Tied: lm_head.weight may be absent, or present with the embedding's shape.
  ModelConfig tied = *c;
  tied.tie_word_embeddings = true;
  EXPECT_TRUE(CheckCheckpointAgainstConfig(tied, shapes, "ckpt").ok());
  auto no_head = shapes;
  no_head.erase("lm_head.weight");
  EXPECT_TRUE(CheckCheckpointAgainstConfig(tied, no_head, "ckpt").ok());
  EXPECT_ERROR_MENTIONS(CheckCheckpointAgainstConfig(*c, no_head, "ckpt"), "'lm_head.weight'",
                        "missing");
}

}  // namespace
}  // namespace sigmatune::formats
