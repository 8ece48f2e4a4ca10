// safetensors (../shared/FORMATS.md §1): a strict reader over a memory map, a deterministic
// atomic writer, and sharded checkpoints (model.safetensors.index.json).
//
// Contract:
//  - Everything read from disk is validated before any tensor is handed out: the 8-byte header
//    length (at most 100,000,000), a JSON object header with no duplicate keys, entries with
//    "dtype" (a known name), "shape" (non-negative integers) and "data_offsets" ([begin, end]),
//    end - begin == numel * bits / 8, tensors tiling the data section exactly (first at 0, no gaps,
//    no overlaps, no trailing bytes), "__metadata__" a string -> string object. A violation is an
//    absl::Status whose message names the file, the tensor or field, and what to do about it.
//    Unknown extra keys inside a tensor entry are ignored, as the reference (Rust) reader does.
//  - Views: SafetensorsReader::GetTensor returns a zero-copy CPU Tensor over the read-only
//    mapping. Each view holds shared ownership of the mapping, so it stays valid after the reader
//    is destroyed. The bytes are read-only: writing through a view faults; call Contiguous() for a
//    mutable copy. (A tensor whose offset is not aligned to its element size, which only
//    non-standard writers produce, is copied instead of viewed.) Truncating a file while it is
//    mapped is undefined behaviour (SIGBUS), as with any mmap reader.
//  - dtypes: all names of FORMATS.md §1 are parsed and validated; GetTensor supports the ones
//    kernels/base has (F32, F64, BF16, F16, I32, I64) and returns Unimplemented for the others
//    (BOOL, U8, I8, I16, ...), whose bytes stay available through RawBytes.
//  - Writer: the same bytes as the Python `safetensors` library (0.8) for the same tensors and one
//    metadata key: compact JSON, "__metadata__" first, tensors ordered by descending dtype (the
//    library's dtype order) then name, header padded with spaces to a multiple of 8. Metadata keys
//    are written sorted (the Python library's order is a hash order), and "format": "pt" is added
//    when the caller gives no "format" (transformers rejects files without it).
//  - Little-endian hosts only (the format is little-endian; so is every machine we build for).
#ifndef SIGMATUNE_FORMATS_SAFETENSORS_H_
#define SIGMATUNE_FORMATS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/base/tensor.h"

namespace sigmatune::formats {

// safetensors element types, in the reference library's order (the writer sorts by it).
enum class SafetensorsDType {
  kBool,
  kF4,
  kF6E2M3,
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kF8E4M3Fnuz,
  kF8E5M2Fnuz,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};

// The wire name ("BF16", "F8_E4M3", ...).
absl::string_view SafetensorsDTypeName(SafetensorsDType dtype);
// Inverse of SafetensorsDTypeName; std::nullopt for an unknown name.
std::optional<SafetensorsDType> ParseSafetensorsDType(absl::string_view name);
// Bits per element (4 and 6 for the packed float types).
int SafetensorsDTypeBits(SafetensorsDType dtype);
// The kernels dtype of a safetensors dtype, if kernels/base has one.
std::optional<DType> ToKernelDType(SafetensorsDType dtype);
SafetensorsDType FromKernelDType(DType dtype);

// One tensor of a file. Offsets are relative to the data section (after the header).
struct SafetensorsEntry {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::kF32;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

// A validated header.
struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;  // ordered by begin (then name)
  std::map<std::string, std::string> metadata;
  uint64_t header_size = 0;  // N, padding included
  uint64_t data_offset() const { return 8 + header_size; }
};

// Largest header accepted (as the reference reader).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100000000;

// Parses and validates a complete file image (header and data). `source` names the file in
// errors. The single parser behind SafetensorsReader::Open/FromBuffer and the fuzzer.
absl::StatusOr<SafetensorsHeader> ParseSafetensors(absl::string_view file_bytes,
                                                   absl::string_view source);

// The bytes of one file image (a read-only mapping or an owned buffer); shared by a reader and
// every view made from it.
class SafetensorsBytes;

class SafetensorsReader {
 public:
  // Maps `path` read-only and validates it.
  static absl::StatusOr<SafetensorsReader> Open(const std::string& path);
  // Validates an in-memory file image; `source` names it in errors.
  static absl::StatusOr<SafetensorsReader> FromBuffer(std::string bytes, std::string source);

  const std::string& source() const { return source_; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // Entries ordered by data offset.
  const std::vector<SafetensorsEntry>& entries() const { return header_.tensors; }
  // Tensor names, sorted.
  std::vector<std::string> names() const;
  // name -> shape of every tensor.
  std::map<std::string, Shape> TensorShapes() const;
  bool Contains(const std::string& name) const { return index_.count(name) > 0; }
  // The entry of `name`, or nullptr.
  const SafetensorsEntry* Find(const std::string& name) const;

  // The raw little-endian bytes of a tensor (any dtype); valid while this reader lives.
  // NotFound naming the file and the tensor.
  absl::StatusOr<absl::string_view> RawBytes(const std::string& name) const;
  // A zero-copy CPU view (see the contract). NotFound for an unknown name; Unimplemented for a
  // dtype kernels/base lacks.
  absl::StatusOr<Tensor> GetTensor(const std::string& name) const;

 private:
  SafetensorsReader(std::shared_ptr<const SafetensorsBytes> bytes, std::string source,
                    SafetensorsHeader header);

  std::shared_ptr<const SafetensorsBytes> bytes_;
  std::string source_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;  // name -> position in header_.tensors
};

// Bytes of a tensor whose dtype kernels/base may lack, for the writer. `bytes` must stay alive
// until the write returns.
struct RawTensor {
  SafetensorsDType dtype = SafetensorsDType::kU8;
  Shape shape;
  absl::string_view bytes;
};

// The complete file image for `tensors` (CPU tensors of any strides; copied contiguous as needed)
// and `metadata` (see the writer contract). InvalidArgument naming the tensor for a GPU tensor, a
// name that is not UTF-8 or is "__metadata__", or raw bytes of the wrong size.
absl::StatusOr<std::string> SerializeSafetensors(const std::map<std::string, Tensor>& tensors,
                                                 const std::map<std::string, std::string>& metadata);
absl::StatusOr<std::string> SerializeSafetensors(const std::map<std::string, RawTensor>& tensors,
                                                 const std::map<std::string, std::string>& metadata);
// The same bytes, streamed to `path` atomically (formats/atomic_file.h).
absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata);
absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, RawTensor>& tensors,
                              const std::map<std::string, std::string>& metadata);

// A checkpoint split over several safetensors files by model.safetensors.index.json
// ({"metadata": {...}, "weight_map": {tensor: file}}; unknown keys ignored). Every shard is opened
// (mapped) once; every tensor the index names must exist in its shard.
class ShardedCheckpoint {
 public:
  // Opens the index and its shards (paths relative to the index's directory).
  static absl::StatusOr<ShardedCheckpoint> Open(const std::string& index_path);
  // A Hugging Face model directory: `dir`/model.safetensors.index.json when present, else the
  // single file `dir`/model.safetensors.
  static absl::StatusOr<ShardedCheckpoint> OpenDirectory(const std::string& dir);

  // The index file (or the single safetensors file) this checkpoint came from.
  const std::string& source() const { return source_; }
  std::vector<std::string> names() const;
  std::map<std::string, Shape> TensorShapes() const;
  bool Contains(const std::string& name) const { return tensor_to_shard_.count(name) > 0; }
  // The shard holding `name`; NotFound naming the index and the tensor.
  absl::StatusOr<const SafetensorsReader*> ShardOf(const std::string& name) const;
  // A zero-copy view of `name` (see SafetensorsReader::GetTensor).
  absl::StatusOr<Tensor> GetTensor(const std::string& name) const;
  size_t num_shards() const { return shards_.size(); }

 private:
  ShardedCheckpoint() = default;

  std::string source_;
  std::vector<SafetensorsReader> shards_;
  std::map<std::string, size_t> tensor_to_shard_;
};

}  // namespace sigmatune::formats

#endif  // SIGMATUNE_FORMATS_SAFETENSORS_H_
