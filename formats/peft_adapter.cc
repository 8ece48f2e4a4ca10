#include "formats/peft_adapter.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formats/atomic_file.h"
#include "formats/json_util.h"
#include "formats/safetensors.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::formats {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kKeyPrefix[] = "base_model.model.";
constexpr char kSuffixA[] = ".lora_A.weight";
constexpr char kSuffixB[] = ".lora_B.weight";
constexpr char kSuffixDiag[] = ".lora_diag";
constexpr uint64_t kMaxConfigBytes = 16 << 20;
constexpr int kMaxDepth = 32;
constexpr size_t kMaxPatternLength = 1000;
constexpr char kConfigHint[] = "fix adapter_config.json (FORMATS.md §3 lists the keys)";

// ---- regular expressions (std::regex reports errors only by throwing) ----

// Whether `pattern` matches the whole of `text`. InvalidArgument naming `what` when the pattern
// does not compile (or std::regex gives up on it).
absl::StatusOr<bool> FullMatch(const std::string& pattern, const std::string& text,
                               absl::string_view what) {
  if (pattern.size() > kMaxPatternLength) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", pattern.size(),
                                                   " characters long; at most ", kMaxPatternLength,
                                                   " are allowed"));
  }
  try {
    return std::regex_match(text, std::regex(pattern, std::regex::ECMAScript));
  } catch (const std::regex_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, " \"", pattern,
                                                   "\" is not a usable regular expression (",
                                                   e.what(), ")"));
  }
}

// PEFT's get_pattern_key: the first key K with re.match(r"(.*\.)?(K)$", module).
template <typename V>
absl::StatusOr<const V*> PatternValue(const std::vector<std::pair<std::string, V>>& patterns,
                                      const std::string& module, absl::string_view field) {
  for (const auto& [key, value] : patterns) {
    ST_ASSIGN_OR_RETURN(const bool hit,
                        FullMatch(absl::StrCat("(.*\\.)?(", key, ")"), module,
                                  absl::StrCat("key '", field, "' entry")));
    if (hit) return &value;
  }
  return static_cast<const V*>(nullptr);
}

// ---- JSON field access with errors naming the file and key ----

absl::Status Bad(absl::string_view source, absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": key '", key, "' ", what, "; ", kConfigHint));
}

absl::Status Unsupported(absl::string_view source, absl::string_view key, absl::string_view what) {
  return absl::UnimplementedError(absl::StrCat(
      source, ": key '", key, "' ", what,
      ", which sigmatune cannot load; export a plain LoRA adapter (r, lora_alpha, lora_A/lora_B "
      "of the projections) instead"));
}

// nullptr when absent or null.
const Json* Find(const Json& obj, absl::string_view key) {
  const auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// null, false, "", [] and {}: the values of a disabled PEFT feature.
bool IsUnset(const Json* v) {
  if (v == nullptr) return true;
  if (v->is_boolean()) return !v->get<bool>();
  if (v->is_string() || v->is_array() || v->is_object()) return v->empty();
  return false;
}

absl::StatusOr<std::optional<int64_t>> GetInt(const Json& obj, absl::string_view key,
                                              absl::string_view source) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return std::optional<int64_t>();
  if (v->is_number_unsigned() && v->get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)) {
    return std::optional<int64_t>(static_cast<int64_t>(v->get<uint64_t>()));
  }
  if (v->is_number_integer()) return std::optional<int64_t>(v->get<int64_t>());
  return Bad(source, key, absl::StrCat("is ", v->dump(), ", expected an integer"));
}

absl::StatusOr<std::optional<double>> GetNumber(const Json& obj, absl::string_view key,
                                                absl::string_view source) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) return Bad(source, key, absl::StrCat("is ", v->dump(), ", expected a number"));
  return std::optional<double>(v->get<double>());
}

absl::StatusOr<bool> GetBool(const Json& obj, absl::string_view key, bool fallback,
                             absl::string_view source) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return Bad(source, key, absl::StrCat("is ", v->dump(), ", expected true/false"));
  return v->get<bool>();
}

absl::StatusOr<std::string> GetString(const Json& obj, absl::string_view key,
                                      absl::string_view source) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return std::string();
  if (!v->is_string()) return Bad(source, key, absl::StrCat("is ", v->dump(), ", expected a string"));
  return v->get<std::string>();
}

// An integral double as a JSON integer (PEFT's lora_alpha is an int field), else a float.
Json NumberJson(double x) {
  if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9007199254740992.0) {
    return Json(static_cast<int64_t>(x));
  }
  return Json(x);
}

// ---- files ----

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::string text;
  char buf[1 << 14];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxConfigBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than ", kMaxConfigBytes, " bytes; not an adapter config"));
    }
  }
  return text;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string JoinPath(const std::string& dir, absl::string_view name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

// ---- validation ----

absl::Status ValidateConfig(const PeftAdapterConfig& c, absl::string_view source) {
  if (c.r < 1) return Bad(source, "r", absl::StrCat("is ", c.r, ", expected a rank >= 1"));
  if (!std::isfinite(c.lora_alpha)) {
    return Bad(source, "lora_alpha", absl::StrCat("is ", c.lora_alpha, ", expected a finite number"));
  }
  if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) {
    return Bad(source, "lora_dropout", absl::StrCat("is ", c.lora_dropout, ", expected 0 <= p < 1"));
  }
  if (c.target_modules_regex.has_value()) {
    if (!c.target_modules.empty()) {
      return Bad(source, "target_modules",
                 "has both a list and a regex string; set exactly one of the two forms");
    }
    ST_RETURN_IF_ERROR(FullMatch(*c.target_modules_regex, "",
                                 absl::StrCat(source, ": key 'target_modules'"))
                           .status());
  } else {
    if (c.target_modules.empty()) {
      return Bad(source, "target_modules",
                 "is empty; list the adapted modules, e.g. [\"q_proj\", \"v_proj\"]");
    }
    for (const std::string& name : c.target_modules) {
      if (name.empty()) return Bad(source, "target_modules", "holds an empty name");
    }
  }
  if (const auto* s = std::get_if<std::string>(&c.init_lora_weights)) {
    if (s->empty()) return Bad(source, "init_lora_weights", "is an empty string; use true");
    if (absl::StartsWith(*s, "pissa_niter_")) {
      int niter = 0;
      if (!absl::SimpleAtoi(s->substr(12), &niter) || niter < 0) {
        return Bad(source, "init_lora_weights",
                   absl::StrCat("is \"", *s, "\"; expected \"pissa_niter_<k>\" with k >= 0"));
      }
    }
  }
  if (c.kasa.has_value() && !(c.kasa->beta >= 0 && c.kasa->gamma >= 0)) {
    return Bad(source, "kasa_config", "has a negative beta or gamma; both must be >= 0");
  }
  for (const auto& [key, value] : c.rank_pattern) {
    if (value < 1) {
      return Bad(source, "rank_pattern",
                 absl::StrCat("maps \"", key, "\" to ", value, ", expected a rank >= 1"));
    }
    ST_RETURN_IF_ERROR(FullMatch(absl::StrCat("(.*\\.)?(", key, ")"), "",
                                 absl::StrCat(source, ": key 'rank_pattern' entry"))
                           .status());
  }
  for (const auto& [key, value] : c.alpha_pattern) {
    if (!std::isfinite(value)) {
      return Bad(source, "alpha_pattern",
                 absl::StrCat("maps \"", key, "\" to ", value, ", expected a finite number"));
    }
    ST_RETURN_IF_ERROR(FullMatch(absl::StrCat("(.*\\.)?(", key, ")"), "",
                                 absl::StrCat(source, ": key 'alpha_pattern' entry"))
                           .status());
  }
  return absl::OkStatus();
}

absl::Status BadTensor(absl::string_view source, const std::string& module,
                       absl::string_view suffix, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": tensor '", kKeyPrefix, module, suffix,
                                                 "' ", what));
}

absl::Status ValidateModules(const PeftAdapter& adapter, absl::string_view source) {
  const PeftAdapterConfig& c = adapter.config;
  if (adapter.modules.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": the adapter has no modules; an adapter needs lora_A/lora_B of at least one module"));
  }
  const bool kasa = c.kasa.has_value();
  for (const auto& [module, w] : adapter.modules) {
    if (module.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": an adapted module has an empty name"));
    }
    ST_ASSIGN_OR_RETURN(const bool targeted, PeftTargetsModule(c, module));
    if (!targeted) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": module '", module, "' is not selected by target_modules (",
          c.target_modules_regex ? absl::StrCat("\"", *c.target_modules_regex, "\"")
                                 : absl::StrCat("[", absl::StrJoin(c.target_modules, ", "), "]"),
          "); PEFT would not load its weights; add it to target_modules"));
    }
    ST_ASSIGN_OR_RETURN(const int64_t r, PeftModuleRank(c, module));
    const auto check = [&](const Tensor& t, absl::string_view suffix, int rank) -> absl::Status {
      if (!t.defined()) return BadTensor(source, module, suffix, "is missing");
      if (!t.device().is_cpu()) {
        return BadTensor(source, module, suffix,
                         absl::StrCat("is on ", t.DebugString(), "; download it to the CPU first"));
      }
      if (!IsFloating(t.dtype())) {
        return BadTensor(source, module, suffix,
                         absl::StrCat("has dtype ", DTypeName(t.dtype()),
                                      "; LoRA factors are floating point (F32, BF16, F16)"));
      }
      if (t.rank() != rank) {
        return BadTensor(source, module, suffix,
                         absl::StrCat("has shape ", ShapeToString(t.shape()), ", expected rank ", rank));
      }
      return absl::OkStatus();
    };
    ST_RETURN_IF_ERROR(check(w.lora_a, kSuffixA, 2));
    ST_RETURN_IF_ERROR(check(w.lora_b, kSuffixB, 2));
    if (w.lora_a.dim(0) != r) {
      return BadTensor(source, module, kSuffixA,
                       absl::StrCat("has shape ", ShapeToString(w.lora_a.shape()), ": ",
                                    w.lora_a.dim(0), " rows, but the adapter's rank for this module is ",
                                    r, " (r or rank_pattern); A is [r, in_features]"));
    }
    if (w.lora_b.dim(1) != r) {
      return BadTensor(source, module, kSuffixB,
                       absl::StrCat("has shape ", ShapeToString(w.lora_b.shape()), ": ",
                                    w.lora_b.dim(1), " columns, but the adapter's rank for this module is ",
                                    r, " (r or rank_pattern); B is [out_features, r]"));
    }
    if (kasa) {
      ST_RETURN_IF_ERROR(check(w.lora_diag, kSuffixDiag, 1));
      if (w.lora_diag.dim(0) != r) {
        return BadTensor(source, module, kSuffixDiag,
                         absl::StrCat("has shape ", ShapeToString(w.lora_diag.shape()),
                                      ", expected [", r, "] (KaSA's diagonal has one entry per rank)"));
      }
    } else if (w.lora_diag.defined()) {
      return BadTensor(source, module, kSuffixDiag,
                       "is present but the config has no kasa_config; set kasa_config for a KaSA "
                       "adapter or drop the diagonal");
    }
  }
  return absl::OkStatus();
}

// module -> (in, out) of every projection of `model`.
std::map<std::string, std::pair<int64_t, int64_t>> ProjectionShapes(const ModelConfig& model) {
  static constexpr const char* kSuffixes[] = {"self_attn.q_proj", "self_attn.k_proj",
                                              "self_attn.v_proj", "self_attn.o_proj",
                                              "mlp.gate_proj",    "mlp.up_proj",
                                              "mlp.down_proj"};
  const std::map<std::string, Shape> expected = ExpectedTensorShapes(model);
  std::map<std::string, std::pair<int64_t, int64_t>> out;
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) {
    for (const char* s : kSuffixes) {
      const std::string name = absl::StrCat("model.layers.", l, ".", s);
      const Shape& w = expected.at(name + ".weight");
      out[name] = {w[1], w[0]};
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<PeftAdapterConfig> PeftConfigForOptions(const peft::AdapterOptions& options,
                                                       std::string base_model_name_or_path,
                                                       std::vector<std::string> target_modules) {
  ST_RETURN_IF_ERROR(options.Validate());
  PeftAdapterConfig c;
  c.base_model_name_or_path = std::move(base_model_name_or_path);
  c.r = options.rank;
  c.lora_alpha = options.alpha;
  c.lora_dropout = options.dropout;
  c.use_rslora = options.scaling == peft::Scaling::kRankStabilized;
  c.target_modules = std::move(target_modules);
  switch (options.method) {
    case peft::Method::kLora:
    case peft::Method::kMilora:
      c.init_lora_weights = true;
      break;
    case peft::Method::kPissa:
      c.init_lora_weights = options.pissa_niter > 0
                                ? absl::StrCat("pissa_niter_", options.pissa_niter)
                                : std::string("pissa");
      break;
    case peft::Method::kCordaIpm:
    case peft::Method::kCordaKpm:
      c.init_lora_weights = std::string("corda");
      break;
    case peft::Method::kKasa:
      c.init_lora_weights = true;
      c.kasa = PeftKasaConfig{options.kasa_beta, options.kasa_gamma};
      break;
  }
  return c;
}

absl::StatusOr<bool> PeftTargetsModule(const PeftAdapterConfig& config, const std::string& module) {
  if (config.target_modules_regex.has_value()) {
    return FullMatch(*config.target_modules_regex, module, "target_modules");
  }
  for (const std::string& name : config.target_modules) {
    if (name.empty()) continue;
    if (module == name || absl::EndsWith(module, absl::StrCat(".", name))) return true;
  }
  return false;
}

absl::StatusOr<int64_t> PeftModuleRank(const PeftAdapterConfig& config, const std::string& module) {
  ST_ASSIGN_OR_RETURN(const int64_t* r, PatternValue(config.rank_pattern, module, "rank_pattern"));
  return r != nullptr ? *r : config.r;
}

absl::StatusOr<double> PeftModuleAlpha(const PeftAdapterConfig& config, const std::string& module) {
  ST_ASSIGN_OR_RETURN(const double* a, PatternValue(config.alpha_pattern, module, "alpha_pattern"));
  return a != nullptr ? *a : config.lora_alpha;
}

absl::StatusOr<double> PeftModuleScale(const PeftAdapterConfig& config, const std::string& module) {
  ST_ASSIGN_OR_RETURN(const int64_t r, PeftModuleRank(config, module));
  ST_ASSIGN_OR_RETURN(const double alpha, PeftModuleAlpha(config, module));
  return config.use_rslora ? alpha / std::sqrt(static_cast<double>(r))
                           : alpha / static_cast<double>(r);
}

absl::StatusOr<std::string> SerializePeftAdapterConfig(const PeftAdapterConfig& c) {
  ST_RETURN_IF_ERROR(ValidateConfig(c, kPeftConfigFile));
  Json rank_pattern = Json::object();
  for (const auto& [k, v] : c.rank_pattern) rank_pattern[k] = v;
  Json alpha_pattern = Json::object();
  for (const auto& [k, v] : c.alpha_pattern) alpha_pattern[k] = NumberJson(v);
  Json target_modules;
  if (c.target_modules_regex.has_value()) {
    target_modules = *c.target_modules_regex;
  } else {
    const std::set<std::string> sorted(c.target_modules.begin(), c.target_modules.end());
    target_modules = Json::array();
    for (const std::string& name : sorted) target_modules.push_back(name);
  }
  // Keys in sorted order, as PEFT's json.dumps(sort_keys=True).
  Json j = Json::object();
  j["alpha_pattern"] = alpha_pattern;
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? Json(nullptr) : Json(c.base_model_name_or_path);
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = c.inference_mode;
  if (const bool* b = std::get_if<bool>(&c.init_lora_weights)) {
    j["init_lora_weights"] = *b;
  } else {
    j["init_lora_weights"] = std::get<std::string>(c.init_lora_weights);
  }
  if (c.kasa.has_value()) {
    j["kasa_config"] = Json::object();
    j["kasa_config"]["beta"] = c.kasa->beta;
    j["kasa_config"]["gamma"] = c.kasa->gamma;
  }
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = NumberJson(c.lora_alpha);
  j["lora_dropout"] = c.lora_dropout;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = c.r;
  j["rank_pattern"] = rank_pattern;
  j["revision"] = nullptr;
  j["target_modules"] = target_modules;
  j["task_type"] = c.task_type.empty() ? Json(nullptr) : Json(c.task_type);
  j["use_dora"] = false;
  j["use_rslora"] = c.use_rslora;
  return j.dump(2);
}

absl::StatusOr<PeftAdapterConfig> ParsePeftAdapterConfig(absl::string_view json_text,
                                                         absl::string_view source) {
  if (!JsonNestingWithin(json_text, kMaxDepth)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": JSON nested deeper than ", kMaxDepth,
                                                   "; not an adapter_config.json"));
  }
  const Json root = Json::parse(json_text.begin(), json_text.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": not a JSON object; pass the adapter_config.json written by PEFT or sigmatune"));
  }
  PeftAdapterConfig c;

  ST_ASSIGN_OR_RETURN(const std::string peft_type, GetString(root, "peft_type", source));
  if (peft_type.empty()) return Bad(source, "peft_type", "is missing; a LoRA adapter has \"LORA\"");
  if (peft_type != "LORA") {
    return Unsupported(source, "peft_type", absl::StrCat("is \"", peft_type, "\" (only LORA is)"));
  }
  ST_ASSIGN_OR_RETURN(c.task_type, GetString(root, "task_type", source));
  ST_ASSIGN_OR_RETURN(c.base_model_name_or_path,
                      GetString(root, "base_model_name_or_path", source));

  ST_ASSIGN_OR_RETURN(const std::optional<int64_t> r, GetInt(root, "r", source));
  if (!r) return Bad(source, "r", "is missing; it is the adapter rank");
  c.r = *r;
  ST_ASSIGN_OR_RETURN(const std::optional<double> alpha, GetNumber(root, "lora_alpha", source));
  if (!alpha) return Bad(source, "lora_alpha", "is missing; the scale is lora_alpha / r");
  c.lora_alpha = *alpha;
  ST_ASSIGN_OR_RETURN(const std::optional<double> dropout, GetNumber(root, "lora_dropout", source));
  c.lora_dropout = dropout.value_or(0.0);
  ST_ASSIGN_OR_RETURN(c.use_rslora, GetBool(root, "use_rslora", false, source));
  ST_ASSIGN_OR_RETURN(c.inference_mode, GetBool(root, "inference_mode", true, source));

  const Json* targets = Find(root, "target_modules");
  if (targets == nullptr) {
    return Bad(source, "target_modules",
               "is missing or null; list the adapted modules (PEFT would guess them from the "
               "architecture)");
  }
  if (targets->is_string()) {
    c.target_modules_regex = targets->get<std::string>();
  } else if (targets->is_array()) {
    for (const Json& t : *targets) {
      if (!t.is_string()) {
        return Bad(source, "target_modules", absl::StrCat("holds ", t.dump(), ", expected names"));
      }
      c.target_modules.push_back(t.get<std::string>());
    }
  } else {
    return Bad(source, "target_modules",
               absl::StrCat("is ", targets->dump(), ", expected a list of names or a regex string"));
  }

  if (const Json* init = Find(root, "init_lora_weights")) {
    if (init->is_boolean()) {
      c.init_lora_weights = init->get<bool>();
    } else if (init->is_string()) {
      c.init_lora_weights = init->get<std::string>();
    } else {
      return Bad(source, "init_lora_weights",
                 absl::StrCat("is ", init->dump(), ", expected true/false or an init name"));
    }
  }

  // Features that change what the weights mean.
  ST_ASSIGN_OR_RETURN(const std::string bias, GetString(root, "bias", source));
  if (!bias.empty() && bias != "none") {
    return Unsupported(source, "bias", absl::StrCat("is \"", bias, "\" (trained biases)"));
  }
  for (const char* key : {"use_dora", "fan_in_fan_out", "lora_bias", "modules_to_save",
                          "layers_to_transform", "layers_pattern", "exclude_modules",
                          "layer_replication", "alora_invocation_tokens", "target_parameters",
                          "trainable_token_indices", "use_bdlora", "monteclora_config",
                          "arrow_config"}) {
    const Json* v = Find(root, key);
    if (!IsUnset(v)) return Unsupported(source, key, absl::StrCat("is ", v->dump()));
  }

  if (const Json* kasa = Find(root, "kasa_config")) {
    if (!kasa->is_object()) {
      return Bad(source, "kasa_config", absl::StrCat("is ", kasa->dump(), ", expected an object"));
    }
    PeftKasaConfig k;
    ST_ASSIGN_OR_RETURN(const std::optional<double> beta, GetNumber(*kasa, "beta", source));
    ST_ASSIGN_OR_RETURN(const std::optional<double> gamma, GetNumber(*kasa, "gamma", source));
    k.beta = beta.value_or(k.beta);
    k.gamma = gamma.value_or(k.gamma);
    c.kasa = k;
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    const Json* p = Find(root, key);
    if (p == nullptr) continue;
    if (!p->is_object()) {
      return Bad(source, key, absl::StrCat("is ", p->dump(), ", expected an object {pattern: value}"));
    }
    for (auto it = p->begin(); it != p->end(); ++it) {
      const std::string field = absl::StrCat(key, ".", it.key());
      if (absl::string_view(key) == "rank_pattern") {
        if (!it.value().is_number_integer()) {
          return Bad(source, field, absl::StrCat("is ", it.value().dump(), ", expected an integer rank"));
        }
        c.rank_pattern.emplace_back(it.key(), it.value().get<int64_t>());
      } else {
        if (!it.value().is_number()) {
          return Bad(source, field, absl::StrCat("is ", it.value().dump(), ", expected a number"));
        }
        c.alpha_pattern.emplace_back(it.key(), it.value().get<double>());
      }
    }
  }
  ST_RETURN_IF_ERROR(ValidateConfig(c, source));
  return c;
}

absl::Status ValidatePeftAdapter(const PeftAdapter& adapter, absl::string_view source) {
  ST_RETURN_IF_ERROR(ValidateConfig(adapter.config, source));
  return ValidateModules(adapter, source);
}

absl::Status CheckPeftAdapterAgainstModel(const PeftAdapter& adapter, const ModelConfig& model,
                                          absl::string_view source) {
  const auto shapes = ProjectionShapes(model);
  for (const auto& [module, w] : adapter.modules) {
    const auto it = shapes.find(module);
    if (it == shapes.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": module '", module, "' is not a projection of the ", model.num_hidden_layers,
          "-layer ", model.model_type,
          " model (model.layers.<i>.self_attn.{q,k,v,o}_proj or mlp.{gate,up,down}_proj); "
          "use the adapter with the base model it was trained on"));
    }
    const auto [in, out] = it->second;
    if (w.lora_a.rank() != 2 || w.lora_a.dim(1) != in) {
      return BadTensor(source, module, kSuffixA,
                       absl::StrCat("has shape ", ShapeToString(w.lora_a.shape()), ", but the model's ",
                                    module, " has ", in, " input features (A is [r, ", in, "])"));
    }
    if (w.lora_b.rank() != 2 || w.lora_b.dim(0) != out) {
      return BadTensor(source, module, kSuffixB,
                       absl::StrCat("has shape ", ShapeToString(w.lora_b.shape()), ", but the model's ",
                                    module, " has ", out, " output features (B is [", out, ", r])"));
    }
  }
  return absl::OkStatus();
}

absl::Status WritePeftAdapter(const std::string& dir, const PeftAdapter& adapter,
                              const PeftWriteOptions& options) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("writing the PEFT adapter ", dir, ": dtype ",
                                                   DTypeName(options.dtype),
                                                   " is not offered; use f32 or bf16"));
  }
  const std::string weights_path = JoinPath(dir, kPeftWeightsFile);
  const std::string config_path = JoinPath(dir, kPeftConfigFile);
  ST_RETURN_IF_ERROR(ValidatePeftAdapter(adapter, dir));
  ST_ASSIGN_OR_RETURN(const std::string config_text, SerializePeftAdapterConfig(adapter.config));

  std::map<std::string, Tensor> tensors;
  const auto add = [&](const std::string& key, const Tensor& t) {
    tensors[key] = t.dtype() == options.dtype ? t : t.To(options.dtype);
  };
  for (const auto& [module, w] : adapter.modules) {
    const std::string key = absl::StrCat(kKeyPrefix, module);
    add(key + kSuffixA, w.lora_a);
    add(key + kSuffixB, w.lora_b);
    if (w.lora_diag.defined()) add(key + kSuffixDiag, w.lora_diag);
  }
  ST_RETURN_IF_ERROR(CreateDirectoryDurably(dir));
  ST_RETURN_IF_ERROR(WriteSafetensors(weights_path, tensors, {{"format", "pt"}}));
  return WriteFileAtomically(config_path, config_text);
}

absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& dir) {
  const std::string config_path = JoinPath(dir, kPeftConfigFile);
  const std::string weights_path = JoinPath(dir, kPeftWeightsFile);
  if (!FileExists(config_path)) {
    return absl::NotFoundError(absl::StrCat(config_path,
                                            ": not found; pass a PEFT adapter directory "
                                            "(adapter_config.json + adapter_model.safetensors)"));
  }
  if (!FileExists(weights_path)) {
    if (FileExists(JoinPath(dir, "adapter_model.bin"))) {
      return absl::UnimplementedError(absl::StrCat(
          dir, ": holds a pickled adapter_model.bin, which sigmatune does not read; re-save it with "
               "PEFT's save_pretrained(safe_serialization=True)"));
    }
    return absl::NotFoundError(absl::StrCat(weights_path, ": not found; the adapter directory is incomplete"));
  }
  PeftAdapter adapter;
  ST_ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(config_path));
  ST_ASSIGN_OR_RETURN(adapter.config, ParsePeftAdapterConfig(text, config_path));

  ST_ASSIGN_OR_RETURN(const SafetensorsReader reader, SafetensorsReader::Open(weights_path));
  for (const SafetensorsEntry& e : reader.entries()) {
    const std::string& key = e.name;
    const auto unexpected = [&](absl::string_view what, bool unsupported) {
      const std::string msg = absl::StrCat(weights_path, ": tensor '", key, "' ", what);
      return unsupported ? absl::UnimplementedError(msg) : absl::InvalidArgumentError(msg);
    };
    if (!absl::StartsWith(key, kKeyPrefix)) {
      return unexpected(absl::StrCat("does not start with \"", kKeyPrefix,
                                     "\"; not a PEFT LoRA weight"),
                        false);
    }
    std::string module;
    Tensor PeftModuleWeights::*field = nullptr;
    for (const auto& [suffix, member] :
         {std::pair<const char*, Tensor PeftModuleWeights::*>{kSuffixA, &PeftModuleWeights::lora_a},
          {kSuffixB, &PeftModuleWeights::lora_b},
          {kSuffixDiag, &PeftModuleWeights::lora_diag}}) {
      if (absl::EndsWith(key, suffix)) {
        module = key.substr(sizeof(kKeyPrefix) - 1,
                            key.size() - (sizeof(kKeyPrefix) - 1) - std::strlen(suffix));
        field = member;
        break;
      }
    }
    if (field == nullptr) {
      if (absl::StrContains(key, "lora_magnitude_vector")) {
        return unexpected("is a DoRA magnitude vector; DoRA adapters are not supported", true);
      }
      if (absl::StrContains(key, "lora_embedding_")) {
        return unexpected("is an embedding LoRA factor; embedding adapters are not supported", true);
      }
      return unexpected(
          "is not a lora_A/lora_B weight (or KaSA lora_diag); sigmatune loads plain LoRA factors "
          "only",
          true);
    }
    if (module.empty()) return unexpected("names no module", false);
    if (field == &PeftModuleWeights::lora_diag && !adapter.config.kasa.has_value()) {
      return unexpected(absl::StrCat("is a KaSA diagonal but ", config_path,
                                     " has no kasa_config; the adapter is inconsistent"),
                        false);
    }
    if (e.dtype != SafetensorsDType::kF32 && e.dtype != SafetensorsDType::kBF16 &&
        e.dtype != SafetensorsDType::kF16) {
      return unexpected(absl::StrCat("has dtype ", SafetensorsDTypeName(e.dtype),
                                     "; LoRA factors must be F32, BF16 or F16"),
                        false);
    }
    ST_ASSIGN_OR_RETURN(const Tensor view, reader.GetTensor(key));
    adapter.modules[module].*field = view.To(DType::kF32);
  }
  for (const auto& [module, w] : adapter.modules) {
    for (const auto& [suffix, t] : {std::pair<const char*, const Tensor*>{kSuffixA, &w.lora_a},
                                    {kSuffixB, &w.lora_b}}) {
      if (!t->defined()) {
        return absl::InvalidArgumentError(absl::StrCat(
            weights_path, ": tensor '", kKeyPrefix, module, suffix, "' is missing (module '",
            module, "' has only part of its LoRA factors)"));
      }
    }
  }
  ST_RETURN_IF_ERROR(ValidateModules(adapter, weights_path));
  return adapter;
}

absl::Status WriteSigmatuneAdapterState(const std::string& dir, const SigmatuneAdapterState& state) {
  const std::string path = JoinPath(dir, kSigmatuneAdapterStateFile);
  for (const auto& [name, t] : state.tensors) {
    if (!t.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": state tensor '", name, "' is undefined; pass a CPU tensor"));
    }
  }
  ST_RETURN_IF_ERROR(CreateDirectoryDurably(dir));
  std::map<std::string, std::string> metadata = state.metadata;
  metadata.emplace("format", "pt");
  return WriteSafetensors(path, state.tensors, metadata);
}

absl::StatusOr<SigmatuneAdapterState> ReadSigmatuneAdapterState(const std::string& dir) {
  const std::string path = JoinPath(dir, kSigmatuneAdapterStateFile);
  if (!FileExists(path)) {
    return absl::NotFoundError(absl::StrCat(path, ": not found; this adapter directory has no "
                                                  "sigmatune state (plain PEFT adapter)"));
  }
  ST_ASSIGN_OR_RETURN(const SafetensorsReader reader, SafetensorsReader::Open(path));
  SigmatuneAdapterState state;
  state.metadata = reader.metadata();
  for (const std::string& name : reader.names()) {
    ST_ASSIGN_OR_RETURN(const Tensor view, reader.GetTensor(name));
    state.tensors[name] = view.Contiguous();
  }
  return state;
}

}  // namespace sigmatune::formats
