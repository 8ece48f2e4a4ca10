#include "kernels/peft/targets.h"

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::peft {
namespace {

// Longest pattern we compile: std::regex compiles recursively, so an unbounded pattern could
// exhaust the stack. Real target patterns are a few dozen characters.
constexpr size_t kMaxPatternLength = 1000;

// One entry of LlamaForCausalLM.named_modules() (the root "" excluded).
struct Module {
  std::string name;
  std::optional<TargetModule> target;  // set for the seven adaptable projections
  const char* why_not = "";            // for the others: why sigmatune cannot adapt it
};

constexpr char kContainer[] = "is not a Linear layer (PEFT refuses to wrap it as well)";
constexpr char kNorm[] = "is an RMSNorm, not a Linear layer";
constexpr char kEmbedding[] =
    "is the token embedding (PEFT would add lora_embedding_A/B, which sigmatune does not train)";
constexpr char kLmHead[] =
    "is the output layer lm_head, which sigmatune does not adapt (PEFT's all-linear skips it too)";

std::vector<Module> ModelModules(int64_t num_layers) {
  std::vector<Module> out;
  out.push_back({"model", std::nullopt, kContainer});
  out.push_back({"model.embed_tokens", std::nullopt, kEmbedding});
  out.push_back({"model.layers", std::nullopt, kContainer});
  for (int64_t l = 0; l < num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l);
    out.push_back({p, std::nullopt, kContainer});
    out.push_back({p + ".self_attn", std::nullopt, kContainer});
    out.push_back({p + ".mlp", std::nullopt, kContainer});
    out.push_back({p + ".mlp.act_fn", std::nullopt, kContainer});
    out.push_back({p + ".input_layernorm", std::nullopt, kNorm});
    out.push_back({p + ".post_attention_layernorm", std::nullopt, kNorm});
    for (model::LinearKind kind : model::kAllLinears) {
      out.push_back({model::LinearName(l, kind), TargetModule{l, kind}, ""});
    }
  }
  out.push_back({"model.norm", std::nullopt, kNorm});
  out.push_back({"model.rotary_emb", std::nullopt, kContainer});
  out.push_back({"lm_head", std::nullopt, kLmHead});
  return out;
}

std::string AvailableHint() {
  std::vector<std::string> suffixes;
  for (model::LinearKind kind : model::kAllLinears) suffixes.emplace_back(LinearSuffix(kind));
  return absl::StrCat(
      "available module suffixes: ", absl::StrJoin(suffixes, ", "),
      " (or longer suffixes/full names such as self_attn.q_proj or model.layers.0.mlp.down_proj, "
      "\"all-linear\", or a regular expression matching whole module names)");
}

absl::Status Unsupported(const TargetModulesSpec& spec, absl::string_view selector,
                         const Module& module) {
  return absl::InvalidArgumentError(absl::StrCat(
      "target_modules ", spec.DebugString(), ": ", selector, " selects module '", module.name,
      "', which ", module.why_not, "; target only the projections; ", AvailableHint()));
}

// Whole-name match of `pattern` against every module name; the regex error or the selection.
absl::StatusOr<std::vector<const Module*>> MatchPattern(const TargetModulesSpec& spec,
                                                        const std::vector<Module>& modules) {
  const std::string& pattern = *spec.pattern;
  if (pattern.size() > kMaxPatternLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target_modules pattern is ", pattern.size(), " characters long (at most ",
        kMaxPatternLength, " allowed); use a list of names instead"));
  }
  std::vector<const Module*> out;
  // std::regex reports bad syntax and runaway matching only by throwing; this is the boundary
  // where those become a Status.
  try {
    const std::regex re(pattern, std::regex::ECMAScript);
    for (const Module& m : modules) {
      if (std::regex_match(m.name, re)) out.push_back(&m);
    }
  } catch (const std::regex_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target_modules ", spec.DebugString(), " is not a usable regular expression (std::regex: ", e.what(),
        "); PEFT treats a single string as a pattern for re.fullmatch; ", AvailableHint()));
  }
  return out;
}

}  // namespace

TargetModulesSpec TargetModulesSpec::List(std::vector<std::string> names) {
  TargetModulesSpec spec;
  spec.names = std::move(names);
  return spec;
}

TargetModulesSpec TargetModulesSpec::String(std::string pattern) {
  TargetModulesSpec spec;
  spec.pattern = std::move(pattern);
  return spec;
}

std::string TargetModulesSpec::DebugString() const {
  if (pattern.has_value()) return absl::StrCat("\"", *pattern, "\"");
  return absl::StrCat("[", absl::StrJoin(names, ", ", [](std::string* out, const std::string& n) {
                        absl::StrAppend(out, "\"", n, "\"");
                      }),
                      "]");
}

absl::string_view LinearSuffix(model::LinearKind kind) {
  switch (kind) {
    case model::LinearKind::kQ:
      return "q_proj";
    case model::LinearKind::kK:
      return "k_proj";
    case model::LinearKind::kV:
      return "v_proj";
    case model::LinearKind::kO:
      return "o_proj";
    case model::LinearKind::kGate:
      return "gate_proj";
    case model::LinearKind::kUp:
      return "up_proj";
    case model::LinearKind::kDown:
      return "down_proj";
  }
  return "unknown_proj";
}

absl::StatusOr<std::vector<TargetModule>> ResolveTargetModules(const TargetModulesSpec& spec,
                                                              int64_t num_layers) {
  ST_CHECK_GE(num_layers, 1);
  const std::vector<Module> modules = ModelModules(num_layers);
  std::set<TargetModule> selected;

  if (spec.pattern.has_value()) {
    if (absl::AsciiStrToLower(*spec.pattern) == kAllLinear) {
      for (const Module& m : modules) {
        if (m.target.has_value()) selected.insert(*m.target);
      }
      return std::vector<TargetModule>(selected.begin(), selected.end());
    }
    ST_ASSIGN_OR_RETURN(const std::vector<const Module*> matches, MatchPattern(spec, modules));
    for (const Module* m : matches) {
      if (!m->target.has_value()) return Unsupported(spec, "the pattern", *m);
      selected.insert(*m->target);
    }
    if (selected.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target_modules ", spec.DebugString(), " matches no module of the ", num_layers,
          "-layer LLaMA model (the pattern must match whole names such as "
          "model.layers.0.self_attn.q_proj); ",
          AvailableHint()));
    }
    return std::vector<TargetModule>(selected.begin(), selected.end());
  }

  if (spec.names.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "target_modules is an empty list; name the projections to adapt; ", AvailableHint()));
  }
  for (const std::string& name : spec.names) {
    const std::string dotted = absl::StrCat(".", name);
    bool any = false;
    for (const Module& m : modules) {
      if (name.empty() || (m.name != name && !absl::EndsWith(m.name, dotted))) continue;
      if (!m.target.has_value()) {
        return Unsupported(spec, absl::StrCat("the name \"", name, "\""), m);
      }
      selected.insert(*m.target);
      any = true;
    }
    if (!any) {
      return absl::InvalidArgumentError(absl::StrCat(
          "target_modules ", spec.DebugString(), ": \"", name, "\" matches no module of the ",
          num_layers, "-layer LLaMA model (a name matches a module whose full name equals it or "
          "ends with '.' + name); ",
          AvailableHint()));
    }
  }
  return std::vector<TargetModule>(selected.begin(), selected.end());
}

std::vector<std::string> PeftTargetModulesValue(const std::vector<TargetModule>& targets,
                                                int64_t num_layers) {
  std::map<model::LinearKind, std::set<int64_t>> layers_of;
  for (const TargetModule& t : targets) {
    ST_CHECK(t.layer >= 0 && t.layer < num_layers)
        << "target layer " << t.layer << " outside a " << num_layers << "-layer model";
    layers_of[t.kind].insert(t.layer);
  }
  std::set<std::string> out;
  for (const auto& [kind, layers] : layers_of) {
    if (static_cast<int64_t>(layers.size()) == num_layers) {
      out.insert(std::string(LinearSuffix(kind)));
    } else {
      for (int64_t l : layers) out.insert(model::LinearName(l, kind));
    }
  }
  return std::vector<std::string>(out.begin(), out.end());
}

}  // namespace sigmatune::peft
