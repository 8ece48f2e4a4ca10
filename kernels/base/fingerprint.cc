#include "kernels/base/fingerprint.h"

#include <cstring>

#include "absl/strings/str_format.h"

namespace sigmatune {
namespace {

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t Avalanche(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

void Fingerprint::Mix(uint64_t word) {
  h1_ = Rotl(h1_ ^ (word * 0x87c37b91114253d5ull), 31) * 0x4cf5ad432745937full + 0x52dce729;
  h2_ = Rotl(h2_ + (word * 0x4cf5ad432745937full), 33) * 0x87c37b91114253d5ull ^ h1_;
}

Fingerprint& Fingerprint::Update(const void* data, size_t size) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  length_ += size;
  while (size > 0 && pending_bytes_ > 0) {
    pending_ |= static_cast<uint64_t>(*p++) << (8 * pending_bytes_);
    --size;
    if (++pending_bytes_ == 8) {
      Mix(pending_);
      pending_ = 0;
      pending_bytes_ = 0;
    }
  }
  for (; size >= 8; size -= 8, p += 8) {
    uint64_t w = 0;
    for (int i = 0; i < 8; ++i) w |= static_cast<uint64_t>(p[i]) << (8 * i);
    Mix(w);
  }
  for (; size > 0; --size) pending_ |= static_cast<uint64_t>(*p++) << (8 * pending_bytes_++);
  return *this;
}

Fingerprint& Fingerprint::UpdateField(absl::string_view bytes) {
  UpdateInt(static_cast<int64_t>(bytes.size()));
  return Update(bytes);
}

std::string Fingerprint::Hex() const {
  Fingerprint f = *this;
  f.Mix(f.pending_ ^ (static_cast<uint64_t>(f.pending_bytes_) << 56));
  f.Mix(f.length_);
  return absl::StrFormat("%016x%016x", Avalanche(f.h1_ + f.h2_), Avalanche(f.h2_ ^ Rotl(f.h1_, 17)));
}

}  // namespace sigmatune
