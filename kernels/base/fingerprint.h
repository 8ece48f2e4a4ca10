// Fingerprint: a fast, deterministic 128-bit content hash for cache keys (which covariance set,
// which calibration data). Not cryptographic: it detects change, it does not resist attack.
// The same bytes give the same digest on every machine (little-endian words; the tail is
// zero-padded and the total length is folded in at the end).
#ifndef SIGMATUNE_KERNELS_BASE_FINGERPRINT_H_
#define SIGMATUNE_KERNELS_BASE_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace sigmatune {

class Fingerprint {
 public:
  Fingerprint& Update(const void* data, size_t size);
  Fingerprint& Update(absl::string_view bytes) { return Update(bytes.data(), bytes.size()); }
  // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
  Fingerprint& UpdateField(absl::string_view bytes);
  Fingerprint& UpdateInt(int64_t value) { return Update(&value, sizeof(value)); }
  // 32 lowercase hex digits. Does not change the state (more Updates may follow).
  std::string Hex() const;

 private:
  void Mix(uint64_t word);

  uint64_t h1_ = 0x6a09e667f3bcc908ull;
  uint64_t h2_ = 0xbb67ae8584caa73bull;
  uint64_t length_ = 0;
  uint64_t pending_ = 0;  // bytes not yet forming a whole word
  int pending_bytes_ = 0;
};

}  // namespace sigmatune

#endif  // SIGMATUNE_KERNELS_BASE_FINGERPRINT_H_
