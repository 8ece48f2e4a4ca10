#include "worker/model/llama_loader.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "formats/gguf.h"
#include "formats/gguf_llama.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "kernels/base/status_macros.h"

namespace sigmatune {

namespace {

// Fills the layer/global tensors of `w` by HF name through `load`.
template <typename Load>
absl::Status LoadAllTensors(const model::LlamaConfig& c, Load&& load, model::LlamaWeights& w) {
  ST_ASSIGN_OR_RETURN(w.embed, load("model.embed_tokens.weight"));
  w.layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    model::LayerWeights& lw = w.layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    ST_ASSIGN_OR_RETURN(lw.input_norm, load(p + "input_layernorm.weight"));
    ST_ASSIGN_OR_RETURN(lw.post_norm, load(p + "post_attention_layernorm.weight"));
    ST_ASSIGN_OR_RETURN(lw.q, load(model::LinearName(l, model::LinearKind::kQ) + ".weight"));
    ST_ASSIGN_OR_RETURN(lw.k, load(model::LinearName(l, model::LinearKind::kK) + ".weight"));
    ST_ASSIGN_OR_RETURN(lw.v, load(model::LinearName(l, model::LinearKind::kV) + ".weight"));
    ST_ASSIGN_OR_RETURN(lw.o, load(model::LinearName(l, model::LinearKind::kO) + ".weight"));
    ST_ASSIGN_OR_RETURN(lw.gate, load(model::LinearName(l, model::LinearKind::kGate) + ".weight"));
    ST_ASSIGN_OR_RETURN(lw.up, load(model::LinearName(l, model::LinearKind::kUp) + ".weight"));
    ST_ASSIGN_OR_RETURN(lw.down, load(model::LinearName(l, model::LinearKind::kDown) + ".weight"));
  }
  ST_ASSIGN_OR_RETURN(w.final_norm, load("model.norm.weight"));
  if (c.embeddings == model::Embeddings::kTied) {
    w.lm_head = w.embed;
  } else {
    ST_ASSIGN_OR_RETURN(w.lm_head, load("lm_head.weight"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LoadedLlama> LoadLlamaFromHfDirectory(const std::string& dir, model::ModelBackend& backend) {
  const std::string config_path = dir + "/config.json";
  ST_ASSIGN_OR_RETURN(formats::ModelConfig hc, formats::LoadModelConfig(config_path));
  if (hc.qkv_bias || hc.o_bias || hc.mlp_bias || hc.sliding_window.has_value()) {
    return absl::UnimplementedError(absl::StrCat(config_path, ": linear biases and sliding-window attention (",
                                                 hc.model_type, ") are not supported yet"));
  }
  ST_ASSIGN_OR_RETURN(formats::ShardedCheckpoint checkpoint, formats::ShardedCheckpoint::OpenDirectory(dir));
  ST_RETURN_IF_ERROR(formats::CheckCheckpointAgainstConfig(hc, checkpoint.TensorShapes(), checkpoint.source()));
  LoadedLlama out;
  model::LlamaConfig& c = out.config;
  c.vocab_size = hc.vocab_size;
  c.hidden_size = hc.hidden_size;
  c.intermediate_size = hc.intermediate_size;
  c.num_layers = hc.num_hidden_layers;
  c.num_heads = hc.num_attention_heads;
  c.num_kv_heads = hc.num_key_value_heads;
  c.head_dim = hc.head_dim;
  c.rms_norm_eps = hc.rms_norm_eps;
  c.rope.theta = hc.rope.theta;
  c.rope.head_dim = hc.head_dim;
  if (hc.rope.type == formats::RopeType::kLlama3) {
    c.rope.scaling = kernels::RopeScaling::kLlama3;
    c.rope.factor = hc.rope.factor;
    c.rope.low_freq_factor = hc.rope.low_freq_factor;
    c.rope.high_freq_factor = hc.rope.high_freq_factor;
    c.rope.original_max_position_embeddings = hc.rope.original_max_position_embeddings;
  }
  c.embeddings = hc.tie_word_embeddings ? model::Embeddings::kTied : model::Embeddings::kSeparate;
  ST_RETURN_IF_ERROR(c.Validate());
  const DType dtype = backend.activation_dtype();
  auto load = [&](const std::string& name) -> absl::StatusOr<Tensor> {
    ST_ASSIGN_OR_RETURN(Tensor view, checkpoint.GetTensor(name));
    return backend.Upload(view.dtype() == dtype ? view.Contiguous() : view.To(dtype));
  };
  ST_RETURN_IF_ERROR(LoadAllTensors(c, load, out.weights));
  ST_RETURN_IF_ERROR(model::ValidateWeights(c, out.weights, backend));
  return out;
}

absl::StatusOr<LoadedLlama> LoadLlamaFromGguf(const std::string& path, model::ModelBackend& backend) {
  ST_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
  ST_ASSIGN_OR_RETURN(GgufLlamaConfig gc, ReadLlamaConfig(file));
  LoadedLlama out;
  model::LlamaConfig& c = out.config;
  c.vocab_size = gc.vocab_size;
  c.hidden_size = gc.hidden_size;
  c.intermediate_size = gc.intermediate_size;
  c.num_layers = gc.num_layers;
  c.num_heads = gc.num_heads;
  c.num_kv_heads = gc.num_kv_heads;
  c.head_dim = gc.head_dim;
  c.rms_norm_eps = gc.rms_norm_eps;
  c.rope.theta = gc.rope_theta;
  c.rope.head_dim = gc.head_dim;
  c.rope.rotary_dim = gc.rope_dimension_count == gc.head_dim ? 0 : gc.rope_dimension_count;
  c.embeddings = gc.tied_embeddings == TiedEmbeddings::kYes ? model::Embeddings::kTied : model::Embeddings::kSeparate;
  if (file.HasKey(absl::StrCat(gc.architecture, ".rope.scaling.type"))) {
    return absl::UnimplementedError(absl::StrCat("gguf ", path, ": ", gc.architecture,
                                                 ".rope.scaling.* is not supported yet; load the HF checkpoint"));
  }
  ST_RETURN_IF_ERROR(c.Validate());

  const DType dtype = backend.activation_dtype();
  auto load = [&](const std::string& name) -> absl::StatusOr<Tensor> {
    ST_ASSIGN_OR_RETURN(Tensor host, LoadLlamaTensor(file, name, gc, dtype));
    return backend.Upload(host);
  };
  ST_RETURN_IF_ERROR(LoadAllTensors(c, load, out.weights));
  ST_RETURN_IF_ERROR(model::ValidateWeights(c, out.weights, backend));
  return out;
}

}  // namespace sigmatune
