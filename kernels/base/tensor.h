// Tensor: a shape, strides (in elements), a dtype and a device over shared storage.
//
// Contract:
//  - Storage is reference counted; copying a Tensor makes another view of the same bytes
//    (cheap). Views made by Slice/Transpose/Reshape share storage with their source.
//  - Owning CPU tensors come from Empty/Zeros/FromVector; GPU tensors from the CUDA helpers in
//    kernels/base/gpu_context.h. Wrap() makes a non-owning view of memory the caller keeps alive.
//  - Bytes never cross devices implicitly: CPU<->GPU copies are explicit (gpu_context.h).
//  - Shapes/dtypes that are wrong because of a programmer error trip ST_CHECK; ops that take
//    tensors from the outside world validate them and return absl::Status.
#ifndef SIGMATUNE_KERNELS_BASE_TENSOR_H_
#define SIGMATUNE_KERNELS_BASE_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/base/check.h"
#include "kernels/base/device.h"
#include "kernels/base/dtype.h"

namespace sigmatune {

using Shape = std::vector<int64_t>;

// Number of elements of a shape (1 for rank 0).
int64_t NumElements(const Shape& shape);
// "[2, 3]".
std::string ShapeToString(const Shape& shape);

// A block of bytes on one device, freed by its deleter (none for wrapped memory).
class Storage {
 public:
  Storage(void* data, size_t bytes, Device device, std::function<void(void*)> deleter);
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t bytes_;
  Device device_;
  std::function<void(void*)> deleter_;
};

class Tensor {
 public:
  // An empty (null) tensor: no storage, rank 0, numel 0.
  Tensor() = default;

  // A view over `storage` starting `offset` elements in.
  Tensor(std::shared_ptr<Storage> storage, DType dtype, Shape shape, std::vector<int64_t> strides,
         int64_t offset);

  // Uninitialised / zeroed contiguous CPU tensors (64-byte aligned).
  static Tensor Empty(const Shape& shape, DType dtype);
  static Tensor Zeros(const Shape& shape, DType dtype);
  // Contiguous CPU tensor holding `values` (size must match the shape).
  template <typename T>
  static Tensor FromVector(const Shape& shape, const std::vector<T>& values);
  // Non-owning contiguous view of caller-owned memory.
  static Tensor Wrap(void* data, const Shape& shape, DType dtype, Device device);
  // Contiguous row-major strides of a shape.
  static std::vector<int64_t> ContiguousStrides(const Shape& shape);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::Cpu(); }
  const Shape& shape() const { return shape_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;
  int64_t stride(int i) const;
  int64_t numel() const { return NumElements(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * SizeOf(dtype_); }
  bool is_contiguous() const;
  int64_t offset() const { return offset_; }

  // Address of the first element (device memory for GPU tensors).
  void* raw_data() const;
  // Typed address; checks that T matches the dtype.
  template <typename T>
  T* data() const {
    ST_CHECK(DTypeOf<T>::value == dtype_)
        << "tensor is " << DTypeName(dtype_) << ", asked for " << DTypeName(DTypeOf<T>::value);
    return static_cast<T*>(raw_data());
  }
  // Element access for CPU tensors of any rank: t.at<float>({i, j}).
  template <typename T>
  T& at(std::initializer_list<int64_t> index) const;

  // Views sharing storage.
  Tensor Slice(int dim, int64_t begin, int64_t end) const;  // [begin, end) along dim
  Tensor Transposed() const;                                // rank-2 only, swaps strides
  Tensor Reshape(const Shape& shape) const;                 // contiguous only

  // A contiguous CPU copy (converting dtype if asked). CPU tensors only.
  Tensor Contiguous() const;
  Tensor To(DType dtype) const;
  // Copies `src` (same shape, CPU) into this CPU tensor, converting dtype as needed.
  void CopyFrom(const Tensor& src) const;

  std::string DebugString() const;  // dtype, shape, device

 private:
  std::shared_ptr<Storage> storage_;
  DType dtype_ = DType::kF32;
  Shape shape_;
  std::vector<int64_t> strides_;
  int64_t offset_ = 0;
};

// Reads element `i` (row-major order over the shape) of a CPU tensor as double.
double GetAsDouble(const Tensor& t, int64_t i);

template <typename T>
Tensor Tensor::FromVector(const Shape& shape, const std::vector<T>& values) {
  ST_CHECK_EQ(NumElements(shape), static_cast<int64_t>(values.size()));
  Tensor t = Empty(shape, DTypeOf<T>::value);
  T* out = t.data<T>();
  for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  return t;
}

template <typename T>
T& Tensor::at(std::initializer_list<int64_t> index) const {
  ST_CHECK(device().is_cpu()) << "at() needs a CPU tensor, got " << DebugString();
  ST_CHECK_EQ(static_cast<int>(index.size()), rank());
  int64_t linear = 0;
  int d = 0;
  for (int64_t i : index) {
    ST_CHECK(i >= 0 && i < shape_[d]) << "index " << i << " out of range in dim " << d;
    linear += i * strides_[d++];
  }
  return data<T>()[linear];
}

}  // namespace sigmatune

#endif  // SIGMATUNE_KERNELS_BASE_TENSOR_H_
