// ggml tensor types as GGUF stores them (FORMATS.md §4): ids, block sizes, names.
//
// Contract: pure tables, no I/O. Every ggml type id that the `gguf` package (0.19) knows has a
// block size here, so a reader can lay out files whose tensors it cannot dequantise; only the
// types for which GgmlTypeCanDequantize is true have a decoder (gguf_dequant.h).
#ifndef SIGMATUNE_FORMATS_GGUF_TYPES_H_
#define SIGMATUNE_FORMATS_GGUF_TYPES_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace sigmatune {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// Elements per block and bytes per block of one ggml type.
struct GgmlTypeTraits {
  GgmlType type;
  absl::string_view name;  // "Q4_K", as ggml spells it
  int64_t block_elems;
  int64_t block_bytes;
};

// The traits of a raw type id; nullptr for an id that no known ggml version defines.
const GgmlTypeTraits* FindGgmlType(uint32_t id);
// The traits of a known type (never null for an enumerator above).
const GgmlTypeTraits& GgmlTraits(GgmlType type);
absl::string_view GgmlTypeName(GgmlType type);
// F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
bool GgmlTypeCanDequantize(GgmlType type);

}  // namespace sigmatune

#endif  // SIGMATUNE_FORMATS_GGUF_TYPES_H_
