// A Tokenizer from a GGUF file's tokenizer.ggml.* metadata (llama.cpp's byte-level BPE "gpt2"
// model). The pre-tokenizer follows tokenizer.ggml.pre: "smollm" splits digits before the
// GPT-2 byte-level pattern (what SmolLM2 was trained with, and its Hub tokenizer.json);
// "gpt2"/"default"/absent use the GPT-2 pattern alone; anything else is Unimplemented naming the
// file and the value. BOS/EOS are added around encoded text when add_bos_token/add_eos_token say so.
#ifndef SIGMATUNE_WORKER_DATA_TOKENIZER_GGUF_H_
#define SIGMATUNE_WORKER_DATA_TOKENIZER_GGUF_H_

#include "absl/status/statusor.h"
#include "formats/gguf.h"
#include "worker/data/tokenizer.h"

namespace sigmatune::data {

absl::StatusOr<Tokenizer> TokenizerFromGguf(const GgufFile& file);

}  // namespace sigmatune::data

#endif  // SIGMATUNE_WORKER_DATA_TOKENIZER_GGUF_H_
