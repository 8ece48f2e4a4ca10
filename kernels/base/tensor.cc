#include "kernels/base/tensor.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sigmatune {
namespace {

constexpr size_t kAlignment = 64;

double LoadAsDouble(DType dtype, const void* base, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(base)[i];
    case DType::kF64:
      return static_cast<const double*>(base)[i];
    case DType::kBF16:
      return BFloat16ToFloat(static_cast<const BFloat16*>(base)[i]);
    case DType::kF16:
      return Float16ToFloat(static_cast<const Float16*>(base)[i]);
    case DType::kI32:
      return static_cast<const int32_t*>(base)[i];
    case DType::kI64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
  }
  return 0;
}

void StoreFromDouble(DType dtype, void* base, int64_t i, double v) {
  switch (dtype) {
    case DType::kF32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      return;
    case DType::kF64:
      static_cast<double*>(base)[i] = v;
      return;
    case DType::kBF16:
      static_cast<BFloat16*>(base)[i] = FloatToBFloat16(static_cast<float>(v));
      return;
    case DType::kF16:
      static_cast<Float16*>(base)[i] = FloatToFloat16(static_cast<float>(v));
      return;
    case DType::kI32:
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v);
      return;
    case DType::kI64:
      static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v);
      return;
  }
}

// Element offset (in elements, from the tensor's first element) of the i-th element in
// row-major order.
int64_t StridedOffset(const Shape& shape, const std::vector<int64_t>& strides, int64_t i) {
  int64_t offset = 0;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    offset += (i % shape[d]) * strides[d];
    i /= shape[d];
  }
  return offset;
}

}  // namespace

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const Shape& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

std::string Device::ToString() const { return is_cpu() ? "cpu" : absl::StrCat("cuda:", ordinal); }

Storage::Storage(void* data, size_t bytes, Device device, std::function<void(void*)> deleter)
    : data_(data), bytes_(bytes), device_(device), deleter_(std::move(deleter)) {}

Storage::~Storage() {
  if (deleter_ && data_ != nullptr) deleter_(data_);
}

Tensor::Tensor(std::shared_ptr<Storage> storage, DType dtype, Shape shape, std::vector<int64_t> strides,
               int64_t offset)
    : storage_(std::move(storage)),
      dtype_(dtype),
      shape_(std::move(shape)),
      strides_(std::move(strides)),
      offset_(offset) {
  ST_CHECK_EQ(shape_.size(), strides_.size());
  for (int64_t d : shape_) ST_CHECK_GE(d, 0) << "negative dimension in " << ShapeToString(shape_);
}

std::vector<int64_t> Tensor::ContiguousStrides(const Shape& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t s = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    strides[d] = s;
    s *= shape[d];
  }
  return strides;
}

Tensor Tensor::Empty(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * SizeOf(dtype);
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* data = rounded == 0 ? nullptr : std::aligned_alloc(kAlignment, rounded);
  ST_CHECK(rounded == 0 || data != nullptr) << "out of host memory allocating " << bytes << " bytes";
  auto storage = std::make_shared<Storage>(data, bytes, Device::Cpu(), [](void* p) { std::free(p); });
  return Tensor(std::move(storage), dtype, shape, ContiguousStrides(shape), 0);
}

Tensor Tensor::Zeros(const Shape& shape, DType dtype) {
  Tensor t = Empty(shape, dtype);
  if (t.nbytes() > 0) std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::Wrap(void* data, const Shape& shape, DType dtype, Device device) {
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * SizeOf(dtype);
  auto storage = std::make_shared<Storage>(data, bytes, device, nullptr);
  return Tensor(std::move(storage), dtype, shape, ContiguousStrides(shape), 0);
}

int64_t Tensor::dim(int i) const {
  ST_CHECK(i >= 0 && i < rank()) << "dim " << i << " of " << DebugString();
  return shape_[i];
}

int64_t Tensor::stride(int i) const {
  ST_CHECK(i >= 0 && i < rank()) << "stride " << i << " of " << DebugString();
  return strides_[i];
}

bool Tensor::is_contiguous() const { return numel() <= 1 || strides_ == ContiguousStrides(shape_); }

void* Tensor::raw_data() const {
  if (storage_ == nullptr) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(SizeOf(dtype_));
}

Tensor Tensor::Slice(int d, int64_t begin, int64_t end) const {
  ST_CHECK(d >= 0 && d < rank()) << "slice dim " << d << " of " << DebugString();
  ST_CHECK(0 <= begin && begin <= end && end <= shape_[d])
      << "slice [" << begin << ", " << end << ") of dim " << d << " in " << DebugString();
  Shape shape = shape_;
  shape[d] = end - begin;
  return Tensor(storage_, dtype_, std::move(shape), strides_, offset_ + begin * strides_[d]);
}

Tensor Tensor::Transposed() const {
  ST_CHECK_EQ(rank(), 2) << "Transposed() needs a matrix, got " << DebugString();
  return Tensor(storage_, dtype_, {shape_[1], shape_[0]}, {strides_[1], strides_[0]}, offset_);
}

Tensor Tensor::Reshape(const Shape& shape) const {
  ST_CHECK(is_contiguous()) << "Reshape needs a contiguous tensor, got " << DebugString();
  ST_CHECK_EQ(NumElements(shape), numel()) << "reshape " << ShapeToString(shape_) << " to "
                                           << ShapeToString(shape);
  return Tensor(storage_, dtype_, shape, ContiguousStrides(shape), offset_);
}

Tensor Tensor::Contiguous() const { return To(dtype_); }

Tensor Tensor::To(DType dtype) const {
  Tensor out = Empty(shape_, dtype);
  out.CopyFrom(*this);
  return out;
}

void Tensor::CopyFrom(const Tensor& src) const {
  ST_CHECK(device().is_cpu() && src.device().is_cpu())
      << "CopyFrom is CPU only: " << DebugString() << " <- " << src.DebugString();
  ST_CHECK(shape_ == src.shape()) << ShapeToString(shape_) << " <- " << ShapeToString(src.shape());
  const int64_t n = numel();
  const size_t elem = SizeOf(dtype_);
  const char* in = static_cast<const char*>(src.raw_data());
  char* out = static_cast<char*>(raw_data());
  if (dtype_ == src.dtype() && is_contiguous() && src.is_contiguous()) {
    if (n > 0) std::memmove(out, in, nbytes());
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t si = StridedOffset(shape_, src.strides(), i);
    const int64_t di = StridedOffset(shape_, strides_, i);
    if (dtype_ == src.dtype()) {
      std::memcpy(out + di * elem, in + si * elem, elem);
    } else {
      StoreFromDouble(dtype_, out, di, LoadAsDouble(src.dtype(), in, si));
    }
  }
}

double GetAsDouble(const Tensor& t, int64_t i) {
  ST_CHECK(t.device().is_cpu()) << "GetAsDouble needs a CPU tensor, got " << t.DebugString();
  ST_CHECK(i >= 0 && i < t.numel()) << "element " << i << " of " << t.DebugString();
  return LoadAsDouble(t.dtype(), t.raw_data(), StridedOffset(t.shape(), t.strides(), i));
}

std::string Tensor::DebugString() const {
  if (!defined()) return "Tensor(undefined)";
  return absl::StrCat("Tensor(", DTypeName(dtype_), ShapeToString(shape_), " on ", device().ToString(),
                      is_contiguous() ? "" : ", strided", ")");
}

}  // namespace sigmatune
