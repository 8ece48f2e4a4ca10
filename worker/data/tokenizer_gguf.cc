#include "worker/data/tokenizer_gguf.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "formats/gguf_llama.h"
#include "kernels/base/status_macros.h"

namespace sigmatune::data {

absl::StatusOr<Tokenizer> TokenizerFromGguf(const GgufFile& file) {
  ST_ASSIGN_OR_RETURN(GgufTokenizerData gguf, ReadTokenizerData(file));
  if (gguf.model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat("gguf ", file.path(), ": tokenizer.ggml.model '", gguf.model,
                                                 "' is not supported; only byte-level BPE ('gpt2') is"));
  }
  TokenizerData data;
  if (gguf.pre == "smollm") {
    data.pre_tokenizer = PreTokenizerKind::kDigitsThenByteLevel;
  } else if (gguf.pre.empty() || gguf.pre == "gpt2" || gguf.pre == "default") {
    data.pre_tokenizer = PreTokenizerKind::kByteLevel;
  } else {
    return absl::UnimplementedError(absl::StrCat("gguf ", file.path(), ": tokenizer.ggml.pre '", gguf.pre,
                                                 "' is not supported; supported: smollm, gpt2, default"));
  }
  data.tokens = std::move(gguf.tokens);
  data.merges = std::move(gguf.merges);
  data.token_types.reserve(gguf.token_types.size());
  for (size_t i = 0; i < gguf.token_types.size(); ++i) {
    const int32_t type = gguf.token_types[i];
    if (type < static_cast<int32_t>(TokenType::kNormal) || type > static_cast<int32_t>(TokenType::kByte)) {
      return absl::InvalidArgumentError(absl::StrCat("gguf ", file.path(), ": tokenizer.ggml.token_type[", i,
                                                     "] = ", type, " is not a GGUF token type (1..6)"));
    }
    data.token_types.push_back(static_cast<TokenType>(type));
  }
  if (gguf.add_bos_token.value_or(false) && gguf.bos_token_id.has_value()) {
    data.prefix_ids.push_back(static_cast<int32_t>(*gguf.bos_token_id));
  }
  if (gguf.add_eos_token.value_or(false) && gguf.eos_token_id.has_value()) {
    data.suffix_ids.push_back(static_cast<int32_t>(*gguf.eos_token_id));
  }
  return Tokenizer::FromData(data, file.path());
}

}  // namespace sigmatune::data
