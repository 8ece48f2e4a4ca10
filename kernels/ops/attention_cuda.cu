// Tiled causal attention with an online softmax (flash-attention style, without tensor cores).
// Layout of the work:
//  forward / dq: a block per (tile of kRowsQ query tokens, query head); 4 warps, each owning
//                kRowsQ / 4 query rows; keys stream through shared memory in tiles of 32, one key
//                per lane (the lane computes the full dot product; K/V rows are padded by one float so
//                lane-strided reads hit distinct banks), and P V is accumulated with each lane owning
//                the head dims lane, lane + 32, ... (hd <= 256).
//  dk / dv:      a block per (tile of kRowsK key tokens, kv head); queries of every head of the group
//                stream through shared memory in tiles of 32, one query per lane.
// Tokens carry their sequence bounds (seq_start, seq_end) so tiles may straddle packed sequences.
#include <cuda_bf16.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/gpu_context.h"
#include "kernels/base/status_macros.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/nn_cuda_util.h"
#include "kernels/ops/nn_util.h"

namespace sigmatune::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsQ = 16;              // query rows per block (forward, dq)
constexpr int kRowsK = 16;              // key rows per block (dk/dv)
constexpr int kRowsPerWarp = kRowsQ / kWarps;
constexpr int kTile = 32;               // streamed rows per tile (one per lane)
constexpr int kMaxChunks = 8;           // hd <= 32 * kMaxChunks
constexpr int kMaxHeadDim = 32 * kMaxChunks;

struct Geometry {
  int64_t tokens, heads, kv_heads, hd, group;
  float scale;
};

template <typename T>
__device__ void LoadRows(const T* src, int64_t tokens, int64_t row0, int rows, int64_t stride_tokens,
                         int64_t head_offset, int hd, int pitch, float* dst) {
  for (int idx = threadIdx.x; idx < rows * hd; idx += blockDim.x) {
    const int r = idx / hd, d = idx % hd;
    const int64_t t = row0 + r;
    dst[r * pitch + d] = t < tokens ? nn::Load(src + t * stride_tokens + head_offset + d) : 0.0f;
  }
}

__device__ __forceinline__ float DotShared(const float* a, const float* b, int hd) {
  float s = 0.0f;
  for (int d = 0; d < hd; ++d) s += a[d] * b[d];
  return s;
}

template <typename T>
__global__ void ForwardKernel(const T* q, const T* k, const T* v, const int32_t* seq_start, Geometry g, T* out,
                              float* lse) {
  extern __shared__ float smem[];
  const int hd = static_cast<int>(g.hd);
  float* qs = smem;                      // [kRowsQ][hd]
  float* ks = qs + kRowsQ * hd;          // [kTile][hd + 1]
  float* vs = ks + kTile * (hd + 1);     // [kTile][hd]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t h = blockIdx.y, kvh = h / g.group;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRowsQ;
  const int64_t r1 = min(r0 + kRowsQ, g.tokens);
  LoadRows(q, g.tokens, r0, kRowsQ, g.heads * g.hd, h * g.hd, hd, hd, qs);

  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kMaxChunks];
  int64_t start[kRowsPerWarp];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
    const int64_t i = r0 + warp + kWarps * rr;
    start[rr] = i < r1 ? seq_start[i] : 0;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) o[rr][c] = 0.0f;
  }
  const int64_t kmin = seq_start[r0];
  for (int64_t j0 = kmin; j0 < r1; j0 += kTile) {
    __syncthreads();  // previous tile fully consumed (and qs loaded on the first pass)
    LoadRows(k, g.tokens, j0, kTile, g.kv_heads * g.hd, kvh * g.hd, hd, hd + 1, ks);
    LoadRows(v, g.tokens, j0, kTile, g.kv_heads * g.hd, kvh * g.hd, hd, hd, vs);
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int local = warp + kWarps * rr;
      const int64_t i = r0 + local;
      if (i >= r1) continue;  // warp-uniform
      const int64_t j = j0 + lane;
      const bool valid = j >= start[rr] && j <= i;
      const float s = valid ? g.scale * DotShared(qs + local * hd, ks + lane * (hd + 1), hd) : -INFINITY;
      const float m_new = fmaxf(m[rr], nn::WarpMax(s));
      if (m_new == -INFINITY) continue;  // warp-uniform: no valid key yet
      const float p = valid ? expf(s - m_new) : 0.0f;
      const float corr = expf(m[rr] - m_new);
      l[rr] = l[rr] * corr + nn::WarpSum(p);
      m[rr] = m_new;
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) o[rr][c] *= corr;
      for (int jj = 0; jj < kTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
        for (int c = 0; c < kMaxChunks; ++c) {
          const int d = lane + 32 * c;
          if (d < hd) o[rr][c] += pj * vs[jj * hd + d];
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = r0 + warp + kWarps * rr;
    if (i >= r1) continue;
    const float inv = 1.0f / l[rr];
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) {
      const int d = lane + 32 * c;
      if (d < hd) nn::Store(out + (i * g.heads + h) * g.hd + d, o[rr][c] * inv);
    }
    if (lane == 0) lse[i * g.heads + h] = m[rr] + logf(l[rr]);
  }
}

// D[t, h] = dout[t, h] . out[t, h]; one warp per (t, h).
template <typename T>
__global__ void RowDotKernel(const T* dout, const T* out, int64_t rows, int64_t hd, float* d_out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  float s = 0.0f;
  for (int64_t d = threadIdx.x % 32; d < hd; d += 32) s += nn::Load(dout + row * hd + d) * nn::Load(out + row * hd + d);
  s = nn::WarpSum(s);
  if (threadIdx.x % 32 == 0) d_out[row] = s;
}

template <typename T>
__global__ void DqKernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* big_d,
                         const int32_t* seq_start, Geometry g, T* dq) {
  extern __shared__ float smem[];
  const int hd = static_cast<int>(g.hd);
  float* qs = smem;                      // [kRowsQ][hd]
  float* dos = qs + kRowsQ * hd;         // [kRowsQ][hd]
  float* ks = dos + kRowsQ * hd;         // [kTile][hd + 1]
  float* vs = ks + kTile * (hd + 1);     // [kTile][hd + 1]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t h = blockIdx.y, kvh = h / g.group;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRowsQ;
  const int64_t r1 = min(r0 + kRowsQ, g.tokens);
  LoadRows(q, g.tokens, r0, kRowsQ, g.heads * g.hd, h * g.hd, hd, hd, qs);
  LoadRows(dout, g.tokens, r0, kRowsQ, g.heads * g.hd, h * g.hd, hd, hd, dos);

  float acc[kRowsPerWarp][kMaxChunks], row_lse[kRowsPerWarp], row_d[kRowsPerWarp];
  int64_t start[kRowsPerWarp];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = r0 + warp + kWarps * rr;
    start[rr] = i < r1 ? seq_start[i] : 0;
    row_lse[rr] = i < r1 ? lse[i * g.heads + h] : 0.0f;
    row_d[rr] = i < r1 ? big_d[i * g.heads + h] : 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) acc[rr][c] = 0.0f;
  }
  const int64_t kmin = seq_start[r0];
  for (int64_t j0 = kmin; j0 < r1; j0 += kTile) {
    __syncthreads();
    LoadRows(k, g.tokens, j0, kTile, g.kv_heads * g.hd, kvh * g.hd, hd, hd + 1, ks);
    LoadRows(v, g.tokens, j0, kTile, g.kv_heads * g.hd, kvh * g.hd, hd, hd + 1, vs);
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int local = warp + kWarps * rr;
      const int64_t i = r0 + local;
      if (i >= r1) continue;
      const int64_t j = j0 + lane;
      const bool valid = j >= start[rr] && j <= i;
      float ds = 0.0f;
      if (valid) {
        const float p = expf(g.scale * DotShared(qs + local * hd, ks + lane * (hd + 1), hd) - row_lse[rr]);
        const float dp = DotShared(dos + local * hd, vs + lane * (hd + 1), hd);
        ds = p * (dp - row_d[rr]);
      }
      for (int jj = 0; jj < kTile; ++jj) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
        for (int c = 0; c < kMaxChunks; ++c) {
          const int d = lane + 32 * c;
          if (d < hd) acc[rr][c] += dsj * ks[jj * (hd + 1) + d];
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = r0 + warp + kWarps * rr;
    if (i >= r1) continue;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) {
      const int d = lane + 32 * c;
      if (d < hd) nn::Store(dq + (i * g.heads + h) * g.hd + d, acc[rr][c] * g.scale);
    }
  }
}

template <typename T>
__global__ void DkvKernel(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* big_d,
                          const int32_t* seq_end, Geometry g, T* dk, T* dv) {
  extern __shared__ float smem[];
  const int hd = static_cast<int>(g.hd);
  float* ks = smem;                      // [kRowsK][hd]
  float* vs = ks + kRowsK * hd;          // [kRowsK][hd]
  float* qs = vs + kRowsK * hd;          // [kTile][hd + 1]
  float* dos = qs + kTile * (hd + 1);    // [kTile][hd + 1]
  float* lse_s = dos + kTile * (hd + 1); // [kTile]
  float* d_s = lse_s + kTile;            // [kTile]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t kvh = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kRowsK;
  const int64_t j1 = min(j0 + kRowsK, g.tokens);
  LoadRows(k, g.tokens, j0, kRowsK, g.kv_heads * g.hd, kvh * g.hd, hd, hd, ks);
  LoadRows(v, g.tokens, j0, kRowsK, g.kv_heads * g.hd, kvh * g.hd, hd, hd, vs);
  constexpr int kKeysPerWarp = kRowsK / kWarps;
  float dk_acc[kKeysPerWarp][kMaxChunks], dv_acc[kKeysPerWarp][kMaxChunks];
  int64_t end[kKeysPerWarp];
#pragma unroll
  for (int rr = 0; rr < kKeysPerWarp; ++rr) {
    const int64_t j = j0 + warp + kWarps * rr;
    end[rr] = j < j1 ? seq_end[j] : 0;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) dk_acc[rr][c] = dv_acc[rr][c] = 0.0f;
  }
  const int64_t qmax = seq_end[j1 - 1];  // exclusive
  for (int64_t hh = 0; hh < g.group; ++hh) {
    const int64_t h = kvh * g.group + hh;
    for (int64_t i0 = j0; i0 < qmax; i0 += kTile) {
      __syncthreads();
      LoadRows(q, g.tokens, i0, kTile, g.heads * g.hd, h * g.hd, hd, hd + 1, qs);
      LoadRows(dout, g.tokens, i0, kTile, g.heads * g.hd, h * g.hd, hd, hd + 1, dos);
      if (threadIdx.x < kTile) {
        const int64_t i = i0 + threadIdx.x;
        lse_s[threadIdx.x] = i < g.tokens ? lse[i * g.heads + h] : 0.0f;
        d_s[threadIdx.x] = i < g.tokens ? big_d[i * g.heads + h] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int rr = 0; rr < kKeysPerWarp; ++rr) {
        const int local = warp + kWarps * rr;
        const int64_t j = j0 + local;
        if (j >= j1) continue;
        const int64_t i = i0 + lane;
        const bool valid = i >= j && i < end[rr];
        float p = 0.0f, ds = 0.0f;
        if (valid) {
          p = expf(g.scale * DotShared(ks + local * hd, qs + lane * (hd + 1), hd) - lse_s[lane]);
          const float dp = DotShared(vs + local * hd, dos + lane * (hd + 1), hd);
          ds = p * (dp - d_s[lane]);
        }
        for (int ii = 0; ii < kTile; ++ii) {
          const float pi = __shfl_sync(0xffffffffu, p, ii);
          const float dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
          for (int c = 0; c < kMaxChunks; ++c) {
            const int d = lane + 32 * c;
            if (d < hd) {
              dv_acc[rr][c] += pi * dos[ii * (hd + 1) + d];
              dk_acc[rr][c] += dsi * qs[ii * (hd + 1) + d];
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kKeysPerWarp; ++rr) {
    const int64_t j = j0 + warp + kWarps * rr;
    if (j >= j1) continue;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) {
      const int d = lane + 32 * c;
      if (d < hd) {
        nn::Store(dk + (j * g.kv_heads + kvh) * g.hd + d, dk_acc[rr][c] * g.scale);
        nn::Store(dv + (j * g.kv_heads + kvh) * g.hd + d, dv_acc[rr][c]);
      }
    }
  }
}

absl::Status CheckCuda(GpuContext& ctx, const Tensor& q, std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  if (q.dtype() != DType::kF32 && q.dtype() != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda attention: q must be f32 or bf16, got ", DTypeName(q.dtype())));
  }
  if (q.dim(2) > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda attention: head dim ", q.dim(2), " exceeds the supported ", kMaxHeadDim));
  }
  if (q.dim(0) > (int64_t{1} << 30) || q.dim(1) > 65535) {
    return absl::InvalidArgumentError("cuda attention: too many tokens or heads for one launch");
  }
  for (const auto& [t, what] : ts) ST_RETURN_IF_ERROR(ExpectOnDevice(ctx, *t, what));
  return ctx.Activate();
}

// Per-token sequence bounds (start, end) in the workspace, followed by `extra_floats` floats.
struct SeqScratch {
  int32_t* start;
  int32_t* end;
  float* extra;
};
absl::StatusOr<SeqScratch> UploadBounds(GpuContext& ctx, const Tensor& cu_seqlens, int64_t tokens,
                                        int64_t extra_floats) {
  std::vector<int32_t> bounds(2 * tokens);
  const int32_t* cu = cu_seqlens.data<int32_t>();
  for (int64_t s = 0; s + 1 < cu_seqlens.numel(); ++s) {
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
      bounds[t] = cu[s];
      bounds[tokens + t] = cu[s + 1];
    }
  }
  const size_t ints = (bounds.size() * sizeof(int32_t) + 255) / 256 * 256;
  ST_ASSIGN_OR_RETURN(void* base, ctx.Workspace(ints + static_cast<size_t>(extra_floats) * sizeof(float)));
  // Pageable source: the call returns once the bytes are staged, so `bounds` may go out of scope.
  ST_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base, bounds.data(), bounds.size() * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, ctx.stream()));
  int32_t* p = static_cast<int32_t*>(base);
  return SeqScratch{p, p + tokens, reinterpret_cast<float*>(static_cast<char*>(base) + ints)};
}

Geometry GeometryOf(const Tensor& q, const Tensor& k) {
  return Geometry{q.dim(0), q.dim(1), k.dim(1), q.dim(2), q.dim(1) / k.dim(1),
                  static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.dim(2))))};
}

template <typename Kernel>
absl::Status PrepareSharedMemory(Kernel kernel, size_t bytes) {
  return CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                    "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

template <typename T>
absl::Status LaunchForward(GpuContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const int32_t* start,
                           const Geometry& g, Tensor* out, Tensor* lse) {
  const size_t smem = (kRowsQ * g.hd + kTile * (g.hd + 1) + kTile * g.hd) * sizeof(float);
  ST_RETURN_IF_ERROR(PrepareSharedMemory(ForwardKernel<T>, smem));
  const dim3 grid(static_cast<unsigned>((g.tokens + kRowsQ - 1) / kRowsQ), static_cast<unsigned>(g.heads));
  ForwardKernel<T><<<grid, kThreads, smem, ctx.stream()>>>(
      static_cast<const T*>(q.raw_data()), static_cast<const T*>(k.raw_data()), static_cast<const T*>(v.raw_data()),
      start, g, static_cast<T*>(out->raw_data()), lse->data<float>());
  return CudaStatus(cudaGetLastError(), "attention ForwardKernel launch");
}

template <typename T>
absl::Status LaunchBackward(GpuContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, const Tensor& dout, const SeqScratch& s, const Geometry& g, Tensor* dq,
                            Tensor* dk, Tensor* dv) {
  auto in = [](const Tensor& t) { return static_cast<const T*>(t.raw_data()); };
  const int64_t rows = g.tokens * g.heads;
  RowDotKernel<T><<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kThreads, 0, ctx.stream()>>>(
      in(dout), in(out), rows, g.hd, s.extra);
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "attention RowDotKernel launch"));

  const size_t dq_smem = (2 * kRowsQ * g.hd + 2 * kTile * (g.hd + 1)) * sizeof(float);
  ST_RETURN_IF_ERROR(PrepareSharedMemory(DqKernel<T>, dq_smem));
  const dim3 dq_grid(static_cast<unsigned>((g.tokens + kRowsQ - 1) / kRowsQ), static_cast<unsigned>(g.heads));
  DqKernel<T><<<dq_grid, kThreads, dq_smem, ctx.stream()>>>(in(q), in(k), in(v), in(dout), lse.data<float>(), s.extra,
                                                            s.start, g, static_cast<T*>(dq->raw_data()));
  ST_RETURN_IF_ERROR(CudaStatus(cudaGetLastError(), "attention DqKernel launch"));

  const size_t kv_smem = (2 * kRowsK * g.hd + 2 * kTile * (g.hd + 1) + 2 * kTile) * sizeof(float);
  ST_RETURN_IF_ERROR(PrepareSharedMemory(DkvKernel<T>, kv_smem));
  const dim3 kv_grid(static_cast<unsigned>((g.tokens + kRowsK - 1) / kRowsK), static_cast<unsigned>(g.kv_heads));
  DkvKernel<T><<<kv_grid, kThreads, kv_smem, ctx.stream()>>>(in(q), in(k), in(v), in(dout), lse.data<float>(),
                                                             s.extra, s.end, g, static_cast<T*>(dk->raw_data()),
                                                             static_cast<T*>(dv->raw_data()));
  return CudaStatus(cudaGetLastError(), "attention DkvKernel launch");
}

}  // namespace

absl::Status AttentionForward(GpuContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& cu_seqlens, Tensor* out, Tensor* lse) {
  ST_CHECK(out != nullptr && lse != nullptr);
  ST_RETURN_IF_ERROR(CheckAttention(q, k, v, cu_seqlens, *out, *lse));
  ST_RETURN_IF_ERROR(CheckCuda(ctx, q, {{&q, "attention q"}, {&k, "attention k"}, {&v, "attention v"},
                                        {out, "attention out"}, {lse, "attention lse"}}));
  const Geometry g = GeometryOf(q, k);
  if (g.tokens == 0) return absl::OkStatus();
  ST_ASSIGN_OR_RETURN(const SeqScratch s, UploadBounds(ctx, cu_seqlens, g.tokens, 0));
  if (q.dtype() == DType::kF32) return LaunchForward<float>(ctx, q, k, v, s.start, g, out, lse);
  return LaunchForward<__nv_bfloat16>(ctx, q, k, v, s.start, g, out, lse);
}

absl::Status AttentionBackward(GpuContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& cu_seqlens, const Tensor& out, const Tensor& lse, const Tensor& dout,
                               Tensor* dq, Tensor* dk, Tensor* dv) {
  ST_CHECK(dq != nullptr && dk != nullptr && dv != nullptr);
  ST_RETURN_IF_ERROR(CheckAttention(q, k, v, cu_seqlens, out, lse));
  constexpr char kOp[] = "attention";
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(dout, kOp, "dout", q.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(*dq, kOp, "dq", q.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(*dk, kOp, "dk", k.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(kernels::nn::ExpectTensor(*dv, kOp, "dv", k.shape(), {q.dtype()}));
  ST_RETURN_IF_ERROR(CheckCuda(ctx, q, {{&q, "attention q"}, {&k, "attention k"}, {&v, "attention v"},
                                        {&out, "attention out"}, {&lse, "attention lse"}, {&dout, "attention dout"},
                                        {dq, "attention dq"}, {dk, "attention dk"}, {dv, "attention dv"}}));
  const Geometry g = GeometryOf(q, k);
  if (g.tokens == 0) return absl::OkStatus();
  ST_ASSIGN_OR_RETURN(const SeqScratch s, UploadBounds(ctx, cu_seqlens, g.tokens, g.tokens * g.heads));
  if (q.dtype() == DType::kF32) return LaunchBackward<float>(ctx, q, k, v, out, lse, dout, s, g, dq, dk, dv);
  return LaunchBackward<__nv_bfloat16>(ctx, q, k, v, out, lse, dout, s, g, dq, dk, dv);
}

}  // namespace sigmatune::kernels::cuda
