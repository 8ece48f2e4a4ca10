// Building blocks of the byte-level BPE tokenizer (tokenizer.h): UTF-8 handling, the GPT-2
// byte<->unicode mapping and the pre-tokenizers of Hugging Face `tokenizers`.
//
// Contract: every function is pure and thread-safe. Functions that split text return views into
// the input (which must outlive them), in order, covering the input exactly (concatenating the
// pieces gives the input back). Text passed to the splitters must be valid UTF-8
// (IsValidUtf8); the splitters CHECK-fail otherwise, since Tokenizer::Encode validates first.
#ifndef SIGMATUNE_WORKER_DATA_TOKENIZER_PRETOKENIZE_H_
#define SIGMATUNE_WORKER_DATA_TOKENIZER_PRETOKENIZE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace sigmatune::data {

// Decodes the code point starting at text[pos] (text valid UTF-8) and stores its byte length.
char32_t DecodeUtf8At(absl::string_view text, size_t pos, size_t* length);

// Appends the UTF-8 encoding of c (c <= U+10FFFF, not a surrogate) to out.
void AppendUtf8(char32_t c, std::string* out);

// Returns true when text is well-formed UTF-8 (no overlong forms, surrogates or values above
// U+10FFFF). On false, *error_offset (if not null) is the byte offset of the first bad sequence.
bool IsValidUtf8(absl::string_view text, size_t* error_offset = nullptr);

// Converts bytes to UTF-8 the way Rust's String::from_utf8_lossy does: each maximal ill-formed
// subsequence becomes one U+FFFD.
std::string Utf8Lossy(absl::string_view bytes);

// The GPT-2 byte -> code point table (FORMATS.md section 5): printable bytes map to themselves,
// the other 68 to U+0100.. in ascending byte order.
char32_t ByteToUnicode(unsigned char byte);

// The inverse of ByteToUnicode; returns -1 for a code point that no byte maps to.
int UnicodeToByte(char32_t c);

// Maps every byte of text through ByteToUnicode and returns the UTF-8 of the result.
std::string BytesToUnicodeString(absl::string_view text);

// Splits text with the GPT-2 pattern, exactly as Oniguruma matches it:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void SplitGpt2(absl::string_view text, std::vector<absl::string_view>* pieces);

// The Digits pre-tokenizer with individual_digits = true: every \p{N} code point becomes its own
// piece; the runs between them are pieces too.
void SplitDigits(absl::string_view text, std::vector<absl::string_view>* pieces);

}  // namespace sigmatune::data

#endif  // SIGMATUNE_WORKER_DATA_TOKENIZER_PRETOKENIZE_H_
