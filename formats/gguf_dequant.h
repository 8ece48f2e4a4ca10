// Dequantisation of GGUF tensors (FORMATS.md §4) into f32 or bf16, on the CPU.
//
// Contract:
//  - Supported types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K. The f32 results equal
//    `gguf.quants.dequantize` (gguf-py 0.19) bit for bit: every product/sum is one float32
//    operation in the same order as the reference (this library is built with -ffp-contract=off so
//    that no FMA fuses them). bf16 output is the f32 result rounded to nearest even
//    (FloatToBFloat16).
//  - Any other ggml type gives Unimplemented naming the file, tensor and type.
//  - DequantizeBlocks works on raw bytes (programmer errors: sizes that do not match trip
//    ST_CHECK); DequantizeTensor reads a tensor of a validated GgufFile and returns a new contiguous
//    CPU tensor in the PyTorch-order shape (GgufTensorInfo::shape).
#ifndef SIGMATUNE_FORMATS_GGUF_DEQUANT_H_
#define SIGMATUNE_FORMATS_GGUF_DEQUANT_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "formats/gguf.h"
#include "formats/gguf_types.h"
#include "kernels/base/tensor.h"

namespace sigmatune {

// Decodes `src` (a whole number of blocks of `type`) into out.size() floats.
// ST_CHECKs that `type` is supported and that src.size() == out.size() / block_elems * block_bytes.
void DequantizeBlocks(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> out);

// Dequantises tensor `info` of `file` into a new CPU tensor of dtype `out` (kF32 or kBF16; other
// dtypes are a programmer error).
absl::StatusOr<Tensor> DequantizeTensor(const GgufFile& file, const GgufTensorInfo& info,
                                        DType out);
// By name: NotFound naming the file and tensor when absent.
absl::StatusOr<Tensor> DequantizeTensor(const GgufFile& file, absl::string_view name, DType out);

}  // namespace sigmatune

#endif  // SIGMATUNE_FORMATS_GGUF_DEQUANT_H_
