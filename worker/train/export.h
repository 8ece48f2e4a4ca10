// The export step of a fine-tuning job: a trained sigmatune adapter written in the three forms a
// user may want (../shared/METHODS.md §11, ../shared/FORMATS.md §3, Trip-wire 5).
//
//   <out>/adapter/        the native PEFT adapter: trained lora_A, lora_B (and KaSA's lora_diag),
//                         adapter_config.json from formats::PeftConfigForOptions (rank r, alpha),
//                         plus sigmatune_adapter_state.safetensors (what sigmatune needs to resume
//                         or convert; see "State file" below).
//   <out>/residual_base/  only for methods that change the base (peft::ChangesBase: PiSSA, MiLoRA,
//                         CorDA, KaSA): the HF checkpoint of the residual model, i.e. the original
//                         weights with every adapted linear replaced by its W_res. The native
//                         adapter applies to this base: W_res + s B diag(d) A.
//   <out>/adapter_lora/   the plain LoRA on the ORIGINAL base (peft::ConvertToPlainLora): rank 2r,
//                         lora_alpha 2 alpha (rsLoRA: sqrt(2) alpha) so that the scale is
//                         unchanged; init_lora_weights true, no extra tensors (no lora_diag, no
//                         kasa_config), so PEFT, vLLM and llama.cpp load it on the untouched base.
//                         For LoRA it is the trained adapter itself (rank r).
//   <out>/merged/         the full model with the adapter folded in: W_res + s B diag(d) A for the
//                         adapted linears, the original weights elsewhere (HF checkpoint).
//
// init_lora_weights of the native adapter (checked against PEFT 0.21.2 by tools/peft_roundtrip.py,
// see docs/peft-roundtrip.md): PeftModel.from_pretrained(base, adapter) builds every LoraLayer
// through LoraLayer.update_layer, which RUNS the init named by init_lora_weights against the base
// it is given before the saved tensors are loaded over lora_A/lora_B:
//   - "pissa" re-runs the SVD and subtracts its top-r part from the base weight. On our residual
//     base that removes a second rank-r slice (W_res - s B1 A1: wrong weights, no error; measured
//     relative logit error ~1.1); it is only right on the ORIGINAL base, and then only up to
//     PEFT's own f32 SVD (measured ~1.5e-5; "pissa_niter_k" is a randomized SVD, not even
//     reproducible).
//   - "corda" raises ValueError ("`eigens` attribute not found for layer, please run
//     `preprocess_corda` first") unless the caller re-ran preprocess_corda on the original model
//     with the original calibration data.
// PEFT's own PiSSA example does the same as we do when it saves an adapter for a saved residual
// model (examples/pissa_finetuning/pissa_finetuning.py, save_for_reuse: init_lora_weights is set
// to True before save_pretrained, next to the unloaded residual model). So the native adapter is always
// written with init_lora_weights = true (PEFT then draws a throw-away Kaiming A and a zero B, both
// overwritten by the saved tensors, and leaves the base alone); which base it belongs to is
// recorded in the state file ("base": "residual_base" | "original") and in base_model_name_or_path
// (ExportOptions::residual_base_name_or_path for the base-changing methods). MiLoRA has no PEFT
// init and gets true anyway. KaSA keeps kasa_config (PEFT needs it for lora_diag and the
// B diag(d) A forward); PEFT truncates the r smallest singular triplets of whatever base it is
// given on load: on residual_base that drops only rounding-level singular values (W_res has rank
// k - r), and on the original base it reproduces W_res with PEFT's own SVD, so the KaSA native
// adapter loads on either (PEFT refuses KaSA with r >= min(m, n); use adapter_lora then).
//
// State file (adapter/sigmatune_adapter_state.safetensors, formats::WriteSigmatuneAdapterState):
//   metadata: "method" (peft::MethodName), "rank", "alpha", "scaling" ("standard" | "rslora"),
//     "scale" (s, %.17g), "base" ("residual_base" or "original": where adapter/ applies),
//     "peft_init" (the init PEFT would name: "pissa", "pissa_niter_<k>", "corda", "kasa", "lora",
//     "milora"; informational), "sigmatune_export" ("1").
//   tensors (the adapter's dtype): for PiSSA / MiLoRA / CorDA "<module>.lora_A0" [r, n] and
//     "<module>.lora_B0" [m, r] (the initial factors, W = W_res + s B0 A0); for KaSA
//     "<module>.kasa_tail_u" [m, r], "<module>.kasa_tail_s" [r], "<module>.kasa_tail_vt" [r, n]
//     (W = W_res + U_t diag(S_t) Vt_t); none for LoRA. <module> is the HF module path
//     ("model.layers.0.self_attn.q_proj").
//
// Contract:
//  - Inputs are CPU tensors (Download them from a GPU backend first; a device tensor is
//    FailedPrecondition naming it). The original weights share one dtype the HF writer takes (f32
//    on the CPU backend; bf16 works too, f16 only without merging); W_res has the dtype of the
//    weight it replaces. The adapter tensors (trained a, b, d and the init's a/b or tail) are f32
//    or f64, one dtype per linear; adapter files are written in f32. All arithmetic (conversion,
//    merge) runs on a CpuBackend in the adapter's dtype, the merge rounded once into the weight's
//    dtype.
//  - Every linear is checked before anything is written (ValidateExportInputs): options valid;
//    a non-empty set of distinct (layer, kind) with layer in [0, num_layers); a [r, n] with
//    r == options.rank and n the weight's in features, b [m, r], d [r] exactly for KaSA; finite
//    trained factors; init.w_res [m, n] in the weight's dtype; init.scale == AdapterScale(options)
//    (relative 1e-9); for PiSSA / MiLoRA / CorDA init.a [r, n] and init.b [m, r]; for KaSA
//    init.tail_u [m, r], tail_s [r], tail_vt [r, n]. Errors are InvalidArgument naming the module
//    ("export: model.layers.1.mlp.down_proj: ...") and what to pass instead.
//  - Files: each directory is created with its parents; every file is written atomically
//    (temporary file, fsync, rename) and each directory's config file last (adapter_config.json
//    after adapter_model.safetensors and the state file; config.json after model.safetensors), so
//    a directory whose config is present and new has new contents. Other files in the directories
//    are left alone. Write errors name the file.
//  - The exported forms agree (tests: worker/train/export_test.cc, tools/peft_roundtrip.py): on
//    the same input, residual_base + adapter == original + adapter_lora == merged == the trained
//    model, exactly in exact arithmetic and to f32 rounding in practice.
#ifndef SIGMATUNE_WORKER_TRAIN_EXPORT_H_
#define SIGMATUNE_WORKER_TRAIN_EXPORT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor.h"
#include "kernels/model/llama.h"
#include "kernels/peft/init.h"
#include "kernels/peft/method.h"
#include "kernels/peft/targets.h"

namespace sigmatune::train {

// One adapted linear after training.
struct TrainedLinear {
  peft::TargetModule target;  // (layer, kind)
  peft::AdapterInit init;     // what peft::InitializeAdapter returned for it
  Tensor a;                   // trained lora_A [r, n]
  Tensor b;                   // trained lora_B [m, r]
  Tensor d;                   // trained KaSA diagonal [r]; undefined for the other methods
};

// What a job hands to the export step.
struct ExportInputs {
  model::LlamaConfig config;
  model::LlamaWeights weights;  // the ORIGINAL (un-residualised) weights, on the CPU
  peft::AdapterOptions options;
  std::vector<TrainedLinear> linears;
};

// What the files say about the model.
struct ExportOptions {
  // config.json's max_position_embeddings (LlamaConfig has no context length): the original's.
  int64_t max_position_embeddings = 0;
  // Token ids copied into config.json (take them from the original config.json).
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
  // base_model_name_or_path of adapter_lora/ (and of adapter/ for LoRA): the original model's HF
  // id or path. Empty -> null.
  std::string base_model_name_or_path;
  // base_model_name_or_path of adapter/ for the base-changing methods: where residual_base/ will
  // be published. Empty -> null (the file is then only valid next to its residual_base/).
  std::string residual_base_name_or_path;
};

// The directories ExportAll wrote.
struct ExportPaths {
  std::string adapter;        // <out>/adapter
  std::string residual_base;  // <out>/residual_base; empty when the method keeps the base (LoRA)
  std::string adapter_lora;   // <out>/adapter_lora
  std::string merged;         // <out>/merged
};

inline constexpr char kAdapterDir[] = "adapter";
inline constexpr char kResidualBaseDir[] = "residual_base";
inline constexpr char kAdapterLoraDir[] = "adapter_lora";
inline constexpr char kMergedDir[] = "merged";

// Checks everything the contract lists (no file I/O).
absl::Status ValidateExportInputs(const ExportInputs& inputs, const ExportOptions& options);

// adapter_dir: the native adapter + state file. residual_base_dir: the residual checkpoint; it is
// required (non-empty) exactly when peft::ChangesBase(method), else must be empty.
absl::Status ExportNativeAdapter(const ExportInputs& inputs, const ExportOptions& options,
                                 const std::string& adapter_dir, const std::string& residual_base_dir);

// The plain LoRA on the original base into `dir`.
absl::Status ExportPlainLora(const ExportInputs& inputs, const ExportOptions& options, const std::string& dir);

// The merged model into `dir`.
absl::Status ExportMerged(const ExportInputs& inputs, const ExportOptions& options, const std::string& dir);

// All of the above under `out_dir` (residual_base, adapter, adapter_lora, merged, in that order;
// each form is complete before the next starts). Validates once before writing anything.
absl::StatusOr<ExportPaths> ExportAll(const ExportInputs& inputs, const ExportOptions& options,
                                      const std::string& out_dir);

}  // namespace sigmatune::train

#endif  // SIGMATUNE_WORKER_TRAIN_EXPORT_H_
