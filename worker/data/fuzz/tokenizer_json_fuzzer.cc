// Fuzz target: arbitrary bytes as a tokenizer.json. Loading must fail cleanly or give a tokenizer
// whose Encode/Decode hold up on fixed texts and on the input itself.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "kernels/base/check.h"
#include "worker/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sigmatune::data::SkipSpecialTokens;
  using sigmatune::data::Tokenizer;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromJson(input, "fuzz.json");
  if (!tok.ok()) return 0;
  for (const absl::string_view text :
       {absl::string_view("Hello world! 123 <s> it's  \n\t x"), absl::string_view("héllo 😀 中文"),
        input.substr(0, 256)}) {
    absl::StatusOr<std::vector<int32_t>> ids =
        tok->Encode(text, sigmatune::data::AddSpecialTokens::kYes);
    if (!ids.ok()) continue;  // invalid UTF-8
    for (const int32_t id : *ids) ST_CHECK(id >= 0 && id < tok->vocab_size());
    (void)tok->Decode(*ids, SkipSpecialTokens::kYes);
    (void)tok->Decode(*ids, SkipSpecialTokens::kNo);
  }
  const std::vector<int32_t> odd = {-1, 0, 1, 255, 256, tok->vocab_size(), 1 << 30};
  (void)tok->Decode(odd, SkipSpecialTokens::kNo);
  return 0;
}
