// Rng: deterministic uniform and standard-normal draws. The same seed gives the same bits on
// every machine and standard library (std::mt19937_64 with our own mapping: 53-bit uniforms and
// the Box-Muller cosine branch, one normal per two draws; never std::*_distribution).
#ifndef SIGMATUNE_KERNELS_BASE_RNG_H_
#define SIGMATUNE_KERNELS_BASE_RNG_H_

#include <cmath>
#include <cstdint>
#include <random>

namespace sigmatune {

// SplitMix64 (Steele, Lea, Flood): adds the golden-ratio increment, then a bijective 64-bit mix.
// For deriving independent seeds from (seed, counters) as a pure function.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  uint64_t Next() { return engine_(); }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform01() { return static_cast<double>(engine_() >> 11) * 0x1p-53; }
  // Standard normal.
  double Normal() {
    const double u1 = 1.0 - Uniform01();  // (0, 1]: the log is finite
    const double u2 = Uniform01();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

 private:
  std::mt19937_64 engine_;
};

}  // namespace sigmatune

#endif  // SIGMATUNE_KERNELS_BASE_RNG_H_
