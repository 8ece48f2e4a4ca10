// Where a tensor's bytes live.
#ifndef SIGMATUNE_KERNELS_BASE_DEVICE_H_
#define SIGMATUNE_KERNELS_BASE_DEVICE_H_

#include <string>

namespace sigmatune {

enum class DeviceType { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int ordinal = 0;  // CUDA device index; 0 for the CPU.

  static Device Cpu() { return Device{DeviceType::kCpu, 0}; }
  static Device Cuda(int ordinal) { return Device{DeviceType::kCuda, ordinal}; }
  bool is_cpu() const { return type == DeviceType::kCpu; }
  bool is_cuda() const { return type == DeviceType::kCuda; }
  // "cpu" or "cuda:N".
  std::string ToString() const;

  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && a.ordinal == b.ordinal;
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

}  // namespace sigmatune

#endif  // SIGMATUNE_KERNELS_BASE_DEVICE_H_
