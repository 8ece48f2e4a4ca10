#include "formats/gguf_llama.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formats/gguf_dequant.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace sigmatune {
namespace {

struct NamePair {
  absl::string_view gguf;
  absl::string_view hf;
};

// Per-block parts: blk.N.<gguf> <-> model.layers.N.<hf>.
constexpr NamePair kBlockNames[] = {
    {"attn_norm", "input_layernorm"},
    {"attn_q", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"},
    {"ffn_norm", "post_attention_layernorm"},
    {"ffn_gate", "mlp.gate_proj"},
    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};

constexpr NamePair kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

// Splits "<prefix><digits>.<rest>" into (digits, rest); false if it does not have that form.
bool SplitLayer(absl::string_view name, absl::string_view prefix, absl::string_view* layer,
                absl::string_view* rest) {
  if (!absl::StartsWith(name, prefix)) return false;
  name.remove_prefix(prefix.size());
  size_t n = 0;
  while (n < name.size() && absl::ascii_isdigit(static_cast<unsigned char>(name[n]))) ++n;
  if (n == 0 || n > 9 || n >= name.size() || name[n] != '.') return false;
  *layer = name.substr(0, n);
  *rest = name.substr(n + 1);
  return true;
}

// Splits "part.weight" / "part.bias" into (part, suffix).
bool SplitSuffix(absl::string_view rest, absl::string_view* part, absl::string_view* suffix) {
  for (absl::string_view s : {absl::string_view(".weight"), absl::string_view(".bias")}) {
    if (absl::EndsWith(rest, s)) {
      *part = rest.substr(0, rest.size() - s.size());
      *suffix = s;
      return true;
    }
  }
  return false;
}

absl::StatusOr<Tensor> RowPermute(const Tensor& weight, int64_t n_head, absl::string_view what,
                                  bool to_hf) {
  ST_CHECK(weight.defined() && weight.device().is_cpu()) << what << ": needs a CPU tensor";
  if (weight.rank() < 1 || n_head <= 0 || weight.dim(0) % (2 * n_head) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": q/k permutation needs dim 0 to be a multiple of 2 * n_head = ", 2 * n_head,
        ", got shape ", ShapeToString(weight.shape())));
  }
  const Tensor src = weight.Contiguous();
  Tensor out = Tensor::Empty(src.shape(), src.dtype());
  const int64_t rows = src.dim(0);
  const int64_t half = rows / n_head / 2;  // head_dim / 2
  const size_t row_bytes = rows == 0 ? 0 : src.nbytes() / static_cast<size_t>(rows);
  const char* s = static_cast<const char*>(src.raw_data());
  char* d = static_cast<char*>(out.raw_data());
  // GGUF row index h*2*half + i*2 + j  <->  HF row index h*2*half + j*half + i.
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t gguf_row = h * 2 * half + i * 2 + j;
        const int64_t hf_row = h * 2 * half + j * half + i;
        const int64_t from = to_hf ? gguf_row : hf_row;
        const int64_t to = to_hf ? hf_row : gguf_row;
        std::memcpy(d + to * row_bytes, s + from * row_bytes, row_bytes);
      }
    }
  }
  return out;
}

absl::StatusOr<int64_t> PositiveInt(const GgufFile& f, const std::string& key) {
  ST_ASSIGN_OR_RETURN(int64_t v, f.GetI64(key));
  if (v <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf ", f.path(), ": key '", key, "' must be positive, got ", v));
  }
  return v;
}

absl::StatusOr<std::optional<int64_t>> OptionalInt(const GgufFile& f, absl::string_view key) {
  if (!f.HasKey(key)) return std::optional<int64_t>();
  ST_ASSIGN_OR_RETURN(int64_t v, f.GetI64(key));
  return std::optional<int64_t>(v);
}

absl::StatusOr<std::optional<bool>> OptionalBool(const GgufFile& f, absl::string_view key) {
  if (!f.HasKey(key)) return std::optional<bool>();
  ST_ASSIGN_OR_RETURN(bool v, f.GetBool(key));
  return std::optional<bool>(v);
}

}  // namespace

absl::StatusOr<std::string> GgufToHfName(absl::string_view gguf_name) {
  for (const NamePair& p : kGlobalNames) {
    if (gguf_name == p.gguf) return std::string(p.hf);
  }
  absl::string_view layer, rest, part, suffix;
  if (SplitLayer(gguf_name, "blk.", &layer, &rest) && SplitSuffix(rest, &part, &suffix)) {
    for (const NamePair& p : kBlockNames) {
      if (part == p.gguf) return absl::StrCat("model.layers.", layer, ".", p.hf, suffix);
    }
  }
  return absl::NotFoundError(
      absl::StrCat("GGUF tensor '", gguf_name, "' has no Hugging Face llama name"));
}

absl::StatusOr<std::string> HfToGgufName(absl::string_view hf_name, TiedEmbeddings tied) {
  if (hf_name == "lm_head.weight" && tied == TiedEmbeddings::kYes) {
    return std::string("token_embd.weight");
  }
  for (const NamePair& p : kGlobalNames) {
    if (hf_name == p.hf) return std::string(p.gguf);
  }
  absl::string_view layer, rest, part, suffix;
  if (SplitLayer(hf_name, "model.layers.", &layer, &rest) && SplitSuffix(rest, &part, &suffix)) {
    for (const NamePair& p : kBlockNames) {
      if (part == p.hf) return absl::StrCat("blk.", layer, ".", p.gguf, suffix);
    }
  }
  return absl::NotFoundError(
      absl::StrCat("Hugging Face tensor '", hf_name, "' has no GGUF llama name"));
}

absl::StatusOr<Tensor> UnpermuteQkRows(const Tensor& weight, int64_t n_head,
                                       absl::string_view what) {
  return RowPermute(weight, n_head, what, /*to_hf=*/true);
}

absl::StatusOr<Tensor> PermuteQkRows(const Tensor& weight, int64_t n_head, absl::string_view what) {
  return RowPermute(weight, n_head, what, /*to_hf=*/false);
}

absl::StatusOr<GgufLlamaConfig> ReadLlamaConfig(const GgufFile& f) {
  GgufLlamaConfig c;
  ST_ASSIGN_OR_RETURN(absl::string_view arch, f.GetString("general.architecture"));
  c.architecture = std::string(arch);
  const std::string a = c.architecture + ".";
  ST_ASSIGN_OR_RETURN(c.context_length, PositiveInt(f, a + "context_length"));
  ST_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(f, a + "embedding_length"));
  ST_ASSIGN_OR_RETURN(c.num_layers, PositiveInt(f, a + "block_count"));
  ST_ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(f, a + "feed_forward_length"));
  ST_ASSIGN_OR_RETURN(c.num_heads, PositiveInt(f, a + "attention.head_count"));
  c.num_kv_heads = c.num_heads;
  if (f.HasKey(a + "attention.head_count_kv")) {
    ST_ASSIGN_OR_RETURN(c.num_kv_heads, PositiveInt(f, a + "attention.head_count_kv"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gguf ", f.path(), ": key '", a, "attention.head_count' = ", c.num_heads,
        " is not a multiple of '", a, "attention.head_count_kv' = ", c.num_kv_heads));
  }
  if (f.HasKey(a + "attention.key_length")) {
    ST_ASSIGN_OR_RETURN(c.head_dim, PositiveInt(f, a + "attention.key_length"));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gguf ", f.path(), ": key '", a, "embedding_length' = ", c.hidden_size,
          " is not a multiple of '", a, "attention.head_count' = ", c.num_heads,
          " and there is no '", a, "attention.key_length'"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.rope_dimension_count = c.head_dim;
  if (f.HasKey(a + "rope.dimension_count")) {
    ST_ASSIGN_OR_RETURN(c.rope_dimension_count, PositiveInt(f, a + "rope.dimension_count"));
  }
  ST_ASSIGN_OR_RETURN(c.rms_norm_eps, f.GetF64(a + "attention.layer_norm_rms_epsilon"));
  if (!(c.rms_norm_eps > 0.0) || !std::isfinite(c.rms_norm_eps)) {
    return absl::InvalidArgumentError(absl::StrCat("gguf ", f.path(), ": key '", a,
                                                   "attention.layer_norm_rms_epsilon' must be a "
                                                   "positive finite number, got ",
                                                   c.rms_norm_eps));
  }
  if (f.HasKey(a + "rope.freq_base")) {
    ST_ASSIGN_OR_RETURN(c.rope_theta, f.GetF64(a + "rope.freq_base"));
  }
  if (f.HasKey("tokenizer.ggml.tokens")) {
    ST_ASSIGN_OR_RETURN(uint64_t n, f.GetArrayLength("tokenizer.ggml.tokens"));
    c.vocab_size = static_cast<int64_t>(n);
  } else if (f.HasKey(a + "vocab_size")) {
    ST_ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(f, a + "vocab_size"));
  } else {
    return absl::NotFoundError(absl::StrCat("gguf ", f.path(),
                                            ": no vocabulary size: neither 'tokenizer.ggml.tokens' "
                                            "nor '", a, "vocab_size' is present"));
  }
  c.tied_embeddings =
      f.FindTensor("output.weight") == nullptr ? TiedEmbeddings::kYes : TiedEmbeddings::kNo;
  return c;
}

absl::StatusOr<GgufTokenizerData> ReadTokenizerData(const GgufFile& f) {
  GgufTokenizerData t;
  ST_ASSIGN_OR_RETURN(absl::string_view model, f.GetString("tokenizer.ggml.model"));
  t.model = std::string(model);
  if (f.HasKey("tokenizer.ggml.pre")) {
    ST_ASSIGN_OR_RETURN(absl::string_view pre, f.GetString("tokenizer.ggml.pre"));
    t.pre = std::string(pre);
  }
  ST_ASSIGN_OR_RETURN(t.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  if (f.HasKey("tokenizer.ggml.token_type")) {
    ST_ASSIGN_OR_RETURN(std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != t.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gguf ", f.path(), ": key 'tokenizer.ggml.token_type' has ", types.size(),
          " entries but 'tokenizer.ggml.tokens' has ", t.tokens.size()));
    }
    t.token_types.reserve(types.size());
    for (int64_t v : types) t.token_types.push_back(static_cast<int32_t>(v));
  }
  if (f.HasKey("tokenizer.ggml.merges")) {
    ST_ASSIGN_OR_RETURN(t.merges, f.GetStringArray("tokenizer.ggml.merges"));
  }
  if (f.HasKey("tokenizer.ggml.scores")) {
    ST_ASSIGN_OR_RETURN(std::vector<double> scores, f.GetFloatArray("tokenizer.ggml.scores"));
    t.scores.assign(scores.begin(), scores.end());
  }
  const int64_t vocab = static_cast<int64_t>(t.tokens.size());
  struct IdKey {
    absl::string_view key;
    std::optional<int64_t>* out;
  };
  for (const IdKey& k : {IdKey{"tokenizer.ggml.bos_token_id", &t.bos_token_id},
                         IdKey{"tokenizer.ggml.eos_token_id", &t.eos_token_id},
                         IdKey{"tokenizer.ggml.padding_token_id", &t.padding_token_id},
                         IdKey{"tokenizer.ggml.unknown_token_id", &t.unknown_token_id}}) {
    ST_ASSIGN_OR_RETURN(*k.out, OptionalInt(f, k.key));
    if (k.out->has_value() && (**k.out < 0 || **k.out >= vocab)) {
      return absl::InvalidArgumentError(absl::StrCat("gguf ", f.path(), ": key '", k.key,
                                                     "' = ", **k.out, " is outside the ", vocab,
                                                     "-token vocabulary"));
    }
  }
  ST_ASSIGN_OR_RETURN(t.add_bos_token, OptionalBool(f, "tokenizer.ggml.add_bos_token"));
  ST_ASSIGN_OR_RETURN(t.add_eos_token, OptionalBool(f, "tokenizer.ggml.add_eos_token"));
  if (f.HasKey("tokenizer.chat_template")) {
    ST_ASSIGN_OR_RETURN(absl::string_view tmpl, f.GetString("tokenizer.chat_template"));
    t.chat_template = std::string(tmpl);
  }
  return t;
}

absl::StatusOr<Tensor> LoadLlamaTensor(const GgufFile& file, absl::string_view hf_name,
                                       const GgufLlamaConfig& config, DType dtype) {
  ST_ASSIGN_OR_RETURN(std::string gguf_name, HfToGgufName(hf_name, config.tied_embeddings));
  ST_ASSIGN_OR_RETURN(Tensor t, DequantizeTensor(file, gguf_name, dtype));
  const std::string what = absl::StrCat("gguf ", file.path(), ": tensor '", gguf_name, "'");
  if (absl::StrContains(gguf_name, ".attn_q.")) return UnpermuteQkRows(t, config.num_heads, what);
  if (absl::StrContains(gguf_name, ".attn_k.")) {
    return UnpermuteQkRows(t, config.num_kv_heads, what);
  }
  return t;
}

}  // namespace sigmatune
