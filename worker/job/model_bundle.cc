#include "worker/job/model_bundle.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formats/atomic_file.h"
#include "formats/gguf.h"
#include "formats/gguf_llama.h"
#include "formats/hf_config.h"
#include "kernels/base/fingerprint.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/data/tokenizer_gguf.h"
#include "worker/model/llama_loader.h"

namespace sigmatune::job {
namespace {

void AddStopId(const data::Tokenizer& tokenizer, const char* token, std::vector<int32_t>* ids) {
  const std::optional<int32_t> id = tokenizer.TokenToId(token);
  if (id.has_value() && std::find(ids->begin(), ids->end(), *id) == ids->end()) ids->push_back(*id);
}

// The special ids around samples, from the tokenizer and the model's bos/eos ids.
absl::Status FinishSpecialIds(ModelBundle* bundle) {
  const data::Tokenizer& tokenizer = bundle->tokenizer;
  if (bundle->bos_token_id.has_value()) {
    // The tokenizer's own post-processor says whether BOS belongs before text.
    ST_ASSIGN_OR_RETURN(std::vector<int32_t> probe, tokenizer.Encode("x", data::AddSpecialTokens::kYes));
    if (!probe.empty() && probe.front() == *bundle->bos_token_id) {
      bundle->bos_ids = {static_cast<int32_t>(*bundle->bos_token_id)};
    }
  }
  for (int64_t id : bundle->eos_token_ids) {
    if (std::find(bundle->stop_ids.begin(), bundle->stop_ids.end(), id) == bundle->stop_ids.end()) {
      bundle->stop_ids.push_back(static_cast<int32_t>(id));
    }
  }
  AddStopId(tokenizer, "<|im_end|>", &bundle->stop_ids);
  AddStopId(tokenizer, "<|endoftext|>", &bundle->stop_ids);
  AddStopId(tokenizer, "<|eot_id|>", &bundle->stop_ids);
  if (!bundle->eos_token_ids.empty()) {
    bundle->eos_id = static_cast<int32_t>(bundle->eos_token_ids.front());
  } else if (!bundle->stop_ids.empty()) {
    bundle->eos_id = bundle->stop_ids.front();
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        bundle->path, ": the model names no end-of-sequence token (eos_token_id) and the tokenizer has none of "
                      "<|im_end|>, <|endoftext|>, <|eot_id|>; add eos_token_id to config.json"));
  }
  if (bundle->eos_id < 0 || bundle->eos_id >= tokenizer.vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat(bundle->path, ": eos token id ", bundle->eos_id,
                                                   " is outside the tokenizer's ", tokenizer.vocab_size(), " ids"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelBundle> LoadHfDirectory(const std::string& dir, model::ModelBackend& backend) {
  ST_ASSIGN_OR_RETURN(formats::ModelConfig hf, formats::LoadModelConfig(absl::StrCat(dir, "/config.json")));
  ST_ASSIGN_OR_RETURN(LoadedLlama loaded, LoadLlamaFromHfDirectory(dir, backend));
  const std::string tokenizer_path = absl::StrCat(dir, "/tokenizer.json");
  if (!formats::RegularFileExists(tokenizer_path)) {
    return absl::NotFoundError(absl::StrCat(dir, " has no tokenizer.json: sigmatune reads the byte-level BPE tokenizer "
                                            "from it; copy it from the model's Hub repository"));
  }
  ST_ASSIGN_OR_RETURN(data::Tokenizer tokenizer, data::Tokenizer::FromJsonFile(tokenizer_path));
  ModelBundle bundle{dir, loaded.config, std::move(loaded.weights), std::move(tokenizer)};
  bundle.max_position_embeddings = hf.max_position_embeddings;
  bundle.bos_token_id = hf.bos_token_id;
  bundle.eos_token_ids = hf.eos_token_ids;
  bundle.pad_token_id = hf.pad_token_id;

  const std::string config_path = absl::StrCat(dir, "/tokenizer_config.json");
  std::string jinja, jinja_source;
  if (formats::RegularFileExists(config_path)) {
    ST_ASSIGN_OR_RETURN(std::string text, formats::ReadFileToString(config_path));
    const nlohmann::json config = nlohmann::json::parse(text, nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, " is not a JSON object"));
    }
    if (config.contains("chat_template") && config["chat_template"].is_string()) {
      jinja = config["chat_template"].get<std::string>();
      jinja_source = config_path + " (chat_template)";
    }
    if (bundle.eos_token_ids.empty() && config.contains("eos_token") && config["eos_token"].is_string()) {
      const std::optional<int32_t> id = bundle.tokenizer.TokenToId(config["eos_token"].get<std::string>());
      if (id.has_value()) bundle.eos_token_ids.push_back(*id);
    }
  }
  const std::string jinja_path = absl::StrCat(dir, "/chat_template.jinja");
  if (jinja.empty() && formats::RegularFileExists(jinja_path)) {
    ST_ASSIGN_OR_RETURN(jinja, formats::ReadFileToString(jinja_path));
    jinja_source = jinja_path;
  }
  if (!jinja.empty()) {
    ST_ASSIGN_OR_RETURN(data::ChatTemplate chat, data::ChatTemplate::FromJinja(jinja, jinja_source));
    bundle.chat_template = chat;
  }
  ST_RETURN_IF_ERROR(FinishSpecialIds(&bundle));
  return bundle;
}

absl::StatusOr<ModelBundle> LoadGguf(const std::string& path, model::ModelBackend& backend) {
  ST_ASSIGN_OR_RETURN(LoadedLlama loaded, LoadLlamaFromGguf(path, backend));
  ST_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  ST_ASSIGN_OR_RETURN(data::Tokenizer tokenizer, data::TokenizerFromGguf(file));
  ST_ASSIGN_OR_RETURN(GgufLlamaConfig config, ReadLlamaConfig(file));
  ST_ASSIGN_OR_RETURN(GgufTokenizerData meta, ReadTokenizerData(file));
  ModelBundle bundle{path, loaded.config, std::move(loaded.weights), std::move(tokenizer)};
  bundle.max_position_embeddings = config.context_length;
  bundle.bos_token_id = meta.bos_token_id;
  if (meta.eos_token_id.has_value()) bundle.eos_token_ids.push_back(*meta.eos_token_id);
  bundle.pad_token_id = meta.padding_token_id;
  if (!meta.chat_template.empty()) {
    ST_ASSIGN_OR_RETURN(data::ChatTemplate chat,
                        data::ChatTemplate::FromJinja(meta.chat_template, path + " (tokenizer.chat_template)"));
    bundle.chat_template = chat;
  }
  ST_RETURN_IF_ERROR(FinishSpecialIds(&bundle));
  return bundle;
}

}  // namespace

absl::StatusOr<ModelBundle> LoadModelBundle(const std::string& path, model::ModelBackend& backend) {
  if (absl::EndsWith(path, ".gguf")) return LoadGguf(path, backend);
  return LoadHfDirectory(path, backend);
}

absl::StatusOr<std::string> ModelFingerprint(const ModelBundle& bundle, model::ModelBackend& backend) {
  const model::LlamaConfig& c = bundle.config;
  Fingerprint fp;
  fp.UpdateField("sigmatune model fingerprint 1");
  for (int64_t v : {c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads,
                    c.head_dim, static_cast<int64_t>(c.embeddings)}) {
    fp.UpdateInt(v);
  }
  fp.Update(&c.rms_norm_eps, sizeof(c.rms_norm_eps));
  fp.Update(&c.rope.theta, sizeof(c.rope.theta));
  auto add = [&](const Tensor& t) -> absl::Status {
    ST_ASSIGN_OR_RETURN(Tensor host, backend.Download(t));
    const Tensor dense = host.Contiguous();
    fp.UpdateInt(dense.numel());
    fp.Update(dense.raw_data(), dense.nbytes());
    return absl::OkStatus();
  };
  const model::LlamaWeights& w = bundle.weights;
  ST_RETURN_IF_ERROR(add(w.embed));
  for (const model::LayerWeights& layer : w.layers) {
    for (const Tensor* t : {&layer.input_norm, &layer.q, &layer.k, &layer.v, &layer.o, &layer.post_norm, &layer.gate,
                            &layer.up, &layer.down}) {
      ST_RETURN_IF_ERROR(add(*t));
    }
  }
  ST_RETURN_IF_ERROR(add(w.final_norm));
  if (c.embeddings == model::Embeddings::kSeparate) ST_RETURN_IF_ERROR(add(w.lm_head));
  return fp.Hex();
}

}  // namespace sigmatune::job
