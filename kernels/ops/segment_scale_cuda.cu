// CUDA ScaleSegmentsByAbsMax in two launches on ctx.stream():
//  1. MaxKernel, one block per (segment, 32-column tile): the signed maximum of the tile's finite
//     entries, merged into the segment's maximum with an atomicMax on an order-preserving integer
//     encoding (exact, so the result does not depend on scheduling), and a flag for a non-finite
//     entry.
//  2. ScaleKernel, elementwise over y: finds the row's segment (binary search over cu_seqlens), and
//     writes x / |max| in y's dtype, or 0 for padding rows and bad segments; the thread of a bad
//     segment's first element increments bad[0].
// cu_seqlens is copied to device scratch; nothing synchronizes.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/segment_scale.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr int kTile = 32;     // columns per MaxKernel block
constexpr int kTileRows = 8;  // row lanes per MaxKernel block
constexpr int kThreads = 256;

__device__ __forceinline__ float Widen(float v) { return v; }
__device__ __forceinline__ double Widen(double v) { return v; }
__device__ __forceinline__ float Widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float Widen(__half v) { return __half2float(v); }

// Order-preserving maps of float / double onto unsigned integers (key 0 decodes to a NaN, the
// "no finite entry" sentinel the scratch is zeroed to).
__device__ __forceinline__ unsigned Encode(float v) {
  const unsigned b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float Decode(unsigned k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
__device__ __forceinline__ unsigned long long Encode(double v) {
  const unsigned long long b = static_cast<unsigned long long>(__double_as_longlong(v));
  return (b >> 63) ? ~b : (b | (1ull << 63));
}
__device__ __forceinline__ double Decode(unsigned long long k) {
  return __longlong_as_double(static_cast<long long>((k >> 63) ? (k & ~(1ull << 63)) : ~k));
}

// The widened type W of x and its key type K.
template <typename X>
struct Wide {
  using W = float;
  using K = unsigned;
};
template <>
struct Wide<double> {
  using W = double;
  using K = unsigned long long;
};

__device__ __forceinline__ float MaxOf(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double MaxOf(double a, double b) { return fmax(a, b); }

template <typename X>
__global__ void MaxKernel(const X* x, int64_t ld, int64_t cols, const int32_t* cu, typename Wide<X>::K* keys,
                          int* nonfinite) {
  using W = typename Wide<X>::W;
  __shared__ W tile_max[kTileRows][kTile];
  __shared__ int tile_bad;
  const int64_t s = blockIdx.x;
  const int64_t begin = cu[s], end = cu[s + 1];
  if (begin == end) return;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.x;
  if (threadIdx.x == 0 && threadIdx.y == 0) tile_bad = 0;
  __syncthreads();
  W m = -INFINITY;
  bool bad = false;
  if (j < cols) {
    for (int64_t t = begin + threadIdx.y; t < end; t += kTileRows) {
      const W v = Widen(x[t * ld + j]);
      if (isfinite(v)) {
        m = MaxOf(m, v);
      } else {
        bad = true;
      }
    }
  }
  tile_max[threadIdx.y][threadIdx.x] = m;
  if (bad) tile_bad = 1;  // benign race: every writer stores the same value
  __syncthreads();
  if (threadIdx.y == 0) {
    for (int r = 1; r < kTileRows; ++r) m = MaxOf(m, tile_max[r][threadIdx.x]);
    for (int o = 16; o > 0; o >>= 1) m = MaxOf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (threadIdx.x == 0) {
      // -inf (no finite entry in this tile) adds nothing; the sentinel stays if no tile has one.
      if (m != -INFINITY) atomicMax(keys + s, Encode(m));
      if (tile_bad) atomicOr(nonfinite + s, 1);
    }
  }
}

template <typename X, typename Y>
__global__ void ScaleKernel(const X* x, int64_t ld, int64_t rows, int64_t cols, const int32_t* cu, int64_t segments,
                            const typename Wide<X>::K* keys, const int* nonfinite, Y* y, int32_t* bad) {
  using W = typename Wide<X>::W;
  const int64_t total = rows * cols;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t t = i / cols, j = i % cols;
    Y out = Y(0);
    if (segments > 0 && t >= cu[0] && t < cu[segments]) {
      // The last segment s with cu[s] <= t (segments before it may be empty).
      int64_t lo = 0, hi = segments - 1;
      while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (cu[mid] <= t) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      const W max = Decode(keys[lo]);
      const Y mu = static_cast<Y>(fabs(max));
      const bool ok = nonfinite[lo] == 0 && isfinite(mu) && mu != Y(0);
      if (ok) {
        out = static_cast<Y>(Widen(x[t * ld + j])) / mu;  // IEEE division (no fast math)
      } else if (t == cu[lo] && j == 0) {
        atomicAdd(bad, 1);
      }
    }
    y[i] = out;
  }
}

unsigned GridFor(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)));
}

template <typename X, typename Y>
absl::Status Run(GpuContext& ctx, const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) {
  using K = typename Wide<X>::K;
  const int64_t rows = x.dim(0), cols = x.dim(1), segments = cu_seqlens.dim(0) - 1;
  const int64_t ld = rows > 1 ? x.stride(0) : cols;
  const int64_t tiles = (cols + kTile - 1) / kTile;
  if (tiles > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScaleSegmentsByAbsMax: x has ", cols, " columns, more than the CUDA path supports"));
  }
  // Scratch: cu (segments + 1 ints), the keys and the non-finite flags (segments each).
  const size_t cu_bytes = (segments + 1) * sizeof(int32_t);
  const size_t keys_offset = (cu_bytes + 255) / 256 * 256;
  const size_t flags_offset = keys_offset + (segments * sizeof(K) + 255) / 256 * 256;
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(flags_offset + std::max<int64_t>(segments, 1) * sizeof(int)));
  int32_t* cu = static_cast<int32_t*>(base);
  K* keys = reinterpret_cast<K*>(static_cast<char*>(base) + keys_offset);
  int* nonfinite = reinterpret_cast<int*>(static_cast<char*>(base) + flags_offset);
  // From pageable host memory: the copy has read cu_seqlens when the call returns.
  ST_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(cu, cu_seqlens.raw_data(), cu_bytes, cudaMemcpyHostToDevice, ctx.stream()));
  const X* xp = static_cast<const X*>(x.raw_data());
  if (segments > 0 && cols > 0) {
    ST_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(keys, 0, segments * sizeof(K), ctx.stream()));
    ST_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(nonfinite, 0, segments * sizeof(int), ctx.stream()));
    const dim3 grid(static_cast<unsigned>(segments), static_cast<unsigned>(tiles));
    MaxKernel<X><<<grid, dim3(kTile, kTileRows), 0, ctx.stream()>>>(xp, ld, cols, cu, keys, nonfinite);
    ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "ScaleSegmentsByAbsMax MaxKernel launch"));
  }
  if (rows * cols == 0) return absl::OkStatus();
  ScaleKernel<X, Y><<<GridFor(rows * cols), kThreads, 0, ctx.stream()>>>(
      xp, ld, rows, cols, cu, segments, keys, nonfinite, y->data<Y>(), bad->data<int32_t>());
  return CudaStatus(cudaGetLastError(), "ScaleSegmentsByAbsMax ScaleKernel launch");
}

template <typename X>
absl::Status DispatchY(GpuContext& ctx, const Tensor& x, const Tensor& cu_seqlens, Tensor* y, Tensor* bad) {
  if (y->dtype() == DType::kF32) return Run<X, float>(ctx, x, cu_seqlens, y, bad);
  return Run<X, double>(ctx, x, cu_seqlens, y, bad);
}

}  // namespace

absl::Status ScaleSegmentsByAbsMax(GpuContext& ctx, const Tensor& x, const Tensor& cu_seqlens, Tensor* y,
                                   Tensor* bad) {
  ST_CHECK(y != nullptr && bad != nullptr);
  ST_RETURN_IF_ERROR(CheckScaleSegmentsByAbsMax(x, cu_seqlens, *y, *bad));
  ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, x, "ScaleSegmentsByAbsMax x"));
  ST_RETURN_IF_ERROR(ctx.Activate());
  switch (x.dtype()) {
    case DType::kF32:
      return DispatchY<float>(ctx, x, cu_seqlens, y, bad);
    case DType::kF64:
      return DispatchY<double>(ctx, x, cu_seqlens, y, bad);
    case DType::kBF16:
      return DispatchY<__nv_bfloat16>(ctx, x, cu_seqlens, y, bad);
    default:
      return DispatchY<__half>(ctx, x, cu_seqlens, y, bad);
  }
}

}  // namespace sigmatune::kernels::cuda
