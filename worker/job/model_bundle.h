// The base model of a job with everything around it that the phases need: the weights on a
// backend, the tokenizer, the chat template, the special ids and the numbers the exported
// config.json repeats.
//
//   HF directory: config.json (LoadLlamaFromHfDirectory), tokenizer.json, the chat template from
//                 tokenizer_config.json's "chat_template" (a string) or chat_template.jinja;
//                 eos ids from config.json (else tokenizer_config.json's eos_token).
//   GGUF file:    LoadLlamaFromGguf, the tokenizer and chat template from the tokenizer.ggml.* and
//                 tokenizer.chat_template metadata.
// A model without a chat template loads (chat/sharegpt data then fails with a clear error); a chat
// template the renderer does not know is an error naming the file (never guessed).
// The fingerprint is a content hash of the config and every weight (formats/covariance_file keys
// and checkpoint identities use it), computed on demand.
#ifndef SIGMATUNE_WORKER_JOB_MODEL_BUNDLE_H_
#define SIGMATUNE_WORKER_JOB_MODEL_BUNDLE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/model/backend.h"
#include "kernels/model/llama.h"
#include "worker/data/tokenizer.h"
#include "worker/data/tokenizer_chat_template.h"

namespace sigmatune::job {

struct ModelBundle {
  std::string path;
  model::LlamaConfig config;
  model::LlamaWeights weights;  // on the backend
  data::Tokenizer tokenizer;
  std::optional<data::ChatTemplate> chat_template;
  std::vector<int32_t> bos_ids;  // put before each sample (empty when the tokenizer adds none)
  int32_t eos_id = -1;           // appended to text samples
  std::vector<int32_t> stop_ids;  // generation stops at any of these (eos ids + end-of-turn)
  // For the exported config.json.
  int64_t max_position_embeddings = 0;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;
};

absl::StatusOr<ModelBundle> LoadModelBundle(const std::string& path, model::ModelBackend& backend);

// Content hash of config and weights (32 hex digits). Weights are downloaded to the host in
// pieces when they live on a device.
absl::StatusOr<std::string> ModelFingerprint(const ModelBundle& bundle, model::ModelBackend& backend);

}  // namespace sigmatune::job

#endif  // SIGMATUNE_WORKER_JOB_MODEL_BUNDLE_H_
