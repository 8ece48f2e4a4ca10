#include "formats/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/check.h"
#include "kernels/base/status_macros.h"

namespace sigmatune {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 20;

bool IsValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kF64); }

// Bytes of a fixed-size value type; 0 for string/array.
uint64_t FixedSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

// Least bytes one element of type t can occupy (bounds counts before anything is reserved).
uint64_t MinSize(GgufValueType t) {
  if (t == GgufValueType::kString) return 8;
  if (t == GgufValueType::kArray) return 12;
  return FixedSize(t);
}

bool IsInteger(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kU16:
    case GgufValueType::kI16:
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kU64:
    case GgufValueType::kI64:
      return true;
    default:
      return false;
  }
}

bool IsSigned(GgufValueType t) {
  return t == GgufValueType::kI8 || t == GgufValueType::kI16 || t == GgufValueType::kI32 ||
         t == GgufValueType::kI64;
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Sequential little-endian reads over the mapping with bounds checks; errors name the file and
// what was being read.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  absl::Status Need(uint64_t n, absl::string_view what) const {
    if (n > left()) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf ", path_, ": truncated reading ", what, ": need ", n,
                       " bytes at offset ", pos_, ", the file has ", left(), " left"));
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what) {
    ST_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v = Load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  absl::Status Skip(uint64_t n, absl::string_view what) {
    ST_RETURN_IF_ERROR(Need(n, what));
    pos_ += n;
    return absl::OkStatus();
  }
  // A string (u64 length + bytes) of at most `cap` bytes, as a view into the mapping.
  absl::StatusOr<absl::string_view> ReadString(absl::string_view what, uint64_t cap) {
    ST_ASSIGN_OR_RETURN(uint64_t n, Read<uint64_t>(absl::StrCat(what, " length")));
    if (n > cap) {
      return absl::InvalidArgumentError(absl::StrCat("gguf ", path_, ": ", what, " at offset ",
                                                     pos_ - 8, " has length ", n,
                                                     ", more than the limit ", cap));
    }
    ST_RETURN_IF_ERROR(Need(n, what));
    absl::string_view s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// Validates one value of type `t` at the cursor (recursing into arrays) and skips it.
absl::Status SkipValue(Cursor& c, GgufValueType t, int depth, const std::string& path,
                       absl::string_view key) {
  const std::string what = absl::StrCat("value of key '", key, "'");
  if (t == GgufValueType::kString) {
    return c.ReadString(what, std::numeric_limits<uint64_t>::max()).status();
  }
  if (t != GgufValueType::kArray) return c.Skip(FixedSize(t), what);
  if (depth >= kGgufMaxArrayDepth) {
    return absl::InvalidArgumentError(absl::StrCat("gguf ", path, ": key '", key,
                                                   "': arrays nested deeper than ",
                                                   kGgufMaxArrayDepth));
  }
  ST_ASSIGN_OR_RETURN(uint32_t elem, c.Read<uint32_t>(absl::StrCat(what, " array type")));
  if (!IsValueType(elem)) {
    return absl::InvalidArgumentError(absl::StrCat("gguf ", path, ": key '", key,
                                                   "': unknown array element type ", elem));
  }
  ST_ASSIGN_OR_RETURN(uint64_t n, c.Read<uint64_t>(absl::StrCat(what, " array length")));
  const GgufValueType et = static_cast<GgufValueType>(elem);
  if (n > c.left() / MinSize(et)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gguf ", path, ": key '", key, "': array of ", n, " ", GgufValueTypeName(et),
        " elements cannot fit in the ", c.left(), " bytes left in the file"));
  }
  if (FixedSize(et) != 0) return c.Skip(n * FixedSize(et), what);
  for (uint64_t i = 0; i < n; ++i) ST_RETURN_IF_ERROR(SkipValue(c, et, depth + 1, path, key));
  return absl::OkStatus();
}

// End offset of a value of type t starting at pos (already validated: no bounds checks).
uint64_t SkipValidated(const uint8_t* data, uint64_t pos, GgufValueType t) {
  if (t == GgufValueType::kString) return pos + 8 + Load<uint64_t>(data + pos);
  if (t != GgufValueType::kArray) return pos + FixedSize(t);
  const GgufValueType et = static_cast<GgufValueType>(Load<uint32_t>(data + pos));
  const uint64_t n = Load<uint64_t>(data + pos + 4);
  pos += 12;
  if (FixedSize(et) != 0) return pos + n * FixedSize(et);
  for (uint64_t i = 0; i < n; ++i) pos = SkipValidated(data, pos, et);
  return pos;
}

absl::StatusOr<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) {
    return absl::InvalidArgumentError("overflow");
  }
  return a * b;
}

uint64_t AlignUp(uint64_t x, uint64_t a) { return x + (a - x % a) % a; }

std::string Errno(int e) { return std::strerror(e); }

}  // namespace

std::string GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8: return "u8";
    case GgufValueType::kI8: return "i8";
    case GgufValueType::kU16: return "u16";
    case GgufValueType::kI16: return "i16";
    case GgufValueType::kU32: return "u32";
    case GgufValueType::kI32: return "i32";
    case GgufValueType::kF32: return "f32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kU64: return "u64";
    case GgufValueType::kI64: return "i64";
    case GgufValueType::kF64: return "f64";
  }
  return absl::StrCat("type ", static_cast<uint32_t>(type));
}

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    const std::string msg = absl::StrCat("gguf ", path, ": cannot open: ", Errno(e));
    return e == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("gguf ", path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("gguf ", path, ": the file is empty (a GGUF header needs 24 bytes)"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("gguf ", path, ": mmap of ", size,
                                            " bytes failed: ", Errno(map_errno)));
  }
  std::shared_ptr<const void> owner(map, [size](const void* p) {
    ::munmap(const_cast<void*>(p), size);
  });
  return Parse(path, std::move(owner), static_cast<const uint8_t*>(map), size);
}

absl::StatusOr<GgufFile> GgufFile::FromBytes(std::string name, std::string bytes) {
  auto holder = std::make_shared<const std::string>(std::move(bytes));
  const uint8_t* data = reinterpret_cast<const uint8_t*>(holder->data());
  const uint64_t size = holder->size();
  return Parse(std::move(name), std::move(holder), data, size);
}

absl::StatusOr<GgufFile> GgufFile::Parse(std::string path, std::shared_ptr<const void> owner,
                                         const uint8_t* data, uint64_t size) {
  GgufFile f;
  f.path_ = std::move(path);
  f.owner_ = std::move(owner);
  f.data_ = data;
  f.size_ = size;
  const std::string& p = f.path_;
  Cursor c(p, data, size);

  // Header.
  ST_ASSIGN_OR_RETURN(uint32_t magic, c.Read<uint32_t>("the magic"));
  if (magic != kMagic) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gguf ", p, ": bad magic 0x", absl::Hex(magic, absl::kZeroPad8),
        " (expected \"GGUF\", 0x46554747 little-endian)"));
  }
  ST_ASSIGN_OR_RETURN(f.version_, c.Read<uint32_t>("the version"));
  if (f.version_ != 2 && f.version_ != 3) {
    return absl::UnimplementedError(absl::StrCat("gguf ", p, ": unsupported GGUF version ",
                                                 f.version_, " (supported: 2, 3)"));
  }
  ST_ASSIGN_OR_RETURN(uint64_t n_tensors, c.Read<uint64_t>("the tensor count"));
  ST_ASSIGN_OR_RETURN(uint64_t n_kv, c.Read<uint64_t>("the metadata count"));
  // A kv is at least key length (8) + type (4) + a 1-byte value; a tensor info at least
  // 8 + 4 + 4 + 8 (name length, n_dims, type, offset).
  if (n_kv > c.left() / 13) {
    return absl::InvalidArgumentError(absl::StrCat("gguf ", p, ": metadata count ", n_kv,
                                                   " cannot fit in the ", c.left(),
                                                   " bytes after the header"));
  }
  if (n_tensors > c.left() / 24) {
    return absl::InvalidArgumentError(absl::StrCat("gguf ", p, ": tensor count ", n_tensors,
                                                   " cannot fit in the ", c.left(),
                                                   " bytes after the header"));
  }

  // Metadata.
  f.keys_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    ST_ASSIGN_OR_RETURN(absl::string_view key,
                        c.ReadString(absl::StrCat("key of metadata entry ", i), kGgufMaxKeyBytes));
    ST_ASSIGN_OR_RETURN(uint32_t type, c.Read<uint32_t>(absl::StrCat("type of key '", key, "'")));
    if (!IsValueType(type)) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf ", p, ": key '", key, "' has unknown value type ", type));
    }
    GgufValue v;
    v.type = static_cast<GgufValueType>(type);
    v.count = 1;
    if (v.type == GgufValueType::kArray) {
      const uint64_t start = c.pos();
      ST_RETURN_IF_ERROR(SkipValue(c, v.type, 0, p, key));
      v.elem_type = static_cast<GgufValueType>(Load<uint32_t>(data + start));
      v.count = Load<uint64_t>(data + start + 4);
      v.offset = start + 12;
    } else if (v.type == GgufValueType::kString) {
      const uint64_t start = c.pos();
      ST_RETURN_IF_ERROR(SkipValue(c, v.type, 0, p, key));
      v.count = Load<uint64_t>(data + start);
      v.offset = start + 8;
    } else {
      v.offset = c.pos();
      ST_RETURN_IF_ERROR(SkipValue(c, v.type, 0, p, key));
    }
    if (!f.values_.emplace(std::string(key), v).second) {
      return absl::InvalidArgumentError(absl::StrCat("gguf ", p, ": duplicate key '", key, "'"));
    }
    f.keys_.emplace_back(key);
  }

  // Alignment.
  if (const GgufValue* a = f.FindValue("general.alignment")) {
    if (a->type != GgufValueType::kU32) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf ", p, ": key 'general.alignment' must be u32, got ",
                       GgufValueTypeName(a->type)));
    }
    f.alignment_ = Load<uint32_t>(data + a->offset);
    if (f.alignment_ == 0 || f.alignment_ % 8 != 0 || f.alignment_ > kMaxAlignment) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf ", p, ": key 'general.alignment' is ", f.alignment_,
                       "; it must be a non-zero multiple of 8 up to ", kMaxAlignment));
    }
  } else {
    f.alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  f.tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    ST_ASSIGN_OR_RETURN(absl::string_view name,
                        c.ReadString(absl::StrCat("name of tensor ", i), kGgufMaxTensorNameBytes));
    t.name = std::string(name);
    const std::string where = absl::StrCat("gguf ", p, ": tensor '", t.name, "'");
    ST_ASSIGN_OR_RETURN(uint32_t n_dims,
                        c.Read<uint32_t>(absl::StrCat("n_dims of tensor '", t.name, "'")));
    if (n_dims > static_cast<uint32_t>(kGgufMaxDims)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": n_dims ", n_dims, " is more than ", kGgufMaxDims));
    }
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ST_ASSIGN_OR_RETURN(uint64_t dim,
                          c.Read<uint64_t>(absl::StrCat("dims of tensor '", t.name, "'")));
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (dim != 0 && static_cast<uint64_t>(numel) >
                           static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": dims overflow 63 bits (dim ", d, " is ", dim, ")"));
      }
      numel *= static_cast<int64_t>(dim);
      t.ggml_dims.push_back(static_cast<int64_t>(dim));
    }
    t.numel = numel;
    t.shape.assign(t.ggml_dims.rbegin(), t.ggml_dims.rend());
    ST_ASSIGN_OR_RETURN(uint32_t type_id,
                        c.Read<uint32_t>(absl::StrCat("type of tensor '", t.name, "'")));
    const GgmlTypeTraits* traits = FindGgmlType(type_id);
    if (traits == nullptr) {
      return absl::UnimplementedError(
          absl::StrCat(where, ": unknown ggml type id ", type_id));
    }
    t.type = traits->type;
    ST_ASSIGN_OR_RETURN(t.offset, c.Read<uint64_t>(absl::StrCat("offset of tensor '", t.name, "'")));
    const int64_t inner = t.ggml_dims.empty() ? 1 : t.ggml_dims[0];
    if (inner % traits->block_elems != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": dims[0] = ", inner, " is not a multiple of the ", traits->name,
          " block size ", traits->block_elems));
    }
    // numel / block_elems * block_bytes, overflow-checked.
    auto bytes = CheckedMul(static_cast<uint64_t>(numel / traits->block_elems),
                            static_cast<uint64_t>(traits->block_bytes));
    if (!bytes.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": byte size overflows 64 bits"));
    }
    t.nbytes = *bytes;
    if (t.offset % f.alignment_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": offset ", t.offset,
                                                     " is not a multiple of the alignment ",
                                                     f.alignment_));
    }
    if (f.tensor_index_.count(t.name) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("gguf ", p, ": duplicate tensor name '", t.name, "'"));
    }
    f.tensor_index_.emplace(t.name, f.tensors_.size());
    f.tensors_.push_back(std::move(t));
  }

  // Data section.
  f.data_offset_ = AlignUp(c.pos(), f.alignment_);
  std::vector<size_t> order(f.tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (GgufTensorInfo& t : f.tensors_) {
    const std::string where = absl::StrCat("gguf ", p, ": tensor '", t.name, "'");
    if (f.data_offset_ > size || t.offset > size - f.data_offset_ ||
        t.nbytes > size - f.data_offset_ - t.offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " (", GgmlTypeName(t.type), ", ", t.nbytes, " bytes at data offset ", t.offset,
          ", data section at ", f.data_offset_, ") runs past the end of the file (", size,
          " bytes)"));
    }
    t.file_offset = f.data_offset_ + t.offset;
  }
  std::sort(order.begin(), order.end(), [&f](size_t a, size_t b) {
    return f.tensors_[a].offset < f.tensors_[b].offset;
  });
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensorInfo& prev = f.tensors_[order[k - 1]];
    const GgufTensorInfo& cur = f.tensors_[order[k]];
    if (prev.nbytes != 0 && cur.offset < prev.offset + prev.nbytes) {
      return absl::InvalidArgumentError(absl::StrCat("gguf ", p, ": tensor '", cur.name,
                                                     "' at data offset ", cur.offset,
                                                     " overlaps tensor '", prev.name, "' (",
                                                     prev.nbytes, " bytes at ", prev.offset, ")"));
    }
  }
  return f;
}

// ---- Metadata ----

bool GgufFile::HasKey(absl::string_view key) const { return values_.find(key) != values_.end(); }

const GgufValue* GgufFile::FindValue(absl::string_view key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

absl::StatusOr<const GgufValue*> GgufFile::Lookup(absl::string_view key) const {
  const GgufValue* v = FindValue(key);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat("gguf ", path_, ": no metadata key '", key, "'"));
  }
  return v;
}

absl::Status GgufFile::TypeError(absl::string_view key, const GgufValue& v,
                                 absl::string_view expected) const {
  std::string got = GgufValueTypeName(v.type);
  if (v.type == GgufValueType::kArray) {
    got = absl::StrCat("array of ", GgufValueTypeName(v.elem_type));
  }
  return absl::InvalidArgumentError(absl::StrCat("gguf ", path_, ": key '", key, "' should be ",
                                                 expected, ", but it is ", got));
}

int64_t GgufFile::IntValue(const GgufValue& v) const {
  const uint8_t* q = data_ + v.offset;
  switch (v.type) {
    case GgufValueType::kU8: return Load<uint8_t>(q);
    case GgufValueType::kI8: return Load<int8_t>(q);
    case GgufValueType::kU16: return Load<uint16_t>(q);
    case GgufValueType::kI16: return Load<int16_t>(q);
    case GgufValueType::kU32: return Load<uint32_t>(q);
    case GgufValueType::kI32: return Load<int32_t>(q);
    case GgufValueType::kU64: return static_cast<int64_t>(Load<uint64_t>(q));
    case GgufValueType::kI64: return Load<int64_t>(q);
    case GgufValueType::kBool: return Load<uint8_t>(q) != 0 ? 1 : 0;
    default:
      ST_CHECK(false) << "IntValue of a " << GgufValueTypeName(v.type);
      return 0;
  }
}

uint64_t GgufFile::UIntValue(const GgufValue& v) const {
  if (v.type == GgufValueType::kU64) return Load<uint64_t>(data_ + v.offset);
  return static_cast<uint64_t>(IntValue(v));
}

double GgufFile::FloatValue(const GgufValue& v) const {
  if (v.type == GgufValueType::kF32) return Load<float>(data_ + v.offset);
  ST_CHECK(v.type == GgufValueType::kF64) << "FloatValue of a " << GgufValueTypeName(v.type);
  return Load<double>(data_ + v.offset);
}

absl::string_view GgufFile::StringValue(const GgufValue& v) const {
  ST_CHECK(v.type == GgufValueType::kString) << "StringValue of a " << GgufValueTypeName(v.type);
  return absl::string_view(reinterpret_cast<const char*>(data_ + v.offset), v.count);
}

std::vector<GgufValue> GgufFile::ArrayElements(const GgufValue& array) const {
  ST_CHECK(array.type == GgufValueType::kArray)
      << "ArrayElements of a " << GgufValueTypeName(array.type);
  std::vector<GgufValue> out;
  out.reserve(array.count);  // bounded by the file size at validation
  uint64_t pos = array.offset;
  for (uint64_t i = 0; i < array.count; ++i) {
    GgufValue e;
    e.type = array.elem_type;
    e.count = 1;
    if (e.type == GgufValueType::kString) {
      e.count = Load<uint64_t>(data_ + pos);
      e.offset = pos + 8;
      pos = e.offset + e.count;
    } else if (e.type == GgufValueType::kArray) {
      e.elem_type = static_cast<GgufValueType>(Load<uint32_t>(data_ + pos));
      e.count = Load<uint64_t>(data_ + pos + 4);
      e.offset = pos + 12;
      pos = SkipValidated(data_, pos, GgufValueType::kArray);
    } else {
      e.offset = pos;
      pos += FixedSize(e.type);
    }
    out.push_back(e);
  }
  return out;
}

absl::StatusOr<uint64_t> GgufFile::GetU64(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (!IsInteger(v->type)) return TypeError(key, *v, "an unsigned integer");
  if (IsSigned(v->type) && IntValue(*v) < 0) {
    return absl::InvalidArgumentError(absl::StrCat("gguf ", path_, ": key '", key,
                                                   "' should be non-negative, got ",
                                                   IntValue(*v)));
  }
  return UIntValue(*v);
}

absl::StatusOr<uint32_t> GgufFile::GetU32(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(uint64_t v, GetU64(key));
  if (v > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("gguf ", path_, ": key '", key, "' = ", v, " does not fit in u32"));
  }
  return static_cast<uint32_t>(v);
}

absl::StatusOr<int64_t> GgufFile::GetI64(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (!IsInteger(v->type)) return TypeError(key, *v, "an integer");
  if (v->type == GgufValueType::kU64 &&
      UIntValue(*v) > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("gguf ", path_, ": key '", key, "' = ",
                                                   UIntValue(*v), " does not fit in i64"));
  }
  return IntValue(*v);
}

absl::StatusOr<float> GgufFile::GetF32(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kF32) return TypeError(key, *v, "f32");
  return Load<float>(data_ + v->offset);
}

absl::StatusOr<double> GgufFile::GetF64(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kF32 && v->type != GgufValueType::kF64) {
    return TypeError(key, *v, "f32 or f64");
  }
  return FloatValue(*v);
}

absl::StatusOr<bool> GgufFile::GetBool(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kBool) return TypeError(key, *v, "bool");
  return Load<uint8_t>(data_ + v->offset) != 0;
}

absl::StatusOr<absl::string_view> GgufFile::GetString(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kString) return TypeError(key, *v, "string");
  return StringValue(*v);
}

absl::StatusOr<uint64_t> GgufFile::GetArrayLength(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kArray) return TypeError(key, *v, "an array");
  return v->count;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kArray || v->elem_type != GgufValueType::kString) {
    return TypeError(key, *v, "an array of string");
  }
  std::vector<std::string> out;
  out.reserve(v->count);
  for (const GgufValue& e : ArrayElements(*v)) out.emplace_back(StringValue(e));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kArray || !IsInteger(v->elem_type)) {
    return TypeError(key, *v, "an array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(v->count);
  const uint64_t w = FixedSize(v->elem_type);
  GgufValue e;
  e.type = v->elem_type;
  for (uint64_t i = 0; i < v->count; ++i) {
    e.offset = v->offset + i * w;
    if (e.type == GgufValueType::kU64 &&
        UIntValue(e) > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat("gguf ", path_, ": key '", key, "' element ",
                                                     i, " = ", UIntValue(e),
                                                     " does not fit in i64"));
    }
    out.push_back(IntValue(e));
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(absl::string_view key) const {
  ST_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key));
  if (v->type != GgufValueType::kArray ||
      (v->elem_type != GgufValueType::kF32 && v->elem_type != GgufValueType::kF64)) {
    return TypeError(key, *v, "an array of f32 or f64");
  }
  std::vector<double> out;
  out.reserve(v->count);
  const uint64_t w = FixedSize(v->elem_type);
  GgufValue e;
  e.type = v->elem_type;
  for (uint64_t i = 0; i < v->count; ++i) {
    e.offset = v->offset + i * w;
    out.push_back(FloatValue(e));
  }
  return out;
}

// ---- Tensors ----

const GgufTensorInfo* GgufFile::FindTensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<GgufTensorBytes> GgufFile::TensorBytes(absl::string_view name) const {
  const GgufTensorInfo* info = FindTensor(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("gguf ", path_, ": no tensor '", name, "'"));
  }
  return TensorBytes(*info);
}

GgufTensorBytes GgufFile::TensorBytes(const GgufTensorInfo& info) const {
  ST_CHECK(&info >= tensors_.data() && &info < tensors_.data() + tensors_.size())
      << "tensor info '" << info.name << "' is not from " << path_;
  GgufTensorBytes b;
  b.info = &info;
  b.bytes = absl::Span<const uint8_t>(data_ + info.file_offset, info.nbytes);
  b.keepalive = owner_;
  return b;
}

}  // namespace sigmatune
