// The export step (worker/train/export.h) on both tiny checkpoints, for LoRA, PiSSA, CorDA IPM
// and KaSA: every linear of every layer is initialised (rank 4, alpha 8; CorDA from a calibration
// batch of random sequences), "trained" by perturbing A, B (and d) with noise of 10% of their norm
// (B, zero at init for LoRA/KaSA, gets a random B whose update s B diag(d) A is 10% of ||W||), and
// exported in all three forms. In f32 on the CPU the logits of a packed batch of two sequences
// agree (relative Frobenius error <= 1e-5) between
//   (a) the trained model: residual weights + LowRankAdapters with the trained factors,
//   (b) merged/ read back with LoadLlamaFromHfDirectory,
//   (c) the original checkpoint + adapter_lora/ read back with ReadPeftAdapter,
//   (d) residual_base/ (the original for LoRA) + adapter/ read back,
// and the adapters visibly change the logits. Plus the state file's contents and the errors.
//
// With SIGMATUNE_EXPORT_CHECK_DIR=/abs/dir (bazel test --test_env=...), every export goes to
// <dir>/<model>/<method>/ together with logits.safetensors (input_ids i32, cu_seqlens i32, logits
// f32 = (b), logits_trained f32 = (a)) for tools/peft_roundtrip.py.
#include "worker/train/export.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formats/hf_config.h"
#include "formats/peft_adapter.h"
#include "formats/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/base/rng.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "kernels/peft/adapter.h"
#include "kernels/peft/covariance_collector.h"
#include "kernels/peft/init.h"
#include "kernels/peft/method.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/golden.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"
#include "worker/model/llama_loader.h"

namespace sigmatune {
namespace {

using model::LinearKind;
using peft::Method;
using testing::RelativeError;
using train::ExportInputs;
using train::ExportOptions;
using train::TrainedLinear;

constexpr int64_t kRank = 4;
constexpr double kAlpha = 8.0;
constexpr double kNoise = 0.1;  // "training": perturbations of 10% of a factor's norm
constexpr double kTolerance = 1e-5;

std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/export_test_", name);
}

double Norm(const Tensor& t) { return testing::FrobeniusNorm(t); }

// t + noise * ||t|| * N / ||N|| (f32 CPU copy).
Tensor Perturb(const Tensor& t, uint64_t seed) {
  const Tensor n = testing::RandomNormal(t.shape(), DType::kF32, seed);
  const double c = kNoise * Norm(t) / Norm(n);
  Tensor out = t.Contiguous();
  for (int64_t i = 0; i < out.numel(); ++i) out.data<float>()[i] += static_cast<float>(c * n.data<float>()[i]);
  return out;
}

// ||s B diag(d) A||_F in double (d may be undefined).
double DeltaNorm(const Tensor& a, const Tensor& b, const Tensor& d, double s) {
  const int64_t r = a.dim(0), n = a.dim(1), m = b.dim(0);
  double sum = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double v = 0.0;
      for (int64_t k = 0; k < r; ++k) {
        v += b.data<float>()[i * r + k] * (d.defined() ? d.data<float>()[k] : 1.0) * a.data<float>()[k * n + j];
      }
      sum += v * v;
    }
  }
  return std::abs(s) * std::sqrt(sum);
}

std::vector<int32_t> RandomSequence(int64_t length, int64_t vocab, Rng& rng) {
  std::vector<int32_t> ids(length);
  for (auto& id : ids) id = static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(vocab));
  return ids;
}

class ExportTest : public ::testing::TestWithParam<std::tuple<std::string, Method>> {
 protected:
  void SetUp() override {
    model_name_ = std::get<0>(GetParam());
    method_ = std::get<1>(GetParam());
    base_dir_ = testing::RunfilePath("tests/testdata/llama/" + model_name_);
    auto loaded = LoadLlamaFromHfDirectory(base_dir_, backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    original_ = std::move(*loaded);
    auto hf = formats::LoadModelConfig(base_dir_ + "/config.json");
    ASSERT_TRUE(hf.ok()) << hf.status();
    export_options_.max_position_embeddings = hf->max_position_embeddings;
    export_options_.bos_token_id = hf->bos_token_id;
    export_options_.eos_token_ids = hf->eos_token_ids;
    export_options_.pad_token_id = hf->pad_token_id;
    export_options_.base_model_name_or_path = "tests/testdata/llama/" + model_name_;

    Rng rng(42);
    const int64_t vocab = original_.config.vocab_size;
    auto batch = model::PackCausalLmBatch(backend_, {RandomSequence(9, vocab, rng), RandomSequence(6, vocab, rng)});
    ASSERT_TRUE(batch.ok()) << batch.status();
    batch_ = std::move(*batch);
  }

  // The damped CorDA covariance of every input site, from a packed batch of random sequences.
  std::map<peft::SiteKey, Tensor> Calibrate(const std::vector<std::pair<int64_t, LinearKind>>& linears) {
    auto m = model::LlamaModel::Create(original_.config, original_.weights, &backend_);
    EXPECT_TRUE(m.ok()) << m.status();
    Rng rng(7);
    std::vector<std::vector<int32_t>> samples;
    for (int i = 0; i < 4; ++i) samples.push_back(RandomSequence(16, original_.config.vocab_size, rng));
    auto batch = model::PackCausalLmBatch(backend_, samples);
    EXPECT_TRUE(batch.ok()) << batch.status();
    auto collector = peft::CovarianceCollector::Create(&backend_, original_.config, peft::SitesOf(linears),
                                                       peft::Accumulation::kF32);
    EXPECT_TRUE(collector.ok()) << collector.status();
    EXPECT_TRUE((*collector)->BeginBatch(batch->cu_seqlens).ok());
    const absl::Status observed = (*m)->Observe(*batch, collector->get());
    EXPECT_TRUE(observed.ok()) << observed;
    auto set = (*collector)->Finish();
    EXPECT_TRUE(set.ok()) << set.status();
    std::map<peft::SiteKey, Tensor> damped;
    for (const auto& [key, c] : set->covariance) {
      auto d = peft::DampCovariance(backend_, peft::SiteTensorName(key), c);
      EXPECT_TRUE(d.ok()) << d.status();
      damped[key] = d->c_d;
    }
    return damped;
  }

  // Initialises and "trains" every linear of every layer.
  ExportInputs Train() {
    ExportInputs in;
    in.config = original_.config;
    in.weights = original_.weights;
    in.options.method = method_;
    in.options.rank = kRank;
    in.options.alpha = kAlpha;
    std::vector<std::pair<int64_t, LinearKind>> linears;
    for (int64_t l = 0; l < in.config.num_layers; ++l) {
      for (LinearKind kind : model::kAllLinears) linears.push_back({l, kind});
    }
    std::map<peft::SiteKey, Tensor> damped;
    if (peft::NeedsCovariance(method_)) damped = Calibrate(linears);
    uint64_t seed = 1000;
    for (const auto& [layer, kind] : linears) {
      const std::string name = model::LinearName(layer, kind);
      const Tensor& w = original_.weights.layers[layer].linear(kind);
      const Tensor* cov = peft::NeedsCovariance(method_) ? &damped.at({layer, model::InputSiteOf(kind)}) : nullptr;
      auto init = peft::InitializeAdapter(backend_, in.options, name, w, cov, ++seed);
      EXPECT_TRUE(init.ok()) << init.status();
      TrainedLinear t;
      t.target = {layer, kind};
      t.init = *init;
      t.a = Perturb(init->a, ++seed);
      if (init->d.defined()) t.d = Perturb(init->d, ++seed);
      if (Norm(init->b) > 0.0) {
        t.b = Perturb(init->b, ++seed);
      } else {  // LoRA / KaSA start at B = 0: a random B whose update is 10% of ||W||
        t.b = testing::RandomNormal(init->b.shape(), DType::kF32, ++seed);
        const float c = static_cast<float>(kNoise * Norm(w) / DeltaNorm(t.a, t.b, t.d, init->scale));
        for (int64_t i = 0; i < t.b.numel(); ++i) t.b.data<float>()[i] *= c;
      }
      in.linears.push_back(std::move(t));
    }
    return in;
  }

  // Logits of `weights` with one LowRankAdapter per module of `adapter` (from a PEFT file), or
  // none when `adapter` is null.
  Tensor Logits(const model::LlamaConfig& config, const model::LlamaWeights& weights,
                const formats::PeftAdapter* adapter) {
    auto m = model::LlamaModel::Create(config, weights, &backend_);
    EXPECT_TRUE(m.ok()) << m.status();
    std::vector<std::unique_ptr<peft::LowRankAdapter>> adapters;
    if (adapter != nullptr) {
      std::map<std::string, std::pair<int64_t, LinearKind>> by_name;
      for (int64_t l = 0; l < config.num_layers; ++l) {
        for (LinearKind kind : model::kAllLinears) by_name[model::LinearName(l, kind)] = {l, kind};
      }
      for (const auto& [module, w] : adapter->modules) {
        auto scale = formats::PeftModuleScale(adapter->config, module);
        EXPECT_TRUE(scale.ok()) << scale.status();
        auto a = peft::LowRankAdapter::Create(&backend_, w.lora_a, w.lora_b, w.lora_diag, *scale, 0.0);
        EXPECT_TRUE(a.ok()) << module << ": " << a.status();
        const auto& [layer, kind] = by_name.at(module);
        (*m)->SetAdapter(layer, kind, a->get());
        adapters.push_back(std::move(*a));
      }
    }
    auto logits = (*m)->Logits(batch_);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return *logits;
  }

  // (a): the residual weights + adapters with the trained factors.
  Tensor TrainedLogits(const ExportInputs& in) {
    model::LlamaWeights residual = in.weights;
    formats::PeftAdapter adapter;
    adapter.config.r = kRank;
    adapter.config.lora_alpha = kAlpha;
    for (const TrainedLinear& t : in.linears) {
      model::LayerWeights& lw = residual.layers[t.target.layer];
      Tensor* slot[] = {&lw.q, &lw.k, &lw.v, &lw.o, &lw.gate, &lw.up, &lw.down};
      *slot[static_cast<int>(t.target.kind)] = t.init.w_res;
      adapter.modules[t.target.name()] = {t.a, t.b, t.d};
    }
    return Logits(in.config, residual, &adapter);
  }

  model::CpuBackend backend_;
  std::string model_name_;
  Method method_ = Method::kLora;
  std::string base_dir_;
  LoadedLlama original_;
  ExportOptions export_options_;
  model::Batch batch_;
};

TEST_P(ExportTest, AllFormsGiveTheTrainedModel) {
  const ExportInputs in = Train();
  const std::string method_name(peft::MethodName(method_));
  const char* check_dir = std::getenv("SIGMATUNE_EXPORT_CHECK_DIR");
  const bool for_python = check_dir != nullptr && *check_dir != '\0';
  const std::string out = for_python ? absl::StrCat(check_dir, "/", model_name_, "/", method_name)
                                     : TempDir(model_name_ + "_" + method_name);
  auto paths = train::ExportAll(in, export_options_, out);
  ASSERT_TRUE(paths.ok()) << paths.status();
  EXPECT_EQ(paths->residual_base.empty(), !peft::ChangesBase(method_));

  const Tensor trained = TrainedLogits(in);
  const Tensor base_logits = Logits(original_.config, original_.weights, nullptr);
  const double adapter_effect = RelativeError(base_logits, trained);
  EXPECT_GT(adapter_effect, 1e-2) << "the trained adapters should visibly change the logits";

  // (b) merged/.
  auto merged = LoadLlamaFromHfDirectory(paths->merged, backend_);
  ASSERT_TRUE(merged.ok()) << merged.status();
  const Tensor merged_logits = Logits(merged->config, merged->weights, nullptr);
  const double err_merged = RelativeError(merged_logits, trained);
  EXPECT_LE(err_merged, kTolerance);

  // (c) the original base + adapter_lora/.
  auto lora = formats::ReadPeftAdapter(paths->adapter_lora);
  ASSERT_TRUE(lora.ok()) << lora.status();
  const bool doubled = method_ != Method::kLora;
  EXPECT_EQ(lora->config.r, doubled ? 2 * kRank : kRank);
  EXPECT_EQ(lora->config.lora_alpha, doubled ? 2 * kAlpha : kAlpha);
  EXPECT_EQ(std::get<bool>(lora->config.init_lora_weights), true);
  EXPECT_FALSE(lora->config.kasa.has_value());
  EXPECT_EQ(lora->modules.size(), in.linears.size());
  for (const auto& [module, w] : lora->modules) EXPECT_FALSE(w.lora_diag.defined()) << module;
  const Tensor lora_logits = Logits(original_.config, original_.weights, &*lora);
  const double err_lora = RelativeError(lora_logits, trained);
  EXPECT_LE(err_lora, kTolerance);

  // (d) residual_base/ (the original for LoRA) + adapter/.
  auto native = formats::ReadPeftAdapter(paths->adapter);
  ASSERT_TRUE(native.ok()) << native.status();
  EXPECT_EQ(native->config.r, kRank);
  EXPECT_EQ(native->config.lora_alpha, kAlpha);
  EXPECT_EQ(std::get<bool>(native->config.init_lora_weights), true);
  EXPECT_EQ(native->config.kasa.has_value(), method_ == Method::kKasa);
  LoadedLlama residual = original_;
  if (peft::ChangesBase(method_)) {
    auto r = LoadLlamaFromHfDirectory(paths->residual_base, backend_);
    ASSERT_TRUE(r.ok()) << r.status();
    residual = std::move(*r);
  }
  const Tensor native_logits = Logits(residual.config, residual.weights, &*native);
  const double err_native = RelativeError(native_logits, trained);
  EXPECT_LE(err_native, kTolerance);

  // The state file: the initial factors / KaSA tail, bit for bit.
  auto state = formats::ReadSigmatuneAdapterState(paths->adapter);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->metadata.at("method"), method_name);
  EXPECT_EQ(state->metadata.at("base"), peft::ChangesBase(method_) ? "residual_base" : "original");
  const size_t per_module = method_ == Method::kLora ? 0 : method_ == Method::kKasa ? 3 : 2;
  EXPECT_EQ(state->tensors.size(), per_module * in.linears.size());
  for (const TrainedLinear& t : in.linears) {
    const std::string module = t.target.name();
    if (method_ == Method::kPissa || method_ == Method::kCordaIpm) {
      EXPECT_EQ(RelativeError(state->tensors.at(module + ".lora_A0"), t.init.a), 0.0) << module;
      EXPECT_EQ(RelativeError(state->tensors.at(module + ".lora_B0"), t.init.b), 0.0) << module;
    } else if (method_ == Method::kKasa) {
      EXPECT_EQ(RelativeError(state->tensors.at(module + ".kasa_tail_u"), t.init.tail_u), 0.0) << module;
      EXPECT_EQ(RelativeError(state->tensors.at(module + ".kasa_tail_s"), t.init.tail_s), 0.0) << module;
      EXPECT_EQ(RelativeError(state->tensors.at(module + ".kasa_tail_vt"), t.init.tail_vt), 0.0) << module;
    }
  }
  std::printf("%s %s: adapter effect %.3g; relative logit error vs trained: merged %.2e, original+adapter_lora "
              "%.2e, %s+adapter %.2e\n",
              model_name_.c_str(), method_name.c_str(), adapter_effect, err_merged, err_lora,
              peft::ChangesBase(method_) ? "residual_base" : "original", err_native);

  if (for_python) {
    std::map<std::string, Tensor> tensors = {{"input_ids", batch_.input_ids},
                                             {"cu_seqlens", batch_.cu_seqlens},
                                             {"logits", merged_logits},
                                             {"logits_trained", trained}};
    const absl::Status written = formats::WriteSafetensors(
        out + "/logits.safetensors", tensors,
        {{"format", "pt"},
         {"model", model_name_},
         {"method", method_name},
         {"base", "tests/testdata/llama/" + model_name_}});
    ASSERT_TRUE(written.ok()) << written;
  }
}

INSTANTIATE_TEST_SUITE_P(
    TinyModels, ExportTest,
    ::testing::Combine(::testing::Values("tiny_gqa_tied", "tiny_mha_llama3"),
                       ::testing::Values(Method::kLora, Method::kPissa, Method::kCordaIpm, Method::kKasa)),
    [](const ::testing::TestParamInfo<ExportTest::ParamType>& info) {
      return absl::StrCat(std::get<0>(info.param), "_", peft::MethodName(std::get<1>(info.param)));
    });

// Errors name the module and what to pass; nothing is written before validation passes.
class ExportErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loaded = LoadLlamaFromHfDirectory(testing::RunfilePath("tests/testdata/llama/tiny_gqa_tied"), backend_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    in_.config = loaded->config;
    in_.weights = loaded->weights;
    in_.options.method = Method::kPissa;
    in_.options.rank = 2;
    in_.options.alpha = 4.0;
    options_.max_position_embeddings = 64;
    for (int64_t layer : {0, 1}) {
      for (LinearKind kind : {LinearKind::kQ, LinearKind::kDown}) {
        const Tensor& w = in_.weights.layers[layer].linear(kind);
        auto init = peft::InitializeAdapter(backend_, in_.options, model::LinearName(layer, kind), w, nullptr, 3);
        ASSERT_TRUE(init.ok()) << init.status();
        TrainedLinear t;
        t.target = {layer, kind};
        t.init = *init;
        t.a = init->a;
        t.b = init->b;
        in_.linears.push_back(t);
      }
    }
    ASSERT_TRUE(train::ValidateExportInputs(in_, options_).ok());
  }

  model::CpuBackend backend_;
  ExportInputs in_;
  ExportOptions options_;
};

TEST_F(ExportErrorsTest, RejectsBadInputsNamingTheModule) {
  const std::string dir = TempDir("errors");
  ExportInputs in = in_;
  in.linears.clear();
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "adapter set is empty");

  in = in_;
  in.linears[1].init.w_res = Tensor();
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "model.layers.0.mlp.down_proj", "init.w_res",
                        "missing", "InitializeAdapter");

  in = in_;
  in.linears[2].init.a = Tensor();
  EXPECT_ERROR_MENTIONS(train::ExportPlainLora(in, options_, dir), "model.layers.1.self_attn.q_proj",
                        "init.a (A0)", "missing");

  in = in_;
  in.linears[0].b = testing::RandomNormal({48, 3}, DType::kF32, 1);
  EXPECT_ERROR_MENTIONS(train::ExportMerged(in, options_, dir), "model.layers.0.self_attn.q_proj",
                        "trained lora_B", "[48, 2]");

  in = in_;
  in.linears[3].a = testing::RandomNormal({2, 48}, DType::kF32, 1);  // down_proj reads 80 features
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "model.layers.1.mlp.down_proj",
                        "trained lora_A", "[2, 80]");

  in = in_;
  in.linears[3].target = in.linears[0].target;
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "model.layers.0.self_attn.q_proj",
                        "listed twice");

  in = in_;
  in.linears[0].target.layer = 5;
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "model.layers.5", "2-layer");

  in = in_;
  in.linears[0].d = testing::RandomNormal({2}, DType::kF32, 1);
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "q_proj", "only KaSA");

  in = in_;
  in.options.alpha = 8.0;  // the inits were made with alpha 4
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "init.scale");

  in = in_;
  Tensor b = in.linears[2].b.Contiguous();
  b.data<float>()[5] = NAN;
  in.linears[2].b = b;
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "model.layers.1.self_attn.q_proj",
                        "NaN/Inf");

  in = in_;
  in.options.method = Method::kKasa;  // KaSA needs d and the tail
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "KaSA diagonal d", "missing");

  in = in_;
  in.weights.layers[1].post_norm = in.weights.layers[1].post_norm.To(DType::kF64);
  EXPECT_ERROR_MENTIONS(train::ExportAll(in, options_, dir).status(), "mix dtypes",
                        "model.layers.1.post_attention_layernorm.weight");

  ExportOptions no_context = options_;
  no_context.max_position_embeddings = 0;
  EXPECT_ERROR_MENTIONS(train::ExportAll(in_, no_context, dir).status(), "max_position_embeddings");

  EXPECT_ERROR_MENTIONS(train::ExportNativeAdapter(in_, options_, dir + "/adapter", ""), "residual_base");

  // Nothing was written by any of the failures above.
  EXPECT_FALSE(formats::ReadPeftAdapter(dir + "/adapter").ok());
  EXPECT_FALSE(formats::ReadPeftAdapter(dir + "/adapter_lora").ok());
}

TEST_F(ExportErrorsTest, LoraWritesNoResidualBase) {
  ExportInputs in = in_;
  in.options.method = Method::kLora;
  for (TrainedLinear& t : in.linears) {
    const Tensor& w = in.weights.layers[t.target.layer].linear(t.target.kind);
    auto init = peft::InitializeAdapter(backend_, in.options, t.target.name(), w, nullptr, 5);
    ASSERT_TRUE(init.ok()) << init.status();
    t.init = *init;
    t.a = init->a;
    t.b = testing::RandomNormal(init->b.shape(), DType::kF32, 6);
  }
  const std::string dir = TempDir("lora_only");
  auto paths = train::ExportAll(in, options_, dir);
  ASSERT_TRUE(paths.ok()) << paths.status();
  EXPECT_TRUE(paths->residual_base.empty());
  EXPECT_FALSE(formats::LoadModelConfig(dir + "/residual_base/config.json").ok());
  EXPECT_EQ(formats::ReadPeftAdapter(paths->adapter_lora)->config.r, 2);
  EXPECT_ERROR_MENTIONS(train::ExportNativeAdapter(in, options_, dir + "/adapter", dir + "/rb"), "keeps the original");
  // q_proj and down_proj are adapted in every layer: target_modules holds their suffixes.
  auto lora = formats::ReadPeftAdapter(paths->adapter);
  ASSERT_TRUE(lora.ok()) << lora.status();
  EXPECT_EQ(lora->config.target_modules, (std::vector<std::string>{"down_proj", "q_proj"}));
}

}  // namespace
}  // namespace sigmatune
