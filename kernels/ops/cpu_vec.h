// Four-lane float SIMD helpers for the CPU ops' elementwise loops (softmax, SiLU), written with the
// GCC/Clang vector extensions: SSE2 on the x86-64 baseline the build targets, NEON on arm64; no
// intrinsics and no runtime dispatch. Only the f32 paths use them (the f64 paths keep libm).
//
// Exp4 is exp to about 2 ulp over the normal range (a Cephes-style degree-6 polynomial on
// x - n ln 2): exp(x) = 0 for x < -87.33654 (results below FLT_MIN flush to zero), +inf for
// x > 88.72283, NaN for NaN. Every function here is deterministic: the same inputs give the same
// bits whatever lane or tail position a value is processed in.
#ifndef SIGMATUNE_KERNELS_OPS_CPU_VEC_H_
#define SIGMATUNE_KERNELS_OPS_CPU_VEC_H_

#include <cstdint>
#include <cstring>
#include <limits>

namespace sigmatune::kernels::vec {

using F4 = float __attribute__((vector_size(16)));
using I4 = int32_t __attribute__((vector_size(16)));
using D2 = double __attribute__((vector_size(16)));
using F2 = float __attribute__((vector_size(8)));

inline F4 Splat(float x) { return F4{x, x, x, x}; }
inline F4 Load(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, F4 v) { std::memcpy(p, &v, sizeof(v)); }
// The first n (< 4) lanes from p, `fill` in the others.
inline F4 LoadPartial(const float* p, int64_t n, float fill) {
  F4 v = Splat(fill);
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
inline void StorePartial(float* p, F4 v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}
inline F4 Max(F4 a, F4 b) { return a > b ? a : b; }
inline float HorizontalMax(F4 v) {
  const float a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
  return a > b ? a : b;
}
// The lanes of v widened to double: lo = {v0, v1}, hi = {v2, v3}; and back (rounded to float).
inline D2 WidenLo(F4 v) { return __builtin_convertvector(F2{v[0], v[1]}, D2); }
inline D2 WidenHi(F4 v) { return __builtin_convertvector(F2{v[2], v[3]}, D2); }
inline F4 Narrow(D2 lo, D2 hi) {
  const F2 a = __builtin_convertvector(lo, F2), b = __builtin_convertvector(hi, F2);
  return F4{a[0], a[1], b[0], b[1]};
}
// Adds the four lanes of v, widened to double, to the two lanes of acc.
inline void AccumulateDouble(F4 v, D2* acc) {
  *acc += WidenLo(v);
  *acc += WidenHi(v);
}

inline F4 Exp4(F4 x) {
  constexpr float kLo = -87.33654f, kHi = 88.72283f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to nearest
  const F4 xc = x < kLo ? Splat(kLo) : (x > kHi ? Splat(kHi) : x);  // NaN stays NaN
  F4 n = (xc * 1.44269504088896341f + kRound) - kRound;
  n = n > 127.0f ? Splat(127.0f) : n;
  const F4 r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  F4 p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const I4 bits = (__builtin_convertvector(n, I4) + 127) << 23;
  F4 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  F4 y = p * scale;
  y = x < kLo ? Splat(0.0f) : y;
  return x > kHi ? Splat(std::numeric_limits<float>::infinity()) : y;
}

// Exp4 on one value (identical bits to the lane result).
inline float Exp(float x) { return Exp4(Splat(x))[0]; }

}  // namespace sigmatune::kernels::vec

#endif  // SIGMATUNE_KERNELS_OPS_CPU_VEC_H_
