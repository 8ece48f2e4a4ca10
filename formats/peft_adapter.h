// Hugging Face PEFT LoRA adapter directories (../shared/FORMATS.md §3): adapter_config.json +
// adapter_model.safetensors, as PeftModel.from_pretrained (PEFT 0.21), vLLM and transformers'
// load_adapter read them; plus sigmatune's own optional side file for state PEFT has no key for.
//
// Contract:
//  - Layout written (PEFT 0.21.2's save_pretrained, checked against it):
//      adapter_config.json  keys sorted, two-space indent: alpha_pattern, base_model_name_or_path,
//        bias "none", fan_in_fan_out false, inference_mode, init_lora_weights (true or a PEFT init
//        name), kasa_config ({"beta", "gamma"}; only for KaSA adapters, since PEFT releases before
//        KaSA reject unknown keys), layers_pattern null, layers_to_transform null, lora_alpha (an
//        integer when integral), lora_dropout, modules_to_save null, peft_type "LORA", r,
//        rank_pattern, revision null, target_modules (sorted unique list, or the regex string),
//        task_type, use_dora false, use_rslora.
//      adapter_model.safetensors  "base_model.model.<module>.lora_A.weight" [r_m, in],
//        ".lora_B.weight" [out, r_m] and, for KaSA, ".lora_diag" [r_m] (PEFT's KasaLinearVariant
//        parameter; adapter name stripped as PEFT does), metadata {"format": "pt"}, f32 or bf16.
//    <module> is the HF module path ("model.layers.0.self_attn.q_proj"); r_m / alpha_m are r /
//    lora_alpha unless a rank_pattern / alpha_pattern key matches the module (PEFT's
//    get_pattern_key: the first key K, in file order, with re.match(r"(.*\.)?(K)$", module)).
//  - Both files are written atomically (temporary file, fsync, rename; formats/atomic_file.h) into
//    `dir`, which is created (with parents) when missing; the weights first, then the config, so
//    a directory whose config is new has new weights. Nothing else in `dir` is touched (in
//    particular not sigmatune_adapter_state.safetensors: write or remove it yourself).
//  - Validation (write and read): r >= 1, finite lora_alpha, 0 <= lora_dropout < 1, target_modules
//    a non-empty list of non-empty names or a compilable regex, pattern values valid, every module
//    selected by target_modules (PEFT's matching: equal / ends with "." + name, or re.fullmatch),
//    A rank 2 with r_m rows, B rank 2 with r_m columns, lora_diag [r_m] exactly when kasa_config is
//    set, CPU tensors of a floating dtype. Errors are InvalidArgument naming the file, the key or
//    tensor and the expected value; features sigmatune does not load (DoRA, bias != "none",
//    fan_in_fan_out, modules_to_save, layers_to_transform/layers_pattern, exclude_modules,
//    layer_replication, lora_bias, embedding LoRA, magnitude vectors, peft_type other than LORA,
//    pickled adapter_model.bin) are Unimplemented naming the key.
//  - Read returns the tensors as contiguous f32 CPU copies (F32, BF16 and F16 are accepted on
//    disk; any other dtype is an error naming the tensor). Unknown config keys are ignored (PEFT
//    writes many that do not change the math); unknown tensors are not: every tensor must be the
//    A, B (or KaSA diag) of a module target_modules selects, else an error names it.
//  - Private state (KaSA's discarded tail, the initial A0/B0 for §11 export, ...) never goes into
//    adapter_config.json; use Write/ReadSigmatuneAdapterState ("sigmatune_adapter_state
//    .safetensors" next to the adapter: arbitrary named tensors plus string metadata).
#ifndef SIGMATUNE_FORMATS_PEFT_ADAPTER_H_
#define SIGMATUNE_FORMATS_PEFT_ADAPTER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "formats/hf_config.h"
#include "kernels/base/tensor.h"
#include "kernels/peft/method.h"

namespace sigmatune::formats {

inline constexpr char kPeftConfigFile[] = "adapter_config.json";
inline constexpr char kPeftWeightsFile[] = "adapter_model.safetensors";
inline constexpr char kSigmatuneAdapterStateFile[] = "sigmatune_adapter_state.safetensors";

// PEFT's KasaConfig (kasa_config in adapter_config.json).
struct PeftKasaConfig {
  double beta = 1e-4;
  double gamma = 1e-3;
};

// The adapter_config.json settings sigmatune reads and writes.
struct PeftAdapterConfig {
  std::string base_model_name_or_path;  // written as null when empty
  std::string task_type = "CAUSAL_LM";  // written as null when empty
  int64_t r = 8;
  double lora_alpha = 8.0;
  double lora_dropout = 0.0;
  // The list form of target_modules (written sorted and deduplicated), or, when
  // target_modules_regex is set, the single-string form (then `target_modules` must be empty).
  std::vector<std::string> target_modules;
  std::optional<std::string> target_modules_regex;
  bool use_rslora = false;
  // true/false or a PEFT init name: "pissa", "pissa_niter_<k>", "corda", "olora", "gaussian", ...
  std::variant<bool, std::string> init_lora_weights = true;
  std::optional<PeftKasaConfig> kasa;  // KaSA adapters (then every module has lora_diag)
  // {pattern: value}, in file order (PEFT uses the first matching key).
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  bool inference_mode = true;
};

// The factors of one adapted module, CPU tensors: A [r_m, in], B [out, r_m], diag [r_m] (KaSA
// only; undefined otherwise). ΔW = s_m · B diag(d) A.
struct PeftModuleWeights {
  Tensor lora_a;
  Tensor lora_b;
  Tensor lora_diag;
};

struct PeftAdapter {
  PeftAdapterConfig config;
  std::map<std::string, PeftModuleWeights> modules;  // HF module path -> factors
};

// The adapter_config.json of an adapter trained with `options` (METHODS.md method -> PEFT):
//   lora -> init_lora_weights true;  pissa -> "pissa" (full SVD) or "pissa_niter_<k>";
//   corda_ipm / corda_kpm -> "corda" (PEFT re-runs CorDA on load and needs `preprocess_corda`;
//     for a base-independent file export the converted plain LoRA of METHODS.md §11 instead);
//   milora -> true (PEFT 0.21 has no MiLoRA init; the adapter is only valid on sigmatune's
//     residual base, so export the §11 conversion for other consumers);
//   kasa -> true plus kasa_config {beta, gamma} (what PEFT 0.21.2 writes; PEFT truncates the base
//     on load, as in training).
// rsLoRA -> use_rslora. InvalidArgument from options.Validate().
absl::StatusOr<PeftAdapterConfig> PeftConfigForOptions(const peft::AdapterOptions& options,
                                                       std::string base_model_name_or_path,
                                                       std::vector<std::string> target_modules);

// r_m, alpha_m and s_m of `module` (patterns applied; s = alpha/r or alpha/sqrt(r) with rsLoRA).
// InvalidArgument for a pattern that does not compile.
absl::StatusOr<int64_t> PeftModuleRank(const PeftAdapterConfig& config, const std::string& module);
absl::StatusOr<double> PeftModuleAlpha(const PeftAdapterConfig& config, const std::string& module);
absl::StatusOr<double> PeftModuleScale(const PeftAdapterConfig& config, const std::string& module);
// Whether target_modules selects `module` (PEFT's check_target_module_exists).
absl::StatusOr<bool> PeftTargetsModule(const PeftAdapterConfig& config, const std::string& module);

// adapter_config.json text / its parse. `source` names the file in errors.
absl::StatusOr<std::string> SerializePeftAdapterConfig(const PeftAdapterConfig& config);
absl::StatusOr<PeftAdapterConfig> ParsePeftAdapterConfig(absl::string_view json_text,
                                                         absl::string_view source);

// Checks everything the contract lists; `source` prefixes the messages.
absl::Status ValidatePeftAdapter(const PeftAdapter& adapter, absl::string_view source);
// Checks the adapter against a model: every module is one of the model's seven projections
// ("model.layers.<i>.self_attn.{q,k,v,o}_proj", "model.layers.<i>.mlp.{gate,up,down}_proj") with
// A's columns = its in features and B's rows = its out features.
absl::Status CheckPeftAdapterAgainstModel(const PeftAdapter& adapter, const ModelConfig& model,
                                          absl::string_view source);

struct PeftWriteOptions {
  DType dtype = DType::kF32;  // kF32 or kBF16 (round to nearest even)
};

// Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors (see the contract).
absl::Status WritePeftAdapter(const std::string& dir, const PeftAdapter& adapter,
                              const PeftWriteOptions& options = {});
// Reads and validates both files of `dir`. NotFound naming the path when a file is missing.
absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& dir);

// sigmatune's side file: arbitrary named CPU tensors (kept in their dtype) and string metadata
// ("format": "pt" is added). Written atomically into `dir` (created when missing).
struct SigmatuneAdapterState {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};
absl::Status WriteSigmatuneAdapterState(const std::string& dir, const SigmatuneAdapterState& state);
// NotFound naming the path when `dir` has no state file; tensors are contiguous CPU copies.
absl::StatusOr<SigmatuneAdapterState> ReadSigmatuneAdapterState(const std::string& dir);

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_PEFT_ADAPTER_H_
