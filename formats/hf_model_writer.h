// Writing Hugging Face LLaMA-family checkpoints (../shared/FORMATS.md §1-2): config.json in the
// transformers v4 layout + a single model.safetensors, readable by transformers (v4 and v5),
// vLLM, llama.cpp's convert_hf_to_gguf.py and our own loader (worker/model/llama_loader.h).
//
// Contract:
//  - config.json keys (sorted, two-space indent): architectures (given, else the model type's
//    *ForCausalLM), attention_bias, bos_token_id, eos_token_id (an int, a list when several, null
//    when none), head_dim (always explicit), hidden_act "silu", hidden_size, intermediate_size,
//    max_position_embeddings, mlp_bias, model_type, num_attention_heads, num_hidden_layers,
//    num_key_value_heads, pad_token_id, rms_norm_eps, rope_scaling (null, or the llama3 dict with
//    "rope_type": "llama3"), rope_theta, sliding_window (mistral/qwen2; llama only when set),
//    use_sliding_window (qwen2), tie_word_embeddings, torch_dtype, use_cache true, vocab_size.
//    ParseModelConfig of the text gives back the same ModelConfig, with layout kTransformersV4.
//  - WriteHfCheckpoint checks the tensors against the config (hf_config.h's
//    CheckCheckpointAgainstConfig: names and shapes; lm_head.weight omitted when tied), requires
//    CPU tensors of one floating dtype among f32, bf16, f16 (torch_dtype is set from it), writes
//    model.safetensors (metadata {"format": "pt"}) and then config.json, each atomically
//    (formats/atomic_file.h), into `dir`, created with its parents when missing. Other files in
//    `dir` (tokenizer, generation_config.json) are left alone.
//  - Errors: InvalidArgument naming the file, field or tensor and what to change.
#ifndef SIGMATUNE_FORMATS_HF_MODEL_WRITER_H_
#define SIGMATUNE_FORMATS_HF_MODEL_WRITER_H_

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "formats/hf_config.h"
#include "kernels/base/tensor.h"
#include "kernels/model/llama.h"

namespace sigmatune::formats {

// config.json text for `config` (its `dtype` becomes torch_dtype; omitted when empty).
// InvalidArgument for a config transformers could not express: a model type other than llama,
// mistral, qwen2; llama/mistral with q/k/v biases but no o bias (or the reverse); qwen2 without
// its q/k/v biases or with an o bias; non-positive sizes.
absl::StatusOr<std::string> SerializeModelConfig(const ModelConfig& config);

// Writes `dir`/config.json and `dir`/model.safetensors (see the contract). `tensors` uses the HF
// names (ExpectedTensorShapes(config)).
absl::Status WriteHfCheckpoint(const std::string& dir, const ModelConfig& config,
                               const std::map<std::string, Tensor>& tensors);

// The HF tensor map of a loaded model: model.embed_tokens.weight, model.layers.N.{input_layernorm,
// post_attention_layernorm}.weight, model.layers.N.self_attn.{q,k,v,o}_proj.weight,
// model.layers.N.mlp.{gate,up,down}_proj.weight, model.norm.weight, and lm_head.weight unless
// the embeddings are tied (config.embeddings == kTied). The tensors are the weights themselves (no
// copy). FailedPrecondition naming the tensor when one is not on the CPU (Download it first);
// InvalidArgument when one is missing.
absl::StatusOr<std::map<std::string, Tensor>> HfTensorsFromLlama(const model::LlamaConfig& config,
                                                                 const model::LlamaWeights& weights);

// A llama ModelConfig describing `config` (architectures ["LlamaForCausalLM"], no token ids, no
// dtype: set those on the result; LlamaConfig has no context length, so pass it).
// InvalidArgument for what config.json cannot express (partial rotary dims) or a
// max_position_embeddings < 1.
absl::StatusOr<ModelConfig> ModelConfigFromLlama(const model::LlamaConfig& config,
                                                 int64_t max_position_embeddings);

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_HF_MODEL_WRITER_H_
