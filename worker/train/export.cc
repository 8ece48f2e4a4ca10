#include "worker/train/export.h"

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "formats/hf_config.h"
#include "formats/hf_model_writer.h"
#include "formats/peft_adapter.h"
#include "kernels/base/status_macros.h"
#include "kernels/model/backend.h"
#include "kernels/peft/merge.h"

namespace sigmatune::train {
namespace {

using model::LinearKind;
using peft::Method;

// Prefixes a status' message, keeping its code.
absl::Status Annotate(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

absl::Status Bad(const std::string& module, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("export: ", module, ": ", what));
}

std::string Describe(const Tensor& t) { return t.defined() ? t.DebugString() : std::string("undefined"); }

bool IsAdapterDType(DType dtype) { return dtype == DType::kF32 || dtype == DType::kF64; }

// A contiguous view or copy (the peft ops need contiguous operands).
Tensor Dense(const Tensor& t) { return !t.defined() || t.is_contiguous() ? t : t.Contiguous(); }

// The residual methods whose initial factors (A0, B0) the §11 conversion needs.
bool HasInitialFactors(Method method) {
  return method == Method::kPissa || method == Method::kMilora || method == Method::kCordaIpm ||
         method == Method::kCordaKpm;
}

Tensor& MutableLinear(model::LayerWeights& w, LinearKind kind) {
  switch (kind) {
    case LinearKind::kQ:
      return w.q;
    case LinearKind::kK:
      return w.k;
    case LinearKind::kV:
      return w.v;
    case LinearKind::kO:
      return w.o;
    case LinearKind::kGate:
      return w.gate;
    case LinearKind::kUp:
      return w.up;
    case LinearKind::kDown:
      return w.down;
  }
  ST_CHECK(false) << "unknown LinearKind " << static_cast<int>(kind);
  return w.q;
}

// `t` is a CPU tensor of `shape` and `dtype`. `what` names the operand ("trained lora_B").
absl::Status CheckOperand(const std::string& module, absl::string_view what, const Tensor& t, const Shape& shape,
                          DType dtype, absl::string_view hint) {
  if (!t.defined()) return Bad(module, absl::StrCat(what, " is missing; ", hint));
  if (!t.device().is_cpu()) {
    return absl::FailedPreconditionError(absl::StrCat("export: ", module, ": ", what, " is ", t.DebugString(),
                                                      "; Download() it to the CPU first"));
  }
  if (t.shape() != shape || t.dtype() != dtype) {
    return Bad(module, absl::StrCat(what, " must be ", DTypeName(dtype), " ", ShapeToString(shape), ", got ",
                                    t.DebugString()));
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(model::ModelBackend& backend, const std::string& module, absl::string_view what,
                         const Tensor& t) {
  ST_ASSIGN_OR_RETURN(const int64_t bad, backend.CountNonFinite(Dense(t)));
  if (bad > 0) {
    return Bad(module, absl::StrCat(what, " holds ", bad, " NaN/Inf value(s); the training diverged, export an ",
                                    "earlier checkpoint"));
  }
  return absl::OkStatus();
}

absl::Status CheckLinear(model::ModelBackend& backend, const ExportInputs& in, const TrainedLinear& l) {
  const std::string module = l.target.name();
  const Method method = in.options.method;
  const int64_t r = in.options.rank;
  const Tensor& w = in.weights.layers[l.target.layer].linear(l.target.kind);
  if (!w.defined() || w.rank() != 2) {
    return Bad(module, absl::StrCat("the original weight must be a matrix [out, in], got ", Describe(w)));
  }
  if (!w.device().is_cpu()) {
    return absl::FailedPreconditionError(absl::StrCat("export: ", module, ": the original weight is ",
                                                      w.DebugString(), "; Download() it to the CPU first"));
  }
  const int64_t m = w.dim(0), n = w.dim(1);
  if (!l.a.defined() || !IsAdapterDType(l.a.dtype())) {
    return Bad(module, absl::StrCat("the trained lora_A must be an f32/f64 tensor [", r, ", ", n, "], got ",
                                    Describe(l.a)));
  }
  const DType dtype = l.a.dtype();
  const std::string from_trainer = "pass the LowRankAdapter's parameters";
  ST_RETURN_IF_ERROR(CheckOperand(module, "the trained lora_A", l.a, {r, n}, dtype,
                                  absl::StrCat(from_trainer, " (rank ", r, " from the options, ", n,
                                               " input features)")));
  ST_RETURN_IF_ERROR(CheckOperand(module, "the trained lora_B", l.b, {m, r}, dtype, from_trainer));
  if (method == Method::kKasa) {
    ST_RETURN_IF_ERROR(CheckOperand(module, "the trained KaSA diagonal d", l.d, {r}, dtype, from_trainer));
  } else if (l.d.defined()) {
    return Bad(module, absl::StrCat("a diagonal d was passed, but ", peft::MethodName(method),
                                    " has none (only KaSA does); leave d undefined"));
  }
  ST_RETURN_IF_ERROR(CheckFinite(backend, module, "the trained lora_A", l.a));
  ST_RETURN_IF_ERROR(CheckFinite(backend, module, "the trained lora_B", l.b));
  if (l.d.defined()) ST_RETURN_IF_ERROR(CheckFinite(backend, module, "the trained KaSA diagonal d", l.d));

  const std::string from_init = "pass the AdapterInit that InitializeAdapter returned for this layer";
  ST_RETURN_IF_ERROR(CheckOperand(module, "init.w_res", l.init.w_res, {m, n}, w.dtype(),
                                  absl::StrCat(from_init, " (W_res has the original weight's dtype)")));
  const double scale = peft::AdapterScale(in.options);
  if (!(std::abs(l.init.scale - scale) <= 1e-9 * std::abs(scale))) {
    return Bad(module, absl::StrFormat("init.scale is %.17g but the options give s = %.17g; the adapter was "
                                       "initialised with other options (rank/alpha/scaling)",
                                       l.init.scale, scale));
  }
  if (HasInitialFactors(method)) {
    ST_RETURN_IF_ERROR(CheckOperand(module, "init.a (A0)", l.init.a, {r, n}, dtype, from_init));
    ST_RETURN_IF_ERROR(CheckOperand(module, "init.b (B0)", l.init.b, {m, r}, dtype, from_init));
  } else if (method == Method::kKasa) {
    ST_RETURN_IF_ERROR(CheckOperand(module, "init.tail_u", l.init.tail_u, {m, r}, dtype, from_init));
    ST_RETURN_IF_ERROR(CheckOperand(module, "init.tail_s", l.init.tail_s, {r}, dtype, from_init));
    ST_RETURN_IF_ERROR(CheckOperand(module, "init.tail_vt", l.init.tail_vt, {r, n}, dtype, from_init));
  }
  return absl::OkStatus();
}

std::vector<peft::TargetModule> Targets(const ExportInputs& in) {
  std::vector<peft::TargetModule> targets;
  targets.reserve(in.linears.size());
  for (const TrainedLinear& l : in.linears) targets.push_back(l.target);
  return targets;
}

// Writes `weights` (CPU) as an HF checkpoint into `dir`.
absl::Status WriteCheckpoint(const ExportInputs& in, const ExportOptions& options, const model::LlamaWeights& weights,
                             const std::string& dir) {
  const std::string where = absl::StrCat("export: writing the checkpoint ", dir, ": ");
  auto config = formats::ModelConfigFromLlama(in.config, options.max_position_embeddings);
  if (!config.ok()) return Annotate(config.status(), where);
  config->bos_token_id = options.bos_token_id;
  config->eos_token_ids = options.eos_token_ids;
  config->pad_token_id = options.pad_token_id;
  auto tensors = formats::HfTensorsFromLlama(in.config, weights);
  if (!tensors.ok()) return Annotate(tensors.status(), where);
  return Annotate(formats::WriteHfCheckpoint(dir, *config, *tensors), where);
}

// A deep copy of every tensor of the init that the conversion reads, contiguous.
peft::AdapterInit DenseInit(const peft::AdapterInit& init) {
  peft::AdapterInit out = init;
  out.a = Dense(init.a);
  out.b = Dense(init.b);
  out.d = Dense(init.d);
  out.w_res = Dense(init.w_res);
  out.tail_u = Dense(init.tail_u);
  out.tail_s = Dense(init.tail_s);
  out.tail_vt = Dense(init.tail_vt);
  return out;
}

std::string PeftInitName(const peft::AdapterOptions& options) {
  switch (options.method) {
    case Method::kPissa:
      return options.pissa_niter > 0 ? absl::StrCat("pissa_niter_", options.pissa_niter) : "pissa";
    case Method::kCordaIpm:
    case Method::kCordaKpm:
      return "corda";
    default:
      return std::string(peft::MethodName(options.method));
  }
}

}  // namespace

absl::Status ValidateExportInputs(const ExportInputs& inputs, const ExportOptions& options) {
  ST_RETURN_IF_ERROR(Annotate(inputs.options.Validate(), "export: the adapter options: "));
  ST_RETURN_IF_ERROR(Annotate(inputs.config.Validate(), "export: the model config: "));
  if (static_cast<int64_t>(inputs.weights.layers.size()) != inputs.config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("export: the original weights have ", inputs.weights.layers.size(),
                                                   " layers but the config says ", inputs.config.num_layers));
  }
  if (options.max_position_embeddings < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("export: max_position_embeddings is ", options.max_position_embeddings,
                     "; pass the original config.json's context length"));
  }
  // What the checkpoint writers will need, checked before anything is written.
  ST_RETURN_IF_ERROR(Annotate(
      formats::ModelConfigFromLlama(inputs.config, options.max_position_embeddings).status(), ""));
  auto tensors = formats::HfTensorsFromLlama(inputs.config, inputs.weights);
  if (!tensors.ok()) return Annotate(tensors.status(), "export: the original weights: ");
  const DType weight_dtype = tensors->begin()->second.dtype();
  for (const auto& [name, t] : *tensors) {
    if (t.dtype() != weight_dtype) {
      return absl::InvalidArgumentError(absl::StrCat("export: the original weights mix dtypes: ", name, " is ",
                                                     DTypeName(t.dtype()), ", ", tensors->begin()->first, " is ",
                                                     DTypeName(weight_dtype), "; pass one dtype"));
    }
  }
  if (inputs.linears.empty()) {
    return absl::InvalidArgumentError(
        "export: the adapter set is empty; pass one TrainedLinear per adapted (layer, linear)");
  }
  model::CpuBackend backend;
  std::set<peft::TargetModule> seen;
  for (const TrainedLinear& l : inputs.linears) {
    if (l.target.layer < 0 || l.target.layer >= inputs.config.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("export: linear ", l.target.name(), " is outside the ",
                                                     inputs.config.num_layers, "-layer model"));
    }
    if (!seen.insert(l.target).second) {
      return Bad(l.target.name(), "is listed twice; pass each adapted linear once");
    }
    ST_RETURN_IF_ERROR(CheckLinear(backend, inputs, l));
  }
  return absl::OkStatus();
}

namespace {

// The writers below assume ValidateExportInputs passed.
absl::Status WriteNative(const ExportInputs& inputs, const ExportOptions& options, const std::string& adapter_dir,
                         const std::string& residual_base_dir) {
  const peft::AdapterOptions& opts = inputs.options;
  const bool changes_base = peft::ChangesBase(opts.method);
  if (adapter_dir.empty()) return absl::InvalidArgumentError("export: the adapter directory is empty");
  if (changes_base && residual_base_dir.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("export: ", peft::MethodName(opts.method),
                                                   " changes the base weights; pass a residual_base directory"));
  }
  if (!changes_base && !residual_base_dir.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("export: ", peft::MethodName(opts.method),
                                                   " keeps the original base; pass an empty residual_base "
                                                   "directory"));
  }

  // 1. The residual base: the original weights with every adapted linear replaced by W_res.
  if (changes_base) {
    model::LlamaWeights residual = inputs.weights;
    for (const TrainedLinear& l : inputs.linears) {
      MutableLinear(residual.layers[l.target.layer], l.target.kind) = l.init.w_res;
    }
    ST_RETURN_IF_ERROR(WriteCheckpoint(inputs, options, residual, residual_base_dir));
  }

  // 2. The state file, then the adapter (weights, then config).
  formats::SigmatuneAdapterState state;
  state.metadata["method"] = std::string(peft::MethodName(opts.method));
  state.metadata["rank"] = absl::StrCat(opts.rank);
  state.metadata["alpha"] = absl::StrFormat("%.17g", opts.alpha);
  state.metadata["scaling"] = opts.scaling == peft::Scaling::kRankStabilized ? "rslora" : "standard";
  state.metadata["scale"] = absl::StrFormat("%.17g", peft::AdapterScale(opts));
  state.metadata["base"] = changes_base ? kResidualBaseDir : "original";
  state.metadata["peft_init"] = PeftInitName(opts);
  state.metadata["sigmatune_export"] = "1";

  formats::PeftAdapter adapter;
  ST_ASSIGN_OR_RETURN(adapter.config,
                      formats::PeftConfigForOptions(
                          opts, changes_base ? options.residual_base_name_or_path : options.base_model_name_or_path,
                          peft::PeftTargetModulesValue(Targets(inputs), inputs.config.num_layers)));
  // See the header: PEFT would re-run "pissa" / "corda" against the base on load.
  adapter.config.init_lora_weights = true;
  for (const TrainedLinear& l : inputs.linears) {
    const std::string module = l.target.name();
    adapter.modules[module] = formats::PeftModuleWeights{Dense(l.a), Dense(l.b), Dense(l.d)};
    if (HasInitialFactors(opts.method)) {
      state.tensors[module + ".lora_A0"] = Dense(l.init.a);
      state.tensors[module + ".lora_B0"] = Dense(l.init.b);
    } else if (opts.method == Method::kKasa) {
      state.tensors[module + ".kasa_tail_u"] = Dense(l.init.tail_u);
      state.tensors[module + ".kasa_tail_s"] = Dense(l.init.tail_s);
      state.tensors[module + ".kasa_tail_vt"] = Dense(l.init.tail_vt);
    }
  }
  ST_RETURN_IF_ERROR(Annotate(formats::WriteSigmatuneAdapterState(adapter_dir, state),
                              "export: writing the adapter state: "));
  return Annotate(formats::WritePeftAdapter(adapter_dir, adapter), "export: writing the native adapter: ");
}

absl::Status WritePlainLora(const ExportInputs& inputs, const ExportOptions& options, const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("export: the adapter_lora directory is empty");
  const peft::AdapterOptions& opts = inputs.options;
  peft::AdapterOptions plain = opts;
  plain.method = Method::kLora;
  plain.rank = peft::ConvertedRank(opts);
  plain.alpha = peft::ConvertedAlpha(opts);

  formats::PeftAdapter adapter;
  ST_ASSIGN_OR_RETURN(adapter.config,
                      formats::PeftConfigForOptions(
                          plain, options.base_model_name_or_path,
                          peft::PeftTargetModulesValue(Targets(inputs), inputs.config.num_layers)));
  model::CpuBackend backend;
  for (const TrainedLinear& l : inputs.linears) {
    const std::string module = l.target.name();
    auto converted = peft::ConvertToPlainLora(backend, opts, DenseInit(l.init), Dense(l.a), Dense(l.b), Dense(l.d));
    if (!converted.ok()) return Annotate(converted.status(), absl::StrCat("export: ", module, ": "));
    if (converted->rank != plain.rank) {  // ConvertedRank is what ConvertToPlainLora uses
      return absl::InternalError(absl::StrCat("export: ", module, ": converted rank ", converted->rank,
                                              " != ", plain.rank));
    }
    adapter.modules[module] = formats::PeftModuleWeights{converted->a, converted->b, Tensor()};
  }
  return Annotate(formats::WritePeftAdapter(dir, adapter), "export: writing the plain LoRA adapter: ");
}

absl::Status WriteMerged(const ExportInputs& inputs, const ExportOptions& options, const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("export: the merged directory is empty");
  model::CpuBackend backend;
  const double scale = peft::AdapterScale(inputs.options);
  model::LlamaWeights merged = inputs.weights;
  for (const TrainedLinear& l : inputs.linears) {
    Tensor w = l.init.w_res.Contiguous();  // a copy: for LoRA w_res is the original weight itself
    ST_RETURN_IF_ERROR(Annotate(peft::Merge(backend, Dense(l.a), Dense(l.b), Dense(l.d), scale, &w),
                                absl::StrCat("export: merging ", l.target.name(), ": ")));
    MutableLinear(merged.layers[l.target.layer], l.target.kind) = std::move(w);
  }
  return WriteCheckpoint(inputs, options, merged, dir);
}

}  // namespace

absl::Status ExportNativeAdapter(const ExportInputs& inputs, const ExportOptions& options,
                                 const std::string& adapter_dir, const std::string& residual_base_dir) {
  ST_RETURN_IF_ERROR(ValidateExportInputs(inputs, options));
  return WriteNative(inputs, options, adapter_dir, residual_base_dir);
}

absl::Status ExportPlainLora(const ExportInputs& inputs, const ExportOptions& options, const std::string& dir) {
  ST_RETURN_IF_ERROR(ValidateExportInputs(inputs, options));
  return WritePlainLora(inputs, options, dir);
}

absl::Status ExportMerged(const ExportInputs& inputs, const ExportOptions& options, const std::string& dir) {
  ST_RETURN_IF_ERROR(ValidateExportInputs(inputs, options));
  return WriteMerged(inputs, options, dir);
}

absl::StatusOr<ExportPaths> ExportAll(const ExportInputs& inputs, const ExportOptions& options,
                                      const std::string& out_dir) {
  if (out_dir.empty()) return absl::InvalidArgumentError("export: the output directory is empty");
  ST_RETURN_IF_ERROR(ValidateExportInputs(inputs, options));
  ExportPaths paths;
  const auto join = [&](const char* name) { return absl::StrCat(out_dir, "/", name); };
  paths.adapter = join(kAdapterDir);
  if (peft::ChangesBase(inputs.options.method)) paths.residual_base = join(kResidualBaseDir);
  paths.adapter_lora = join(kAdapterLoraDir);
  paths.merged = join(kMergedDir);
  ST_RETURN_IF_ERROR(WriteNative(inputs, options, paths.adapter, paths.residual_base));
  ST_RETURN_IF_ERROR(WritePlainLora(inputs, options, paths.adapter_lora));
  ST_RETURN_IF_ERROR(WriteMerged(inputs, options, paths.merged));
  return paths;
}

}  // namespace sigmatune::train
