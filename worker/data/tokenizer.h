// Byte-level BPE tokenizer, identical in ids to Hugging Face `tokenizers` for GPT-2 / SmolLM2-style
// models (../shared/FORMATS.md section 5).
//
//   ST_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromJsonFile("model/tokenizer.json"));
//   ST_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok.Encode("Hello world! 123"));
//   std::string text = tok.Decode(ids, SkipSpecialTokens::kNo);
//
// Construction: from tokenizer.json (FromJson / FromJsonFile) or from plain data such as GGUF
// metadata (FromData). Both produce a TokenizerModel and validate it; anything the tokenizer does
// not implement (another model type, a normalizer, byte_fallback, dropout, other pre-tokenizers or
// decoders, truncation/padding) is rejected with an error naming the source and the field, never
// ignored.
//
// Encoding: the text must be valid UTF-8 (else InvalidArgument with the byte offset; HF cannot
// receive such text at all). Added tokens are matched first on the raw text (leftmost, then
// longest; tokens with normalized=false before those with normalized=true, as HF does), honouring
// lstrip/rstrip/single_word, and are never split. The rest is pre-tokenized (optional Digits split,
// then the GPT-2 pattern) and each piece is BPE-merged by rank. Decode maps ids back (unknown ids
// are skipped, like HF), optionally drops special tokens, undoes the byte mapping and converts to
// UTF-8 as Rust's from_utf8_lossy does, so Decode(Encode(x)) == x for valid UTF-8 x.
//
// Thread safety: a Tokenizer is immutable after construction except for an internal word cache
// that is guarded by a mutex; Encode/Decode may be called concurrently. Movable, not copyable.
#ifndef SIGMATUNE_WORKER_DATA_TOKENIZER_H_
#define SIGMATUNE_WORKER_DATA_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace sigmatune::data {

// Whether Encode applies the post-processor's special tokens (HF add_special_tokens).
enum class AddSpecialTokens { kNo, kYes };

// Whether Decode drops special added tokens (HF skip_special_tokens).
enum class SkipSpecialTokens { kNo, kYes };

// The pre-tokenizers this tokenizer implements.
enum class PreTokenizerKind {
  kByteLevel,            // ByteLevel{use_regex: true}: the GPT-2 pattern (GPT-2; SmolLM2 via GGUF
                         // in transformers)
  kDigitsThenByteLevel,  // Sequence[Digits{individual_digits: true}, ByteLevel]: SmolLM2 on the
                         // Hub, llama.cpp `smollm`
};

// Whether the ByteLevel pre-tokenizer prepends a space to text that does not start with one.
enum class PrefixSpace { kNo, kYes };

// GGUF tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// One entry of tokenizer.json's added_tokens (fields as there).
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// Plain data, e.g. from GGUF metadata (tokenizer.ggml.*), for Tokenizer::FromData.
struct TokenizerData {
  std::vector<std::string> tokens;       // id -> token text (byte-level mapped, as in tokenizer.json)
  std::vector<std::string> merges;       // rank -> "left right" (split at the single space)
  std::vector<TokenType> token_types;    // id -> type; empty means all kNormal. kControl tokens
                                         // become special added tokens, kUserDefined non-special
                                         // added tokens.
  PreTokenizerKind pre_tokenizer = PreTokenizerKind::kByteLevel;  // GGUF pre "smollm" ->
                                                                  // kDigitsThenByteLevel
  std::vector<int32_t> prefix_ids;       // added by Encode(..., kYes) before the text (e.g. BOS)
  std::vector<int32_t> suffix_ids;       // ... and after it (e.g. EOS)
};

// The resolved description of a tokenizer that both loaders produce.
struct TokenizerModel {
  std::vector<std::string> vocab;  // id -> token (model vocab; ids of added tokens may be empty)
  std::vector<std::pair<std::string, std::string>> merges;  // by rank
  std::vector<AddedToken> added_tokens;
  PreTokenizerKind pre_tokenizer = PreTokenizerKind::kByteLevel;
  PrefixSpace prefix_space = PrefixSpace::kNo;
  bool ignore_merges = false;            // a pre-token already in the vocab is emitted whole
  std::optional<int32_t> unk_id;         // used for characters missing from the vocab
  std::vector<int32_t> prefix_ids;
  std::vector<int32_t> suffix_ids;
};

class Tokenizer {
 public:
  // Reads and parses a tokenizer.json file. Errors name the file and the field.
  static absl::StatusOr<Tokenizer> FromJsonFile(const std::string& path);
  // Parses tokenizer.json text; source_name is used in error messages.
  static absl::StatusOr<Tokenizer> FromJson(absl::string_view json, absl::string_view source_name);
  // Builds from plain data (GGUF metadata); source_name is used in error messages.
  static absl::StatusOr<Tokenizer> FromData(const TokenizerData& data,
                                            absl::string_view source_name);
  // Builds from a resolved model after validating it.
  static absl::StatusOr<Tokenizer> FromModel(TokenizerModel model, absl::string_view source_name);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Text (valid UTF-8) -> ids.
  absl::StatusOr<std::vector<int32_t>> Encode(
      absl::string_view text, AddSpecialTokens add_special = AddSpecialTokens::kNo) const;

  // Ids -> text. Ids outside the vocabulary are skipped.
  std::string Decode(absl::Span<const int32_t> ids, SkipSpecialTokens skip) const;

  // Number of ids (model vocab and added tokens).
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token_.size()); }
  // Token text of an id (byte-level mapped), or nullopt when out of range or unused.
  std::optional<std::string> IdToToken(int32_t id) const;
  // Id of a token text (added tokens first), or nullopt.
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // Whether id is a special added token.
  bool IsSpecial(int32_t id) const;

 private:
  struct Cache;
  struct AddedMatcher {
    std::vector<AddedToken> tokens;  // sorted by length, longest first
    std::vector<std::vector<int>> by_first_byte;  // 256 lists of indices into tokens
  };

  Tokenizer() = default;

  // Appends the ids of text without added tokens (pre-tokenize + BPE).
  void EncodePlain(absl::string_view text, std::vector<int32_t>* ids) const;
  // Appends the BPE ids of one pre-token.
  void EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const;
  // Splits text into the added-token matches of one matcher (id >= 0) and plain runs (id -1).
  void SplitAdded(absl::string_view text, const AddedMatcher& matcher,
                  std::vector<std::pair<absl::string_view, int32_t>>* out) const;

  std::vector<std::string> id_to_token_;
  std::vector<char> is_special_;
  absl::flat_hash_map<std::string, int32_t> token_to_id_;  // model vocab
  absl::flat_hash_map<std::string, int32_t> added_to_id_;
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, id)
  std::vector<int32_t> byte_to_id_;  // 256 entries, -1 where the byte's character is not in vocab
  AddedMatcher raw_added_;           // normalized = false
  AddedMatcher normalized_added_;    // normalized = true
  PreTokenizerKind pre_tokenizer_ = PreTokenizerKind::kByteLevel;
  PrefixSpace prefix_space_ = PrefixSpace::kNo;
  bool ignore_merges_ = false;
  std::optional<int32_t> unk_id_;
  std::vector<int32_t> prefix_ids_;
  std::vector<int32_t> suffix_ids_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace sigmatune::data

#endif  // SIGMATUNE_WORKER_DATA_TOKENIZER_H_
