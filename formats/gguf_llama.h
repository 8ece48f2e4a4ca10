// LLaMA-family GGUF files (FORMATS.md §4): tensor names, q/k row permutation, hyper-parameters
// from llama.* metadata, and tokenizer metadata as plain C++ types.
//
// Contract:
//  - Names: GgufToHfName maps llama.cpp names to Hugging Face names (token_embd.weight ->
//    model.embed_tokens.weight, blk.N.attn_q.weight -> model.layers.N.self_attn.q_proj.weight,
//    output_norm.weight -> model.norm.weight, output.weight -> lm_head.weight, ...); unknown names
//    give NotFound. HfToGgufName is the inverse, mapping lm_head.weight to token_embd.weight when
//    the embeddings are tied.
//  - Permutation: llama.cpp's converter stores attn_q/attn_k rows in Meta (interleaved) order
//    (LlamaModel.permute with n_head for q and n_head_kv for k). UnpermuteQkRows undoes it (the
//    transformers GGUF loader's _reverse_permute_weights); PermuteQkRows applies it (for export).
//    Both copy; they work on any dtype and rank >= 1 CPU tensor whose dim 0 is rows.
//  - ReadLlamaConfig / ReadTokenizerData return InvalidArgument/NotFound naming the file and key.
//  - LoadLlamaTensor(file, hf_name, config, dtype) = map name, dequantise (gguf_dequant.h), and
//    unpermute q/k: the result is in Hugging Face layout, PyTorch-order shape.
#ifndef SIGMATUNE_FORMATS_GGUF_LLAMA_H_
#define SIGMATUNE_FORMATS_GGUF_LLAMA_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "formats/gguf.h"
#include "kernels/base/tensor.h"

namespace sigmatune {

enum class TiedEmbeddings { kNo, kYes };

// Hyper-parameters of a llama GGUF (keys "<arch>.*", arch from general.architecture).
struct GgufLlamaConfig {
  std::string architecture;         // general.architecture
  int64_t context_length = 0;       // .context_length
  int64_t hidden_size = 0;          // .embedding_length
  int64_t num_layers = 0;           // .block_count
  int64_t intermediate_size = 0;    // .feed_forward_length
  int64_t num_heads = 0;            // .attention.head_count
  int64_t num_kv_heads = 0;         // .attention.head_count_kv (default: num_heads)
  int64_t head_dim = 0;             // .attention.key_length, else hidden_size / num_heads
  int64_t rope_dimension_count = 0; // .rope.dimension_count (default: head_dim)
  double rms_norm_eps = 0.0;        // .attention.layer_norm_rms_epsilon (f32 widened)
  double rope_theta = 10000.0;      // .rope.freq_base (default 10000)
  int64_t vocab_size = 0;           // length of tokenizer.ggml.tokens (else .vocab_size)
  TiedEmbeddings tied_embeddings = TiedEmbeddings::kYes;  // kYes when output.weight is absent
};

// Tokenizer metadata (tokenizer.ggml.*, tokenizer.chat_template). Absent optional keys stay empty.
struct GgufTokenizerData {
  std::string model;                  // tokenizer.ggml.model ("gpt2", "llama"), required
  std::string pre;                    // tokenizer.ggml.pre
  std::vector<std::string> tokens;    // tokenizer.ggml.tokens, required
  std::vector<int32_t> token_types;   // tokenizer.ggml.token_type (1 normal .. 6 byte)
  std::vector<std::string> merges;    // tokenizer.ggml.merges ("a b")
  std::vector<float> scores;          // tokenizer.ggml.scores (SPM)
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> padding_token_id;
  std::optional<int64_t> unknown_token_id;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::string chat_template;          // tokenizer.chat_template
};

absl::StatusOr<std::string> GgufToHfName(absl::string_view gguf_name);
absl::StatusOr<std::string> HfToGgufName(absl::string_view hf_name, TiedEmbeddings tied);

// Rows of `weight` (dim 0 = n_head * head_dim) from GGUF (Meta) order to HF order and back.
// InvalidArgument when dim 0 is not a multiple of 2 * n_head; `what` names the tensor in errors.
absl::StatusOr<Tensor> UnpermuteQkRows(const Tensor& weight, int64_t n_head, absl::string_view what);
absl::StatusOr<Tensor> PermuteQkRows(const Tensor& weight, int64_t n_head, absl::string_view what);

absl::StatusOr<GgufLlamaConfig> ReadLlamaConfig(const GgufFile& file);
absl::StatusOr<GgufTokenizerData> ReadTokenizerData(const GgufFile& file);

// The HF-layout tensor `hf_name` (f32 or bf16): q_proj rows unpermuted with num_heads, k_proj with
// num_kv_heads; lm_head.weight comes from token_embd.weight when tied.
absl::StatusOr<Tensor> LoadLlamaTensor(const GgufFile& file, absl::string_view hf_name,
                                       const GgufLlamaConfig& config, DType dtype);

}  // namespace sigmatune

#endif  // SIGMATUNE_FORMATS_GGUF_LLAMA_H_
