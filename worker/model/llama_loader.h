// Loading LLaMA-family checkpoints into kernels/model weights on a backend.
//   HF directory: config.json (transformers v4 or v5 layout) + model.safetensors or a sharded
//         model.safetensors.index.json; tensors checked against the config, converted to the
//         backend's activation dtype. Models with biases (qwen2) or sliding windows are refused.
//   GGUF: llama.* metadata -> LlamaConfig; every tensor dequantised to the backend's activation dtype
//         (f32 on the CPU), q/k rows back in the Hugging Face layout, tied lm_head shared.
// Errors name the file and the tensor (formats/ produces them).
#ifndef SIGMATUNE_WORKER_MODEL_LLAMA_LOADER_H_
#define SIGMATUNE_WORKER_MODEL_LLAMA_LOADER_H_

#include <string>

#include "absl/status/statusor.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"

namespace sigmatune {

struct LoadedLlama {
  model::LlamaConfig config;
  model::LlamaWeights weights;
};

absl::StatusOr<LoadedLlama> LoadLlamaFromHfDirectory(const std::string& dir, model::ModelBackend& backend);
absl::StatusOr<LoadedLlama> LoadLlamaFromGguf(const std::string& path, model::ModelBackend& backend);

}  // namespace sigmatune

#endif  // SIGMATUNE_WORKER_MODEL_LLAMA_LOADER_H_
