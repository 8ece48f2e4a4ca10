// PEFT's `target_modules` semantics (huggingface/peft: tuners_utils.py::check_target_module_exists,
// ../shared/FORMATS.md §3) for the LLaMA models of kernels/model: which linears of an N-layer
// model an adapter config selects, and the value to write back into adapter_config.json.
//
// Module names are those of transformers' LlamaForCausalLM.named_modules() (the keys PEFT matches
// against), e.g. "model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj" (see
// model::LinearName), plus the modules sigmatune never adapts: "model", "model.embed_tokens",
// "model.layers", "model.layers.3", "model.layers.3.self_attn", "model.layers.3.mlp",
// "model.layers.3.mlp.act_fn", "model.layers.3.input_layernorm",
// "model.layers.3.post_attention_layernorm", "model.norm", "model.rotary_emb", "lm_head".
//
// Contract:
//  - List form (TargetModulesSpec::List): a name selects every module whose full name equals it
//    or ends with "." + name ("q_proj", "self_attn.q_proj", "model.layers.0.mlp.down_proj").
//  - String form (TargetModulesSpec::String): "all-linear" (case-insensitive, as PEFT) selects the
//    seven projections of every layer (every Linear but lm_head); any other string is a regular
//    expression that must match a module's whole name (Python's re.fullmatch; evaluated with
//    std::regex ECMAScript, which agrees with Python for the usual patterns such as
//    ".*\.(q|v)_proj" or "model\.layers\.[01]\..*"; look-behind and named groups are not
//    available).
//  - Errors are InvalidArgument naming what was asked and listing the available module suffixes:
//    an empty list, a list name that selects nothing (stricter than PEFT, which only fails when
//    no name selects anything, so that a typo such as "q_porj" is never silently dropped), a
//    pattern that selects nothing or does not compile, and any selection of a module sigmatune
//    cannot adapt (lm_head, embed_tokens, norms, attention/MLP containers: PEFT fails on the
//    containers too and would add embedding/lm_head LoRA, which we do not support).
//  - Pure computation: no file I/O, no allocation on devices. Thread-safe.
#ifndef SIGMATUNE_KERNELS_PEFT_TARGETS_H_
#define SIGMATUNE_KERNELS_PEFT_TARGETS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/model/llama.h"

namespace sigmatune::peft {

// One adapted linear: layer index and projection.
struct TargetModule {
  int64_t layer = 0;
  model::LinearKind kind = model::LinearKind::kQ;

  // The HF module name (model::LinearName).
  std::string name() const { return model::LinearName(layer, kind); }

  friend bool operator<(const TargetModule& a, const TargetModule& b) {
    if (a.layer != b.layer) return a.layer < b.layer;
    return static_cast<int>(a.kind) < static_cast<int>(b.kind);
  }
  friend bool operator==(const TargetModule& a, const TargetModule& b) {
    return a.layer == b.layer && a.kind == b.kind;
  }
  friend bool operator!=(const TargetModule& a, const TargetModule& b) { return !(a == b); }
};

// PEFT's target_modules value: a list of names, or one string ("all-linear" or a full-match regex).
struct TargetModulesSpec {
  std::vector<std::string> names;      // the list form (used when `pattern` is unset)
  std::optional<std::string> pattern;  // the single-string form

  static TargetModulesSpec List(std::vector<std::string> names);
  static TargetModulesSpec String(std::string pattern);
  // ["q_proj", "v_proj"] or "pattern", for messages.
  std::string DebugString() const;
};

// PEFT's shorthand for every linear layer except the output layer.
inline constexpr absl::string_view kAllLinear = "all-linear";

// The projection suffix of a linear: "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
// "up_proj", "down_proj".
absl::string_view LinearSuffix(model::LinearKind kind);

// The linears `spec` selects in a model with `num_layers` layers, sorted by (layer, kind) and
// without duplicates. InvalidArgument as described in the contract. ST_CHECKs num_layers >= 1.
absl::StatusOr<std::vector<TargetModule>> ResolveTargetModules(const TargetModulesSpec& spec,
                                                              int64_t num_layers);

// The target_modules list to write to adapter_config.json for `targets` (each layer in
// [0, num_layers), ST_CHECKed): for a projection adapted in every layer its suffix ("q_proj"),
// otherwise the full names of the adapted modules ("model.layers.0.mlp.down_proj"), so that PEFT
// selects exactly `targets` again; sorted, unique. Empty for empty `targets`.
// ResolveTargetModules(List(PeftTargetModulesValue(t, n)), n) == sorted unique t.
std::vector<std::string> PeftTargetModulesValue(const std::vector<TargetModule>& targets,
                                                int64_t num_layers);

}  // namespace sigmatune::peft

#endif  // SIGMATUNE_KERNELS_PEFT_TARGETS_H_
