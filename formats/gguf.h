// GGUF reader (FORMATS.md §4): a memory-mapped, read-only, validated view of a GGUF v2/v3 file.
//
// Contract:
//  - Open() maps the file read-only and validates all of it before returning: magic, version (2 or
//    3), counts, every metadata value (nested arrays included), every tensor info (name <= 64
//    bytes, n_dims <= 4, dims, known ggml type, dims[0] a multiple of the type's block), the
//    alignment (general.alignment, u32, a non-zero multiple of 8, default 32), the aligned data
//    section start, and that every tensor lies inside the file at an aligned offset without
//    overlapping another. Duplicate keys or tensor names are errors. Nothing the file says can make
//    the reader allocate more than a small multiple of the file size: counts and lengths are
//    checked against the bytes left before anything is reserved.
//  - Every error is an absl::Status whose message starts with "gguf <path>:" and names the key or
//    tensor and what is wrong. Malformed files give InvalidArgument, unsupported versions and
//    ggml type ids Unimplemented, missing keys/tensors NotFound.
//  - Metadata strings and tensor bytes are zero-copy views into the mapping. They stay valid as
//    long as the GgufFile (or a GgufTensorBytes::keepalive taken from it) lives: the mapping is
//    shared ownership, and moving the GgufFile keeps it.
//  - Shapes: GgufTensorInfo::ggml_dims is the file's order (ne[0] innermost); `shape` is the
//    PyTorch order (reversed), describing the same bytes row-major.
//  - Thread-safe for concurrent const use.
#ifndef SIGMATUNE_FORMATS_GGUF_H_
#define SIGMATUNE_FORMATS_GGUF_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "formats/gguf_types.h"
#include "kernels/base/tensor.h"

namespace sigmatune {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
// "u32", "string", "array", ... ("type 77" for an id outside the enum).
std::string GgufValueTypeName(GgufValueType type);

// One metadata value, located in the mapping (validated when the file was opened).
struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  GgufValueType elem_type = GgufValueType::kU8;  // arrays only
  uint64_t count = 0;   // arrays: elements; strings: bytes; scalars: 1
  uint64_t offset = 0;  // file offset of the payload (scalar, string bytes, first array element)
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ggml_dims;  // file order: ggml_dims[0] is contiguous
  Shape shape;                     // PyTorch order: reverse of ggml_dims
  int64_t numel = 0;
  uint64_t offset = 0;       // relative to the data section, as stored
  uint64_t file_offset = 0;  // absolute
  uint64_t nbytes = 0;
};

// Bytes of one tensor; `bytes` stays valid while `keepalive` (the mapping) is held.
struct GgufTensorBytes {
  const GgufTensorInfo* info = nullptr;  // valid while the GgufFile lives
  absl::Span<const uint8_t> bytes;
  std::shared_ptr<const void> keepalive;
};

class GgufFile {
 public:
  // Maps and validates `path`.
  static absl::StatusOr<GgufFile> Open(const std::string& path);
  // Validates an in-memory copy of a file (tests, the fuzzer); `name` stands for the path in errors.
  static absl::StatusOr<GgufFile> FromBytes(std::string name, std::string bytes);

  GgufFile(GgufFile&&) = default;
  GgufFile& operator=(GgufFile&&) = default;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }

  // ---- Metadata ----
  // Keys in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  bool HasKey(absl::string_view key) const;
  // nullptr when absent.
  const GgufValue* FindValue(absl::string_view key) const;

  // Typed accessors. NotFound when the key is absent; InvalidArgument naming the key, the expected
  // and the stored type otherwise. Integer getters accept any integer type whose value fits.
  absl::StatusOr<uint64_t> GetU64(absl::string_view key) const;
  absl::StatusOr<uint32_t> GetU32(absl::string_view key) const;
  absl::StatusOr<int64_t> GetI64(absl::string_view key) const;
  absl::StatusOr<float> GetF32(absl::string_view key) const;   // f32 only
  absl::StatusOr<double> GetF64(absl::string_view key) const;  // f32 or f64
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  absl::StatusOr<absl::string_view> GetString(absl::string_view key) const;  // view into the map
  absl::StatusOr<std::vector<std::string>> GetStringArray(absl::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(absl::string_view key) const;  // any int elems
  absl::StatusOr<std::vector<double>> GetFloatArray(absl::string_view key) const;  // f32 / f64
  // Number of elements of an array value.
  absl::StatusOr<uint64_t> GetArrayLength(absl::string_view key) const;

  // Lower-level access to already validated values (nested arrays).
  std::vector<GgufValue> ArrayElements(const GgufValue& array) const;  // ST_CHECKs an array
  absl::string_view StringValue(const GgufValue& value) const;         // ST_CHECKs a string
  // Integer value of an integer-typed scalar (bool counts as 0/1); ST_CHECKs the type.
  int64_t IntValue(const GgufValue& value) const;
  uint64_t UIntValue(const GgufValue& value) const;  // u64 without sign games
  double FloatValue(const GgufValue& value) const;   // f32/f64; ST_CHECKs the type

  // ---- Tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(absl::string_view name) const;
  // NotFound naming the file and tensor when absent.
  absl::StatusOr<GgufTensorBytes> TensorBytes(absl::string_view name) const;
  GgufTensorBytes TensorBytes(const GgufTensorInfo& info) const;  // info must be from this file

 private:
  GgufFile() = default;
  static absl::StatusOr<GgufFile> Parse(std::string path, std::shared_ptr<const void> owner,
                                        const uint8_t* data, uint64_t size);
  absl::StatusOr<const GgufValue*> Lookup(absl::string_view key) const;
  absl::Status TypeError(absl::string_view key, const GgufValue& v,
                         absl::string_view expected) const;

  std::string path_;
  std::shared_ptr<const void> owner_;  // keeps `data_` mapped
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::string> keys_;
  std::map<std::string, GgufValue, std::less<>> values_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Caps on what a file may declare (beyond "fits in the bytes left").
inline constexpr uint64_t kGgufMaxTensorNameBytes = 64;
inline constexpr uint64_t kGgufMaxKeyBytes = 65536;
inline constexpr int kGgufMaxArrayDepth = 8;
inline constexpr int kGgufMaxDims = 4;

}  // namespace sigmatune

#endif  // SIGMATUNE_FORMATS_GGUF_H_
