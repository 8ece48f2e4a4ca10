// Hugging Face config.json of LLaMA-family causal LMs (llama, mistral, qwen2; SmolLM is llama)
// (../shared/FORMATS.md §2), in both layouts transformers writes:
//   v4: "rope_theta", "rope_scaling" ({"rope_type"|"type": ..., ...} or null), "torch_dtype"
//   v5: "rope_parameters" ({"rope_type": ..., "rope_theta": ..., ...}), "dtype"
// and the check of a checkpoint's tensor names and shapes against a config.
//
// Contract:
//  - Parsing never throws and never aborts on bad input: every problem is an InvalidArgument
//    (or NotFound for a missing file) naming the file, the field and what to change.
//  - Defaults follow transformers: num_key_value_heads = num_attention_heads, head_dim =
//    hidden_size / num_attention_heads, rope_theta 10000, rms_norm_eps 1e-6, tie_word_embeddings
//    false (qwen2: false too), attention_bias / mlp_bias false. Qwen2 always has q/k/v biases and
//    no o_proj bias; llama/mistral's attention_bias puts biases on q, k, v and o.
//  - Supported rope types: "default" (also a null/absent scaling) and "llama3"; the others
//    (linear, dynamic, yarn, longrope, ...) are rejected as Unimplemented naming the field.
//  - Shapes are checked for consistency: positive sizes, hidden_size divisible by heads when
//    head_dim is implicit, heads divisible by kv heads, even head_dim (RoPE rotates pairs).
//  - Unknown keys are ignored (transformers writes many that do not affect the weights).
#ifndef SIGMATUNE_FORMATS_HF_CONFIG_H_
#define SIGMATUNE_FORMATS_HF_CONFIG_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/base/tensor.h"

namespace sigmatune::formats {

enum class RopeType { kDefault, kLlama3 };

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  // llama3 only.
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

// Which layout a config.json was written in.
enum class ConfigLayout { kTransformersV4, kTransformersV5 };

struct ModelConfig {
  std::string model_type;                  // "llama", "mistral", "qwen2"
  std::vector<std::string> architectures;  // e.g. {"LlamaForCausalLM"}; may be empty
  ConfigLayout layout = ConfigLayout::kTransformersV5;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q/k/v_proj.bias tensors
  bool o_bias = false;    // o_proj.bias
  bool mlp_bias = false;  // gate/up/down_proj.bias
  std::optional<int64_t> sliding_window;  // mistral/qwen2, when set and used
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // an int or a list in the file
  std::optional<int64_t> pad_token_id;
  std::string dtype;  // "bfloat16", "float32", ...; empty when absent
};

// Parses config.json text; `source` names the file in errors.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source);
// Reads and parses a config.json file.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// The tensors (HF LLaMA naming) a checkpoint of `config` must hold, with their shapes.
// lm_head.weight is absent when the embeddings are tied.
std::map<std::string, Shape> ExpectedTensorShapes(const ModelConfig& config);

// Checks a checkpoint's tensor shapes (e.g. SafetensorsReader/ShardedCheckpoint::TensorShapes)
// against `config`: every expected tensor present with its shape; no unexpected tensor except the
// ignorable ones (rotary_emb.inv_freq buffers; lm_head.weight of the embedding's shape when tied).
// InvalidArgument naming `source`, the tensor, its shape and the expected shape.
absl::Status CheckCheckpointAgainstConfig(const ModelConfig& config,
                                          const std::map<std::string, Shape>& tensors,
                                          absl::string_view source);

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_HF_CONFIG_H_
