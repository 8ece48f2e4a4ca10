#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formats/atomic_file.h"
#include "formats/json_util.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace sigmatune::formats {

// A file image: a read-only private mapping or an owned string.
class SafetensorsBytes {
 public:
  explicit SafetensorsBytes(std::string owned) : owned_(std::move(owned)), view_(owned_) {}
  SafetensorsBytes(void* map, size_t size)
      : map_(map), map_size_(size), view_(static_cast<const char*>(map), size) {}
  SafetensorsBytes(const SafetensorsBytes&) = delete;
  SafetensorsBytes& operator=(const SafetensorsBytes&) = delete;
  ~SafetensorsBytes() {
    if (map_ != nullptr) ::munmap(map_, map_size_);
  }
  absl::string_view view() const { return view_; }

 private:
  std::string owned_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  absl::string_view view_;
};

namespace {

using nlohmann::json;

struct DTypeInfo {
  SafetensorsDType dtype;
  const char* name;
  int bits;
};

constexpr DTypeInfo kDTypes[] = {
    {SafetensorsDType::kBool, "BOOL", 8},
    {SafetensorsDType::kF4, "F4", 4},
    {SafetensorsDType::kF6E2M3, "F6_E2M3", 6},
    {SafetensorsDType::kF6E3M2, "F6_E3M2", 6},
    {SafetensorsDType::kU8, "U8", 8},
    {SafetensorsDType::kI8, "I8", 8},
    {SafetensorsDType::kF8E5M2, "F8_E5M2", 8},
    {SafetensorsDType::kF8E4M3, "F8_E4M3", 8},
    {SafetensorsDType::kF8E8M0, "F8_E8M0", 8},
    {SafetensorsDType::kF8E4M3Fnuz, "F8_E4M3FNUZ", 8},
    {SafetensorsDType::kF8E5M2Fnuz, "F8_E5M2FNUZ", 8},
    {SafetensorsDType::kI16, "I16", 16},
    {SafetensorsDType::kU16, "U16", 16},
    {SafetensorsDType::kF16, "F16", 16},
    {SafetensorsDType::kBF16, "BF16", 16},
    {SafetensorsDType::kI32, "I32", 32},
    {SafetensorsDType::kU32, "U32", 32},
    {SafetensorsDType::kF32, "F32", 32},
    {SafetensorsDType::kC64, "C64", 64},
    {SafetensorsDType::kF64, "F64", 64},
    {SafetensorsDType::kI64, "I64", 64},
    {SafetensorsDType::kU64, "U64", 64},
};

const DTypeInfo& Info(SafetensorsDType dtype) {
  const auto i = static_cast<size_t>(dtype);
  ST_CHECK(i < sizeof(kDTypes) / sizeof(kDTypes[0]));
  return kDTypes[i];
}

constexpr const char* kKnownDTypes =
    "BOOL U8 I8 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 C64 F8_E5M2 F8_E4M3 F8_E8M0 F8_E4M3FNUZ "
    "F8_E5M2FNUZ F4 F6_E2M3 F6_E3M2";

// Deepest JSON nesting a header may have (root object, entry, shape array, and some slack for
// unknown keys). Bounds the parser's work on hostile input.
constexpr int kMaxHeaderDepth = 16;

absl::Status Corrupt(absl::string_view source, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(
      source, ": ", what,
      "; the file is not valid safetensors (truncated or hand-edited?) - re-export it with the "
      "safetensors library"));
}

absl::Status CorruptTensor(absl::string_view source, absl::string_view name,
                           absl::string_view what) {
  return Corrupt(source, absl::StrCat("tensor '", name, "': ", what));
}


// Parses JSON with no exceptions; reports the first duplicate key of any object.
struct ParsedJson {
  json value;
  std::optional<std::string> duplicate_key;
};

ParsedJson ParseJsonNoDuplicates(absl::string_view text) {
  ParsedJson out;
  std::vector<std::set<std::string>> keys;
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string()) {
          const std::string* key = parsed.get_ptr<const std::string*>();
          if (!keys.back().insert(*key).second && !out.duplicate_key) out.duplicate_key = *key;
        }
        break;
      default:
        break;
    }
    return true;
  };
  out.value = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  return out;
}

std::string JsonTypeName(const json& j) { return j.type_name(); }

absl::StatusOr<SafetensorsEntry> ParseEntry(absl::string_view source, const std::string& name,
                                            const json& entry) {
  if (!entry.is_object()) {
    return CorruptTensor(source, name,
                         absl::StrCat("entry is a JSON ", JsonTypeName(entry), ", expected an object"));
  }
  SafetensorsEntry out;
  out.name = name;
  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return CorruptTensor(source, name, "field 'dtype' is missing or not a string");
  }
  const std::string* dtype_name = dtype_it->get_ptr<const std::string*>();
  const std::optional<SafetensorsDType> dtype = ParseSafetensorsDType(*dtype_name);
  if (!dtype) {
    return CorruptTensor(source, name,
                         absl::StrCat("field 'dtype' is the unknown dtype '", *dtype_name,
                                      "' (known: ", kKnownDTypes, ")"));
  }
  out.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return CorruptTensor(source, name, "field 'shape' is missing or not an array");
  }
  uint64_t numel = 1;
  for (const json& d : *shape_it) {
    if (!d.is_number_unsigned()) {
      return CorruptTensor(source, name,
                           absl::StrCat("field 'shape' holds ", d.dump(),
                                        ", expected non-negative integers"));
    }
    const uint64_t dim = d.get<uint64_t>();
    if (dim > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel)) {
      return CorruptTensor(source, name,
                           absl::StrCat("field 'shape' ", shape_it->dump(), " overflows 64 bits"));
    }
    out.shape.push_back(static_cast<int64_t>(dim));
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return CorruptTensor(source, name,
                         "field 'data_offsets' is missing or not [begin, end] (two non-negative "
                         "integers)");
  }
  out.begin = (*offsets_it)[0].get<uint64_t>();
  out.end = (*offsets_it)[1].get<uint64_t>();
  if (out.end < out.begin) {
    return CorruptTensor(source, name,
                         absl::StrCat("data_offsets [", out.begin, ", ", out.end,
                                      "] end before they begin"));
  }
  uint64_t bits = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(Info(out.dtype).bits), &bits)) {
    return CorruptTensor(source, name, absl::StrCat("shape ", ShapeToString(out.shape), " of ",
                                                    *dtype_name, " overflows 64 bits"));
  }
  if (bits % 8 != 0) {
    return CorruptTensor(source, name,
                         absl::StrCat("shape ", ShapeToString(out.shape), " of ", *dtype_name,
                                      " does not end on a byte boundary"));
  }
  if (out.end - out.begin != bits / 8) {
    return CorruptTensor(source, name,
                         absl::StrCat("data_offsets [", out.begin, ", ", out.end, "] cover ",
                                      out.end - out.begin, " bytes but ", *dtype_name, " ",
                                      ShapeToString(out.shape), " needs ", bits / 8));
  }
  return out;
}

}  // namespace

absl::string_view SafetensorsDTypeName(SafetensorsDType dtype) { return Info(dtype).name; }

std::optional<SafetensorsDType> ParseSafetensorsDType(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return std::nullopt;
}

int SafetensorsDTypeBits(SafetensorsDType dtype) { return Info(dtype).bits; }

std::optional<DType> ToKernelDType(SafetensorsDType dtype) {
  switch (dtype) {
    case SafetensorsDType::kF32:
      return DType::kF32;
    case SafetensorsDType::kF64:
      return DType::kF64;
    case SafetensorsDType::kBF16:
      return DType::kBF16;
    case SafetensorsDType::kF16:
      return DType::kF16;
    case SafetensorsDType::kI32:
      return DType::kI32;
    case SafetensorsDType::kI64:
      return DType::kI64;
    default:
      return std::nullopt;
  }
}

SafetensorsDType FromKernelDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return SafetensorsDType::kF32;
    case DType::kF64:
      return SafetensorsDType::kF64;
    case DType::kBF16:
      return SafetensorsDType::kBF16;
    case DType::kF16:
      return SafetensorsDType::kF16;
    case DType::kI32:
      return SafetensorsDType::kI32;
    case DType::kI64:
      return SafetensorsDType::kI64;
  }
  ST_CHECK(false) << "unhandled DType " << static_cast<int>(dtype);
  return SafetensorsDType::kF32;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensors(absl::string_view file_bytes,
                                                   absl::string_view source) {
  if (file_bytes.size() < 8) {
    return Corrupt(source, absl::StrCat("the file has ", file_bytes.size(),
                                        " bytes, fewer than the 8-byte header length"));
  }
  uint64_t n = 0;
  std::memcpy(&n, file_bytes.data(), 8);  // little-endian host
  if (n > kMaxSafetensorsHeaderBytes) {
    return Corrupt(source, absl::StrCat("header length ", n, " exceeds the limit of ",
                                        kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (n > file_bytes.size() - 8) {
    return Corrupt(source, absl::StrCat("header length ", n, " runs past the end of the file (",
                                        file_bytes.size(), " bytes)"));
  }
  const absl::string_view text = file_bytes.substr(8, n);
  if (!JsonNestingWithin(text, kMaxHeaderDepth)) {
    return Corrupt(source, absl::StrCat("header JSON is nested deeper than ", kMaxHeaderDepth));
  }
  ParsedJson parsed = ParseJsonNoDuplicates(text);
  if (parsed.value.is_discarded()) {
    return Corrupt(source, "header is not valid UTF-8 JSON");
  }
  if (!parsed.value.is_object()) {
    return Corrupt(source, absl::StrCat("header is a JSON ", JsonTypeName(parsed.value),
                                        ", expected an object"));
  }
  if (parsed.duplicate_key) {
    return Corrupt(source, absl::StrCat("header has the key '", *parsed.duplicate_key,
                                        "' twice (duplicate tensor name or field)"));
  }

  SafetensorsHeader header;
  header.header_size = n;
  for (const auto& [name, value] : parsed.value.items()) {
    if (name == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        return Corrupt(source, absl::StrCat("field '__metadata__' is a JSON ", JsonTypeName(value),
                                            ", expected an object of strings"));
      }
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) {
          return Corrupt(source, absl::StrCat("field '__metadata__' key '", key, "' is a JSON ",
                                              JsonTypeName(v), "; metadata values must be strings"));
        }
        header.metadata.emplace(key, v.get<std::string>());
      }
      continue;
    }
    ST_ASSIGN_OR_RETURN(SafetensorsEntry entry, ParseEntry(source, name, value));
    header.tensors.push_back(std::move(entry));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  const uint64_t data_size = file_bytes.size() - 8 - n;
  uint64_t expected_begin = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& e : header.tensors) {
    if (e.begin > expected_begin) {
      return CorruptTensor(source, e.name,
                           absl::StrCat("data_offsets [", e.begin, ", ", e.end,
                                        "] leave a gap of ", e.begin - expected_begin,
                                        " bytes after ",
                                        previous ? absl::StrCat("tensor '", previous->name, "'")
                                                 : "the start of the data section"));
    }
    if (e.begin < expected_begin) {
      return CorruptTensor(source, e.name,
                           absl::StrCat("data_offsets [", e.begin, ", ", e.end,
                                        "] overlap tensor '", previous->name, "' [",
                                        previous->begin, ", ", previous->end, "]"));
    }
    if (e.end > data_size) {
      return CorruptTensor(source, e.name,
                           absl::StrCat("data_offsets [", e.begin, ", ", e.end,
                                        "] run past the data section (", data_size, " bytes)"));
    }
    expected_begin = e.end;
    if (e.end > e.begin || previous == nullptr) previous = &e;
  }
  if (expected_begin != data_size) {
    return Corrupt(source, absl::StrCat("the data section has ", data_size, " bytes but the tensors "
                                        "cover ", expected_begin, " (trailing bytes)"));
  }
  return header;
}

SafetensorsReader::SafetensorsReader(std::shared_ptr<const SafetensorsBytes> bytes,
                                     std::string source, SafetensorsHeader header)
    : bytes_(std::move(bytes)), source_(std::move(source)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

absl::StatusOr<SafetensorsReader> SafetensorsReader::FromBuffer(std::string bytes,
                                                                std::string source) {
  auto holder = std::make_shared<const SafetensorsBytes>(std::move(bytes));
  ST_ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensors(holder->view(), source));
  return SafetensorsReader(std::move(holder), std::move(source), std::move(header));
}

absl::StatusOr<SafetensorsReader> SafetensorsReader::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return (err == ENOENT ? absl::NotFoundError : absl::PermissionDeniedError)(absl::StrCat(
        path, ": cannot open safetensors file: ", std::strerror(err),
        "; check the path and its permissions"));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": not a regular file; pass the path of a .safetensors file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Corrupt(path, absl::StrCat("the file has ", size,
                                      " bytes, fewer than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": mmap of ", size, " bytes failed: ", std::strerror(err)));
  }
  auto holder = std::make_shared<const SafetensorsBytes>(map, size);
  ST_ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensors(holder->view(), path));
  return SafetensorsReader(std::move(holder), path, std::move(header));
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, i] : index_) out.push_back(name);
  return out;
}

std::map<std::string, Shape> SafetensorsReader::TensorShapes() const {
  std::map<std::string, Shape> out;
  for (const SafetensorsEntry& e : header_.tensors) out.emplace(e.name, e.shape);
  return out;
}

const SafetensorsEntry* SafetensorsReader::Find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

absl::StatusOr<absl::string_view> SafetensorsReader::RawBytes(const std::string& name) const {
  const SafetensorsEntry* e = Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(source_, ": no tensor '", name, "' (the file has ", index_.size(),
                     " tensors; check the name)"));
  }
  return bytes_->view().substr(header_.data_offset() + e->begin, e->nbytes());
}

absl::StatusOr<Tensor> SafetensorsReader::GetTensor(const std::string& name) const {
  ST_ASSIGN_OR_RETURN(absl::string_view raw, RawBytes(name));
  const SafetensorsEntry& e = *Find(name);
  const std::optional<DType> dtype = ToKernelDType(e.dtype);
  if (!dtype) {
    return absl::UnimplementedError(absl::StrCat(
        source_, ": tensor '", name, "' has dtype ", SafetensorsDTypeName(e.dtype),
        ", which kernels/base has no Tensor type for (F32, F64, BF16, F16, I32, I64); read its "
        "bytes with RawBytes() or convert the checkpoint"));
  }
  const auto address = reinterpret_cast<uintptr_t>(raw.data());
  if (address % SizeOf(*dtype) != 0) {
    // Misaligned (non-standard writer): an owned copy instead of a view.
    Tensor copy = Tensor::Empty(e.shape, *dtype);
    if (!raw.empty()) std::memcpy(copy.raw_data(), raw.data(), raw.size());
    return copy;
  }
  std::shared_ptr<const SafetensorsBytes> keep = bytes_;
  auto storage = std::make_shared<Storage>(const_cast<char*>(raw.data()), raw.size(), Device::Cpu(),
                                           [keep](void*) {});
  return Tensor(std::move(storage), *dtype, e.shape, Tensor::ContiguousStrides(e.shape), 0);
}

// ---------------------------------------------------------------------------------------------
// Writer.

namespace {

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int extra = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

// A JSON string literal as serde_json writes it (the Rust library's serializer).
void AppendJsonString(std::string* out, absl::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 0xF]);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

struct PreparedFile {
  std::string prefix;                    // 8-byte length + padded header
  std::vector<absl::string_view> data;  // tensor bytes in file order
};

absl::StatusOr<PreparedFile> Prepare(const std::map<std::string, RawTensor>& tensors,
                                     const std::map<std::string, std::string>& metadata,
                                     absl::string_view target) {
  const auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("writing safetensors ", target, ": ", what));
  };
  std::vector<std::pair<const std::string*, const RawTensor*>> order;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") return bad("a tensor may not be named '__metadata__'; rename it");
    if (!IsValidUtf8(name)) return bad(absl::StrCat("tensor name '", name, "' is not UTF-8"));
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
        return bad(absl::StrCat("tensor '", name, "' has the bad shape ", ShapeToString(t.shape)));
      }
    }
    const uint64_t bits = numel * static_cast<uint64_t>(SafetensorsDTypeBits(t.dtype));
    if (bits % 8 != 0 || bits / 8 != t.bytes.size()) {
      return bad(absl::StrCat("tensor '", name, "' has ", t.bytes.size(), " bytes but ",
                              SafetensorsDTypeName(t.dtype), " ", ShapeToString(t.shape),
                              " needs ", bits / 8, bits % 8 ? " and a whole byte" : ""));
    }
    order.emplace_back(&name, &t);
  }
  for (const auto& [key, value] : metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
      return bad(absl::StrCat("metadata key '", key, "' or its value is not UTF-8"));
    }
  }
  // Descending dtype (the reference library's enum order), then name.
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    if (a.second->dtype != b.second->dtype) return a.second->dtype > b.second->dtype;
    return *a.first < *b.first;
  });

  std::string header = "{";
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  header.append("\"__metadata__\":{");
  bool first = true;
  for (const auto& [key, value] : meta) {
    if (!first) header.push_back(',');
    first = false;
    AppendJsonString(&header, key);
    header.push_back(':');
    AppendJsonString(&header, value);
  }
  header.push_back('}');
  PreparedFile out;
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    header.push_back(',');
    AppendJsonString(&header, *name);
    absl::StrAppend(&header, ":{\"dtype\":\"", SafetensorsDTypeName(t->dtype), "\",\"shape\":[",
                    absl::StrJoin(t->shape, ","), "],\"data_offsets\":[", offset, ",",
                    offset + t->bytes.size(), "]}");
    offset += t->bytes.size();
    out.data.push_back(t->bytes);
  }
  header.push_back('}');
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t n = header.size();
  out.prefix.resize(8);
  std::memcpy(&out.prefix[0], &n, 8);
  out.prefix.append(header);
  return out;
}

// Raw views of CPU tensors; non-contiguous ones are copied into `keep`.
absl::StatusOr<std::map<std::string, RawTensor>> AsRaw(const std::map<std::string, Tensor>& tensors,
                                                       absl::string_view target,
                                                       std::vector<Tensor>* keep) {
  std::map<std::string, RawTensor> out;
  keep->reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (!t.defined() || !t.device().is_cpu()) {
      return absl::InvalidArgumentError(
          absl::StrCat("writing safetensors ", target, ": tensor '", name, "' is ",
                       t.defined() ? t.DebugString() : "undefined",
                       "; pass a defined CPU tensor (copy GPU tensors to the host first)"));
    }
    const Tensor& c = t.is_contiguous() ? t : keep->emplace_back(t.Contiguous());
    out.emplace(name, RawTensor{FromKernelDType(c.dtype()), c.shape(),
                                absl::string_view(static_cast<const char*>(c.raw_data()), c.nbytes())});
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> SerializeSafetensors(const std::map<std::string, RawTensor>& tensors,
                                                 const std::map<std::string, std::string>& metadata) {
  ST_ASSIGN_OR_RETURN(PreparedFile prepared, Prepare(tensors, metadata, "(in memory)"));
  std::string out = std::move(prepared.prefix);
  for (absl::string_view d : prepared.data) out.append(d.data(), d.size());
  return out;
}

absl::StatusOr<std::string> SerializeSafetensors(const std::map<std::string, Tensor>& tensors,
                                                 const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> keep;
  ST_ASSIGN_OR_RETURN(auto raw, AsRaw(tensors, "(in memory)", &keep));
  return SerializeSafetensors(raw, metadata);
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, RawTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  ST_ASSIGN_OR_RETURN(PreparedFile prepared, Prepare(tensors, metadata, path));
  ST_ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Open(path));
  ST_RETURN_IF_ERROR(writer.Append(prepared.prefix));
  for (absl::string_view d : prepared.data) ST_RETURN_IF_ERROR(writer.Append(d));
  return writer.Commit();
}

absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> keep;
  ST_ASSIGN_OR_RETURN(auto raw, AsRaw(tensors, path, &keep));
  return WriteSafetensors(path, raw, metadata);
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints.

namespace {

constexpr uint64_t kMaxIndexBytes = 100000000;

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// A shard file name must stay inside the checkpoint directory.
bool IsSafeRelativePath(const std::string& file) {
  if (file.empty() || file[0] == '/') return false;
  size_t start = 0;
  while (start <= file.size()) {
    const size_t slash = file.find('/', start);
    const std::string part =
        file.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

}  // namespace

absl::StatusOr<ShardedCheckpoint> ShardedCheckpoint::Open(const std::string& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(index_path, ": cannot open the safetensors index: ",
                                            std::strerror(errno), "; check the model directory"));
  }
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxIndexBytes) {
      return absl::DataLossError(
          absl::StrCat(index_path, ": larger than ", kMaxIndexBytes, " bytes; not an index file"));
    }
  }
  const auto bad = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat(
        index_path, ": ", what, "; expected {\"weight_map\": {tensor: shard file}} as written by "
        "transformers"));
  };
  if (!JsonNestingWithin(text, kMaxHeaderDepth)) return bad("JSON nested too deeply");
  ParsedJson parsed = ParseJsonNoDuplicates(text);
  if (parsed.value.is_discarded() || !parsed.value.is_object()) {
    return bad("not a JSON object");
  }
  const auto map_it = parsed.value.find("weight_map");
  if (map_it == parsed.value.end() || !map_it->is_object()) {
    return bad("field 'weight_map' is missing or not an object");
  }
  if (parsed.duplicate_key) {
    return bad(absl::StrCat("the key '", *parsed.duplicate_key, "' appears twice"));
  }

  ShardedCheckpoint out;
  out.source_ = index_path;
  const std::string dir = DirName(index_path);
  std::map<std::string, size_t> shard_index;  // file -> position in shards_
  for (const auto& [tensor, file_json] : map_it->items()) {
    if (!file_json.is_string()) {
      return bad(absl::StrCat("field 'weight_map' entry '", tensor, "' is a JSON ",
                              JsonTypeName(file_json), ", expected a file name"));
    }
    const std::string file = file_json.get<std::string>();
    if (!IsSafeRelativePath(file)) {
      return bad(absl::StrCat("field 'weight_map' entry '", tensor, "' names the shard '", file,
                              "', which is not a relative path inside the model directory"));
    }
    auto it = shard_index.find(file);
    if (it == shard_index.end()) {
      absl::StatusOr<SafetensorsReader> shard = SafetensorsReader::Open(absl::StrCat(dir, "/", file));
      if (!shard.ok()) {
        return absl::Status(shard.status().code(),
                            absl::StrCat(index_path, ": shard '", file, "' (holding tensor '", tensor,
                                         "'): ", shard.status().message()));
      }
      it = shard_index.emplace(file, out.shards_.size()).first;
      out.shards_.push_back(*std::move(shard));
    }
    const SafetensorsReader& shard = out.shards_[it->second];
    if (!shard.Contains(tensor)) {
      return absl::DataLossError(absl::StrCat(
          index_path, ": tensor '", tensor, "' is mapped to shard '", file,
          "', which does not contain it; the index and the shards do not match (re-download "
          "the checkpoint)"));
    }
    out.tensor_to_shard_.emplace(tensor, it->second);
  }
  return out;
}

absl::StatusOr<ShardedCheckpoint> ShardedCheckpoint::OpenDirectory(const std::string& dir) {
  const std::string index = absl::StrCat(dir, "/model.safetensors.index.json");
  if (FileExists(index)) return Open(index);
  const std::string single = absl::StrCat(dir, "/model.safetensors");
  if (!FileExists(single)) {
    return absl::NotFoundError(absl::StrCat(
        dir, ": neither model.safetensors.index.json nor model.safetensors exists; pass a Hugging "
        "Face model directory with safetensors weights"));
  }
  ST_ASSIGN_OR_RETURN(SafetensorsReader reader, SafetensorsReader::Open(single));
  ShardedCheckpoint out;
  out.source_ = single;
  for (const std::string& name : reader.names()) out.tensor_to_shard_.emplace(name, 0);
  out.shards_.push_back(std::move(reader));
  return out;
}

std::vector<std::string> ShardedCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensor_to_shard_.size());
  for (const auto& [name, shard] : tensor_to_shard_) out.push_back(name);
  return out;
}

std::map<std::string, Shape> ShardedCheckpoint::TensorShapes() const {
  std::map<std::string, Shape> out;
  for (const auto& [name, shard] : tensor_to_shard_) {
    out.emplace(name, shards_[shard].Find(name)->shape);
  }
  return out;
}

absl::StatusOr<const SafetensorsReader*> ShardedCheckpoint::ShardOf(const std::string& name) const {
  const auto it = tensor_to_shard_.find(name);
  if (it == tensor_to_shard_.end()) {
    return absl::NotFoundError(absl::StrCat(source_, ": no tensor '", name, "' in the checkpoint (",
                                            tensor_to_shard_.size(),
                                            " tensors; check the name and the model type)"));
  }
  return &shards_[it->second];
}

absl::StatusOr<Tensor> ShardedCheckpoint::GetTensor(const std::string& name) const {
  ST_ASSIGN_OR_RETURN(const SafetensorsReader* shard, ShardOf(name));
  return shard->GetTensor(name);
}

}  // namespace sigmatune::formats
