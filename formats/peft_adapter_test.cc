#include "formats/peft_adapter.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "formats/atomic_file.h"
#include "formats/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"
#include "nlohmann/json.hpp"

namespace sigmatune::formats {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;

std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const fs::path dir = fs::path(tmp != nullptr ? tmp : "/tmp") / "peft_adapter_test" / name;
  fs::remove_all(dir);
  return dir.string();
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void ExpectSameValues(const Tensor& actual, const Tensor& expected) {
  ASSERT_EQ(actual.shape(), expected.shape());
  EXPECT_TRUE(testing::AllClose(actual, expected, testing::Tolerance{0.0, 0.0}));
}

// Random factors for `module` with in/out features and rank r.
PeftModuleWeights RandomModule(int64_t in, int64_t out, int64_t r, bool diag, uint64_t seed) {
  PeftModuleWeights w;
  w.lora_a = testing::RandomNormal({r, in}, DType::kF32, seed);
  w.lora_b = testing::RandomNormal({out, r}, DType::kF32, seed + 1);
  if (diag) w.lora_diag = testing::RandomNormal({r}, DType::kF32, seed + 2);
  return w;
}

// A plain LoRA on two layers of a tiny_gqa_tied-shaped model (d 48, kv 16, ff 80): all seven
// projections, rank 4 except down_proj (rank_pattern 2), alpha 8 except v_proj (alpha_pattern 4).
PeftAdapter SampleLora() {
  PeftAdapter a;
  a.config.base_model_name_or_path = "tests/testdata/llama/tiny_gqa_tied";
  a.config.r = 4;
  a.config.lora_alpha = 8;
  a.config.lora_dropout = 0.05;
  a.config.target_modules = {"v_proj", "q_proj", "k_proj", "o_proj", "up_proj", "gate_proj",
                             "down_proj"};
  a.config.rank_pattern = {{"down_proj", 2}};
  a.config.alpha_pattern = {{"v_proj", 4}};
  uint64_t seed = 100;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    a.modules[p + "self_attn.q_proj"] = RandomModule(48, 48, 4, false, seed += 10);
    a.modules[p + "self_attn.k_proj"] = RandomModule(48, 16, 4, false, seed += 10);
    a.modules[p + "self_attn.v_proj"] = RandomModule(48, 16, 4, false, seed += 10);
    a.modules[p + "self_attn.o_proj"] = RandomModule(48, 48, 4, false, seed += 10);
    a.modules[p + "mlp.gate_proj"] = RandomModule(48, 80, 4, false, seed += 10);
    a.modules[p + "mlp.up_proj"] = RandomModule(48, 80, 4, false, seed += 10);
    a.modules[p + "mlp.down_proj"] = RandomModule(80, 48, 2, false, seed += 10);
  }
  return a;
}

// KaSA on q/v, rank 2, rsLoRA.
PeftAdapter SampleKasa() {
  PeftAdapter a;
  a.config.base_model_name_or_path = "tests/testdata/llama/tiny_gqa_tied";
  a.config.r = 2;
  a.config.lora_alpha = 4;
  a.config.use_rslora = true;
  a.config.target_modules = {"q_proj", "v_proj"};
  a.config.kasa = PeftKasaConfig{1e-4, 1e-3};
  uint64_t seed = 500;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    a.modules[p + "self_attn.q_proj"] = RandomModule(48, 48, 2, true, seed += 10);
    a.modules[p + "self_attn.v_proj"] = RandomModule(48, 16, 2, true, seed += 10);
  }
  return a;
}

void ExpectSameAdapter(const PeftAdapter& actual, const PeftAdapter& expected) {
  ASSERT_EQ(actual.modules.size(), expected.modules.size());
  for (const auto& [module, w] : expected.modules) {
    const auto it = actual.modules.find(module);
    ASSERT_NE(it, actual.modules.end()) << module;
    ExpectSameValues(it->second.lora_a, w.lora_a);
    ExpectSameValues(it->second.lora_b, w.lora_b);
    ASSERT_EQ(it->second.lora_diag.defined(), w.lora_diag.defined()) << module;
    if (w.lora_diag.defined()) ExpectSameValues(it->second.lora_diag, w.lora_diag);
  }
}

TEST(PeftAdapterTest, RoundTripPlainLora) {
  const PeftAdapter a = SampleLora();
  const std::string dir = TempDir("lora") + "/nested/adapter";  // created with parents
  ASSERT_TRUE(WritePeftAdapter(dir, a).ok());
  auto back = ReadPeftAdapter(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameAdapter(*back, a);
  const PeftAdapterConfig& c = back->config;
  EXPECT_EQ(c.r, 4);
  EXPECT_EQ(c.lora_alpha, 8);
  EXPECT_EQ(c.lora_dropout, 0.05);
  EXPECT_THAT(c.target_modules, ElementsAre("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                            "up_proj", "v_proj"));
  EXPECT_EQ(c.rank_pattern, a.config.rank_pattern);
  EXPECT_EQ(c.alpha_pattern, a.config.alpha_pattern);
  EXPECT_EQ(std::get<bool>(c.init_lora_weights), true);
  EXPECT_FALSE(c.kasa.has_value());
  EXPECT_EQ(c.base_model_name_or_path, a.config.base_model_name_or_path);
  EXPECT_EQ(c.task_type, "CAUSAL_LM");

  // The safetensors file: PEFT key names, F32, format pt, nothing else.
  auto reader = SafetensorsReader::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->metadata().at("format"), "pt");
  EXPECT_EQ(reader->entries().size(), 28u);
  const SafetensorsEntry* e =
      reader->Find("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, SafetensorsDType::kF32);
  EXPECT_EQ(e->shape, (Shape{2, 80}));
  e = reader->Find("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (Shape{16, 4}));
  // No temporary files are left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    ++files;
    EXPECT_THAT(entry.path().filename().string(),
                ::testing::AnyOf("adapter_config.json", "adapter_model.safetensors"));
  }
  EXPECT_EQ(files, 2);
}

TEST(PeftAdapterTest, ConfigJsonHasPeftKeys) {
  const std::string dir = TempDir("keys");
  ASSERT_TRUE(WritePeftAdapter(dir, SampleLora()).ok());
  const std::string text = ReadText(dir + "/adapter_config.json");
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  ASSERT_TRUE(j.is_object()) << text;
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  EXPECT_THAT(keys, ElementsAre("alpha_pattern", "base_model_name_or_path", "bias", "fan_in_fan_out",
                                "inference_mode", "init_lora_weights", "layers_pattern",
                                "layers_to_transform", "lora_alpha", "lora_dropout",
                                "modules_to_save", "peft_type", "r", "rank_pattern", "revision",
                                "target_modules", "task_type", "use_dora", "use_rslora"));
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_TRUE(j["lora_alpha"].is_number_integer());  // PEFT's field is an int
  EXPECT_EQ(j["lora_alpha"], 8);
  EXPECT_EQ(j["r"], 4);
  EXPECT_EQ(j["init_lora_weights"], true);
  EXPECT_EQ(j["bias"], "none");
  EXPECT_EQ(j["use_dora"], false);
  EXPECT_EQ(j["fan_in_fan_out"], false);
  EXPECT_EQ(j["inference_mode"], true);
  EXPECT_TRUE(j["revision"].is_null());
  EXPECT_TRUE(j["modules_to_save"].is_null());
  EXPECT_TRUE(j["layers_to_transform"].is_null());
  EXPECT_TRUE(j["layers_pattern"].is_null());
  EXPECT_EQ(j["rank_pattern"], nlohmann::json({{"down_proj", 2}}));
  EXPECT_EQ(j["alpha_pattern"], nlohmann::json({{"v_proj", 4}}));
  EXPECT_EQ(j["target_modules"], nlohmann::json({"down_proj", "gate_proj", "k_proj", "o_proj",
                                                 "q_proj", "up_proj", "v_proj"}));
  // Two-space indent, as PEFT's json.dumps(indent=2, sort_keys=True).
  EXPECT_NE(text.find("\n  \"alpha_pattern\": {\n    \"v_proj\": 4\n  },"), std::string::npos)
      << text;
}

TEST(PeftAdapterTest, RoundTripKasaBf16) {
  const PeftAdapter a = SampleKasa();
  const std::string dir = TempDir("kasa");
  ASSERT_TRUE(WritePeftAdapter(dir, a, PeftWriteOptions{DType::kBF16}).ok());
  auto reader = SafetensorsReader::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status();
  const SafetensorsEntry* diag =
      reader->Find("base_model.model.model.layers.1.self_attn.v_proj.lora_diag");
  ASSERT_NE(diag, nullptr);
  EXPECT_EQ(diag->dtype, SafetensorsDType::kBF16);
  EXPECT_EQ(diag->shape, (Shape{2}));

  auto back = ReadPeftAdapter(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  // Values come back as f32 holding the bf16-rounded inputs.
  PeftAdapter rounded = a;
  for (auto& [module, w] : rounded.modules) {
    w.lora_a = w.lora_a.To(DType::kBF16).To(DType::kF32);
    w.lora_b = w.lora_b.To(DType::kBF16).To(DType::kF32);
    w.lora_diag = w.lora_diag.To(DType::kBF16).To(DType::kF32);
  }
  ExpectSameAdapter(*back, rounded);
  EXPECT_EQ(back->modules.begin()->second.lora_a.dtype(), DType::kF32);
  ASSERT_TRUE(back->config.kasa.has_value());
  EXPECT_EQ(back->config.kasa->beta, 1e-4);
  EXPECT_EQ(back->config.kasa->gamma, 1e-3);
  EXPECT_TRUE(back->config.use_rslora);

  const nlohmann::json j = nlohmann::json::parse(ReadText(dir + "/adapter_config.json"));
  EXPECT_EQ(j["kasa_config"], nlohmann::json({{"beta", 1e-4}, {"gamma", 1e-3}}));
  EXPECT_EQ(j["init_lora_weights"], true);
}

// What PEFT 0.21.2's save_pretrained wrote for LoraConfig(r=4, lora_alpha=8,
// target_modules=["q_proj", "v_proj"], kasa_config=KasaConfig()) (verbatim).
constexpr char kPeftKasaConfig[] = R"({
  "alora_invocation_tokens": null,
  "alpha_pattern": {},
  "arrow_config": null,
  "auto_mapping": null,
  "base_model_name_or_path": "/work/main/tests/testdata/llama/tiny_gqa_tied",
  "bias": "none",
  "corda_config": null,
  "ensure_weight_tying": false,
  "eva_config": null,
  "exclude_modules": null,
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "kasa_config": {
    "beta": 0.0001,
    "gamma": 0.001
  },
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 8,
  "lora_bias": false,
  "lora_dropout": 0.0,
  "lora_ga_config": null,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "monteclora_config": null,
  "peft_type": "LORA",
  "peft_version": "0.21.2",
  "qalora_group_size": 16,
  "r": 4,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "v_proj",
    "q_proj"
  ],
  "target_parameters": null,
  "task_type": "CAUSAL_LM",
  "trainable_token_indices": null,
  "use_bdlora": null,
  "use_dora": false,
  "use_qalora": false,
  "use_rslora": false,
  "velora_config": null
})";

TEST(PeftAdapterTest, ParsesPeftWrittenConfig) {
  auto c = ParsePeftAdapterConfig(kPeftKasaConfig, "peft/adapter_config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->r, 4);
  EXPECT_EQ(c->lora_alpha, 8);
  EXPECT_THAT(c->target_modules, ElementsAre("v_proj", "q_proj"));
  ASSERT_TRUE(c->kasa.has_value());
  EXPECT_EQ(c->kasa->beta, 1e-4);
  EXPECT_EQ(std::get<bool>(c->init_lora_weights), true);
  EXPECT_FALSE(c->use_rslora);
}

TEST(PeftAdapterTest, RegexTargetsAndPatterns) {
  PeftAdapterConfig c;
  c.r = 8;
  c.lora_alpha = 16;
  c.target_modules_regex = R"(.*\.(q|v)_proj)";
  c.rank_pattern = {{"layers.1.self_attn.q_proj", 2}, {"q_proj", 4}};
  c.alpha_pattern = {{R"(v_p.*)", 3}};
  EXPECT_EQ(*PeftTargetsModule(c, "model.layers.0.self_attn.q_proj"), true);
  EXPECT_EQ(*PeftTargetsModule(c, "model.layers.0.self_attn.k_proj"), false);
  // First matching key wins; keys match a dotted suffix of the name.
  EXPECT_EQ(*PeftModuleRank(c, "model.layers.1.self_attn.q_proj"), 2);
  EXPECT_EQ(*PeftModuleRank(c, "model.layers.11.self_attn.q_proj"), 4);
  EXPECT_EQ(*PeftModuleRank(c, "model.layers.0.self_attn.v_proj"), 8);
  EXPECT_EQ(*PeftModuleAlpha(c, "model.layers.0.self_attn.v_proj"), 3);
  EXPECT_DOUBLE_EQ(*PeftModuleScale(c, "model.layers.0.self_attn.v_proj"), 3.0 / 8);
  EXPECT_DOUBLE_EQ(*PeftModuleScale(c, "model.layers.0.self_attn.q_proj"), 16.0 / 4);
  c.use_rslora = true;
  EXPECT_DOUBLE_EQ(*PeftModuleScale(c, "model.layers.0.self_attn.q_proj"), 16.0 / 2);

  auto text = SerializePeftAdapterConfig(c);
  ASSERT_TRUE(text.ok()) << text.status();
  auto back = ParsePeftAdapterConfig(*text, "x");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->target_modules_regex, c.target_modules_regex);
  EXPECT_TRUE(back->target_modules.empty());
  EXPECT_EQ(back->rank_pattern, c.rank_pattern);  // file order kept
  EXPECT_EQ(back->alpha_pattern, c.alpha_pattern);

  c.target_modules_regex = "(q_proj";
  EXPECT_ERROR_MENTIONS(SerializePeftAdapterConfig(c).status(), "target_modules", "(q_proj",
                        "regular expression");
}

TEST(PeftAdapterTest, ConfigForMethods) {
  peft::AdapterOptions o;
  o.rank = 16;
  o.alpha = 32;
  o.dropout = 0.1;
  const auto init = [&](peft::Method m, int niter = 0) {
    o.method = m;
    o.pissa_niter = niter;
    auto c = PeftConfigForOptions(o, "HuggingFaceTB/SmolLM2-135M", {"q_proj", "v_proj"});
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->init_lora_weights : std::variant<bool, std::string>(false);
  };
  EXPECT_EQ(init(peft::Method::kLora), (std::variant<bool, std::string>(true)));
  EXPECT_EQ(init(peft::Method::kPissa), (std::variant<bool, std::string>("pissa")));
  EXPECT_EQ(init(peft::Method::kPissa, 4), (std::variant<bool, std::string>("pissa_niter_4")));
  EXPECT_EQ(init(peft::Method::kCordaIpm), (std::variant<bool, std::string>("corda")));
  EXPECT_EQ(init(peft::Method::kCordaKpm), (std::variant<bool, std::string>("corda")));
  EXPECT_EQ(init(peft::Method::kMilora), (std::variant<bool, std::string>(true)));
  EXPECT_EQ(init(peft::Method::kKasa), (std::variant<bool, std::string>(true)));

  o.method = peft::Method::kKasa;
  o.kasa_beta = 0.5;
  o.scaling = peft::Scaling::kRankStabilized;
  auto c = PeftConfigForOptions(o, "base", {"q_proj"});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->kasa.has_value());
  EXPECT_EQ(c->kasa->beta, 0.5);
  EXPECT_TRUE(c->use_rslora);
  EXPECT_EQ(c->r, 16);
  EXPECT_EQ(c->lora_alpha, 32);
  EXPECT_EQ(c->lora_dropout, 0.1);

  o.rank = 0;
  EXPECT_FALSE(PeftConfigForOptions(o, "base", {"q_proj"}).ok());
}

TEST(PeftAdapterTest, WriteRejectsInconsistentAdapters) {
  const std::string dir = TempDir("bad_write");
  {
    PeftAdapter a = SampleLora();
    a.modules["model.layers.0.self_attn.q_proj"].lora_a = testing::RandomNormal({3, 48}, DType::kF32, 1);
    EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, a),
                          "model.layers.0.self_attn.q_proj.lora_A.weight", "3 rows", "rank");
  }
  {
    PeftAdapter a = SampleLora();
    a.modules["model.layers.1.mlp.down_proj"].lora_b = testing::RandomNormal({48, 4}, DType::kF32, 1);
    EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, a), "model.layers.1.mlp.down_proj.lora_B.weight",
                          "4 columns", "is 2");
  }
  {
    PeftAdapter a = SampleKasa();
    a.modules.begin()->second.lora_diag = Tensor();
    EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, a), "lora_diag", "missing");
  }
  {
    PeftAdapter a = SampleLora();
    a.modules.begin()->second.lora_diag = testing::RandomNormal({4}, DType::kF32, 1);
    EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, a), "lora_diag", "no kasa_config");
  }
  {
    PeftAdapter a = SampleLora();
    a.config.target_modules = {"q_proj"};
    EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, a), "model.layers.0.mlp.down_proj",
                          "not selected by target_modules");
  }
  {
    PeftAdapter a = SampleLora();
    a.config.r = 0;
    EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, a), "'r'", ">= 1");
  }
  {
    PeftAdapter a = SampleLora();
    a.modules.begin()->second.lora_a = Tensor::Zeros({4, 48}, DType::kI32);
    EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, a), "lora_A.weight", "dtype i32");
  }
  EXPECT_ERROR_MENTIONS(WritePeftAdapter(dir, SampleLora(), PeftWriteOptions{DType::kF16}), "f16",
                        "f32 or bf16");
  EXPECT_FALSE(fs::exists(dir + "/adapter_config.json"));
}

// Writes a good adapter, then replaces one of its files.
class PeftAdapterReadErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("bad_read");
    ASSERT_TRUE(WritePeftAdapter(dir_, SampleLora()).ok());
  }
  void ReplaceConfig(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(ReadText(dir_ + "/adapter_config.json"));
    edit(j);
    ASSERT_TRUE(WriteFileAtomically(dir_ + "/adapter_config.json", j.dump(2)).ok());
  }
  void ReplaceTensors(const std::function<void(std::map<std::string, Tensor>&)>& edit) {
    std::map<std::string, Tensor> t;
    auto golden = testing::LoadGolden(dir_ + "/adapter_model.safetensors");
    ASSERT_TRUE(golden.ok()) << golden.status();
    t = *golden;
    edit(t);
    ASSERT_TRUE(WriteSafetensors(dir_ + "/adapter_model.safetensors", t, {{"format", "pt"}}).ok());
  }
  std::string dir_;
};

TEST_F(PeftAdapterReadErrorTest, MissingFiles) {
  EXPECT_EQ(ReadPeftAdapter(dir_ + "/nope").status().code(), absl::StatusCode::kNotFound);
  fs::remove(dir_ + "/adapter_model.safetensors");
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "adapter_model.safetensors", "not found");
  std::ofstream(dir_ + "/adapter_model.bin") << "pickle";
  EXPECT_EQ(ReadPeftAdapter(dir_).status().code(), absl::StatusCode::kUnimplemented);
}

TEST_F(PeftAdapterReadErrorTest, MissingKeys) {
  ReplaceConfig([](nlohmann::json& j) { j.erase("r"); });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "adapter_config.json", "'r'", "missing");
  ReplaceConfig([](nlohmann::json& j) {
    j["r"] = 4;
    j.erase("lora_alpha");
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "adapter_config.json", "'lora_alpha'");
  ReplaceConfig([](nlohmann::json& j) {
    j["lora_alpha"] = 8;
    j["target_modules"] = nullptr;
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "'target_modules'", "missing or null");
  ReplaceConfig([](nlohmann::json& j) {
    j["target_modules"] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    j.erase("peft_type");
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "'peft_type'", "missing");
}

TEST_F(PeftAdapterReadErrorTest, BadValues) {
  ReplaceConfig([](nlohmann::json& j) { j["r"] = "four"; });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "adapter_config.json", "'r'", "\"four\"",
                        "integer");
  ReplaceConfig([](nlohmann::json& j) { j["r"] = 8; });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "adapter_model.safetensors",
                        "lora_A.weight", "rank for this module is 8");
  ReplaceConfig([](nlohmann::json& j) {
    j["r"] = 4;
    j["peft_type"] = "ADALORA";
  });
  EXPECT_EQ(ReadPeftAdapter(dir_).status().code(), absl::StatusCode::kUnimplemented);
  ReplaceConfig([](nlohmann::json& j) {
    j["peft_type"] = "LORA";
    j["use_dora"] = true;
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "'use_dora'", "cannot load");
  ReplaceConfig([](nlohmann::json& j) {
    j["use_dora"] = false;
    j["modules_to_save"] = {"lm_head"};
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "'modules_to_save'", "lm_head");
  ReplaceConfig([](nlohmann::json& j) {
    j["modules_to_save"] = nullptr;
    j["bias"] = "all";
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "'bias'", "\"all\"");
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/adapter_config.json", "{not json").ok());
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "adapter_config.json", "not a JSON object");
}

TEST_F(PeftAdapterReadErrorTest, BadTensors) {
  const std::string q = "base_model.model.model.layers.0.self_attn.q_proj";
  const std::string qa = q + ".lora_A.weight", qb = q + ".lora_B.weight", qd = q + ".lora_diag";
  ReplaceTensors([&](std::map<std::string, Tensor>& t) { t.erase(q + ".lora_B.weight"); });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "adapter_model.safetensors",
                        qb.c_str(), "missing");
  ReplaceTensors([&](std::map<std::string, Tensor>& t) {
    t[q + ".lora_B.weight"] = Tensor::Zeros({48, 4}, DType::kI32);
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), qb.c_str(), "dtype I32");
  ReplaceTensors([&](std::map<std::string, Tensor>& t) {
    t[q + ".lora_B.weight"] = Tensor::Zeros({48, 4}, DType::kF32);
    t[q + ".lora_magnitude_vector"] = Tensor::Zeros({48}, DType::kF32);
  });
  EXPECT_EQ(ReadPeftAdapter(dir_).status().code(), absl::StatusCode::kUnimplemented);
  ReplaceTensors([&](std::map<std::string, Tensor>& t) {
    t.erase(q + ".lora_magnitude_vector");
    t[q + ".lora_diag"] = Tensor::Zeros({4}, DType::kF32);
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), qd.c_str(), "no kasa_config");
  ReplaceTensors([&](std::map<std::string, Tensor>& t) {
    t.erase(q + ".lora_diag");
    t["model.layers.0.self_attn.q_proj.lora_A.weight"] = Tensor::Zeros({4, 48}, DType::kF32);
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), "does not start with");
  ReplaceTensors([&](std::map<std::string, Tensor>& t) {
    t.erase("model.layers.0.self_attn.q_proj.lora_A.weight");
    t[q + ".lora_A.weight"] = Tensor::Zeros({4, 48, 1}, DType::kF32);
  });
  EXPECT_ERROR_MENTIONS(ReadPeftAdapter(dir_).status(), qa.c_str(), "[4, 48, 1]");
}

TEST(PeftAdapterTest, CheckAgainstModel) {
  auto model = LoadModelConfig(testing::RunfilePath("tests/testdata/llama/tiny_gqa_tied/config.json"));
  ASSERT_TRUE(model.ok()) << model.status();
  PeftAdapter a = SampleLora();
  EXPECT_TRUE(CheckPeftAdapterAgainstModel(a, *model, "sample").ok());
  a.modules["model.layers.0.self_attn.k_proj"].lora_b = testing::RandomNormal({48, 4}, DType::kF32, 3);
  EXPECT_ERROR_MENTIONS(CheckPeftAdapterAgainstModel(a, *model, "sample"),
                        "model.layers.0.self_attn.k_proj.lora_B.weight", "16 output features");
  a = SampleLora();
  a.modules["model.layers.1.mlp.down_proj"].lora_a = testing::RandomNormal({2, 48}, DType::kF32, 3);
  EXPECT_ERROR_MENTIONS(CheckPeftAdapterAgainstModel(a, *model, "sample"),
                        "down_proj.lora_A.weight", "80 input features");
  a = SampleLora();
  a.modules["model.layers.2.mlp.down_proj"] = a.modules["model.layers.1.mlp.down_proj"];
  EXPECT_ERROR_MENTIONS(CheckPeftAdapterAgainstModel(a, *model, "sample"),
                        "model.layers.2.mlp.down_proj", "not a projection of the 2-layer");
}

TEST(PeftAdapterTest, SigmatuneStateSideFile) {
  const std::string dir = TempDir("state");
  ASSERT_TRUE(WritePeftAdapter(dir, SampleKasa()).ok());
  EXPECT_EQ(ReadSigmatuneAdapterState(dir).status().code(), absl::StatusCode::kNotFound);
  SigmatuneAdapterState state;
  state.tensors["model.layers.0.self_attn.q_proj.kasa_tail_u"] =
      testing::RandomNormal({48, 2}, DType::kF32, 9);
  state.tensors["model.layers.0.self_attn.q_proj.a0"] = testing::RandomNormal({2, 48}, DType::kF64, 10);
  state.metadata["method"] = "kasa";
  ASSERT_TRUE(WriteSigmatuneAdapterState(dir, state).ok());
  auto back = ReadSigmatuneAdapterState(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->metadata.at("method"), "kasa");
  EXPECT_EQ(back->metadata.at("format"), "pt");
  ASSERT_EQ(back->tensors.size(), 2u);
  for (const auto& [name, t] : state.tensors) {
    EXPECT_EQ(back->tensors.at(name).dtype(), t.dtype());
    ExpectSameValues(back->tensors.at(name), t);
  }
  // The side file is invisible to the adapter reader, and the config holds no private keys.
  EXPECT_TRUE(ReadPeftAdapter(dir).ok());
  EXPECT_EQ(ReadText(dir + "/adapter_config.json").find("tail"), std::string::npos);
}

// With SIGMATUNE_PEFT_EXPORT_DIR set (bazel test --test_env=SIGMATUNE_PEFT_EXPORT_DIR=/abs/dir),
// writes the sample adapters for tests/testdata/llama/tiny_gqa_tied there for
// tools/peft_export_check.py.
TEST(PeftAdapterTest, ExportSamplesForPythonCheck) {
  const char* out = std::getenv("SIGMATUNE_PEFT_EXPORT_DIR");
  if (out == nullptr || *out == '\0') GTEST_SKIP() << "SIGMATUNE_PEFT_EXPORT_DIR not set";
  ASSERT_TRUE(WritePeftAdapter(std::string(out) + "/lora", SampleLora()).ok());
  ASSERT_TRUE(
      WritePeftAdapter(std::string(out) + "/kasa_bf16", SampleKasa(), PeftWriteOptions{DType::kBF16})
          .ok());
}

}  // namespace
}  // namespace sigmatune::formats
