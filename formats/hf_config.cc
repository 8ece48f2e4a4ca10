#include "formats/hf_config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formats/json_util.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::formats {
namespace {

using nlohmann::json;

constexpr int64_t kMaxSize = int64_t{1} << 31;  // no real model dimension is larger
constexpr uint64_t kMaxConfigBytes = 16 << 20;
constexpr int kMaxDepth = 32;

enum class Presence { kRequired, kOptional };

// Field access with errors that name the file and the field.
class Fields {
 public:
  Fields(const json& root, absl::string_view source) : root_(root), source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field '", field, "' ", what,
                     "; fix config.json (see FORMATS.md §2 for the fields we read)"));
  }

  // nullptr when absent or null.
  const json* Find(const json& obj, absl::string_view field) const {
    const auto it = obj.find(std::string(field));
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<std::optional<int64_t>> Int(const json& obj, absl::string_view field,
                                             Presence presence, absl::string_view path) const {
    const json* v = Find(obj, field);
    if (v == nullptr) {
      if (presence == Presence::kRequired) return Error(path, "is missing");
      return std::optional<int64_t>();
    }
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Error(path, "is too large");
      return std::optional<int64_t>(static_cast<int64_t>(u));
    }
    if (v->is_number_integer()) return std::optional<int64_t>(v->get<int64_t>());
    return Error(path, absl::StrCat("is ", v->dump(), ", expected an integer"));
  }

  // A positive dimension no larger than kMaxSize.
  absl::StatusOr<int64_t> Size(absl::string_view field) const {
    ST_ASSIGN_OR_RETURN(std::optional<int64_t> v, Int(root_, field, Presence::kRequired, field));
    if (*v <= 0 || *v > kMaxSize) {
      return Error(field, absl::StrCat("is ", *v, ", expected a positive size up to 2^31"));
    }
    return *v;
  }

  absl::StatusOr<double> Number(const json& obj, absl::string_view field, Presence presence,
                                double fallback, absl::string_view path) const {
    const json* v = Find(obj, field);
    if (v == nullptr) {
      if (presence == Presence::kRequired) return Error(path, "is missing");
      return fallback;
    }
    if (!v->is_number()) return Error(path, absl::StrCat("is ", v->dump(), ", expected a number"));
    return v->get<double>();
  }

  absl::StatusOr<bool> Bool(absl::string_view field, bool fallback) const {
    const json* v = Find(root_, field);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) return Error(field, absl::StrCat("is ", v->dump(), ", expected true/false"));
    return v->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> String(const json& obj, absl::string_view field,
                                                    absl::string_view path) const {
    const json* v = Find(obj, field);
    if (v == nullptr) return std::optional<std::string>();
    if (!v->is_string()) return Error(path, absl::StrCat("is ", v->dump(), ", expected a string"));
    return std::optional<std::string>(v->get<std::string>());
  }

  // An int, a list of ints, or null.
  absl::StatusOr<std::vector<int64_t>> TokenIds(absl::string_view field) const {
    const json* v = Find(root_, field);
    std::vector<int64_t> out;
    if (v == nullptr) return out;
    const auto one = [&](const json& x) -> absl::Status {
      if (x.is_number_unsigned() && x.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)) {
        out.push_back(static_cast<int64_t>(x.get<uint64_t>()));
      } else if (x.is_number_integer()) {
        out.push_back(x.get<int64_t>());
      } else {
        return Error(field, absl::StrCat("holds ", x.dump(), ", expected a token id (an integer)"));
      }
      return absl::OkStatus();
    };
    if (v->is_array()) {
      for (const json& x : *v) ST_RETURN_IF_ERROR(one(x));
    } else {
      ST_RETURN_IF_ERROR(one(*v));
    }
    return out;
  }

  const json& root() const { return root_; }

 private:
  const json& root_;
  absl::string_view source_;
};


// Rope settings from the v5 "rope_parameters" or the v4 "rope_theta" + "rope_scaling".
absl::Status ParseRope(const Fields& f, ModelConfig* config) {
  const json& root = f.root();
  const json* params = f.Find(root, "rope_parameters");
  const json* scaling = nullptr;
  std::string prefix;
  if (params != nullptr) {
    config->layout = ConfigLayout::kTransformersV5;
    if (!params->is_object()) return f.Error("rope_parameters", "is not an object");
    scaling = params;
    prefix = "rope_parameters.";
    ST_ASSIGN_OR_RETURN(config->rope.theta, f.Number(*params, "rope_theta", Presence::kOptional,
                                                     10000.0, "rope_parameters.rope_theta"));
  } else {
    config->layout = ConfigLayout::kTransformersV4;
    ST_ASSIGN_OR_RETURN(config->rope.theta,
                        f.Number(root, "rope_theta", Presence::kOptional, 10000.0, "rope_theta"));
    scaling = f.Find(root, "rope_scaling");
    if (scaling != nullptr && !scaling->is_object()) {
      return f.Error("rope_scaling", "is not an object or null");
    }
    prefix = "rope_scaling.";
  }
  if (!(config->rope.theta > 0)) {
    return f.Error(absl::StrCat(params ? prefix : "", "rope_theta"), "must be positive");
  }
  if (scaling == nullptr) return absl::OkStatus();

  ST_ASSIGN_OR_RETURN(std::optional<std::string> type,
                      f.String(*scaling, "rope_type", absl::StrCat(prefix, "rope_type")));
  ST_ASSIGN_OR_RETURN(std::optional<std::string> old_type,
                      f.String(*scaling, "type", absl::StrCat(prefix, "type")));
  if (type && old_type && *type != *old_type) {
    return f.Error(absl::StrCat(prefix, "rope_type"),
                   absl::StrCat("is '", *type, "' but '", prefix, "type' is '", *old_type, "'"));
  }
  const std::string name = type ? *type : old_type ? *old_type : "default";
  if (name == "default") return absl::OkStatus();
  if (name != "llama3") {
    return absl::UnimplementedError(absl::StrCat(
        f.Error(absl::StrCat(prefix, "rope_type"), "").message(), " (rope type '", name,
        "' is not supported; supported: default, llama3)"));
  }
  RopeConfig& rope = config->rope;
  rope.type = RopeType::kLlama3;
  ST_ASSIGN_OR_RETURN(rope.factor, f.Number(*scaling, "factor", Presence::kRequired, 0,
                                            absl::StrCat(prefix, "factor")));
  ST_ASSIGN_OR_RETURN(rope.low_freq_factor,
                      f.Number(*scaling, "low_freq_factor", Presence::kRequired, 0,
                               absl::StrCat(prefix, "low_freq_factor")));
  ST_ASSIGN_OR_RETURN(rope.high_freq_factor,
                      f.Number(*scaling, "high_freq_factor", Presence::kRequired, 0,
                               absl::StrCat(prefix, "high_freq_factor")));
  ST_ASSIGN_OR_RETURN(std::optional<int64_t> orig,
                      f.Int(*scaling, "original_max_position_embeddings", Presence::kRequired,
                            absl::StrCat(prefix, "original_max_position_embeddings")));
  rope.original_max_position_embeddings = *orig;
  if (!(rope.factor > 0)) return f.Error(absl::StrCat(prefix, "factor"), "must be positive");
  if (!(rope.low_freq_factor > 0) || !(rope.high_freq_factor > rope.low_freq_factor)) {
    return f.Error(absl::StrCat(prefix, "high_freq_factor"),
                   "must be greater than low_freq_factor, which must be positive");
  }
  if (*orig <= 0) {
    return f.Error(absl::StrCat(prefix, "original_max_position_embeddings"), "must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  if (!JsonNestingWithin(json_text, kMaxDepth)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": JSON nested deeper than ", kMaxDepth,
                                                   "; not a config.json"));
  }
  const json root = json::parse(json_text.begin(), json_text.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": not a JSON object; pass the model's config.json written by transformers"));
  }
  const Fields f(root, source);
  ModelConfig c;

  ST_ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                      f.String(root, "model_type", "model_type"));
  if (!model_type) return f.Error("model_type", "is missing");
  c.model_type = *model_type;
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    return absl::UnimplementedError(absl::StrCat(
        source, ": field 'model_type' is '", c.model_type,
        "', which is not supported; supported: llama (also SmolLM), mistral, qwen2"));
  }
  if (const json* archs = f.Find(root, "architectures")) {
    if (!archs->is_array()) return f.Error("architectures", "is not a list of strings");
    for (const json& a : *archs) {
      if (!a.is_string()) return f.Error("architectures", "is not a list of strings");
      c.architectures.push_back(a.get<std::string>());
    }
  }

  ST_ASSIGN_OR_RETURN(c.hidden_size, f.Size("hidden_size"));
  ST_ASSIGN_OR_RETURN(c.intermediate_size, f.Size("intermediate_size"));
  ST_ASSIGN_OR_RETURN(c.num_hidden_layers, f.Size("num_hidden_layers"));
  ST_ASSIGN_OR_RETURN(c.num_attention_heads, f.Size("num_attention_heads"));
  ST_ASSIGN_OR_RETURN(c.vocab_size, f.Size("vocab_size"));
  ST_ASSIGN_OR_RETURN(c.max_position_embeddings, f.Size("max_position_embeddings"));

  if (f.Find(root, "num_key_value_heads") != nullptr) {
    ST_ASSIGN_OR_RETURN(c.num_key_value_heads, f.Size("num_key_value_heads"));
  } else {
    c.num_key_value_heads = c.num_attention_heads;
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return f.Error("num_key_value_heads",
                   absl::StrCat("is ", c.num_key_value_heads,
                                ", which does not divide num_attention_heads (",
                                c.num_attention_heads, ")"));
  }
  if (f.Find(root, "head_dim") != nullptr) {
    ST_ASSIGN_OR_RETURN(c.head_dim, f.Size("head_dim"));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return f.Error("hidden_size",
                     absl::StrCat("is ", c.hidden_size, ", not divisible by num_attention_heads (",
                                  c.num_attention_heads, ") and no explicit head_dim is given"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) {
    return f.Error("head_dim", absl::StrCat("is ", c.head_dim, "; RoPE needs an even head_dim"));
  }

  ST_ASSIGN_OR_RETURN(c.rms_norm_eps,
                      f.Number(root, "rms_norm_eps", Presence::kOptional, 1e-6, "rms_norm_eps"));
  if (!(c.rms_norm_eps > 0) || c.rms_norm_eps >= 1) {
    return f.Error("rms_norm_eps", "must be in (0, 1)");
  }
  ST_RETURN_IF_ERROR(ParseRope(f, &c));

  ST_ASSIGN_OR_RETURN(c.tie_word_embeddings, f.Bool("tie_word_embeddings", false));
  ST_ASSIGN_OR_RETURN(c.mlp_bias, f.Bool("mlp_bias", false));
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2Attention: bias on q/k/v, none on o
    c.o_bias = false;
  } else {
    ST_ASSIGN_OR_RETURN(const bool attention_bias, f.Bool("attention_bias", false));
    c.qkv_bias = c.o_bias = attention_bias;
  }

  ST_ASSIGN_OR_RETURN(std::optional<int64_t> window,
                      f.Int(root, "sliding_window", Presence::kOptional, "sliding_window"));
  ST_ASSIGN_OR_RETURN(const bool use_window, f.Bool("use_sliding_window", c.model_type != "qwen2"));
  if (window && use_window) {
    if (*window <= 0) return f.Error("sliding_window", "must be positive or null");
    c.sliding_window = window;
  }

  ST_ASSIGN_OR_RETURN(std::vector<int64_t> bos, f.TokenIds("bos_token_id"));
  if (bos.size() > 1) return f.Error("bos_token_id", "holds several ids; expected one");
  if (!bos.empty()) c.bos_token_id = bos[0];
  ST_ASSIGN_OR_RETURN(c.eos_token_ids, f.TokenIds("eos_token_id"));
  ST_ASSIGN_OR_RETURN(std::vector<int64_t> pad, f.TokenIds("pad_token_id"));
  if (pad.size() > 1) return f.Error("pad_token_id", "holds several ids; expected one");
  if (!pad.empty()) c.pad_token_id = pad[0];

  ST_ASSIGN_OR_RETURN(std::optional<std::string> dtype, f.String(root, "dtype", "dtype"));
  ST_ASSIGN_OR_RETURN(std::optional<std::string> torch_dtype,
                      f.String(root, "torch_dtype", "torch_dtype"));
  c.dtype = dtype ? *dtype : torch_dtype ? *torch_dtype : "";
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open config.json: ",
                                            std::strerror(errno), "; check the model directory"));
  }
  std::string text;
  char buf[1 << 14];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxConfigBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than ", kMaxConfigBytes, " bytes; not a config.json"));
    }
  }
  return ParseModelConfig(text, path);
}

std::map<std::string, Shape> ExpectedTensorShapes(const ModelConfig& c) {
  const int64_t d = c.hidden_size;
  const int64_t q = c.num_attention_heads * c.head_dim;
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  const int64_t ff = c.intermediate_size;
  std::map<std::string, Shape> out;
  out["model.embed_tokens.weight"] = {c.vocab_size, d};
  out["model.norm.weight"] = {d};
  if (!c.tie_word_embeddings) out["lm_head.weight"] = {c.vocab_size, d};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    out[p + "input_layernorm.weight"] = {d};
    out[p + "post_attention_layernorm.weight"] = {d};
    out[p + "self_attn.q_proj.weight"] = {q, d};
    out[p + "self_attn.k_proj.weight"] = {kv, d};
    out[p + "self_attn.v_proj.weight"] = {kv, d};
    out[p + "self_attn.o_proj.weight"] = {d, q};
    out[p + "mlp.gate_proj.weight"] = {ff, d};
    out[p + "mlp.up_proj.weight"] = {ff, d};
    out[p + "mlp.down_proj.weight"] = {d, ff};
    if (c.qkv_bias) {
      out[p + "self_attn.q_proj.bias"] = {q};
      out[p + "self_attn.k_proj.bias"] = {kv};
      out[p + "self_attn.v_proj.bias"] = {kv};
    }
    if (c.o_bias) out[p + "self_attn.o_proj.bias"] = {d};
    if (c.mlp_bias) {
      out[p + "mlp.gate_proj.bias"] = {ff};
      out[p + "mlp.up_proj.bias"] = {ff};
      out[p + "mlp.down_proj.bias"] = {d};
    }
  }
  return out;
}

absl::Status CheckCheckpointAgainstConfig(const ModelConfig& config,
                                          const std::map<std::string, Shape>& tensors,
                                          absl::string_view source) {
  const std::map<std::string, Shape> expected = ExpectedTensorShapes(config);
  std::vector<std::string> problems;
  for (const auto& [name, shape] : expected) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      problems.push_back(absl::StrCat("tensor '", name, "' is missing (expected shape ",
                                      ShapeToString(shape), ")"));
    } else if (it->second != shape) {
      problems.push_back(absl::StrCat("tensor '", name, "' has shape ", ShapeToString(it->second),
                                      ", expected ", ShapeToString(shape)));
    }
  }
  for (const auto& [name, shape] : tensors) {
    if (expected.count(name) > 0 || absl::EndsWith(name, "rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && config.tie_word_embeddings) {
      const Shape want = {config.vocab_size, config.hidden_size};
      if (shape != want) {
        problems.push_back(absl::StrCat("tensor 'lm_head.weight' has shape ", ShapeToString(shape),
                                        ", expected ", ShapeToString(want)));
      }
      continue;
    }
    problems.push_back(absl::StrCat("unexpected tensor '", name, "' with shape ",
                                    ShapeToString(shape)));
  }
  if (problems.empty()) return absl::OkStatus();
  const size_t shown = std::min<size_t>(problems.size(), 8);
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": the checkpoint does not match config.json (model_type ", config.model_type, ", ",
      config.num_hidden_layers, " layers): ",
      absl::StrJoin(problems.begin(), problems.begin() + shown, "; "),
      problems.size() > shown ? absl::StrCat("; and ", problems.size() - shown, " more") : "",
      "; use the config.json that belongs to these weights"));
}

}  // namespace sigmatune::formats
