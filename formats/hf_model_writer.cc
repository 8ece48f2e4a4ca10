#include "formats/hf_model_writer.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formats/atomic_file.h"
#include "formats/safetensors.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::formats {
namespace {

using Json = nlohmann::json;  // std::map-backed: keys come out sorted

absl::Status BadConfig(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("writing config.json: field '", field, "' ", what,
                                                 "; fix the ModelConfig before exporting"));
}

// What ParseModelConfig would reject, so that every file we write reads back.
absl::Status ValidateForWrite(const ModelConfig& c) {
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    return BadConfig("model_type", absl::StrCat("is \"", c.model_type,
                                                "\"; sigmatune writes llama, mistral or qwen2"));
  }
  const std::pair<const char*, int64_t> sizes[] = {
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings}};
  for (const auto& [field, v] : sizes) {
    if (v <= 0 || v > (int64_t{1} << 31)) {
      return BadConfig(field, absl::StrCat("is ", v, ", expected a positive size up to 2^31"));
    }
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return BadConfig("num_key_value_heads",
                     absl::StrCat("is ", c.num_key_value_heads, ", which does not divide ",
                                  c.num_attention_heads, " attention heads"));
  }
  if (c.head_dim % 2 != 0) return BadConfig("head_dim", absl::StrCat("is ", c.head_dim, ", not even"));
  if (!(c.rms_norm_eps > 0 && c.rms_norm_eps < 1)) {
    return BadConfig("rms_norm_eps", absl::StrCat("is ", c.rms_norm_eps, ", expected (0, 1)"));
  }
  if (!(c.rope.theta > 0)) return BadConfig("rope_theta", "must be positive");
  if (c.rope.type == RopeType::kLlama3) {
    if (!(c.rope.factor > 0) || !(c.rope.low_freq_factor > 0) ||
        !(c.rope.high_freq_factor > c.rope.low_freq_factor) ||
        c.rope.original_max_position_embeddings <= 0) {
      return BadConfig("rope_scaling",
                       "has llama3 factors that are not positive with high_freq_factor > "
                       "low_freq_factor, or no original_max_position_embeddings");
    }
  }
  if (c.model_type == "qwen2") {
    if (!c.qkv_bias || c.o_bias) {
      return BadConfig("attention_bias",
                       "must be q/k/v biases without an o_proj bias for qwen2 (Qwen2Attention)");
    }
  } else if (c.qkv_bias != c.o_bias) {
    return BadConfig("attention_bias",
                     absl::StrCat("cannot express q/k/v biases ", c.qkv_bias ? "with" : "without",
                                  " an o_proj bias ", c.qkv_bias ? "missing" : "present",
                                  " for ", c.model_type, " (one flag covers q, k, v and o)"));
  }
  if (c.sliding_window.has_value() && *c.sliding_window <= 0) {
    return BadConfig("sliding_window", "must be positive when set");
  }
  if (c.eos_token_ids.size() > 1024) return BadConfig("eos_token_id", "holds over 1024 ids");
  return absl::OkStatus();
}

std::string DefaultArchitecture(const std::string& model_type) {
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  return "LlamaForCausalLM";
}

// The torch_dtype name of a kernels dtype.
std::optional<std::string> TorchDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    default:
      return std::nullopt;
  }
}

}  // namespace

absl::StatusOr<std::string> SerializeModelConfig(const ModelConfig& c) {
  ST_RETURN_IF_ERROR(ValidateForWrite(c));
  Json j = Json::object();
  j["architectures"] = c.architectures.empty()
                           ? Json::array({DefaultArchitecture(c.model_type)})
                           : Json(c.architectures);
  if (c.model_type != "qwen2") j["attention_bias"] = c.qkv_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["bos_token_id"] = c.bos_token_id ? Json(*c.bos_token_id) : Json(nullptr);
  if (c.eos_token_ids.empty()) {
    j["eos_token_id"] = nullptr;
  } else if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else {
    j["eos_token_id"] = c.eos_token_ids;
  }
  j["pad_token_id"] = c.pad_token_id ? Json(*c.pad_token_id) : Json(nullptr);
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["model_type"] = c.model_type;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope.theta;
  if (c.rope.type == RopeType::kLlama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope.factor},
                         {"low_freq_factor", c.rope.low_freq_factor},
                         {"high_freq_factor", c.rope.high_freq_factor},
                         {"original_max_position_embeddings",
                          c.rope.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (c.sliding_window.has_value()) {
    j["sliding_window"] = *c.sliding_window;
  } else if (c.model_type != "llama") {
    j["sliding_window"] = nullptr;
  }
  if (c.model_type == "qwen2") j["use_sliding_window"] = c.sliding_window.has_value();
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (!c.dtype.empty()) j["torch_dtype"] = c.dtype;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  return j.dump(2);
}

absl::Status WriteHfCheckpoint(const std::string& dir, const ModelConfig& config,
                               const std::map<std::string, Tensor>& tensors) {
  const std::string weights_path = absl::StrCat(dir, "/model.safetensors");
  const std::string config_path = absl::StrCat(dir, "/config.json");
  std::map<std::string, Shape> shapes;
  std::optional<DType> dtype;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat(weights_path, ": tensor '", name, "' is undefined; pass every weight"));
    }
    if (!t.device().is_cpu()) {
      return absl::FailedPreconditionError(absl::StrCat(weights_path, ": tensor '", name, "' is ",
                                                        t.DebugString(),
                                                        "; download the weights to the CPU first"));
    }
    if (!TorchDTypeName(t.dtype()).has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": tensor '", name,
                                                     "' has dtype ", DTypeName(t.dtype()),
                                                     "; checkpoints hold f32, bf16 or f16 weights"));
    }
    if (dtype.has_value() && *dtype != t.dtype()) {
      return absl::InvalidArgumentError(absl::StrCat(
          weights_path, ": tensor '", name, "' is ", DTypeName(t.dtype()), " but others are ",
          DTypeName(*dtype), "; convert every weight to one dtype (config.json has one torch_dtype)"));
    }
    dtype = t.dtype();
    shapes[name] = t.shape();
  }
  ST_RETURN_IF_ERROR(CheckCheckpointAgainstConfig(config, shapes, weights_path));
  ModelConfig written = config;
  written.dtype = *TorchDTypeName(*dtype);  // the check guarantees at least the embeddings
  ST_ASSIGN_OR_RETURN(const std::string config_text, SerializeModelConfig(written));

  ST_RETURN_IF_ERROR(CreateDirectoryDurably(dir));
  ST_RETURN_IF_ERROR(WriteSafetensors(weights_path, tensors, {{"format", "pt"}}));
  return WriteFileAtomically(config_path, config_text);
}

absl::StatusOr<std::map<std::string, Tensor>> HfTensorsFromLlama(const model::LlamaConfig& config,
                                                                 const model::LlamaWeights& weights) {
  std::map<std::string, Tensor> out;
  const auto add = [&](const std::string& name, const Tensor& t) -> absl::Status {
    if (!t.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("exporting the model: weight '", name, "' is missing"));
    }
    if (!t.device().is_cpu()) {
      return absl::FailedPreconditionError(
          absl::StrCat("exporting the model: weight '", name, "' is ", t.DebugString(),
                       "; Download() it to the CPU first"));
    }
    out[name] = t;
    return absl::OkStatus();
  };
  if (static_cast<int64_t>(weights.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("exporting the model: ", weights.layers.size(),
                                                   " layers of weights for a ", config.num_layers,
                                                   "-layer config"));
  }
  ST_RETURN_IF_ERROR(add("model.embed_tokens.weight", weights.embed));
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const model::LayerWeights& w = weights.layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    ST_RETURN_IF_ERROR(add(p + "input_layernorm.weight", w.input_norm));
    ST_RETURN_IF_ERROR(add(p + "post_attention_layernorm.weight", w.post_norm));
    for (model::LinearKind kind : model::kAllLinears) {
      ST_RETURN_IF_ERROR(add(model::LinearName(l, kind) + ".weight", w.linear(kind)));
    }
  }
  ST_RETURN_IF_ERROR(add("model.norm.weight", weights.final_norm));
  if (config.embeddings == model::Embeddings::kSeparate) {
    ST_RETURN_IF_ERROR(add("lm_head.weight", weights.lm_head));
  }
  return out;
}

absl::StatusOr<ModelConfig> ModelConfigFromLlama(const model::LlamaConfig& config,
                                                 int64_t max_position_embeddings) {
  if (config.rope.rotary_dim != 0 && config.rope.rotary_dim != config.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "exporting the model: RoPE rotates ", config.rope.rotary_dim, " of ", config.head_dim,
        " head dimensions, which a llama config.json cannot express"));
  }
  if (max_position_embeddings < 1) {
    return absl::InvalidArgumentError(absl::StrCat("exporting the model: max_position_embeddings is ",
                                                   max_position_embeddings, "; pass the context length"));
  }
  ModelConfig c;
  c.model_type = "llama";
  c.architectures = {"LlamaForCausalLM"};
  c.layout = ConfigLayout::kTransformersV4;
  c.hidden_size = config.hidden_size;
  c.intermediate_size = config.intermediate_size;
  c.num_hidden_layers = config.num_layers;
  c.num_attention_heads = config.num_heads;
  c.num_key_value_heads = config.num_kv_heads;
  c.head_dim = config.head_dim;
  c.vocab_size = config.vocab_size;
  c.max_position_embeddings = max_position_embeddings;
  c.rms_norm_eps = config.rms_norm_eps;
  c.rope.theta = config.rope.theta;
  if (config.rope.scaling == kernels::RopeScaling::kLlama3) {
    c.rope.type = RopeType::kLlama3;
    c.rope.factor = config.rope.factor;
    c.rope.low_freq_factor = config.rope.low_freq_factor;
    c.rope.high_freq_factor = config.rope.high_freq_factor;
    c.rope.original_max_position_embeddings = config.rope.original_max_position_embeddings;
  }
  c.tie_word_embeddings = config.embeddings == model::Embeddings::kTied;
  return c;
}

}  // namespace sigmatune::formats
